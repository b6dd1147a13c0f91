//! Rust client (SDK) of the warren REST API.
//!
//! warren runs AI-agent sandboxes as real Linux microVMs behind a REST API
//! (`warren up`, see `docs/api.md`). This crate is the typed way to use
//! that API from Rust; the `warren` command line is built on it.
//!
//! ```no_run
//! # async fn demo() -> Result<(), warren_client::Error> {
//! use warren_client::{Client, CreateSandbox, ExecRequest};
//!
//! // WARREN_URL / WARREN_API_KEY, else ~/.config/warren/config.toml, else
//! // the local `warren up` (its service.json and admin.key).
//! let client = Client::discover()?;
//! let sandbox = client.create_sandbox(&CreateSandbox::default()).await?;
//! let result = client.exec(&sandbox.id, &ExecRequest::shell("uname -a")).await?;
//! print!("{}", result.stdout);
//! client.delete_sandbox(&sandbox.id).await?;
//! # Ok(()) }
//! ```
//!
//! Streaming exec, terminals and background-process attach use the
//! service's WebSockets ([`ExecSession`], [`PtySession`]); file transfers
//! stream in both directions with bounded memory ([`Client::upload`],
//! [`Client::download`]).

#![warn(missing_docs)]

mod client;
pub mod discover;
mod error;
mod types;
mod ws;

pub use client::{Client, Download, PtyOptions, is_retryable};
pub use discover::{Discovery, Endpoint, Origin};
pub use error::{ApiError, ConfigError, Error, status_of_code};
pub use types::*;
pub use ws::{
    ExecEvent, ExecInput, ExecOutput, ExecSession, PtyEvent, PtyInput, PtySession, Tunnel,
};

/// Result of a client call.
pub type Result<T, E = Error> = std::result::Result<T, E>;
