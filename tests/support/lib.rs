//! Helpers shared by the integration tests.
//!
//! Every test gets its own data directory (so "nothing left behind" can be
//! checked exactly) and shares the image cache named by
//! `WARREN_IMAGE_CACHE` (default `/var/lib/warren/test-images`), so images
//! are built once per machine, not once per test.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tempfile::TempDir;
use warren_sandbox::{Manager, ManagerConfig, NoProgress, Sandbox, SandboxSpec};

/// A manager over a private data directory.
pub struct TestEnv {
    /// The manager.
    pub manager: Manager,
    /// Its data directory (deleted on drop).
    pub data_dir: TempDir,
}

impl TestEnv {
    /// Sets up a fresh data directory with the shared image cache.
    pub fn new() -> Self {
        Self::at(&std::env::temp_dir())
    }

    /// Like [`TestEnv::new`], with the data directory inside `parent` (a
    /// small filesystem, for disk-full tests).
    pub fn at(parent: &Path) -> Self {
        Self::configured(parent, |_| {})
    }

    /// Like [`TestEnv::new`], with the manager's configuration changed by
    /// `adjust` first (a test's own DNS upstream, networking off).
    pub fn with_config(adjust: impl FnOnce(&mut ManagerConfig)) -> Self {
        Self::configured(&std::env::temp_dir(), adjust)
    }

    fn configured(parent: &Path, adjust: impl FnOnce(&mut ManagerConfig)) -> Self {
        let data_dir = tempfile::Builder::new()
            .prefix("wt")
            .tempdir_in(parent)
            .expect("create a test data dir");
        let mut config = ManagerConfig::from_env().expect("valid WARREN_* environment");
        config.data_dir = data_dir.path().to_path_buf();
        config.image_cache = Some(
            config
                .image_cache
                .clone()
                .unwrap_or_else(warren_testkit::image_cache),
        );
        config.ephemeral = true;
        adjust(&mut config);
        let manager = Manager::new(config).expect("manager");
        Self { manager, data_dir }
    }

    /// Creates a sandbox from the default image.
    pub async fn sandbox(&self) -> Sandbox {
        self.sandbox_with(SandboxSpec::default()).await
    }

    /// Creates a sandbox from a spec, failing the test with the error.
    pub async fn sandbox_with(&self, spec: SandboxSpec) -> Sandbox {
        match self.manager.create(spec, Arc::new(NoProgress)).await {
            Ok(sandbox) => sandbox,
            Err(error) => panic!("creating a sandbox failed: {error}"),
        }
    }

    /// Sandbox directories that exist now.
    pub fn sandbox_dirs(&self) -> Vec<PathBuf> {
        match std::fs::read_dir(self.manager.sandboxes_dir()) {
            Ok(entries) => entries.flatten().map(|e| e.path()).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Asserts that no VM process and no sandbox directory of this
    /// environment remains.
    pub fn assert_clean(&self) {
        let dirs = self.sandbox_dirs();
        assert!(dirs.is_empty(), "sandbox directories left behind: {dirs:?}");
        let processes = processes_mentioning(self.data_dir.path());
        assert!(
            processes.is_empty(),
            "VM processes left behind: {processes:?}"
        );
        let ram = self.ram_files();
        assert!(ram.is_empty(), "guest RAM files left behind: {ram:?}");
        let networks = self.networks();
        assert!(
            networks.is_empty(),
            "sandbox networks left behind: {networks:?}"
        );
    }

    /// Network slots this environment's data directory still claims (each
    /// a namespace, veth, TAP and rules on the host).
    pub fn networks(&self) -> Vec<String> {
        let owner = self.data_dir.path().display().to_string();
        warren_net::Claims::new(warren_net::DEFAULT_CLAIMS_DIR)
            .list()
            .unwrap_or_default()
            .into_iter()
            .filter(|(_, claim)| claim.owner == owner)
            .map(|(slot, claim)| format!("slot {slot}: {}", claim.sandbox))
            .collect()
    }

    /// Guest RAM files in host memory (the manager's volatile RAM directory).
    pub fn ram_files(&self) -> Vec<PathBuf> {
        let Some(dir) = self.manager.volatile_ram_dir() else {
            return Vec::new();
        };
        match std::fs::read_dir(dir) {
            Ok(entries) => entries.flatten().map(|e| e.path()).collect(),
            Err(_) => Vec::new(),
        }
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        // The per-environment RAM directory outlives nothing of the test.
        if let Some(dir) = self.manager.volatile_ram_dir() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl Default for TestEnv {
    fn default() -> Self {
        Self::new()
    }
}

/// Pids of processes whose command line mentions `path`, but no cargo
/// process (a `cargo test` naming the path is not a leak).
pub fn processes_mentioning(path: &Path) -> Vec<u32> {
    warren_testkit::processes_mentioning(path)
        .into_iter()
        .filter(|p| !p.cmdline().contains("cargo"))
        .map(|p| p.pid)
        .collect()
}

/// Runs `future`, failing the test if it takes longer than `seconds`: a
/// hung VM must fail a test, not hang the suite.
pub async fn within<T>(seconds: u64, what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(seconds), future).await {
        Ok(value) => value,
        Err(_) => panic!("{what} did not finish within {seconds} s"),
    }
}

/// Asserts that a guest's clock (`unix_time_ms` of its info) is within
/// five seconds of the host's: set at create, set again at resume.
pub fn assert_guest_clock_close(guest_unix_ms: i64, when: &str) {
    let host_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert!(
        (host_ms - guest_unix_ms).abs() < 5_000,
        "guest clock off by {} ms {when}",
        host_ms - guest_unix_ms
    );
}

/// Hex SHA-256 of bytes.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}
