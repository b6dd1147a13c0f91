//! Errors of the client: what the service answered, or why it could not be
//! asked. Every message says what to do next, as the service's do.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The error body the service sends with every non-2xx status (see
/// `docs/api.md`), plus the status itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// HTTP status (for errors sent inside a WebSocket, the status the same
    /// error has over plain HTTP; see [`status_of_code`]).
    #[serde(default)]
    pub status: u16,
    /// Machine-readable class: `not_found`, `conflict`, `invalid`,
    /// `command_not_found`, `unauthorized`, ...
    pub code: String,
    /// What went wrong, for people.
    pub message: String,
    /// What to do about it, when the service knows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, " ({hint})")?;
        }
        Ok(())
    }
}

impl std::error::Error for ApiError {}

/// The HTTP status that goes with an error code. WebSocket error messages
/// carry only the code; this lets callers treat them like HTTP errors.
pub fn status_of_code(code: &str) -> u16 {
    match code {
        "bad_request" => 400,
        "unauthorized" => 401,
        "not_found" => 404,
        "conflict" => 409,
        "payload_too_large" => 413,
        "invalid" | "command_not_found" | "permission_denied" | "disk_full" => 422,
        "upgrade_required" => 426,
        "limit_exceeded" => 429,
        "not_implemented" => 501,
        "capacity" => 503,
        _ => 500,
    }
}

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The service answered with an error.
    #[error("{0}")]
    Api(ApiError),
    /// The service could not be reached at all (not running, wrong URL,
    /// firewall).
    #[error(
        "cannot reach the warren service at {url}; is `warren up` running there? (set WARREN_URL to point elsewhere)"
    )]
    Unreachable {
        /// The URL that was tried.
        url: String,
        /// What the connection attempt reported.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The connection broke or the request could not be sent or read.
    #[error("request {method} {url} failed")]
    Http {
        /// HTTP method.
        method: String,
        /// The URL.
        url: String,
        /// What failed.
        #[source]
        source: reqwest::Error,
    },
    /// A download ended before the size the service announced.
    #[error("the download of {path} from {url} ended after {done} of {size} bytes; retry it")]
    ShortDownload {
        /// The file in the sandbox.
        path: String,
        /// The URL.
        url: String,
        /// Bytes received.
        done: u64,
        /// Bytes announced.
        size: u64,
    },
    /// The WebSocket failed (handshake refused without an API error body,
    /// or the connection broke).
    #[error("WebSocket {url} failed")]
    WebSocket {
        /// The URL.
        url: String,
        /// What failed.
        #[source]
        source: Box<tokio_tungstenite::tungstenite::Error>,
    },
    /// The WebSocket closed before the session it carried ended.
    #[error(
        "WebSocket {url} failed: the connection closed before {what} (the sandbox may have stopped)"
    )]
    ClosedEarly {
        /// The URL.
        url: String,
        /// What had not happened yet ("the process exited", ...).
        what: &'static str,
    },
    /// The service sent something this client does not understand (a
    /// newer or older service, or a proxy in between).
    #[error(
        "unexpected answer from {url}: {message}; is WARREN_URL the warren service, and are client and service the same version?"
    )]
    Protocol {
        /// Where it came from.
        url: String,
        /// What was wrong with it.
        message: String,
    },
    /// Nothing says where the service is or which key to use.
    #[error("{0}")]
    NotConfigured(String),
    /// A configuration file exists but cannot be used.
    #[error("configuration file {path} cannot be used; fix or remove it")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: ConfigError,
    },
    /// The HTTP client could not be built (TLS roots, resolver).
    #[error("cannot build an HTTP client for {url}")]
    HttpClient {
        /// The service URL.
        url: String,
        /// What failed.
        #[source]
        source: reqwest::Error,
    },
    /// The URL given for the service is not usable.
    #[error("invalid service URL {url:?}: {reason}")]
    InvalidUrl {
        /// What was given.
        url: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// Reading or writing local data (a file being uploaded or the target
    /// of a download) failed.
    #[error("{what} failed")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
}

impl Error {
    /// The API error body, if the service answered with one.
    pub fn api(&self) -> Option<&ApiError> {
        match self {
            Error::Api(api) => Some(api),
            _ => None,
        }
    }

    /// The HTTP status of an API error.
    pub fn status(&self) -> Option<u16> {
        self.api().map(|api| api.status)
    }

    /// The error code of an API error (`not_found`, `conflict`, ...).
    pub fn code(&self) -> Option<&str> {
        self.api().map(|api| api.code.as_str())
    }

    /// The message without the hint (for callers that print the hint on
    /// its own line).
    pub fn message(&self) -> String {
        match self {
            Error::Api(api) => api.message.clone(),
            other => warren_api::message::one_line(other),
        }
    }

    /// What to do about it, when the service or the client knows.
    pub fn hint(&self) -> Option<&str> {
        self.api().and_then(|api| api.hint.as_deref())
    }

    /// Whether the service could not be reached or found at all.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Error::Unreachable { .. } | Error::NotConfigured(_))
    }
}

/// Builds an [`ApiError`] from a non-2xx response body. Bodies that are not
/// warren's JSON (a proxy's HTML page, plain text) still give a useful
/// message.
pub(crate) fn api_error_from_body(status: u16, body: &[u8]) -> ApiError {
    #[derive(Deserialize)]
    struct Body {
        code: String,
        message: String,
        #[serde(default)]
        hint: Option<String>,
    }
    match serde_json::from_slice::<Body>(body) {
        Ok(parsed) => ApiError {
            status,
            code: parsed.code,
            message: parsed.message,
            hint: parsed.hint,
        },
        Err(_) => {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            let snippet: String = text.chars().take(200).collect();
            ApiError {
                status,
                code: generic_code(status).to_string(),
                message: if snippet.is_empty() {
                    format!("the service answered HTTP {status}")
                } else {
                    format!("the service answered HTTP {status}: {snippet}")
                },
                hint: None,
            }
        }
    }
}

fn generic_code(status: u16) -> &'static str {
    match status {
        400 => "bad_request",
        401 => "unauthorized",
        404 => "not_found",
        409 => "conflict",
        413 => "payload_too_large",
        422 => "invalid",
        429 => "limit_exceeded",
        501 => "not_implemented",
        503 => "capacity",
        507 => "disk_full",
        _ => "internal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_api_error_body() {
        let body = br#"{"code":"not_found","message":"sandbox sb-x does not exist","hint":"list sandboxes"}"#;
        let error = api_error_from_body(404, body);
        assert_eq!(error.status, 404);
        assert_eq!(error.code, "not_found");
        assert_eq!(error.hint.as_deref(), Some("list sandboxes"));
        assert_eq!(
            error.to_string(),
            "sandbox sb-x does not exist (list sandboxes)"
        );
        let without_hint = api_error_from_body(409, br#"{"code":"conflict","message":"m"}"#);
        assert_eq!(without_hint.hint, None);
    }

    #[test]
    fn foreign_bodies_still_make_an_error() {
        let error = api_error_from_body(502, b"<html>Bad Gateway</html>");
        assert_eq!(error.code, "internal");
        assert!(error.message.contains("502"), "{}", error.message);
        assert!(error.message.contains("Bad Gateway"));
        let empty = api_error_from_body(401, b"");
        assert_eq!(empty.code, "unauthorized");
    }

    #[test]
    fn websocket_codes_map_to_statuses() {
        assert_eq!(status_of_code("command_not_found"), 422);
        assert_eq!(status_of_code("not_found"), 404);
        assert_eq!(status_of_code("conflict"), 409);
        assert_eq!(status_of_code("something_new"), 500);
    }
}

/// What is wrong with a client configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// It could not be read.
    #[error("cannot read it")]
    Read(#[source] std::io::Error),
    /// It is not valid TOML.
    #[error("it is not valid TOML")]
    Syntax(#[source] toml::de::Error),
    /// A setting is a table; settings are top-level `key = "value"` lines.
    #[error("[{key}] is a table; put `url` and `api_key` at the top level")]
    Table {
        /// The table's name.
        key: String,
    },
    /// A service file (`service.json`) is not what `warren up` writes.
    #[error("it is not the JSON `warren up` writes; remove it and restart `warren up`")]
    ServiceFile(#[source] serde_json::Error),
    /// A setting is not a string.
    #[error("{key} must be a quoted string, e.g. url = \"http://127.0.0.1:7700\"")]
    NotAString {
        /// The setting.
        key: String,
    },
}
