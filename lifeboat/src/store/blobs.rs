//! The storage seam under the artifact protocol: a small store of named
//! blobs ([`Blobs`]) that knows nothing of manifests, artifacts or ids. The
//! protocol (`protocol.rs`) is written once over it; a folder (`dir.rs`) and
//! S3 (`s3.rs`) implement it, and `any.rs` holds the closed set. Names are
//! plain file names inside one pod's history.

use std::path::Path;

use chrono::{DateTime, Utc};

use tokio::io::AsyncRead;

use crate::aligned::AlignedBuf;
use crate::Result;

/// A big blob's bytes as a store serves them.
pub type ByteStream = std::pin::Pin<Box<dyn AsyncRead + Send>>;

/// A complete blob as a store lists it.
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: String,
    pub modified: DateTime<Utc>,
    /// A plain blob. In a folder, false for anything but a regular file (a
    /// symlink, a folder, a FIFO): such a name is never read or removed.
    pub plain: bool,
}

/// One small blob (a manifest, a verified record) as read from a store.
/// Only `Refused` is the blob's own fault; a failed read is an error of the
/// whole listing instead, because skipping a manifest the store could not
/// serve right now would make restore take an older artifact.
pub enum Small {
    Bytes(Vec<u8>),
    /// Deleted between the listing and the read (retention ran meanwhile).
    Gone,
    /// Not a plain file, or larger than such a file may be.
    Refused(String),
}

/// A big blob opened for reading.
pub enum Opened {
    Stream(ByteStream),
    /// Missing, or not a plain file: no retry will make it readable. Says
    /// where and why.
    Unreadable(String),
}

/// An upload never finished: shown in messages as itself, and the blob it
/// would have become (which tells a WAL object's leftover from a
/// backup's: they are cleaned by different owners).
pub trait Unfinished: std::fmt::Display {
    fn blob(&self) -> String;
}

// The futures are used through the concrete types, whose Send-ness the
// compiler sees, so the usual warning about unnameable Send bounds does not apply.
#[allow(async_fn_in_trait)]
pub trait Blobs: Clone {
    type Put: Put;
    /// An upload begun and never finished or aborted (a killed process).
    type Incomplete: Unfinished;

    /// Where this is, for messages (`file:///backup/ns/pod`).
    fn describe(&self) -> String;
    /// Where one blob is, for messages (a path, a key).
    fn place(&self, name: &str) -> String;
    /// Whether a failed start check should stop the sidecar: a folder that
    /// cannot be written is a mount or config mistake; a store that cannot be
    /// reached may come back, and the next scheduled run tries again.
    fn check_is_fatal(&self) -> bool;
    /// The local folder (a mounted backup volume) this store lives in, which
    /// a restore must never count as data or remove.
    fn local_folder(&self) -> Option<&Path>;
    /// The requests sent to this store so far, by operation; a folder makes
    /// none (`store/requests.rs`).
    fn requests(&self) -> super::requests::Counts {
        Default::default()
    }

    /// A cheap check at start: can we write here?
    async fn check(&self) -> Result<()>;
    /// Every complete blob, in no particular order; none when nothing was
    /// stored yet.
    async fn names(&self) -> Result<Vec<Entry>>;
    /// Called when `names` found nothing: whether that means "nothing stored
    /// yet" (Ok) or that the store itself is missing (a folder target whose
    /// volume is not mounted must not look like a first deploy).
    async fn confirm_empty(&self) -> Result<()>;
    /// Reads a small blob whole, refusing one larger than `cap` before
    /// reading it: the store decides nothing about our memory.
    async fn get_small(&self, name: &str, cap: u64) -> Result<Small>;
    /// Opens a big blob as a stream (the caller bounds how much it reads).
    async fn open(&self, name: &str) -> Result<Opened>;
    /// Stores a small blob durably. Without `replace`, a blob of that name
    /// is never replaced where the store can refuse atomically (a folder; an
    /// S3 PUT replaces).
    async fn put_small(&self, name: &str, bytes: Vec<u8>, replace: bool) -> Result<()>;
    /// Starts a blob that becomes visible only once [`Put::finish`]ed;
    /// refuses a name that exists.
    async fn put_new(&self, name: &str) -> Result<Self::Put>;
    /// Removes a blob; one already gone is fine. With `durable`, the removal
    /// is on disk before this returns, so whatever is removed next cannot
    /// outlive it in a crash.
    async fn delete(&self, name: &str, durable: bool) -> Result<()>;
    /// Until when S3 Object Lock keeps the blob from being removed, while
    /// that is still ahead; `None` for a store or blob without a lock.
    async fn locked_until(&self, _name: &str) -> Result<Option<DateTime<Utc>>> {
        Ok(None)
    }
    /// Uploads begun and never finished or aborted, with when they began.
    async fn incomplete(&self) -> Result<Vec<(Self::Incomplete, DateTime<Utc>)>>;
    async fn abort_incomplete(&self, upload: &Self::Incomplete) -> Result<()>;
}

/// A blob being written. Chunks rather than `AsyncWrite`: every caller
/// writes whole chunks from the pipe, and a store that writes them where
/// they are (a folder) takes them without copying.
#[allow(async_fn_in_trait)]
pub trait Put {
    /// Takes the chunk's bytes and hands a buffer back, emptied, for the
    /// caller to fill again: this one, or one written earlier; none while
    /// a store still holds every buffer it was given (a folder's first
    /// chunk is still being written).
    async fn write(&mut self, chunk: AlignedBuf) -> Result<Option<AlignedBuf>>;
    /// Makes the blob durable and visible, never replacing one that appeared
    /// meanwhile where the store can refuse that. On failure nothing of it
    /// stays visible (what is left is an incomplete upload at worst).
    async fn finish(self) -> Result<()>;
    /// Removes what was written. Best effort: leftovers are cleaned later.
    async fn abort(self);
}
