//! Root filesystem parts: the shared, read-only ext4 base images that
//! sandboxes overlay with a per-sandbox qcow2.
//!
//! Each [`ImageRecipe`] describes its image completely, and its key hashes
//! every field of that description (plus [`ROOTFS_FORMAT_VERSION`] for the
//! code that turns it into a file, and the mirror, which ends up in the
//! image's apt sources). What the key cannot see is the Debian archive
//! moving on: an image keeps the package versions of its first build until
//! its recipe changes or it is deleted. The manifest records those versions.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt, symlink};
use std::path::Path;
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::cache::remove_tree;
use crate::error::ImageError;
use crate::host::{self, MKFS_EXT4, MMDEBSTRAP, Tool};
use crate::key::KeyHasher;
use crate::progress::Progress;

/// Bump when the way any rootfs is turned into an image changes (mkfs
/// options, checks, file layout written by this code).
const ROOTFS_FORMAT_VERSION: u32 = 1;

/// File name of the image inside the part.
pub(crate) const IMAGE_FILE: &str = "rootfs.ext4";

/// Label of the file system, so the guest can find it by label.
pub const FS_LABEL: &str = "warren-root";

/// `mkfs.ext4 -E` options: initialise everything now, so the guest does not
/// spend its (emulated) CPU on lazy init in the background.
const MKFS_EXTENDED_OPTIONS: &str = "lazy_itable_init=0,lazy_journal_init=0";

/// Environment variable naming the Debian mirror for `mmdebstrap`.
pub const MIRROR_ENV: &str = "WARREN_DEBIAN_MIRROR";

/// The mirror used when [`MIRROR_ENV`] is not set.
pub const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";

/// An image this version can build: a name for the CLI and its recipe.
#[derive(Debug)]
pub struct ImageRecipe {
    /// The name users pass (`--image debian`).
    pub name: &'static str,
    /// One line for `warren images`.
    pub description: &'static str,
    pub(crate) kind: RecipeKind,
}

/// How an image is made.
#[derive(Debug)]
pub(crate) enum RecipeKind {
    Debian(DebianRecipe),
    Tiny(TinyRecipe),
}

/// A Debian root filesystem made by `mmdebstrap`.
#[derive(Debug)]
pub(crate) struct DebianRecipe {
    pub(crate) suite: &'static str,
    pub(crate) variant: &'static str,
    pub(crate) components: &'static str,
    pub(crate) include: &'static [&'static str],
    /// Shell script run by mmdebstrap as `--customize-hook` (`$1` = root).
    pub(crate) customize: &'static str,
    pub(crate) size_mib: u64,
}

/// A busybox-only root filesystem for fast tests.
#[derive(Debug)]
pub(crate) struct TinyRecipe {
    pub(crate) package: &'static str,
    /// Files written into the root: (path, mode, contents).
    pub(crate) files: &'static [(&'static str, u32, &'static str)],
    pub(crate) size_mib: u64,
}

/// The `debian` customisation: the unprivileged `user`, host identity files
/// that don't leak the build host's, and no apt caches in the base image.
const DEBIAN_CUSTOMIZE: &str = r#"set -eu
root="$1"
chroot "$root" groupadd --gid 1000 user
chroot "$root" useradd --uid 1000 --gid 1000 --home-dir /home/user --create-home --shell /bin/bash user
echo warren > "$root/etc/hostname"
printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' > "$root/etc/hosts"
: > "$root/etc/resolv.conf"
: > "$root/etc/machine-id"
rm -f "$root"/var/cache/apt/archives/*.deb "$root"/var/cache/apt/*.bin
rm -rf "$root"/var/lib/apt/lists/*
"#;

/// Everything this version can build. The first one is the default.
pub(crate) static CATALOG: [ImageRecipe; 2] = [
    ImageRecipe {
        name: "debian",
        description: "Debian 12 (bookworm) minbase with bash, python3, curl, git, procps, iproute2 (2 GiB disk)",
        kind: RecipeKind::Debian(DebianRecipe {
            suite: "bookworm",
            variant: "minbase",
            components: "main",
            include: &[
                "bash",
                "coreutils",
                "python3",
                "ca-certificates",
                "curl",
                "git",
                "procps",
                "iproute2",
                "less",
                "nano",
                "xz-utils",
                "unzip",
            ],
            customize: DEBIAN_CUSTOMIZE,
            size_mib: 2048,
        }),
    },
    ImageRecipe {
        name: "tiny",
        description: "busybox only, for fast tests (256 MiB disk)",
        kind: RecipeKind::Tiny(TinyRecipe {
            package: "busybox-static",
            files: &[
                (
                    "etc/passwd",
                    0o644,
                    "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
                ),
                (
                    "etc/group",
                    0o644,
                    "root:x:0:\ntty:x:5:\nuser:x:1000:\nnogroup:x:65534:\n",
                ),
                ("etc/hostname", 0o644, "warren\n"),
                ("etc/hosts", 0o644, "127.0.0.1\tlocalhost\n"),
                ("etc/resolv.conf", 0o644, ""),
            ],
            size_mib: 256,
        }),
    },
];

/// Turns a mirror setting into what mmdebstrap takes: a bare host name
/// (`deb.debian.org`) becomes `http://deb.debian.org/debian`; URLs and
/// full `deb ...` lines are used as given.
pub(crate) fn normalize_mirror(mirror: &str) -> String {
    let mirror = mirror.trim();
    if mirror.contains("://") || mirror.starts_with("deb ") {
        mirror.to_owned()
    } else {
        format!("http://{}/debian", mirror.trim_end_matches('/'))
    }
}

/// The cache key of a rootfs. `mirror` only matters for Debian images.
pub(crate) fn rootfs_key(recipe: &ImageRecipe, mirror: &str) -> String {
    let mut h = KeyHasher::new("warren-image/rootfs");
    h.field("format_version", ROOTFS_FORMAT_VERSION.to_le_bytes())
        .field("name", recipe.name)
        .field("label", FS_LABEL)
        .field("mkfs_extended", MKFS_EXTENDED_OPTIONS);
    match &recipe.kind {
        RecipeKind::Debian(d) => {
            h.field("kind", "debian")
                .field("suite", d.suite)
                .field("variant", d.variant)
                .field("components", d.components)
                .list("include", d.include)
                .field("customize", d.customize)
                .field("size_mib", d.size_mib.to_le_bytes())
                .field("mirror", mirror);
        }
        RecipeKind::Tiny(t) => {
            h.field("kind", "tiny")
                .field("package", t.package)
                .field("size_mib", t.size_mib.to_le_bytes());
            for (path, mode, contents) in t.files {
                h.field("file", path)
                    .field("mode", mode.to_le_bytes())
                    .field("contents", contents);
            }
        }
    }
    h.finish()
}

/// What a rootfs manifest records.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RootfsDetails {
    /// Version of the rootfs build code at build time.
    pub format_version: u32,
    /// The image name.
    pub image: String,
    /// Size of the file system in MiB.
    pub size_mib: u64,
    /// The Debian mirror, for `debian`.
    pub mirror: Option<String>,
    /// The suite, for `debian`.
    pub suite: Option<String>,
    /// Installed packages and versions (`debian`) or the busybox package
    /// version (`tiny`).
    pub packages: Vec<String>,
}

/// Builds the rootfs of `recipe` into `staging`.
pub(crate) fn build(
    recipe: &ImageRecipe,
    mirror: &str,
    staging: &Path,
    progress: &dyn Progress,
) -> Result<RootfsDetails, ImageError> {
    let what = format!("the {} root filesystem", recipe.name);
    host::require_root(
        &what,
        "files in it must belong to root and to uid 1000, which needs root to create",
    )?;
    host::find_tool(MKFS_EXT4)?;
    let started = std::time::Instant::now();
    let root = staging.join("root");
    let (size_mib, details) = match &recipe.kind {
        RecipeKind::Debian(d) => (
            d.size_mib,
            build_debian(recipe, d, mirror, &root, progress)?,
        ),
        RecipeKind::Tiny(t) => (t.size_mib, build_tiny(recipe, t, staging, &root, progress)?),
    };
    fs::set_permissions(&root, fs::Permissions::from_mode(0o755))
        .map_err(ImageError::io("chmod", &root))?;
    progress.step(&format!("creating {IMAGE_FILE} ({size_mib} MiB, sparse)"));
    let image = staging.join(IMAGE_FILE);
    let mut cmd = host::command(MKFS_EXT4)?;
    cmd.args([
        "-q",
        "-F",
        "-L",
        FS_LABEL,
        "-E",
        MKFS_EXTENDED_OPTIONS,
        "-d",
    ])
    .arg(&root)
    .arg(&image)
    .arg(format!("{size_mib}M"));
    host::run(&mut cmd, Some(progress))?;
    remove_tree(&root).map_err(ImageError::io("delete", &root))?;
    fs::set_permissions(&image, fs::Permissions::from_mode(0o444))
        .map_err(ImageError::io("chmod", &image))?;
    let allocated = crate::cache::allocated_bytes(&image);
    progress.finished(&format!(
        "{} root filesystem ready ({} MiB used of {size_mib} MiB) in {:.1} s",
        recipe.name,
        allocated / (1024 * 1024),
        started.elapsed().as_secs_f64()
    ));
    Ok(details)
}

fn build_debian(
    recipe: &ImageRecipe,
    d: &DebianRecipe,
    mirror: &str,
    root: &Path,
    progress: &dyn Progress,
) -> Result<RootfsDetails, ImageError> {
    let mut cmd = host::command(MMDEBSTRAP)?;
    cmd.arg("--mode=root")
        .arg(format!("--variant={}", d.variant))
        .arg(format!("--include={}", d.include.join(",")))
        .arg(format!("--components={}", d.components))
        .arg(format!("--customize-hook={}", d.customize))
        .arg(d.suite)
        .arg(root)
        .arg(mirror);
    progress.step(&format!(
        "building the {} image: mmdebstrap {} from {mirror} (about a minute)",
        recipe.name, d.suite
    ));
    host::run(&mut cmd, Some(progress))?;
    for needed in ["bin/bash", "usr/bin/python3", "home/user", "etc/passwd"] {
        if fs::symlink_metadata(root.join(needed)).is_err() {
            return Err(ImageError::IncompleteRootfs {
                image: recipe.name.to_owned(),
                reason: format!("mmdebstrap succeeded but /{needed} is missing"),
            });
        }
    }
    let packages = installed_packages(root).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "cannot list the installed packages");
        Vec::new()
    });
    Ok(RootfsDetails {
        format_version: ROOTFS_FORMAT_VERSION,
        image: recipe.name.to_owned(),
        size_mib: d.size_mib,
        mirror: Some(mirror.to_owned()),
        suite: Some(d.suite.to_owned()),
        packages,
    })
}

/// `package version` lines of the packages installed in `root`.
fn installed_packages(root: &Path) -> Result<Vec<String>, ImageError> {
    const DPKG_QUERY: Tool = Tool::new("dpkg-query", "dpkg");
    let mut cmd = host::command(DPKG_QUERY)?;
    cmd.arg(format!(
        "--admindir={}",
        root.join("var/lib/dpkg").display()
    ))
    .args(["-W", "-f", "${Package} ${Version}\\n"]);
    let out = host::run(&mut cmd, None)?;
    Ok(String::from_utf8_lossy(&out)
        .lines()
        .map(str::to_owned)
        .collect())
}

fn build_tiny(
    recipe: &ImageRecipe,
    t: &TinyRecipe,
    staging: &Path,
    root: &Path,
    progress: &dyn Progress,
) -> Result<RootfsDetails, ImageError> {
    progress.step(&format!(
        "building the {} image from {}",
        recipe.name, t.package
    ));
    let work = staging.join("work");
    fs::create_dir(&work).map_err(ImageError::io("create", &work))?;
    let version = host::with_apt_retry(progress, || host::apt_candidate(t.package))?;
    let deb = host::apt_download(t.package, &version, &work, progress)?;
    let tree = work.join("tree");
    host::dpkg_extract(&deb, &tree)?;
    let busybox = tree.join("bin/busybox");
    if !busybox.is_file() {
        return Err(ImageError::BadPackage {
            package: t.package.to_owned(),
            reason: "it has no bin/busybox".into(),
        });
    }

    let mkdir = |rel: &str, mode: u32| -> Result<(), ImageError> {
        let path = root.join(rel);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&path)
            .map_err(ImageError::io("create", &path))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))
            .map_err(ImageError::io("chmod", &path))
    };
    for (dir, mode) in [
        ("bin", 0o755),
        ("sbin", 0o755),
        ("usr/bin", 0o755),
        ("usr/sbin", 0o755),
        ("etc", 0o755),
        ("root", 0o700),
        ("home/user", 0o755),
        ("tmp", 0o1777),
        ("var/tmp", 0o1777),
        ("dev", 0o755),
        ("proc", 0o555),
        ("sys", 0o555),
        ("run", 0o755),
    ] {
        mkdir(dir, mode)?;
    }
    let home = root.join("home/user");
    std::os::unix::fs::chown(&home, Some(1000), Some(1000))
        .map_err(ImageError::io("chown", &home))?;

    let target = root.join("bin/busybox");
    fs::copy(&busybox, &target).map_err(ImageError::io("copy", &busybox))?;
    fs::set_permissions(&target, fs::Permissions::from_mode(0o755))
        .map_err(ImageError::io("chmod", &target))?;
    let applets = applet_paths(&busybox)?;
    for applet in &applets {
        let link = root.join(applet);
        if fs::symlink_metadata(&link).is_ok() {
            continue;
        }
        if let Some(parent) = link.parent() {
            fs::create_dir_all(parent).map_err(ImageError::io("create", parent))?;
        }
        symlink("/bin/busybox", &link).map_err(ImageError::io("symlink", &link))?;
    }
    for (path, mode, contents) in t.files {
        let path = root.join(path);
        fs::write(&path, contents).map_err(ImageError::io("write", &path))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(*mode))
            .map_err(ImageError::io("chmod", &path))?;
    }
    remove_tree(&work).map_err(ImageError::io("delete", &work))?;
    progress.detail(&format!("{} busybox applets linked", applets.len()));
    Ok(RootfsDetails {
        format_version: ROOTFS_FORMAT_VERSION,
        image: recipe.name.to_owned(),
        size_mib: t.size_mib,
        mirror: None,
        suite: None,
        packages: vec![format!("{} {version}", t.package)],
    })
}

/// Where busybox wants its applets (`busybox --list-full`, e.g.
/// `usr/bin/awk`), run on the host; falls back to `bin/<applet>` for
/// builds without `--list-full`.
fn applet_paths(busybox: &Path) -> Result<Vec<String>, ImageError> {
    let full = host::run(Command::new(busybox).arg("--list-full"), None);
    let (out, prefix) = match full {
        Ok(out) => (out, ""),
        Err(_) => (
            host::run(Command::new(busybox).arg("--list"), None)?,
            "bin/",
        ),
    };
    Ok(String::from_utf8_lossy(&out)
        .lines()
        .map(str::trim)
        .filter(|l| is_safe_relative(l) && *l != "bin/busybox")
        .map(|l| format!("{prefix}{l}"))
        .collect())
}

/// A relative path without `..`, so a listed applet cannot escape the root.
fn is_safe_relative(path: &str) -> bool {
    !path.is_empty()
        && !path.starts_with('/')
        && path
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn debian() -> &'static DebianRecipe {
        match &CATALOG[0].kind {
            RecipeKind::Debian(d) => d,
            RecipeKind::Tiny(_) => unreachable!(),
        }
    }

    #[test]
    fn catalog_names_are_unique_and_debian_is_first() {
        assert_eq!(CATALOG[0].name, "debian");
        assert_eq!(CATALOG[1].name, "tiny");
        for recipe in &CATALOG {
            assert!(!recipe.description.is_empty());
            assert!(
                recipe
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            );
        }
    }

    #[test]
    fn key_is_stable() {
        let a = rootfs_key(&CATALOG[0], DEFAULT_MIRROR);
        assert_eq!(a, rootfs_key(&CATALOG[0], DEFAULT_MIRROR));
        assert_ne!(a, rootfs_key(&CATALOG[1], DEFAULT_MIRROR));
        // The mirror is written into the Debian image's apt sources...
        assert_ne!(a, rootfs_key(&CATALOG[0], "http://mirror.example/debian"));
        // ...but is not used by the tiny image.
        assert_eq!(
            rootfs_key(&CATALOG[1], DEFAULT_MIRROR),
            rootfs_key(&CATALOG[1], "http://mirror.example/debian")
        );
    }

    #[test]
    fn key_changes_with_every_debian_field() {
        let base = debian();
        let key = |d: DebianRecipe| {
            rootfs_key(
                &ImageRecipe {
                    name: "debian",
                    description: "changing the description must not matter",
                    kind: RecipeKind::Debian(d),
                },
                DEFAULT_MIRROR,
            )
        };
        let same = || DebianRecipe {
            suite: base.suite,
            variant: base.variant,
            components: base.components,
            include: base.include,
            customize: base.customize,
            size_mib: base.size_mib,
        };
        let original = rootfs_key(&CATALOG[0], DEFAULT_MIRROR);
        assert_eq!(key(same()), original);
        let variants = [
            DebianRecipe {
                suite: "trixie",
                ..same()
            },
            DebianRecipe {
                variant: "apt",
                ..same()
            },
            DebianRecipe {
                components: "main,contrib",
                ..same()
            },
            DebianRecipe {
                include: &base.include[1..],
                ..same()
            },
            DebianRecipe {
                customize: "set -eu\n",
                ..same()
            },
            DebianRecipe {
                size_mib: 4096,
                ..same()
            },
        ];
        for v in variants {
            assert_ne!(key(v), original);
        }
    }

    #[test]
    fn key_changes_with_tiny_files() {
        let original = rootfs_key(&CATALOG[1], DEFAULT_MIRROR);
        let changed = ImageRecipe {
            name: "tiny",
            description: "",
            kind: RecipeKind::Tiny(TinyRecipe {
                package: "busybox-static",
                files: &[("etc/hostname", 0o644, "other\n")],
                size_mib: 256,
            }),
        };
        assert_ne!(rootfs_key(&changed, DEFAULT_MIRROR), original);
    }

    #[test]
    fn mirrors_are_normalized() {
        assert_eq!(normalize_mirror("deb.debian.org"), DEFAULT_MIRROR);
        assert_eq!(
            normalize_mirror(" http://m.example/debian "),
            "http://m.example/debian"
        );
        assert_eq!(
            normalize_mirror("deb http://m.example/debian bookworm main"),
            "deb http://m.example/debian bookworm main"
        );
    }

    #[test]
    fn applet_paths_are_confined() {
        assert!(is_safe_relative("usr/bin/awk"));
        assert!(is_safe_relative("linuxrc"));
        assert!(!is_safe_relative("/bin/sh"));
        assert!(!is_safe_relative("../etc/passwd"));
        assert!(!is_safe_relative("bin//sh"));
        assert!(!is_safe_relative(""));
    }

    #[test]
    fn customize_script_creates_the_user_and_cleans_apt() {
        let script = debian().customize;
        assert!(script.contains("--uid 1000"));
        assert!(script.contains("--shell /bin/bash"));
        assert!(script.contains("var/lib/apt/lists"));
        assert!(script.contains("machine-id"));
        assert!(script.starts_with("set -eu"));
    }
}
