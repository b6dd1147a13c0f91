//! A real `warren up` service in the test process, over a private data
//! directory that shares the suite's image cache.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use warren_host::ManagerConfig;
use warren_server::ServerConfig;

/// A running service.
pub struct TestServer {
    pub url: String,
    pub admin_key: String,
    pub data_dir: PathBuf,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), warren_server::ServeError>>>,
}

/// Image cache shared by the suite.
pub use warren_testkit::image_cache;

impl TestServer {
    /// Starts the service on a free port over `data_dir`.
    pub async fn start(data_dir: &Path, max_sandboxes: u32) -> Self {
        let mut manager = ManagerConfig::from_env().expect("WARREN_* environment");
        manager.data_dir = data_dir.to_path_buf();
        manager.image_cache = Some(image_cache());
        manager.ephemeral = true;
        let config = ServerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: data_dir.to_path_buf(),
            database_url: None,
            max_sandboxes_per_team: max_sandboxes,
            snapshot_merge_cap: warren_host::defaults::DEFAULT_MERGE_CAP,
            host_name: "test-host".into(),
            on_shutdown: warren_server::config::ShutdownAction::Kill,
            reconcile_interval: warren_server::config::DEFAULT_RECONCILE_INTERVAL,
            domain: "localhost".parse().expect("domain"),
            manager,
        };
        let (url_tx, url_rx) = oneshot::channel();
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut url_tx = Some(url_tx);
            warren_server::run(
                config,
                async move {
                    let _ = shutdown_rx.await;
                },
                move |started| {
                    if let Some(tx) = url_tx.take() {
                        let _ = tx.send(started.url.clone());
                    }
                },
            )
            .await
        });
        let url = tokio::time::timeout(Duration::from_secs(60), url_rx)
            .await
            .expect("service started in time")
            .expect("service reported its URL");
        let admin_key = std::fs::read_to_string(data_dir.join("admin.key"))
            .expect("admin key file")
            .trim()
            .to_string();
        Self {
            url,
            admin_key,
            data_dir: data_dir.to_path_buf(),
            shutdown: Some(shutdown_tx),
            task: Some(task),
        }
    }

    /// Stops the service gracefully and waits for it.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(120), task)
                .await
                .expect("service stopped in time")
                .expect("service task")
                .expect("service ran without error");
        }
    }

    /// A client with the admin key.
    pub fn admin(&self) -> Api {
        Api::new(&self.url, &self.admin_key)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A tiny API client for tests: raw status + JSON, so tests see exactly
/// what the server answers.
#[derive(Clone)]
pub struct Api {
    pub url: String,
    pub key: String,
    pub http: reqwest::Client,
}

impl Api {
    pub fn new(url: &str, key: &str) -> Self {
        Self {
            url: url.to_string(),
            key: key.to_string(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(600))
                .build()
                .unwrap(),
        }
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request sent");
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::DELETE, path, None).await
    }

    /// Creates a sandbox and returns its id, failing the test otherwise.
    pub async fn create(&self, body: Value) -> String {
        let (status, value) = self.post("/v1/sandboxes", body).await;
        assert_eq!(status, StatusCode::CREATED, "create failed: {value}");
        value["id"].as_str().unwrap().to_string()
    }

    /// A new key for `team` (needs an admin key).
    pub async fn new_team_key(&self, team: &str) -> String {
        let (status, value) = self
            .post("/v1/keys", json!({"name": "test", "team": team}))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{value}");
        value["key"].as_str().unwrap().to_string()
    }
}

/// Asserts an error response has the JSON error shape and the code.
pub fn assert_error(status: StatusCode, body: &Value, expected: StatusCode, code: &str) {
    assert_eq!(status, expected, "body: {body}");
    assert_eq!(body["code"], code, "body: {body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "body: {body}"
    );
}

/// Processes whose command line mentions `path`.
pub use warren_testkit::processes_mentioning;
