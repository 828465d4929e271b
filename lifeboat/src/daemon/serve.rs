//! The sidecar's HTTP endpoint on `LIFEBOAT_LISTEN`: `/metrics`, `/healthz`,
//! `/readyz`, `/status`, and `POST /backup-now` from loopback only (the
//! pod's own containers; the sidecar's `backup-now` command uses it, see
//! [`ask`]).
//!
//! HTTP/1.1 written by hand, one request per connection: four read-only
//! pages and one trigger do not need a server framework, and every
//! resource is bounded (connections, request size, time to send it).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tracing::{debug, info};

use crate::manifest::Manifest;
use crate::metrics;
use crate::status::Status;
use crate::{Error, Result};

/// Connections open at once (each costs a task and up to `REQUEST_MAX`);
/// one more is closed at once rather than queued, so idle connections can
/// never hold the probes up: they are dropped after `REQUEST_TIMEOUT`.
pub const MAX_CONNECTIONS: usize = 256;
/// `POST /backup-now` requests waiting for their backup (minutes, maybe).
/// They wait apart from the connections above, so probes never queue
/// behind them; one more is answered 503.
pub const MAX_WAITING_BACKUPS: usize = 16;
/// The most of a request we read: a request line and a few headers.
pub const REQUEST_MAX: usize = 8 * 1024;
/// A client must send its request head within this (a kubelet probe sends
/// it at once; an idle connection is dropped).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// Where a `backup-now` request waits for the backup that serves it.
pub type Reply = oneshot::Sender<std::result::Result<Manifest, String>>;

pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        Error::Config(vec![crate::config::Problem {
            setting: "LIFEBOAT_LISTEN".into(),
            value: addr.to_string(),
            message: format!(
                "cannot listen there ({e}); choose a free port, or off to serve no endpoint"
            ),
        }])
    })
}

/// What every connection shares.
struct Shared {
    status: Arc<Status>,
    requests: mpsc::Sender<Reply>,
    /// Permits for `backup-now` requests waiting for their backup.
    waiting: Arc<Semaphore>,
    /// The command a person runs (`kubectl exec … -- <command> backup-now`).
    command: &'static str,
}

/// Serves the endpoint on its own task. `requests` takes `backup-now`
/// requests to the loop; `command` is named in the advice to a refused one.
pub fn spawn(
    listener: TcpListener,
    status: Arc<Status>,
    requests: mpsc::Sender<Reply>,
    command: &'static str,
) {
    if let Ok(a) = listener.local_addr() {
        info!(address = %a, "serving /metrics, /healthz, /readyz, /status");
    }
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let shared = Arc::new(Shared {
        status,
        requests,
        waiting: Arc::new(Semaphore::new(MAX_WAITING_BACKUPS)),
        command,
    });
    tokio::spawn(async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors, say: wait a little rather than spin.
                    debug!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                debug!(peer = %peer, "too many connections; closed");
                continue;
            };
            let shared = shared.clone();
            tokio::spawn(async move {
                serve(stream, peer, &shared, permit).await;
            });
        }
    });
}

struct Response {
    code: u16,
    content_type: &'static str,
    body: String,
}

impl Response {
    fn text(code: u16, body: impl Into<String>) -> Self {
        let mut body = body.into();
        body.push('\n');
        Response {
            code,
            content_type: "text/plain; charset=utf-8",
            body,
        }
    }

    fn json(code: u16, v: serde_json::Value) -> Self {
        Response {
            code,
            content_type: "application/json",
            body: v.to_string() + "\n",
        }
    }
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    }
}

async fn serve(
    mut stream: TcpStream,
    peer: SocketAddr,
    shared: &Shared,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let mut head_only = false;
    let response = match tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut stream)).await {
        Err(_) => Response::text(408, "request not received in time"),
        Ok(None) => Response::text(400, "malformed or oversized request"),
        Ok(Some((method, path))) if path == "/backup-now" && method == "POST" => {
            // Waits apart from the connections probes need.
            drop(permit);
            match shared.waiting.clone().try_acquire_owned() {
                Ok(_waiting) => backup_now(peer, shared).await,
                Err(_) => Response::json(
                    503,
                    serde_json::json!({"error": format!("{MAX_WAITING_BACKUPS} backup-now requests are waiting already; try again when they are done")}),
                ),
            }
        }
        Ok(Some((method, path))) => {
            head_only = method == "HEAD";
            route(&method, &path, peer, shared).await
        }
    };
    let head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        response.code,
        reason(response.code),
        response.content_type,
        response.body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    if !head_only {
        let _ = stream.write_all(response.body.as_bytes()).await;
    }
    let _ = stream.shutdown().await;
}

/// Reads up to the blank line that ends the headers; returns method and
/// path (query dropped). The body, if any, is not needed by any route.
async fn read_head(stream: &mut TcpStream) -> Option<(String, String)> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 || buf.len() + n > REQUEST_MAX {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = std::str::from_utf8(&buf).ok()?;
    let mut parts = head.lines().next()?.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    let path = target.split('?').next().unwrap_or_default();
    Some((method.to_string(), path.to_string()))
}

async fn route(method: &str, path: &str, peer: SocketAddr, shared: &Shared) -> Response {
    let status = &shared.status;
    let get = method == "GET" || method == "HEAD";
    match (path, get) {
        ("/metrics", true) => Response {
            code: 200,
            content_type: metrics::CONTENT_TYPE,
            body: status.read(|s| metrics::render(s, Utc::now())),
        },
        ("/healthz", true) => Response::text(200, "ok"),
        ("/readyz", true) => match status.ready() {
            Ok(()) => Response::text(200, "ready"),
            Err(why) => Response::text(503, format!("not ready: {why}")),
        },
        ("/status", true) => Response {
            code: 200,
            content_type: "application/json",
            body: status.to_json(Utc::now()) + "\n",
        },
        ("/backup-now", _) if method == "POST" => backup_now(peer, shared).await,
        ("/metrics" | "/healthz" | "/readyz" | "/status" | "/backup-now", _) => {
            Response::text(405, "method not allowed")
        }
        _ => Response::text(
            404,
            "not found; served here: /metrics, /healthz, /readyz, /status, POST /backup-now",
        ),
    }
}

/// Loopback in every form: on a dual-stack `[::]` listener a local IPv4
/// client shows up as `::ffff:127.0.0.1`, which `is_loopback` says is not.
fn is_loopback(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => v4.is_loopback(),
        std::net::IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

async fn backup_now(peer: SocketAddr, shared: &Shared) -> Response {
    // The port is open to the cluster for scraping; starting backups is
    // for the pod's own containers.
    if !is_loopback(peer.ip()) {
        return Response::json(
            403,
            serde_json::json!({"error": format!("backup-now is accepted from inside the pod only (loopback); run `kubectl exec <pod> -c lifeboat -- {} backup-now`", shared.command)}),
        );
    }
    if let Err(why) = shared.status.backup_blocked() {
        return Response::json(
            409,
            serde_json::json!({"error": format!("{why}; a backup now would record the server without it")}),
        );
    }
    let (tx, rx) = oneshot::channel();
    if shared.requests.send(tx).await.is_err() {
        return Response::json(503, serde_json::json!({"error": "the sidecar is stopping"}));
    }
    match rx.await {
        Ok(Ok(m)) => Response::json(
            200,
            serde_json::json!({"id": m.id, "size": m.size, "entries": m.entries, "sha256": m.sha256}),
        ),
        Ok(Err(e)) => Response::json(500, serde_json::json!({ "error": e })),
        Err(_) => Response::json(
            503,
            serde_json::json!({"error": "the sidecar stopped before the backup finished"}),
        ),
    }
}

/// The client side: `POST /backup-now` on a running sidecar's endpoint;
/// waits for the backup that serves it (a running one, or one it starts).
/// `None` when nothing listens.
pub async fn ask(addr: SocketAddr) -> Result<Option<String>> {
    let url = format!("http://{addr}/backup-now");
    let failed = |why: String| Error::Source(format!("the running sidecar at {addr}: {why}"));
    // Loopback, plain HTTP; no time limit: the answer comes when the
    // backup is done.
    let client = crate::https::Client::public(Duration::from_secs(5)).map_err(failed)?;
    debug!(address = %addr, "asking the running sidecar for a backup");
    let reply = match client.post(&url).send().await {
        Ok(r) => r,
        Err(e) if e.is_connect() => return Ok(None),
        Err(e) => return Err(failed(format!("no answer: {e}"))),
    };
    let code = reply.status();
    let body: serde_json::Value = reply
        .json()
        .await
        .map_err(|e| failed(format!("unreadable answer ({code}): {e}")))?;
    let text = |k: &str| body.get(k).and_then(|v| v.as_str()).map(String::from);
    match (code.is_success(), text("id"), text("error")) {
        (true, Some(id), _) => Ok(Some(id)),
        (_, _, Some(e)) => Err(Error::Source(format!("backup failed: {e}"))),
        _ => Err(failed(format!("unexpected answer {code}: {body}"))),
    }
}
