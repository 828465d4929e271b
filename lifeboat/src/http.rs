//! HTTP plumbing shared by the sources that talk to a database's HTTP API
//! (CouchDB, ArangoDB): one endpoint type holding the URL and credentials,
//! one client setup, one way to turn transport errors and error statuses
//! into messages that name the server and the setting to check.

use std::time::Duration;

use url::Url;

use crate::https::{Client, Method, RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::error_chain;
use crate::{Error, Result};

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// A server that sends nothing for this long is treated as gone.
pub const READ_TIMEOUT: Duration = Duration::from_secs(120);

/// A reply with an error status, for the caller to judge (404 may be "gone").
pub type Status = (StatusCode, String);

/// The most of an error reply's body kept for the message: its start says
/// why; a server sending megabytes of HTML must not grow our memory.
pub const ERROR_BODY_KEEP: usize = 4096;

/// What a server is called in messages and what a person should check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kind {
    /// `CouchDB`, `ArangoDB`.
    pub name: &'static str,
    pub default_url: &'static str,
    /// Said when the server cannot be reached.
    pub unreachable_hint: &'static str,
    /// Said on 401/403.
    pub auth_hint: &'static str,
    /// Fields of an error reply that say why, joined with `: `.
    pub reason_fields: &'static [&'static str],
}

/// One server's HTTP API: where it is, who we are to it (never logged), and
/// how its failures are put into words.
#[derive(Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Without credentials, with a trailing `/`.
    pub url: Url,
    pub user: Option<String>,
    pub password: Option<String>,
    kind: Kind,
    /// E.g. `CouchDB at http://127.0.0.1:5984`.
    label: String,
}

/// Never the password: settings end up in debug logs.
impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct(self.kind.name)
            .field("url", &self.url.as_str())
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Endpoint {
    /// `url` (default `kind.default_url`) may hold credentials; they are
    /// moved out of it, and `user` / `password` given here win over them.
    pub fn new(
        kind: Kind,
        url: Option<&str>,
        user: Option<&str>,
        password: Option<&str>,
    ) -> std::result::Result<Self, String> {
        let (url, url_user, url_password) =
            parse_base_url(url.unwrap_or(kind.default_url), kind.default_url)?;
        let label = format!("{} at {}", kind.name, url.as_str().trim_end_matches('/'));
        Ok(Endpoint {
            url,
            user: user.map(String::from).or(url_user),
            password: password.map(String::from).or(url_password),
            kind,
            label,
        })
    }

    pub fn describe(&self) -> &str {
        &self.label
    }

    /// An error about this server: `<label>: <what>: <detail>`.
    pub fn error(&self, what: &str, detail: impl std::fmt::Display) -> Error {
        Error::Source(format!("{}: {what}: {detail}", self.label))
    }

    pub fn client(&self) -> Result<Client> {
        Client::public(CONNECT_TIMEOUT)
            .map(|c| c.idle_timeout(READ_TIMEOUT))
            .map_err(|e| self.error("setting up HTTP", e))
    }

    /// `base/<segment>/<segment>?query`, each segment percent-encoded, so a
    /// database named `a/b` is one segment.
    pub fn url_of(&self, segments: &[&str], query: &[(&str, &str)]) -> Url {
        let mut u = self.url.clone();
        {
            let mut path = u.path_segments_mut().expect("http URLs have paths");
            path.pop_if_empty();
            path.extend(segments);
        }
        if !query.is_empty() {
            u.query_pairs_mut().extend_pairs(query);
        }
        u
    }

    /// A request asking for JSON, with basic auth when a user is set.
    pub fn request(
        &self,
        client: &Client,
        method: Method,
        segments: &[&str],
        query: &[(&str, &str)],
    ) -> RequestBuilder {
        let mut r = client
            .request(method, self.url_of(segments, query))
            .header("Accept", "application/json");
        if let Some(user) = &self.user {
            r = r.basic_auth(user, self.password.as_ref());
        }
        r
    }

    /// Sends `req`. Transport errors become clear errors; an error status
    /// comes back as `Err((status, body))`, the body cut at
    /// [`ERROR_BODY_KEEP`].
    pub async fn send(
        &self,
        req: RequestBuilder,
        what: &str,
    ) -> Result<std::result::Result<Response, Status>> {
        let mut resp = req.send().await.map_err(|e| {
            self.error(
                what,
                format!("{} ({})", error_chain(&e), self.kind.unreachable_hint),
            )
        })?;
        if resp.status().is_success() {
            return Ok(Ok(resp));
        }
        let status = resp.status();
        let mut body = Vec::new();
        while let Ok(Some(chunk)) = resp.chunk().await {
            body.extend_from_slice(&chunk);
            if body.len() >= ERROR_BODY_KEEP {
                body.truncate(ERROR_BODY_KEEP);
                break;
            }
        }
        Ok(Err((status, String::from_utf8_lossy(&body).into_owned())))
    }

    /// An error status as an error, with what the server said and, on
    /// 401/403, which settings to check.
    pub fn status_error(&self, what: &str, status: StatusCode, body: &str) -> Error {
        let said: Vec<String> = serde_json::from_str::<Value>(body)
            .ok()
            .map(|v| {
                self.kind
                    .reason_fields
                    .iter()
                    .filter_map(|f| v.get(*f)?.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        let reason = if said.is_empty() {
            body.chars().take(300).collect()
        } else {
            said.join(": ")
        };
        let hint = match status.as_u16() {
            401 | 403 => format!(" ({})", self.kind.auth_hint),
            _ => String::new(),
        };
        self.error(what, format!("HTTP {status}: {reason}{hint}"))
    }

    /// Sends `req` and reads its small JSON reply (no body reads as
    /// `null`); `Ok(None)` on 404.
    pub async fn fetch_json<T: DeserializeOwned>(
        &self,
        req: RequestBuilder,
        what: &str,
    ) -> Result<Option<T>> {
        match self.send(req, what).await? {
            Ok(resp) => {
                let bytes = resp.bytes().await.map_err(|e| self.error(what, e))?;
                let text: &[u8] = if bytes.is_empty() { b"null" } else { &bytes };
                serde_json::from_slice(text)
                    .map(Some)
                    .map_err(|e| self.error(what, format!("unexpected reply: {e}")))
            }
            Err((StatusCode::NOT_FOUND, _)) => Ok(None),
            Err((status, body)) => Err(self.status_error(what, status, &body)),
        }
    }

    /// A GET of `segments` with a small JSON reply; `Ok(None)` on 404.
    pub async fn get_json<T: DeserializeOwned>(
        &self,
        client: &Client,
        segments: &[&str],
        query: &[(&str, &str)],
        what: &str,
    ) -> Result<Option<T>> {
        self.fetch_json(self.request(client, Method::GET, segments, query), what)
            .await
    }
}

/// An http(s) URL with a host, without credentials (they would be logged)
/// and with a trailing `/`. Returns the credentials it held.
fn parse_base_url(
    raw: &str,
    example: &str,
) -> std::result::Result<(Url, Option<String>, Option<String>), String> {
    let mut url = Url::parse(raw.trim())
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
        .ok_or_else(|| format!("accepted: an http:// or https:// URL, e.g. {example}"))?;
    let user = Some(url.username().to_string()).filter(|u| !u.is_empty());
    let password = url.password().map(String::from);
    let _ = url.set_username("");
    let _ = url.set_password(None);
    if !url.path().ends_with('/') {
        let p = format!("{}/", url.path());
        url.set_path(&p);
    }
    Ok((url, user, password))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIND: Kind = Kind {
        name: "Test",
        default_url: "http://127.0.0.1:1",
        unreachable_hint: "",
        auth_hint: "check TEST_USER",
        reason_fields: &["error", "reason"],
    };

    #[test]
    fn credentials_never_show_and_errors_say_why() {
        let e = Endpoint::new(KIND, Some("http://u:s3cret@db:5984/x"), None, None).unwrap();
        assert_eq!(e.describe(), "Test at http://db:5984/x");
        assert!(!format!("{e:?}").contains("s3cret"), "{e:?}");
        let err = e.status_error(
            "reading",
            StatusCode::UNAUTHORIZED,
            r#"{"error":"unauthorized","reason":"Name or password is incorrect."}"#,
        );
        assert_eq!(
            err.to_string(),
            "source: Test at http://db:5984/x: reading: HTTP 401 Unauthorized: unauthorized: Name or password is incorrect. (check TEST_USER)"
        );
    }
}
