//! API errors: one JSON body shape, one status per class.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;
use warren_api::message::one_line;
use warren_host::session::{ExecError, FileError, GuestErrorKind, Unavailable};

/// The body of every error response.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Machine-readable class, e.g. `not_found`, `conflict`, `invalid`.
    pub code: String,
    /// What went wrong, for people.
    pub message: String,
    /// What to do about it, when there is something to do.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

/// An error answered to an API client.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// The body.
    pub body: ErrorBody,
}

impl ApiError {
    /// An error with a status, code and message.
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            body: ErrorBody {
                code: code.to_string(),
                message: message.into(),
                hint: None,
            },
        }
    }

    /// Adds a hint.
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.body.hint = Some(hint.into());
        self
    }

    /// 400.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 401.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
            .hint("send an API key as `Authorization: Bearer <key>` or `X-API-Key: <key>`")
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 404 for a sandbox id (also used for other teams' sandboxes).
    pub fn sandbox_not_found(id: &str) -> Self {
        Self::not_found(format!("sandbox {id} does not exist"))
            .hint("list your sandboxes with GET /v1/sandboxes")
    }

    /// 409.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// 422.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message)
    }

    /// 429.
    pub fn limit(message: impl Into<String>) -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS, "limit_exceeded", message)
    }

    /// 501.
    pub fn not_implemented(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_IMPLEMENTED, "not_implemented", message)
    }

    /// 503.
    pub fn capacity(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "capacity", message)
    }

    /// An internal failure (500). The message is logged; clients see it
    /// too, since warren is self-hosted and the operator is usually the
    /// caller.
    pub fn internal(message: impl Into<String>) -> Self {
        let message = message.into();
        tracing::error!(%message, "internal error");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body)).into_response()
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        ApiError::internal(format!("database error: {}", one_line(&error)))
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::MissingJsonContentType(_) => {
                ApiError::bad_request("expected a JSON body with `Content-Type: application/json`")
            }
            JsonRejection::JsonDataError(e) => {
                ApiError::invalid(format!("invalid request body: {}", e.body_text()))
            }
            other => ApiError::bad_request(format!("invalid JSON body: {}", other.body_text())),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::bad_request(format!("invalid query string: {}", rejection.body_text()))
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        ApiError::bad_request(format!("invalid path: {}", rejection.body_text()))
    }
}

impl From<Unavailable> for ApiError {
    fn from(error: Unavailable) -> Self {
        let hint = match &error {
            Unavailable::Paused { .. } | Unavailable::Pausing { .. } => {
                "the sandbox is paused (or being paused): resume it, then retry"
            }
            Unavailable::VmExited { .. } => {
                "get the sandbox again in a moment: it is paused at its last snapshot if it had one, else stopped"
            }
            Unavailable::Destroyed { .. } | Unavailable::Channel { .. } => {
                "the sandbox is no longer running; create a new one"
            }
        };
        ApiError::conflict(one_line(&error)).hint(hint)
    }
}

impl From<ExecError> for ApiError {
    fn from(error: ExecError) -> Self {
        match error {
            ExecError::CommandNotFound(message) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "command_not_found",
                message,
            ),
            ExecError::InvalidCommand(message) => ApiError::invalid(message),
            ExecError::Guest(guest) => guest_error(guest.kind, guest.message),
            ExecError::Unavailable(unavailable) => unavailable.into(),
        }
    }
}

impl From<FileError> for ApiError {
    fn from(error: FileError) -> Self {
        match error {
            FileError::Path(path) => ApiError::invalid(one_line(&path)),
            FileError::Guest(guest) => guest_error(guest.kind, guest.message),
            FileError::Local { source, .. } => {
                ApiError::bad_request(format!("reading the upload failed: {}", one_line(&source)))
            }
            FileError::Protocol(message) => ApiError::internal(message),
            FileError::Unavailable(unavailable) => unavailable.into(),
        }
    }
}

fn guest_error(kind: GuestErrorKind, message: String) -> ApiError {
    match kind {
        GuestErrorKind::NotFound => ApiError::not_found(message),
        GuestErrorKind::InvalidArgument => ApiError::invalid(message),
        GuestErrorKind::PermissionDenied => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "permission_denied",
            message,
        ),
        GuestErrorKind::AlreadyExists => ApiError::conflict(message),
        GuestErrorKind::FailedPrecondition => ApiError::conflict(message),
        GuestErrorKind::ResourceExhausted => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "disk_full", message)
                .hint("free space in the sandbox (delete files) and retry")
        }
        GuestErrorKind::Internal => ApiError::internal(message),
    }
}

/// Result of a handler.
pub type ApiResult<T> = Result<T, ApiError>;
