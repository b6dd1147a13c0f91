//! Templates, API keys, events, health and metrics.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{ApiJson, ApiPath, ApiQuery, json_status, no_content};
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::ids::{hash_api_key, key_prefix, new_api_key, new_id};
use crate::model::{
    ApiKey, CreateKey, CreatedKey, Event, EventList, EventsQuery, Health, KeyList, ReconcileFix,
    ReconcileReport, Template, TemplateList,
};
use crate::state::AppState;

/// Templates the caller can create sandboxes from.
#[utoipa::path(
    get, path = "/v1/templates", tag = "templates",
    responses(
        (status = 200, description = "Templates", body = TemplateList),
        (status = 401, description = "No or bad API key", body = ErrorBody),
        (status = 500, description = "Server failure", body = ErrorBody),
    )
)]
pub async fn list_templates(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<TemplateList>> {
    let rows = state.db.templates(&caller.team_id).await?;
    Ok(Json(TemplateList {
        templates: rows.iter().map(Template::from).collect(),
    }))
}

/// One template.
#[utoipa::path(
    get, path = "/v1/templates/{id}", tag = "templates",
    params(("id" = String, Path, description = "Template id")),
    responses(
        (status = 200, description = "The template", body = Template),
        (status = 400, description = "Bad path", body = ErrorBody),
        (status = 401, description = "No or bad API key", body = ErrorBody),
        (status = 404, description = "No such template", body = ErrorBody),
        (status = 500, description = "Server failure", body = ErrorBody),
    )
)]
pub async fn get_template(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Template>> {
    let row = state
        .db
        .template(&caller.team_id, &id)
        .await?
        .ok_or_else(|| {
            ApiError::not_found(format!("template {id} does not exist"))
                .hint("list templates with GET /v1/templates")
        })?;
    Ok(Json(Template::from(&row)))
}

/// Keys of the caller's team.
#[utoipa::path(
    get, path = "/v1/keys", tag = "keys",
    responses(
        (status = 200, description = "Keys (without their secrets)", body = KeyList),
        (status = 401, description = "No or bad API key", body = ErrorBody),
        (status = 500, description = "Server failure", body = ErrorBody),
    )
)]
pub async fn list_keys(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<KeyList>> {
    let rows = state.db.keys(&caller.team_id).await?;
    Ok(Json(KeyList {
        keys: rows.iter().map(ApiKey::from).collect(),
    }))
}

/// Creates a key. Admin keys may create keys for other (new) teams.
#[utoipa::path(
    post, path = "/v1/keys", tag = "keys",
    request_body = CreateKey,
    responses(
        (status = 201, description = "The new key, shown this once", body = CreatedKey),
        (status = 400, description = "Malformed body", body = ErrorBody),
        (status = 401, description = "No or bad API key", body = ErrorBody),
        (status = 404, description = "Only admin keys can create keys for other teams", body = ErrorBody),
        (status = 422, description = "Invalid name", body = ErrorBody),
        (status = 500, description = "Server failure", body = ErrorBody),
    )
)]
pub async fn create_key(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(request): ApiJson<CreateKey>,
) -> ApiResult<Response> {
    let name = request.name.trim();
    if name.is_empty() || name.len() > 100 {
        return Err(ApiError::invalid(
            "a key needs a name of 1 to 100 characters",
        ));
    }
    let (team_id, team_name) = match request.team.as_deref().map(str::trim) {
        None => (caller.team_id.clone(), caller.team_name.clone()),
        Some(team) if team == caller.team_name => {
            (caller.team_id.clone(), caller.team_name.clone())
        }
        Some(team) => {
            if !caller.is_admin {
                // Other teams do not exist as far as this caller can tell.
                return Err(ApiError::not_found(format!("team {team} does not exist")));
            }
            if team.is_empty()
                || team.len() > 100
                || !team
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err(ApiError::invalid(
                    "team names are 1 to 100 letters, digits, '-', '_' or '.'",
                ));
            }
            match state.db.team_by_name(team).await? {
                Some(existing) => (existing.id, existing.name),
                None => {
                    let id = new_id("team");
                    state.db.insert_team(&id, team, false).await?;
                    (id, team.to_string())
                }
            }
        }
    };
    let key = new_api_key();
    let id = new_id("key");
    state
        .db
        .insert_key(&id, &team_id, name, &key_prefix(&key), &hash_api_key(&key))
        .await?;
    state
        .event(
            &team_id,
            None,
            "key.created",
            &caller.key_id,
            json!({"key_id": id, "name": name}),
        )
        .await;
    let row = state
        .db
        .key(&team_id, &id)
        .await?
        .ok_or_else(|| ApiError::internal("the new key vanished"))?;
    Ok(json_status(
        StatusCode::CREATED,
        CreatedKey {
            id,
            name: row.name,
            team: team_name,
            prefix: row.prefix,
            key,
            created_at: crate::model::time(row.created_at),
        },
    ))
}

/// Revokes a key of the caller's team; it stops working at once.
#[utoipa::path(
    delete, path = "/v1/keys/{id}", tag = "keys",
    params(("id" = String, Path, description = "Key id")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 400, description = "Bad path", body = ErrorBody),
        (status = 401, description = "No or bad API key", body = ErrorBody),
        (status = 404, description = "No such key (or already revoked)", body = ErrorBody),
        (status = 500, description = "Server failure", body = ErrorBody),
    )
)]
pub async fn revoke_key(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Response> {
    if !state.db.revoke_key(&caller.team_id, &id).await? {
        return Err(ApiError::not_found(format!(
            "key {id} does not exist or is already revoked"
        )));
    }
    state
        .event(
            &caller.team_id,
            None,
            "key.revoked",
            &caller.key_id,
            json!({"key_id": id}),
        )
        .await;
    Ok(no_content())
}

/// The caller's team's events, newest first.
#[utoipa::path(
    get, path = "/v1/events", tag = "events",
    params(EventsQuery),
    responses(
        (status = 200, description = "Events", body = EventList),
        (status = 400, description = "Bad query", body = ErrorBody),
        (status = 401, description = "No or bad API key", body = ErrorBody),
        (status = 422, description = "Limit out of range", body = ErrorBody),
        (status = 500, description = "Server failure", body = ErrorBody),
    )
)]
pub async fn list_events(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<EventsQuery>,
) -> ApiResult<Json<EventList>> {
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid(format!(
            "limit must be between 1 and 1000, not {limit}"
        )));
    }
    let limit = i64::from(limit);
    let rows = state
        .db
        .events(&caller.team_id, query.sandbox_id.as_deref(), limit)
        .await?;
    Ok(Json(EventList {
        events: rows.iter().map(Event::from).collect(),
    }))
}

/// Runs the reconciler now (it also runs periodically): ends orphaned VM
/// processes, removes orphaned directories and fixes records that disagree
/// with the host. Admin keys only.
#[utoipa::path(
    post, path = "/v1/admin/reconcile", tag = "service",
    responses(
        (status = 200, description = "What was fixed", body = ReconcileReport),
        (status = 401, description = "No or bad API key", body = ErrorBody),
        (status = 404, description = "Not an admin key", body = ErrorBody),
        (status = 500, description = "Server failure", body = ErrorBody),
    )
)]
pub async fn reconcile(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<ReconcileReport>> {
    if !caller.is_admin {
        return Err(ApiError::not_found("no such endpoint for this key")
            .hint("use the admin key (in $WARREN_HOME/admin.key)"));
    }
    let fixes = state.reconcile().await?;
    Ok(Json(ReconcileReport {
        fixes: fixes
            .into_iter()
            .map(|f| ReconcileFix {
                kind: f.kind,
                id: f.id,
                detail: f.detail,
            })
            .collect(),
    }))
}

/// Liveness; needs no key.
#[utoipa::path(
    get, path = "/health", tag = "service", security(()),
    responses((status = 200, description = "The service is up", body = Health))
)]
pub async fn health(State(state): State<AppState>) -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        accel: state.host.accel(),
        sandboxes_running: state.host.live_count() as u64,
    })
}

/// Prometheus metrics.
#[utoipa::path(
    get, path = "/metrics", tag = "service",
    responses(
        (status = 200, description = "Prometheus text exposition format", content_type = "text/plain", body = String),
        (status = 401, description = "No or bad API key", body = ErrorBody),
        (status = 500, description = "Server failure", body = ErrorBody),
    )
)]
pub async fn metrics(State(state): State<AppState>, _caller: Caller) -> Response {
    state.refresh_gauges().await;
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}
