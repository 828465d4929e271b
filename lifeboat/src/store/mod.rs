//! Targets store artifacts: one pod's history of artifacts and manifests.
//! Two layers (docs/ARCHITECTURE.md, "The seams"):
//!
//! - `blobs.rs`: the storage seam, [`Blobs`], a small store of named blobs
//!   that knows nothing of manifests; `dir.rs` (a folder) and `s3.rs`
//!   implement it, `any.rs` holds the closed set ([`AnyBlobs`]).
//! - `protocol.rs`: the artifact protocol, written once over any store
//!   ([`Artifacts`], the [`Target`] seam the pipelines use): manifest-last
//!   commit, listing with problems, verified records, deletion order,
//!   leftovers.
//!
//! Every store must pass the shared suite in `tests/store_suite.rs`.

mod any;
pub mod blobs;
pub mod dir;
pub mod object_lock;
pub mod protocol;
pub mod requests;
pub mod s3;
mod s3_http;

use std::path::PathBuf;

pub use any::{AnyBlobs, AnyIncomplete, AnyPut};
pub use blobs::{Blobs, ByteStream, Entry, Opened, Put, Small};
pub use dir::DirBlobs;
pub use object_lock::{LockMode, ObjectLock};
pub use protocol::{
    is_orphan, parse_listed, parse_verified, verified_record, ArtifactUpload, Artifacts, Leftover,
    Listing, Removal, Stored, Target, Upload, WalListing, MAX_VERIFIED_BYTES, READ_PAST_SIZE,
};
pub use s3::{S3Blobs, S3Options};

/// One pod's history on one configured target.
pub type AnyTarget = Artifacts<AnyBlobs>;
/// An artifact being written to an [`AnyTarget`].
pub type AnyUpload = ArtifactUpload<AnyBlobs>;

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
            TargetSpec::Dir(base) => Artifacts::new(AnyBlobs::Dir(DirBlobs::new(
                base.clone(),
                base.join(namespace).join(name),
            ))),
            TargetSpec::S3 { bucket, prefix } => {
                let root = [prefix.as_str(), namespace, name]
                    .iter()
                    .filter(|p| !p.is_empty())
                    .copied()
                    .collect::<Vec<_>>()
                    .join("/");
                let blobs = S3Blobs::new(s3::client(s3).await, bucket.clone(), root, s3);
                Artifacts::new(AnyBlobs::S3(blobs))
            }
        }
    }
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
