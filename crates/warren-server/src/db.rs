//! Persistence: teams, API keys, sandboxes, templates, events.
//!
//! Uses sqlx's `Any` driver with portable SQL (`$N` placeholders, BIGINT
//! and TEXT columns only), so a `postgres://` URL can replace the embedded
//! SQLite file without touching a query. Migrations live in
//! `migrations/` and run at startup.

use std::collections::BTreeMap;
use std::str::FromStr;

use serde_json::Value;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Executor, FromRow};

/// Milliseconds since the epoch, now.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The database.
#[derive(Debug, Clone)]
pub struct Db {
    pool: AnyPool,
}

/// A team.
#[derive(Debug, Clone, FromRow)]
pub struct TeamRow {
    /// Id (`team_...`).
    pub id: String,
    /// Unique name.
    pub name: String,
    /// 1 for the admin team.
    pub is_admin: i64,
}

/// An API key (without its secret).
#[derive(Debug, Clone, FromRow)]
pub struct KeyRow {
    /// Id (`key_...`).
    pub id: String,
    /// Owning team.
    pub team_id: String,
    /// Team name.
    pub team_name: String,
    /// Whether the team is the admin team.
    pub is_admin: i64,
    /// Caller's label.
    pub name: String,
    /// First characters of the key, for recognising it.
    pub prefix: String,
    /// Creation time (ms).
    pub created_at: i64,
    /// Last authenticated use (ms).
    pub last_used_at: Option<i64>,
    /// Revocation time (ms).
    pub revoked_at: Option<i64>,
}

/// A sandbox record.
#[derive(Debug, Clone, FromRow)]
pub struct SandboxRow {
    /// Id (`sb-...`).
    pub id: String,
    /// Owning team.
    pub team_id: String,
    /// Template it was created from.
    pub template_id: String,
    /// `running`, `paused` or `stopped`.
    pub state: String,
    /// vCPUs.
    pub cpus: i64,
    /// Memory.
    pub memory_mib: i64,
    /// JSON object of strings.
    pub metadata: String,
    /// JSON object of strings.
    pub env: String,
    /// 1 if the sandbox pauses instead of dying at its timeout.
    pub auto_pause: i64,
    /// Timeout (0 = none).
    pub timeout_secs: i64,
    /// Creation time (ms).
    pub created_at: i64,
    /// When the reaper acts (ms).
    pub expires_at: Option<i64>,
    /// When it stopped (ms).
    pub stopped_at: Option<i64>,
    /// Why it stopped.
    pub stop_reason: Option<String>,
    /// Host that runs it.
    pub host: String,
    /// 1 if operations on the paused sandbox resume it first.
    pub auto_resume: i64,
    /// Why it is paused when warren paused it on its own
    /// (`host_shutdown`); such sandboxes resume on demand.
    pub pause_reason: Option<String>,
    /// The token that opens its ports (NULL for records from before ports).
    pub access_token: Option<String>,
    /// JSON array of the ports anyone may open (NULL: none).
    pub public_ports: Option<String>,
}

impl SandboxRow {
    /// Metadata as a map (empty if the stored JSON is damaged).
    pub fn metadata_map(&self) -> BTreeMap<String, String> {
        serde_json::from_str(&self.metadata).unwrap_or_default()
    }

    /// Environment as a map.
    pub fn env_map(&self) -> BTreeMap<String, String> {
        serde_json::from_str(&self.env).unwrap_or_default()
    }

    /// The ports anyone may open (none if the stored JSON is damaged: a
    /// damaged record closes ports rather than opening them).
    pub fn public_port_list(&self) -> Vec<u16> {
        self.public_ports
            .as_deref()
            .and_then(|json| serde_json::from_str(json).ok())
            .unwrap_or_default()
    }
}

/// A template record.
#[derive(Debug, Clone, FromRow)]
pub struct TemplateRow {
    /// Id (the image name for built-in templates).
    pub id: String,
    /// Owning team; NULL for built-in (public) templates.
    pub team_id: Option<String>,
    /// Display name.
    pub name: String,
    /// `image` or `snapshot`.
    pub kind: String,
    /// One line.
    pub description: String,
    /// Image it boots.
    pub image: String,
    /// Locked vCPUs (snapshot templates).
    pub cpus: Option<i64>,
    /// Locked memory (snapshot templates).
    pub memory_mib: Option<i64>,
    /// Creation time (ms).
    pub created_at: i64,
}

/// A lifecycle event.
#[derive(Debug, Clone, FromRow)]
pub struct EventRow {
    /// Id (`ev_...`).
    pub id: String,
    /// Team it belongs to.
    pub team_id: String,
    /// Sandbox concerned, if any.
    pub sandbox_id: Option<String>,
    /// e.g. `sandbox.created`.
    pub kind: String,
    /// Key id, or `system`.
    pub actor: String,
    /// When (ms).
    pub at: i64,
    /// JSON detail.
    pub detail: String,
}

const KEY_COLUMNS: &str = "k.id, k.team_id, t.name AS team_name, t.is_admin, k.name, k.prefix, k.created_at, k.last_used_at, k.revoked_at";
const SANDBOX_COLUMNS: &str = "id, team_id, template_id, state, cpus, memory_mib, metadata, env, auto_pause, timeout_secs, created_at, expires_at, stopped_at, stop_reason, host, auto_resume, pause_reason, access_token, public_ports";
const TEMPLATE_COLUMNS: &str =
    "id, team_id, name, kind, description, image, cpus, memory_mib, created_at";

impl Db {
    /// Connects (creating an SQLite file if needed) and runs migrations.
    pub async fn connect(url: &str) -> Result<Self, sqlx::Error> {
        sqlx::any::install_default_drivers();
        let sqlite = url.starts_with("sqlite:");
        let options = AnyConnectOptions::from_str(url)?;
        let pool = AnyPoolOptions::new()
            .max_connections(if sqlite { 4 } else { 16 })
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if sqlite {
                        // WAL lets readers run beside the writer; the busy
                        // timeout makes concurrent writers wait instead of
                        // failing with SQLITE_BUSY.
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA busy_timeout = 10000").await?;
                        conn.execute("PRAGMA synchronous = NORMAL").await?;
                        conn.execute("PRAGMA foreign_keys = ON").await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Self { pool })
    }

    /// Closes the pool (flushes SQLite's WAL).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    // ---- teams and keys ----

    /// The team with this name.
    pub async fn team_by_name(&self, name: &str) -> Result<Option<TeamRow>, sqlx::Error> {
        sqlx::query_as::<_, TeamRow>("SELECT id, name, is_admin FROM teams WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await
    }

    /// Creates a team.
    pub async fn insert_team(
        &self,
        id: &str,
        name: &str,
        is_admin: bool,
    ) -> Result<(), sqlx::Error> {
        sqlx::query("INSERT INTO teams (id, name, is_admin, created_at) VALUES ($1, $2, $3, $4)")
            .bind(id)
            .bind(name)
            .bind(i64::from(is_admin))
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Stores a key (by hash).
    pub async fn insert_key(
        &self,
        id: &str,
        team_id: &str,
        name: &str,
        prefix: &str,
        hash: &str,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO api_keys (id, team_id, name, prefix, hash, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(id)
        .bind(team_id)
        .bind(name)
        .bind(prefix)
        .bind(hash)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The live (not revoked) key with this hash.
    pub async fn key_by_hash(&self, hash: &str) -> Result<Option<KeyRow>, sqlx::Error> {
        sqlx::query_as::<_, KeyRow>(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys k JOIN teams t ON t.id = k.team_id WHERE k.hash = $1 AND k.revoked_at IS NULL"
        ))
        .bind(hash)
        .fetch_optional(&self.pool)
        .await
    }

    /// One key of a team.
    pub async fn key(&self, team_id: &str, id: &str) -> Result<Option<KeyRow>, sqlx::Error> {
        sqlx::query_as::<_, KeyRow>(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys k JOIN teams t ON t.id = k.team_id WHERE k.team_id = $1 AND k.id = $2"
        ))
        .bind(team_id)
        .bind(id)
        .fetch_optional(&self.pool)
        .await
    }

    /// Keys of a team, newest first.
    pub async fn keys(&self, team_id: &str) -> Result<Vec<KeyRow>, sqlx::Error> {
        sqlx::query_as::<_, KeyRow>(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys k JOIN teams t ON t.id = k.team_id WHERE k.team_id = $1 ORDER BY k.created_at DESC, k.id"
        ))
        .bind(team_id)
        .fetch_all(&self.pool)
        .await
    }

    /// Revokes a key; false if it was not found or already revoked.
    pub async fn revoke_key(&self, team_id: &str, id: &str) -> Result<bool, sqlx::Error> {
        let done = sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE team_id = $2 AND id = $3 AND revoked_at IS NULL")
            .bind(now_ms())
            .bind(team_id)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Records a key's use.
    pub async fn touch_key(&self, id: &str) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE api_keys SET last_used_at = $1 WHERE id = $2")
            .bind(now_ms())
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    // ---- templates ----

    /// Inserts or refreshes a built-in template.
    pub async fn upsert_builtin_template(
        &self,
        id: &str,
        description: &str,
    ) -> Result<(), sqlx::Error> {
        let updated = sqlx::query("UPDATE templates SET description = $1 WHERE id = $2")
            .bind(description)
            .bind(id)
            .execute(&self.pool)
            .await?;
        if updated.rows_affected() == 0 {
            sqlx::query(
                "INSERT INTO templates (id, team_id, name, kind, description, image, cpus, memory_mib, created_at) VALUES ($1, NULL, $2, 'image', $3, $4, NULL, NULL, $5)",
            )
            .bind(id)
            .bind(id)
            .bind(description)
            .bind(id)
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        }
        Ok(())
    }

    /// Records a team's snapshot template.
    pub async fn insert_snapshot_template(
        &self,
        row: &TemplateRow,
        source_sandbox: &str,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO templates (id, team_id, name, kind, description, image, cpus, memory_mib, created_at, source_sandbox) VALUES ($1, $2, $3, 'snapshot', $4, $5, $6, $7, $8, $9)",
        )
        .bind(&row.id)
        .bind(&row.team_id)
        .bind(&row.name)
        .bind(&row.description)
        .bind(&row.image)
        .bind(row.cpus)
        .bind(row.memory_mib)
        .bind(row.created_at)
        .bind(source_sandbox)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Deletes a team's snapshot template record.
    pub async fn delete_snapshot_template(
        &self,
        team_id: &str,
        id: &str,
    ) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(
            "DELETE FROM templates WHERE id = $1 AND team_id = $2 AND kind = 'snapshot'",
        )
        .bind(id)
        .bind(team_id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Every team's snapshot templates (the reconciler compares them with
    /// the template directories on the host).
    pub async fn snapshot_templates(&self) -> Result<Vec<TemplateRow>, sqlx::Error> {
        sqlx::query_as::<_, TemplateRow>(&format!(
            "SELECT {TEMPLATE_COLUMNS} FROM templates WHERE kind = 'snapshot' ORDER BY created_at, id"
        ))
        .fetch_all(&self.pool)
        .await
    }

    /// Whether any team has a template with this id.
    pub async fn template_id_taken(&self, id: &str) -> Result<bool, sqlx::Error> {
        let (count,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM templates WHERE id = $1")
            .bind(id)
            .fetch_one(&self.pool)
            .await?;
        Ok(count > 0)
    }

    /// Templates a team can use (public ones and its own).
    pub async fn templates(&self, team_id: &str) -> Result<Vec<TemplateRow>, sqlx::Error> {
        sqlx::query_as::<_, TemplateRow>(&format!(
            "SELECT {TEMPLATE_COLUMNS} FROM templates WHERE team_id IS NULL OR team_id = $1 ORDER BY created_at, id"
        ))
        .bind(team_id)
        .fetch_all(&self.pool)
        .await
    }

    /// One template a team can use.
    pub async fn template(
        &self,
        team_id: &str,
        id: &str,
    ) -> Result<Option<TemplateRow>, sqlx::Error> {
        sqlx::query_as::<_, TemplateRow>(&format!(
            "SELECT {TEMPLATE_COLUMNS} FROM templates WHERE id = $1 AND (team_id IS NULL OR team_id = $2)"
        ))
        .bind(id)
        .bind(team_id)
        .fetch_optional(&self.pool)
        .await
    }

    // ---- sandboxes ----

    /// Records a new running sandbox.
    pub async fn insert_sandbox(&self, row: &SandboxRow) -> Result<(), sqlx::Error> {
        sqlx::query(&format!(
            "INSERT INTO sandboxes ({SANDBOX_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)"
        ))
        .bind(&row.id)
        .bind(&row.team_id)
        .bind(&row.template_id)
        .bind(&row.state)
        .bind(row.cpus)
        .bind(row.memory_mib)
        .bind(&row.metadata)
        .bind(&row.env)
        .bind(row.auto_pause)
        .bind(row.timeout_secs)
        .bind(row.created_at)
        .bind(row.expires_at)
        .bind(row.stopped_at)
        .bind(&row.stop_reason)
        .bind(&row.host)
        .bind(row.auto_resume)
        .bind(&row.pause_reason)
        .bind(&row.access_token)
        .bind(&row.public_ports)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A team's sandbox.
    pub async fn sandbox(
        &self,
        team_id: &str,
        id: &str,
    ) -> Result<Option<SandboxRow>, sqlx::Error> {
        sqlx::query_as::<_, SandboxRow>(&format!(
            "SELECT {SANDBOX_COLUMNS} FROM sandboxes WHERE team_id = $1 AND id = $2"
        ))
        .bind(team_id)
        .bind(id)
        .fetch_optional(&self.pool)
        .await
    }

    /// A team's sandboxes, newest first, optionally in one state.
    pub async fn sandboxes(
        &self,
        team_id: &str,
        state: Option<&str>,
    ) -> Result<Vec<SandboxRow>, sqlx::Error> {
        match state {
            Some(state) => {
                sqlx::query_as::<_, SandboxRow>(&format!(
                    "SELECT {SANDBOX_COLUMNS} FROM sandboxes WHERE team_id = $1 AND state = $2 ORDER BY created_at DESC, id"
                ))
                .bind(team_id)
                .bind(state)
                .fetch_all(&self.pool)
                .await
            }
            None => {
                sqlx::query_as::<_, SandboxRow>(&format!(
                    "SELECT {SANDBOX_COLUMNS} FROM sandboxes WHERE team_id = $1 ORDER BY created_at DESC, id"
                ))
                .bind(team_id)
                .fetch_all(&self.pool)
                .await
            }
        }
    }

    /// Every sandbox in a state, on any team (reconciliation).
    pub async fn sandboxes_in_state(&self, state: &str) -> Result<Vec<SandboxRow>, sqlx::Error> {
        sqlx::query_as::<_, SandboxRow>(&format!(
            "SELECT {SANDBOX_COLUMNS} FROM sandboxes WHERE state = $1"
        ))
        .bind(state)
        .fetch_all(&self.pool)
        .await
    }

    /// Running sandboxes whose expiry has passed.
    pub async fn expired_sandboxes(&self, now: i64) -> Result<Vec<SandboxRow>, sqlx::Error> {
        sqlx::query_as::<_, SandboxRow>(&format!(
            "SELECT {SANDBOX_COLUMNS} FROM sandboxes WHERE state = 'running' AND expires_at IS NOT NULL AND expires_at <= $1"
        ))
        .bind(now)
        .fetch_all(&self.pool)
        .await
    }

    /// Number of a team's sandboxes in a state.
    pub async fn count_sandboxes(&self, team_id: &str, state: &str) -> Result<i64, sqlx::Error> {
        let (count,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM sandboxes WHERE team_id = $1 AND state = $2")
                .bind(team_id)
                .bind(state)
                .fetch_one(&self.pool)
                .await?;
        Ok(count)
    }

    /// Number of sandboxes per state, all teams (metrics).
    pub async fn count_by_state(&self) -> Result<Vec<(String, i64)>, sqlx::Error> {
        sqlx::query_as("SELECT state, COUNT(*) FROM sandboxes GROUP BY state")
            .fetch_all(&self.pool)
            .await
    }

    /// Marks a sandbox stopped (if it is not already).
    pub async fn mark_stopped(&self, id: &str, reason: &str) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(
            "UPDATE sandboxes SET state = 'stopped', stopped_at = $1, stop_reason = $2, expires_at = NULL WHERE id = $3 AND state <> 'stopped'",
        )
        .bind(now_ms())
        .bind(reason)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Moves a sandbox between `running` and `paused` (not from `stopped`).
    pub async fn set_state(
        &self,
        id: &str,
        state: &str,
        expires_at: Option<i64>,
    ) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(
            "UPDATE sandboxes SET state = $1, expires_at = $2, pause_reason = NULL WHERE id = $3 AND state <> 'stopped'",
        )
        .bind(state)
        .bind(expires_at)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Any team's sandbox by id: for a port request that presents the
    /// sandbox's access token (or none, for a public port) instead of a key.
    pub async fn sandbox_by_id(&self, id: &str) -> Result<Option<SandboxRow>, sqlx::Error> {
        sqlx::query_as::<_, SandboxRow>(&format!(
            "SELECT {SANDBOX_COLUMNS} FROM sandboxes WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
    }

    /// Replaces the ports of a team's sandbox that anyone may open; false
    /// if the team has no such sandbox.
    pub async fn set_public_ports(
        &self,
        team_id: &str,
        id: &str,
        ports: &[u16],
    ) -> Result<bool, sqlx::Error> {
        let json = serde_json::to_string(ports).expect("ports serialize");
        let done =
            sqlx::query("UPDATE sandboxes SET public_ports = $1 WHERE team_id = $2 AND id = $3")
                .bind(json)
                .bind(team_id)
                .bind(id)
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Records why warren paused a sandbox on its own.
    pub async fn set_pause_reason(&self, id: &str, reason: &str) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE sandboxes SET pause_reason = $1 WHERE id = $2 AND state = 'paused'")
            .bind(reason)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Sandboxes (not stopped) created from a template.
    pub async fn template_users(&self, template_id: &str) -> Result<Vec<String>, sqlx::Error> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT id FROM sandboxes WHERE template_id = $1 AND state <> 'stopped' ORDER BY id",
        )
        .bind(template_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }

    /// Sets a sandbox's timeout and expiry.
    pub async fn set_timeout(
        &self,
        id: &str,
        timeout_secs: i64,
        expires_at: Option<i64>,
    ) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE sandboxes SET timeout_secs = $1, expires_at = $2 WHERE id = $3")
            .bind(timeout_secs)
            .bind(expires_at)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    // ---- events ----

    /// Records an event.
    pub async fn insert_event(
        &self,
        team_id: &str,
        sandbox_id: Option<&str>,
        kind: &str,
        actor: &str,
        detail: &Value,
    ) -> Result<(), sqlx::Error> {
        sqlx::query("INSERT INTO events (id, team_id, sandbox_id, kind, actor, at, detail) VALUES ($1, $2, $3, $4, $5, $6, $7)")
            .bind(crate::ids::new_id("ev"))
            .bind(team_id)
            .bind(sandbox_id)
            .bind(kind)
            .bind(actor)
            .bind(now_ms())
            .bind(detail.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// A team's events, newest first.
    pub async fn events(
        &self,
        team_id: &str,
        sandbox_id: Option<&str>,
        limit: i64,
    ) -> Result<Vec<EventRow>, sqlx::Error> {
        let columns = "id, team_id, sandbox_id, kind, actor, at, detail";
        match sandbox_id {
            Some(sandbox_id) => {
                sqlx::query_as::<_, EventRow>(&format!(
                    "SELECT {columns} FROM events WHERE team_id = $1 AND sandbox_id = $2 ORDER BY at DESC, id DESC LIMIT $3"
                ))
                .bind(team_id)
                .bind(sandbox_id)
                .bind(limit)
                .fetch_all(&self.pool)
                .await
            }
            None => {
                sqlx::query_as::<_, EventRow>(&format!(
                    "SELECT {columns} FROM events WHERE team_id = $1 ORDER BY at DESC, id DESC LIMIT $2"
                ))
                .bind(team_id)
                .bind(limit)
                .fetch_all(&self.pool)
                .await
            }
        }
    }
}
