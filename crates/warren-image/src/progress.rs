//! Progress reporting for builds that take from seconds to a minute.
//!
//! The first `warren run` on a machine builds the images; without feedback
//! that looks like a hang. The library only *reports*; the CLI decides how to
//! show it (spinner, plain lines), tests and services can ignore or log it.

/// Receives progress of an image build.
///
/// Calls come from the thread that called [`crate::ImageStore::ensure`], in
/// order. Nothing is reported on a cache hit except [`Progress::detail`]
/// lines, so a caller can show a spinner only when `step` is called.
pub trait Progress: Send + Sync {
    /// A new step of noticeable duration starts ("fetching kernel ...").
    fn step(&self, message: &str);
    /// A line of detail within the current step (e.g. a line of
    /// `mmdebstrap`'s output); shown in verbose mode, if at all.
    fn detail(&self, message: &str) {
        let _ = message;
    }
    /// The current step finished ("kernel 6.1.0-56-cloud-amd64 ready in 4.1 s").
    fn finished(&self, message: &str) {
        let _ = message;
    }
}

/// A [`Progress`] that discards everything, for callers that don't show it.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn step(&self, _message: &str) {}
}

/// A [`Progress`] that forwards to `tracing` (steps at info, details at
/// debug), for services and tests that already log.
#[derive(Debug, Default, Clone, Copy)]
pub struct TracingProgress;

impl Progress for TracingProgress {
    fn step(&self, message: &str) {
        tracing::info!("{message}");
    }
    fn detail(&self, message: &str) {
        tracing::debug!("{message}");
    }
    fn finished(&self, message: &str) {
        tracing::info!("{message}");
    }
}
