//! What warren's test suites and benchmarks share, in one place each:
//! starting `warren up` as a child process and waiting until it answers
//! ([`up`]), temporary data directories and the shared image cache
//! ([`home`]), what the host shows of a data directory: processes
//! ([`procs`]) and mounts ([`mounts`]), and test data that cannot be faked
//! ([`bytes`]).
//!
//! This crate links no warren crate (but `warren-mountinfo`, a decoder of
//! the kernel's mount tables that knows nothing of warren): it drives warren from the outside
//! (command line, `/health`, `/proc`), as a person or a script would, so
//! tests built on it check what warren does rather than what it says.
//! It is not an API boundary of warren; it changes with its tests.

pub mod bytes;
pub mod home;
pub mod mounts;
pub mod netns;
pub mod procs;
pub mod up;

pub use bytes::pattern;
pub use home::{DEFAULT_IMAGE_CACHE, image_cache, short_tempdir};
pub use mounts::{mount_points, mounts_under};
pub use procs::{HostProcess, host_processes, processes_mapping, processes_mentioning};
pub use up::{Stopped, UpCommand, UpError, WarrenUp, free_port, health_ok};
