//! A sandbox's ports, reached from outside through warren's own listener:
//! the path form (`/v1/sandboxes/{id}/ports/{port}/{path}`), the host form
//! (`{port}-{id}.<domain>`, for apps that must sit at `/`), the raw TCP
//! tunnel behind `warren port-forward`, and which ports are public.
//!
//! Who may open a port: anyone for a public port; otherwise a key of the
//! sandbox's team, or the sandbox's access token (a capability for its
//! ports only, so it can live in a browser cookie where a key must not).
//! warren's credentials never reach the app (`port_proxy` removes them).

use axum::Json;
use axum::body::Body;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warren_api::message::one_line;
use warren_host::session::{NetworkError, Sandbox as LiveSandbox};

use super::{ApiJson, ApiPath};
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::ids::token_matches;
use crate::model::{ListeningPort, ListeningPortList, MAX_PUBLIC_PORTS, PublicPorts, Sandbox};
use crate::port_host::{ACCESS_TOKEN_PARAM, cookie, query_param, query_without_credentials};
use crate::port_proxy::ACCESS_TOKEN_HEADER;
use crate::state::AppState;

/// A set of public ports as stored: each 1 to 65535, at most
/// [`MAX_PUBLIC_PORTS`], sorted, no repeats.
pub fn public_port_set(ports: &[u16]) -> ApiResult<Vec<u16>> {
    if ports.contains(&0) {
        return Err(ApiError::bad_request(
            "public_ports: 0 is not a port (use 1 to 65535)",
        ));
    }
    let mut set = ports.to_vec();
    set.sort_unstable();
    set.dedup();
    if set.len() > MAX_PUBLIC_PORTS {
        return Err(ApiError::bad_request(format!(
            "public_ports: {} ports, at most {MAX_PUBLIC_PORTS} may be public",
            set.len()
        )));
    }
    Ok(set)
}

/// Replaces the ports anyone may open, with no key or token.
#[utoipa::path(
    put, path = "/v1/sandboxes/{id}/public-ports", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id")),
    request_body = PublicPorts,
    responses(
        (status = 200, description = "The sandbox with its new public ports", body = Sandbox),
        (status = 400, description = "Bad path, body or port", body = ErrorBody),
        (status = 401, description = "No or bad API key", body = ErrorBody),
        (status = 404, description = "No such sandbox", body = ErrorBody),
        (status = 409, description = "The sandbox is stopped", body = ErrorBody),
        (status = 422, description = "The body is not JSON of the documented shape", body = ErrorBody),
        (status = 500, description = "Server failure", body = ErrorBody),
    )
)]
pub async fn set_public_ports(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<PublicPorts>,
) -> ApiResult<Json<Sandbox>> {
    let ports = public_port_set(&body.ports)?;
    let (row, _guard) = state.locked_row(&caller, &id).await?;
    if row.state == "stopped" {
        return Err(
            ApiError::conflict(format!("sandbox {id} is stopped")).hint("create a new sandbox")
        );
    }
    state
        .db
        .set_public_ports(&caller.team_id, &id, &ports)
        .await?;
    state
        .event(
            &caller.team_id,
            Some(&id),
            "sandbox.public_ports",
            &caller.key_id,
            serde_json::json!({ "ports": ports }),
        )
        .await;
    let row = state.sandbox_row(&caller, &id).await?;
    Ok(Json(state.view(&row)))
}

/// The TCP ports something in a running sandbox listens on, read from its
/// kernel's socket tables, so a client can offer links to them.
#[utoipa::path(
    get, path = "/v1/sandboxes/{id}/ports", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id")),
    responses(
        (status = 200, description = "Its listening ports", body = ListeningPortList),
        (status = 400, description = "Bad path", body = ErrorBody),
        (status = 401, description = "No or bad API key", body = ErrorBody),
        (status = 404, description = "No such sandbox", body = ErrorBody),
        (status = 409, description = "Not running", body = ErrorBody),
        (status = 500, description = "Server failure", body = ErrorBody),
    )
)]
pub async fn listening_ports(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<ListeningPortList>> {
    let (row, live) = state.live_sandbox(&caller, &id).await?;
    let public = row.public_port_list();
    let ports = live
        .listening_ports()
        .await?
        .into_iter()
        .map(|p| ListeningPort {
            port: p.port,
            loopback_only: p.loopback_only,
            public: public.contains(&p.port),
        })
        .collect();
    Ok(Json(ListeningPortList { ports }))
}

/// The access token a request presents: the header, the query parameter,
/// or (host form only, where the cookie belongs to the port's own host)
/// the cookie.
fn presented_token(parts: &Parts, host_form: bool) -> Option<String> {
    if let Some(value) = parts.headers.get(ACCESS_TOKEN_HEADER)
        && let Ok(value) = value.to_str()
    {
        return Some(value.trim().to_owned());
    }
    if let Some(token) = parts
        .uri
        .query()
        .and_then(|q| query_param(q, ACCESS_TOKEN_PARAM))
    {
        return Some(token);
    }
    if !host_form {
        return None;
    }
    parts
        .headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| cookie(v, ACCESS_TOKEN_PARAM))
}

/// What opened a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// The port is public.
    Public,
    /// An API key.
    Key,
    /// The sandbox's access token, checked against its record.
    Token,
}

/// Who opens port `port` of sandbox `id`: anyone for a public port, else
/// the caller's key (its team must own the sandbox, checked when the
/// sandbox is looked up), else the sandbox's access token. Without a
/// key, an unknown sandbox and a closed port get the same answer, so the
/// port proxy tells a stranger nothing about which ids exist.
async fn port_caller(
    state: &AppState,
    parts: &mut Parts,
    id: &str,
    port: u16,
    host_form: bool,
) -> ApiResult<(Caller, Access)> {
    let row = if warren_host::is_valid_sandbox_id(id) {
        state.db.sandbox_by_id(id).await?
    } else {
        None
    };
    if let Some(row) = &row
        && row.public_port_list().contains(&port)
    {
        return Ok((Caller::port_visitor(&row.team_id), Access::Public));
    }
    if crate::auth::presents_key(parts) {
        let caller = Caller::from_request_parts(parts, state).await?;
        return Ok((caller, Access::Key));
    }
    let closed = || {
        ApiError::unauthorized(format!("port {port} of sandbox {id} is not public"))
            .hint("send an API key, or the sandbox's access_token as the X-Warren-Access-Token header or once as ?warren_token= (a browser keeps it in a cookie)")
    };
    let Some(token) = presented_token(parts, host_form) else {
        return Err(closed());
    };
    match row {
        Some(row)
            if row
                .access_token
                .as_deref()
                .is_some_and(|stored| token_matches(&token, stored)) =>
        {
            Ok((Caller::port_visitor(&row.team_id), Access::Token))
        }
        _ => Err(ApiError::unauthorized(format!(
            "the access token is not the one of sandbox {id}"
        ))
        .hint("read the sandbox's access_token with GET /v1/sandboxes/{id} (a key of its team)")),
    }
}

/// The running sandbox behind a port request, and a TCP connection to its
/// port (502 with what to do when nothing listens).
async fn open_port(
    state: &AppState,
    caller: &Caller,
    id: &str,
    port: u16,
) -> ApiResult<(std::sync::Arc<LiveSandbox>, tokio::net::TcpStream)> {
    let (_, live) = state.live_sandbox(caller, id).await?;
    let stream = live.connect_port(port).await.map_err(|e| match e {
        NetworkError::NoNetwork => super::network::network_error(id, e),
        other => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "port_unreachable",
            format!("nothing answers on port {port} of sandbox {id}: {}", one_line(&other)),
        )
        .hint("start a server in the sandbox that listens on 0.0.0.0 (not only 127.0.0.1) and that port"),
    })?;
    Ok((live, stream))
}

/// Forwards `request` to port `port` of sandbox `id` with target `target`.
async fn forward_to_port(
    state: &AppState,
    caller: &Caller,
    id: &str,
    port: u16,
    request: Request,
    target: &str,
    host: &str,
) -> ApiResult<Response<Body>> {
    let (_live, stream) = open_port(state, caller, id, port).await?;
    crate::port_proxy::forward(request, target, host, stream)
        .await
        .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, "port_unreachable", one_line(&e)))
}

/// The request target the app sees: `path` and the query without warren's
/// credentials.
fn app_target(path: &str, query: Option<&str>) -> String {
    match query.and_then(query_without_credentials) {
        Some(query) => format!("{path}?{query}"),
        None => path.to_owned(),
    }
}

fn port_number(text: Option<&str>) -> ApiResult<u16> {
    text.and_then(|p| p.parse().ok())
        .filter(|p| *p > 0)
        .ok_or_else(|| ApiError::bad_request("the port must be a number from 1 to 65535"))
}

/// The path form: any request to `/v1/sandboxes/{id}/ports/{port}/...`,
/// forwarded to whatever listens there (HTTP/1.1, WebSocket and other
/// upgrades included) as `/...`.
pub async fn port_request(
    State(state): State<AppState>,
    Path(params): Path<Vec<(String, String)>>,
    request: Request,
) -> ApiResult<Response<Body>> {
    let get = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let id = get("id").unwrap_or_default().to_owned();
    let port = port_number(get("port"))?;
    let target = app_target(
        &format!("/{}", get("rest").unwrap_or_default()),
        request.uri().query(),
    );
    let (mut parts, body) = request.into_parts();
    let (caller, _) = port_caller(&state, &mut parts, &id, port, false).await?;
    let request = Request::from_parts(parts, body);
    forward_to_port(
        &state,
        &caller,
        &id,
        port,
        request,
        &target,
        &format!("localhost:{port}"),
    )
    .await
}

/// The host a request was sent to (`Host`, or the HTTP/2 authority).
fn request_host(request: &Request) -> Option<String> {
    request
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| request.uri().authority().map(|a| a.to_string()))
}

/// The host form, in front of every route: a request to
/// `{port}-{id}.<domain>` goes to that port with its whole path; any
/// other host goes on to the API and the console. A browser that opens
/// the port with `?warren_token=` is sent on to the same URL without it
/// and keeps the token in a cookie of that host only.
pub async fn host_form(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(host) = request_host(&request) else {
        return next.run(request).await;
    };
    let Some(target) = state.config.domain.port_host(&host) else {
        return next.run(request).await;
    };
    let (id, port) = (target.sandbox_id, target.port);
    let (mut parts, body) = request.into_parts();
    let (caller, access) = match port_caller(&state, &mut parts, &id, port, true).await {
        Ok(opened) => opened,
        Err(error) => return error.into_response(),
    };
    let path = parts.uri.path().to_owned();
    let query = parts.uri.query().map(str::to_owned);
    let app_path = app_target(&path, query.as_deref());
    if access == Access::Token
        && let Some(token) = query
            .as_deref()
            .and_then(|q| query_param(q, ACCESS_TOKEN_PARAM))
        && matches!(parts.method, Method::GET | Method::HEAD)
        && presented_token(&parts, true).as_deref() == Some(token.as_str())
    {
        // This very token opened the port (a header is read before the
        // query); keep it for the port's host (no Domain attribute: no
        // other sandbox sees it).
        let cookie = format!("{ACCESS_TOKEN_PARAM}={token}; Path=/; HttpOnly; SameSite=Lax");
        let mut response = StatusCode::SEE_OTHER.into_response();
        if let (Ok(location), Ok(cookie)) = (
            HeaderValue::from_str(&app_path),
            HeaderValue::from_str(&cookie),
        ) {
            response.headers_mut().insert(header::LOCATION, location);
            response.headers_mut().insert(header::SET_COOKIE, cookie);
            return response;
        }
    }
    let request = Request::from_parts(parts, body);
    match forward_to_port(&state, &caller, &id, port, request, &app_path, &host).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

/// A raw TCP connection to a port of the sandbox over a WebSocket (binary
/// messages each way), what `warren port-forward` carries each local
/// connection over.
#[utoipa::path(
    get, path = "/v1/sandboxes/{id}/tunnel/{port}", tag = "sandboxes",
    params(
        ("id" = String, Path, description = "Sandbox id"),
        ("port" = u16, Path, description = "TCP port in the sandbox"),
    ),
    responses(
        (status = 101, description = "WebSocket: binary messages are the TCP bytes each way"),
        (status = 400, description = "Bad path or not a WebSocket request", body = ErrorBody),
        (status = 401, description = "No or bad API key or access token", body = ErrorBody),
        (status = 404, description = "No such sandbox", body = ErrorBody),
        (status = 409, description = "Not running, or it has no network card", body = ErrorBody),
        (status = 502, description = "Nothing listens on the port", body = ErrorBody),
    )
)]
pub async fn tunnel(
    State(state): State<AppState>,
    Path((id, port)): Path<(String, String)>,
    request: Request,
) -> ApiResult<Response> {
    let port = port_number(Some(&port))?;
    let (mut parts, _) = request.into_parts();
    let (caller, _) = port_caller(&state, &mut parts, &id, port, false).await?;
    let upgrade = WebSocketUpgrade::from_request_parts(&mut parts, &state)
        .await
        .map_err(|e| ApiError::bad_request(format!("not a WebSocket request: {e}")))?;
    // Connect before upgrading, so "nothing listens" is a clear 502.
    let (live, stream) = open_port(&state, &caller, &id, port).await?;
    Ok(upgrade.on_upgrade(move |socket| async move {
        pump_tunnel(socket, stream).await;
        drop(live);
    }))
}

/// Copies bytes between the WebSocket and the TCP connection until either
/// side ends; each end is closed when the other is.
async fn pump_tunnel(socket: WebSocket, stream: tokio::net::TcpStream) {
    let (mut ws_tx, mut ws_rx) = socket.split();
    let (mut tcp_rx, mut tcp_tx) = stream.into_split();
    let inbound = async {
        while let Some(Ok(message)) = ws_rx.next().await {
            match message {
                Message::Binary(bytes) if tcp_tx.write_all(&bytes).await.is_err() => break,
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = tcp_tx.shutdown().await;
    };
    let outbound = async {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            match tcp_rx.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if ws_tx
                        .send(Message::Binary(buffer[..n].to_vec().into()))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
        let _ = ws_tx.send(Message::Close(None)).await;
    };
    // The first side to end closes its half; the other half then ends on
    // its own (the peer sees EOF or the close frame).
    tokio::join!(inbound, outbound);
}
