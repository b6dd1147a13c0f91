//! The REST API's types, from `warren-api` (the one definition the service
//! and its clients share), and how the service builds them from its records.
//!
//! The conversions live here rather than in `warren-api` because they know
//! the database rows and the sandbox library, which clients must not pull in.

use chrono::{DateTime, TimeZone, Utc};

pub use warren_api::*;

use crate::db::{EventRow, KeyRow, SandboxRow, TemplateRow};

/// Converts stored milliseconds to a UTC time.
pub fn time(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

/// The state a stored record names; anything unknown reads as stopped (a
/// record the service cannot act on is not offered as live).
fn state_of(stored: &str) -> SandboxState {
    match stored {
        "running" => SandboxState::Running,
        "paused" => SandboxState::Paused,
        _ => SandboxState::Stopped,
    }
}

/// A stored count as the API's `u32` (clamped: rows are never negative, but
/// a damaged one must not wrap around).
fn as_u32(value: i64) -> u32 {
    value.clamp(0, i64::from(u32::MAX)) as u32
}

impl From<&SandboxRow> for Sandbox {
    fn from(row: &SandboxRow) -> Self {
        Self {
            id: row.id.clone(),
            template: row.template_id.clone(),
            state: state_of(&row.state),
            cpus: as_u32(row.cpus),
            memory_mib: as_u32(row.memory_mib),
            metadata: row.metadata_map(),
            env: row.env_map(),
            auto_pause: row.auto_pause != 0,
            auto_resume: row.auto_resume != 0,
            timeout_secs: row.timeout_secs.max(0) as u64,
            created_at: time(row.created_at),
            expires_at: row.expires_at.map(time),
            stopped_at: row.stopped_at.map(time),
            stop_reason: row.stop_reason.clone(),
            domain: None,
            access_token: row.access_token.clone(),
            public_ports: row.public_port_list(),
        }
    }
}

/// A file as the sandbox library reports it, in the API's shape.
pub fn file_info(info: warren_host::session::FileInfo) -> FileInfo {
    let ms = info
        .modified
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    FileInfo {
        path: info.path,
        name: info.name,
        kind: match info.file_type {
            warren_host::session::FileType::File => FileKind::File,
            warren_host::session::FileType::Dir => FileKind::Dir,
            warren_host::session::FileType::Symlink => FileKind::Symlink,
            warren_host::session::FileType::Other => FileKind::Other,
        },
        size: info.size,
        mode: info.mode,
        owner: info.owner,
        group: info.group,
        modified_at: time(ms),
        symlink_target: info.symlink_target,
    }
}

impl From<&TemplateRow> for Template {
    fn from(row: &TemplateRow) -> Self {
        Self {
            id: row.id.clone(),
            name: row.name.clone(),
            kind: row.kind.clone(),
            description: row.description.clone(),
            cpus: row.cpus.map(as_u32),
            memory_mib: row.memory_mib.map(as_u32),
            created_at: time(row.created_at),
        }
    }
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
