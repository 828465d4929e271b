//! The one HTTP(S) client of the binary: lifeboat's own calls (the
//! Kubernetes API, CouchDB, ArangoDB, the notification webhook,
//! `backup-now` to a running sidecar) and, through `store/s3_http.rs`, the
//! S3 client's requests. A second HTTP library beside it doubled that code
//! in the binaries (README, "Binary size"; docs/ARCHITECTURE.md §2).
//!
//! Names resolve through [`crate::dns`] (static glibc cannot); TLS is rustls
//! with the ring provider and the public roots unless the caller gives its
//! own. HTTP/1.1 only, no redirects followed, no `HTTP(S)_PROXY`: the
//! servers lifeboat talks to are in the pod or named by a setting, and
//! database credentials must never go to a proxy by accident.

use std::fmt::Display;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::HeaderValue;
pub use http::{Method, StatusCode};
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;
use serde::Serialize;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// A request body: a whole buffer or a stream.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;
type Hyper = hyper_util::client::legacy::Client<Connector, Body>;

/// The most of a reply read whole ([`Response::bytes`], [`Response::json`]):
/// replies read that way are small documents; a server sending more must
/// not grow our memory.
pub const WHOLE_REPLY_MAX: usize = 64 << 20;

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

/// The bundled public roots (`webpki-root-certs`).
pub fn public_roots() -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(webpki_root_certs::TLS_SERVER_ROOT_CERTS.iter().cloned());
    roots
}

/// TLS with the ring provider trusting `roots`; the caller says who we are.
pub fn tls_trusting(
    roots: rustls::RootCertStore,
) -> Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert>, String> {
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up: {e}"))?
        .with_root_certificates(roots))
}

/// TLS trusting the bundled public roots, without a client certificate.
pub fn public_tls() -> Result<rustls::ClientConfig, String> {
    Ok(tls_trusting(public_roots())?.with_no_client_auth())
}

/// How every request of the binary reaches its server: http:// and
/// https:// (with `tls`), names through [`crate::dns`], HTTP/1.1, the whole
/// connection (name, TCP, TLS handshake) within one deadline. The S3
/// client's requests too (`store/s3_http.rs`).
pub type Connector = Deadline<HttpsConnector<HttpConnector<Resolver>>>;

pub fn connector(tls: rustls::ClientConfig, connect_timeout: Option<Duration>) -> Connector {
    let mut http = HttpConnector::new_with_resolver(Resolver);
    http.enforce_http(false);
    // As reqwest did: small requests go out at once, and a peer that
    // vanished (a node or API server failover) is noticed by the kernel.
    http.set_nodelay(true);
    http.set_keepalive(Some(Duration::from_secs(15)));
    http.set_keepalive_interval(Some(Duration::from_secs(15)));
    http.set_keepalive_retries(Some(3));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Deadline {
        inner: https,
        limit: connect_timeout,
    }
}

/// A connector whose every connection is made within `limit`, name lookup
/// and TLS handshake included. hyper-util's own connect timeout covers
/// only the TCP connect, shared out among the addresses: a server that
/// takes the connection and never finishes the handshake would hold a
/// request until its whole-request limit.
#[derive(Clone, Debug)]
pub struct Deadline<C> {
    inner: C,
    limit: Option<Duration>,
}

impl<C> tower_service::Service<http::Uri> for Deadline<C>
where
    C: tower_service::Service<http::Uri>,
    C::Future: Send + 'static,
    C::Error: Into<BoxError>,
{
    type Response = C::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<C::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let connect = self.inner.call(uri);
        let limit = self.limit;
        Box::pin(async move {
            let Some(limit) = limit else {
                return connect.await.map_err(Into::into);
            };
            match tokio::time::timeout(limit, connect).await {
                Ok(done) => done.map_err(Into::into),
                Err(_) => Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no connection within {limit:?}"),
                )
                .into()),
            }
        })
    }
}

/// A whole buffer as a request body.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// What went wrong sending a request or reading its reply.
#[derive(Debug)]
pub struct HttpError {
    kind: ErrorKind,
    text: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ErrorKind {
    Connect,
    Timeout,
    Other,
}

impl HttpError {
    fn new(kind: ErrorKind, text: impl Into<String>) -> Self {
        HttpError {
            kind,
            text: text.into(),
        }
    }
    pub fn is_connect(&self) -> bool {
        self.kind == ErrorKind::Connect
    }
    pub fn is_timeout(&self) -> bool {
        self.kind == ErrorKind::Timeout
    }
}

impl Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::error::Error for HttpError {}

/// A client and its time limits. Cheap to clone (one connection pool).
#[derive(Clone)]
pub struct Client {
    hyper: Hyper,
    /// The longest a request may wait with nothing moving: no body bytes
    /// taken, no reply bytes arriving.
    idle: Option<Duration>,
    /// The longest a request may take from start to reply headers.
    total: Option<Duration>,
}

impl Client {
    /// A client speaking http:// and https:// with `tls`.
    pub fn new(tls: rustls::ClientConfig, connect_timeout: Duration) -> Self {
        let https = connector(tls, Some(connect_timeout));
        Client {
            hyper: hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(https),
            idle: None,
            total: None,
        }
    }

    /// A client trusting the public roots.
    pub fn public(connect_timeout: Duration) -> Result<Self, String> {
        Ok(Self::new(public_tls()?, connect_timeout))
    }

    /// Fail a request that moves no byte for `d` (either way).
    pub fn idle_timeout(mut self, d: Duration) -> Self {
        self.idle = Some(d);
        self
    }

    /// Fail a request whose reply has not begun after `d`.
    pub fn timeout(mut self, d: Duration) -> Self {
        self.total = Some(d);
        self
    }

    pub fn request(&self, method: Method, url: impl AsRef<str>) -> RequestBuilder {
        RequestBuilder {
            client: self.clone(),
            parts: http::Request::builder().method(method).uri(url.as_ref()),
            body: None,
        }
    }

    pub fn get(&self, url: impl AsRef<str>) -> RequestBuilder {
        self.request(Method::GET, url)
    }

    pub fn post(&self, url: impl AsRef<str>) -> RequestBuilder {
        self.request(Method::POST, url)
    }
}

/// One request being put together.
pub struct RequestBuilder {
    client: Client,
    parts: http::request::Builder,
    body: Option<Body>,
}

impl RequestBuilder {
    pub fn header<V>(mut self, name: &str, value: V) -> Self
    where
        V: TryInto<HeaderValue>,
        V::Error: Into<http::Error>,
    {
        self.parts = self.parts.header(name, value);
        self
    }

    pub fn basic_auth(self, user: impl Display, password: Option<impl Display>) -> Self {
        use base64::Engine;
        let pair = match password {
            Some(p) => format!("{user}:{p}"),
            None => format!("{user}:"),
        };
        let token = base64::engine::general_purpose::STANDARD.encode(pair);
        let mut value = HeaderValue::try_from(format!("Basic {token}"))
            .unwrap_or_else(|_| HeaderValue::from_static(""));
        value.set_sensitive(true);
        self.header("authorization", value)
    }

    /// `value` as a JSON body.
    pub fn json<T: Serialize + ?Sized>(self, value: &T) -> Self {
        let bytes = serde_json::to_vec(value).unwrap_or_default();
        self.header("content-type", "application/json").body(bytes)
    }

    pub fn body(mut self, bytes: impl Into<Bytes>) -> Self {
        self.body = Some(full(bytes));
        self
    }

    /// A streamed body (send its `Content-Length` as a header).
    pub fn body_stream<B>(mut self, body: B) -> Self
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        self.body = Some(body.map_err(Into::into).boxed_unsync());
        self
    }

    /// Sends the request; the reply's headers have arrived when this
    /// returns. Any status is a reply, for the caller to judge.
    pub async fn send(self) -> Result<Response, HttpError> {
        let activity = Activity::new();
        let body = Watched {
            inner: self.body.unwrap_or_else(|| full(Bytes::new())),
            activity: activity.clone(),
        }
        .boxed_unsync();
        let req = self
            .parts
            .body(body)
            .map_err(|e| HttpError::new(ErrorKind::Other, format!("building the request: {e}")))?;
        let sent = self.client.hyper.request(req);
        let reply = match (self.client.idle, self.client.total) {
            (None, None) => sent.await,
            (idle, total) => {
                let deadline = total.map(|t| tokio::time::Instant::now() + t);
                tokio::pin!(sent);
                loop {
                    let wait = match idle {
                        Some(i) => i.saturating_sub(activity.since()),
                        None => Duration::from_secs(3600),
                    };
                    let mut until = tokio::time::Instant::now() + wait;
                    if let Some(d) = deadline {
                        until = until.min(d);
                    }
                    tokio::select! {
                        r = &mut sent => break r,
                        _ = tokio::time::sleep_until(until) => {}
                    }
                    let idle_out = idle.is_some_and(|i| activity.since() >= i);
                    if idle_out || deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                        let limit = if idle_out { idle } else { total };
                        return Err(HttpError::new(
                            ErrorKind::Timeout,
                            format!("no answer within {}s", limit.unwrap_or_default().as_secs()),
                        ));
                    }
                }
            }
        };
        let inner = reply.map_err(|e| {
            let kind = if e.is_connect() {
                ErrorKind::Connect
            } else {
                ErrorKind::Other
            };
            HttpError::new(kind, crate::error::error_chain(&e))
        })?;
        Ok(Response {
            inner,
            idle: self.client.idle,
        })
    }
}

/// When a request last moved a byte.
#[derive(Clone)]
struct Activity {
    start: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Activity {
    fn new() -> Self {
        Activity {
            start: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }
    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }
    fn since(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }
}

/// A request body that notes each piece hyper takes from it: a large
/// upload is not idle while it moves.
struct Watched {
    inner: Body,
    activity: Activity,
}

impl http_body::Body for Watched {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(_))) = &r {
            self.activity.touch();
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A reply whose headers have arrived.
pub struct Response {
    inner: http::Response<hyper::body::Incoming>,
    idle: Option<Duration>,
}

impl Response {
    pub fn status(&self) -> StatusCode {
        self.inner.status()
    }

    pub fn headers(&self) -> &http::HeaderMap {
        self.inner.headers()
    }

    /// The next piece of the body; `None` at its end.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, HttpError> {
        loop {
            let next = self.inner.body_mut().frame();
            let frame = match self.idle {
                Some(limit) => tokio::time::timeout(limit, next).await.map_err(|_| {
                    HttpError::new(
                        ErrorKind::Timeout,
                        format!("the reply stalled for {}s", limit.as_secs()),
                    )
                })?,
                None => next.await,
            };
            let Some(frame) = frame else {
                return Ok(None);
            };
            let frame = frame.map_err(|e| {
                HttpError::new(
                    ErrorKind::Other,
                    format!("reading the reply: {}", crate::error::error_chain(&e)),
                )
            })?;
            if let Ok(data) = frame.into_data() {
                if !data.is_empty() {
                    return Ok(Some(data));
                }
            }
        }
    }

    /// The whole body, at most `limit` bytes.
    pub async fn bytes_up_to(mut self, limit: usize) -> Result<Bytes, HttpError> {
        let mut out = Vec::new();
        while let Some(c) = self.chunk().await? {
            if out.len() + c.len() > limit {
                return Err(HttpError::new(
                    ErrorKind::Other,
                    format!("the reply is larger than {limit} bytes"),
                ));
            }
            out.extend_from_slice(&c);
        }
        Ok(out.into())
    }

    /// The whole body, at most [`WHOLE_REPLY_MAX`] bytes.
    pub async fn bytes(self) -> Result<Bytes, HttpError> {
        self.bytes_up_to(WHOLE_REPLY_MAX).await
    }

    pub async fn json<T: DeserializeOwned>(self) -> Result<T, HttpError> {
        let bytes = self.bytes().await?;
        serde_json::from_slice(&bytes)
            .map_err(|e| HttpError::new(ErrorKind::Other, format!("unexpected reply: {e}")))
    }
}

/// A one-shot HTTP server for unit tests of this client's users.
#[cfg(test)]
pub(crate) mod fake_server {
    use std::io::{BufRead, BufReader, Read};
    use std::net::TcpListener;

    /// A one-connection HTTP/1.1 server on 127.0.0.1 (its base URL is
    /// returned): reads the request (headers, then `Content-Length` body
    /// bytes) and hands it to `answer`, which writes the reply (or not).
    pub fn serve_once(
        answer: impl FnOnce(String, Vec<u8>, &mut std::net::TcpStream) + Send + 'static,
    ) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut head = String::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                    break;
                }
                head.push_str(&line);
            }
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map_or(0, |n| n.trim().parse().unwrap());
            let mut body = vec![0; len];
            reader.read_exact(&mut body).unwrap();
            answer(head, body, &mut stream);
        });
        url
    }
}

#[cfg(test)]
mod tests {
    use super::fake_server::serve_once;
    use super::*;
    use std::io::Write;
    use std::net::TcpListener;

    fn client() -> Client {
        Client::public(Duration::from_secs(2)).unwrap()
    }

    #[tokio::test]
    async fn a_server_that_says_nothing_is_given_up_on_after_the_idle_limit() {
        let url = serve_once(|_, _, _| std::thread::sleep(Duration::from_secs(5)));
        let started = Instant::now();
        let err = client()
            .idle_timeout(Duration::from_millis(300))
            .get(format!("{url}/x"))
            .send()
            .await
            .err()
            .unwrap();
        assert!(err.is_timeout(), "{err}");
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    /// An upload slower in total than the idle limit is not idle while its
    /// bytes move: a large CouchDB attachment must not be cut off.
    #[tokio::test]
    async fn an_upload_that_keeps_moving_outlasts_the_idle_limit() {
        let url = serve_once(|head, body, stream| {
            assert!(head.contains("authorization: Basic dTpwdw=="), "{head}");
            let reply = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len());
            stream.write_all(reply.as_bytes()).unwrap();
            stream.write_all(&body).unwrap();
        });
        let pieces = futures_util::stream::unfold(0u8, |n| async move {
            if n == 8 {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            let frame = Frame::data(Bytes::from(vec![b'a' + n; 1000]));
            Some((Ok::<_, std::io::Error>(frame), n + 1))
        });
        let started = Instant::now();
        let resp = client()
            .idle_timeout(Duration::from_millis(300))
            .request(Method::PUT, format!("{url}/x"))
            .basic_auth("u", Some("pw"))
            .header("Content-Length", 8000u64)
            .body_stream(http_body_util::StreamBody::new(pieces))
            .send()
            .await
            .unwrap();
        assert!(started.elapsed() >= Duration::from_millis(700));
        assert_eq!(resp.status(), StatusCode::OK);
        let got = resp.bytes().await.unwrap();
        assert_eq!(got.len(), 8000);
        assert_eq!(got[7999], b'h');
    }

    /// A server that takes the TCP connection and never answers the TLS
    /// handshake is given up on at the connect limit, as a connection that
    /// is never made.
    #[tokio::test]
    async fn a_stalled_tls_handshake_ends_at_the_connect_limit() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("https://{}/", listener.local_addr().unwrap());
        let held = std::thread::spawn(move || listener.accept().map(|(s, _)| s));
        let started = Instant::now();
        let err = Client::public(Duration::from_millis(400))
            .unwrap()
            .get(&url)
            .send()
            .await
            .err()
            .unwrap();
        assert!(err.is_connect(), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        drop(held.join());
    }

    #[tokio::test]
    async fn a_reply_past_the_limit_and_a_closed_port_are_errors_that_say_so() {
        let url = serve_once(|_, _, stream| {
            let body = vec![b'x'; 5000];
            let reply = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len());
            stream.write_all(reply.as_bytes()).unwrap();
            stream.write_all(&body).unwrap();
        });
        let resp = client().get(format!("{url}/x")).send().await.unwrap();
        let err = resp.bytes_up_to(4096).await.err().unwrap();
        assert!(err.to_string().contains("larger than 4096 bytes"), "{err}");

        let closed = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/", closed.local_addr().unwrap());
        drop(closed);
        let err = client().get(&url).send().await.err().unwrap();
        assert!(err.is_connect(), "{err}");
        assert!(
            err.to_string()
                .to_lowercase()
                .contains("connection refused"),
            "{err}"
        );
    }
}
