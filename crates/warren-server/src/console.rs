//! The web console and Swagger UI: static files built from `web/` with npm
//! and embedded into the binary at compile time (no CDN at run time).

use axum::http::{HeaderValue, Method, Uri, header};
use axum::response::{IntoResponse, Response};
use rust_embed::RustEmbed;

/// `web/dist` (or the placeholder that build.rs writes without it).
#[derive(RustEmbed)]
#[folder = "$WARREN_WEB_DIST"]
struct Assets;

/// Serves everything that is not an API route.
pub async fn serve(method: Method, uri: Uri) -> Response {
    let path = uri.path();
    if path.starts_with("/v1/") || path == "/v1" {
        return crate::routes::api_not_found(path);
    }
    if method != Method::GET && method != Method::HEAD {
        return crate::error::ApiError::new(
            axum::http::StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{method} is not allowed on {path}"),
        )
        .into_response();
    }
    let relative = path.trim_start_matches('/');
    let candidates: Vec<String> = if relative.is_empty() {
        vec!["index.html".into()]
    } else if relative == "docs" || relative == "docs/" {
        vec!["docs/index.html".into()]
    } else {
        vec![
            relative.to_string(),
            format!("{}/index.html", relative.trim_end_matches('/')),
        ]
    };
    for candidate in &candidates {
        if let Some(file) = Assets::get(candidate) {
            return file_response(candidate, file);
        }
    }
    // Client-side routes of the console fall back to its page; missing
    // assets are a plain 404.
    if relative.starts_with("assets/") || relative.starts_with("docs/") || relative.contains('.') {
        return (axum::http::StatusCode::NOT_FOUND, "not found").into_response();
    }
    match Assets::get("index.html") {
        Some(file) => file_response("index.html", file),
        None => (axum::http::StatusCode::NOT_FOUND, "not found").into_response(),
    }
}

fn file_response(name: &str, file: rust_embed::EmbeddedFile) -> Response {
    let mime = file.metadata.mimetype().to_string();
    let mut response = file.data.into_owned().into_response();
    if let Ok(value) = HeaderValue::from_str(&mime) {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    // Hashed assets never change; pages must be re-read.
    let cache = if name.starts_with("assets/") {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    response
}
