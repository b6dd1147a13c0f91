//! The types of the REST API (request and response bodies).
//!
//! Their derives generate the OpenAPI schemas, so the document at
//! `/openapi.json` always matches what the handlers accept and send.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::db::{EventRow, KeyRow, SandboxRow, TemplateRow};

/// Converts stored milliseconds to a UTC time.
pub fn time(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

/// State of a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SandboxState {
    /// Its VM runs and takes requests.
    Running,
    /// Saved to disk; resumes on request.
    Paused,
    /// Gone; the record stays for reference.
    Stopped,
}

impl SandboxState {
    /// As stored.
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxState::Running => "running",
            SandboxState::Paused => "paused",
            SandboxState::Stopped => "stopped",
        }
    }

    fn parse(value: &str) -> Self {
        match value {
            "running" => SandboxState::Running,
            "paused" => SandboxState::Paused,
            _ => SandboxState::Stopped,
        }
    }
}

/// A sandbox.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
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
    pub metadata: BTreeMap<String, String>,
    /// Environment variables every process gets.
    pub env: BTreeMap<String, String>,
    /// Pause instead of dying at the timeout.
    pub auto_pause: bool,
    /// Operations on the paused sandbox resume it first.
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

impl From<&SandboxRow> for Sandbox {
    fn from(row: &SandboxRow) -> Self {
        Self {
            id: row.id.clone(),
            template: row.template_id.clone(),
            state: SandboxState::parse(&row.state),
            cpus: row.cpus.clamp(0, i64::from(u32::MAX)) as u32,
            memory_mib: row.memory_mib.clamp(0, i64::from(u32::MAX)) as u32,
            metadata: row.metadata_map(),
            env: row.env_map(),
            auto_pause: row.auto_pause != 0,
            auto_resume: row.auto_resume != 0,
            timeout_secs: row.timeout_secs.max(0) as u64,
            created_at: time(row.created_at),
            expires_at: row.expires_at.map(time),
            stopped_at: row.stopped_at.map(time),
            stop_reason: row.stop_reason.clone(),
        }
    }
}

/// Request to create a sandbox; every field is optional.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSandbox {
    /// Template id (default `debian`).
    pub template: Option<String>,
    /// Virtual CPUs (default 1, at most the host's CPUs).
    #[schema(minimum = 1)]
    pub cpus: Option<u32>,
    /// Guest memory in MiB (default 512, at least 128, at most the host's
    /// memory).
    #[schema(minimum = 128)]
    pub memory_mib: Option<u32>,
    /// Seconds until the sandbox is killed (or paused); default 300, 0 for
    /// none, at most 86400 (a day).
    #[schema(maximum = 86400)]
    pub timeout_secs: Option<u64>,
    /// Labels to filter by later.
    pub metadata: Option<BTreeMap<String, String>>,
    /// Environment variables for every process.
    pub env: Option<BTreeMap<String, String>>,
    /// Pause instead of dying at the timeout.
    pub auto_pause: Option<bool>,
    /// When paused, any operation on the sandbox resumes it first.
    pub auto_resume: Option<bool>,
    /// If its VM is lost with no snapshot to fall back to (it crashed, or
    /// died while warren was down, before its first pause), keep its disk
    /// on the host under `<data>/kept/` instead of deleting it.
    pub keep_disk: Option<bool>,
}

/// A list of sandboxes.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SandboxList {
    /// Newest first.
    pub sandboxes: Vec<Sandbox>,
}

/// New timeout.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetTimeout {
    /// Seconds from now (0 = no timeout, at most 86400).
    #[schema(maximum = 86400)]
    pub timeout_secs: u64,
}

/// Query of the console log.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogsQuery {
    /// Return at most this many bytes from the end (default 65536, at most
    /// 16 MiB).
    #[param(minimum = 0, maximum = 16777216)]
    pub tail_bytes: Option<u64>,
}

/// A process to run.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    /// Shell command line, run with `/bin/sh -c` (or give `argv`).
    pub cmd: Option<String>,
    /// Program and arguments (or give `cmd`).
    pub argv: Option<Vec<String>>,
    /// Extra environment variables.
    pub env: Option<BTreeMap<String, String>>,
    /// Working directory (default: the user's home).
    pub cwd: Option<String>,
    /// User to run as (default root).
    pub user: Option<String>,
    /// Kill after this many seconds (0 = none, at most 86400).
    #[schema(maximum = 86400)]
    pub timeout_secs: Option<u64>,
    /// Text fed to stdin, which is then closed.
    pub stdin: Option<String>,
}

/// A background process to start.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartProcess {
    /// Shell command line (or give `argv`).
    pub cmd: Option<String>,
    /// Program and arguments (or give `cmd`).
    pub argv: Option<Vec<String>>,
    /// Extra environment variables.
    pub env: Option<BTreeMap<String, String>>,
    /// Working directory.
    pub cwd: Option<String>,
    /// User to run as.
    pub user: Option<String>,
    /// Kill after this many seconds (0 = none, at most 86400).
    #[schema(maximum = 86400)]
    pub timeout_secs: Option<u64>,
    /// Keep a stdin pipe open for `/stdin` calls.
    pub stdin: Option<bool>,
    /// A label shown in the process list.
    pub tag: Option<String>,
}

/// Result of a synchronous exec.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
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
    pub truncated: bool,
}

/// A started background process.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ProcessStarted {
    /// Guest pid.
    pub pid: u32,
}

/// A process the sandbox knows about.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ProcessEntry {
    /// Guest pid.
    pub pid: u32,
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Label.
    pub tag: String,
    /// Runs under a terminal.
    pub pty: bool,
    /// Still running.
    pub running: bool,
    /// Exit code once exited.
    pub exit_code: Option<i32>,
    /// Signal once killed.
    pub signal: Option<i32>,
}

/// Processes of a sandbox.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ProcessList {
    /// Running and recently exited background processes.
    pub processes: Vec<ProcessEntry>,
}

/// Input for a process.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProcessInput {
    /// Text to write.
    pub data: Option<String>,
    /// Base64 bytes to write (instead of `data`).
    pub data_base64: Option<String>,
    /// Close stdin afterwards.
    pub close: Option<bool>,
}

/// A signal to send.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignalRequest {
    /// Signal number (15 = TERM, 9 = KILL, 2 = INT).
    #[schema(minimum = 1, maximum = 64)]
    pub signal: i32,
}

/// Query of the attach WebSocket.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AttachQuery {
    /// Replay buffered output first (default true).
    pub replay: Option<bool>,
    /// API key (WebSockets only).
    pub api_key: Option<String>,
}

/// Query of the PTY WebSocket.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PtyQuery {
    /// Columns (default 80).
    #[param(minimum = 1, maximum = 1000)]
    pub cols: Option<u16>,
    /// Rows (default 24).
    #[param(minimum = 1, maximum = 1000)]
    pub rows: Option<u16>,
    /// Command line to run (default: the user's login shell).
    pub cmd: Option<String>,
    /// User (default root).
    pub user: Option<String>,
    /// API key (WebSockets only).
    pub api_key: Option<String>,
}

/// Query of the exec WebSocket.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WsQuery {
    /// API key (WebSockets only).
    pub api_key: Option<String>,
}

/// Kind of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link.
    Symlink,
    /// Anything else.
    Other,
}

/// A file in a sandbox.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
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

impl From<warren_sandbox::FileInfo> for FileInfo {
    fn from(info: warren_sandbox::FileInfo) -> Self {
        let ms = info
            .modified
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        Self {
            path: info.path,
            name: info.name,
            kind: match info.file_type {
                warren_sandbox::FileType::File => FileKind::File,
                warren_sandbox::FileType::Dir => FileKind::Dir,
                warren_sandbox::FileType::Symlink => FileKind::Symlink,
                warren_sandbox::FileType::Other => FileKind::Other,
            },
            size: info.size,
            mode: info.mode,
            owner: info.owner,
            group: info.group,
            modified_at: time(ms),
            symlink_target: info.symlink_target,
        }
    }
}

/// A directory listing.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FileList {
    /// Entries (unordered).
    pub entries: Vec<FileInfo>,
}

/// Query naming a path.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PathQuery {
    /// Absolute path in the sandbox.
    #[param(pattern = "^/", max_length = 4096)]
    pub path: String,
}

/// Query of a listing.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Absolute path of a directory.
    #[param(pattern = "^/", max_length = 4096)]
    pub path: String,
    /// Levels of subdirectories to include (default 0, at most 8).
    #[param(minimum = 0, maximum = 8)]
    pub depth: Option<u32>,
}

/// Query of a removal.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RemoveQuery {
    /// Absolute path.
    #[param(pattern = "^/", max_length = 4096)]
    pub path: String,
    /// Remove directories with their contents.
    pub recursive: Option<bool>,
}

/// Query of a raw upload.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UploadQuery {
    /// Absolute path of the file to write.
    #[param(pattern = "^/", max_length = 4096)]
    pub path: String,
    /// Create missing parent directories.
    pub create_parents: Option<bool>,
    /// Owner of a new file.
    pub user: Option<String>,
    /// Permission bits as an octal string, e.g. `644`.
    #[param(pattern = "^[0-7]{1,4}$")]
    pub mode: Option<String>,
}

/// Multipart upload form: `path` must come before `file`.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct UploadForm {
    /// Absolute path of the file to write.
    #[schema(pattern = "^/", max_length = 4096)]
    pub path: String,
    /// Octal permission bits, e.g. `644`.
    #[schema(pattern = "^[0-7]{1,4}$")]
    pub mode: Option<String>,
    /// Owner of a new file.
    pub user: Option<String>,
    /// `true` to create missing parent directories.
    #[schema(pattern = "^(true|false)$")]
    pub create_parents: Option<String>,
    /// The file's bytes.
    #[schema(format = Binary, content_media_type = "application/octet-stream")]
    pub file: String,
}

/// Directory to create.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MakeDir {
    /// Absolute path.
    #[schema(pattern = "^/", max_length = 4096)]
    pub path: String,
    /// Create parents, succeed if it exists (default true).
    pub parents: Option<bool>,
}

/// A rename.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Rename {
    /// Current absolute path.
    #[schema(pattern = "^/", max_length = 4096)]
    pub from: String,
    /// New absolute path.
    #[schema(pattern = "^/", max_length = 4096)]
    pub to: String,
    /// Replace an existing target.
    pub overwrite: Option<bool>,
}

/// A template.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Template {
    /// Id (what `template` in a create request names).
    pub id: String,
    /// Display name.
    pub name: String,
    /// `image` (built-in) or `snapshot`.
    pub kind: String,
    /// One line.
    pub description: String,
    /// vCPUs a snapshot template is locked to.
    pub cpus: Option<u32>,
    /// Memory a snapshot template is locked to.
    pub memory_mib: Option<u32>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

impl From<&TemplateRow> for Template {
    fn from(row: &TemplateRow) -> Self {
        Self {
            id: row.id.clone(),
            name: row.name.clone(),
            kind: row.kind.clone(),
            description: row.description.clone(),
            cpus: row.cpus.map(|c| c.clamp(0, i64::from(u32::MAX)) as u32),
            memory_mib: row
                .memory_mib
                .map(|m| m.clamp(0, i64::from(u32::MAX)) as u32),
            created_at: time(row.created_at),
        }
    }
}

/// Request to take a snapshot template.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSnapshot {
    /// Template name (letters, digits, '-', '_', '.'); sandboxes are then
    /// created from it with `"template": name`.
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = "^[A-Za-z0-9_-][A-Za-z0-9._-]*$"
    )]
    pub name: String,
}

/// A snapshot template.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Snapshot {
    /// Name (also its template id).
    pub name: String,
    /// The sandbox it was taken from.
    pub source_sandbox: Option<String>,
    /// vCPUs its clones get.
    pub cpus: u32,
    /// Memory its clones get.
    pub memory_mib: u32,
    /// Allocated bytes of its memory on disk.
    pub memory_bytes: u64,
    /// Allocated bytes of its disk layer.
    pub disk_bytes: u64,
    /// Sandboxes (running or paused) created from it.
    pub used_by: Vec<String>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

/// Snapshot templates.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SnapshotList {
    /// Oldest first.
    pub snapshots: Vec<Snapshot>,
}

/// What a pause did.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PauseResult {
    /// The sandbox, now paused.
    pub sandbox: Sandbox,
    /// Memory written by this pause (bytes on disk).
    pub memory_bytes: u64,
    /// A full snapshot (the first pause) rather than a diff.
    pub full: bool,
    /// Generations in the memory chain.
    pub chain_length: u32,
    /// Whether the chain was merged into one generation.
    pub merged: bool,
    /// How long the pause took (ms).
    pub duration_ms: u64,
}

/// Templates.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TemplateList {
    /// Oldest first.
    pub templates: Vec<Template>,
}

/// Request for a new key.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// Label.
    #[schema(min_length = 1, max_length = 100, pattern = "\\S")]
    pub name: String,
    /// Team of the new key (admin keys only; created if new). Default:
    /// the caller's team.
    #[schema(min_length = 1, max_length = 100, pattern = "^[A-Za-z0-9._-]+$")]
    pub team: Option<String>,
}

/// A key as listed.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
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
    /// Last use.
    pub last_used_at: Option<DateTime<Utc>>,
    /// Revocation time.
    pub revoked_at: Option<DateTime<Utc>>,
}

impl From<&KeyRow> for ApiKey {
    fn from(row: &KeyRow) -> Self {
        Self {
            id: row.id.clone(),
            name: row.name.clone(),
            team: row.team_name.clone(),
            prefix: row.prefix.clone(),
            created_at: time(row.created_at),
            last_used_at: row.last_used_at.map(time),
            revoked_at: row.revoked_at.map(time),
        }
    }
}

/// A newly created key: the only time its secret is shown.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
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
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct KeyList {
    /// Newest first.
    pub keys: Vec<ApiKey>,
}

/// A lifecycle event.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
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
    pub detail: serde_json::Value,
}

impl From<&EventRow> for Event {
    fn from(row: &EventRow) -> Self {
        Self {
            id: row.id.clone(),
            sandbox_id: row.sandbox_id.clone(),
            kind: row.kind.clone(),
            actor: row.actor.clone(),
            at: time(row.at),
            detail: serde_json::from_str(&row.detail).unwrap_or(serde_json::Value::Null),
        }
    }
}

/// Events.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EventList {
    /// Newest first.
    pub events: Vec<Event>,
}

/// Query of the event list.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Only events of this sandbox.
    pub sandbox_id: Option<String>,
    /// At most this many (default 100, at most 1000).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// Service health.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
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

/// One correction made by the reconciler.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ReconcileFix {
    /// What kind of problem: `orphan_vm`, `orphan_memfs`, `orphan_dir`,
    /// `stray_file`, `quarantined`, `staging`, `record_reverted`,
    /// `record_stopped`, `record_running`, `unrecorded_sandbox`.
    pub kind: String,
    /// The sandbox (or template) concerned.
    pub id: String,
    /// What was found and done.
    pub detail: String,
}

/// What a reconciler pass fixed.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ReconcileReport {
    /// Every fix, in order; empty when database, disk and processes agree.
    pub fixes: Vec<ReconcileFix>,
}
