//! Running processes: synchronous exec, streaming exec and terminals over
//! WebSockets, background processes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::StatusCode;
use axum::response::Response;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use warren_api::ws::{
    ProcessClientMessage as ClientMessage, ProcessServerMessage as ServerMessage, PtySize,
};
use warren_host::session::{Command, Process, ProcessEvent, Sandbox as LiveSandbox};

use super::{ApiJson, ApiPath, ApiQuery, json_status, no_content};
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::model::{
    AttachQuery, ExecRequest, ExecResult, ProcessEntry, ProcessInput, ProcessList, ProcessStarted,
    PtyQuery, SignalRequest, StartProcess, WsQuery,
};
use crate::state::AppState;

/// Output kept per stream by a synchronous exec.
const MAX_CAPTURE: usize = 16 << 20;

/// Builds a command from the fields every exec form shares.
fn build_command(
    cmd: Option<String>,
    argv: Option<Vec<String>>,
    env: Option<BTreeMap<String, String>>,
    cwd: Option<String>,
    user: Option<String>,
    timeout_secs: Option<u64>,
) -> ApiResult<Command> {
    let mut command = match (cmd, argv) {
        (Some(cmd), None) => Command::shell(cmd),
        (None, Some(argv)) if !argv.is_empty() => Command::from_argv(argv),
        (None, Some(_)) => {
            return Err(ApiError::invalid(
                "argv is empty; give a program and its arguments",
            ));
        }
        (Some(_), Some(_)) => return Err(ApiError::invalid("give either cmd or argv, not both")),
        (None, None) => {
            return Err(ApiError::invalid(
                "give a command: cmd (a shell line) or argv (a list)",
            ));
        }
    };
    if let Some(env) = env {
        command = command.envs(env);
    }
    if let Some(cwd) = cwd {
        command = command.cwd(cwd);
    }
    if let Some(user) = user {
        command = command.user(user);
    }
    match timeout_secs {
        Some(secs) if secs > crate::state::MAX_TIMEOUT_SECS => {
            return Err(ApiError::invalid("timeout_secs is over a day"));
        }
        Some(secs) if secs > 0 => command = command.timeout(Duration::from_secs(secs)),
        _ => {}
    }
    Ok(command)
}

fn ws_rejection(rejection: WebSocketUpgradeRejection) -> ApiError {
    let status = rejection.status();
    let code = if status == StatusCode::UPGRADE_REQUIRED {
        "upgrade_required"
    } else {
        "bad_request"
    };
    ApiError::new(
        status,
        code,
        format!("this endpoint is a WebSocket: {}", rejection.body_text()),
    )
}

/// Runs a command to completion and returns its output.
#[utoipa::path(
    post, path = "/v1/sandboxes/{id}/exec", tag = "processes",
    params(("id" = String, Path, description = "Sandbox id")),
    request_body = ExecRequest,
    responses(
        (status = 200, description = "The command ran (whatever its exit code)", body = ExecResult),
        (status = 400, description = "Malformed body", body = ErrorBody),
        (status = 401, description = "No or bad API key", body = ErrorBody),
        (status = 404, description = "No such sandbox", body = ErrorBody),
        (status = 409, description = "The sandbox is not running", body = ErrorBody),
        (status = 422, description = "The command cannot run (not found, bad user or directory)", body = ErrorBody),
        (status = 500, description = "Server failure", body = ErrorBody),
    )
)]
pub async fn exec(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(request): ApiJson<ExecRequest>,
) -> ApiResult<Json<ExecResult>> {
    let (_, live) = state.live_sandbox(&caller, &id).await?;
    let stdin = request.stdin.clone();
    let command = build_command(
        request.cmd,
        request.argv,
        request.env,
        request.cwd,
        request.user,
        request.timeout_secs,
    )?
    .stdin(stdin.is_some());
    let mut process = live.exec(command).await?;
    if let Some(data) = stdin {
        let input = process.input().expect("exec has input");
        // Feed stdin from its own task: a process that prints before it
        // reads must not block on us.
        tokio::spawn(async move {
            if input.write(data.into_bytes()).await.is_ok() {
                let _ = input.close().await;
            }
        });
    }
    let (mut stdout, mut stderr, mut truncated) = (Vec::new(), Vec::new(), false);
    loop {
        match process.next_event().await? {
            Some(ProcessEvent::Stdout(data)) => append(&mut stdout, &data, &mut truncated),
            Some(ProcessEvent::Stderr(data)) => append(&mut stderr, &data, &mut truncated),
            Some(ProcessEvent::Exited(status)) => {
                return Ok(Json(ExecResult {
                    exit_code: status.code,
                    signal: status.signal,
                    timed_out: status.timed_out,
                    stdout: String::from_utf8_lossy(&stdout).into_owned(),
                    stderr: String::from_utf8_lossy(&stderr).into_owned(),
                    truncated,
                }));
            }
            None => {
                return Err(ApiError::internal(
                    "the process ended without an exit status",
                ));
            }
        }
    }
}

fn append(buffer: &mut Vec<u8>, data: &[u8], truncated: &mut bool) {
    let room = MAX_CAPTURE.saturating_sub(buffer.len());
    if data.len() > room {
        *truncated = true;
    }
    buffer.extend_from_slice(&data[..data.len().min(room)]);
}

fn text(message: &ServerMessage) -> Message {
    Message::Text(
        serde_json::to_string(message)
            .expect("message serializes")
            .into(),
    )
}

fn error_message(error: ApiError) -> Message {
    text(&ServerMessage::Error {
        code: error.body.code,
        message: error.body.message,
        hint: error.body.hint,
    })
}

/// Streaming exec over a WebSocket (see docs/api.md for the messages).
#[utoipa::path(
    get, path = "/v1/sandboxes/{id}/exec/ws", tag = "processes",
    params(("id" = String, Path, description = "Sandbox id"), WsQuery),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol"),
        (status = 400, description = "Not a WebSocket request", body = ErrorBody),
        (status = 401, description = "No or bad API key", body = ErrorBody),
        (status = 404, description = "No such sandbox", body = ErrorBody),
        (status = 409, description = "The sandbox is not running", body = ErrorBody),
        (status = 426, description = "The connection cannot be upgraded", body = ErrorBody),
        (status = 500, description = "Server failure", body = ErrorBody),
    )
)]
pub async fn exec_ws(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiQuery(_query): ApiQuery<WsQuery>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    let (_, live) = state.live_sandbox(&caller, &id).await?;
    let ws = ws.map_err(ws_rejection)?;
    Ok(ws.on_upgrade(move |socket| exec_session(socket, live)))
}

async fn exec_session(mut socket: WebSocket, live: Arc<LiveSandbox>) {
    let start = loop {
        match socket.recv().await {
            Some(Ok(Message::Text(body))) => match serde_json::from_str::<ClientMessage>(&body) {
                Ok(ClientMessage::Start(start)) => break start,
                Ok(_) => {
                    return close_with(
                        socket,
                        ApiError::bad_request("the first message must be {\"type\":\"start\",...}"),
                    )
                    .await;
                }
                Err(error) => {
                    return close_with(
                        socket,
                        ApiError::bad_request(format!("invalid message: {error}")),
                    )
                    .await;
                }
            },
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            _ => return,
        }
    };
    let command = match build_command(
        start.cmd,
        start.argv,
        start.env,
        start.cwd,
        start.user,
        start.timeout_secs,
    ) {
        Ok(command) => command,
        Err(error) => {
            return close_with(socket, error).await;
        }
    };
    let command = match start.pty {
        Some(PtySize { cols, rows }) => command.pty(rows.max(1), cols.max(1)),
        None => command.stdin(start.stdin.unwrap_or(true)),
    };
    let process = match live.exec(command).await {
        Ok(process) => process,
        Err(error) => {
            return close_with(socket, error.into()).await;
        }
    };
    stream_process(socket, process, true).await;
}

/// Sends an error event, then a close frame.
async fn close_with(mut socket: WebSocket, error: ApiError) {
    let _ = socket.send(error_message(error)).await;
    let _ = socket.send(Message::Close(None)).await;
}

/// Pumps a process's events to a socket as JSON, and the socket's input to
/// the process. Ends (dropping, thus killing, a foreground process) when
/// either side ends.
async fn stream_process(socket: WebSocket, mut process: Process, announce: bool) {
    let (mut sender, mut receiver) = socket.split();
    if announce
        && sender
            .send(text(&ServerMessage::Started { pid: process.pid() }))
            .await
            .is_err()
    {
        return;
    }
    let mut input = process.input();
    let mut reader = tokio::spawn(async move {
        while let Some(Ok(message)) = receiver.next().await {
            let Some(sink) = input.as_ref() else {
                // The process takes no more input (it exited, or this is an
                // attach): keep reading only to notice the client leave.
                if matches!(message, Message::Close(_)) {
                    break;
                }
                continue;
            };
            let outcome = match message {
                Message::Text(body) => match serde_json::from_str::<ClientMessage>(&body) {
                    Ok(ClientMessage::Stdin { data }) => match BASE64.decode(data.as_bytes()) {
                        Ok(bytes) => sink.write(bytes).await,
                        Err(_) => continue,
                    },
                    Ok(ClientMessage::CloseStdin) => sink.close().await,
                    Ok(ClientMessage::Signal { signal }) => sink.signal(signal).await,
                    Ok(ClientMessage::Resize { cols, rows }) => {
                        sink.resize(rows.max(1), cols.max(1)).await
                    }
                    Ok(ClientMessage::Start(_)) | Err(_) => continue,
                },
                Message::Binary(bytes) => sink.write(bytes).await,
                Message::Close(_) => break,
                _ => continue,
            };
            if outcome.is_err() {
                // Done with input; the exit reaches the client through the
                // other half.
                input = None;
            }
        }
    });
    loop {
        tokio::select! {
            event = process.next_event() => {
                let message = match event {
                    Ok(Some(ProcessEvent::Stdout(data))) => text(&ServerMessage::Stdout { data: BASE64.encode(&data) }),
                    Ok(Some(ProcessEvent::Stderr(data))) => text(&ServerMessage::Stderr { data: BASE64.encode(&data) }),
                    Ok(Some(ProcessEvent::Exited(status))) => {
                        let _ = sender.send(text(&ServerMessage::Exit {
                            exit_code: status.code,
                            signal: status.signal,
                            timed_out: status.timed_out,
                        })).await;
                        break;
                    }
                    Ok(None) => break,
                    Err(error) => {
                        let _ = sender.send(error_message(error.into())).await;
                        break;
                    }
                };
                if sender.send(message).await.is_err() {
                    break;
                }
            }
            _ = &mut reader => break,
        }
    }
    reader.abort();
    let _ = sender.send(Message::Close(None)).await;
}

/// Starts a background process.
#[utoipa::path(
    post, path = "/v1/sandboxes/{id}/processes", tag = "processes",
    params(("id" = String, Path, description = "Sandbox id")),
    request_body = StartProcess,
    responses(
        (status = 201, description = "Started", body = ProcessStarted),
        (status = 400, description = "Malformed body", body = ErrorBody),
        (status = 401, description = "No or bad API key", body = ErrorBody),
        (status = 404, description = "No such sandbox", body = ErrorBody),
        (status = 409, description = "The sandbox is not running", body = ErrorBody),
        (status = 422, description = "The command cannot run", body = ErrorBody),
        (status = 500, description = "Server failure", body = ErrorBody),
    )
)]
pub async fn start_process(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(request): ApiJson<StartProcess>,
) -> ApiResult<Response> {
    let (_, live) = state.live_sandbox(&caller, &id).await?;
    let mut command = build_command(
        request.cmd,
        request.argv,
        request.env,
        request.cwd,
        request.user,
        request.timeout_secs,
    )?
    .background()
    .stdin(request.stdin.unwrap_or(false));
    if let Some(tag) = request.tag {
        command = command.tag(tag);
    }
    let process = live.exec(command).await?;
    Ok(json_status(
        StatusCode::CREATED,
        ProcessStarted { pid: process.pid() },
    ))
}

/// Lists background and running processes.
#[utoipa::path(
    get, path = "/v1/sandboxes/{id}/processes", tag = "processes",
    params(("id" = String, Path, description = "Sandbox id")),
    responses(
        (status = 200, description = "Processes", body = ProcessList),
        (status = 400, description = "Bad path", body = ErrorBody),
        (status = 401, description = "No or bad API key", body = ErrorBody),
        (status = 404, description = "No such sandbox", body = ErrorBody),
        (status = 409, description = "The sandbox is not running", body = ErrorBody),
        (status = 500, description = "Server failure", body = ErrorBody),
    )
)]
pub async fn list_processes(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<ProcessList>> {
    let (_, live) = state.live_sandbox(&caller, &id).await?;
    let processes = live
        .processes()
        .await?
        .into_iter()
        .map(|p| ProcessEntry {
            pid: p.pid,
            argv: p.argv,
            tag: p.tag,
            pty: p.pty,
            running: p.exit.is_none(),
            exit_code: p.exit.and_then(|e| e.code),
            signal: p.exit.and_then(|e| e.signal),
        })
        .collect();
    Ok(Json(ProcessList { processes }))
}

/// Writes to (or closes) a process's stdin.
#[utoipa::path(
    post, path = "/v1/sandboxes/{id}/processes/{pid}/stdin", tag = "processes",
    params(("id" = String, Path, description = "Sandbox id"), ("pid" = u32, Path, description = "Process id")),
    request_body = ProcessInput,
    responses(
        (status = 204, description = "Written"),
        (status = 400, description = "Malformed body", body = ErrorBody),
        (status = 401, description = "No or bad API key", body = ErrorBody),
        (status = 404, description = "No such sandbox or process", body = ErrorBody),
        (status = 409, description = "Not running, or the process has no stdin", body = ErrorBody),
        (status = 422, description = "Invalid data", body = ErrorBody),
        (status = 500, description = "Server failure", body = ErrorBody),
    )
)]
pub async fn process_stdin(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((id, pid)): ApiPath<(String, u32)>,
    ApiJson(request): ApiJson<ProcessInput>,
) -> ApiResult<Response> {
    let (_, live) = state.live_sandbox(&caller, &id).await?;
    let data = match (request.data, request.data_base64) {
        (Some(_), Some(_)) => return Err(ApiError::invalid("give data or data_base64, not both")),
        (Some(text), None) => text.into_bytes(),
        (None, Some(encoded)) => BASE64
            .decode(encoded.as_bytes())
            .map_err(|e| ApiError::invalid(format!("data_base64 is not base64: {e}")))?,
        (None, None) => Vec::new(),
    };
    live.send_input(pid, data, request.close.unwrap_or(false))
        .await?;
    Ok(no_content())
}

/// Sends a signal to a process (and its group).
#[utoipa::path(
    post, path = "/v1/sandboxes/{id}/processes/{pid}/signal", tag = "processes",
    params(("id" = String, Path, description = "Sandbox id"), ("pid" = u32, Path, description = "Process id")),
    request_body = SignalRequest,
    responses(
        (status = 204, description = "Sent"),
        (status = 400, description = "Malformed body", body = ErrorBody),
        (status = 401, description = "No or bad API key", body = ErrorBody),
        (status = 404, description = "No such sandbox or process", body = ErrorBody),
        (status = 409, description = "Not running, or the process has exited", body = ErrorBody),
        (status = 422, description = "Invalid signal", body = ErrorBody),
        (status = 500, description = "Server failure", body = ErrorBody),
    )
)]
pub async fn process_signal(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((id, pid)): ApiPath<(String, u32)>,
    ApiJson(request): ApiJson<SignalRequest>,
) -> ApiResult<Response> {
    if !(1..=64).contains(&request.signal) {
        return Err(ApiError::invalid(format!(
            "{} is not a signal number (1-64)",
            request.signal
        )));
    }
    let (_, live) = state.live_sandbox(&caller, &id).await?;
    live.signal(pid, request.signal).await?;
    Ok(no_content())
}

/// Re-attaches to a process's output over a WebSocket.
#[utoipa::path(
    get, path = "/v1/sandboxes/{id}/processes/{pid}/attach", tag = "processes",
    params(("id" = String, Path, description = "Sandbox id"), ("pid" = u32, Path, description = "Process id"), AttachQuery),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol"),
        (status = 400, description = "Not a WebSocket request", body = ErrorBody),
        (status = 401, description = "No or bad API key", body = ErrorBody),
        (status = 404, description = "No such sandbox or process", body = ErrorBody),
        (status = 409, description = "The sandbox is not running", body = ErrorBody),
        (status = 426, description = "The connection cannot be upgraded", body = ErrorBody),
        (status = 500, description = "Server failure", body = ErrorBody),
    )
)]
pub async fn attach_ws(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((id, pid)): ApiPath<(String, u32)>,
    ApiQuery(query): ApiQuery<AttachQuery>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    let (_, live) = state.live_sandbox(&caller, &id).await?;
    let ws = ws.map_err(ws_rejection)?;
    let process = live.attach(pid, query.replay.unwrap_or(true)).await?;
    Ok(ws.on_upgrade(move |socket| stream_process(socket, process, true)))
}

/// An interactive terminal over a WebSocket: binary frames carry terminal
/// bytes both ways; text frames carry resizes and the exit.
#[utoipa::path(
    get, path = "/v1/sandboxes/{id}/pty", tag = "processes",
    params(("id" = String, Path, description = "Sandbox id"), PtyQuery),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol"),
        (status = 400, description = "Not a WebSocket request, or bad query", body = ErrorBody),
        (status = 401, description = "No or bad API key", body = ErrorBody),
        (status = 404, description = "No such sandbox", body = ErrorBody),
        (status = 409, description = "The sandbox is not running", body = ErrorBody),
        (status = 422, description = "The shell cannot start", body = ErrorBody),
        (status = 426, description = "The connection cannot be upgraded", body = ErrorBody),
        (status = 500, description = "Server failure", body = ErrorBody),
    )
)]
pub async fn pty_ws(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<PtyQuery>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    let (_, live) = state.live_sandbox(&caller, &id).await?;
    let ws = ws.map_err(ws_rejection)?;
    let cols = query.cols.unwrap_or(80);
    let rows = query.rows.unwrap_or(24);
    if !(1..=1000).contains(&cols) || !(1..=1000).contains(&rows) {
        return Err(ApiError::bad_request(
            "cols and rows must be between 1 and 1000",
        ));
    }
    let mut command = match query.cmd {
        Some(cmd) => Command::shell(cmd),
        // The user's login shell, as /etc/passwd has it.
        None => Command::shell("exec \"${SHELL:-/bin/sh}\" -l"),
    }
    .pty(rows, cols);
    if let Some(user) = query.user {
        command = command.user(user);
    }
    let process = live.exec(command).await?;
    Ok(ws.on_upgrade(move |socket| pty_session(socket, process)))
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum PtyControl {
    Resize { cols: u16, rows: u16 },
}

async fn pty_session(socket: WebSocket, mut process: Process) {
    let (mut sender, mut receiver) = socket.split();
    let mut input = process.input();
    let mut reader = tokio::spawn(async move {
        while let Some(Ok(message)) = receiver.next().await {
            let Some(sink) = input.as_ref() else {
                if matches!(message, Message::Close(_)) {
                    break;
                }
                continue;
            };
            let outcome = match message {
                Message::Binary(bytes) => sink.write(bytes).await,
                Message::Text(body) => match serde_json::from_str::<PtyControl>(&body) {
                    Ok(PtyControl::Resize { cols, rows }) => {
                        sink.resize(rows.max(1), cols.max(1)).await
                    }
                    // Plain text is typed input too (handy for simple clients).
                    Err(_) => sink.write(body.as_bytes().to_vec()).await,
                },
                Message::Close(_) => break,
                _ => continue,
            };
            if outcome.is_err() {
                // Done with input; the exit reaches the client through the
                // other half.
                input = None;
            }
        }
    });
    loop {
        tokio::select! {
            event = process.next_event() => match event {
                Ok(Some(ProcessEvent::Stdout(data) | ProcessEvent::Stderr(data))) => {
                    if sender.send(Message::Binary(data)).await.is_err() {
                        break;
                    }
                }
                Ok(Some(ProcessEvent::Exited(status))) => {
                    let _ = sender.send(text(&ServerMessage::Exit {
                        exit_code: status.code,
                        signal: status.signal,
                        timed_out: status.timed_out,
                    })).await;
                    break;
                }
                Ok(None) => break,
                Err(error) => {
                    let _ = sender.send(error_message(error.into())).await;
                    break;
                }
            },
            _ = &mut reader => break,
        }
    }
    reader.abort();
    let _ = sender.send(Message::Close(None)).await;
}
