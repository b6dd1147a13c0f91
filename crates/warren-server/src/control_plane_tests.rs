//! Unit tests of the control plane's decisions (`state.rs`, `snapshots.rs`)
//! against [`FakeHost`] and a real SQLite database in a temp directory:
//! what a user of the API would notice (statuses, records, what the host
//! was asked to do). The real-VM suites test the host itself.

use std::sync::Arc;

use axum::http::StatusCode;
use warren_host::HostEvent;

use crate::auth::Caller;
use crate::config::{ServerConfig, ShutdownAction};
use crate::db::{Db, SandboxRow, now_ms};
use crate::fake_host::FakeHost;
use crate::model::CreateSandbox;
use crate::state::AppState;

struct Plane {
    state: AppState,
    host: Arc<FakeHost>,
    caller: Caller,
    _dir: tempfile::TempDir,
}

/// A control plane over a fake host with `memory_left_mib` free, a team
/// allowed `max_sandboxes` running sandboxes, and the built-in templates.
async fn plane(max_sandboxes: u32, memory_left_mib: u64) -> Plane {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("warren.db").display()
    );
    let db = Db::connect(&url).await.expect("database");
    let host = FakeHost::new(memory_left_mib);
    let mut manager = warren_host::ManagerConfig::from_env().expect("WARREN_* environment");
    manager.data_dir = dir.path().to_path_buf();
    let config = ServerConfig {
        listen: "127.0.0.1:0".parse().expect("address"),
        data_dir: dir.path().to_path_buf(),
        database_url: Some(url),
        max_sandboxes_per_team: max_sandboxes,
        snapshot_merge_cap: warren_host::defaults::DEFAULT_MERGE_CAP,
        host_name: "fake-host".into(),
        on_shutdown: ShutdownAction::Kill,
        reconcile_interval: crate::config::DEFAULT_RECONCILE_INTERVAL,
        domain: "localhost".parse().expect("domain"),
        manager,
    };
    let state = AppState::new(db, host.clone(), config);
    crate::seed_templates(&state).await.expect("templates");
    let team_id = crate::ids::new_id("team");
    state
        .db
        .insert_team(&team_id, "testers", false)
        .await
        .expect("team");
    let caller = Caller {
        key_id: "key-test".into(),
        team_id,
        team_name: "testers".into(),
        is_admin: false,
    };
    Plane {
        state,
        host,
        caller,
        _dir: dir,
    }
}

impl Plane {
    async fn create(&self, request: CreateSandbox) -> String {
        self.state
            .create_sandbox(&self.caller, request)
            .await
            .expect("create")
            .id
    }

    async fn row(&self, id: &str) -> SandboxRow {
        self.state
            .db
            .sandbox(&self.caller.team_id, id)
            .await
            .expect("query")
            .expect("record exists")
    }

    async fn expire(&self, id: &str) {
        self.state
            .db
            .set_timeout(id, 1, Some(now_ms() - 1))
            .await
            .expect("set timeout");
    }

    async fn event_kinds(&self, id: &str) -> Vec<String> {
        self.state
            .db
            .events(&self.caller.team_id, Some(id), 100)
            .await
            .expect("events")
            .into_iter()
            .map(|e| e.kind)
            .collect()
    }

    /// A running record of a sandbox the host does not have (what a
    /// restart that lost the VM leaves).
    async fn record_only(&self, id: &str, state: &str) {
        let now = now_ms();
        self.state
            .db
            .insert_sandbox(&SandboxRow {
                id: id.into(),
                team_id: self.caller.team_id.clone(),
                template_id: "debian".into(),
                state: state.into(),
                cpus: 1,
                memory_mib: 256,
                metadata: "{}".into(),
                env: "{}".into(),
                auto_pause: 0,
                auto_resume: 0,
                pause_reason: None,
                timeout_secs: 300,
                created_at: now,
                expires_at: Some(now + 300_000),
                stopped_at: None,
                stop_reason: None,
                host: "fake-host".into(),
                access_token: None,
                public_ports: None,
            })
            .await
            .expect("insert record");
    }
}

fn small() -> CreateSandbox {
    CreateSandbox {
        memory_mib: Some(256),
        ..CreateSandbox::default()
    }
}

#[tokio::test]
async fn create_records_a_running_sandbox_the_host_runs() {
    let p = plane(5, 4096).await;
    let id = p.create(small()).await;
    let row = p.row(&id).await;
    assert_eq!(row.state, "running");
    assert_eq!(row.memory_mib, 256);
    assert_eq!(row.host, "fake-host");
    assert!(row.expires_at.is_some(), "the default timeout applies");
    assert!(p.host.with(|s| s.live.contains_key(&id)));
    assert_eq!(p.event_kinds(&id).await, ["sandbox.created"]);
}

#[tokio::test]
async fn create_past_the_team_limit_is_refused_without_asking_the_host() {
    let p = plane(1, 4096).await;
    p.create(small()).await;
    let error = p
        .state
        .create_sandbox(&p.caller, small())
        .await
        .expect_err("over the limit");
    assert_eq!(error.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(error.body.code, "limit_exceeded");
    assert!(error.body.message.contains("the limit is 1"), "{error:?}");
    assert_eq!(p.host.with(|s| s.create_calls), 1);
    assert_eq!(p.host.with(|s| s.live.len()), 1);
}

#[tokio::test]
async fn create_the_host_has_no_memory_for_answers_503_and_leaves_no_record() {
    let p = plane(5, 200).await;
    let error = p
        .state
        .create_sandbox(&p.caller, small())
        .await
        .expect_err("out of memory");
    assert_eq!(error.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(error.body.code, "capacity");
    assert!(
        error
            .body
            .message
            .contains("cannot fit another 256 MiB sandbox (200 MiB left)"),
        "{error:?}"
    );
    let listed = p
        .state
        .db
        .count_sandboxes(&p.caller.team_id, "running")
        .await
        .expect("count");
    assert_eq!(listed, 0);
    // The refused create no longer counts against the team's limit.
    p.host.with(|s| s.memory_left_mib = 4096);
    p.create(small()).await;
}

#[tokio::test]
async fn create_with_a_timeout_over_a_day_or_unknown_template_is_invalid() {
    let p = plane(5, 4096).await;
    let too_long = CreateSandbox {
        timeout_secs: Some(crate::state::MAX_TIMEOUT_SECS + 1),
        ..small()
    };
    let error = p
        .state
        .create_sandbox(&p.caller, too_long)
        .await
        .expect_err("too long");
    assert_eq!(error.status, StatusCode::UNPROCESSABLE_ENTITY);
    let unknown = CreateSandbox {
        template: Some("no-such-template".into()),
        ..small()
    };
    let error = p
        .state
        .create_sandbox(&p.caller, unknown)
        .await
        .expect_err("unknown template");
    assert_eq!(error.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        error.body.hint.as_deref(),
        Some("list templates with GET /v1/templates")
    );
    // Out of the host's bounds: the host's reason is the message.
    let huge = CreateSandbox {
        cpus: Some(64),
        ..small()
    };
    let error = p
        .state
        .create_sandbox(&p.caller, huge)
        .await
        .expect_err("too many vCPUs");
    assert_eq!(error.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        error.body.message,
        "64 vCPUs requested but this host has 4 CPUs"
    );
    assert_eq!(p.host.with(|s| s.create_calls), 0);
}

#[tokio::test]
async fn a_sandbox_whose_timeout_passed_is_killed_on_the_host_and_stopped() {
    let p = plane(5, 4096).await;
    let expired = p.create(small()).await;
    let fresh = p.create(small()).await;
    p.expire(&expired).await;
    p.state.reap_expired().await;

    let row = p.row(&expired).await;
    assert_eq!(row.state, "stopped");
    assert_eq!(row.stop_reason.as_deref(), Some("timeout"));
    assert!(!p.host.is_live_for_test(&expired));
    assert!(
        p.event_kinds(&expired)
            .await
            .contains(&"sandbox.timeout".to_string())
    );
    // The other one runs on, and the host was asked to kill only the first.
    assert_eq!(p.row(&fresh).await.state, "running");
    assert!(p.host.is_live_for_test(&fresh));
    assert_eq!(p.host.with(|s| s.kill_calls.clone()), [expired]);
}

#[tokio::test]
async fn a_timed_out_auto_pause_sandbox_is_paused_not_killed() {
    let p = plane(5, 4096).await;
    let id = p
        .create(CreateSandbox {
            auto_pause: Some(true),
            ..small()
        })
        .await;
    p.expire(&id).await;
    p.state.reap_expired().await;
    let row = p.row(&id).await;
    assert_eq!(row.state, "paused");
    assert_eq!(row.expires_at, None, "a paused sandbox has no timeout");
    assert!(
        p.host
            .with(|s| s.paused.contains(&id) && s.kill_calls.is_empty())
    );
    // Resuming restarts the timeout and runs it on the host again.
    p.state
        .resume_sandbox(&p.caller, &id)
        .await
        .expect("resume");
    let row = p.row(&id).await;
    assert_eq!(row.state, "running");
    assert!(row.expires_at.is_some_and(|at| at > now_ms()));
    assert!(p.host.is_live_for_test(&id));
}

#[tokio::test]
async fn killing_an_id_the_host_no_longer_has_stops_the_record() {
    let p = plane(5, 4096).await;
    let id = p.create(small()).await;
    // The host lost it (its VM is gone) before anyone noticed.
    p.host.with(|s| s.live.remove(&id));
    p.state.kill_sandbox(&p.caller, &id).await.expect("kill");
    let row = p.row(&id).await;
    assert_eq!(row.state, "stopped");
    assert_eq!(row.stop_reason.as_deref(), Some("killed"));
    assert_eq!(p.host.with(|s| s.kill_calls.clone()), vec![id.clone()]);
    // Idempotent: a second kill succeeds and records nothing new.
    p.state
        .kill_sandbox(&p.caller, &id)
        .await
        .expect("kill again");
    assert_eq!(
        p.event_kinds(&id)
            .await
            .iter()
            .filter(|k| *k == "sandbox.killed")
            .count(),
        1
    );
    // Ids nobody has, and strings that cannot be ids, are 404.
    for unknown in ["sb-nosuchsandbox", "../etc"] {
        let error = p
            .state
            .kill_sandbox(&p.caller, unknown)
            .await
            .expect_err("unknown id");
        assert_eq!(error.status, StatusCode::NOT_FOUND);
        assert_eq!(
            error.body.message,
            format!("sandbox {unknown} does not exist")
        );
    }
}

#[tokio::test]
async fn another_teams_sandbox_is_not_found_not_forbidden() {
    let p = plane(5, 4096).await;
    let id = p.create(small()).await;
    let other = Caller {
        team_id: "team-other".into(),
        ..p.caller.clone()
    };
    let error = p
        .state
        .kill_sandbox(&other, &id)
        .await
        .expect_err("not theirs");
    assert_eq!(error.status, StatusCode::NOT_FOUND);
    assert_eq!(p.row(&id).await.state, "running");
    assert!(p.host.with(|s| s.kill_calls.is_empty()));
}

#[tokio::test]
async fn reconcile_fixes_records_the_host_lost_after_a_restart() {
    let p = plane(5, 4096).await;
    // Running records whose VMs are gone: one has a snapshot, one a kept
    // disk, one nothing; a paused record without a snapshot; one busy.
    p.record_only("sb-reverted", "running").await;
    p.host.with(|s| s.paused.insert("sb-reverted".into()));
    p.record_only("sb-keptdisk", "running").await;
    p.host.with(|s| {
        s.kept_disks
            .insert("sb-keptdisk".into(), "/data/kept/sb-keptdisk.1".into())
    });
    p.record_only("sb-gone", "running").await;
    p.record_only("sb-nosnapshot", "paused").await;
    p.record_only("sb-busy", "running").await;
    p.host.with(|s| s.busy.insert("sb-busy".into()));

    let fixes = p.state.reconcile().await.expect("reconcile");
    let kind_of = |id: &str| fixes.iter().find(|f| f.id == id).map(|f| f.kind.clone());
    assert_eq!(
        p.host.with(|s| s.reconcile_calls),
        1,
        "the host's own pass runs"
    );

    assert_eq!(p.row("sb-reverted").await.state, "paused");
    assert_eq!(kind_of("sb-reverted").as_deref(), Some("record_reverted"));
    let kept = fixes.iter().find(|f| f.id == "sb-keptdisk").expect("fix");
    assert!(kept.detail.contains("/data/kept/sb-keptdisk.1"), "{kept:?}");
    for (id, reason) in [
        ("sb-keptdisk", "vm_lost"),
        ("sb-gone", "vm_lost"),
        ("sb-nosnapshot", "snapshot_lost"),
    ] {
        let row = p.row(id).await;
        assert_eq!(row.state, "stopped", "{id}");
        assert_eq!(row.stop_reason.as_deref(), Some(reason), "{id}");
    }
    assert_eq!(
        p.row("sb-busy").await.state,
        "running",
        "busy ids are skipped"
    );
    assert_eq!(kind_of("sb-busy"), None);
    // A second pass finds nothing more to fix.
    let again = p.state.reconcile().await.expect("reconcile");
    assert!(again.is_empty(), "{again:?}");
}

#[tokio::test]
async fn reconcile_removes_sandboxes_no_record_claims_but_not_busy_ones() {
    let p = plane(5, 4096).await;
    let recorded = p.create(small()).await;
    // An interrupted creation left a VM and a snapshot nobody recorded, and
    // a creation under way holds a third id.
    p.host.with(|s| {
        s.live
            .insert("sb-orphanvm".into(), s.live[&recorded].clone());
        s.paused.insert("sb-orphansnap".into());
        s.live
            .insert("sb-creating".into(), s.live[&recorded].clone());
        s.busy.insert("sb-creating".into());
    });
    let fixes = p.state.reconcile().await.expect("reconcile");
    let mut removed: Vec<&str> = fixes
        .iter()
        .filter(|f| f.kind == "unrecorded_sandbox")
        .map(|f| f.id.as_str())
        .collect();
    removed.sort();
    assert_eq!(removed, ["sb-orphansnap", "sb-orphanvm"]);
    assert!(p.host.is_live_for_test(&recorded));
    assert!(p.host.is_live_for_test("sb-creating"));
    assert!(!p.host.is_live_for_test("sb-orphanvm"));
    assert!(p.host.with(|s| !s.paused.contains("sb-orphansnap")));
}

#[tokio::test]
async fn a_vm_exit_the_host_reports_reverts_or_stops_the_record() {
    let p = plane(5, 4096).await;
    let reverted = p.create(small()).await;
    let lost = p.create(small()).await;
    p.state
        .on_host_event(HostEvent::VmExited {
            id: reverted.clone(),
            exit: "was killed by signal 9".into(),
            reverted: true,
            kept_disk: None,
        })
        .await;
    p.state
        .on_host_event(HostEvent::VmExited {
            id: lost.clone(),
            exit: "exited with status 1".into(),
            reverted: false,
            kept_disk: None,
        })
        .await;
    assert_eq!(p.row(&reverted).await.state, "paused");
    assert!(
        p.event_kinds(&reverted)
            .await
            .contains(&"sandbox.reverted_to_snapshot".to_string())
    );
    let row = p.row(&lost).await;
    assert_eq!(row.state, "stopped");
    assert_eq!(row.stop_reason.as_deref(), Some("vm_exited"));
}

#[tokio::test]
async fn resuming_a_paused_record_whose_snapshot_is_gone_stops_it() {
    let p = plane(5, 4096).await;
    p.record_only("sb-snapgone", "paused").await;
    let error = p
        .state
        .resume_sandbox(&p.caller, "sb-snapgone")
        .await
        .expect_err("no snapshot");
    assert_eq!(error.status, StatusCode::CONFLICT);
    assert_eq!(
        error.body.message,
        "sandbox sb-snapgone was paused but its snapshot is gone from this host"
    );
    let row = p.row("sb-snapgone").await;
    assert_eq!(row.state, "stopped");
    assert_eq!(row.stop_reason.as_deref(), Some("snapshot_lost"));
}

#[tokio::test]
async fn pausing_and_killing_a_paused_sandbox_deletes_its_snapshot() {
    let p = plane(5, 4096).await;
    let id = p.create(small()).await;
    let paused = p.state.pause_sandbox(&p.caller, &id).await.expect("pause");
    assert_eq!(paused.sandbox.state, warren_api::SandboxState::Paused);
    assert!(paused.full, "a first pause is a full snapshot");
    // Pausing again is a conflict: only running sandboxes pause.
    let error = p
        .state
        .pause_sandbox(&p.caller, &id)
        .await
        .expect_err("already paused");
    assert_eq!(error.status, StatusCode::CONFLICT);
    p.state.kill_sandbox(&p.caller, &id).await.expect("kill");
    assert!(
        p.host.with(|s| !s.paused.contains(&id)),
        "the snapshot is gone"
    );
    assert_eq!(p.row(&id).await.state, "stopped");
}

impl FakeHost {
    fn is_live_for_test(&self, id: &str) -> bool {
        self.with(|s| s.live.contains_key(id))
    }
}
