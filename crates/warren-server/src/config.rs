//! Service configuration.

use std::net::SocketAddr;
use std::path::PathBuf;

use warren_host::ManagerConfig;

/// Default listen address of `warren up`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7700";
/// Default limit of running sandboxes per team.
pub const DEFAULT_MAX_SANDBOXES_PER_TEAM: u32 = 20;

/// Default period of the reconciler.
pub const DEFAULT_RECONCILE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);

/// What a stopping `warren up` does with running sandboxes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ShutdownAction {
    /// Pause each one to disk; they resume on demand after the restart.
    #[default]
    Pause,
    /// Leave the VMs running; the next start re-attaches them.
    Keep,
    /// Kill them (they are marked stopped).
    Kill,
}

/// A `--on-shutdown` value that names no [`ShutdownAction`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a shutdown action; use pause, keep or kill")]
pub struct UnknownShutdownAction(pub String);

impl std::str::FromStr for ShutdownAction {
    type Err = UnknownShutdownAction;

    fn from_str(value: &str) -> Result<Self, UnknownShutdownAction> {
        match value.trim().to_ascii_lowercase().as_str() {
            "pause" => Ok(Self::Pause),
            "keep" => Ok(Self::Keep),
            "kill" => Ok(Self::Kill),
            other => Err(UnknownShutdownAction(other.to_owned())),
        }
    }
}

/// How the service runs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Data directory (database, keys, sandboxes, images).
    pub data_dir: PathBuf,
    /// Database URL; default `sqlite://<data_dir>/warren.db`. A
    /// `postgres://` URL works too.
    pub database_url: Option<String>,
    /// Running sandboxes a team may have at once.
    pub max_sandboxes_per_team: u32,
    /// Memory generations a paused sandbox keeps before they are merged
    /// (bounds resume's lookups and disk chains).
    pub snapshot_merge_cap: usize,
    /// Name of this host in records.
    pub host_name: String,
    /// What stopping the service does to running sandboxes.
    pub on_shutdown: ShutdownAction,
    /// How often the reconciler compares database, disk and processes.
    pub reconcile_interval: std::time::Duration,
    /// Where sandbox ports are served by host name (`{port}-{id}.{domain}`
    /// on this listener); `localhost:<listen port>` by default, which
    /// browsers resolve with no DNS set-up.
    pub domain: crate::port_host::PortDomain,
    /// The sandbox manager's settings.
    pub manager: ManagerConfig,
}

impl ServerConfig {
    /// The database URL in effect.
    pub fn database_url(&self) -> String {
        self.database_url.clone().unwrap_or_else(|| {
            format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join("warren.db").display()
            )
        })
    }

    /// Where the admin key is kept (root-only file).
    pub fn admin_key_path(&self) -> PathBuf {
        self.data_dir.join("admin.key")
    }

    /// Where the running service advertises itself to local clients.
    pub fn service_file_path(&self) -> PathBuf {
        self.data_dir.join("service.json")
    }
}

/// This machine's host name.
pub fn host_name() -> String {
    nix_hostname().unwrap_or_else(|| "localhost".into())
}

fn nix_hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}
