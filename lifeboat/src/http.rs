//! HTTP plumbing shared by the sources that talk to a database's HTTP API
//! (CouchDB, ArangoDB): one client setup, one way to turn transport errors
//! and error statuses into messages that name the server and the setting
//! to check.

use std::time::Duration;

use reqwest::{Client, RequestBuilder, Response, StatusCode, Url};

use crate::error::error_chain;
use crate::{Error, Result};

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// A server that sends nothing for this long is treated as gone.
pub const READ_TIMEOUT: Duration = Duration::from_secs(120);

/// A reply with an error status, for the caller to judge (404 may be "gone").
pub type Status = (StatusCode, String);

/// How one server is named in messages, and what to check when it fails.
#[derive(Debug, Clone, Copy)]
pub struct Server<'a> {
    /// E.g. `CouchDB at http://127.0.0.1:5984`.
    pub describe: &'a str,
    /// Said when the server cannot be reached.
    pub unreachable_hint: &'a str,
    /// Said on 401/403.
    pub auth_hint: &'a str,
}

impl Server<'_> {
    pub fn client(&self) -> Result<Client> {
        Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .build()
            .map_err(|e| Error::Source(format!("{}: cannot set up HTTP: {e}", self.describe)))
    }

    /// Sends `req`. Transport errors become clear errors; an error status
    /// comes back as `Err((status, body))`.
    pub async fn send(
        &self,
        req: RequestBuilder,
        what: &str,
    ) -> Result<std::result::Result<Response, Status>> {
        let resp = req.send().await.map_err(|e| {
            Error::Source(format!(
                "{}: {what}: {} ({})",
                self.describe,
                error_chain(&e),
                self.unreachable_hint
            ))
        })?;
        if resp.status().is_success() {
            return Ok(Ok(resp));
        }
        let status = resp.status();
        Ok(Err((status, resp.text().await.unwrap_or_default())))
    }

    /// An error status as an error; `reason` is what the server said.
    pub fn status_error(&self, what: &str, status: StatusCode, reason: &str) -> Error {
        let hint = match status.as_u16() {
            401 | 403 => format!(" ({})", self.auth_hint),
            _ => String::new(),
        };
        Error::Source(format!(
            "{}: {what}: HTTP {status}: {reason}{hint}",
            self.describe
        ))
    }
}

/// An http(s) URL with a host, without credentials (they would be logged)
/// and with a trailing `/`. Returns the credentials it held.
pub fn parse_base_url(
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

/// Truncated body text, for a reply that was not the JSON we expected.
pub fn body_excerpt(body: &str) -> String {
    body.chars().take(300).collect()
}
