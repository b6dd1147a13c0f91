//! Request and response bodies of the REST API: the service's own types,
//! from `warren-api`, plus what only a client needs (query builders, the
//! streamed-exec request, upload options).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use warren_api::{
    ApiKey, CreateKey, CreateSandbox, CreateSnapshot, CreatedKey, Event, EventList, ExecRequest,
    ExecResult, ExitStatus, FileInfo, FileKind, FileList, Health, KeyList, NetworkPolicy,
    PauseResult, ProcessEntry, ProcessList, ProcessStarted, ReconcileFix, ReconcileReport, Sandbox,
    SandboxList, SandboxState, Snapshot, SnapshotList, StartProcess, Template, TemplateList,
    UnknownState,
};

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

/// Filters of the event list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListEvents {
    /// Only events of this sandbox.
    pub sandbox_id: Option<String>,
    /// At most this many (the service's default 100, at most 1000).
    pub limit: Option<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
