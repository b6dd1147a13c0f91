//! Request and response bodies of the REST API, mirroring the service's
//! `warren_server::model` (which this crate does not depend on, so clients
//! do not pull in a database driver). Responses tolerate fields and enum
//! values they do not know, so an older client keeps working against a
//! newer service; requests send only the fields that are set, because the
//! service refuses unknown ones.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// State of a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SandboxState {
    /// Its VM runs and takes requests.
    Running,
    /// Saved to disk; resumes on request.
    Paused,
    /// Gone; the record stays for reference.
    Stopped,
    /// A state this client does not know (a newer service).
    #[serde(other)]
    Unknown,
}

impl SandboxState {
    /// The name the API uses (and filters by).
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxState::Running => "running",
            SandboxState::Paused => "paused",
            SandboxState::Stopped => "stopped",
            SandboxState::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for SandboxState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for SandboxState {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "running" => Ok(SandboxState::Running),
            "paused" => Ok(SandboxState::Paused),
            "stopped" => Ok(SandboxState::Stopped),
            other => Err(format!(
                "unknown state {other:?}; use running, paused or stopped"
            )),
        }
    }
}

/// A sandbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sandbox {
    /// Id, `sb-` and 12 characters.
    pub id: String,
    /// Template it was created from.
    pub template: String,
    /// Current state.
    pub state: SandboxState,
    /// Virtual CPUs.
    pub cpus: u32,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Caller's labels.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Environment variables every process gets.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Pause instead of dying at the timeout.
    #[serde(default)]
    pub auto_pause: bool,
    /// While paused, any operation on the sandbox (exec, files, terminals)
    /// resumes it first.
    #[serde(default)]
    pub auto_resume: bool,
    /// Seconds of life from creation or the last timeout change (0 = none).
    pub timeout_secs: u64,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// When the timeout acts; null without a timeout or once stopped.
    pub expires_at: Option<DateTime<Utc>>,
    /// When it stopped.
    pub stopped_at: Option<DateTime<Utc>>,
    /// Why it stopped: `killed`, `timeout`, `vm_exited`, `host_restart`,
    /// `host_shutdown`.
    pub stop_reason: Option<String>,
}

/// Request to create a sandbox; every field is optional (the service's
/// defaults: template `debian`, 1 CPU, 512 MiB, timeout 300 s).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CreateSandbox {
    /// Template id: a built-in image (`debian`, `tiny`) or a snapshot's
    /// name (the sandbox is then a clone of the snapshotted one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// Virtual CPUs (for a snapshot: omit, or give the snapshot's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u32>,
    /// Guest memory in MiB (at least 128; for a snapshot: omit, or give
    /// the snapshot's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u32>,
    /// Seconds until the sandbox is killed (or paused, with `auto_pause`);
    /// 0 for none, at most 86400.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    /// Labels to filter by later.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, String>>,
    /// Environment variables for every process.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, String>>,
    /// Pause instead of dying at the timeout.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_pause: Option<bool>,
    /// While paused, any operation on the sandbox resumes it first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_resume: Option<bool>,
    /// If its VM is lost before it has a snapshot to fall back to, keep its
    /// disk on the host (under `<data>/kept/`) instead of deleting it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_disk: Option<bool>,
}

/// What a pause did ([`crate::Client::pause_sandbox`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PauseResult {
    /// The sandbox, now paused.
    pub sandbox: Sandbox,
    /// Memory written by this pause (bytes on disk).
    pub memory_bytes: u64,
    /// A full snapshot (the first pause) rather than a diff of what
    /// changed since the previous one.
    #[serde(default)]
    pub full: bool,
    /// Generations in the sandbox's memory chain.
    #[serde(default)]
    pub chain_length: u32,
    /// Whether the chain was merged into one generation.
    #[serde(default)]
    pub merged: bool,
    /// How long the pause took (ms).
    #[serde(default)]
    pub duration_ms: u64,
}

/// Request to take a snapshot template of a sandbox.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateSnapshot {
    /// Template name (letters, digits, `-`, `_`, `.`; at most 64
    /// characters); sandboxes are then created from it with
    /// `template: name`.
    pub name: String,
}

/// A snapshot template: a sandbox's memory and disk, frozen, that new
/// sandboxes (clones) start from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Name (also its template id).
    pub name: String,
    /// The sandbox it was taken from.
    pub source_sandbox: Option<String>,
    /// vCPUs its clones get.
    pub cpus: u32,
    /// Memory its clones get, in MiB.
    pub memory_mib: u32,
    /// Allocated bytes of its memory on disk.
    #[serde(default)]
    pub memory_bytes: u64,
    /// Allocated bytes of its disk layer.
    #[serde(default)]
    pub disk_bytes: u64,
    /// Sandboxes (running or paused) created from it; it cannot be deleted
    /// while there are any.
    #[serde(default)]
    pub used_by: Vec<String>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

/// Snapshot templates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotList {
    /// Oldest first.
    pub snapshots: Vec<Snapshot>,
}

/// Filters of a sandbox listing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListSandboxes {
    /// Only sandboxes in this state.
    pub state: Option<SandboxState>,
    /// Only sandboxes whose metadata has all these key/value pairs.
    pub metadata: Vec<(String, String)>,
}

impl ListSandboxes {
    /// The query string pairs (`metadata` repeats).
    pub fn query(&self) -> Vec<(&'static str, String)> {
        let mut query = Vec::new();
        if let Some(state) = self.state {
            query.push(("state", state.as_str().to_string()));
        }
        for (key, value) in &self.metadata {
            query.push(("metadata", format!("{key}:{value}")));
        }
        query
    }
}

/// A list of sandboxes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SandboxList {
    /// Newest first.
    pub sandboxes: Vec<Sandbox>,
}

/// A command to run to completion with `POST /exec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExecRequest {
    /// Shell command line, run with `/bin/sh -c` (or give `argv`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cmd: Option<String>,
    /// Program and arguments (or give `cmd`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub argv: Option<Vec<String>>,
    /// Extra environment variables.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, String>>,
    /// Working directory (default: the user's home).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// User to run as (default root).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Kill after this many seconds (0 = none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    /// Text fed to stdin, which is then closed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
}

impl ExecRequest {
    /// Runs a program with arguments (no shell).
    pub fn argv<I, S>(argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            argv: Some(argv.into_iter().map(Into::into).collect()),
            ..Self::default()
        }
    }

    /// Runs a shell command line with `/bin/sh -c`.
    pub fn shell(cmd: impl Into<String>) -> Self {
        Self {
            cmd: Some(cmd.into()),
            ..Self::default()
        }
    }
}

/// Terminal size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PtySize {
    /// Columns.
    pub cols: u16,
    /// Rows.
    pub rows: u16,
}

impl Default for PtySize {
    fn default() -> Self {
        Self { cols: 80, rows: 24 }
    }
}

/// A command to run with streamed input and output over the `exec/ws`
/// WebSocket.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StreamExec {
    /// Shell command line (or give `argv`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cmd: Option<String>,
    /// Program and arguments (or give `cmd`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub argv: Option<Vec<String>>,
    /// Extra environment variables.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, String>>,
    /// Working directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// User to run as.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Kill after this many seconds (0 = none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    /// Give the process a stdin pipe (the service's default is yes);
    /// `Some(false)` connects stdin to nothing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stdin: Option<bool>,
    /// Run under a terminal of this size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pty: Option<PtySize>,
}

impl StreamExec {
    /// Runs a program with arguments (no shell).
    pub fn argv<I, S>(argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            argv: Some(argv.into_iter().map(Into::into).collect()),
            ..Self::default()
        }
    }

    /// Runs a shell command line with `/bin/sh -c`.
    pub fn shell(cmd: impl Into<String>) -> Self {
        Self {
            cmd: Some(cmd.into()),
            ..Self::default()
        }
    }
}

/// How a process ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    /// Exit code, if the process exited normally.
    pub exit_code: Option<i32>,
    /// Signal that ended it, if any.
    pub signal: Option<i32>,
    /// Killed because its timeout elapsed.
    #[serde(default)]
    pub timed_out: bool,
}

impl ExitStatus {
    /// Exited with code 0.
    pub fn success(&self) -> bool {
        self.exit_code == Some(0) && self.signal.is_none() && !self.timed_out
    }

    /// The status a shell would report: the code, 128 + signal, or 124
    /// for a timeout (as `timeout(1)` does).
    pub fn shell_code(&self) -> i32 {
        if self.timed_out {
            return 124;
        }
        match (self.exit_code, self.signal) {
            (Some(code), _) => code,
            (None, Some(signal)) => 128 + signal,
            (None, None) => 1,
        }
    }
}

/// Result of a synchronous exec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecResult {
    /// Exit code, if the process exited normally.
    pub exit_code: Option<i32>,
    /// Signal that ended it, if any.
    pub signal: Option<i32>,
    /// Killed because its timeout elapsed.
    pub timed_out: bool,
    /// Standard output (lossy UTF-8).
    pub stdout: String,
    /// Standard error (lossy UTF-8).
    pub stderr: String,
    /// Output beyond 16 MiB per stream was dropped.
    #[serde(default)]
    pub truncated: bool,
}

impl ExecResult {
    /// The exit status alone.
    pub fn status(&self) -> ExitStatus {
        ExitStatus {
            exit_code: self.exit_code,
            signal: self.signal,
            timed_out: self.timed_out,
        }
    }
}

/// A background process to start.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StartProcess {
    /// Shell command line (or give `argv`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cmd: Option<String>,
    /// Program and arguments (or give `cmd`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub argv: Option<Vec<String>>,
    /// Extra environment variables.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, String>>,
    /// Working directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// User to run as.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Kill after this many seconds (0 = none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    /// Keep a stdin pipe open for [`crate::Client::process_stdin`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stdin: Option<bool>,
    /// A label shown in the process list.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

/// A started background process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessStarted {
    /// Guest pid.
    pub pid: u32,
}

/// A process the sandbox knows about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessEntry {
    /// Guest pid.
    pub pid: u32,
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Label.
    #[serde(default)]
    pub tag: String,
    /// Runs under a terminal.
    #[serde(default)]
    pub pty: bool,
    /// Still running.
    pub running: bool,
    /// Exit code once exited.
    pub exit_code: Option<i32>,
    /// Signal once killed.
    pub signal: Option<i32>,
}

/// Processes of a sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessList {
    /// Running and recently exited background processes.
    pub processes: Vec<ProcessEntry>,
}

/// Kind of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link.
    Symlink,
    /// Anything else (device, socket, fifo, or a kind this client does not
    /// know).
    #[serde(other)]
    Other,
}

/// A file in a sandbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileInfo {
    /// Absolute path.
    pub path: String,
    /// Last component.
    pub name: String,
    /// Kind.
    #[serde(rename = "type")]
    pub kind: FileKind,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub owner: String,
    /// Group.
    pub group: String,
    /// Modification time.
    pub modified_at: DateTime<Utc>,
    /// Target of a symlink.
    pub symlink_target: Option<String>,
}

/// A directory listing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileList {
    /// Entries (unordered).
    pub entries: Vec<FileInfo>,
}

/// How an upload writes its file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UploadOptions {
    /// Create missing parent directories.
    pub create_parents: bool,
    /// Owner of a new file (default root).
    pub user: Option<String>,
    /// Permission bits of a new file, e.g. `0o644`.
    pub mode: Option<u32>,
}

/// A template.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Template {
    /// Id (what `template` in a create request names).
    pub id: String,
    /// Display name.
    pub name: String,
    /// `image` (built-in) or `snapshot`.
    pub kind: String,
    /// One line.
    #[serde(default)]
    pub description: String,
    /// vCPUs a snapshot template is locked to.
    pub cpus: Option<u32>,
    /// Memory a snapshot template is locked to.
    pub memory_mib: Option<u32>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

/// Templates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TemplateList {
    /// Oldest first.
    pub templates: Vec<Template>,
}

/// Request for a new key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateKey {
    /// Label.
    pub name: String,
    /// Team of the new key (admin keys only; created if new). Default: the
    /// caller's team.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
}

/// A key as listed (without its secret).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiKey {
    /// Id.
    pub id: String,
    /// Label.
    pub name: String,
    /// Team name.
    pub team: String,
    /// First characters of the key.
    pub prefix: String,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last use (recorded at most once a minute).
    pub last_used_at: Option<DateTime<Utc>>,
    /// Revocation time.
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A newly created key: the only time its secret is shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreatedKey {
    /// Id.
    pub id: String,
    /// Label.
    pub name: String,
    /// Team name.
    pub team: String,
    /// First characters.
    pub prefix: String,
    /// The key itself. Store it now: it cannot be shown again.
    pub key: String,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

/// Keys of the caller's team.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyList {
    /// Newest first.
    pub keys: Vec<ApiKey>,
}

/// A lifecycle event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Id.
    pub id: String,
    /// Sandbox concerned.
    pub sandbox_id: Option<String>,
    /// e.g. `sandbox.created`.
    pub kind: String,
    /// Key id of the caller, or `system`.
    pub actor: String,
    /// When.
    pub at: DateTime<Utc>,
    /// Details.
    #[serde(default)]
    pub detail: serde_json::Value,
}

/// Events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventList {
    /// Newest first.
    pub events: Vec<Event>,
}

/// Filters of the event list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListEvents {
    /// Only events of this sandbox.
    pub sandbox_id: Option<String>,
    /// At most this many (the service's default 100, at most 1000).
    pub limit: Option<u32>,
}

/// Service health.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// `ok`.
    pub status: String,
    /// warren version.
    pub version: String,
    /// `kvm` or `tcg`.
    pub accel: String,
    /// Sandboxes running on this host.
    pub sandboxes_running: u64,
}

/// One correction made by the service's reconciler.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReconcileFix {
    /// What kind of problem (`orphan_vm`, `orphan_dir`, `record_stopped`, ...).
    pub kind: String,
    /// The sandbox (or template) concerned.
    pub id: String,
    /// What was found and done.
    pub detail: String,
}

/// What a reconciler pass fixed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReconcileReport {
    /// Every fix; empty when database, disk and processes agree.
    pub fixes: Vec<ReconcileFix>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_sandbox() {
        let body = r#"{
          "id": "sb-k3xq7m2vnd8a", "template": "debian", "state": "running",
          "cpus": 1, "memory_mib": 512, "metadata": {"owner": "agent-7"},
          "env": {"FOO": "bar"}, "auto_pause": false, "timeout_secs": 300,
          "created_at": "2026-11-23T10:00:00Z", "expires_at": "2026-11-23T10:05:00Z",
          "stopped_at": null, "stop_reason": null, "a_future_field": 1
        }"#;
        let sandbox: Sandbox = serde_json::from_str(body).unwrap();
        assert_eq!(sandbox.state, SandboxState::Running);
        assert_eq!(sandbox.metadata["owner"], "agent-7");
        assert_eq!(
            (sandbox.expires_at.unwrap() - sandbox.created_at).num_seconds(),
            300
        );
        // Round trip: what the CLI prints with --json is what it read.
        let again: Sandbox =
            serde_json::from_str(&serde_json::to_string(&sandbox).unwrap()).unwrap();
        assert_eq!(again, sandbox);
    }

    #[test]
    fn unknown_enum_values_do_not_fail() {
        let state: SandboxState = serde_json::from_str("\"hibernating\"").unwrap();
        assert_eq!(state, SandboxState::Unknown);
        let kind: FileKind = serde_json::from_str("\"fifo\"").unwrap();
        assert_eq!(kind, FileKind::Other);
    }

    #[test]
    fn requests_send_only_set_fields() {
        let body = serde_json::to_value(CreateSandbox {
            template: Some("tiny".into()),
            memory_mib: Some(128),
            ..CreateSandbox::default()
        })
        .unwrap();
        assert_eq!(
            body,
            serde_json::json!({"template": "tiny", "memory_mib": 128})
        );
        let flags = serde_json::to_value(CreateSandbox {
            auto_pause: Some(true),
            auto_resume: Some(true),
            ..CreateSandbox::default()
        })
        .unwrap();
        assert_eq!(
            flags,
            serde_json::json!({"auto_pause": true, "auto_resume": true})
        );
        let exec = serde_json::to_value(ExecRequest::argv(["true"])).unwrap();
        assert_eq!(exec, serde_json::json!({"argv": ["true"]}));
    }

    #[test]
    fn list_filters_repeat_metadata() {
        let query = ListSandboxes {
            state: Some(SandboxState::Stopped),
            metadata: vec![("a".into(), "1".into()), ("b".into(), "x:y".into())],
        }
        .query();
        assert_eq!(
            query,
            vec![
                ("state", "stopped".to_string()),
                ("metadata", "a:1".to_string()),
                ("metadata", "b:x:y".to_string())
            ]
        );
    }

    #[test]
    fn shell_codes_follow_the_shell() {
        let status = |exit_code, signal, timed_out| ExitStatus {
            exit_code,
            signal,
            timed_out,
        };
        assert_eq!(status(Some(3), None, false).shell_code(), 3);
        assert_eq!(status(None, Some(9), false).shell_code(), 137);
        assert_eq!(status(None, Some(9), true).shell_code(), 124);
        assert!(status(Some(0), None, false).success());
        assert!(!status(Some(0), None, true).success());
    }

    #[test]
    fn parses_files_and_keys() {
        let info: FileInfo = serde_json::from_str(
            r#"{"path":"/home/user/a.txt","name":"a.txt","type":"file","size":6,"mode":420,"owner":"user","group":"user","modified_at":"2026-01-01T00:00:00.123Z","symlink_target":null}"#,
        )
        .unwrap();
        assert_eq!(info.kind, FileKind::File);
        assert_eq!(info.mode, 0o644);
        let key: CreatedKey = serde_json::from_str(
            r#"{"id":"key_1","name":"ci","team":"t","prefix":"wrn_abcd","key":"wrn_x","created_at":"2026-01-01T00:00:00Z"}"#,
        )
        .unwrap();
        assert_eq!(key.key, "wrn_x");
    }

    #[test]
    fn parses_pauses_and_snapshots() {
        let pause: PauseResult = serde_json::from_str(
            r#"{"sandbox":{"id":"sb-1","template":"debian","state":"paused","cpus":1,"memory_mib":512,
                "metadata":{},"env":{},"auto_pause":false,"auto_resume":true,"timeout_secs":0,
                "created_at":"2026-01-01T00:00:00Z","expires_at":null,"stopped_at":null,"stop_reason":null},
               "memory_bytes":129394278,"full":true,"chain_length":1,"merged":false,"duration_ms":850}"#,
        )
        .unwrap();
        assert_eq!(pause.sandbox.state, SandboxState::Paused);
        assert!(pause.sandbox.auto_resume && pause.full);
        assert_eq!((pause.chain_length, pause.duration_ms), (1, 850));
        let list: SnapshotList = serde_json::from_str(
            r#"{"snapshots":[{"name":"base","source_sandbox":"sb-1","cpus":1,"memory_mib":512,
                "memory_bytes":1024,"disk_bytes":2048,"used_by":["sb-2"],"created_at":"2026-01-01T00:00:00Z"}]}"#,
        )
        .unwrap();
        assert_eq!(list.snapshots[0].used_by, ["sb-2"]);
        assert_eq!(list.snapshots[0].source_sandbox.as_deref(), Some("sb-1"));
        // An older service without auto_resume still parses.
        let old: Sandbox = serde_json::from_value(serde_json::json!({
            "id": "sb-1", "template": "debian", "state": "running", "cpus": 1,
            "memory_mib": 512, "timeout_secs": 0, "created_at": "2026-01-01T00:00:00Z",
            "expires_at": null, "stopped_at": null, "stop_reason": null
        }))
        .unwrap();
        assert!(!old.auto_resume);
    }
}
