//! The messages of the process WebSockets (`/exec/ws`, `/processes/{pid}/attach`):
//! JSON text frames tagged by `type`, one definition for the service that
//! sends and reads them and the client that reads and sends them.
//!
//! Byte payloads (`data`) are base64. docs/api.md describes the exchange:
//! the client's first message on `exec/ws` is `start`; the service answers
//! `started`, then `stdout`/`stderr` as the process writes, and `exit` or
//! `error` last.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Terminal size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PtySize {
    /// Columns.
    pub cols: u16,
    /// Rows.
    pub rows: u16,
}

impl Default for PtySize {
    /// The size a terminal has when nothing says otherwise.
    fn default() -> Self {
        Self { cols: 80, rows: 24 }
    }
}

/// A command to run with streamed input and output over the `exec/ws`
/// WebSocket (its `start` message).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StreamExec {
    /// Shell command line (or give `argv`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<String>,
    /// Program and arguments (or give `cmd`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argv: Option<Vec<String>>,
    /// Extra environment variables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, String>>,
    /// Working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// User to run as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Kill after this many seconds (0 = none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    /// Give the process a stdin pipe (the service's default is yes);
    /// `Some(false)` connects stdin to nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<bool>,
    /// Run under a terminal of this size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pty: Option<PtySize>,
}

crate::command_constructors!(StreamExec);

/// What a client sends on a process WebSocket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ProcessClientMessage {
    /// The command (`exec/ws` only, and first).
    Start(StreamExec),
    /// Bytes for the process's stdin (base64).
    Stdin {
        /// The bytes, base64.
        data: String,
    },
    /// Closes the process's stdin (end of input).
    CloseStdin,
    /// Sends a signal to the process's group.
    Signal {
        /// The signal number.
        signal: i32,
    },
    /// Resizes the process's terminal.
    Resize {
        /// Columns.
        cols: u16,
        /// Rows.
        rows: u16,
    },
}

/// What the service sends on a process WebSocket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ProcessServerMessage {
    /// The process runs.
    Started {
        /// Its pid in the guest.
        pid: u32,
    },
    /// Bytes the process wrote to stdout (base64).
    Stdout {
        /// The bytes, base64.
        data: String,
    },
    /// Bytes the process wrote to stderr (base64).
    Stderr {
        /// The bytes, base64.
        data: String,
    },
    /// The process ended: the last message.
    Exit {
        /// Its exit code, if it exited.
        #[serde(default)]
        exit_code: Option<i32>,
        /// The signal that killed it, if one did.
        #[serde(default)]
        signal: Option<i32>,
        /// Whether its timeout killed it.
        #[serde(default)]
        timed_out: bool,
    },
    /// The exchange failed (the process could not start, a bad message):
    /// the last message, with the codes of REST error bodies.
    Error {
        /// Machine-readable class, as in REST error bodies.
        code: String,
        /// What went wrong, for people.
        message: String,
        /// What to do about it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hint: Option<String>,
    },
    /// A message type this client does not know (a newer service's),
    /// skipped.
    #[serde(other)]
    Unknown,
}
