//! Request and response bodies of the REST API: the service's own types,
//! from `warren-api`, plus what only a client needs (query builders, upload
//! options).

pub use warren_api::ws::{PtySize, StreamExec};
pub use warren_api::{
    ApiKey, CreateKey, CreateSandbox, CreateSnapshot, CreatedKey, Event, EventList, ExecRequest,
    ExecResult, ExitStatus, FileInfo, FileKind, FileList, Health, KeyList, ListeningPort,
    ListeningPortList, NetworkPolicy, PauseResult, ProcessEntry, ProcessList, ProcessStarted,
    PublicPorts, ReconcileFix, ReconcileReport, Sandbox, SandboxList, SandboxState, Snapshot,
    SnapshotList, StartProcess, Template, TemplateList, UnknownState,
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
