//! A headless Chromium driven over the DevTools protocol (a WebSocket): enough to load a page,
//! read it while it updates itself, and take a screenshot. Needs `chromium` (Debian's package;
//! `.ci/run` installs it).

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub struct Browser {
    _child: tokio::process::Child,
    _profile: tempfile::TempDir,
    socket: Socket,
    next_id: u64,
}

fn executable() -> String {
    for name in ["chromium", "chromium-browser", "google-chrome", "chrome"] {
        if let Some(dir) = std::env::var_os("PATH")
            .iter()
            .flat_map(std::env::split_paths)
            .find(|d| d.join(name).is_file())
        {
            return dir.join(name).display().to_string();
        }
    }
    panic!("chromium is not installed: apt-get install chromium (.ci/run does this)");
}

impl Browser {
    /// Starts a headless browser showing `url`.
    pub async fn open(url: &str) -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let profile = tempfile::tempdir().unwrap();
        let child = tokio::process::Command::new(executable())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--hide-scrollbars",
                "--window-size=1280,800",
                &format!("--remote-debugging-port={port}"),
                &format!("--user-data-dir={}", profile.path().display()),
                url,
            ])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("could not start chromium");
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let ws = crate::helpers::eventually(
            "the browser's page target",
            Duration::from_secs(30),
            || {
                let client = client.clone();
                async move {
                    let targets: Value = client
                        .get(format!("http://127.0.0.1:{port}/json/list"))
                        .send()
                        .await
                        .ok()?
                        .json()
                        .await
                        .ok()?;
                    targets
                    .as_array()?
                    .iter()
                    .find(|t| t["type"] == "page")?["webSocketDebuggerUrl"]
                    .as_str()
                    .map(str::to_owned)
                }
            },
        )
        .await;
        let (socket, _) = tokio_tungstenite::connect_async(ws.as_str()).await.unwrap();
        Browser {
            _child: child,
            _profile: profile,
            socket,
            next_id: 1,
        }
    }

    /// Calls a DevTools method and returns its result.
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let request = json!({ "id": id, "method": method, "params": params });
        self.socket
            .send(Message::text(request.to_string()))
            .await
            .unwrap();
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(30), self.socket.next())
                .await
                .expect("the browser did not answer")
                .expect("the browser closed the connection")
                .unwrap();
            let Message::Text(text) = msg else { continue };
            let reply: Value = serde_json::from_str(&text).unwrap();
            if reply["id"] == id {
                assert!(reply.get("error").is_none(), "{method}: {reply}");
                return reply["result"].clone();
            }
        }
    }

    /// Evaluates a JavaScript expression in the page and returns its value.
    pub async fn eval(&mut self, expression: &str) -> Value {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true }),
            )
            .await;
        result["result"]["value"].clone()
    }

    /// Evaluates `expression` until it is neither `null` nor `false` (polling, with a deadline)
    /// and returns that value.
    pub async fn wait_for(&mut self, what: &str, within: Duration, expression: &str) -> Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let value = self.eval(expression).await;
            if !value.is_null() && value != Value::Bool(false) {
                return value;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out after {within:?} waiting for {what} ({expression})"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A PNG of the page as it is shown.
    pub async fn screenshot(&mut self) -> Vec<u8> {
        use base64::Engine;
        let shot = self
            .call("Page.captureScreenshot", json!({ "format": "png" }))
            .await;
        base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap()
    }
}
