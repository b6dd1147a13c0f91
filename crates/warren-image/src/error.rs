//! Errors of the image pipeline.
//!
//! [`ImageError`] is what every public operation returns; its messages say
//! what failed and what to do about it, because the usual reader is a person
//! at a terminal running `warren run` for the first time. Two narrower enums
//! carry the details of the parts that have their own failure modes:
//! [`CommandError`] (an external tool failed: which command, and the tail of
//! what it printed) and [`ModuleError`] (the kernel modules cannot be put in
//! a load order).

use std::io;
use std::path::PathBuf;

/// The command that builds a static guest agent, quoted in error messages.
pub const GUEST_AGENT_BUILD_HINT: &str = "./dev.sh build (or: CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS=\"-C target-feature=+crt-static\" cargo build --release -p warren-guest --target x86_64-unknown-linux-gnu), or set WARREN_GUEST_AGENT to a static warren-guest binary";

/// Why an image could not be opened, built or listed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    /// The requested image is not in [`crate::ImageStore::catalog`].
    #[error("unknown image {name:?}; available images: {}", available.join(", "))]
    UnknownImage {
        /// The name that was asked for.
        name: String,
        /// The names this version can build.
        available: Vec<String>,
    },

    /// No guest agent binary was found in any of the usual places.
    #[error(
        "guest agent binary warren-guest not found (looked at: {}); build it with {GUEST_AGENT_BUILD_HINT}",
        display_paths(searched)
    )]
    GuestAgentNotFound {
        /// Every path that was tried, in order.
        searched: Vec<PathBuf>,
    },

    /// The guest agent exists but cannot serve as the initramfs `/init`.
    #[error("guest agent {path} cannot be used: {reason}; build it with {GUEST_AGENT_BUILD_HINT}")]
    GuestAgentUnusable {
        /// The agent path given or found.
        path: PathBuf,
        /// What is wrong with it (missing, not executable, dynamically linked, ...).
        reason: String,
        /// The error that showed it, when one did (reading it, parsing it).
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },

    /// A host tool the build needs is not installed.
    #[error("{tool} is not installed; install it with `apt-get install {package}`")]
    MissingTool {
        /// The program name.
        tool: &'static str,
        /// The Debian package that provides it.
        package: &'static str,
    },

    /// Building this part needs root and the process is not root.
    #[error(
        "building {what} needs root ({why}); run the first `warren` command that needs this image as root, e.g. `sudo warren images build`"
    )]
    NotRoot {
        /// The part being built.
        what: String,
        /// Which step needs the privilege.
        why: &'static str,
    },

    /// An external command failed.
    #[error(transparent)]
    Command(#[from] CommandError),

    /// apt could not resolve a package to a concrete name and version.
    #[error(
        "cannot resolve Debian package {package}: {reason}; check the apt sources (`apt-get update` as root) and the network to the Debian archive"
    )]
    AptResolve {
        /// The package that was being resolved.
        package: String,
        /// What went wrong.
        reason: String,
    },

    /// A downloaded Debian package lacks what the build takes from it.
    #[error("Debian package {package} is unusable: {reason}")]
    BadPackage {
        /// The package name.
        package: String,
        /// What is missing or wrong.
        reason: String,
    },

    /// A root filesystem build finished without something its recipe
    /// promises (the archive no longer matches the recipe).
    #[error(
        "the {image} image is incomplete after its build: {reason}; the image recipe no longer matches the Debian archive"
    )]
    IncompleteRootfs {
        /// The image name.
        image: String,
        /// What is missing.
        reason: String,
    },

    /// The kernel modules cannot be loaded in any order.
    #[error(transparent)]
    Module(#[from] ModuleError),

    /// A file system operation failed.
    #[error("cannot {action} {}", path.display())]
    Io {
        /// What was being done ("create", "read", "rename", ...).
        action: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// A published part lacks a file its manifest lists, or the file's size
    /// changed (published parts are never modified, so something else did).
    #[error("cached image part {} is damaged ({reason}); delete that directory to have it rebuilt", dir.display())]
    DamagedPart {
        /// The part directory.
        dir: PathBuf,
        /// Which file is missing or changed.
        reason: String,
    },

    /// A cached part's manifest is unreadable.
    #[error("manifest {} is invalid; delete its directory to have it rebuilt", path.display())]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
}

impl ImageError {
    /// Wraps an I/O error with the action and path it happened on.
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io {
            action,
            path,
            source,
        }
    }
}

/// An external command that could not be run or exited unsuccessfully.
#[derive(Debug, thiserror::Error)]
#[error("command `{command}` failed ({status}){}", tail_suffix(stderr_tail))]
pub struct CommandError {
    /// The command line, for copy and paste.
    pub command: String,
    /// Exit status, signal, or why it could not be started.
    pub status: String,
    /// The last lines it wrote to standard error.
    pub stderr_tail: String,
}

/// Why the kernel modules of the recipe cannot be put in a load order.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ModuleError {
    /// A requested module is not in the kernel package.
    #[error(
        "kernel module {module} is not in the kernel package (looked for {module}.ko under lib/modules); the kernel recipe's module list does not match this kernel"
    )]
    NotFound {
        /// The module name.
        module: String,
    },
    /// A module depends on one that is not in the list.
    #[error(
        "kernel module {module} depends on {dependency}, which is not in the module list; add it to the kernel recipe"
    )]
    MissingDependency {
        /// The module whose `depends=` names the missing one.
        module: String,
        /// The missing module.
        dependency: String,
    },
    /// The dependencies form a cycle, so no load order exists.
    #[error("kernel modules depend on each other in a cycle: {}", modules.join(", "))]
    Cycle {
        /// The modules that could not be ordered.
        modules: Vec<String>,
    },
    /// A module file is not an ELF object with a `.modinfo` section.
    #[error("kernel module {} is unreadable: {reason}", file.display())]
    BadObject {
        /// The module file.
        file: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

fn display_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn tail_suffix(tail: &str) -> String {
    if tail.trim().is_empty() {
        String::new()
    } else {
        format!(":\n{}", tail.trim_end())
    }
}
