//! Pause, resume, snapshot templates and clones in the control plane:
//! records, locks, events and errors around the host agent's operations.

use std::time::Instant;

use axum::http::StatusCode;
use serde_json::json;
use warren_host::{HostError, HostErrorKind, UnavailableReason};

use crate::auth::Caller;
use crate::db::{SandboxRow, TemplateRow, now_ms};
use crate::error::{ApiError, ApiResult};
use crate::model::{PauseResult, Sandbox, Snapshot};
use crate::state::AppState;
use warren_api::message::one_line;

fn disk_full(message: String) -> ApiError {
    ApiError::new(StatusCode::INSUFFICIENT_STORAGE, "disk_full", message)
        .hint("free space on the disk that holds warren's data directory, then retry")
}

impl From<HostError> for ApiError {
    fn from(error: HostError) -> Self {
        match error.kind() {
            HostErrorKind::OutOfMemory { .. } => ApiError::capacity(one_line(&error))
                .hint("delete or pause other sandboxes, then retry"),
            HostErrorKind::Invalid { reason } => ApiError::invalid(reason),
            HostErrorKind::UnknownImage { name, available } => {
                ApiError::invalid(format!("no template or image named {name:?}"))
                    .hint(format!("available: {}", available.join(", ")))
            }
            HostErrorKind::NotPaused | HostErrorKind::TemplateConflict => {
                ApiError::conflict(one_line(&error))
            }
            HostErrorKind::NoTemplate => ApiError::not_found(one_line(&error)),
            HostErrorKind::DiskFull => disk_full(one_line(&error)),
            HostErrorKind::Unavailable { reason } => {
                let hint = match reason {
                    UnavailableReason::Paused => {
                        "the sandbox is paused (or being paused): resume it, then retry"
                    }
                    UnavailableReason::VmExited => {
                        "get the sandbox again in a moment: it is paused at its last snapshot if it had one, else stopped"
                    }
                    UnavailableReason::Gone => "the sandbox is no longer running; create a new one",
                };
                ApiError::conflict(one_line(&error)).hint(hint)
            }
            HostErrorKind::VmEndedDuringPause => ApiError::conflict(one_line(&error)).hint(
                "get the sandbox again in a moment: it is paused at its last snapshot if it had one, else stopped",
            ),
            HostErrorKind::PauseFailed { .. } | HostErrorKind::Internal => {
                ApiError::internal(one_line(&error))
            }
        }
    }
}

/// The lock serializing creation, deletion and reconciliation of one
/// snapshot template.
pub(crate) fn template_lock_key(name: &str) -> String {
    format!("template:{name}")
}

impl AppState {
    /// Pauses a running sandbox (the caller holds its lock).
    pub(crate) async fn pause_locked(
        &self,
        row: &SandboxRow,
        actor: &str,
    ) -> ApiResult<PauseResult> {
        let id = row.id.as_str();
        let started = Instant::now();
        let outcome = self.host.pause(id, self.config.snapshot_merge_cap).await;
        match outcome {
            Ok(Some(report)) => {
                self.db.set_state(id, "paused", None).await?;
                self.metrics
                    .events
                    .with_label_values(&["sandbox.paused"])
                    .inc();
                self.event(
                    &row.team_id,
                    Some(id),
                    "sandbox.paused",
                    actor,
                    json!({
                        "generation": report.generation,
                        "full": report.full,
                        "memory_bytes": report.memory_bytes,
                        "chain_length": report.chain_length,
                        "merged": report.merged,
                        "duration_ms": report.duration_ms,
                    }),
                )
                .await;
                let row = self
                    .db
                    .sandbox(&row.team_id, id)
                    .await?
                    .unwrap_or_else(|| row.clone());
                Ok(PauseResult {
                    sandbox: self.view(&row),
                    memory_bytes: report.memory_bytes,
                    full: report.full,
                    chain_length: report.chain_length as u32,
                    merged: report.merged,
                    duration_ms: started.elapsed().as_millis() as u64,
                })
            }
            Ok(None) => Err(ApiError::conflict(format!("sandbox {id}'s VM exited"))
                .hint("get the sandbox again in a moment: it is paused at its last snapshot if it had one, else stopped")),
            Err(error) => {
                // The VM was released: the record follows where it ended.
                match error.pause_released() {
                    Some(true) => {
                        self.db.set_state(id, "paused", None).await?;
                    }
                    Some(false) => self.stop_record(row, "pause_failed", "system").await,
                    None => {}
                }
                self.event(
                    &row.team_id,
                    Some(id),
                    "sandbox.pause_failed",
                    actor,
                    json!({"error": one_line(&error)}),
                )
                .await;
                Err(error.into())
            }
        }
    }

    /// `POST /v1/sandboxes/{id}/pause`.
    pub async fn pause_sandbox(&self, caller: &Caller, id: &str) -> ApiResult<PauseResult> {
        let (row, _guard) = self.locked_row(caller, id).await?;
        if row.state != "running" {
            return Err(ApiError::conflict(format!(
                "sandbox {id} is {}; only running sandboxes can be paused",
                row.state
            )));
        }
        self.pause_locked(&row, &caller.key_id).await
    }

    /// Resumes a paused sandbox (the caller holds its lock).
    pub(crate) async fn resume_locked(&self, row: &SandboxRow, actor: &str) -> ApiResult<()> {
        let id = row.id.as_str();
        let memory = u32::try_from(row.memory_mib).unwrap_or(u32::MAX);
        let report = match self.host.resume(id, memory).await {
            Ok(report) => report,
            Err(error) if error.kind() == HostErrorKind::NotPaused => {
                // The record says paused but the host has no snapshot.
                self.stop_record(row, "snapshot_lost", "system").await;
                return Err(ApiError::conflict(format!(
                    "sandbox {id} was paused but its snapshot is gone from this host"
                ))
                .hint("create a new sandbox"));
            }
            Err(error) => {
                self.event(
                    &row.team_id,
                    Some(id),
                    "sandbox.resume_failed",
                    actor,
                    json!({"error": one_line(&error)}),
                )
                .await;
                return Err(error.into());
            }
        };
        let expires_at = (row.timeout_secs > 0).then(|| now_ms() + row.timeout_secs * 1000);
        self.db.set_state(id, "running", expires_at).await?;
        self.event(
            &row.team_id,
            Some(id),
            "sandbox.resumed",
            actor,
            json!({"duration_ms": report.duration_ms, "chain_length": report.chain_length}),
        )
        .await;
        Ok(())
    }

    /// `POST /v1/sandboxes/{id}/resume`.
    pub async fn resume_sandbox(&self, caller: &Caller, id: &str) -> ApiResult<Sandbox> {
        let (row, _guard) = self.locked_row(caller, id).await?;
        if row.state != "paused" {
            return Err(ApiError::conflict(format!(
                "sandbox {id} is {}; only paused sandboxes can be resumed",
                row.state
            )));
        }
        self.resume_locked(&row, &caller.key_id).await?;
        let row = self.sandbox_row(caller, id).await?;
        Ok(self.view(&row))
    }

    /// `POST /v1/sandboxes/{id}/snapshots`: a running sandbox is paused for
    /// the copy and resumed; a paused one stays paused.
    pub async fn snapshot_sandbox(
        &self,
        caller: &Caller,
        id: &str,
        name: &str,
    ) -> ApiResult<Snapshot> {
        warren_host::validate_template_name(name)?;
        let (row, _guard) = self.locked_row(caller, id).await?;
        if row.state == "stopped" {
            return Err(ApiError::conflict(format!(
                "sandbox {id} is stopped; only running or paused sandboxes can be snapshotted"
            )));
        }
        if self.db.template_id_taken(name).await? {
            return Err(
                ApiError::conflict(format!("a template named {name:?} already exists"))
                    .hint("pick another name, or delete the snapshot first"),
            );
        }
        // Held until the record is written: the reconciler takes template
        // files no record claims for leftovers of an interrupted creation.
        let template_lock = self.lock_for(&template_lock_key(name));
        let _template_guard = template_lock.lock().await;
        let was_running = row.state == "running";
        if was_running {
            self.pause_locked(&row, &caller.key_id).await?;
        }
        let taken = self.host.create_template(id, name).await;
        if was_running {
            let row = self
                .db
                .sandbox(&caller.team_id, id)
                .await?
                .unwrap_or(row.clone());
            if let Err(error) = self.resume_locked(&row, &caller.key_id).await {
                tracing::warn!(%id, ?error, "resuming after a snapshot failed; it stays paused");
            }
        }
        let template = taken?;
        let record = TemplateRow {
            id: name.to_string(),
            team_id: Some(caller.team_id.clone()),
            name: name.to_string(),
            kind: "snapshot".into(),
            description: format!("snapshot of {id}"),
            image: template.spec.image.clone(),
            cpus: Some(i64::from(template.spec.vcpus)),
            memory_mib: Some(i64::from(template.spec.memory_mib)),
            created_at: now_ms(),
        };
        if let Err(error) = self.db.insert_snapshot_template(&record, id).await {
            let _ = self.host.delete_template(name);
            return Err(error.into());
        }
        self.event(
            &caller.team_id,
            Some(id),
            "snapshot.created",
            &caller.key_id,
            json!({"name": name, "memory_bytes": template.memory_bytes, "disk_bytes": template.disk_bytes}),
        )
        .await;
        self.snapshot_view(&record).await
    }

    async fn snapshot_view(&self, row: &TemplateRow) -> ApiResult<Snapshot> {
        let meta = self.host.template(&row.id).ok();
        Ok(Snapshot {
            name: row.id.clone(),
            source_sandbox: meta.as_ref().map(|m| m.source_sandbox.clone()),
            cpus: row.cpus.unwrap_or(0).clamp(0, i64::from(u32::MAX)) as u32,
            memory_mib: row.memory_mib.unwrap_or(0).clamp(0, i64::from(u32::MAX)) as u32,
            memory_bytes: meta.as_ref().map_or(0, |m| m.memory_bytes),
            disk_bytes: meta.as_ref().map_or(0, |m| m.disk_bytes),
            used_by: self.db.template_users(&row.id).await?,
            created_at: crate::model::time(row.created_at),
        })
    }

    /// The caller's snapshot templates.
    pub async fn list_snapshots(&self, caller: &Caller) -> ApiResult<Vec<Snapshot>> {
        let mut out = Vec::new();
        for row in self.db.templates(&caller.team_id).await? {
            if row.kind == "snapshot" && row.team_id.as_deref() == Some(caller.team_id.as_str()) {
                out.push(self.snapshot_view(&row).await?);
            }
        }
        Ok(out)
    }

    async fn snapshot_row(&self, caller: &Caller, name: &str) -> ApiResult<TemplateRow> {
        match self.db.template(&caller.team_id, name).await? {
            Some(row)
                if row.kind == "snapshot"
                    && row.team_id.as_deref() == Some(caller.team_id.as_str()) =>
            {
                Ok(row)
            }
            _ => Err(ApiError::not_found(format!("no snapshot named {name:?}"))
                .hint("list snapshots with GET /v1/snapshots")),
        }
    }

    /// One snapshot template.
    pub async fn get_snapshot(&self, caller: &Caller, name: &str) -> ApiResult<Snapshot> {
        let row = self.snapshot_row(caller, name).await?;
        self.snapshot_view(&row).await
    }

    /// Deletes a snapshot template; 409 while sandboxes use it.
    pub async fn delete_snapshot(&self, caller: &Caller, name: &str) -> ApiResult<()> {
        let row = self.snapshot_row(caller, name).await?;
        let lock = self.lock_for(&template_lock_key(name));
        let _guard = lock.lock().await;
        let users = self.db.template_users(&row.id).await?;
        if !users.is_empty() {
            return Err(ApiError::conflict(format!(
                "snapshot {name:?} is used by {} sandbox(es): {}",
                users.len(),
                users.join(", ")
            ))
            .hint("delete the sandboxes created from it first"));
        }
        // The record goes first: a crash before the files are gone leaves
        // files no record claims, which the reconciler removes; the other
        // order would leave a listed snapshot without files.
        self.db
            .delete_snapshot_template(&caller.team_id, name)
            .await?;
        match self.host.delete_template(name) {
            Ok(()) => {}
            Err(error) if error.kind() == HostErrorKind::NoTemplate => {}
            Err(error) => {
                tracing::warn!(name, %error, "removing a deleted snapshot's files failed; the reconciler retries");
            }
        }
        self.event(
            &caller.team_id,
            None,
            "snapshot.deleted",
            &caller.key_id,
            json!({"name": name}),
        )
        .await;
        Ok(())
    }

    /// The reaper's action for a sandbox created with auto-pause.
    pub(crate) async fn auto_pause(&self, row: &SandboxRow) {
        match self.pause_locked(row, "system").await {
            Ok(_) => tracing::info!(id = %row.id, "sandbox timed out and was paused"),
            Err(error) => {
                tracing::warn!(id = %row.id, ?error, "pausing a timed-out sandbox failed; retrying in a minute");
                let retry = now_ms() + 60_000;
                if let Err(error) = self
                    .db
                    .set_timeout(&row.id, row.timeout_secs, Some(retry))
                    .await
                {
                    tracing::warn!(id = %row.id, %error, "postponing the timeout failed");
                }
            }
        }
    }
}
