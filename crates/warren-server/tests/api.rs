//! The REST API against a real service with real VMs.

mod support;

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{Api, TestServer, assert_error, processes_mentioning};
use tokio_tungstenite::tungstenite::Message;

async fn ws_connect(
    api: &Api,
    path: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let url = format!("{}{path}", api.url.replacen("http://", "ws://", 1));
    let separator = if path.contains('?') { '&' } else { '?' };
    let (socket, _) =
        tokio_tungstenite::connect_async(format!("{url}{separator}api_key={}", api.key))
            .await
            .expect("websocket connects");
    socket
}

#[tokio::test(flavor = "multi_thread")]
async fn every_endpoint_answers_as_documented() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), 10).await;
    let api = server.admin();

    // Health needs no key (at `/health` and under the API's prefix); the rest does.
    for path in ["/health", "/v1/health"] {
        let response = reqwest::get(format!("{}{path}", server.url)).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let health: Value = response.json().await.unwrap();
        assert_eq!(health["status"], "ok", "{path}");
    }
    let anonymous = Api::new(&server.url, "");
    let (status, body) = anonymous.get("/v1/sandboxes").await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");
    let wrong = Api::new(&server.url, "wrn_not-a-real-key");
    let (status, body) = wrong.get("/v1/sandboxes").await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");
    // X-API-Key works as well as Bearer.
    let response = reqwest::Client::new()
        .get(format!("{}/v1/templates", server.url))
        .header("X-API-Key", &server.admin_key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    // Templates.
    let (status, body) = api.get("/v1/templates").await;
    assert_eq!(status, StatusCode::OK);
    let ids: Vec<&str> = body["templates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&"debian") && ids.contains(&"tiny"), "{body}");
    let (status, body) = api.get("/v1/templates/debian").await;
    assert_eq!(
        (status, body["kind"].as_str()),
        (StatusCode::OK, Some("image"))
    );
    let (status, body) = api.get("/v1/templates/nope").await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");

    // Create: validation first, then a real one.
    let (status, body) = api.post("/v1/sandboxes", json!({"memory_mib": 0})).await;
    assert_error(status, &body, StatusCode::UNPROCESSABLE_ENTITY, "invalid");
    let (status, body) = api.post("/v1/sandboxes", json!({"template": "nope"})).await;
    assert_error(status, &body, StatusCode::UNPROCESSABLE_ENTITY, "invalid");
    let (status, body) = api.post("/v1/sandboxes", json!({"unknown_field": 1})).await;
    assert_error(status, &body, StatusCode::UNPROCESSABLE_ENTITY, "invalid");
    let (status, body) = api
        .post(
            "/v1/sandboxes",
            json!({"template": "tiny", "memory_mib": 128, "auto_pause": true}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(
        (body["auto_pause"].as_bool(), body["auto_resume"].as_bool()),
        (Some(true), Some(false)),
        "{body}"
    );
    let (status, _) = api
        .delete(&format!("/v1/sandboxes/{}", body["id"].as_str().unwrap()))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = api
        .post(
            "/v1/sandboxes",
            json!({"template": "debian", "memory_mib": 384, "timeout_secs": 600, "metadata": {"purpose": "contract"}, "env": {"GREETING": "hi"}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["id"].as_str().unwrap().to_string();
    assert_eq!(body["state"], "running");
    assert_eq!(body["memory_mib"], 384);
    assert_eq!(body["metadata"]["purpose"], "contract");
    assert!(body["expires_at"].is_string());

    // Get and list with filters.
    let (status, body) = api.get(&format!("/v1/sandboxes/{id}")).await;
    assert_eq!(
        (status, body["id"].as_str()),
        (StatusCode::OK, Some(id.as_str()))
    );
    let (_, body) = api
        .get("/v1/sandboxes?state=running&metadata=purpose:contract")
        .await;
    assert_eq!(body["sandboxes"].as_array().unwrap().len(), 1);
    let (_, body) = api.get("/v1/sandboxes?metadata=purpose:other").await;
    assert_eq!(body["sandboxes"].as_array().unwrap().len(), 0);
    let (status, body) = api.get("/v1/sandboxes?state=bogus").await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");
    let (status, body) = api.get("/v1/sandboxes/sb-doesnotexist").await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");

    // Exec: output, exit codes, env from the sandbox, stdin, errors.
    let (status, body) = api
        .post(
            &format!("/v1/sandboxes/{id}/exec"),
            json!({"cmd": "echo $GREETING; echo oops >&2; exit 3"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (
            body["stdout"].as_str(),
            body["stderr"].as_str(),
            body["exit_code"].as_i64()
        ),
        (Some("hi\n"), Some("oops\n"), Some(3))
    );
    let (_, body) = api
        .post(
            &format!("/v1/sandboxes/{id}/exec"),
            json!({"argv": ["tr", "a-z", "A-Z"], "stdin": "shout"}),
        )
        .await;
    assert_eq!(body["stdout"], "SHOUT");
    let (_, body) = api
        .post(
            &format!("/v1/sandboxes/{id}/exec"),
            json!({"cmd": "id -un; pwd", "user": "user"}),
        )
        .await;
    assert_eq!(body["stdout"], "user\n/home/user\n");
    let (status, body) = api
        .post(
            &format!("/v1/sandboxes/{id}/exec"),
            json!({"argv": ["no-such-cmd"]}),
        )
        .await;
    assert_error(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "command_not_found",
    );
    let (status, body) = api
        .post(&format!("/v1/sandboxes/{id}/exec"), json!({}))
        .await;
    assert_error(status, &body, StatusCode::UNPROCESSABLE_ENTITY, "invalid");
    let (_, body) = api
        .post(
            &format!("/v1/sandboxes/{id}/exec"),
            json!({"cmd": "sleep 30", "timeout_secs": 1}),
        )
        .await;
    assert_eq!(body["timed_out"], true);

    // Streaming exec over the WebSocket.
    let mut socket = ws_connect(&api, &format!("/v1/sandboxes/{id}/exec/ws")).await;
    socket
        .send(Message::Text(
            json!({"type": "start", "cmd": "read line; echo got:$line; echo err >&2; exit 5"})
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
    socket
        .send(Message::Text(
            json!({"type": "stdin", "data": BASE64.encode("ping\n")})
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
    let (mut stdout, mut stderr, mut exit) = (String::new(), String::new(), None);
    while let Some(Ok(message)) = socket.next().await {
        let Message::Text(text) = message else {
            continue;
        };
        let event: Value = serde_json::from_str(&text).unwrap();
        match event["type"].as_str().unwrap() {
            "started" => assert!(event["pid"].as_u64().unwrap() > 1),
            "stdout" => stdout.push_str(
                &String::from_utf8(BASE64.decode(event["data"].as_str().unwrap()).unwrap())
                    .unwrap(),
            ),
            "stderr" => stderr.push_str(
                &String::from_utf8(BASE64.decode(event["data"].as_str().unwrap()).unwrap())
                    .unwrap(),
            ),
            "exit" => {
                exit = event["exit_code"].as_i64();
                break;
            }
            other => panic!("unexpected event {other}: {event}"),
        }
    }
    assert_eq!(
        (stdout.as_str(), stderr.as_str(), exit),
        ("got:ping\n", "err\n", Some(5))
    );

    // A non-WebSocket request to a WebSocket endpoint is a clear 400.
    let (status, body) = api.get(&format!("/v1/sandboxes/{id}/exec/ws")).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");

    // PTY: binary frames both ways.
    let mut pty = ws_connect(
        &api,
        &format!("/v1/sandboxes/{id}/pty?cols=90&rows=33&cmd=bash"),
    )
    .await;
    pty.send(Message::Binary(
        b"stty size; echo mark-$((2*21))\n".to_vec().into(),
    ))
    .await
    .unwrap();
    let mut screen = String::new();
    while !screen.contains("mark-42") {
        match tokio::time::timeout(Duration::from_secs(60), pty.next())
            .await
            .expect("pty output")
        {
            Some(Ok(Message::Binary(data))) => screen.push_str(&String::from_utf8_lossy(&data)),
            Some(Ok(_)) => {}
            other => panic!("pty ended: {other:?}; screen: {screen}"),
        }
    }
    assert!(screen.contains("33 90"), "{screen}");
    pty.send(Message::Text(
        json!({"type": "resize", "cols": 120, "rows": 40})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    pty.send(Message::Binary(b"stty size; exit 4\n".to_vec().into()))
        .await
        .unwrap();
    let mut exit_code = None;
    while let Some(Ok(message)) = pty.next().await {
        match message {
            Message::Binary(data) => screen.push_str(&String::from_utf8_lossy(&data)),
            Message::Text(text) => {
                let event: Value = serde_json::from_str(&text).unwrap();
                if event["type"] == "exit" {
                    exit_code = event["exit_code"].as_i64();
                    break;
                }
            }
            _ => {}
        }
    }
    assert!(screen.contains("40 120"), "{screen}");
    assert_eq!(exit_code, Some(4));

    // Background processes.
    let (status, body) = api
        .post(
            &format!("/v1/sandboxes/{id}/processes"),
            json!({"cmd": "cat > /tmp/bg.txt", "stdin": true, "tag": "writer"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let pid = body["pid"].as_u64().unwrap();
    let (_, body) = api.get(&format!("/v1/sandboxes/{id}/processes")).await;
    let entry = body["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pid"] == pid)
        .cloned()
        .unwrap();
    assert_eq!(
        (entry["tag"].as_str(), entry["running"].as_bool()),
        (Some("writer"), Some(true))
    );
    let (status, _) = api
        .post(
            &format!("/v1/sandboxes/{id}/processes/{pid}/stdin"),
            json!({"data": "from the api\n", "close": true}),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let mut content = String::new();
    for _ in 0..100 {
        let (_, body) = api
            .post(
                &format!("/v1/sandboxes/{id}/exec"),
                json!({"cmd": "cat /tmp/bg.txt"}),
            )
            .await;
        content = body["stdout"].as_str().unwrap_or("").to_string();
        if !content.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(content, "from the api\n");
    let (status, body) = api
        .post(
            &format!("/v1/sandboxes/{id}/processes"),
            json!({"cmd": "sleep 1000"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let sleeper = body["pid"].as_u64().unwrap();
    let (status, _) = api
        .post(
            &format!("/v1/sandboxes/{id}/processes/{sleeper}/signal"),
            json!({"signal": 9}),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = api
        .post(
            &format!("/v1/sandboxes/{id}/processes/{sleeper}/signal"),
            json!({"signal": 0}),
        )
        .await;
    assert_error(status, &body, StatusCode::UNPROCESSABLE_ENTITY, "invalid");
    let (status, body) = api
        .post(
            &format!("/v1/sandboxes/{id}/processes/999999/stdin"),
            json!({"data": "x"}),
        )
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");

    // Files: multipart upload, raw upload, download, list, stat, mkdir, rename, remove.
    let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let form = reqwest::multipart::Form::new()
        .text("path", "/home/user/data/blob.bin")
        .text("create_parents", "true")
        .text("user", "user")
        .part(
            "file",
            reqwest::multipart::Part::bytes(payload.clone()).file_name("blob.bin"),
        );
    let response = api
        .http
        .post(format!("{}/v1/sandboxes/{id}/files", api.url))
        .bearer_auth(&api.key)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let info: Value = response.json().await.unwrap();
    assert_eq!(
        (info["size"].as_u64(), info["owner"].as_str()),
        (Some(payload.len() as u64), Some("user"))
    );
    let response = api
        .http
        .get(format!(
            "{}/v1/sandboxes/{id}/files?path=/home/user/data/blob.bin",
            api.url
        ))
        .bearer_auth(&api.key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-length"],
        payload.len().to_string().as_str()
    );
    assert_eq!(response.bytes().await.unwrap().as_ref(), payload.as_slice());
    let response = api
        .http
        .put(format!(
            "{}/v1/sandboxes/{id}/files?path=/tmp/raw.txt&mode=600",
            api.url
        ))
        .bearer_auth(&api.key)
        .body("raw body")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let (_, body) = api
        .get(&format!("/v1/sandboxes/{id}/files/stat?path=/tmp/raw.txt"))
        .await;
    assert_eq!(
        (
            body["size"].as_u64(),
            body["mode"].as_u64(),
            body["type"].as_str()
        ),
        (Some(8), Some(0o600), Some("file"))
    );
    let (status, body) = api
        .post(
            &format!("/v1/sandboxes/{id}/files/mkdir"),
            json!({"path": "/srv/a/b"}),
        )
        .await;
    assert_eq!(
        (status, body["type"].as_str()),
        (StatusCode::OK, Some("dir"))
    );
    let (status, _) = api
        .post(
            &format!("/v1/sandboxes/{id}/files/rename"),
            json!({"from": "/tmp/raw.txt", "to": "/srv/a/b/moved.txt"}),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, body) = api
        .get(&format!(
            "/v1/sandboxes/{id}/files/list?path=/srv/a&depth=1"
        ))
        .await;
    let paths: Vec<&str> = body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert!(
        paths.contains(&"/srv/a/b") && paths.contains(&"/srv/a/b/moved.txt"),
        "{body}"
    );
    let (status, body) = api
        .delete(&format!("/v1/sandboxes/{id}/files?path=/srv/a"))
        .await;
    assert_error(status, &body, StatusCode::CONFLICT, "conflict");
    let (status, _) = api
        .delete(&format!(
            "/v1/sandboxes/{id}/files?path=/srv/a&recursive=true"
        ))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = api
        .get(&format!("/v1/sandboxes/{id}/files/stat?path=/srv/a"))
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    let (status, body) = api
        .get(&format!("/v1/sandboxes/{id}/files/stat?path=../etc"))
        .await;
    assert_error(status, &body, StatusCode::UNPROCESSABLE_ENTITY, "invalid");
    let (status, body) = api
        .get(&format!("/v1/sandboxes/{id}/files?path=/etc"))
        .await;
    assert_error(status, &body, StatusCode::CONFLICT, "conflict");

    // Timeout, logs, pause/resume, events.
    let (status, body) = api
        .post(
            &format!("/v1/sandboxes/{id}/timeout"),
            json!({"timeout_secs": 1200}),
        )
        .await;
    assert_eq!(
        (status, body["timeout_secs"].as_u64()),
        (StatusCode::OK, Some(1200))
    );
    let (status, body) = api
        .post(
            &format!("/v1/sandboxes/{id}/timeout"),
            json!({"timeout_secs": 99_999_999}),
        )
        .await;
    assert_error(status, &body, StatusCode::UNPROCESSABLE_ENTITY, "invalid");
    let response = api
        .http
        .get(format!(
            "{}/v1/sandboxes/{id}/logs?tail_bytes=100000",
            api.url
        ))
        .bearer_auth(&api.key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let log = response.text().await.unwrap();
    assert!(
        log.contains(&format!("warren-init: {id} is up")),
        "console log lacks the init's line: {log}"
    );
    let (status, body) = api
        .post(&format!("/v1/sandboxes/{id}/resume"), json!({}))
        .await;
    assert_error(status, &body, StatusCode::CONFLICT, "conflict");
    let (status, body) = api
        .post(&format!("/v1/sandboxes/{id}/pause"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["sandbox"]["state"], "paused", "{body}");
    assert!(body["memory_bytes"].as_u64().unwrap() > 0, "{body}");
    assert_eq!(body["full"], true, "{body}");
    let (_, body) = api.get(&format!("/v1/sandboxes/{id}")).await;
    assert_eq!(body["state"], "paused");
    // Without auto_resume, work on a paused sandbox is refused.
    let (status, body) = api
        .post(&format!("/v1/sandboxes/{id}/exec"), json!({"cmd": "true"}))
        .await;
    assert_error(status, &body, StatusCode::CONFLICT, "conflict");
    let (status, body) = api
        .post(&format!("/v1/sandboxes/{id}/pause"), json!({}))
        .await;
    assert_error(status, &body, StatusCode::CONFLICT, "conflict");
    let (status, body) = api
        .post(&format!("/v1/sandboxes/{id}/resume"), json!({}))
        .await;
    assert_eq!(
        (status, body["state"].as_str()),
        (StatusCode::OK, Some("running")),
        "{body}"
    );
    let (status, body) = api
        .post(
            &format!("/v1/sandboxes/{id}/exec"),
            json!({"cmd": "echo $GREETING"}),
        )
        .await;
    assert_eq!(
        (status, body["stdout"].as_str()),
        (StatusCode::OK, Some("hi\n")),
        "{body}"
    );

    // Metrics and OpenAPI.
    let response = api
        .http
        .get(format!("{}/metrics", api.url))
        .bearer_auth(&api.key)
        .send()
        .await
        .unwrap();
    let text = response.text().await.unwrap();
    assert!(
        text.contains("warren_http_requests_total")
            && text.contains("warren_sandboxes{state=\"running\"} 1"),
        "{text}"
    );
    let spec: Value = reqwest::get(format!("{}/openapi.json", api.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(spec["openapi"].as_str().unwrap().starts_with("3.1"));
    for path in [
        "/v1/sandboxes",
        "/v1/sandboxes/{id}/exec",
        "/v1/sandboxes/{id}/files",
        "/v1/keys",
        "/health",
    ] {
        assert!(
            spec["paths"][path].is_object(),
            "{path} missing from the OpenAPI document"
        );
    }

    // Delete: 204, then the record is stopped, operations are 409, delete again is idempotent.
    let (status, _) = api.delete(&format!("/v1/sandboxes/{id}")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, body) = api.get(&format!("/v1/sandboxes/{id}")).await;
    assert_eq!(
        (body["state"].as_str(), body["stop_reason"].as_str()),
        (Some("stopped"), Some("killed"))
    );
    let (status, body) = api
        .post(&format!("/v1/sandboxes/{id}/exec"), json!({"cmd": "true"}))
        .await;
    assert_error(status, &body, StatusCode::CONFLICT, "conflict");
    let (status, _) = api.delete(&format!("/v1/sandboxes/{id}")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    // The console log outlives the sandbox.
    let response = api
        .http
        .get(format!("{}/v1/sandboxes/{id}/logs", api.url))
        .bearer_auth(&api.key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.text().await.unwrap().contains("warren-init"));
    let (_, body) = api.get(&format!("/v1/sandboxes/{id}/events")).await;
    let kinds: Vec<&str> = body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.first(), Some(&"sandbox.killed"), "{body}");
    assert!(
        kinds.contains(&"sandbox.created") && kinds.contains(&"sandbox.timeout_changed"),
        "{body}"
    );

    server.stop().await;
    assert!(
        processes_mentioning(dir.path()).is_empty(),
        "VMs left behind"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn teams_never_see_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), 10).await;
    let admin = server.admin();
    let alice = Api::new(&server.url, &admin.new_team_key("alice").await);
    let bob = Api::new(&server.url, &admin.new_team_key("bob").await);
    let id = alice
        .create(json!({"template": "tiny", "memory_mib": 128}))
        .await;

    for (method, path) in [
        ("GET", format!("/v1/sandboxes/{id}")),
        ("DELETE", format!("/v1/sandboxes/{id}")),
        ("POST", format!("/v1/sandboxes/{id}/exec")),
        ("GET", format!("/v1/sandboxes/{id}/files/list?path=/")),
        ("POST", format!("/v1/sandboxes/{id}/timeout")),
        ("GET", format!("/v1/sandboxes/{id}/events")),
        ("GET", format!("/v1/sandboxes/{id}/ports")),
        ("PUT", format!("/v1/sandboxes/{id}/public-ports")),
        ("GET", format!("/v1/sandboxes/{id}/ports/8000/")),
    ] {
        let body = match method {
            "POST" if path.ends_with("exec") => Some(json!({"cmd": "true"})),
            "POST" => Some(json!({"timeout_secs": 5})),
            "PUT" => Some(json!({"ports": [8000]})),
            _ => None,
        };
        let (status, answer) = bob.call(method.parse().unwrap(), &path, body).await;
        assert_error(status, &answer, StatusCode::NOT_FOUND, "not_found");
    }
    let (_, listing) = bob.get("/v1/sandboxes").await;
    assert!(listing["sandboxes"].as_array().unwrap().is_empty());
    let (_, events) = bob.get("/v1/events").await;
    assert!(
        events["events"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["sandbox_id"] != id.as_str())
    );
    // Bob cannot mint keys for Alice's team either, nor see her keys.
    let (status, body) = bob
        .post("/v1/keys", json!({"name": "sneaky", "team": "alice"}))
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    let (_, keys) = bob.get("/v1/keys").await;
    assert!(
        keys["keys"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k["team"] == "bob")
    );
    // Alice still has it, running.
    let (_, body) = alice
        .post(
            &format!("/v1/sandboxes/{id}/exec"),
            json!({"cmd": "echo mine"}),
        )
        .await;
    assert_eq!(body["stdout"], "mine\n");

    // Ports: closed to strangers (and an unknown sandbox looks the same),
    // opened by the sandbox's access token, which opens nothing else.
    let (_, sandbox) = alice.get(&format!("/v1/sandboxes/{id}")).await;
    let token = sandbox["access_token"].as_str().unwrap().to_string();
    assert!(token.starts_with("wat_"), "{sandbox}");
    assert_eq!(sandbox["public_ports"], json!([]));
    let http = reqwest::Client::new();
    let port_url = |sandbox: &str| format!("{}/v1/sandboxes/{sandbox}/ports/8000/", server.url);
    for target in [id.as_str(), "sb-nosuchsandbo"] {
        let stranger = http.get(port_url(target)).send().await.unwrap();
        assert_eq!(stranger.status(), StatusCode::UNAUTHORIZED, "{target}");
    }
    let by_host = http
        .get(format!("{}/", server.url))
        .header("host", format!("8000-{id}.localhost"))
        .send()
        .await
        .unwrap();
    assert_eq!(by_host.status(), StatusCode::UNAUTHORIZED);
    let wrong = http
        .get(port_url(&id))
        .header("x-warren-access-token", "wat_wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    // The token gets through to the sandbox (where nothing listens).
    let opened = http
        .get(port_url(&id))
        .header("x-warren-access-token", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(opened.status(), StatusCode::BAD_GATEWAY);
    let opened: Value = opened.json().await.unwrap();
    assert_eq!(opened["code"], "port_unreachable", "{opened}");
    let as_key = Api::new(&server.url, &token);
    let (status, body) = as_key.get(&format!("/v1/sandboxes/{id}")).await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");
    // Public ports: validated, then open to anyone.
    let public = format!("/v1/sandboxes/{id}/public-ports");
    for bad in [
        json!({"ports": [0]}),
        json!({"ports": (1..=65).collect::<Vec<u16>>()}),
        json!({"ports": "8000"}),
    ] {
        let (status, body) = alice
            .call(reqwest::Method::PUT, &public, Some(bad.clone()))
            .await;
        assert!(status.is_client_error(), "{bad} -> {status} {body}");
    }
    let (status, body) = alice
        .call(
            reqwest::Method::PUT,
            &public,
            Some(json!({"ports": [9000, 8000, 8000]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["public_ports"], json!([8000, 9000]));
    let anyone = http.get(port_url(&id)).send().await.unwrap();
    assert_eq!(
        anyone.status(),
        StatusCode::BAD_GATEWAY,
        "a public port needs no key"
    );

    // A revoked key stops working at once.
    let (_, created) = alice.post("/v1/keys", json!({"name": "temp"})).await;
    let temp = Api::new(&server.url, created["key"].as_str().unwrap());
    assert_eq!(temp.get("/v1/sandboxes").await.0, StatusCode::OK);
    let (status, _) = alice
        .delete(&format!("/v1/keys/{}", created["id"].as_str().unwrap()))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = temp.get("/v1/sandboxes").await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn limits_capacity_and_timeouts_are_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), 1).await;
    let api = server.admin();
    let id = api
        .create(json!({"template": "tiny", "memory_mib": 128, "timeout_secs": 3}))
        .await;
    // The team limit is one running sandbox.
    let (status, body) = api
        .post(
            "/v1/sandboxes",
            json!({"template": "tiny", "memory_mib": 128}),
        )
        .await;
    assert_error(
        status,
        &body,
        StatusCode::TOO_MANY_REQUESTS,
        "limit_exceeded",
    );
    // The reaper kills it at its timeout.
    let mut state = String::new();
    for _ in 0..60 {
        let (_, body) = api.get(&format!("/v1/sandboxes/{id}")).await;
        state = format!(
            "{}/{}",
            body["state"].as_str().unwrap(),
            body["stop_reason"].as_str().unwrap_or("-")
        );
        if state != "running/-" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(state, "stopped/timeout");
    let (_, body) = api.get(&format!("/v1/sandboxes/{id}/events")).await;
    assert_eq!(body["events"][0]["kind"], "sandbox.timeout");
    // More memory than the host can give: 503, not a crash.
    let total = warren_vmm::host::HostCapacity::probe().memory_total_mib;
    let (status, body) = api
        .post(
            "/v1/sandboxes",
            json!({"template": "tiny", "memory_mib": total - 64}),
        )
        .await;
    assert_error(status, &body, StatusCode::SERVICE_UNAVAILABLE, "capacity");
    server.stop().await;
    assert!(
        processes_mentioning(dir.path()).is_empty(),
        "VMs left behind"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn two_hundred_clients_work_on_eight_sandboxes_without_errors() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), 20).await;
    let api = server.admin();
    let creates = (0..8).map(|_| {
        let api = api.clone();
        async move {
            api.create(json!({"template": "tiny", "memory_mib": 128, "timeout_secs": 3600}))
                .await
        }
    });
    let ids: Vec<String> = futures::future::join_all(creates).await;
    let clients = (0..200).map(|client| {
        let api = api.clone();
        let id = ids[client % ids.len()].clone();
        async move {
            let mut failures = Vec::new();
            let (status, body) = api
                .post(
                    &format!("/v1/sandboxes/{id}/exec"),
                    json!({"cmd": format!("echo client-{client}")}),
                )
                .await;
            if status != StatusCode::OK || body["stdout"] != format!("client-{client}\n") {
                failures.push(format!("exec: {status} {body}"));
            }
            let path = format!("/tmp/client-{client}.txt");
            let response = api
                .http
                .put(format!("{}/v1/sandboxes/{id}/files?path={path}", api.url))
                .bearer_auth(&api.key)
                .body(format!("data of {client}"))
                .send()
                .await;
            if !response
                .map(|r| r.status() == StatusCode::OK)
                .unwrap_or(false)
            {
                failures.push("upload failed".into());
            }
            let response = api
                .http
                .get(format!("{}/v1/sandboxes/{id}/files?path={path}", api.url))
                .bearer_auth(&api.key)
                .send()
                .await;
            match response {
                Ok(r) if r.status() == StatusCode::OK => {
                    let text = r.text().await.unwrap_or_default();
                    if text != format!("data of {client}") {
                        failures.push(format!("download returned {text:?}"));
                    }
                }
                other => failures.push(format!("download: {other:?}")),
            }
            let (status, _) = api.get(&format!("/v1/sandboxes/{id}")).await;
            if status != StatusCode::OK {
                failures.push(format!("get: {status}"));
            }
            let (status, _) = api.get("/v1/sandboxes").await;
            if status != StatusCode::OK {
                failures.push(format!("list: {status}"));
            }
            failures
        }
    });
    let results = futures::future::join_all(clients).await;
    let failures: Vec<String> = results.into_iter().flatten().collect();
    assert!(
        failures.is_empty(),
        "{} failures, first: {:?}",
        failures.len(),
        failures.first()
    );
    // Each sandbox got its 25 clients' files.
    for id in &ids {
        let (_, body) = api
            .post(
                &format!("/v1/sandboxes/{id}/exec"),
                json!({"cmd": "ls /tmp | grep -c client-"}),
            )
            .await;
        assert_eq!(body["stdout"], "25\n", "{id}");
    }
    server.stop().await;
    assert!(
        processes_mentioning(dir.path()).is_empty(),
        "VMs left behind"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_keeps_keys_sandboxes_and_templates() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), 10).await;
    let admin = server.admin();
    let team_key = admin.new_team_key("keeper").await;
    let keeper = Api::new(&server.url, &team_key);
    let id = keeper
        .create(json!({"template": "tiny", "memory_mib": 128, "metadata": {"keep": "me"}}))
        .await;
    let admin_key = server.admin_key.clone();
    server.stop().await;
    assert!(
        processes_mentioning(dir.path()).is_empty(),
        "VMs outlived the service"
    );

    let server = TestServer::start(dir.path(), 10).await;
    assert_eq!(
        server.admin_key, admin_key,
        "the admin key changed across a restart"
    );
    let keeper = Api::new(&server.url, &team_key);
    let (status, body) = keeper.get(&format!("/v1/sandboxes/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Its VM did not survive the stop, and the record says so.
    assert_eq!(
        (body["state"].as_str(), body["stop_reason"].as_str()),
        (Some("stopped"), Some("host_shutdown"))
    );
    assert_eq!(body["metadata"]["keep"], "me");
    let (_, body) = keeper.get("/v1/templates").await;
    assert_eq!(body["templates"].as_array().unwrap().len(), 2);
    let (_, body) = keeper.get("/v1/keys").await;
    assert_eq!(body["keys"].as_array().unwrap().len(), 1);
    // And it works as before.
    let id = keeper
        .create(json!({"template": "tiny", "memory_mib": 128}))
        .await;
    let (_, body) = keeper
        .post(
            &format!("/v1/sandboxes/{id}/exec"),
            json!({"cmd": "echo after-restart"}),
        )
        .await;
    assert_eq!(body["stdout"], "after-restart\n");
    server.stop().await;
}
