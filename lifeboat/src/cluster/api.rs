//! The few Kubernetes REST calls lifeboat makes, as plain HTTP with JSON
//! values: get, merge-patch and watch one pod's metadata, create an Event,
//! list a namespace's ConfigMaps or Secrets a page at a time. A general
//! Kubernetes client with typed objects cost more code than everything else
//! the init container does (README, "Binary size").
//!
//! The pod is asked for as `PartialObjectMetadata` (the `Accept` header
//! below): the API server then sends only its metadata, so a watch event
//! costs its annotations, not a whole Pod spec and status.

use std::time::Duration;

use serde_json::Value;

use super::connection::{Auth, Connection};
use crate::https::{self, Method, StatusCode};

/// Ask for metadata only (API servers since v1.15).
pub const METADATA_ONLY: &str = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1";
const JSON: &str = "application/json";
const MERGE_PATCH: &str = "application/merge-patch+json";
/// A list page holds at most a handful of objects of at most 1 MiB each.
const REPLY_MAX: usize = 64 << 20;
/// Tries of a call the API server answers "busy".
const BUSY_RETRIES: u32 = 3;
/// One watch event of a pod's metadata; more means something is wrong.
const WATCH_LINE_MAX: usize = 4 << 20;

/// A failed call: the API server's `Status` when it sent one, else what
/// went wrong on the way.
#[derive(Debug)]
pub enum ApiError {
    Status {
        code: u16,
        reason: String,
        message: String,
    },
    Other(String),
}

impl ApiError {
    pub fn is_forbidden(&self) -> bool {
        matches!(self, ApiError::Status { code: 403, .. })
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiError::Status {
                code,
                reason,
                message,
            } => write!(f, "{code} {reason}: {message}"),
            ApiError::Other(s) => f.write_str(s),
        }
    }
}

/// A `Status` object (or anything else) as an error.
fn status_error(code: StatusCode, body: &[u8]) -> ApiError {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let text = |k: &str| v.get(k).and_then(Value::as_str).map(String::from);
    ApiError::Status {
        code: code.as_u16(),
        reason: text("reason")
            .or_else(|| code.canonical_reason().map(String::from))
            .unwrap_or_default(),
        message: text("message")
            .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(300)]).into()),
    }
}

/// One API server, with lifeboat's User-Agent on every request.
pub struct Api {
    client: https::Client,
    server: String,
    auth: Auth,
    user_agent: String,
}

impl Api {
    pub fn new(connection: Connection, user_agent: String, connect_timeout: Duration) -> Self {
        Api {
            client: https::Client::new(connection.tls, connect_timeout),
            server: connection.server,
            auth: connection.auth,
            user_agent,
        }
    }

    /// One call, tried again (as client-go and kube-rs do) when the API
    /// server says it is busy: 429, 503 or 504, after its `Retry-After`
    /// (capped) or a short pause. The caller's timeout bounds it all.
    async fn send(
        &self,
        method: Method,
        path: &str,
        accept: &str,
        body: Option<(&'static str, Vec<u8>)>,
    ) -> Result<https::Response, ApiError> {
        let mut pause = Duration::from_millis(500);
        for _ in 1..BUSY_RETRIES {
            match self
                .send_once(method.clone(), path, accept, body.clone())
                .await
            {
                Err((
                    ApiError::Status {
                        code: 429 | 503 | 504,
                        ..
                    },
                    wait,
                )) => {
                    tokio::time::sleep(wait.unwrap_or(pause).min(Duration::from_secs(5))).await;
                    pause *= 2;
                }
                other => return other.map_err(|(e, _)| e),
            }
        }
        self.send_once(method, path, accept, body)
            .await
            .map_err(|(e, _)| e)
    }

    /// One try; an error status comes with the server's `Retry-After`.
    async fn send_once(
        &self,
        method: Method,
        path: &str,
        accept: &str,
        body: Option<(&'static str, Vec<u8>)>,
    ) -> Result<https::Response, (ApiError, Option<Duration>)> {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.server))
            .header("accept", accept)
            .header("user-agent", &self.user_agent);
        if let Some(auth) = self.auth.header().map_err(|e| (ApiError::Other(e), None))? {
            req = req.header("authorization", auth);
        }
        if let Some((content_type, bytes)) = body {
            req = req.header("content-type", content_type).body(bytes);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| (ApiError::Other(format!("{}{path}: {e}", self.server)), None))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let code = resp.status();
        let wait = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = resp.bytes_up_to(64 << 10).await.unwrap_or_default();
        Err((status_error(code, &body), wait))
    }

    async fn json(
        &self,
        method: Method,
        path: &str,
        accept: &str,
        body: Option<(&'static str, Vec<u8>)>,
    ) -> Result<Value, ApiError> {
        let resp = self.send(method, path, accept, body).await?;
        let bytes = resp
            .bytes_up_to(REPLY_MAX)
            .await
            .map_err(|e| ApiError::Other(format!("{path}: {e}")))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::Other(format!("{path}: unexpected reply: {e}")))
    }

    pub async fn get(&self, path: &str, accept: &str) -> Result<Value, ApiError> {
        self.json(Method::GET, path, accept, None).await
    }

    pub async fn merge_patch(
        &self,
        path: &str,
        accept: &str,
        patch: &Value,
    ) -> Result<Value, ApiError> {
        let body = (MERGE_PATCH, patch.to_string().into_bytes());
        self.json(Method::PATCH, path, accept, Some(body)).await
    }

    pub async fn create(&self, path: &str, object: &Value) -> Result<Value, ApiError> {
        let body = (JSON, object.to_string().into_bytes());
        self.json(Method::POST, path, JSON, Some(body)).await
    }

    /// A watch: events (`{"type": …, "object": …}`) one at a time, until
    /// the server ends the stream.
    pub async fn watch(&self, path: &str, accept: &str) -> Result<Watch, ApiError> {
        let resp = self.send(Method::GET, path, accept, None).await?;
        Ok(Watch {
            resp,
            buf: Vec::new(),
        })
    }
}

/// An open watch stream, read a line (one JSON event) at a time.
pub struct Watch {
    resp: https::Response,
    buf: Vec<u8>,
}

impl Watch {
    /// The next event, `None` once the server ended the watch.
    pub async fn next(&mut self) -> Result<Option<Value>, ApiError> {
        loop {
            if let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return serde_json::from_slice(&line)
                    .map(Some)
                    .map_err(|e| ApiError::Other(format!("unexpected watch event: {e}")));
            }
            if self.buf.len() > WATCH_LINE_MAX {
                return Err(ApiError::Other(format!(
                    "a watch event longer than {WATCH_LINE_MAX} bytes"
                )));
            }
            let chunk = self
                .resp
                .chunk()
                .await
                .map_err(|e| ApiError::Other(format!("the watch broke: {e}")))?;
            let Some(data) = chunk else {
                // A last event without its newline still counts.
                if self.buf.iter().all(u8::is_ascii_whitespace) {
                    return Ok(None);
                }
                self.buf.push(b'\n');
                continue;
            };
            self.buf.extend_from_slice(&data);
        }
    }
}

/// `s` percent-encoded for a URL's query (a continue token is base64).
pub fn query_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_reply_reads_as_code_reason_and_message() {
        let body = br#"{"kind":"Status","status":"Failure","message":"pods \"x\" is forbidden: User cannot get","reason":"Forbidden","code":403}"#;
        let e = status_error(StatusCode::FORBIDDEN, body);
        assert!(e.is_forbidden());
        assert_eq!(
            e.to_string(),
            "403 Forbidden: pods \"x\" is forbidden: User cannot get"
        );
        let e = status_error(StatusCode::BAD_GATEWAY, b"<html>nope</html>");
        assert_eq!(e.to_string(), "502 Bad Gateway: <html>nope</html>");
        assert_eq!(query_value("a+b/c=="), "a%2Bb%2Fc%3D%3D");
    }

    /// A FAKE API server (HTTP/1.1 on 127.0.0.1, keep-alive): answers
    /// each request with the next status of `script` and counts them.
    fn busy_server(script: Vec<u16>) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::io::{BufRead, BufReader, Write};
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = count.clone();
        std::thread::spawn(move || {
            let mut script = script.into_iter();
            for stream in listener.incoming() {
                let mut stream = stream.unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        break;
                    }
                    if line != "\r\n" {
                        continue;
                    }
                    seen.fetch_add(1, Ordering::SeqCst);
                    let code = script.next().unwrap_or(200);
                    let body = if code == 200 {
                        "{}".to_string()
                    } else {
                        format!(
                            r#"{{"kind":"Status","reason":"TooManyRequests","message":"busy","code":{code}}}"#
                        )
                    };
                    let reply = format!(
                        "HTTP/1.1 {code} X\r\nretry-after: 0\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    stream.write_all(reply.as_bytes()).unwrap();
                }
            }
        });
        (url, count)
    }

    fn api(server: String) -> Api {
        let connection = Connection {
            server,
            tls: https::public_tls().unwrap(),
            auth: Auth::None,
        };
        Api::new(connection, "lifeboat/test".into(), Duration::from_secs(2))
    }

    #[tokio::test]
    async fn a_busy_api_server_is_asked_again_a_few_times() {
        use std::sync::atomic::Ordering;
        let (url, count) = busy_server(vec![429, 503]);
        let v = api(url).get("/api/v1/x", JSON).await.unwrap();
        assert_eq!(v, serde_json::json!({}));
        assert_eq!(count.load(Ordering::SeqCst), 3);

        let (url, count) = busy_server(vec![504, 504, 504, 504]);
        let err = api(url).get("/api/v1/x", JSON).await.unwrap_err();
        assert!(err.to_string().starts_with("504 "), "{err}");
        assert_eq!(count.load(Ordering::SeqCst), BUSY_RETRIES as usize);

        let (url, count) = busy_server(vec![403]);
        assert!(api(url)
            .get("/api/v1/x", JSON)
            .await
            .unwrap_err()
            .is_forbidden());
        assert_eq!(count.load(Ordering::SeqCst), 1, "a refusal is not busy");
    }
}
