//! Who is calling: API key authentication.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use crate::error::ApiError;
use crate::ids::hash_api_key;
use crate::state::AppState;

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Key id (the actor of events).
    pub key_id: String,
    /// Team id.
    pub team_id: String,
    /// Team name.
    pub team_name: String,
    /// Whether the key belongs to the admin team.
    pub is_admin: bool,
}

impl Caller {
    /// Whoever opens a port of a sandbox of `team_id` with its access token
    /// or because the port is public: acts on that sandbox's ports only
    /// (the port routes are the only ones that make such a caller).
    pub fn port_visitor(team_id: &str) -> Self {
        Caller {
            key_id: "access_token".into(),
            team_id: team_id.to_owned(),
            team_name: String::new(),
            is_admin: false,
        }
    }
}

/// Whether the request presents an API key at all (then it must be valid).
pub fn presents_key(parts: &Parts) -> bool {
    presented_key(parts).is_some()
}

/// Finds the key in `Authorization: Bearer`, `X-API-Key`, or the
/// `api_key` query parameter (for WebSockets, where browsers cannot set
/// headers).
fn presented_key(parts: &Parts) -> Option<String> {
    if let Some(value) = parts.headers.get(axum::http::header::AUTHORIZATION)
        && let Ok(value) = value.to_str()
        && let Some(token) = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
    {
        return Some(token.trim().to_string());
    }
    if let Some(value) = parts.headers.get("x-api-key")
        && let Ok(value) = value.to_str()
    {
        return Some(value.trim().to_string());
    }
    crate::port_host::query_param(parts.uri.query()?, crate::port_host::API_KEY_PARAM)
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let key =
            presented_key(parts).ok_or_else(|| ApiError::unauthorized("no API key was sent"))?;
        if key.is_empty() || key.len() > 256 {
            return Err(ApiError::unauthorized("the API key is not valid"));
        }
        let row = state
            .db
            .key_by_hash(&hash_api_key(&key))
            .await?
            .ok_or_else(|| {
                ApiError::new(
                    axum::http::StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "the API key is not valid (unknown or revoked)",
                )
                .hint("check the key; an admin can create a new one with POST /v1/keys (the admin key is in $WARREN_HOME/admin.key)")
            })?;
        state.note_key_use(&row.id).await;
        Ok(Caller {
            key_id: row.id,
            team_id: row.team_id,
            team_name: row.team_name,
            is_admin: row.is_admin != 0,
        })
    }
}
