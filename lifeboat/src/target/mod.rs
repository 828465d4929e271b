//! Targets store artifacts. One trait for the seam ([`Target`]), one enum for
//! the closed set ([`AnyTarget`]). Every implementation must pass the shared
//! suite in `tests/target_suite.rs`.

pub mod dir;
pub mod s3;

use std::path::PathBuf;
use std::pin::Pin;

use chrono::{DateTime, Utc};
use tokio::io::AsyncRead;

use crate::manifest::Manifest;
use crate::Result;

pub use dir::DirTarget;
pub use s3::{S3Options, S3Target};

/// Where artifacts go, as configured in `LIFEBOAT_TARGETS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetSpec {
    Dir(PathBuf),
    S3 { bucket: String, prefix: String },
}

impl TargetSpec {
    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        if let Some(rest) = s.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let ok = (3..=63).contains(&bucket.len())
                && bucket
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
                && !bucket.starts_with(['-', '.'])
                && !bucket.ends_with(['-', '.']);
            if !ok {
                return Err(format!(
                    "bucket {bucket:?} is not a valid S3 bucket name (3-63 lowercase letters, digits, '-' or '.'); accepted: s3://bucket/optional/prefix"
                ));
            }
            let prefix = prefix.trim_matches('/');
            if prefix.split('/').any(|p| p == ".." || p == ".") {
                return Err("the prefix must not contain . or .. parts".into());
            }
            return Ok(TargetSpec::S3 {
                bucket: bucket.to_string(),
                prefix: prefix.to_string(),
            });
        }
        let path = if let Some(p) = s.strip_prefix("file://") {
            p
        } else if s.starts_with('/') {
            s
        } else {
            return Err(
                "accepted: file:///absolute/path (a mounted backup PVC) or s3://bucket/prefix"
                    .into(),
            );
        };
        if !path.starts_with('/') {
            return Err("the path after file:// must be absolute, e.g. file:///backup".into());
        }
        Ok(TargetSpec::Dir(PathBuf::from(path)))
    }

    /// Opens the history of one pod (`<namespace>/<name>`) on this target.
    pub async fn open(&self, namespace: &str, name: &str, s3: &S3Options) -> AnyTarget {
        match self {
            TargetSpec::Dir(base) => AnyTarget::Dir(DirTarget::new(
                base.clone(),
                base.join(namespace).join(name),
            )),
            TargetSpec::S3 { bucket, prefix } => {
                let root = [prefix.as_str(), namespace, name]
                    .iter()
                    .filter(|p| !p.is_empty())
                    .copied()
                    .collect::<Vec<_>>()
                    .join("/");
                AnyTarget::S3(S3Target::new(s3::client(s3).await, bucket.clone(), root))
            }
        }
    }
}

/// Opens every configured target for this pod's history, in order.
pub async fn open_all(settings: &crate::config::Settings) -> Vec<AnyTarget> {
    let mut out = Vec::new();
    for spec in &settings.targets {
        out.push(
            spec.open(&settings.namespace, &settings.name, &settings.s3)
                .await,
        );
    }
    out
}

impl std::fmt::Display for TargetSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TargetSpec::Dir(p) => write!(f, "file://{}", p.display()),
            TargetSpec::S3 { bucket, prefix } if prefix.is_empty() => write!(f, "s3://{bucket}"),
            TargetSpec::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

/// A committed artifact as a target lists it.
#[derive(Debug, Clone)]
pub struct Stored {
    pub manifest: Manifest,
    /// When `verify` last re-read it successfully.
    pub verified_at: Option<DateTime<Utc>>,
}

/// What `list` found: committed artifacts newest first, and manifests it
/// could not read (reported, never fatal: one bad file must not hide the rest).
#[derive(Debug, Default)]
pub struct Listing {
    pub artifacts: Vec<Stored>,
    pub problems: Vec<String>,
}

impl Listing {
    /// Newest first; of two equally new, the one that passed `verify`
    /// first (a restore tries them in this order).
    pub fn sort_newest_first(&mut self) {
        let key = |s: &Stored| (s.manifest.started_at, s.verified_at.is_some());
        self.artifacts
            .sort_by(|a, b| (key(b), &b.manifest.id).cmp(&(key(a), &a.manifest.id)));
    }
}

/// A listed manifest: its own checks ([`Manifest::from_json`]), and its id
/// must be the one its file name carries, so a manifest copied or crafted
/// under another name cannot speak for an artifact that is not its own.
pub fn parse_listed(file_name: &str, bytes: &[u8]) -> std::result::Result<Manifest, String> {
    let m = Manifest::from_json(bytes)?;
    if file_name != crate::artifact::manifest_name(&m.id) {
        return Err(format!(
            "its id {:?} does not match its file name {file_name:?}",
            m.id
        ));
    }
    Ok(m)
}

/// One small stored file (a manifest, a verified record) as read from a
/// store. Only `Refused` is the file's own fault; a failed read is an error
/// of the whole listing instead, because skipping a manifest the store
/// could not serve right now would make restore take an older artifact.
pub enum Small {
    Bytes(Vec<u8>),
    /// Deleted between the listing and the read (retention ran meanwhile).
    Gone,
    /// Not a plain file, or larger than such a file may be.
    Refused(String),
}

/// The largest verified record read from a store (ours are ~150 bytes).
pub const MAX_VERIFIED_BYTES: u64 = 64 * 1024;

/// Bytes read from a store past an artifact's recorded `size`: enough to
/// tell "appended to" from "exact", never the appended gigabytes.
pub const READ_PAST_SIZE: u64 = 64 * 1024;

/// The record `verify` leaves beside a manifest (the manifest stays immutable).
pub fn verified_record(m: &Manifest, at: DateTime<Utc>) -> Vec<u8> {
    serde_json::json!({ "id": m.id, "sha256": m.sha256, "verified_at": at })
        .to_string()
        .into_bytes()
}

/// When a verified record says the artifact was last verified.
pub fn parse_verified(bytes: &[u8]) -> Option<DateTime<Utc>> {
    let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    v.get("verified_at")?.as_str()?.parse().ok()
}

/// Whether a stored file belongs to no committed artifact: an artifact or a
/// verified record whose manifest is missing. `committed` holds the ids.
pub fn is_orphan(name: &str, committed: &std::collections::HashSet<&str>) -> bool {
    if name.starts_with('.') {
        return false;
    }
    if let Some(id) = name.strip_suffix(crate::artifact::VERIFIED_SUFFIX) {
        return !committed.contains(id);
    }
    name.contains(".tar") && !committed.contains(name.split(".tar").next().unwrap_or_default())
}

/// Something written but never committed (a crash, a kill, a full disk).
#[derive(Debug, Clone)]
pub struct Leftover {
    pub name: String,
    pub modified: DateTime<Utc>,
}

pub type ByteStream = Pin<Box<dyn AsyncRead + Send>>;

// The futures are used through the concrete enum, whose Send-ness the compiler
// sees, so the usual warning about unnameable Send bounds does not apply.
#[allow(async_fn_in_trait)]
pub trait Target {
    type Upload: Upload;

    /// Where this is, for messages (`file:///backup/ns/pod`).
    fn describe(&self) -> String;
    /// A cheap check at start: can we write here?
    async fn check(&self) -> Result<()>;
    async fn list(&self) -> Result<Listing>;
    /// Starts an artifact upload; nothing is visible until `commit`.
    async fn begin(&self, artifact: &str) -> Result<Self::Upload>;
    async fn open(&self, manifest: &Manifest) -> Result<ByteStream>;
    /// Removes the manifest first, so a crash leaves a leftover, not a broken commit.
    async fn delete(&self, manifest: &Manifest) -> Result<()>;
    async fn mark_verified(&self, manifest: &Manifest, at: DateTime<Utc>) -> Result<()>;
    async fn leftovers(&self) -> Result<Vec<Leftover>>;
    async fn remove_leftover(&self, name: &str) -> Result<()>;
}

/// An upload in progress. Chunks rather than `AsyncWrite`: every caller
/// writes whole chunks from the pipe, and errors keep their context.
#[allow(async_fn_in_trait)]
pub trait Upload {
    async fn write(&mut self, chunk: &[u8]) -> Result<()>;
    /// Makes the artifact durable and visible, manifest last.
    async fn commit(self, manifest: &Manifest) -> Result<()>;
    /// Removes what was written. Best effort: leftovers are cleaned later.
    async fn abort(self);
}

pub enum AnyTarget {
    Dir(DirTarget),
    S3(S3Target),
}

impl AnyTarget {
    /// Whether a failed start check should stop the sidecar. A folder that
    /// cannot be written is a mount or config mistake; a store that cannot be
    /// reached may come back, and the next scheduled run tries again.
    pub fn check_is_fatal(&self) -> bool {
        matches!(self, AnyTarget::Dir(_))
    }
}

pub enum AnyUpload {
    Dir(dir::DirUpload),
    S3(s3::S3Upload),
}

impl Target for AnyTarget {
    type Upload = AnyUpload;
    fn describe(&self) -> String {
        match self {
            AnyTarget::Dir(t) => t.describe(),
            AnyTarget::S3(t) => t.describe(),
        }
    }
    async fn check(&self) -> Result<()> {
        match self {
            AnyTarget::Dir(t) => t.check().await,
            AnyTarget::S3(t) => t.check().await,
        }
    }
    async fn list(&self) -> Result<Listing> {
        match self {
            AnyTarget::Dir(t) => t.list().await,
            AnyTarget::S3(t) => t.list().await,
        }
    }
    async fn begin(&self, artifact: &str) -> Result<AnyUpload> {
        match self {
            AnyTarget::Dir(t) => t.begin(artifact).await.map(AnyUpload::Dir),
            AnyTarget::S3(t) => t.begin(artifact).await.map(AnyUpload::S3),
        }
    }
    async fn open(&self, m: &Manifest) -> Result<ByteStream> {
        match self {
            AnyTarget::Dir(t) => t.open(m).await,
            AnyTarget::S3(t) => t.open(m).await,
        }
    }
    async fn delete(&self, m: &Manifest) -> Result<()> {
        match self {
            AnyTarget::Dir(t) => t.delete(m).await,
            AnyTarget::S3(t) => t.delete(m).await,
        }
    }
    async fn mark_verified(&self, m: &Manifest, at: DateTime<Utc>) -> Result<()> {
        match self {
            AnyTarget::Dir(t) => t.mark_verified(m, at).await,
            AnyTarget::S3(t) => t.mark_verified(m, at).await,
        }
    }
    async fn leftovers(&self) -> Result<Vec<Leftover>> {
        match self {
            AnyTarget::Dir(t) => t.leftovers().await,
            AnyTarget::S3(t) => t.leftovers().await,
        }
    }
    async fn remove_leftover(&self, name: &str) -> Result<()> {
        match self {
            AnyTarget::Dir(t) => t.remove_leftover(name).await,
            AnyTarget::S3(t) => t.remove_leftover(name).await,
        }
    }
}

impl Upload for AnyUpload {
    async fn write(&mut self, chunk: &[u8]) -> Result<()> {
        match self {
            AnyUpload::Dir(u) => u.write(chunk).await,
            AnyUpload::S3(u) => u.write(chunk).await,
        }
    }
    async fn commit(self, m: &Manifest) -> Result<()> {
        match self {
            AnyUpload::Dir(u) => u.commit(m).await,
            AnyUpload::S3(u) => u.commit(m).await,
        }
    }
    async fn abort(self) {
        match self {
            AnyUpload::Dir(u) => u.abort().await,
            AnyUpload::S3(u) => u.abort().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(id: &str, started: &str, verified: bool) -> Stored {
        let json = serde_json::json!({
            "format": "lifeboat/v1", "id": id, "artifact": format!("{id}.tar.zst"),
            "name": "n", "namespace": "ns", "source": id.rsplit('-').next().unwrap(),
            "layout": if id.ends_with("-files") { "paths" } else { "logical" }, "paths": ["/data"],
            "started_at": started, "finished_at": started, "compression": "zstd:3",
            "encryption": "none", "size": 1, "sha256": "00", "entries": 1, "bytes_in": 1,
            "warnings": [], "tool_version": "t", "source_meta": {}
        });
        Stored {
            manifest: Manifest::from_json(json.to_string().as_bytes()).unwrap(),
            verified_at: verified.then(Utc::now),
        }
    }

    #[test]
    fn of_two_equally_new_the_verified_comes_first() {
        let mut l = Listing {
            artifacts: vec![
                stored("20261123T020000Z-files", "2026-11-23T02:00:00Z", false),
                stored("20261123T020000Z-couchdb", "2026-11-23T02:00:00Z", true),
                stored("20261122T020000Z-files", "2026-11-22T02:00:00Z", true),
                stored("20261124T020000Z-files", "2026-11-24T02:00:00Z", false),
            ],
            problems: vec![],
        };
        l.sort_newest_first();
        let ids: Vec<&str> = l.artifacts.iter().map(|a| a.manifest.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "20261124T020000Z-files",
                "20261123T020000Z-couchdb",
                "20261123T020000Z-files",
                "20261122T020000Z-files"
            ]
        );
    }
}
