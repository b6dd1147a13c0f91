//! Sandbox lifecycle endpoints.

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::{ApiJson, ApiPath, ApiQuery, json_status, no_content};
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::model::{
    CreateSandbox, CreateSnapshot, EventList, LogsQuery, PauseResult, Sandbox, SandboxList,
    SandboxState, SetTimeout, Snapshot, SnapshotList,
};
use crate::state::AppState;

/// Filters of a sandbox listing.
type ListFilters = (Option<String>, Vec<(String, String)>);

/// Parses `?state=...&metadata=key:value&...` (metadata repeats, which
/// serde's query decoding cannot express).
fn list_filters(query: Option<&str>) -> ApiResult<ListFilters> {
    let mut state = None;
    let mut metadata = Vec::new();
    for (name, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match name.as_ref() {
            "state" => match value.as_ref() {
                "running" | "paused" | "stopped" => state = Some(value.into_owned()),
                other => {
                    return Err(ApiError::bad_request(format!(
                        "unknown state {other:?}; use running, paused or stopped"
                    )));
                }
            },
            "metadata" => {
                let (key, value) = value.split_once(':').ok_or_else(|| {
                    ApiError::bad_request("metadata filters look like metadata=key:value")
                })?;
                metadata.push((key.to_string(), value.to_string()));
            }
            _ => {}
        }
    }
    Ok((state, metadata))
}

/// Lists the caller's sandboxes.
#[utoipa::path(
    get, path = "/v1/sandboxes", tag = "sandboxes",
    params(
        ("state" = Option<SandboxState>, Query, description = "Only sandboxes in this state"),
        ("metadata" = Option<Vec<String>>, Query, description = "Only sandboxes whose metadata has key:value; repeat for several", explode = true, style = Form),
    ),
    responses(
        (status = 200, description = "Sandboxes, newest first", body = SandboxList),
        (status = 400, description = "Bad filter", body = ErrorBody),
        (status = 401, description = "No or bad API key", body = ErrorBody),
        (status = 500, description = "Server failure", body = ErrorBody),
    )
)]
pub async fn list_sandboxes(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<SandboxList>> {
    let (filter_state, metadata) = list_filters(query.as_deref())?;
    let rows = state
        .db
        .sandboxes(&caller.team_id, filter_state.as_deref())
        .await?;
    let sandboxes = rows
        .iter()
        .map(|row| state.view(row))
        .filter(|s| metadata.iter().all(|(k, v)| s.metadata.get(k) == Some(v)))
        .collect();
    Ok(Json(SandboxList { sandboxes }))
}

/// Creates a sandbox; answers once its guest agent is ready.
#[utoipa::path(
    post, path = "/v1/sandboxes", tag = "sandboxes",
    request_body = CreateSandbox,
    responses(
        (status = 201, description = "Created and running", body = Sandbox),
        (status = 400, description = "Malformed body", body = ErrorBody),
        (status = 401, description = "No or bad API key", body = ErrorBody),
        (status = 422, description = "Refused request (unknown template, sizes out of range, auto_pause before snapshots exist)", body = ErrorBody),
        (status = 429, description = "Too many running sandboxes for the team", body = ErrorBody),
        (status = 500, description = "Server failure", body = ErrorBody),
        (status = 501, description = "Feature not available yet (snapshot templates)", body = ErrorBody),
        (status = 503, description = "Host out of memory", body = ErrorBody),
    )
)]
pub async fn create_sandbox(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(request): ApiJson<CreateSandbox>,
) -> ApiResult<Response> {
    let sandbox = state.create_sandbox(&caller, request).await?;
    Ok(json_status(StatusCode::CREATED, sandbox))
}

/// One sandbox.
#[utoipa::path(
    get, path = "/v1/sandboxes/{id}", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id")),
    responses(
        (status = 200, description = "The sandbox", body = Sandbox),
        (status = 400, description = "Bad path", body = ErrorBody),
        (status = 401, description = "No or bad API key", body = ErrorBody),
        (status = 404, description = "No such sandbox (for this team)", body = ErrorBody),
        (status = 500, description = "Server failure", body = ErrorBody),
    )
)]
pub async fn get_sandbox(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Sandbox>> {
    let row = state.sandbox_row(&caller, &id).await?;
    Ok(Json(state.view(&row)))
}

/// Kills a sandbox. The record stays, in state `stopped`.
#[utoipa::path(
    delete, path = "/v1/sandboxes/{id}", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id")),
    responses(
        (status = 204, description = "Killed (or already stopped)"),
        (status = 400, description = "Bad path", body = ErrorBody),
        (status = 401, description = "No or bad API key", body = ErrorBody),
        (status = 404, description = "No such sandbox", body = ErrorBody),
        (status = 500, description = "Server failure", body = ErrorBody),
    )
)]
pub async fn delete_sandbox(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Response> {
    state.kill_sandbox(&caller, &id).await?;
    Ok(no_content())
}

/// Sets the timeout, counted from now.
#[utoipa::path(
    post, path = "/v1/sandboxes/{id}/timeout", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id")),
    request_body = SetTimeout,
    responses(
        (status = 200, description = "Updated sandbox", body = Sandbox),
        (status = 400, description = "Malformed body", body = ErrorBody),
        (status = 401, description = "No or bad API key", body = ErrorBody),
        (status = 404, description = "No such sandbox", body = ErrorBody),
        (status = 409, description = "The sandbox is not running", body = ErrorBody),
        (status = 422, description = "Timeout out of range", body = ErrorBody),
        (status = 500, description = "Server failure", body = ErrorBody),
    )
)]
pub async fn set_timeout(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(request): ApiJson<SetTimeout>,
) -> ApiResult<Json<Sandbox>> {
    Ok(Json(
        state
            .set_timeout(&caller, &id, request.timeout_secs)
            .await?,
    ))
}

/// Pauses a sandbox to disk: its VM ends (no RAM, no CPU used while
/// paused); resume continues exactly where it was.
#[utoipa::path(
    post, path = "/v1/sandboxes/{id}/pause", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id")),
    responses(
        (status = 200, description = "Paused sandbox and what the pause wrote", body = PauseResult),
        (status = 400, description = "Bad path", body = ErrorBody),
        (status = 401, description = "No or bad API key", body = ErrorBody),
        (status = 404, description = "No such sandbox", body = ErrorBody),
        (status = 409, description = "The sandbox is not running", body = ErrorBody),
        (status = 500, description = "Server failure", body = ErrorBody),
        (status = 507, description = "The host's disk is full; the sandbox keeps running (or keeps its previous snapshot)", body = ErrorBody),
    )
)]
pub async fn pause_sandbox(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<PauseResult>> {
    Ok(Json(state.pause_sandbox(&caller, &id).await?))
}

/// Resumes a paused sandbox where it was paused (memory is loaded lazily,
/// the guest clock is set).
#[utoipa::path(
    post, path = "/v1/sandboxes/{id}/resume", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id")),
    responses(
        (status = 200, description = "Running sandbox", body = Sandbox),
        (status = 400, description = "Bad path", body = ErrorBody),
        (status = 401, description = "No or bad API key", body = ErrorBody),
        (status = 404, description = "No such sandbox", body = ErrorBody),
        (status = 409, description = "The sandbox is not paused", body = ErrorBody),
        (status = 500, description = "Server failure", body = ErrorBody),
        (status = 503, description = "Not enough host memory to resume", body = ErrorBody),
    )
)]
pub async fn resume_sandbox(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Sandbox>> {
    Ok(Json(state.resume_sandbox(&caller, &id).await?))
}

/// Turns a running or paused sandbox into a snapshot template (memory and
/// disk). Sandboxes created from it (`"template": name`) are clones.
#[utoipa::path(
    post, path = "/v1/sandboxes/{id}/snapshots", tag = "snapshots",
    params(("id" = String, Path, description = "Sandbox id")),
    request_body = CreateSnapshot,
    responses(
        (status = 201, description = "The snapshot template", body = Snapshot),
        (status = 400, description = "Malformed body", body = ErrorBody),
        (status = 401, description = "No or bad API key", body = ErrorBody),
        (status = 404, description = "No such sandbox", body = ErrorBody),
        (status = 409, description = "The sandbox is stopped, or the name is taken", body = ErrorBody),
        (status = 422, description = "Invalid name", body = ErrorBody),
        (status = 500, description = "Server failure", body = ErrorBody),
        (status = 507, description = "The host's disk is full", body = ErrorBody),
    )
)]
pub async fn create_snapshot(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(request): ApiJson<CreateSnapshot>,
) -> ApiResult<Response> {
    let snapshot = state.snapshot_sandbox(&caller, &id, &request.name).await?;
    Ok((StatusCode::CREATED, Json(snapshot)).into_response())
}

/// The caller's snapshot templates.
#[utoipa::path(
    get, path = "/v1/snapshots", tag = "snapshots",
    responses(
        (status = 200, description = "Snapshot templates", body = SnapshotList),
        (status = 401, description = "No or bad API key", body = ErrorBody),
        (status = 500, description = "Server failure", body = ErrorBody),
    )
)]
pub async fn list_snapshots(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<SnapshotList>> {
    Ok(Json(SnapshotList {
        snapshots: state.list_snapshots(&caller).await?,
    }))
}

/// One snapshot template.
#[utoipa::path(
    get, path = "/v1/snapshots/{name}", tag = "snapshots",
    params(("name" = String, Path, description = "Snapshot name")),
    responses(
        (status = 200, description = "The snapshot template", body = Snapshot),
        (status = 400, description = "Bad path", body = ErrorBody),
        (status = 401, description = "No or bad API key", body = ErrorBody),
        (status = 404, description = "No such snapshot", body = ErrorBody),
        (status = 500, description = "Server failure", body = ErrorBody),
    )
)]
pub async fn get_snapshot(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<Snapshot>> {
    Ok(Json(state.get_snapshot(&caller, &name).await?))
}

/// Deletes a snapshot template; refused (409) while sandboxes created from
/// it exist.
#[utoipa::path(
    delete, path = "/v1/snapshots/{name}", tag = "snapshots",
    params(("name" = String, Path, description = "Snapshot name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Bad path", body = ErrorBody),
        (status = 401, description = "No or bad API key", body = ErrorBody),
        (status = 404, description = "No such snapshot", body = ErrorBody),
        (status = 409, description = "Sandboxes still use it", body = ErrorBody),
        (status = 500, description = "Server failure", body = ErrorBody),
    )
)]
pub async fn delete_snapshot(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Response> {
    state.delete_snapshot(&caller, &name).await?;
    Ok(no_content())
}

/// The guest's serial console.
#[utoipa::path(
    get, path = "/v1/sandboxes/{id}/logs", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id"), LogsQuery),
    responses(
        (status = 200, description = "Console output (the end of it)", content_type = "text/plain", body = String),
        (status = 400, description = "Bad query", body = ErrorBody),
        (status = 401, description = "No or bad API key", body = ErrorBody),
        (status = 404, description = "No such sandbox", body = ErrorBody),
        (status = 409, description = "The sandbox stopped and its log was not kept", body = ErrorBody),
        (status = 500, description = "Server failure", body = ErrorBody),
    )
)]
pub async fn sandbox_logs(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<LogsQuery>,
) -> ApiResult<Response> {
    let row = state.sandbox_row(&caller, &id).await?;
    let tail = query.tail_bytes.unwrap_or(65_536);
    if tail > 16 << 20 {
        return Err(ApiError::bad_request(
            "tail_bytes is limited to 16 MiB (16777216)",
        ));
    }
    // Live, paused (in its directory) or stopped (its end was kept when
    // it stopped).
    let text = state.host.console_log(&row.id, tail).ok_or_else(|| {
        ApiError::conflict(format!(
            "sandbox {id} is {} and its console log was not kept",
            row.state
        ))
    })?;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

/// A sandbox's lifecycle events.
#[utoipa::path(
    get, path = "/v1/sandboxes/{id}/events", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id")),
    responses(
        (status = 200, description = "Events, newest first", body = EventList),
        (status = 400, description = "Bad path", body = ErrorBody),
        (status = 401, description = "No or bad API key", body = ErrorBody),
        (status = 404, description = "No such sandbox", body = ErrorBody),
        (status = 500, description = "Server failure", body = ErrorBody),
    )
)]
pub async fn sandbox_events(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<EventList>> {
    let row = state.sandbox_row(&caller, &id).await?;
    let events = state
        .db
        .events(&caller.team_id, Some(&row.id), 1000)
        .await?;
    Ok(Json(EventList {
        events: events.iter().map(crate::model::Event::from).collect(),
    }))
}
