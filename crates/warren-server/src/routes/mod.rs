//! HTTP routes: the REST API under `/v1`, health, metrics, the OpenAPI
//! document, Swagger UI and the web console.

mod admin;
mod files;
mod network;
mod ports;
mod process;
mod sandboxes;

pub(crate) use network::host_policy;
pub(crate) use ports::public_port_set;

use std::time::Instant;

use axum::extract::{FromRequest, FromRequestParts, MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;

/// JSON body extractor whose rejections are [`ApiError`]s (JSON bodies
/// with a clear message instead of axum's plain text).
#[derive(Debug, FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

/// Query extractor with [`ApiError`] rejections.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

/// Path extractor with [`ApiError`] rejections.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

#[derive(OpenApi)]
#[openapi(
    info(
        title = "warren API",
        description = "Sandboxes for AI agents: real Linux microVMs that boot fast, run commands, move files, and go away cleanly. Every endpoint but /health needs an API key (`Authorization: Bearer <key>` or `X-API-Key`).",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    modifiers(&SecurityAddon),
    security(("bearer" = []), ("api_key" = [])),
    components(schemas(ErrorBody)),
    tags(
        (name = "sandboxes", description = "Create, inspect and delete sandboxes"),
        (name = "processes", description = "Run commands and terminals"),
        (name = "files", description = "Files inside sandboxes"),
        (name = "templates", description = "What sandboxes are created from"),
        (name = "snapshots", description = "Snapshot templates: a paused sandbox frozen so clones can start from it"),
        (name = "keys", description = "API keys"),
        (name = "events", description = "Lifecycle events"),
        (name = "service", description = "Health and metrics"),
    )
)]
struct ApiDoc;

struct SecurityAddon;

impl Modify for SecurityAddon {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("wrn_...")
                    .build(),
            ),
        );
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-Key"))),
        );
    }
}

/// The OpenAPI document (also used by tests and the CLI's `openapi` dump).
pub fn openapi() -> utoipa::openapi::OpenApi {
    api_router().split_for_parts().1
}

/// The OpenAPI document as JSON, as `/openapi.json` serves it but without
/// this host's limits (which [`router`] writes in at serve time). This is
/// what `web/openapi.json` holds (checked by the `openapi` test), from
/// which the web console's TypeScript types are generated.
pub fn openapi_document() -> serde_json::Value {
    document_of(&openapi())
}

fn document_of(openapi: &utoipa::openapi::OpenApi) -> serde_json::Value {
    serde_json::to_value(openapi).expect("OpenAPI serializes")
}

fn api_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(
            sandboxes::list_sandboxes,
            sandboxes::create_sandbox
        ))
        .routes(routes!(sandboxes::get_sandbox, sandboxes::delete_sandbox))
        .routes(routes!(sandboxes::set_timeout))
        .routes(routes!(sandboxes::pause_sandbox))
        .routes(routes!(sandboxes::create_snapshot))
        .routes(routes!(sandboxes::list_snapshots))
        .routes(routes!(sandboxes::get_snapshot, sandboxes::delete_snapshot))
        .routes(routes!(sandboxes::resume_sandbox))
        .routes(routes!(sandboxes::sandbox_logs))
        .routes(routes!(sandboxes::sandbox_events))
        .routes(routes!(network::get_network, network::set_network))
        .routes(routes!(ports::set_public_ports))
        .routes(routes!(ports::listening_ports))
        .routes(routes!(ports::tunnel))
        .routes(routes!(process::exec))
        .routes(routes!(process::exec_ws))
        .routes(routes!(process::list_processes, process::start_process))
        .routes(routes!(process::process_stdin))
        .routes(routes!(process::process_signal))
        .routes(routes!(process::attach_ws))
        .routes(routes!(process::pty_ws))
        .merge(
            // Uploads stream without a size cap (the guest's disk is the
            // limit); everything else keeps axum's default body limit.
            OpenApiRouter::new()
                .routes(routes!(
                    files::download,
                    files::upload_multipart,
                    files::upload_raw,
                    files::remove
                ))
                .layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .routes(routes!(files::list))
        .routes(routes!(files::stat))
        .routes(routes!(files::make_dir))
        .routes(routes!(files::rename))
        .routes(routes!(admin::list_templates))
        .routes(routes!(admin::get_template))
        .routes(routes!(admin::list_keys, admin::create_key))
        .routes(routes!(admin::revoke_key))
        .routes(routes!(admin::list_events))
        .routes(routes!(admin::health))
        .routes(routes!(admin::reconcile))
        .routes(routes!(admin::metrics))
}

/// The whole HTTP application.
pub fn router(state: AppState) -> Router {
    let (api, openapi) = api_router().split_for_parts();
    let mut document = document_of(&openapi);
    describe_host_limits(&mut document, &state);
    let openapi_json = document.to_string();
    // `/v1/health` is the same liveness answer under the API's prefix, for
    // clients that put every call under `/v1` (documented beside `/health`).
    // The port proxy takes every method and any path below the port, so it
    // is not in the OpenAPI document (docs/api.md describes it).
    let ports = axum::routing::any(ports::port_request);
    api.route("/v1/health", get(admin::health))
        .route("/v1/sandboxes/{id}/ports/{port}", ports.clone())
        .route("/v1/sandboxes/{id}/ports/{port}/", ports.clone())
        .route("/v1/sandboxes/{id}/ports/{port}/{*rest}", ports)
        .route(
            "/openapi.json",
            get(move || async move {
                (
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    openapi_json,
                )
            }),
        )
        .fallback(crate::console::serve)
        .layer(axum::middleware::from_fn_with_state(state.clone(), track))
        // Outermost: a request to `{port}-{id}.<domain>` is a sandbox's,
        // whatever its path.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            ports::host_form,
        ))
        .with_state(state)
}

/// Writes this host's limits (CPUs, memory) into the document, so clients
/// and tools see the real bounds of a create request.
fn describe_host_limits(document: &mut serde_json::Value, state: &AppState) {
    let host = state.host.capacity();
    let properties = &mut document["components"]["schemas"]["CreateSandbox"]["properties"];
    if properties.is_object() {
        properties["cpus"]["maximum"] = serde_json::json!(host.cpus);
        properties["memory_mib"]["maximum"] = serde_json::json!(host.memory_total_mib);
    }
}

/// Counts and times every request.
async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "other".into());
    let method = request.method().to_string();
    let start = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    state
        .metrics
        .requests
        .with_label_values(&[&route, &method, &status])
        .inc();
    state
        .metrics
        .request_seconds
        .with_label_values(&[&route])
        .observe(start.elapsed().as_secs_f64());
    response
}

/// Unknown API paths get a JSON 404 (the console serves the rest).
pub fn api_not_found(path: &str) -> Response {
    ApiError::not_found(format!("no API endpoint at {path}"))
        .hint("see /openapi.json or /docs")
        .into_response()
}

/// `204 No Content`.
pub fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

/// JSON with a status.
pub fn json_status<T: serde::Serialize>(status: StatusCode, value: T) -> Response {
    (status, Json(value)).into_response()
}
