//! Forwarding an HTTP request (or a WebSocket, or any HTTP upgrade) to a
//! server inside a sandbox, over a TCP connection the host made into the
//! sandbox's network namespace. Both port forms of the API end here:
//! `/v1/sandboxes/{id}/ports/{port}/{path}` and `{port}-{id}.<domain>`.
//!
//! The request goes on as HTTP/1.1 with hyper's client (streaming both
//! bodies); warren's own credentials are removed first, so an app in a
//! sandbox never sees the caller's API key.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Uri, header};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

/// Why a request could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// The path the app should see is not a valid request target.
    #[error("the forwarded path {0:?} is not a valid URL path")]
    BadPath(String),
    /// The sandbox's server broke the HTTP exchange (closed, garbage).
    #[error("the server in the sandbox did not answer the request")]
    Upstream(#[source] hyper::Error),
}

/// The header warren's per-sandbox access token travels in (so a browser
/// app can be opened without an API key), removed before forwarding.
pub const ACCESS_TOKEN_HEADER: &str = "x-warren-access-token";

/// Removes what authenticated the caller to warren, and hop-by-hop
/// headers a proxy must not pass on (keeping `Upgrade`/`Connection` for
/// an upgrade request, which needs them).
fn scrub(headers: &mut HeaderMap, upgrading: bool) {
    headers.remove(header::AUTHORIZATION);
    headers.remove("x-api-key");
    headers.remove(ACCESS_TOKEN_HEADER);
    let cookies: Vec<String> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| {
            crate::port_host::cookie_header_without(v, crate::port_host::ACCESS_TOKEN_PARAM)
        })
        .collect();
    headers.remove(header::COOKIE);
    for value in cookies {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.append(header::COOKIE, value);
        }
    }
    for hop in [
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
    ] {
        headers.remove(hop);
    }
    if !upgrading {
        headers.remove(header::CONNECTION);
        headers.remove(header::UPGRADE);
    }
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Sends `request` with target `path_and_query` (what the app sees: the
/// part after `/ports/{port}`, or the whole path in the host form) over
/// `stream`, and returns the app's response. A `101 Switching Protocols`
/// answer joins the caller's upgraded connection to the app's.
pub async fn forward<S>(
    mut request: Request<Body>,
    path_and_query: &str,
    host: &str,
    stream: S,
) -> Result<Response<Body>, ForwardError>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let uri: Uri = path_and_query
        .parse()
        .map_err(|_| ForwardError::BadPath(path_and_query.to_owned()))?;
    if uri.scheme().is_some() || !path_and_query.starts_with('/') {
        return Err(ForwardError::BadPath(path_and_query.to_owned()));
    }
    let upgrading = is_upgrade(request.headers());
    let caller_upgrade = upgrading.then(|| hyper::upgrade::on(&mut request));
    *request.uri_mut() = uri;
    *request.version_mut() = axum::http::Version::HTTP_11;
    scrub(request.headers_mut(), upgrading);
    if let Ok(value) = HeaderValue::from_str(host) {
        request.headers_mut().insert(header::HOST, value);
    }

    let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(ForwardError::Upstream)?;
    tokio::spawn(async move {
        if let Err(e) = connection.with_upgrades().await {
            tracing::debug!("port proxy connection ended: {e}");
        }
    });
    let mut response = sender
        .send_request(request)
        .await
        .map_err(ForwardError::Upstream)?;
    if response.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(caller) = caller_upgrade
    {
        let app = hyper::upgrade::on(&mut response);
        tokio::spawn(async move {
            let (Ok(caller), Ok(app)) = (caller.await, app.await) else {
                return;
            };
            let _ =
                tokio::io::copy_bidirectional(&mut TokioIo::new(caller), &mut TokioIo::new(app))
                    .await;
        });
    }
    Ok(response.map(Body::new))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::extract::ws::{Message, WebSocketUpgrade};
    use axum::routing::{any, get};
    use futures::{SinkExt, StreamExt};

    /// An "app in the sandbox": echoes method, path, body and whether it
    /// saw credentials; a WebSocket echo at /ws.
    async fn app() -> std::net::SocketAddr {
        let router = Router::new()
            .route(
                "/ws",
                get(|ws: WebSocketUpgrade| async move {
                    ws.on_upgrade(|mut socket| async move {
                        while let Some(Ok(Message::Text(t))) = socket.recv().await {
                            let _ = socket.send(Message::Text(format!("echo {t}").into())).await;
                        }
                    })
                }),
            )
            .route(
                "/{*rest}",
                any(|req: Request<Body>| async move {
                    let saw_key = req.headers().contains_key(header::AUTHORIZATION)
                        || req.headers().contains_key("x-api-key")
                        || req.headers().contains_key(ACCESS_TOKEN_HEADER);
                    let cookies = req
                        .headers()
                        .get(header::COOKIE)
                        .map(|v| v.to_str().unwrap().to_owned())
                        .unwrap_or_default();
                    let line = format!(
                        "{} {} host={} key={saw_key} cookies={cookies:?} ",
                        req.method(),
                        req.uri(),
                        req.headers()[header::HOST].to_str().unwrap()
                    );
                    let body = axum::body::to_bytes(req.into_body(), 1 << 20)
                        .await
                        .unwrap();
                    format!("{line}{}", String::from_utf8_lossy(&body))
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        addr
    }

    /// warren's side: a server whose every request is forwarded to `app`
    /// with the `/p` prefix cut, as the path form does.
    async fn proxy(app: std::net::SocketAddr) -> std::net::SocketAddr {
        let router = Router::new().route(
            "/p/{*rest}",
            any(move |req: Request<Body>| async move {
                let target = req
                    .uri()
                    .path_and_query()
                    .map(|p| p.as_str().trim_start_matches("/p").to_owned())
                    .unwrap();
                let stream = tokio::net::TcpStream::connect(app).await.unwrap();
                match forward(req, &target, "localhost:8000", stream).await {
                    Ok(r) => r,
                    Err(e) => Response::builder()
                        .status(StatusCode::BAD_GATEWAY)
                        .body(Body::from(e.to_string()))
                        .unwrap(),
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        addr
    }

    #[tokio::test]
    async fn requests_reach_the_app_with_their_path_body_and_no_credentials() {
        let proxy = proxy(app().await).await;
        let client = reqwest::Client::new();
        let text = client
            .post(format!("http://{proxy}/p/api/items?x=1"))
            .header("authorization", "Bearer wrn_secret")
            .header(ACCESS_TOKEN_HEADER, "tok")
            .header("x-api-key", "wrn_secret")
            .header(header::COOKIE, "warren_token=wat_x; theme=dark")
            .body("hello")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(
            text,
            "POST /api/items?x=1 host=localhost:8000 key=false cookies=\"theme=dark\" hello"
        );
    }

    #[tokio::test]
    async fn a_websocket_is_joined_through() {
        let proxy = proxy(app().await).await;
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{proxy}/p/ws"))
            .await
            .unwrap();
        ws.send(tokio_tungstenite::tungstenite::Message::Text("hi".into()))
            .await
            .unwrap();
        let reply = ws.next().await.unwrap().unwrap();
        assert_eq!(reply.into_text().unwrap().as_str(), "echo hi");
    }

    #[tokio::test]
    async fn an_app_that_hangs_up_is_a_clear_error() {
        let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = dead.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((s, _)) = dead.accept().await {
                drop(s);
            }
        });
        let proxy = proxy(addr).await;
        let resp = reqwest::get(format!("http://{proxy}/p/x")).await.unwrap();
        assert_eq!(resp.status(), 502);
        assert!(resp.text().await.unwrap().contains("did not answer"));
    }
}
