//! Terminal progress for long work: the image builds `warren run`,
//! `warren images build` and the benchmarks wait for.

use std::sync::Mutex;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// Shows image-build steps as a spinner on stderr; silent on a cache hit.
pub struct SpinnerProgress {
    bar: Mutex<Option<ProgressBar>>,
    verbose: bool,
}

impl SpinnerProgress {
    /// A spinner that appears on the first step.
    pub fn new(verbose: bool) -> Self {
        Self {
            bar: Mutex::new(None),
            verbose,
        }
    }

    fn bar(&self) -> ProgressBar {
        let mut guard = self.bar.lock().expect("progress lock");
        guard
            .get_or_insert_with(|| {
                let bar = ProgressBar::new_spinner();
                bar.set_style(
                    ProgressStyle::with_template("{spinner} [{elapsed}] {msg}")
                        .expect("valid template"),
                );
                bar.enable_steady_tick(Duration::from_millis(120));
                bar
            })
            .clone()
    }

    /// Removes the spinner (before command output starts).
    pub fn clear(&self) {
        if let Some(bar) = self.bar.lock().expect("progress lock").take() {
            bar.finish_and_clear();
        }
    }
}

impl warren_image::Progress for SpinnerProgress {
    fn step(&self, message: &str) {
        self.bar().set_message(message.to_string());
    }

    fn detail(&self, message: &str) {
        if self.verbose {
            self.bar().println(format!("  {message}"));
        }
    }

    fn finished(&self, message: &str) {
        self.bar().println(format!("✓ {message}"));
    }
}
