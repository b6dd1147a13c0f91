//! Typed errors of the agent's operations and their mapping to gRPC status.
//!
//! Every message names what failed (the path, the command) and, where there
//! is one, what to do about it: the host shows these to people and to AI
//! agents, who can only act on what the message says.

use std::io;

use tonic::{Code, Status};
use warren_proto::paths::PathError;

/// Why a file operation failed.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The path broke the path rules.
    #[error(transparent)]
    Path(#[from] PathError),
    /// A system call on `path` failed; `op` says which operation
    /// ("reading", "writing", ...) for the message.
    #[error("{op} {path} failed")]
    Io {
        /// Verb for messages: "reading", "creating", ...
        op: &'static str,
        /// The path the operation was about.
        path: String,
        /// The underlying error.
        source: io::Error,
    },
    /// The path is a directory where a file is needed.
    #[error("{0} is a directory")]
    IsDirectory(String),
    /// The path is not a directory where one is needed.
    #[error("{0} is not a directory")]
    NotDirectory(String),
    /// The parent directory of a new file does not exist.
    #[error("parent directory {0} does not exist; create it first or set create_parents/parents")]
    MissingParent(String),
    /// The destination of a rename exists and overwrite was not set.
    #[error("destination {0} already exists; set overwrite to replace it")]
    DestinationExists(String),
    /// `mkdir` found something that is not a directory in the way.
    #[error("{0} already exists and is not a directory")]
    ExistsNotDirectory(String),
    /// Refused to remove or rename the root directory.
    #[error("refusing to {0} the root directory /")]
    Root(&'static str),
    /// The disk does not have room for the announced size.
    #[error(
        "the sandbox disk is full while writing {path}: {needed} bytes announced, {available} available; free space or create the sandbox with a larger disk"
    )]
    NoSpace {
        /// The file being written.
        path: String,
        /// The size hint.
        needed: u64,
        /// Free bytes.
        available: u64,
    },
    /// The named owner does not exist.
    #[error("no user named {0} in the sandbox")]
    UnknownUser(String),
    /// The client broke the WriteFile message order.
    #[error("{0}")]
    Protocol(String),
}

impl FileError {
    /// Shorthand to wrap an `io::Error` with its operation and path.
    pub fn io(op: &'static str, path: &str, source: io::Error) -> Self {
        Self::Io {
            op,
            path: path.to_string(),
            source,
        }
    }
}

/// Maps an errno of an operation on `path` to a status code and message.
///
/// Kept separate from the `From` impl so it can be unit-tested without
/// building real I/O errors for every case.
pub fn errno_status(op: &str, path: &str, source: &io::Error) -> Status {
    let errno = source.raw_os_error().unwrap_or(0);
    match errno {
        libc::ENOENT => Status::not_found(format!("no such file or directory: {path}")),
        libc::EACCES | libc::EPERM => {
            Status::permission_denied(format!("permission denied {op} {path}"))
        }
        libc::EEXIST => Status::already_exists(format!("{path} already exists")),
        libc::ENOTDIR => {
            Status::failed_precondition(format!("a component of {path} is not a directory"))
        }
        libc::EISDIR => Status::failed_precondition(format!("{path} is a directory")),
        libc::ENOTEMPTY => Status::failed_precondition(format!(
            "directory {path} is not empty; set recursive to remove it with its contents"
        )),
        libc::ENOSPC | libc::EDQUOT => Status::resource_exhausted(format!(
            "the sandbox disk is full while {op} {path}; free space or create the sandbox with a larger disk"
        )),
        libc::EROFS => Status::failed_precondition(format!("{path} is on a read-only file system")),
        libc::EXDEV => Status::failed_precondition(format!(
            "{path}: source and destination are on different file systems; copy and remove instead"
        )),
        libc::ENAMETOOLONG | libc::ELOOP => {
            Status::invalid_argument(format!("{op} {path} failed: {source}"))
        }
        _ => Status::internal(format!("{op} {path} failed: {source}")),
    }
}

impl From<FileError> for Status {
    fn from(error: FileError) -> Self {
        let message = error.to_string();
        match error {
            FileError::Path(_) | FileError::Root(_) | FileError::UnknownUser(_) => {
                Status::invalid_argument(message)
            }
            FileError::Protocol(_) => Status::invalid_argument(message),
            FileError::Io { op, path, source } => errno_status(op, &path, &source),
            FileError::IsDirectory(_)
            | FileError::NotDirectory(_)
            | FileError::ExistsNotDirectory(_) => Status::failed_precondition(message),
            FileError::MissingParent(_) => Status::not_found(message),
            FileError::DestinationExists(_) => Status::already_exists(message),
            FileError::NoSpace { .. } => Status::resource_exhausted(message),
        }
    }
}

/// Why a process could not be started or driven.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The request was malformed.
    #[error("{0}")]
    Invalid(String),
    /// The user does not exist.
    #[error("no user named {0} in the sandbox")]
    UnknownUser(String),
    /// The working directory does not exist.
    #[error("working directory {0} does not exist")]
    MissingCwd(String),
    /// The program was not found.
    #[error("command not found: {0}")]
    NotFound(String),
    /// The program exists but may not be executed.
    #[error("permission denied executing {0}")]
    PermissionDenied(String),
    /// Spawning failed for another reason.
    #[error("starting {program} failed")]
    Spawn {
        /// What was being run.
        program: String,
        /// The underlying error.
        source: io::Error,
    },
    /// The pid is not (or no longer) known.
    #[error("no process with pid {0}; it never existed here or its record was evicted")]
    UnknownPid(u32),
    /// The operation needs a state the process is not in.
    #[error("{0}")]
    Precondition(String),
}

impl From<ExecError> for Status {
    fn from(error: ExecError) -> Self {
        let code = match &error {
            ExecError::Invalid(_) | ExecError::UnknownUser(_) | ExecError::MissingCwd(_) => {
                Code::InvalidArgument
            }
            ExecError::NotFound(_) | ExecError::UnknownPid(_) => Code::NotFound,
            ExecError::PermissionDenied(_) => Code::PermissionDenied,
            ExecError::Spawn { source, .. } => match source.raw_os_error() {
                Some(libc::EAGAIN | libc::ENOMEM | libc::EMFILE | libc::ENFILE) => {
                    Code::ResourceExhausted
                }
                _ => Code::Internal,
            },
            ExecError::Precondition(_) => Code::FailedPrecondition,
        };
        // The host sees only the status message: it carries the cause.
        let message = match &error {
            ExecError::Spawn { source, .. } => format!("{error}: {source}"),
            _ => error.to_string(),
        };
        Status::new(code, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code_of(errno: i32) -> (Code, String) {
        let status = errno_status("writing", "/a/b", &io::Error::from_raw_os_error(errno));
        (status.code(), status.message().to_string())
    }

    #[test]
    fn maps_errnos_to_codes_naming_the_path() {
        let cases = [
            (libc::ENOENT, Code::NotFound),
            (libc::EACCES, Code::PermissionDenied),
            (libc::EPERM, Code::PermissionDenied),
            (libc::EEXIST, Code::AlreadyExists),
            (libc::ENOTDIR, Code::FailedPrecondition),
            (libc::EISDIR, Code::FailedPrecondition),
            (libc::ENOTEMPTY, Code::FailedPrecondition),
            (libc::ENOSPC, Code::ResourceExhausted),
            (libc::EDQUOT, Code::ResourceExhausted),
            (libc::EIO, Code::Internal),
        ];
        for (errno, code) in cases {
            let (got, message) = code_of(errno);
            assert_eq!(got, code, "errno {errno}");
            assert!(message.contains("/a/b"), "{message}");
        }
        assert_eq!(code_of(libc::ENOENT).1, "no such file or directory: /a/b");
        assert!(
            code_of(libc::ENOSPC)
                .1
                .starts_with("the sandbox disk is full while writing /a/b")
        );
    }

    #[test]
    fn typed_errors_map_to_codes() {
        let status = Status::from(FileError::from(PathError::Empty));
        assert_eq!(status.code(), Code::InvalidArgument);
        let status = Status::from(FileError::IsDirectory("/x".into()));
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert_eq!(status.message(), "/x is a directory");
        let status = Status::from(FileError::MissingParent("/p".into()));
        assert_eq!(status.code(), Code::NotFound);
        let status = Status::from(ExecError::NotFound("nosuch".into()));
        assert_eq!(
            (status.code(), status.message()),
            (Code::NotFound, "command not found: nosuch")
        );
        let status = Status::from(ExecError::UnknownUser("bob".into()));
        assert_eq!(status.message(), "no user named bob in the sandbox");
        assert_eq!(status.code(), Code::InvalidArgument);
    }
}
