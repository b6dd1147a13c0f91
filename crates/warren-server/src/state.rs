//! The control plane: what should exist, for whom, until when.

use std::collections::HashMap;
use std::ops::Deref;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use warren_host::session::Sandbox as LiveSandbox;
use warren_host::{Fix, Host, HostError, HostErrorKind, HostEvent, RecoverySummary, SandboxSpec};

use crate::auth::Caller;
use crate::config::{ServerConfig, ShutdownAction};
use crate::db::{Db, SandboxRow, now_ms};
use crate::error::{ApiError, ApiResult};
use crate::metrics::Metrics;
use crate::model::{CreateSandbox, Sandbox, SandboxState};

/// Longest timeout a sandbox may have (a day).
pub const MAX_TIMEOUT_SECS: u64 = 86_400;
/// `pause_reason` of sandboxes paused by a stopping warren: they resume on
/// demand (any operation) after the restart.
pub const PAUSED_BY_SHUTDOWN: &str = "host_shutdown";
/// Timeout when the request gives none.
pub const DEFAULT_TIMEOUT_SECS: u64 = 300;

/// Everything handlers share. Cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The shared state behind [`AppState`].
pub struct Shared {
    /// Persistence.
    pub db: Db,
    /// The host, through its interface (the local host agent in `warren
    /// up`, a fake in unit tests).
    pub host: Arc<dyn Host>,
    /// Configuration.
    pub config: ServerConfig,
    /// Metrics.
    pub metrics: Metrics,
    /// Per-sandbox lifecycle locks: state changes of one sandbox happen one
    /// at a time; different sandboxes proceed in parallel.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Creations under way per team (counted against the team's limit).
    pending: Mutex<HashMap<String, u32>>,
    /// Last recorded use per key, to write `last_used_at` at most once a
    /// minute per key.
    key_touches: Mutex<HashMap<String, Instant>>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").finish_non_exhaustive()
    }
}

/// Decrements the pending-create count of a team when dropped.
struct PendingCreate<'a> {
    state: &'a Shared,
    team_id: String,
}

impl Drop for PendingCreate<'_> {
    fn drop(&mut self) {
        let mut pending = self.state.pending.lock().expect("pending lock");
        if let Some(count) = pending.get_mut(&self.team_id) {
            *count = count.saturating_sub(1);
        }
    }
}

impl AppState {
    /// Builds the state.
    pub fn new(db: Db, host: Arc<dyn Host>, config: ServerConfig) -> Self {
        Self(Arc::new(Shared {
            db,
            host,
            config,
            metrics: Metrics::new(),
            locks: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            key_touches: Mutex::new(HashMap::new()),
        }))
    }

    /// A record as the API shows it, with where its ports are served; a
    /// stopped sandbox has no ports, so no domain or token either (which
    /// also keeps long listings of old records small).
    pub fn view(&self, row: &SandboxRow) -> Sandbox {
        let sandbox = Sandbox::from(row);
        if sandbox.state == SandboxState::Stopped {
            return Sandbox {
                access_token: None,
                ..sandbox
            };
        }
        Sandbox {
            domain: Some(self.config.domain.to_string()),
            ..sandbox
        }
    }

    /// Records that a key was used (at most once a minute per key).
    pub async fn note_key_use(&self, key_id: &str) {
        let due = {
            let mut touches = self.key_touches.lock().expect("touch lock");
            let now = Instant::now();
            match touches.get(key_id) {
                Some(last) if now.duration_since(*last) < Duration::from_secs(60) => false,
                _ => {
                    touches.insert(key_id.to_string(), now);
                    true
                }
            }
        };
        if due && let Err(error) = self.db.touch_key(key_id).await {
            tracing::warn!(%error, "recording key use failed");
        }
    }

    pub(crate) fn lock_for(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .expect("locks")
            .entry(id.to_string())
            .or_default()
            .clone()
    }

    /// Records an event (failures are logged, never fail the request).
    pub async fn event(
        &self,
        team_id: &str,
        sandbox_id: Option<&str>,
        kind: &str,
        actor: &str,
        detail: serde_json::Value,
    ) {
        self.metrics.events.with_label_values(&[kind]).inc();
        if let Err(error) = self
            .db
            .insert_event(team_id, sandbox_id, kind, actor, &detail)
            .await
        {
            tracing::warn!(%error, kind, "recording an event failed");
        }
    }

    /// A team's sandbox record, or 404.
    pub async fn sandbox_row(&self, caller: &Caller, id: &str) -> ApiResult<SandboxRow> {
        if !warren_host::is_valid_sandbox_id(id) {
            return Err(ApiError::sandbox_not_found(id));
        }
        self.db
            .sandbox(&caller.team_id, id)
            .await?
            .ok_or_else(|| ApiError::sandbox_not_found(id))
    }

    /// The caller's sandbox record read again under the sandbox's lock (so
    /// it is the state the operation acts on), with the lock held until
    /// the guard drops; 404 for another team's or an unknown id.
    pub(crate) async fn locked_row(
        &self,
        caller: &Caller,
        id: &str,
    ) -> ApiResult<(SandboxRow, tokio::sync::OwnedMutexGuard<()>)> {
        let row = self.sandbox_row(caller, id).await?;
        let guard = self.lock_for(id).lock_owned().await;
        let row = self.db.sandbox(&caller.team_id, id).await?.unwrap_or(row);
        Ok((row, guard))
    }

    /// A team's running sandbox and its live handle; 404 or 409 otherwise.
    pub async fn live_sandbox(
        &self,
        caller: &Caller,
        id: &str,
    ) -> ApiResult<(SandboxRow, Arc<LiveSandbox>)> {
        let mut row = self.sandbox_row(caller, id).await?;
        let resumes_on_demand =
            row.auto_resume != 0 || row.pause_reason.as_deref() == Some(PAUSED_BY_SHUTDOWN);
        if row.state == "paused" && resumes_on_demand {
            let lock = self.lock_for(id);
            let _guard = lock.lock().await;
            row = self.db.sandbox(&caller.team_id, id).await?.unwrap_or(row);
            if row.state == "paused" {
                self.resume_locked(&row, "auto_resume").await?;
                let row = self.db.sandbox(&caller.team_id, id).await?.unwrap_or(row);
                return match self.host.session(id) {
                    Some(live) => Ok((row, live)),
                    None => Err(vm_exited(id)),
                };
            }
        }
        match row.state.as_str() {
            "running" => {}
            "paused" => {
                return Err(ApiError::conflict(format!("sandbox {id} is paused"))
                    .hint(format!("resume it with POST /v1/sandboxes/{id}/resume")));
            }
            _ => {
                return Err(ApiError::conflict(format!(
                    "sandbox {id} is stopped ({})",
                    row.stop_reason.as_deref().unwrap_or("unknown reason")
                ))
                .hint("create a new sandbox"));
            }
        }
        match self.host.session(id) {
            Some(live) if live.vm_exit().is_none() => Ok((row, live)),
            // The VM is gone and its exit is being processed (the sandbox
            // falls back to its snapshot, or is stopped).
            _ => Err(vm_exited(id)),
        }
    }

    /// Creates a sandbox for a caller.
    pub async fn create_sandbox(
        &self,
        caller: &Caller,
        request: CreateSandbox,
    ) -> ApiResult<Sandbox> {
        let template_id = request.template.clone().unwrap_or_else(|| "debian".into());
        let template = self
            .db
            .template(&caller.team_id, &template_id)
            .await?
            .ok_or_else(|| {
                ApiError::invalid(format!("no template named {template_id:?}"))
                    .hint("list templates with GET /v1/templates")
            })?;
        let snapshot = template.kind == "snapshot";
        if snapshot {
            let locked_cpus = template.cpus.unwrap_or(0);
            let locked_memory = template.memory_mib.unwrap_or(0);
            if request.cpus.is_some_and(|c| i64::from(c) != locked_cpus)
                || request
                    .memory_mib
                    .is_some_and(|m| i64::from(m) != locked_memory)
            {
                return Err(ApiError::invalid(format!(
                    "snapshot {template_id} is locked to {locked_cpus} vCPUs and {locked_memory} MiB"
                ))
                .hint("leave cpus and memory_mib out when creating from a snapshot"));
            }
        }
        let timeout_secs = request.timeout_secs.unwrap_or(DEFAULT_TIMEOUT_SECS);
        if timeout_secs > MAX_TIMEOUT_SECS {
            return Err(ApiError::invalid(format!(
                "timeout_secs {timeout_secs} is over the limit of {MAX_TIMEOUT_SECS} (a day)"
            )));
        }
        let spec = SandboxSpec {
            image: template.image.clone(),
            vcpus: match template.cpus {
                Some(cpus) if snapshot => u32::try_from(cpus).unwrap_or(1),
                _ => request.cpus.unwrap_or(warren_host::defaults::DEFAULT_VCPUS),
            },
            memory_mib: match template.memory_mib {
                Some(memory) if snapshot => u32::try_from(memory).unwrap_or(0),
                _ => request
                    .memory_mib
                    .unwrap_or(warren_host::defaults::DEFAULT_MEMORY_MIB),
            },
            env: request.env.clone().unwrap_or_default(),
            metadata: request.metadata.clone().unwrap_or_default(),
            keep_disk: request.keep_disk.unwrap_or(false),
            network: Some(crate::routes::host_policy(
                &request.network.clone().unwrap_or_default(),
            )?),
        };
        let public_ports =
            crate::routes::public_port_set(request.public_ports.as_deref().unwrap_or(&[]))?;
        self.host.check_spec(&spec)?;
        for (key, value) in &spec.metadata {
            if key.len() > 256 || value.len() > 4096 {
                return Err(ApiError::invalid(
                    "metadata keys are limited to 256 bytes and values to 4096",
                ));
            }
        }

        // Count this creation against the team's limit before booting.
        let _pending = {
            let running = self.db.count_sandboxes(&caller.team_id, "running").await?;
            let mut pending = self.pending.lock().expect("pending lock");
            let in_flight = pending.entry(caller.team_id.clone()).or_insert(0);
            let total = running as u64 + u64::from(*in_flight);
            if total >= u64::from(self.config.max_sandboxes_per_team) {
                return Err(ApiError::limit(format!(
                    "team {} already has {total} running sandboxes, the limit is {}",
                    caller.team_name, self.config.max_sandboxes_per_team
                ))
                .hint("delete sandboxes you no longer need"));
            }
            *in_flight += 1;
            PendingCreate {
                state: &self.0,
                team_id: caller.team_id.clone(),
            }
        };

        let started = Instant::now();
        let created: Result<String, HostError> = if snapshot {
            self.host
                .clone_template(&template_id, &spec)
                .await
                .map(|(id, _)| id)
        } else {
            self.host.create(spec.clone()).await
        };
        let id = match created {
            Ok(id) => id,
            Err(error) => {
                if let HostErrorKind::OutOfMemory { .. } = error.kind() {
                    self.metrics.creates.with_label_values(&["capacity"]).inc();
                    let left = self.host.available_memory_mib();
                    return Err(ApiError::capacity(format!(
                        "this host cannot fit another {} MiB sandbox ({left} MiB left)",
                        spec.memory_mib
                    ))
                    .hint("delete sandboxes, or ask for less memory"));
                }
                self.metrics.creates.with_label_values(&["error"]).inc();
                return Err(error.into());
            }
        };
        self.metrics
            .create_seconds
            .with_label_values(&[template_id.as_str()])
            .observe(started.elapsed().as_secs_f64());
        let now = now_ms();
        let row = SandboxRow {
            id: id.clone(),
            team_id: caller.team_id.clone(),
            template_id: template_id.clone(),
            state: "running".into(),
            cpus: i64::from(spec.vcpus),
            memory_mib: i64::from(spec.memory_mib),
            metadata: serde_json::to_string(&spec.metadata).expect("map serializes"),
            env: serde_json::to_string(&spec.env).expect("map serializes"),
            auto_pause: i64::from(request.auto_pause == Some(true)),
            auto_resume: i64::from(request.auto_resume == Some(true)),
            pause_reason: None,
            timeout_secs: timeout_secs as i64,
            created_at: now,
            expires_at: (timeout_secs > 0).then(|| now + timeout_secs as i64 * 1000),
            stopped_at: None,
            stop_reason: None,
            host: self.config.host_name.clone(),
            access_token: Some(crate::ids::new_access_token()),
            public_ports: Some(serde_json::to_string(&public_ports).expect("ports serialize")),
        };
        if let Err(error) = self.db.insert_sandbox(&row).await {
            let _ = self.host.kill(&id).await;
            return Err(error.into());
        }
        self.metrics.creates.with_label_values(&["ok"]).inc();
        self.event(
            &caller.team_id,
            Some(&row.id),
            "sandbox.created",
            &caller.key_id,
            json!({"template": template_id, "cpus": spec.vcpus, "memory_mib": spec.memory_mib, "boot_ms": started.elapsed().as_millis() as u64}),
        )
        .await;
        Ok(self.view(&row))
    }

    /// Kills a sandbox (idempotent for stopped ones).
    pub async fn kill_sandbox(&self, caller: &Caller, id: &str) -> ApiResult<()> {
        let (row, _guard) = self.locked_row(caller, id).await?;
        if row.state == "stopped" {
            return Ok(());
        }
        // The record first: a crash after it leaves a VM or snapshot no
        // record claims, which the reconciler removes. The other order could
        // leave a running record whose VM is gone, which falls back to its
        // snapshot: a deleted sandbox would come back.
        let stopped = self.db.mark_stopped(id, "killed").await?;
        if let Err(error) = self.host.kill(id).await {
            tracing::warn!(%id, %error, "killing the VM failed; the reconciler retries");
        }
        if stopped {
            self.event(
                &caller.team_id,
                Some(id),
                "sandbox.killed",
                &caller.key_id,
                json!({}),
            )
            .await;
        }
        Ok(())
    }

    /// Sets a running sandbox's timeout from now.
    pub async fn set_timeout(
        &self,
        caller: &Caller,
        id: &str,
        timeout_secs: u64,
    ) -> ApiResult<Sandbox> {
        if timeout_secs > MAX_TIMEOUT_SECS {
            return Err(ApiError::invalid(format!(
                "timeout_secs {timeout_secs} is over the limit of {MAX_TIMEOUT_SECS} (a day)"
            )));
        }
        let (row, _guard) = self.locked_row(caller, id).await?;
        if row.state != "running" {
            return Err(ApiError::conflict(format!(
                "sandbox {id} is {}; only running sandboxes have a timeout",
                row.state
            )));
        }
        let expires_at = (timeout_secs > 0).then(|| now_ms() + timeout_secs as i64 * 1000);
        self.db
            .set_timeout(id, timeout_secs as i64, expires_at)
            .await?;
        self.event(
            &caller.team_id,
            Some(id),
            "sandbox.timeout_changed",
            &caller.key_id,
            json!({"timeout_secs": timeout_secs}),
        )
        .await;
        let row = self.sandbox_row(caller, id).await?;
        Ok(self.view(&row))
    }

    /// Marks a record stopped and logs the event (for exits noticed by the
    /// system rather than asked for).
    pub(crate) async fn stop_record(&self, row: &SandboxRow, reason: &str, actor: &str) {
        match self.db.mark_stopped(&row.id, reason).await {
            Ok(true) => {
                self.event(
                    &row.team_id,
                    Some(&row.id),
                    &format!("sandbox.{reason}"),
                    actor,
                    json!({}),
                )
                .await;
            }
            Ok(false) => {}
            Err(error) => tracing::warn!(id = %row.id, %error, "recording a stop failed"),
        }
    }

    /// Kills sandboxes whose timeout passed. Runs every second.
    pub async fn reap_expired(&self) {
        let expired = match self.db.expired_sandboxes(now_ms()).await {
            Ok(expired) => expired,
            Err(error) => {
                tracing::warn!(%error, "reaper could not query sandboxes");
                return;
            }
        };
        for row in expired {
            let lock = self.lock_for(&row.id);
            let _guard = lock.lock().await;
            // Re-check under the lock: the timeout may have been extended.
            let Ok(Some(current)) = self.db.sandbox(&row.team_id, &row.id).await else {
                continue;
            };
            if current.state != "running" || current.expires_at.is_none_or(|at| at > now_ms()) {
                continue;
            }
            if current.auto_pause != 0 {
                self.auto_pause(&current).await;
                continue;
            }
            tracing::info!(id = %row.id, "sandbox timed out");
            // Record first, as in `kill_sandbox`.
            self.stop_record(&current, "timeout", "system").await;
            if let Err(error) = self.host.kill(&row.id).await {
                tracing::warn!(id = %row.id, %error, "killing a timed-out sandbox failed");
            }
        }
    }

    /// Applies host events (VMs that exited on their own).
    pub async fn on_host_event(&self, event: HostEvent) {
        match event {
            HostEvent::VmExited {
                id,
                exit,
                reverted,
                kept_disk,
            } => {
                let rows = self
                    .db
                    .sandboxes_in_state("running")
                    .await
                    .unwrap_or_default();
                if let Some(row) = rows.into_iter().find(|r| r.id == id) {
                    tracing::warn!(%id, %exit, reverted, "sandbox VM exited");
                    if reverted {
                        if let Ok(true) = self.db.set_state(&id, "paused", None).await {
                            self.event(
                                &row.team_id,
                                Some(&id),
                                "sandbox.reverted_to_snapshot",
                                "system",
                                json!({"exit": exit.to_string(), "reason": "its VM exited; it is paused at its last snapshot"}),
                            )
                            .await;
                        }
                    } else if let Ok(true) = self.db.mark_stopped(&id, "vm_exited").await {
                        self.event(
                            &row.team_id,
                            Some(&id),
                            "sandbox.vm_exited",
                            "system",
                            json!({"exit": exit.to_string(), "kept_disk": kept_disk}),
                        )
                        .await;
                    }
                }
            }
        }
    }

    /// One reconciler pass: the host's own (orphaned processes,
    /// directories, stray files; see `Manager::reconcile`), then the
    /// database against the host: records of sandboxes whose VM is gone
    /// fall back to their snapshot (paused) or are marked stopped, paused
    /// records whose snapshot is gone are marked stopped, and live VMs or
    /// snapshots that no record claims are removed. Sandboxes with an
    /// operation under way are skipped. Every fix is logged and returned.
    pub async fn reconcile(&self) -> Result<Vec<Fix>, sqlx::Error> {
        let mut fixes = self.host.reconcile().await;
        let busy = |id: &str| self.host.is_busy(id);

        for row in self.db.sandboxes_in_state("running").await? {
            let lock = self.lock_for(&row.id);
            let Ok(_guard) = lock.try_lock() else {
                continue;
            };
            if self.host.is_live(&row.id) || busy(&row.id) {
                continue;
            }
            let Some(row) = self.db.sandbox(&row.team_id, &row.id).await? else {
                continue;
            };
            if row.state != "running" {
                continue;
            }
            if self.host.is_paused(&row.id) {
                self.db.set_state(&row.id, "paused", None).await?;
                self.event(
                    &row.team_id,
                    Some(&row.id),
                    "sandbox.reverted_to_snapshot",
                    "system",
                    json!({"reason": "its VM was lost; it is paused at its last snapshot"}),
                )
                .await;
                fixes.push(fix(
                    "record_reverted",
                    &row.id,
                    "running record without a VM: paused at its last snapshot",
                ));
            } else {
                self.stop_record(&row, "vm_lost", "system").await;
                let detail = match self.host.kept_disk(&row.id) {
                    Some(kept) => format!(
                        "running record without a VM or snapshot: marked stopped; its disk is kept at {}",
                        kept.display()
                    ),
                    None => "running record without a VM or snapshot: marked stopped".into(),
                };
                fixes.push(fix("record_stopped", &row.id, &detail));
            }
        }
        for row in self.db.sandboxes_in_state("paused").await? {
            let lock = self.lock_for(&row.id);
            let Ok(_guard) = lock.try_lock() else {
                continue;
            };
            if busy(&row.id) {
                continue;
            }
            if self.host.is_live(&row.id) {
                let expires_at = (row.timeout_secs > 0).then(|| now_ms() + row.timeout_secs * 1000);
                self.db.set_state(&row.id, "running", expires_at).await?;
                fixes.push(fix(
                    "record_running",
                    &row.id,
                    "paused record of a running VM: marked running",
                ));
            } else if !self.host.is_paused(&row.id) {
                self.stop_record(&row, "snapshot_lost", "system").await;
                fixes.push(fix(
                    "record_stopped",
                    &row.id,
                    "paused record without a snapshot on this host: marked stopped",
                ));
            }
        }

        fixes.extend(self.reconcile_templates().await?);

        // What runs or is paused here but no record claims: a creation or
        // resume that died before it was recorded. Not while creations are
        // under way (their record is written after the VM starts).
        let creating = self
            .pending
            .lock()
            .expect("pending lock")
            .values()
            .any(|n| *n > 0);
        if !creating {
            let mut claimed = std::collections::HashSet::new();
            for state in ["running", "paused"] {
                for row in self.db.sandboxes_in_state(state).await? {
                    claimed.insert(row.id);
                }
            }
            let mut unclaimed: Vec<String> = self.host.live_ids();
            unclaimed.extend(self.host.paused_ids());
            for id in unclaimed {
                if claimed.contains(&id) || busy(&id) {
                    continue;
                }
                let lock = self.lock_for(&id);
                let Ok(_guard) = lock.try_lock() else {
                    continue;
                };
                match self.host.kill(&id).await {
                    Ok(true) => fixes.push(fix(
                        "unrecorded_sandbox",
                        &id,
                        "a sandbox no record claims (an interrupted creation): removed",
                    )),
                    Ok(false) => {}
                    Err(error) => {
                        tracing::warn!(%id, %error, "removing an unrecorded sandbox failed")
                    }
                }
            }
        }
        Ok(fixes)
    }

    /// Snapshot templates: a record whose files are gone is removed (its
    /// clones could not start), and template files no record claims (a
    /// creation or deletion cut off between the files and the record) go.
    async fn reconcile_templates(&self) -> Result<Vec<Fix>, sqlx::Error> {
        let mut fixes = Vec::new();
        let manager = &self.host;
        let on_disk: std::collections::HashSet<String> =
            manager.templates().into_iter().map(|t| t.name).collect();
        let mut recorded = std::collections::HashSet::new();
        for row in self.db.snapshot_templates().await? {
            recorded.insert(row.id.clone());
            if on_disk.contains(&row.id) {
                continue;
            }
            let lock = self.lock_for(&crate::snapshots::template_lock_key(&row.id));
            let Ok(_guard) = lock.try_lock() else {
                continue;
            };
            let team = row.team_id.clone().unwrap_or_default();
            if manager.template(&row.id).is_err()
                && self.db.delete_snapshot_template(&team, &row.id).await?
            {
                fixes.push(fix(
                    "template_record_removed",
                    &row.id,
                    "snapshot record without files on this host: removed",
                ));
            }
        }
        for name in on_disk {
            if recorded.contains(&name) {
                continue;
            }
            let lock = self.lock_for(&crate::snapshots::template_lock_key(&name));
            let Ok(_guard) = lock.try_lock() else {
                continue;
            };
            if self.db.template_id_taken(&name).await? {
                continue;
            }
            match manager.delete_template(&name) {
                Ok(()) => fixes.push(fix(
                    "unrecorded_template",
                    &name,
                    "snapshot files no record claims (an interrupted creation or deletion): removed",
                )),
                Err(error) => {
                    tracing::warn!(%name, %error, "removing unrecorded snapshot files failed")
                }
            }
        }
        Ok(fixes)
    }

    /// Start-up: recovers the host (re-attaches VMs, re-registers paused
    /// sandboxes, quarantines what cannot be read), then reconciles.
    pub async fn recover_at_start(&self) -> Result<Recovered, sqlx::Error> {
        let summary = self.host.recover().await;
        let fixes = self.reconcile().await?;
        Ok(Recovered { summary, fixes })
    }

    /// Stops the service's sandboxes as configured: pause each (they resume
    /// on demand after the restart), leave them running for the next start
    /// to re-attach, or kill them.
    pub async fn shutdown_sandboxes(&self) {
        match self.config.on_shutdown {
            ShutdownAction::Keep => {
                tracing::info!(
                    count = self.host.live_count(),
                    "leaving sandboxes running for the next start"
                );
                self.host.detach_all();
                return;
            }
            ShutdownAction::Pause => {
                for id in self.host.live_ids() {
                    let lock = self.lock_for(&id);
                    let _guard = lock.lock().await;
                    let Ok(rows) = self.db.sandboxes_in_state("running").await else {
                        break;
                    };
                    let Some(row) = rows.into_iter().find(|r| r.id == id) else {
                        continue;
                    };
                    match self.pause_locked(&row, "system").await {
                        Ok(_) => {
                            if let Err(error) =
                                self.db.set_pause_reason(&id, PAUSED_BY_SHUTDOWN).await
                            {
                                tracing::warn!(%id, %error, "recording the shutdown pause failed");
                            }
                            tracing::info!(%id, "paused for shutdown");
                        }
                        Err(error) => {
                            tracing::warn!(%id, ?error, "pausing at shutdown failed; the sandbox is stopped");
                        }
                    }
                }
            }
            ShutdownAction::Kill => {}
        }
        // Whatever still runs is killed.
        for id in self.host.live_ids() {
            if let Ok(rows) = self.db.sandboxes_in_state("running").await
                && let Some(row) = rows.iter().find(|r| r.id == id)
            {
                self.stop_record(row, "host_shutdown", "system").await;
            }
        }
        self.host.kill_all().await;
    }

    /// Refreshes the per-state gauges (on scrape).
    pub async fn refresh_gauges(&self) {
        if let Ok(counts) = self.db.count_by_state().await {
            for state in ["running", "paused", "stopped"] {
                let count = counts
                    .iter()
                    .find(|(s, _)| s == state)
                    .map(|(_, c)| *c)
                    .unwrap_or(0);
                self.metrics
                    .sandboxes
                    .with_label_values(&[state])
                    .set(count);
            }
        }
    }
}

/// What start-up recovery did (printed by `warren up`).
#[derive(Debug, Clone, Default)]
pub struct Recovered {
    /// The host's recovery.
    pub summary: RecoverySummary,
    /// Fixes of the first reconciler pass.
    pub fixes: Vec<Fix>,
}

fn vm_exited(id: &str) -> ApiError {
    ApiError::conflict(format!("sandbox {id}'s VM exited")).hint(
        "get the sandbox again in a moment: it is paused at its last snapshot if it had one, else stopped",
    )
}

fn fix(kind: &str, id: &str, detail: &str) -> Fix {
    tracing::warn!(kind, id, "{detail}");
    Fix {
        kind: kind.into(),
        id: id.into(),
        detail: detail.into(),
    }
}
