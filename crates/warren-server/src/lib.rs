//! The warren service: the control plane (tenancy, persistence, lifecycle,
//! REST API with OpenAPI, web console) over a host agent.
//!
//! `warren up` calls [`run`]: one process holding the control plane and the
//! local host agent, with an embedded SQLite database under the data
//! directory. The two talk only through the [`warren_host::Host`] trait, so
//! a later multi-host deployment can put a network between them.

mod auth;
pub mod config;
mod console;
#[cfg(test)]
mod control_plane_tests;
pub mod db;
pub mod error;
#[cfg(test)]
mod fake_host;
mod ids;
mod metrics;
pub mod model;
pub mod port_host;
mod port_proxy;
mod routes;
mod snapshots;
pub mod state;

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use warren_host::{Host, HostAgent};

pub use config::ServerConfig;
pub use routes::{openapi, openapi_document};

/// Why the service could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The data directory is unusable.
    #[error("the data directory {path} cannot be used; check that it exists and is writable")]
    DataDir {
        /// The directory.
        path: std::path::PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// The database could not be opened or migrated.
    #[error("the database {url} could not be opened or migrated")]
    Database {
        /// URL (credentials stripped).
        url: String,
        /// The error.
        source: sqlx::Error,
    },
    /// The sandbox manager could not start.
    #[error(transparent)]
    Manager(#[from] warren_host::ManagerError),
    /// The listen address is taken or not allowed.
    #[error(
        "cannot listen on {addr}; is warren already running? (choose another address with --listen)"
    )]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// OS error.
        source: std::io::Error,
    },
    /// The HTTP server failed.
    #[error("the HTTP server failed")]
    Http(#[source] std::io::Error),
}

/// What a start of the service reports to its caller (printed by `warren up`).
#[derive(Debug, Clone)]
pub struct Started {
    /// Base URL.
    pub url: String,
    /// The admin key if it was created by this start (shown once).
    pub new_admin_key: Option<String>,
    /// Path of the admin key file.
    pub admin_key_path: std::path::PathBuf,
    /// What start-up recovery found and fixed.
    pub recovered: state::Recovered,
}

/// Runs the service until `shutdown` resolves; then stops every sandbox and
/// closes the database. `on_started` is called once the service listens.
pub async fn run(
    config: ServerConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    on_started: impl FnOnce(&Started),
) -> Result<(), ServeError> {
    std::fs::create_dir_all(&config.data_dir).map_err(|source| ServeError::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    let url = config.database_url();
    let db = db::Db::connect(&url)
        .await
        .map_err(|source| ServeError::Database {
            url: redact(&url),
            source,
        })?;

    let host: Arc<dyn Host> = HostAgent::start(config.manager.clone())?;
    let state = state::AppState::new(db.clone(), host.clone(), config.clone());

    seed_templates(&state)
        .await
        .map_err(|source| ServeError::Database {
            url: redact(&url),
            source,
        })?;
    let new_admin_key = bootstrap_admin(&state).await?;
    // Recovery comes before serving: nothing may act on a sandbox whose
    // VM is still being taken over.
    let recovered = state
        .recover_at_start()
        .await
        .map_err(|source| ServeError::Database {
            url: redact(&url),
            source,
        })?;

    // Build the default image now, so the first create does not wait for it.
    {
        let host = host.clone();
        tokio::spawn(async move {
            if let Err(error) = host
                .prepare_image(warren_host::defaults::DEFAULT_IMAGE)
                .await
            {
                tracing::error!(%error, "building the default image failed; creating sandboxes will fail until it is fixed");
            }
        });
    }
    spawn_background(&state);

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServeError::Listen {
            addr: config.listen,
            source,
        })?;
    let local = listener.local_addr().map_err(ServeError::Http)?;
    let base_url = format!("http://{local}");
    write_service_file(&config.service_file_path(), &base_url);
    on_started(&Started {
        url: base_url,
        new_admin_key,
        admin_key_path: config.admin_key_path(),
        recovered,
    });

    let app = routes::router(state.clone());
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await;

    tracing::info!("shutting down: stopping sandboxes");
    state.shutdown_sandboxes().await;
    let _ = std::fs::remove_file(config.service_file_path());
    db.close().await;
    served.map_err(ServeError::Http)
}

fn spawn_background(state: &state::AppState) {
    let reconciler = state.clone();
    tokio::spawn(async move {
        let period = reconciler
            .config
            .reconcile_interval
            .max(Duration::from_millis(100));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            if let Err(error) = reconciler.reconcile().await {
                tracing::warn!(%error, "the reconciler could not read the database");
            }
        }
    });
    let reaper = state.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            reaper.reap_expired().await;
        }
    });
    let watcher = state.clone();
    let mut events = state.host.subscribe();
    tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(event) => watcher.on_host_event(event).await,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            }
        }
    });
}

async fn seed_templates(state: &state::AppState) -> Result<(), sqlx::Error> {
    for recipe in warren_image::ImageStore::catalog() {
        state
            .db
            .upsert_builtin_template(recipe.name, recipe.description)
            .await?;
    }
    Ok(())
}

/// Creates the admin team and key on the first start; later starts reuse
/// them. Returns the key if it was created now.
async fn bootstrap_admin(state: &state::AppState) -> Result<Option<String>, ServeError> {
    let db_error = |source| ServeError::Database {
        url: redact(&state.config.database_url()),
        source,
    };
    let key_path = state.config.admin_key_path();
    if state
        .db
        .team_by_name("admin")
        .await
        .map_err(db_error)?
        .is_some()
    {
        if !key_path.exists() {
            tracing::warn!(
                path = %key_path.display(),
                "the admin key file is missing; create a key with an existing admin key, or remove the database to start over"
            );
        }
        return Ok(None);
    }
    let team_id = ids::new_id("team");
    state
        .db
        .insert_team(&team_id, "admin", true)
        .await
        .map_err(db_error)?;
    let key = ids::new_api_key();
    state
        .db
        .insert_key(
            &ids::new_id("key"),
            &team_id,
            "admin",
            &ids::key_prefix(&key),
            &ids::hash_api_key(&key),
        )
        .await
        .map_err(db_error)?;
    write_secret(&key_path, &key).map_err(|source| ServeError::DataDir {
        path: key_path.clone(),
        source,
    })?;
    Ok(Some(key))
}

/// Writes a root-only file atomically.
fn write_secret(path: &Path, secret: &str) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".admin.key.tmp-{}", std::process::id()));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(secret.as_bytes())?;
        file.write_all(b"\n")?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn write_service_file(path: &Path, url: &str) {
    let body = serde_json::json!({"url": url, "pid": std::process::id()}).to_string();
    if let Err(error) = warren_vmm::process::write_atomic(path, body.as_bytes()) {
        tracing::warn!(%error, path = %path.display(), "could not advertise the service to local clients");
    }
}

/// A database URL without its password.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_credentials() {
        assert_eq!(
            redact("postgres://u:p@h:5432/db"),
            "postgres://***@h:5432/db"
        );
        assert_eq!(redact("sqlite:///x.db"), "sqlite:///x.db");
    }
}
