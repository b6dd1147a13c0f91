//! File endpoints. Up- and downloads stream: a file of any size crosses
//! the service with bounded memory.

use axum::Json;
use axum::body::Body;
use axum::extract::{Multipart, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use futures::TryStreamExt;
use tokio_util::io::{ReaderStream, StreamReader};
use utoipa::ToSchema;
use warren_host::session::WriteOptions;

use super::{ApiJson, ApiPath, ApiQuery, no_content};
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::model::{
    self, FileInfo, FileList, ListQuery, MakeDir, PathQuery, RemoveQuery, Rename, UploadForm,
    UploadQuery,
};
use crate::state::AppState;

/// Raw file bytes (for the OpenAPI document).
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
#[allow(dead_code)]
pub struct FileBytes(Vec<u8>);

/// Downloads a file.
#[utoipa::path(
    get, path = "/v1/sandboxes/{id}/files", tag = "files",
    params(("id" = String, Path, description = "Sandbox id"), PathQuery),
    responses(
        (status = 200, description = "The file's bytes", content_type = "application/octet-stream", body = FileBytes),
        (status = 400, description = "Bad query", body = ErrorBody),
        (status = 401, description = "No or bad API key", body = ErrorBody),
        (status = 404, description = "No such sandbox or file", body = ErrorBody),
        (status = 409, description = "Not running, or the path is a directory", body = ErrorBody),
        (status = 422, description = "Invalid path", body = ErrorBody),
        (status = 500, description = "Server failure", body = ErrorBody),
    )
)]
pub async fn download(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<PathQuery>,
) -> ApiResult<Response> {
    let (_, live) = state.live_sandbox(&caller, &id).await?;
    // Once the 200 is sent, a pause must not cut the body short.
    let hold = live.hold_off_pause()?;
    let info = live.stat(&query.path).await?;
    if info.file_type == warren_host::session::FileType::Dir {
        return Err(ApiError::conflict(format!("{} is a directory", info.path))
            .hint("list it with GET /v1/sandboxes/{id}/files/list"));
    }
    let (writer, reader) = tokio::io::duplex(256 * 1024);
    let path = query.path.clone();
    tokio::spawn(async move {
        let _hold = hold;
        let mut writer = writer;
        if let Err(error) = live.read_file_to(&path, &mut writer, &()).await {
            // The client sees a body shorter than Content-Length.
            tracing::warn!(%path, %error, "download failed midway");
        }
    });
    let mut response = Body::from_stream(ReaderStream::new(reader)).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if info.file_type == warren_host::session::FileType::File {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(info.size));
    }
    let disposition = format!(
        "attachment; filename=\"{}\"",
        info.name.replace(['"', '\\', '\r', '\n'], "_")
    );
    if let Ok(value) = HeaderValue::from_str(&disposition) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    Ok(response)
}

fn parse_mode(mode: Option<&str>) -> ApiResult<Option<u32>> {
    match mode {
        None | Some("") => Ok(None),
        Some(text) => u32::from_str_radix(text, 8)
            .ok()
            .filter(|m| *m <= 0o7777)
            .map(Some)
            .ok_or_else(|| {
                ApiError::invalid(format!(
                    "mode {text:?} is not an octal permission such as 644"
                ))
            }),
    }
}

fn parse_bool(name: &str, value: &str) -> ApiResult<bool> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        other => Err(ApiError::invalid(format!(
            "{name} must be true or false, not {other:?}"
        ))),
    }
}

/// Uploads a file as multipart form data (`path` first, then `file`).
#[utoipa::path(
    post, path = "/v1/sandboxes/{id}/files", tag = "files",
    params(("id" = String, Path, description = "Sandbox id")),
    request_body(content_type = "multipart/form-data", content = UploadForm),
    responses(
        (status = 200, description = "Written (atomically)", body = FileInfo),
        (status = 400, description = "Malformed form", body = ErrorBody),
        (status = 401, description = "No or bad API key", body = ErrorBody),
        (status = 404, description = "No such sandbox, or a missing parent directory", body = ErrorBody),
        (status = 409, description = "Not running, or the target is a directory", body = ErrorBody),
        (status = 422, description = "Invalid path or mode, unknown user, or the disk is full", body = ErrorBody),
        (status = 500, description = "Server failure", body = ErrorBody),
    )
)]
pub async fn upload_multipart(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> ApiResult<Json<FileInfo>> {
    let (_, live) = state.live_sandbox(&caller, &id).await?;
    let _hold = live.hold_off_pause()?;
    let mut multipart = multipart.map_err(|e| {
        ApiError::bad_request(format!("expected multipart/form-data: {}", e.body_text()))
    })?;
    let mut path = None;
    let mut options = WriteOptions::default();
    let bad = |e: axum::extract::multipart::MultipartError| {
        ApiError::bad_request(format!("malformed multipart body: {e}"))
    };
    while let Some(field) = multipart.next_field().await.map_err(bad)? {
        let name = field.name().unwrap_or("").to_string();
        match name.as_str() {
            "path" => path = Some(field.text().await.map_err(bad)?),
            "mode" => options.mode = parse_mode(Some(field.text().await.map_err(bad)?.trim()))?,
            "user" => {
                let user = field.text().await.map_err(bad)?;
                options.user = (!user.is_empty()).then_some(user);
            }
            "create_parents" => {
                options.create_parents =
                    parse_bool("create_parents", field.text().await.map_err(bad)?.trim())?
            }
            "file" => {
                let path = path.clone().ok_or_else(|| {
                    ApiError::bad_request("the `path` field must come before the `file` field")
                })?;
                let stream = field.map_err(std::io::Error::other);
                let mut reader = StreamReader::new(stream);
                let info = live
                    .write_file_from(&path, &mut reader, options.clone(), &())
                    .await?;
                return Ok(Json(model::file_info(info)));
            }
            _ => {}
        }
    }
    Err(ApiError::bad_request("the form has no `file` field"))
}

/// Uploads a file from the raw request body.
#[utoipa::path(
    put, path = "/v1/sandboxes/{id}/files", tag = "files",
    params(("id" = String, Path, description = "Sandbox id"), UploadQuery),
    request_body(content_type = "application/octet-stream", content = FileBytes),
    responses(
        (status = 200, description = "Written (atomically)", body = FileInfo),
        (status = 400, description = "Bad query or body", body = ErrorBody),
        (status = 401, description = "No or bad API key", body = ErrorBody),
        (status = 404, description = "No such sandbox, or a missing parent directory", body = ErrorBody),
        (status = 409, description = "Not running, or the target is a directory", body = ErrorBody),
        (status = 422, description = "Invalid path or mode, unknown user, or the disk is full", body = ErrorBody),
        (status = 500, description = "Server failure", body = ErrorBody),
    )
)]
pub async fn upload_raw(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<FileInfo>> {
    let (_, live) = state.live_sandbox(&caller, &id).await?;
    let _hold = live.hold_off_pause()?;
    // A known length lets the guest fail early on a full disk and lay the
    // file out in one go.
    let size_hint = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|&n| n > 0);
    let options = WriteOptions {
        mode: parse_mode(query.mode.as_deref())?,
        user: query.user.filter(|u| !u.is_empty()),
        create_parents: query.create_parents.unwrap_or(false),
        size_hint,
        ..WriteOptions::default()
    };
    let stream = body.into_data_stream().map_err(std::io::Error::other);
    let mut reader = StreamReader::new(stream);
    let info = live
        .write_file_from(&query.path, &mut reader, options, &())
        .await?;
    Ok(Json(model::file_info(info)))
}

/// Removes a file or directory.
#[utoipa::path(
    delete, path = "/v1/sandboxes/{id}/files", tag = "files",
    params(("id" = String, Path, description = "Sandbox id"), RemoveQuery),
    responses(
        (status = 204, description = "Removed"),
        (status = 400, description = "Bad query", body = ErrorBody),
        (status = 401, description = "No or bad API key", body = ErrorBody),
        (status = 404, description = "No such sandbox or file", body = ErrorBody),
        (status = 409, description = "Not running, or a non-empty directory without `recursive`", body = ErrorBody),
        (status = 422, description = "Invalid path", body = ErrorBody),
        (status = 500, description = "Server failure", body = ErrorBody),
    )
)]
pub async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<RemoveQuery>,
) -> ApiResult<Response> {
    let (_, live) = state.live_sandbox(&caller, &id).await?;
    live.remove(&query.path, query.recursive.unwrap_or(false))
        .await?;
    Ok(no_content())
}

/// Lists a directory.
#[utoipa::path(
    get, path = "/v1/sandboxes/{id}/files/list", tag = "files",
    params(("id" = String, Path, description = "Sandbox id"), ListQuery),
    responses(
        (status = 200, description = "Entries", body = FileList),
        (status = 400, description = "Bad query", body = ErrorBody),
        (status = 401, description = "No or bad API key", body = ErrorBody),
        (status = 404, description = "No such sandbox or directory", body = ErrorBody),
        (status = 409, description = "Not running, or not a directory", body = ErrorBody),
        (status = 422, description = "Invalid path or depth", body = ErrorBody),
        (status = 500, description = "Server failure", body = ErrorBody),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> ApiResult<Json<FileList>> {
    let depth = query.depth.unwrap_or(0);
    if depth > 8 {
        return Err(ApiError::invalid("depth is limited to 8"));
    }
    let (_, live) = state.live_sandbox(&caller, &id).await?;
    let entries = live.list_dir(&query.path, depth).await?;
    Ok(Json(FileList {
        entries: entries.into_iter().map(model::file_info).collect(),
    }))
}

/// Metadata of a path.
#[utoipa::path(
    get, path = "/v1/sandboxes/{id}/files/stat", tag = "files",
    params(("id" = String, Path, description = "Sandbox id"), PathQuery),
    responses(
        (status = 200, description = "Metadata", body = FileInfo),
        (status = 400, description = "Bad query", body = ErrorBody),
        (status = 401, description = "No or bad API key", body = ErrorBody),
        (status = 404, description = "No such sandbox or file", body = ErrorBody),
        (status = 409, description = "Not running", body = ErrorBody),
        (status = 422, description = "Invalid path", body = ErrorBody),
        (status = 500, description = "Server failure", body = ErrorBody),
    )
)]
pub async fn stat(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<PathQuery>,
) -> ApiResult<Json<FileInfo>> {
    let (_, live) = state.live_sandbox(&caller, &id).await?;
    Ok(Json(model::file_info(live.stat(&query.path).await?)))
}

/// Creates a directory.
#[utoipa::path(
    post, path = "/v1/sandboxes/{id}/files/mkdir", tag = "files",
    params(("id" = String, Path, description = "Sandbox id")),
    request_body = MakeDir,
    responses(
        (status = 200, description = "The directory", body = FileInfo),
        (status = 400, description = "Malformed body", body = ErrorBody),
        (status = 401, description = "No or bad API key", body = ErrorBody),
        (status = 404, description = "No such sandbox, or a missing parent", body = ErrorBody),
        (status = 409, description = "Not running, or it exists", body = ErrorBody),
        (status = 422, description = "Invalid path", body = ErrorBody),
        (status = 500, description = "Server failure", body = ErrorBody),
    )
)]
pub async fn make_dir(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(request): ApiJson<MakeDir>,
) -> ApiResult<Json<FileInfo>> {
    let (_, live) = state.live_sandbox(&caller, &id).await?;
    let info = live
        .make_dir(&request.path, request.parents.unwrap_or(true))
        .await?;
    Ok(Json(model::file_info(info)))
}

/// Renames a path.
#[utoipa::path(
    post, path = "/v1/sandboxes/{id}/files/rename", tag = "files",
    params(("id" = String, Path, description = "Sandbox id")),
    request_body = Rename,
    responses(
        (status = 204, description = "Renamed"),
        (status = 400, description = "Malformed body", body = ErrorBody),
        (status = 401, description = "No or bad API key", body = ErrorBody),
        (status = 404, description = "No such sandbox or source", body = ErrorBody),
        (status = 409, description = "Not running, or the target exists", body = ErrorBody),
        (status = 422, description = "Invalid path", body = ErrorBody),
        (status = 500, description = "Server failure", body = ErrorBody),
    )
)]
pub async fn rename(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(request): ApiJson<Rename>,
) -> ApiResult<Response> {
    let (_, live) = state.live_sandbox(&caller, &id).await?;
    live.rename(
        &request.from,
        &request.to,
        request.overwrite.unwrap_or(false),
    )
    .await?;
    Ok(no_content())
}
