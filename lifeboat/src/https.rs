//! One HTTP(S) client setup over the hyper stack the AWS SDK already links:
//! names resolve through [`crate::dns`] (static glibc cannot), TLS is
//! rustls with the ring provider and the roots the caller trusts. A second
//! HTTP library beside it would double the code in the binaries
//! (README, "Binary size"; docs/ARCHITECTURE.md §2).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Request bodies here are small JSON documents, sent whole.
pub type Body = Full<Bytes>;
pub type Client = hyper_util::client::legacy::Client<HttpsConnector<HttpConnector<Resolver>>, Body>;
pub type Response = http::Response<hyper::body::Incoming>;

/// [`crate::dns::lookup`] as the connector wants it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Resolver;

type Addrs = std::vec::IntoIter<SocketAddr>;

impl tower_service::Service<Name> for Resolver {
    type Response = Addrs;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Addrs>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        Box::pin(async move {
            let ips = crate::dns::lookup(name.as_str()).await?;
            Ok(ips
                .into_iter()
                .map(|ip| SocketAddr::new(ip, 0))
                .collect::<Vec<_>>()
                .into_iter())
        })
    }
}

/// The ring provider for every TLS client in the binary (one crypto
/// backend, README "Binary size").
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client speaking http:// and https:// (HTTP/1.1) with `tls`.
pub fn client(tls: rustls::ClientConfig, connect_timeout: Duration) -> Client {
    let mut http = HttpConnector::new_with_resolver(Resolver);
    http.enforce_http(false);
    http.set_connect_timeout(Some(connect_timeout));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(https)
}

/// A response body read whole, or an error once it passes `limit` bytes: a
/// server sending more than any reply of its kind can hold must not grow
/// our memory.
pub async fn read_body(resp: Response, limit: usize) -> Result<Bytes, String> {
    Limited::new(resp.into_body(), limit)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                format!("the reply is larger than {limit} bytes")
            } else {
                format!("reading the reply: {}", crate::error::error_chain(&*e))
            }
        })
}
