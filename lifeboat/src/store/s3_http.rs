//! The S3 client's HTTP: the SDK sends its requests through the same
//! hyper-util HTTP/1.1 client as lifeboat's own calls (`https.rs`: our
//! resolver, rustls with ring, one deadline for the whole connection). The
//! SDK's own client crate brought a second connection pool and an HTTP/2
//! stack S3 never needs, 0.3 MB of each binary (README "Binary size";
//! docs/ARCHITECTURE.md §2).
//!
//! What that crate did and this keeps: one pool per timeout settings,
//! reused by every request (the SDK asks for a connector on every attempt
//! and leaves the caching to the client); the connect and read timeouts
//! the SDK asks for; errors sorted the way its retry policy expects (a
//! connection that failed, closed or timed out is tried again; a request
//! the SDK built wrong is not); and "poisoning": after a transient error
//! the SDK has the connection closed, so the retry gets a fresh one,
//! perhaps to another server.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_smithy_runtime_api::client::connection::{CaptureSmithyConnection, ConnectionMetadata};
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient,
    SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::body::SdkBody;
use hyper_util::client::legacy::connect::{capture_connection, CaptureConnection};
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::https::{self, Connector};

type Hyper = hyper_util::client::legacy::Client<Connector, SdkBody>;

/// A pooled connection unused this long is closed: S3 and the load
/// balancers in front of S3-compatible stores drop idle connections after
/// about 20 s, and a request sent on one just dropped fails its attempt.
const POOL_IDLE: Duration = Duration::from_secs(15);

/// The SDK's HTTP client over `tls` (the trust the caller chose).
pub fn client(tls: rustls::ClientConfig) -> SharedHttpClient {
    SharedHttpClient::new(Client {
        tls,
        pools: Arc::default(),
    })
}

type Settings = (Option<Duration>, Option<Duration>);

#[derive(Debug, Clone)]
struct Client {
    tls: rustls::ClientConfig,
    /// One sender (and its pool) per connect and read timeout.
    pools: Arc<Mutex<HashMap<Settings, SharedHttpConnector>>>,
}

impl HttpClient for Client {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        _components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        let key = (settings.connect_timeout(), settings.read_timeout());
        // A poisoned lock only means another thread panicked while adding
        // a sender; the map itself is whole.
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        pools
            .entry(key)
            .or_insert_with(|| {
                let connector = https::connector(self.tls.clone(), key.0);
                SharedHttpConnector::new(Sender {
                    hyper: hyper_util::client::legacy::Client::builder(TokioExecutor::new())
                        .pool_timer(TokioTimer::new())
                        .pool_idle_timeout(POOL_IDLE)
                        .build(connector),
                    read_timeout: key.1,
                })
            })
            .clone()
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
        let mut request = match request.try_into_http1x() {
            Ok(r) => r,
            Err(e) => return HttpConnectorFuture::ready(Err(ConnectorError::user(e.into()))),
        };
        let captured = capture_connection(&mut request);
        if let Some(smithy) = request.extensions().get::<CaptureSmithyConnection>() {
            smithy.set_connection_retriever(move || poisonable(&captured));
        }
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

/// The connection a request went out on, as the SDK asks for it after a
/// transient error, able to take it out of the pool.
fn poisonable(captured: &CaptureConnection) -> Option<ConnectionMetadata> {
    captured.connection_metadata().as_ref()?;
    let captured = captured.clone();
    Some(
        ConnectionMetadata::builder()
            .proxied(false)
            .poison_fn(move || {
                if let Some(c) = captured.connection_metadata().as_ref() {
                    c.poison();
                }
            })
            .build(),
    )
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

/// An error and its causes, an `io::Error`'s payload included (its
/// `source()` skips the payload it carries).
fn chain<'a>(
    e: &'a (dyn StdError + 'static),
) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    std::iter::successors(Some(e), |&e| match e.downcast_ref::<std::io::Error>() {
        Some(io) => io.get_ref().map(|p| p as &(dyn StdError + 'static)),
        None => e.source(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_smithy_runtime_api::client::runtime_components::RuntimeComponentsBuilder;

    /// The SDK asks for a connector on every attempt: the same settings must
    /// get the same one (and its pool), or every request would open a new
    /// connection.
    #[test]
    fn every_attempt_with_the_same_settings_gets_the_same_pool() {
        let tls = https::public_tls().unwrap();
        let client = Client {
            tls,
            pools: Arc::default(),
        };
        let components = RuntimeComponentsBuilder::for_tests().build().unwrap();
        let settings = |s| {
            HttpConnectorSettings::builder()
                .connect_timeout(Duration::from_secs(s))
                .build()
        };
        let _rt = tokio::runtime::Runtime::new().unwrap();
        let _in = _rt.enter();
        for s in [10, 10, 3, 10, 3] {
            client.http_connector(&settings(s), &components);
        }
        assert_eq!(client.pools.lock().unwrap().len(), 2);
    }
}
