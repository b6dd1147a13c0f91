//! A sandbox's network: its egress policy, read and changed while it runs
//! (its ports are in `ports`).

use axum::Json;
use axum::extract::State;
use warren_api::message::one_line;
use warren_host::session::{NetworkError, NetworkPolicy as HostPolicy, PolicyError};

use super::{ApiJson, ApiPath};
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::model::NetworkPolicy;
use crate::state::AppState;

/// The API's policy as the host takes it: every rule checked, 400 with the
/// entry and what is wrong.
pub fn host_policy(policy: &NetworkPolicy) -> ApiResult<HostPolicy> {
    HostPolicy::parse(policy.internet, &policy.allow_out, &policy.deny_out)
        .map_err(|e: PolicyError| ApiError::bad_request(format!("network.{}", one_line(&e))))
}

/// The host's policy as the API shows it (rules in their normal form).
pub fn api_policy(policy: &HostPolicy) -> NetworkPolicy {
    NetworkPolicy {
        internet: policy.internet,
        allow_out: policy.allow_out.iter().map(|r| r.to_string()).collect(),
        deny_out: policy.deny_out.iter().map(|r| r.to_string()).collect(),
    }
}

pub(super) fn network_error(id: &str, error: NetworkError) -> ApiError {
    match error {
        NetworkError::NoNetwork => ApiError::conflict(format!(
            "sandbox {id} has no network card (it was made from a template from before networks)"
        ))
        .hint("create a new sandbox to get a network"),
        other => ApiError::internal(one_line(&other)),
    }
}

/// The egress policy of a running sandbox.
#[utoipa::path(
    get, path = "/v1/sandboxes/{id}/network", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id")),
    responses(
        (status = 200, description = "Its policy", body = NetworkPolicy),
        (status = 400, description = "Bad path", body = ErrorBody),
        (status = 401, description = "No or bad API key", body = ErrorBody),
        (status = 404, description = "No such sandbox", body = ErrorBody),
        (status = 409, description = "Not running, or it has no network card", body = ErrorBody),
        (status = 500, description = "Server failure", body = ErrorBody),
    )
)]
pub async fn get_network(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<NetworkPolicy>> {
    let (_, live) = state.live_sandbox(&caller, &id).await?;
    let policy = live
        .network_policy()
        .ok_or_else(|| network_error(&id, NetworkError::NoNetwork))?;
    Ok(Json(api_policy(&policy)))
}

/// Replaces the egress policy of a running sandbox, in one step: new
/// connections follow it at once, open ones stay open.
#[utoipa::path(
    put, path = "/v1/sandboxes/{id}/network", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id")),
    request_body = NetworkPolicy,
    responses(
        (status = 200, description = "The policy now in force", body = NetworkPolicy),
        (status = 400, description = "Bad path, body or rule", body = ErrorBody),
        (status = 401, description = "No or bad API key", body = ErrorBody),
        (status = 404, description = "No such sandbox", body = ErrorBody),
        (status = 409, description = "Not running, or it has no network card", body = ErrorBody),
        (status = 422, description = "The body is not JSON of the documented shape", body = ErrorBody),
        (status = 500, description = "Server failure", body = ErrorBody),
    )
)]
pub async fn set_network(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<NetworkPolicy>,
) -> ApiResult<Json<NetworkPolicy>> {
    let policy = host_policy(&body)?;
    let (_, live) = state.live_sandbox(&caller, &id).await?;
    let applied = policy.clone();
    let id2 = id.clone();
    tokio::task::spawn_blocking(move || live.set_network_policy(applied))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| network_error(&id2, e))?;
    Ok(Json(api_policy(&policy)))
}
