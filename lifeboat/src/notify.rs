//! `LIFEBOAT_NOTIFY_URL`: one JSON POST per failed backup (and per success
//! with `LIFEBOAT_NOTIFY_ON=always`), retried with backoff while the
//! receiver is down or answers 5xx/429. A Slack-compatible body with
//! `LIFEBOAT_NOTIFY_FORMAT=slack`.

use std::time::Duration;

use serde_json::{json, Value};
use tracing::{info, warn};

use crate::config::{Notify, NotifyFormat, NotifyOn, Settings};
use crate::manifest::Manifest;
use crate::Error;

/// Attempts per message: the first and four retries.
pub const ATTEMPTS: u32 = 5;
/// Pause before the first retry; doubled before each next one (1+2+4+8 s).
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Per attempt, connect to answer.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Whether `result` is worth a message under `LIFEBOAT_NOTIFY_ON`. A
/// cancelled backup (shutdown) is neither failure nor success.
pub fn wanted(n: &Notify, result: &Result<Manifest, Error>) -> bool {
    match result {
        Err(Error::Cancelled) => false,
        Err(_) => true,
        Ok(_) => n.on == NotifyOn::Always,
    }
}

/// The message body. The JSON form's fields are documented in the README.
pub fn body(
    format: NotifyFormat,
    settings: &Settings,
    pod: Option<&str>,
    result: &Result<Manifest, Error>,
) -> Value {
    let who = format!("{}/{}", settings.namespace, settings.name);
    match format {
        NotifyFormat::Json => {
            let mut v = json!({
                "event": if result.is_ok() { "backup_succeeded" } else { "backup_failed" },
                "name": settings.name,
                "namespace": settings.namespace,
                "pod": pod,
                "source": settings.source.kind.as_str(),
                "at": chrono::Utc::now(),
            });
            match result {
                Ok(m) => {
                    v["id"] = json!(m.id);
                    v["started_at"] = json!(m.started_at);
                    v["finished_at"] = json!(m.finished_at);
                    v["size"] = json!(m.size);
                    v["entries"] = json!(m.entries);
                    v["bytes_in"] = json!(m.bytes_in);
                }
                Err(e) => v["error"] = json!(e.to_string()),
            }
            v
        }
        NotifyFormat::Slack => json!({
            "text": match result {
                Ok(m) => format!(
                    ":white_check_mark: lifeboat backup of {who} succeeded: {} ({} entries, {} bytes stored)",
                    m.id, m.entries, m.size
                ),
                Err(e) => format!(":x: lifeboat backup of {who} failed: {e}"),
            }
        }),
    }
}

/// Posts `body`, retrying transient failures. Returns how many attempts it took.
pub async fn send(n: &Notify, body: &Value) -> Result<u32, String> {
    let client = crate::https::Client::public(TIMEOUT)
        .map_err(|e| format!("setting up HTTP: {e}"))?
        .timeout(TIMEOUT);
    // `https://user:pw@host/…`: the credentials go as Basic auth, not in
    // the request line (nor in the connection pool's key).
    let mut url = n.url.clone();
    let user = url.username().to_string();
    let password = url.password().map(String::from);
    let _ = url.set_username("");
    let _ = url.set_password(None);
    let mut pause = FIRST_BACKOFF;
    let mut last = String::new();
    for attempt in 1..=ATTEMPTS {
        let mut req = client.post(url.as_str()).json(body);
        if !user.is_empty() || password.is_some() {
            req = req.basic_auth(&user, password.as_ref());
        }
        // Errors are shown without their URL: it is often the secret.
        match req.send().await {
            Ok(r) if r.status().is_success() => return Ok(attempt),
            Ok(r) => {
                let status = r.status();
                last = format!("answered {status}");
                if !(status.is_server_error() || status.as_u16() == 429) {
                    break;
                }
            }
            Err(e) => {
                last = if e.is_timeout() {
                    format!("no answer within {}s", TIMEOUT.as_secs())
                } else if e.is_connect() {
                    "cannot connect".into()
                } else {
                    "request failed".into()
                };
            }
        }
        if attempt < ATTEMPTS {
            tokio::time::sleep(pause).await;
            pause *= 2;
        }
    }
    Err(last)
}

/// A message ready to go: built while the result is at hand, delivered
/// later (the sidecar sends it in the background, `backup-now` waits).
pub struct Message {
    notify: Notify,
    body: Value,
}

/// The message `result` calls for under the settings, if any.
pub fn message(settings: &Settings, result: &Result<Manifest, Error>) -> Option<Message> {
    let n = settings.ops.notify.as_ref()?;
    if !wanted(n, result) {
        return None;
    }
    let pod = std::env::var("POD_NAME").ok();
    Some(Message {
        notify: n.clone(),
        body: body(n.format, settings, pod.as_deref(), result),
    })
}

/// The message for a restored dump the server refused (`event:
/// "load_refused"`): always sent when notifications are on, as a failure is.
pub fn load_refused(settings: &Settings, id: &str, error: &str) -> Option<Message> {
    let text = format!(
        ":x: lifeboat could not load restored dump {id} into {}/{}: {error}",
        settings.namespace, settings.name
    );
    let fields = json!({ "at": chrono::Utc::now(), "id": id, "error": error });
    event_message(settings, "load_refused", fields, text)
}

/// The message for a failed restore drill (`event: "drill_failed"`):
/// always sent when notifications are on, as a failure is.
pub fn drill_failed(settings: &Settings, d: &crate::status::DrillState) -> Option<Message> {
    let output = d.output_tail.as_deref().unwrap_or_default().trim();
    let text = format!(
        ":x: lifeboat restore drill of {} for {}/{} {} ({}): `{}` printed: {output}",
        d.id,
        settings.namespace,
        settings.name,
        d.verdict.as_str().to_uppercase(),
        d.verdict.meaning(),
        d.check
    );
    let fields = json!({
        "at": d.at, "id": d.id, "check": d.check, "output": output, "verdict": d.verdict,
    });
    event_message(settings, "drill_failed", fields, text)
}

/// The message for a WAL slot dropped or invalidated with WAL never
/// archived, by lifeboat or by PostgreSQL, as `why` says (`event:
/// "wal_slot_dropped"`): always sent when notifications are on.
pub fn wal_slot_dropped(settings: &Settings, why: &str) -> Option<Message> {
    let text = format!(
        ":warning: the WAL archive of {}/{} lost WAL that was never archived: {why}",
        settings.namespace, settings.name
    );
    let fields = json!({ "at": chrono::Utc::now(), "error": why });
    event_message(settings, "wal_slot_dropped", fields, text)
}

/// A message outside the backup results: the pod's common fields plus
/// `fields` as JSON, or `text` for Slack.
fn event_message(settings: &Settings, event: &str, fields: Value, text: String) -> Option<Message> {
    let n = settings.ops.notify.as_ref()?;
    let body = match n.format {
        NotifyFormat::Json => {
            let mut body = json!({
                "event": event,
                "name": settings.name,
                "namespace": settings.namespace,
                "pod": std::env::var("POD_NAME").ok(),
                "source": settings.source.kind.as_str(),
            });
            if let (Some(b), Value::Object(f)) = (body.as_object_mut(), fields) {
                b.extend(f);
            }
            body
        }
        NotifyFormat::Slack => json!({ "text": text }),
    };
    Some(Message {
        notify: n.clone(),
        body,
    })
}

impl Message {
    /// Sends it, retrying, and logs how it went.
    pub async fn deliver(self) {
        let n = &self.notify;
        match send(n, &self.body).await {
            Ok(attempts) => info!(receiver = %n.shown_url(), attempts, "notification sent"),
            Err(why) => warn!(
                receiver = %n.shown_url(),
                attempts = ATTEMPTS,
                "notification not delivered: {why}; check LIFEBOAT_NOTIFY_URL"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slack_body_has_text() {
        let settings = crate::config::Settings::from_inputs(
            &crate::config::Inputs::from_env(
                [
                    ("LIFEBOAT_PATHS", "/data"),
                    ("LIFEBOAT_TARGETS", "file:///backup"),
                    ("HOSTNAME", "web-0"),
                    ("LIFEBOAT_ANNOTATIONS_FILE", "/nonexistent/a"),
                ]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ),
            crate::config::Role::Backup,
        )
        .unwrap();
        let b = body(
            NotifyFormat::Slack,
            &settings,
            None,
            &Err(Error::Source("disk on fire".into())),
        );
        let text = b["text"].as_str().unwrap();
        assert!(text.contains("default/web-0") && text.contains("disk on fire"));
    }

    /// `https://user:pw@host/…` sends Basic auth, and the credentials are
    /// not in the request line.
    #[tokio::test]
    async fn credentials_in_the_url_go_as_basic_auth() {
        use std::io::Write;
        let (tx, rx) = std::sync::mpsc::channel();
        let base = crate::https::fake_server::serve_once(move |head, _, stream| {
            stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                .unwrap();
            tx.send(head).unwrap();
        });
        let base = base.trim_start_matches("http://");
        let n = Notify {
            url: url::Url::parse(&format!("http://hook:s3cret@{base}/hook")).unwrap(),
            on: crate::config::NotifyOn::Always,
            format: NotifyFormat::Json,
        };
        assert_eq!(send(&n, &serde_json::json!({"ok": true})).await, Ok(1));
        let head = rx.recv().unwrap();
        assert!(head.starts_with("POST /hook HTTP/1.1\r\n"), "{head}");
        assert!(
            head.contains("authorization: Basic aG9vazpzM2NyZXQ="),
            "{head}"
        );
        assert!(!head.contains("s3cret"), "{head}");
    }
}
