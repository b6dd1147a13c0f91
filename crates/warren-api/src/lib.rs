//! The wire types of warren's REST API: one definition of every request and
//! response body, used by the service (`warren-server`, which turns on the
//! `openapi` feature so the document at `/openapi.json` is derived from these
//! very types) and by the Rust client (`warren-client`, without it, so a
//! client pulls in no server or schema machinery).
//!
//! Both directions are written for versions that drift apart: responses
//! tolerate fields and enum values they do not know (`#[serde(default)]`,
//! `#[serde(other)]`), so an older client keeps working against a newer
//! service; requests serialize only the fields that are set and the service
//! refuses unknown ones (`deny_unknown_fields`), so a typo is an error, not a
//! silently ignored option. The OpenAPI document still marks every field the
//! service always sends as required (`schema(required = true)`).

/// The two ways to name a command (`argv` or a shell line), as
/// constructors of each request type that runs one.
macro_rules! command_constructors {
    ($request:ty) => {
        impl $request {
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
    };
}
pub(crate) use command_constructors;

pub mod local;
pub mod message;
pub mod ws;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// State of a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum SandboxState {
    /// Its VM runs and takes requests.
    Running,
    /// Saved to disk; resumes on request.
    Paused,
    /// Gone; the record stays for reference.
    Stopped,
    /// A state this client does not know (a newer service). The service
    /// never sends it; `skip_serializing` keeps it out of the OpenAPI
    /// document (serialization is by [`SandboxState::as_str`]).
    #[serde(other, skip_serializing)]
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

// By hand, so a client can still print (`--json`) a state it did not know.
impl Serialize for SandboxState {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl std::fmt::Display for SandboxState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A state name that is not one of the API's (for filters given by a user).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown state {0:?}; use running, paused or stopped")]
pub struct UnknownState(pub String);

impl std::str::FromStr for SandboxState {
    type Err = UnknownState;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "running" => Ok(SandboxState::Running),
            "paused" => Ok(SandboxState::Paused),
            "stopped" => Ok(SandboxState::Stopped),
            other => Err(UnknownState(other.to_string())),
        }
    }
}

/// A sandbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub metadata: BTreeMap<String, String>,
    /// Environment variables every process gets.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub env: BTreeMap<String, String>,
    /// Pause instead of dying at the timeout.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub auto_pause: bool,
    /// Operations on the paused sandbox resume it first.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(required = true))]
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
    /// Where its ports are served by host name: port P of this sandbox is
    /// `{P}-{id}.{domain}` on warren's listener (with the listener's port
    /// when the domain names one), so an app that must sit at `/` works.
    /// Absent for a stopped sandbox, and from a service that serves no
    /// host form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Opens this sandbox's ports without an API key, and nothing else:
    /// send it as the `X-Warren-Access-Token` header, or once as
    /// `?warren_token=` in a browser (which then keeps it in a cookie for
    /// that port's host). Absent for a stopped sandbox (it has no ports)
    /// and for sandboxes from before ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_token: Option<String>,
    /// Ports anyone may open through warren, with no key or token.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub public_ports: Vec<u16>,
}

/// Request to create a sandbox; every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateSandbox {
    /// Template id (default `debian`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// Virtual CPUs (default 1, at most the host's CPUs).
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u32>,
    /// Guest memory in MiB (default 512, at least 128, at most the host's
    /// memory).
    #[cfg_attr(feature = "openapi", schema(minimum = 128))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u32>,
    /// Seconds until the sandbox is killed (or paused); default 300, 0 for
    /// none, at most 86400 (a day).
    #[cfg_attr(feature = "openapi", schema(maximum = 86400))]
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
    /// When paused, any operation on the sandbox resumes it first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_resume: Option<bool>,
    /// If its VM is lost with no snapshot to fall back to (it crashed, or
    /// died while warren was down, before its first pause), keep its disk
    /// on the host under `<data>/kept/` instead of deleting it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_disk: Option<bool>,
    /// Its network: internet on by default; egress allow and deny lists.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkPolicy>,
    /// Ports anyone may open without a key or token (at most 64; change
    /// them later with `PUT /v1/sandboxes/{id}/public-ports`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_ports: Option<Vec<u16>>,
}

/// The ports of a sandbox that anyone may open, replacing the previous set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PublicPorts {
    /// TCP ports, 1 to 65535, at most 64 (empty: every port needs a key or
    /// the sandbox's access token).
    pub ports: Vec<u16>,
}

/// A TCP port something in a running sandbox listens on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ListeningPort {
    /// The port.
    pub port: u16,
    /// Every listener on it is bound to loopback (127.0.0.1, ::1), so
    /// warren cannot reach it: the server must listen on 0.0.0.0.
    pub loopback_only: bool,
    /// Whether anyone may open it (it is in the sandbox's `public_ports`).
    pub public: bool,
}

/// The ports a sandbox listens on, lowest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ListeningPortList {
    /// Each port once.
    pub ports: Vec<ListeningPort>,
}

/// At most this many public ports per sandbox.
pub const MAX_PUBLIC_PORTS: usize = 64;

/// A sandbox's network policy. `allow_out` wins over `deny_out`, and both
/// over `internet` (the default for what no rule names), so
/// `deny_out: ["0.0.0.0/0"], allow_out: ["pypi.org"]` reaches pypi.org and
/// nothing else. Rules are IPv4 addresses, CIDRs, domain names, or
/// `*.domain` for every name under a domain (not the domain itself).
/// Whatever the policy says, a sandbox never reaches the host, link-local
/// and metadata addresses (169.254.0.0/16), or another sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NetworkPolicy {
    /// Reach destinations no rule names (default true).
    #[serde(default = "yes")]
    pub internet: bool,
    /// Destinations always reachable (at most 512).
    #[serde(default)]
    pub allow_out: Vec<String>,
    /// Destinations blocked unless `allow_out` names them (at most 512).
    #[serde(default)]
    pub deny_out: Vec<String>,
}

impl Default for NetworkPolicy {
    fn default() -> Self {
        NetworkPolicy {
            internet: true,
            allow_out: Vec::new(),
            deny_out: Vec::new(),
        }
    }
}

fn yes() -> bool {
    true
}

/// A list of sandboxes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SandboxList {
    /// Newest first.
    pub sandboxes: Vec<Sandbox>,
}

/// New timeout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SetTimeout {
    /// Seconds from now (0 = no timeout, at most 86400).
    #[cfg_attr(feature = "openapi", schema(maximum = 86400))]
    pub timeout_secs: u64,
}

/// Query of the console log.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams))]
#[cfg_attr(feature = "openapi", into_params(parameter_in = Query))]
pub struct LogsQuery {
    /// Return at most this many bytes from the end (default 65536, at most
    /// 16 MiB).
    #[cfg_attr(feature = "openapi", param(minimum = 0, maximum = 16777216))]
    pub tail_bytes: Option<u64>,
}

/// A process to run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
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
    /// Kill after this many seconds (0 = none, at most 86400).
    #[cfg_attr(feature = "openapi", schema(maximum = 86400))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    /// Text fed to stdin, which is then closed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
}

command_constructors!(ExecRequest);

/// A background process to start.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
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
    /// Kill after this many seconds (0 = none, at most 86400).
    #[cfg_attr(feature = "openapi", schema(maximum = 86400))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    /// Keep a stdin pipe open for `/stdin` calls.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stdin: Option<bool>,
    /// A label shown in the process list.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

/// Result of a synchronous exec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
    #[cfg_attr(feature = "openapi", schema(required = true))]
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

/// How a process ended: what exec results and streamed exits share, so a
/// caller can turn either into a shell's exit code the same way.
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

/// A started background process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProcessStarted {
    /// Guest pid.
    pub pid: u32,
}

/// A process the sandbox knows about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProcessEntry {
    /// Guest pid.
    pub pid: u32,
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Label.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub tag: String,
    /// Runs under a terminal.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(required = true))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProcessList {
    /// Running and recently exited background processes.
    pub processes: Vec<ProcessEntry>,
}

/// Input for a process.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ProcessInput {
    /// Text to write.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    /// Base64 bytes to write (instead of `data`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_base64: Option<String>,
    /// Close stdin afterwards.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub close: Option<bool>,
}

/// A signal to send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SignalRequest {
    /// Signal number (15 = TERM, 9 = KILL, 2 = INT).
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 64))]
    pub signal: i32,
}

/// Query of the attach WebSocket.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams))]
#[cfg_attr(feature = "openapi", into_params(parameter_in = Query))]
pub struct AttachQuery {
    /// Replay buffered output first (default true).
    pub replay: Option<bool>,
    /// API key (WebSockets only).
    pub api_key: Option<String>,
}

/// Query of the PTY WebSocket.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams))]
#[cfg_attr(feature = "openapi", into_params(parameter_in = Query))]
pub struct PtyQuery {
    /// Columns (default 80).
    #[cfg_attr(feature = "openapi", param(minimum = 1, maximum = 1000))]
    pub cols: Option<u16>,
    /// Rows (default 24).
    #[cfg_attr(feature = "openapi", param(minimum = 1, maximum = 1000))]
    pub rows: Option<u16>,
    /// Command line to run (default: the user's login shell).
    pub cmd: Option<String>,
    /// User (default root).
    pub user: Option<String>,
    /// API key (WebSockets only).
    pub api_key: Option<String>,
}

/// Query of the exec WebSocket.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams))]
#[cfg_attr(feature = "openapi", into_params(parameter_in = Query))]
pub struct WsQuery {
    /// API key (WebSockets only).
    pub api_key: Option<String>,
}

/// Kind of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FileList {
    /// Entries (unordered).
    pub entries: Vec<FileInfo>,
}

/// Query naming a path.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams))]
#[cfg_attr(feature = "openapi", into_params(parameter_in = Query))]
pub struct PathQuery {
    /// Absolute path in the sandbox.
    #[cfg_attr(feature = "openapi", param(pattern = "^/", max_length = 4096))]
    pub path: String,
}

/// Query of a listing.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams))]
#[cfg_attr(feature = "openapi", into_params(parameter_in = Query))]
pub struct ListQuery {
    /// Absolute path of a directory.
    #[cfg_attr(feature = "openapi", param(pattern = "^/", max_length = 4096))]
    pub path: String,
    /// Levels of subdirectories to include (default 0, at most 8).
    #[cfg_attr(feature = "openapi", param(minimum = 0, maximum = 8))]
    pub depth: Option<u32>,
}

/// Query of a removal.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams))]
#[cfg_attr(feature = "openapi", into_params(parameter_in = Query))]
pub struct RemoveQuery {
    /// Absolute path.
    #[cfg_attr(feature = "openapi", param(pattern = "^/", max_length = 4096))]
    pub path: String,
    /// Remove directories with their contents.
    pub recursive: Option<bool>,
}

/// Query of a raw upload.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams))]
#[cfg_attr(feature = "openapi", into_params(parameter_in = Query))]
pub struct UploadQuery {
    /// Absolute path of the file to write.
    #[cfg_attr(feature = "openapi", param(pattern = "^/", max_length = 4096))]
    pub path: String,
    /// Create missing parent directories.
    pub create_parents: Option<bool>,
    /// Owner of a new file.
    pub user: Option<String>,
    /// Permission bits as an octal string, e.g. `644`.
    #[cfg_attr(feature = "openapi", param(pattern = "^[0-7]{1,4}$"))]
    pub mode: Option<String>,
}

/// Multipart upload form: `path` must come before `file`.
#[cfg(feature = "openapi")]
#[derive(Debug, utoipa::ToSchema)]
pub struct UploadForm {
    /// Absolute path of the file to write.
    #[cfg_attr(feature = "openapi", schema(pattern = "^/", max_length = 4096))]
    pub path: String,
    /// Octal permission bits, e.g. `644`.
    #[cfg_attr(feature = "openapi", schema(pattern = "^[0-7]{1,4}$"))]
    pub mode: Option<String>,
    /// Owner of a new file.
    pub user: Option<String>,
    /// `true` to create missing parent directories.
    #[cfg_attr(feature = "openapi", schema(pattern = "^(true|false)$"))]
    pub create_parents: Option<String>,
    /// The file's bytes.
    #[cfg_attr(feature = "openapi", schema(format = Binary, content_media_type = "application/octet-stream"))]
    pub file: String,
}

/// Directory to create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct MakeDir {
    /// Absolute path.
    #[cfg_attr(feature = "openapi", schema(pattern = "^/", max_length = 4096))]
    pub path: String,
    /// Create parents, succeed if it exists (default true).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parents: Option<bool>,
}

/// A rename.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Rename {
    /// Current absolute path.
    #[cfg_attr(feature = "openapi", schema(pattern = "^/", max_length = 4096))]
    pub from: String,
    /// New absolute path.
    #[cfg_attr(feature = "openapi", schema(pattern = "^/", max_length = 4096))]
    pub to: String,
    /// Replace an existing target.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overwrite: Option<bool>,
}

/// A template.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Template {
    /// Id (what `template` in a create request names).
    pub id: String,
    /// Display name.
    pub name: String,
    /// `image` (built-in) or `snapshot`.
    pub kind: String,
    /// One line.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub description: String,
    /// vCPUs a snapshot template is locked to.
    pub cpus: Option<u32>,
    /// Memory a snapshot template is locked to.
    pub memory_mib: Option<u32>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

/// Request to take a snapshot template.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateSnapshot {
    /// Template name (letters, digits, '-', '_', '.'); sandboxes are then
    /// created from it with `"template": name`.
    #[cfg_attr(
        feature = "openapi",
        schema(
            min_length = 1,
            max_length = 64,
            pattern = "^[A-Za-z0-9_-][A-Za-z0-9._-]*$"
        )
    )]
    pub name: String,
}

/// A snapshot template.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub memory_bytes: u64,
    /// Allocated bytes of its disk layer.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub disk_bytes: u64,
    /// Sandboxes (running or paused) created from it.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub used_by: Vec<String>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

/// Snapshot templates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SnapshotList {
    /// Oldest first.
    pub snapshots: Vec<Snapshot>,
}

/// What a pause did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PauseResult {
    /// The sandbox, now paused.
    pub sandbox: Sandbox,
    /// Memory written by this pause (bytes on disk).
    pub memory_bytes: u64,
    /// A full snapshot (the first pause) rather than a diff.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub full: bool,
    /// Generations in the memory chain.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub chain_length: u32,
    /// Whether the chain was merged into one generation.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub merged: bool,
    /// How long the pause took (ms).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub duration_ms: u64,
}

/// Templates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TemplateList {
    /// Oldest first.
    pub templates: Vec<Template>,
}

/// Request for a new key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// Label.
    #[cfg_attr(
        feature = "openapi",
        schema(min_length = 1, max_length = 100, pattern = "\\S")
    )]
    pub name: String,
    /// Team of the new key (admin keys only; created if new). Default:
    /// the caller's team.
    #[cfg_attr(
        feature = "openapi",
        schema(min_length = 1, max_length = 100, pattern = "^[A-Za-z0-9._-]+$")
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
}

/// A key as listed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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

/// A newly created key: the only time its secret is shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KeyList {
    /// Newest first.
    pub keys: Vec<ApiKey>,
}

/// A lifecycle event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub detail: serde_json::Value,
}

/// Events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EventList {
    /// Newest first.
    pub events: Vec<Event>,
}

/// Query of the event list.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams))]
#[cfg_attr(feature = "openapi", into_params(parameter_in = Query))]
pub struct EventsQuery {
    /// Only events of this sandbox.
    pub sandbox_id: Option<String>,
    /// At most this many (default 100, at most 1000).
    #[cfg_attr(feature = "openapi", param(minimum = 1, maximum = 1000))]
    pub limit: Option<u32>,
}

/// Service health.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReconcileReport {
    /// Every fix, in order; empty when database, disk and processes agree.
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
