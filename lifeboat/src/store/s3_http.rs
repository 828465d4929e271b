//! The S3 client's HTTP: the SDK sends its requests through the same
//! hyper-util HTTP/1.1 client as lifeboat's own calls (`https.rs`: our
//! resolver, rustls with ring). The SDK's own client crate brought a second
//! connection pool and an HTTP/2 stack S3 never needs, 0.3 MB of each
//! binary (README "Binary size"; docs/ARCHITECTURE.md §2).
//!
//! What that crate did and this keeps: the connect timeout and read timeout
//! the SDK asks for, and errors sorted the way its retry policy expects
//! (a connection that failed, closed or timed out is tried again; a request
//! the SDK built wrong is not). Not kept: "poisoning" a pooled connection
//! after a transient error. hyper drops a connection that failed, and a
//! request that found its idle connection closed is sent again on a new one.

use std::error::Error as StdError;
use std::time::Duration;

use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient,
    SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::body::SdkBody;
use hyper_util::rt::TokioExecutor;

use crate::https::{self, Connector};

type Hyper = hyper_util::client::legacy::Client<Connector, SdkBody>;

/// The SDK's HTTP client over `tls` (the trust the caller chose).
pub fn client(tls: rustls::ClientConfig) -> SharedHttpClient {
    SharedHttpClient::new(Client { tls })
}

#[derive(Debug, Clone)]
struct Client {
    tls: rustls::ClientConfig,
}

impl HttpClient for Client {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        _components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        // The SDK asks once per client and settings, and keeps the answer:
        // each S3 client (lifeboat has two, with short and long timeouts)
        // gets its own pool.
        let connector = https::connector(self.tls.clone(), settings.connect_timeout());
        SharedHttpConnector::new(Sender {
            hyper: hyper_util::client::legacy::Client::builder(TokioExecutor::new())
                .build(connector),
            read_timeout: settings.read_timeout(),
        })
    }
}

#[derive(Clone)]
struct Sender {
    hyper: Hyper,
    /// From the request sent to the reply's headers.
    read_timeout: Option<Duration>,
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender")
            .field("read_timeout", &self.read_timeout)
            .finish_non_exhaustive()
    }
}

impl HttpConnector for Sender {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let request = match request.try_into_http1x() {
            Ok(r) => r,
            Err(e) => return HttpConnectorFuture::ready(Err(ConnectorError::user(e.into()))),
        };
        let reply = self.hyper.request(request);
        let read_timeout = self.read_timeout;
        HttpConnectorFuture::new(async move {
            let reply = match read_timeout {
                Some(d) => match tokio::time::timeout(d, reply).await {
                    Ok(r) => r,
                    Err(_) => {
                        return Err(ConnectorError::timeout(
                            format!("no reply within the read timeout of {d:?}").into(),
                        ))
                    }
                },
                None => reply.await,
            };
            match reply {
                Ok(r) => HttpResponse::try_from(r.map(SdkBody::from_body_1_x))
                    .map_err(|e| ConnectorError::other(e.into(), None)),
                Err(e) => Err(sort(e)),
            }
        })
    }
}

/// What kind of failure, for the SDK's retry policy.
fn sort(e: hyper_util::client::legacy::Error) -> ConnectorError {
    let io = e.is_connect() || chain(&e).any(|s| s.is::<std::io::Error>());
    let hyper = chain(&e).find_map(|s| s.downcast_ref::<hyper::Error>());
    let timeout = hyper.is_some_and(hyper::Error::is_timeout)
        || chain(&e).any(|s| {
            s.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        });
    if timeout {
        return ConnectorError::timeout(e.into());
    }
    if let Some(h) = hyper {
        if h.is_user() {
            return ConnectorError::user(e.into());
        }
        if h.is_closed() || h.is_canceled() || h.is_incomplete_message() {
            return ConnectorError::io(e.into());
        }
    }
    if io {
        return ConnectorError::io(e.into());
    }
    ConnectorError::other(e.into(), None)
}

fn chain<'a>(
    e: &'a (dyn StdError + 'static),
) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    std::iter::successors(Some(e), |&e| e.source())
}
