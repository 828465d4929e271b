//! An S3 (or S3-compatible) blob store. A big blob streams from the
//! pipeline as a multipart upload with a bounded number of parts in memory
//! and is visible only once the upload completed; one smaller than a part is
//! a single PUT.

use std::collections::VecDeque;
use std::path::Path;
use std::time::Duration;

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{BehaviorVersion, Region};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::operation::abort_multipart_upload::AbortMultipartUploadError;
use aws_sdk_s3::operation::get_object::GetObjectOutput;
use aws_sdk_s3::primitives::ByteStream as Body;
use aws_sdk_s3::types::{
    ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart, ObjectLockEnabled, ObjectLockMode,
};
use aws_sdk_s3::Client;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio::task::JoinHandle;

use super::blobs::{Blobs, Entry, Opened, Put, Small};
use crate::aligned::AlignedBuf;
use crate::{Error, Result};

/// Size of the first 1,000 parts. S3 needs at least 5 MiB for all but the
/// last part; 6 MiB is the least for which 10,000 parts still reach S3's
/// 5 TiB object limit, and three of them (README, "Bounds") keep an upload
/// under 48 MiB of memory.
pub const PART_SIZE_MIN: usize = 6 << 20;
/// Part size doubles after every this many parts, so 10,000 parts hold
/// ~5.9 TiB (6 MiB x 1,000 x (1 + 2 + ... + 512)); memory stays at the
/// minimum for artifacts up to ~5.9 GiB and doubles per tier beyond.
pub const PARTS_PER_TIER: i32 = 1000;
/// The largest part (S3 allows 5 GiB).
pub const PART_SIZE_MAX: usize = 4 << 30;
/// Parts uploading at once. With the one being filled, an upload holds at
/// most `(PARTS_IN_FLIGHT + 1) * part size` bytes: 18 MiB for most artifacts.
pub const PARTS_IN_FLIGHT: usize = 2;
/// The SDK retries throttling, 5xx and transport errors with exponential
/// backoff; parts are in memory, so each retry resends the same bytes.
pub const MAX_ATTEMPTS: u32 = 5;
/// First retry delay; it doubles per attempt (0.2 + 0.4 + 0.8 + 1.6 s), so a
/// store that is down fails a request within a few seconds.
pub const INITIAL_BACKOFF: Duration = Duration::from_millis(200);
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// One attempt of one request (a part of at most a few hundred MiB).
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(300);
/// One attempt of a request with a small answer (a listing page, a manifest).
pub const SMALL_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(20);
/// Such a request with all its retries: a stalled store is reported after
/// this long rather than waited for.
pub const SMALL_OPERATION_TIMEOUT: Duration = Duration::from_secs(60);

pub fn part_size(part_number: i32) -> usize {
    let tier = ((part_number - 1) / PARTS_PER_TIER).clamp(0, 9) as u32;
    (PART_SIZE_MIN << tier).min(PART_SIZE_MAX)
}

/// `LIFEBOAT_S3_*` settings shared by every S3 target.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct S3Options {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub path_style: bool,
    /// `LIFEBOAT_S3_OBJECT_LOCK`: how new objects are locked, if at all.
    pub lock: Option<super::object_lock::ObjectLock>,
    /// Retention deletes here (not `LIFEBOAT_RETENTION=off`): only then is
    /// a versioned bucket worth a warning.
    pub deletes: bool,
}

/// Builds a client from the standard AWS chain (env keys, web identity /
/// IRSA, profile) plus our options.
pub async fn client(opts: &S3Options) -> Client {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(MAX_ATTEMPTS)
                .with_initial_backoff(INITIAL_BACKOFF),
        )
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                .build(),
        );
    if let Some(r) = &opts.region {
        loader = loader.region(Region::new(r.clone()));
    } else if opts.endpoint.is_some() {
        // An S3-compatible store: the region is AWS_REGION's or any, never
        // the EC2 metadata service's (asking it warns on every start off
        // EC2, with nothing to act on).
        loader = loader.region(
            aws_config::meta::region::RegionProviderChain::first_try(
                aws_config::environment::region::EnvironmentVariableRegionProvider::new(),
            )
            .or_else(Region::new("us-east-1")),
        );
    }
    let sdk = loader.http_client(http_client()).load().await;
    let mut b = aws_sdk_s3::config::Builder::from(&sdk).force_path_style(opts.path_style);
    if sdk.region().is_none() {
        // S3-compatible stores rarely care; AWS itself redirects.
        b = b.region(Region::new("us-east-1"));
    }
    if let Some(e) = &opts.endpoint {
        b = b.endpoint_url(e);
    }
    Client::from_conf(b.build())
}

/// HTTPS with bundled root certificates (plus the system's, where there is a
/// store: a private CA via `SSL_CERT_FILE`), and names resolved without libc:
/// the release image is `scratch`, with neither certificates nor NSS. The
/// requests go through lifeboat's one HTTP client (`s3_http.rs`).
fn http_client() -> aws_smithy_runtime_api::client::http::SharedHttpClient {
    let tls = crate::https::tls_trusting(trust_store())
        // Not input: ring offers TLS 1.2 and 1.3, the safe default versions.
        .expect("the ring provider supports the default TLS versions")
        .with_no_client_auth();
    super::s3_http::client(tls)
}

/// The bundled public roots plus whatever the system offers
/// (`SSL_CERT_FILE`, `SSL_CERT_DIR`, `/etc/ssl/certs`); a certificate that
/// cannot be read is skipped and counted, a store that cannot be read is
/// named: both are just what a mistyped `SSL_CERT_FILE` gives.
fn trust_store() -> rustls::RootCertStore {
    let mut roots = crate::https::public_roots();
    let system = rustls_native_certs::load_native_certs();
    for e in &system.errors {
        tracing::warn!(
            "CA certificates of the system not loaded: {e}; only the bundled public roots and \
             any other system certificates are trusted (check SSL_CERT_FILE / SSL_CERT_DIR)"
        );
    }
    let (_, skipped) = roots.add_parsable_certificates(system.certs);
    if skipped > 0 {
        tracing::warn!("{skipped} CA certificate(s) of the system are not usable and were skipped");
    }
    roots
}

/// One pod's history in a bucket.
#[derive(Clone)]
pub struct S3Blobs {
    client: Client,
    /// The same client with short timeouts, for requests whose answer is
    /// small (list, manifests, heads, deletes) or streamed (an artifact's
    /// GET, whose timeouts end with the headers): a stalled store fails them
    /// within [`SMALL_OPERATION_TIMEOUT`] instead of the minutes a part
    /// upload may need, so `list`, `verify` and restore never hang on it.
    quick: Client,
    bucket: String,
    /// `<prefix>/<namespace>/<name>` without a trailing slash.
    root: String,
    /// Where requests go, for errors.
    at: Where,
    /// Every request both clients sent.
    requests: super::requests::Requests,
    /// How every object written is locked (`object_lock.rs`).
    lock: Option<super::object_lock::ObjectLock>,
    /// See [`S3Options::deletes`].
    deletes: bool,
}

impl S3Blobs {
    /// `opts.endpoint`: `LIFEBOAT_S3_ENDPOINT`, None for AWS's own.
    pub fn new(client: Client, bucket: String, root: String, opts: &S3Options) -> Self {
        let endpoint = opts.endpoint.clone().unwrap_or_else(|| {
            let region = client.config().region().map_or("us-east-1", |r| r.as_ref());
            format!("https://s3.{region}.amazonaws.com")
        });
        let at = Where {
            target: format!("s3://{bucket}/{root}"),
            bucket: bucket.clone(),
            endpoint,
        };
        let requests = super::requests::Requests::default();
        let client = Client::from_conf(
            client
                .config()
                .to_builder()
                .interceptor(requests.clone())
                .build(),
        );
        let quick = Client::from_conf(
            client
                .config()
                .to_builder()
                .timeout_config(
                    TimeoutConfig::builder()
                        .connect_timeout(CONNECT_TIMEOUT)
                        .operation_attempt_timeout(SMALL_ATTEMPT_TIMEOUT)
                        .operation_timeout(SMALL_OPERATION_TIMEOUT)
                        .build(),
                )
                .build(),
        );
        S3Blobs {
            client,
            quick,
            bucket,
            root,
            at,
            requests,
            lock: opts.lock,
            deletes: opts.deletes,
        }
    }

    /// The lock headers of an object written now.
    fn lock_now(&self) -> Option<(ObjectLockMode, aws_sdk_s3::primitives::DateTime)> {
        let lock = self.lock?;
        let mode = match lock.mode {
            super::object_lock::LockMode::Governance => ObjectLockMode::Governance,
            super::object_lock::LockMode::Compliance => ObjectLockMode::Compliance,
        };
        let until = lock.retain_until(Utc::now()).timestamp();
        Some((mode, aws_sdk_s3::primitives::DateTime::from_secs(until)))
    }

    /// Every version of exactly `key` (and its delete markers): under
    /// Object Lock the bucket is versioned, and a plain DELETE would only
    /// hide the object behind a marker while it kept its storage.
    async fn versions_of(&self, key: &str) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let mut key_marker: Option<String> = None;
        let mut version_marker: Option<String> = None;
        loop {
            let page = self
                .quick
                .list_object_versions()
                .bucket(&self.bucket)
                .prefix(key)
                .set_key_marker(key_marker.clone())
                .set_version_id_marker(version_marker.clone())
                .send()
                .await
                .map_err(|e| self.sdk_err(&format!("ListObjectVersions {key}"), e))?;
            let versions = page
                .versions()
                .iter()
                .filter(|v| v.key() == Some(key))
                .filter_map(|v| v.version_id());
            let markers = page
                .delete_markers()
                .iter()
                .filter(|m| m.key() == Some(key))
                .filter_map(|m| m.version_id());
            out.extend(versions.chain(markers).map(str::to_string));
            if page.is_truncated() != Some(true) {
                break;
            }
            key_marker = page.next_key_marker().map(str::to_string);
            version_marker = page.next_version_id_marker().map(str::to_string);
            if key_marker.is_none() && version_marker.is_none() {
                break;
            }
        }
        Ok(out)
    }

    /// Without Object Lock on the bucket every locked PUT is refused: said
    /// at start, once.
    async fn check_lock_enabled(&self, lock: super::object_lock::ObjectLock) -> Result<()> {
        let enabled = self
            .quick
            .get_object_lock_configuration()
            .bucket(&self.bucket)
            .send()
            .await
            .ok()
            .and_then(|o| o.object_lock_configuration)
            .and_then(|c| c.object_lock_enabled)
            == Some(ObjectLockEnabled::Enabled);
        if !enabled {
            return Err(self.err(format!(
                "LIFEBOAT_S3_OBJECT_LOCK={lock}, but bucket {:?} has no Object Lock enabled (or \
                 its configuration cannot be read): create the bucket with Object Lock \
                 (aws s3api create-bucket --object-lock-enabled-for-bucket ...) or set \
                 LIFEBOAT_S3_OBJECT_LOCK=off",
                self.bucket
            )));
        }
        Ok(())
    }

    /// A versioned bucket keeps what a plain DELETE removes, behind a delete
    /// marker: retention would free nothing. Said once, at start, and only
    /// when retention deletes; a store that will not tell is left alone.
    async fn warn_if_versioned(&self) {
        if !self.deletes {
            return;
        }
        let versioned = self
            .quick
            .get_bucket_versioning()
            .bucket(&self.bucket)
            .send()
            .await
            .ok()
            .and_then(|v| v.status)
            == Some(aws_sdk_s3::types::BucketVersioningStatus::Enabled);
        if versioned {
            tracing::warn!(bucket = %self.bucket, "the bucket keeps versions: retention's deletes only hide old backups behind delete markers and free no storage unless a NoncurrentVersionExpiration lifecycle rule removes them; add one, or set LIFEBOAT_S3_OBJECT_LOCK if the bucket has Object Lock (README, \"Immutable buckets and write-only credentials\")");
        }
    }

    fn key(&self, name: &str) -> String {
        format!("{}/{name}", self.root)
    }

    fn err(&self, message: String) -> Error {
        Error::Target {
            target: self.describe(),
            message,
        }
    }

    fn sdk_err<E>(&self, op: &str, e: SdkError<E, HttpResponse>) -> Error
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        sdk_error(&self.at, op, e)
    }

    /// A GET on the quick client, `None` when there is no such key. Its
    /// timeouts end when the response headers arrive (a streamed body is
    /// read after the operation returns), so a store that never answers
    /// fails within a minute, while a body, however long, is guarded by the
    /// SDK's stalled-stream protection.
    async fn get_object(&self, key: &str) -> Result<Option<GetObjectOutput>> {
        match self
            .quick
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(out) => Ok(Some(out)),
            Err(e) if e.code() == Some("NoSuchKey") => Ok(None),
            Err(e) => Err(self.sdk_err(&format!("GetObject {key}"), e)),
        }
    }

    /// One PUT of a whole object: a manifest or record on the quick client,
    /// an artifact smaller than a part on the patient one.
    async fn put_object(&self, client: &Client, key: &str, bytes: Vec<u8>) -> Result<()> {
        let lock = self.lock_now();
        client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .set_object_lock_mode(lock.as_ref().map(|l| l.0.clone()))
            .set_object_lock_retain_until_date(lock.map(|l| l.1))
            .checksum_algorithm(ChecksumAlgorithm::Crc32)
            .body(Body::from(bytes))
            .send()
            .await
            .map_err(|e| self.sdk_err(&format!("PutObject {key}"), e))?;
        Ok(())
    }

    async fn abort_multipart(
        &self,
        key: &str,
        upload_id: &str,
    ) -> std::result::Result<(), SdkError<AbortMultipartUploadError, HttpResponse>> {
        self.client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await?;
        Ok(())
    }

    async fn delete_key(&self, key: &str) -> Result<()> {
        let versions = match self.lock {
            Some(_) => self.versions_of(key).await?.into_iter().map(Some).collect(),
            None => vec![None],
        };
        for version in versions {
            self.quick
                .delete_object()
                .bucket(&self.bucket)
                .key(key)
                .set_version_id(version)
                .send()
                .await
                .map_err(|e| self.sdk_err(&format!("DeleteObject {key}"), e))?;
        }
        Ok(())
    }

    /// Every key under our root with its last-modified time.
    async fn keys(&self) -> Result<Vec<(String, DateTime<Utc>)>> {
        let mut out = Vec::new();
        let mut pages = self
            .quick
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(format!("{}/", self.root))
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.sdk_err("ListObjectsV2", e))?;
            for o in page.contents() {
                if let Some(k) = o.key() {
                    let t = o
                        .last_modified()
                        .and_then(|t| DateTime::from_timestamp(t.secs(), 0))
                        .unwrap_or_else(Utc::now);
                    out.push((k.to_string(), t));
                }
            }
        }
        Ok(out)
    }

    fn name_of<'a>(&self, key: &'a str) -> &'a str {
        key.strip_prefix(&self.root)
            .and_then(|k| k.strip_prefix('/'))
            .unwrap_or(key)
    }
}

/// One readable line for an SDK error: what failed, where, why in words,
/// and the likely fix (README, "S3 and off-cluster copies"); the SDK's
/// whole chain, with its structs, goes to the debug log only.
pub fn sdk_error<E>(at: &Where, op: &str, e: SdkError<E, HttpResponse>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    tracing::debug!(target_url = %at.target, op, error = %DisplayErrorContext(&e), "S3 request failed");
    Error::Target {
        target: at.target.clone(),
        message: format!("{op}: {}", plain(at, op, &e)),
    }
}

/// Where an S3 target's requests go, for its errors.
#[derive(Debug, Clone)]
pub struct Where {
    /// The target as `describe` names it (`s3://bucket/prefix/ns/name`).
    pub target: String,
    pub bucket: String,
    /// `LIFEBOAT_S3_ENDPOINT`, or AWS's own.
    pub endpoint: String,
}

/// [`sdk_error`]'s words.
fn plain<E>(at: &Where, op: &str, e: &SdkError<E, HttpResponse>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let endpoint = &at.endpoint;
    let bucket = &at.bucket;
    let status = e.raw_response().map(|r| r.status().as_u16());
    let code = e.code();
    match e {
        SdkError::TimeoutError(_) => {
            return format!("the S3 endpoint {endpoint} did not answer in time: check LIFEBOAT_S3_ENDPOINT and the network; tried again at the next run")
        }
        SdkError::DispatchFailure(d) => {
            let why = if d.is_timeout() {
                "timed out".to_string()
            } else {
                deepest(e)
            };
            if why.to_lowercase().contains("certificate") {
                return format!("the S3 endpoint {endpoint} presented a certificate that is not trusted: {why}: for a private CA set SSL_CERT_FILE to its certificate (README, \"S3 and off-cluster copies\")");
            }
            return format!("cannot reach the S3 endpoint {endpoint}: {why}: check LIFEBOAT_S3_ENDPOINT and the network; tried again at the next run");
        }
        SdkError::ResponseError(_) => {
            return format!("the answer from the S3 endpoint {endpoint} broke off: {}: check the network and the store; tried again at the next run", deepest(e));
        }
        SdkError::ConstructionFailure(_) => {
            return format!("the request could not be made ({}): check LIFEBOAT_S3_ENDPOINT, LIFEBOAT_S3_REGION and the credentials", deepest(e));
        }
        _ => {}
    }
    let said = match (code, e.message()) {
        (Some(c), Some(m)) => format!("{c}: {m}"),
        (Some(c), None) => c.to_string(),
        (None, Some(m)) => m.to_string(),
        (None, None) => deepest(e),
    };
    let http = status.map(|s| format!("HTTP {s}, ")).unwrap_or_default();
    match (status, code) {
        (_, Some("NoSuchBucket")) | (Some(404), None)
            if code.is_some() || op.starts_with("HeadBucket") =>
        {
            format!("bucket {bucket:?} does not exist at {endpoint} ({http}{said}): create it or fix LIFEBOAT_TARGETS")
        }
        (Some(403), _) | (_, Some("AccessDenied")) if op.starts_with("DeleteObject") => {
            format!("access denied by {endpoint} ({http}{said}): the credentials may not delete in bucket {bucket:?}, or an object lock holds the object; with write-only credentials set LIFEBOAT_RETENTION=off and leave expiry to the bucket's lifecycle rules (README, \"Immutable buckets and write-only credentials\")")
        }
        (Some(403), _)
        | (_, Some("AccessDenied" | "InvalidAccessKeyId" | "SignatureDoesNotMatch")) => {
            format!("access denied by {endpoint} ({http}{said}): check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the pod's role, and that it may use bucket {bucket:?}")
        }
        (_, Some("SlowDown" | "ServiceUnavailable" | "InternalError")) | (Some(500..=599), _) => {
            format!("the store at {endpoint} failed the request ({http}{said}); retried, and tried again at the next run")
        }
        _ => format!("the store at {endpoint} refused the request ({http}{said})"),
    }
}

/// The innermost cause's words ("Connection refused (os error 111)"):
/// what a person can act on, without the wrappers around it.
fn deepest(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// A multipart upload a killed process never completed or aborted.
#[derive(Debug, Clone)]
pub struct MultipartUpload {
    /// The blob it would have become.
    name: String,
    upload_id: String,
}

impl super::blobs::Unfinished for MultipartUpload {
    fn blob(&self) -> String {
        self.name.clone()
    }
}

impl std::fmt::Display for MultipartUpload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "upload:{}:{}", self.upload_id, self.name)
    }
}

impl Blobs for S3Blobs {
    type Put = S3Put;
    type Incomplete = MultipartUpload;

    fn requests(&self) -> super::requests::Counts {
        self.requests.now()
    }

    fn describe(&self) -> String {
        self.at.target.clone()
    }

    fn place(&self, name: &str) -> String {
        self.key(name)
    }

    fn check_is_fatal(&self) -> bool {
        false
    }

    fn local_folder(&self) -> Option<&Path> {
        None
    }

    async fn check(&self) -> Result<()> {
        self.quick
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .map_err(|e| self.sdk_err("HeadBucket", e))?;
        match self.lock {
            Some(lock) => self.check_lock_enabled(lock).await,
            None => {
                self.warn_if_versioned().await;
                Ok(())
            }
        }
    }

    async fn locked_until(&self, name: &str) -> Result<Option<DateTime<Utc>>> {
        let Some(lock) = self.lock else {
            return Ok(None);
        };
        let key = self.key(name);
        let head = match self
            .quick
            .head_object()
            .bucket(&self.bucket)
            .key(&key)
            .send()
            .await
        {
            Ok(h) => h,
            Err(e) if e.raw_response().map(|r| r.status().as_u16()) == Some(404) => {
                return Ok(None)
            }
            Err(e) => return Err(self.sdk_err(&format!("HeadObject {key}"), e)),
        };
        Ok(head
            .object_lock_retain_until_date()
            .and_then(|t| DateTime::from_timestamp(t.secs(), 0))
            .filter(|t| lock.holds(*t, Utc::now())))
    }

    async fn names(&self) -> Result<Vec<Entry>> {
        let keys = self.keys().await?;
        Ok(keys
            .into_iter()
            .map(|(key, modified)| Entry {
                name: self.name_of(&key).to_string(),
                modified,
                plain: true,
            })
            .collect())
    }

    async fn confirm_empty(&self) -> Result<()> {
        Ok(())
    }

    /// Refuses an object larger than `cap` before reading it: the store
    /// decides nothing about our memory.
    async fn get_small(&self, name: &str, cap: u64) -> Result<Small> {
        use tokio::io::AsyncReadExt;
        let key = self.key(name);
        let Some(out) = self.get_object(&key).await? else {
            return Ok(Small::Gone);
        };
        let too_big = |n: u64| {
            Small::Refused(format!(
                "{n} bytes or more, more than the {cap} such an object may have"
            ))
        };
        if let Some(n) = out.content_length().filter(|n| *n as u64 > cap) {
            return Ok(too_big(n as u64));
        }
        let mut data = Vec::new();
        out.body
            .into_async_read()
            .take(cap + 1)
            .read_to_end(&mut data)
            .await
            .map_err(|e| self.err(format!("reading {key}: {e}")))?;
        if data.len() as u64 > cap {
            return Ok(too_big(data.len() as u64));
        }
        Ok(Small::Bytes(data))
    }

    async fn open(&self, name: &str) -> Result<Opened> {
        let key = self.key(name);
        Ok(match self.get_object(&key).await? {
            Some(out) => Opened::Stream(Box::pin(out.body.into_async_read())),
            None => Opened::Unreadable(format!("{key} does not exist in bucket {:?}", self.bucket)),
        })
    }

    /// A PUT replaces whatever is there: `replace` cannot be refused here.
    async fn put_small(&self, name: &str, bytes: Vec<u8>, _replace: bool) -> Result<()> {
        self.put_object(&self.quick, &self.key(name), bytes).await
    }

    /// The existence check is a check, not an atomic guarantee.
    async fn put_new(&self, name: &str) -> Result<S3Put> {
        let key = self.key(name);
        let exists = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(&key)
            .send()
            .await
            .is_ok();
        if exists {
            return Err(self.err(format!("{key} exists already; refusing to overwrite")));
        }
        Ok(S3Put {
            blobs: self.clone(),
            key,
            buf: Vec::with_capacity(PART_SIZE_MIN),
            upload_id: None,
            next_part: 1,
            in_flight: VecDeque::new(),
            done: Vec::new(),
        })
    }

    /// Every request is durable when it returns: `durable` asks nothing more.
    async fn delete(&self, name: &str, _durable: bool) -> Result<()> {
        self.delete_key(&self.key(name)).await
    }

    async fn incomplete(&self) -> Result<Vec<(MultipartUpload, DateTime<Utc>)>> {
        let mut out = Vec::new();
        let mut key_marker: Option<String> = None;
        let mut id_marker: Option<String> = None;
        loop {
            let page = self
                .client
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .prefix(format!("{}/", self.root))
                .set_key_marker(key_marker.clone())
                .set_upload_id_marker(id_marker.clone())
                .send()
                .await
                .map_err(|e| self.sdk_err("ListMultipartUploads", e))?;
            for u in page.uploads() {
                let (Some(key), Some(id)) = (u.key(), u.upload_id()) else {
                    continue;
                };
                let started = u
                    .initiated()
                    .and_then(|t| DateTime::from_timestamp(t.secs(), 0))
                    .unwrap_or_else(Utc::now);
                let upload = MultipartUpload {
                    name: self.name_of(key).to_string(),
                    upload_id: id.to_string(),
                };
                out.push((upload, started));
            }
            if page.is_truncated() != Some(true) {
                break;
            }
            key_marker = page.next_key_marker().map(str::to_string);
            id_marker = page.next_upload_id_marker().map(str::to_string);
            if key_marker.is_none() && id_marker.is_none() {
                break;
            }
        }
        Ok(out)
    }

    async fn abort_incomplete(&self, upload: &MultipartUpload) -> Result<()> {
        let key = self.key(&upload.name);
        self.abort_multipart(&key, &upload.upload_id)
            .await
            .map_err(|e| self.sdk_err(&format!("AbortMultipartUpload {key}"), e))
    }
}

pub struct S3Put {
    blobs: S3Blobs,
    key: String,
    buf: Vec<u8>,
    upload_id: Option<String>,
    next_part: i32,
    in_flight: VecDeque<JoinHandle<Result<CompletedPart>>>,
    done: Vec<CompletedPart>,
}

impl S3Put {
    async fn start_multipart(&mut self) -> Result<String> {
        if let Some(id) = &self.upload_id {
            return Ok(id.clone());
        }
        let t = &self.blobs;
        let lock = t.lock_now();
        let out = t
            .client
            .create_multipart_upload()
            .bucket(&t.bucket)
            .key(&self.key)
            .set_object_lock_mode(lock.as_ref().map(|l| l.0.clone()))
            .set_object_lock_retain_until_date(lock.map(|l| l.1))
            .checksum_algorithm(ChecksumAlgorithm::Crc32)
            .send()
            .await
            .map_err(|e| t.sdk_err(&format!("CreateMultipartUpload {}", self.key), e))?;
        let id = out
            .upload_id()
            .ok_or_else(|| t.err("CreateMultipartUpload returned no upload id".into()))?
            .to_string();
        self.upload_id = Some(id.clone());
        Ok(id)
    }

    /// Sends the buffer as the next part; waits first if too many are in flight.
    async fn send_part(&mut self) -> Result<()> {
        let upload_id = self.start_multipart().await?;
        while self.in_flight.len() >= PARTS_IN_FLIGHT {
            self.finish_oldest().await?;
        }
        let n = self.next_part;
        self.next_part += 1;
        let body = Bytes::from(std::mem::replace(
            &mut self.buf,
            Vec::with_capacity(part_size(self.next_part)),
        ));
        let (client, bucket, key) = (
            self.blobs.client.clone(),
            self.blobs.bucket.clone(),
            self.key.clone(),
        );
        let at = self.blobs.at.clone();
        self.in_flight.push_back(tokio::spawn(async move {
            let out = client
                .upload_part()
                .bucket(&bucket)
                .key(&key)
                .upload_id(upload_id)
                .part_number(n)
                .checksum_algorithm(ChecksumAlgorithm::Crc32)
                .body(Body::from(body))
                .send()
                .await
                .map_err(|e| sdk_error(&at, &format!("UploadPart {n} of {key}"), e))?;
            Ok(CompletedPart::builder()
                .part_number(n)
                .set_e_tag(out.e_tag().map(str::to_string))
                .set_checksum_crc32(out.checksum_crc32().map(str::to_string))
                .build())
        }));
        Ok(())
    }

    async fn finish_oldest(&mut self) -> Result<()> {
        if let Some(h) = self.in_flight.pop_front() {
            let part = h
                .await
                .map_err(|e| self.blobs.err(format!("part upload task failed: {e}")))??;
            self.done.push(part);
        }
        Ok(())
    }

    async fn complete(&mut self) -> Result<()> {
        let t = &self.blobs;
        if self.upload_id.is_none() {
            // Small artifact: one PutObject, no multipart upload at all.
            let body = std::mem::take(&mut self.buf);
            return t.put_object(&t.client, &self.key, body).await;
        }
        if !self.buf.is_empty() {
            self.send_part().await?;
        }
        while !self.in_flight.is_empty() {
            self.finish_oldest().await?;
        }
        let t = &self.blobs;
        let mut parts = std::mem::take(&mut self.done);
        parts.sort_by_key(|p| p.part_number());
        t.client
            .complete_multipart_upload()
            .bucket(&t.bucket)
            .key(&self.key)
            .upload_id(self.upload_id.clone().unwrap_or_default())
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| t.sdk_err(&format!("CompleteMultipartUpload {}", self.key), e))?;
        Ok(())
    }
}

impl Put for S3Put {
    /// Fills the part being built; a full part goes out on its own task.
    async fn write(&mut self, mut chunk: AlignedBuf) -> Result<Option<AlignedBuf>> {
        let mut left = &chunk[..];
        while !left.is_empty() {
            let want = part_size(self.next_part) - self.buf.len();
            let n = want.min(left.len());
            self.buf.extend_from_slice(&left[..n]);
            left = &left[n..];
            if self.buf.len() == part_size(self.next_part) {
                self.send_part().await?;
            }
        }
        chunk.clear();
        Ok(Some(chunk))
    }

    async fn finish(mut self) -> Result<()> {
        if let Err(e) = self.complete().await {
            self.abort().await;
            return Err(e);
        }
        Ok(())
    }

    async fn abort(mut self) {
        for h in self.in_flight.drain(..) {
            h.abort();
        }
        if let Some(id) = self.upload_id.take() {
            if let Err(e) = self.blobs.abort_multipart(&self.key, &id).await {
                tracing::warn!(key = %self.key, error = %DisplayErrorContext(&e), "could not abort the multipart upload; it is cleaned up after a day");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_thousand_parts_hold_more_than_five_tib() {
        let total: u64 = (1..=10_000).map(|n| part_size(n) as u64).sum();
        assert!(total > 5 << 40, "{total}");
        assert_eq!(part_size(1), PART_SIZE_MIN);
        assert_eq!(part_size(1000), PART_SIZE_MIN);
        assert_eq!(part_size(1001), 2 * PART_SIZE_MIN);
        assert!(part_size(10_000) <= PART_SIZE_MAX);
        // Flat memory for everything under ~5.9 GiB.
        let first_tier: u64 = (1..=1000).map(|n| part_size(n) as u64).sum();
        assert!(first_tier > 5 << 30);
    }
}
