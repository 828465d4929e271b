//! The artifact protocol, written once over any [`Blobs`] store
//! (docs/ARCHITECTURE.md, "Commit protocol and crash safety"). An artifact
//! exists only once its manifest, written last, exists: commit puts the
//! artifact, then the manifest; delete removes the manifest first; a listing
//! starts from manifests and reports the ones it cannot read instead of
//! failing; what no manifest covers is a leftover.

use std::collections::HashSet;
use std::path::Path;

use chrono::{DateTime, Utc};
use tokio::io::AsyncReadExt;

use super::blobs::{Blobs, ByteStream, Entry, Opened, Put, Small, Unfinished};
use crate::aligned::AlignedBuf;
use crate::artifact::{self, MANIFEST_SUFFIX};
use crate::drill::{DrillRecord, MAX_DRILL_BYTES};
use crate::manifest::{Manifest, StateBlob, MAX_MANIFEST_BYTES};
use crate::pipe::{self, HashCount};
use crate::{Error, Result};

/// The largest verified record read from a store (ours are ~150 bytes).
pub const MAX_VERIFIED_BYTES: u64 = 64 * 1024;

/// Bytes read from a store past an artifact's recorded `size`: enough to
/// tell "appended to" from "exact", never the appended gigabytes.
pub const READ_PAST_SIZE: u64 = 64 * 1024;

/// A committed artifact as a target lists it.
#[derive(Debug, Clone)]
pub struct Stored {
    pub manifest: Manifest,
    /// When `verify` last re-read it successfully.
    pub verified_at: Option<DateTime<Utc>>,
    /// What the newest restore drill of it found.
    pub drill: Option<DrillRecord>,
}

impl Stored {
    /// A drill proved it does not bring the app back (an inconclusive one
    /// proved nothing).
    pub fn failed_drill(&self) -> bool {
        self.drill.as_ref().is_some_and(DrillRecord::has_failed)
    }

    /// A drill brought the app back on it.
    pub fn passed_drill(&self) -> bool {
        self.drill.as_ref().is_some_and(DrillRecord::has_passed)
    }
}

/// What `list` found: committed artifacts newest first, and manifests it
/// could not read (reported, never fatal: one bad file must not hide the rest).
#[derive(Debug, Default)]
pub struct Listing {
    pub artifacts: Vec<Stored>,
    pub problems: Vec<String>,
}

/// What `list_wal` found: the WAL objects of a PostgreSQL pod's continuous
/// archive (`crate::wal`), oldest first, and manifests it could not read.
/// Kept apart from [`Listing`]: they are not backups, and nothing that
/// picks, counts or deletes backups may take one for one.
#[derive(Debug, Default)]
pub struct WalListing {
    pub objects: Vec<Manifest>,
    pub problems: Vec<String>,
    /// One past the largest sequence any `wal-*` file names (committed,
    /// unreadable or left over): the next object's, never one in use.
    pub next_sequence: u32,
}

impl Listing {
    /// Newest first; of two equally new, the one that passed a drill
    /// first, then the one that passed `verify` (the order `list` shows;
    /// `restore::candidates` orders across targets by time and id).
    pub fn sort_newest_first(&mut self) {
        let key = |s: &Stored| {
            (
                s.manifest.started_at,
                s.passed_drill(),
                s.verified_at.is_some(),
            )
        };
        self.artifacts
            .sort_by(|a, b| (key(b), &b.manifest.id).cmp(&(key(a), &a.manifest.id)));
    }
}

/// A listed manifest: its own checks ([`Manifest::from_json`]), and its id
/// must be the one its file name carries, so a manifest copied or crafted
/// under another name cannot speak for an artifact that is not its own.
pub fn parse_listed(file_name: &str, bytes: &[u8]) -> std::result::Result<Manifest, String> {
    let m = Manifest::from_json(bytes)?;
    if file_name != artifact::manifest_name(&m.id) {
        return Err(format!(
            "its id {:?} does not match its file name {file_name:?}",
            m.id
        ));
    }
    Ok(m)
}

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
pub fn is_orphan(name: &str, committed: &HashSet<&str>) -> bool {
    if name.starts_with('.') {
        return false;
    }
    for suffix in [
        artifact::VERIFIED_SUFFIX,
        artifact::DRILL_SUFFIX,
        artifact::STATE_SUFFIX,
    ] {
        if let Some(id) = name.strip_suffix(suffix) {
            return !committed.contains(id);
        }
    }
    name.contains(".tar") && !committed.contains(name.split(".tar").next().unwrap_or_default())
}

/// What a removal did. Under S3 Object Lock a blob cannot go before its
/// retain-until date; that is not a failure, only a removal that waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    Removed,
    /// Nothing was removed; a later run can.
    LockedUntil(DateTime<Utc>),
}

/// Something written but never committed (a crash, a kill, a full disk).
#[derive(Debug, Clone)]
pub struct Leftover<U> {
    /// What it is called in messages.
    pub name: String,
    /// The blob it was to become (a WAL object's file begins `wal-`).
    pub blob: String,
    pub modified: DateTime<Utc>,
    what: Left<U>,
}

impl<U> Leftover<U> {
    /// An upload never finished (removed with an abort, not a delete).
    pub fn is_upload(&self) -> bool {
        matches!(self.what, Left::Upload(_))
    }
}

#[derive(Debug, Clone)]
enum Left<U> {
    /// A blob no manifest covers.
    Blob,
    /// An upload never finished or aborted.
    Upload(U),
}

// The futures are used through the concrete types, whose Send-ness the
// compiler sees, so the usual warning about unnameable Send bounds does not apply.
#[allow(async_fn_in_trait)]
pub trait Target {
    type Upload: Upload;
    /// An upload of the store's own that was never finished.
    type Incomplete;

    /// Where this is, for messages (`file:///backup/ns/pod`).
    fn describe(&self) -> String;
    /// A cheap check at start: can we write here?
    async fn check(&self) -> Result<()>;
    async fn list(&self) -> Result<Listing>;
    /// The WAL objects (`wal-*` manifests), which `list` leaves out.
    async fn list_wal(&self) -> Result<WalListing>;
    /// Starts an artifact upload; nothing is visible until `commit`.
    async fn begin(&self, artifact: &str) -> Result<Self::Upload>;
    /// The artifact's bytes, at most [`READ_PAST_SIZE`] past its `size`.
    async fn open(&self, manifest: &Manifest) -> Result<ByteStream>;
    /// Stores the chain state a link leaves for the next (`<id>.state.zst`),
    /// before the link's manifest: until that is committed it is a leftover
    /// like any uncommitted blob. Returns what the manifest records of it.
    async fn put_state(&self, id: &str, bytes: ByteStream) -> Result<StateBlob>;
    /// The state a link left, at most [`READ_PAST_SIZE`] past its recorded
    /// size; `None` when its manifest records none.
    async fn open_state(&self, manifest: &Manifest) -> Result<Option<ByteStream>>;
    /// Removes the manifest first, so a crash leaves a leftover, not a
    /// broken commit; nothing while the manifest's object lock holds.
    async fn delete(&self, manifest: &Manifest) -> Result<Removal>;
    /// Until when the artifact's object lock holds it, while it does (its
    /// manifest's lock: written last, it ends last).
    async fn locked_until(&self, manifest: &Manifest) -> Result<Option<DateTime<Utc>>>;
    async fn mark_verified(&self, manifest: &Manifest, at: DateTime<Utc>) -> Result<()>;
    /// Leaves a drill's record beside the artifact (replacing an older one).
    async fn record_drill(&self, manifest: &Manifest, record: &DrillRecord) -> Result<()>;
    async fn leftovers(&self) -> Result<Vec<Leftover<Self::Incomplete>>>;
    async fn remove_leftover(&self, leftover: &Leftover<Self::Incomplete>) -> Result<Removal>;
}

/// An upload in progress. Chunks rather than `AsyncWrite`: every caller
/// writes whole chunks from the pipe, handed over without a copy.
#[allow(async_fn_in_trait)]
pub trait Upload {
    /// Takes the chunk's bytes and hands a buffer back, emptied, for the
    /// pipe to fill again, or none yet (see [`Put::write`]).
    async fn write(&mut self, chunk: AlignedBuf) -> Result<Option<AlignedBuf>>;
    /// Makes the artifact durable and visible, manifest last.
    async fn commit(self, manifest: &Manifest) -> Result<()>;
    /// Removes what was written. Best effort: leftovers are cleaned later.
    async fn abort(self);
}

/// One pod's history of artifacts in a blob store.
pub struct Artifacts<B> {
    blobs: B,
}

impl<B: Blobs> Artifacts<B> {
    pub fn new(blobs: B) -> Self {
        Artifacts { blobs }
    }

    /// Whether a failed start check should stop the sidecar (see
    /// [`Blobs::check_is_fatal`]).
    pub fn check_is_fatal(&self) -> bool {
        self.blobs.check_is_fatal()
    }

    /// The local folder this history lives in, if any (see [`Blobs::local_folder`]).
    pub fn local_folder(&self) -> Option<&Path> {
        self.blobs.local_folder()
    }

    /// The requests sent to the store so far (see [`Blobs::requests`]).
    pub fn requests(&self) -> super::requests::Counts {
        self.blobs.requests()
    }

    fn err(&self, message: String) -> Error {
        Error::Target {
            target: self.blobs.describe(),
            message,
        }
    }

    /// A listed manifest: `None` when it went away meanwhile, `Err` with the
    /// problem when it cannot be used.
    async fn read_manifest(
        &self,
        name: &str,
    ) -> Result<Option<std::result::Result<Manifest, String>>> {
        let place = self.blobs.place(name);
        Ok(
            match self.blobs.get_small(name, MAX_MANIFEST_BYTES).await? {
                Small::Gone => None,
                Small::Refused(e) => Some(Err(format!("{place}: {e}"))),
                Small::Bytes(b) => Some(
                    parse_listed(name, &b)
                        .map_err(|e| format!("{place}: not a valid manifest: {e}")),
                ),
            },
        )
    }

    /// Removes a blob unless an object lock still holds it.
    async fn remove(&self, name: &str, durable: bool) -> Result<Removal> {
        if let Some(until) = self.blobs.locked_until(name).await? {
            return Ok(Removal::LockedUntil(until));
        }
        self.blobs.delete(name, durable).await?;
        Ok(Removal::Removed)
    }

    /// The artifact's drill record; one that cannot be read, or speaks for
    /// other bytes, only loses that fact.
    async fn drill(&self, m: &Manifest, names: &HashSet<&str>) -> Option<DrillRecord> {
        let name = artifact::drill_name(&m.id);
        if !names.contains(name.as_str()) {
            return None;
        }
        match self.blobs.get_small(&name, MAX_DRILL_BYTES).await {
            Ok(Small::Bytes(b)) => DrillRecord::parse_for(&b, m),
            _ => None,
        }
    }

    /// When the artifact was last verified; a record that cannot be read
    /// only loses that fact.
    async fn verified_at(&self, m: &Manifest, names: &HashSet<&str>) -> Option<DateTime<Utc>> {
        let name = artifact::verified_name(&m.id);
        if !names.contains(name.as_str()) {
            return None;
        }
        match self.blobs.get_small(&name, MAX_VERIFIED_BYTES).await {
            Ok(Small::Bytes(b)) => parse_verified(&b),
            _ => None,
        }
    }
}

impl<B: Blobs> Target for Artifacts<B> {
    type Upload = ArtifactUpload<B>;
    type Incomplete = B::Incomplete;

    fn describe(&self) -> String {
        self.blobs.describe()
    }

    async fn check(&self) -> Result<()> {
        self.blobs.check().await
    }

    async fn list(&self) -> Result<Listing> {
        let entries = self.blobs.names().await?;
        if entries.is_empty() {
            self.blobs.confirm_empty().await?;
        }
        let names: HashSet<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        let mut listing = Listing::default();
        let backups = entries
            .iter()
            .filter(|e| is_manifest_name(&e.name) && !is_wal_name(&e.name));
        for e in backups {
            match self.read_manifest(&e.name).await? {
                None => {}
                Some(Err(problem)) => listing.problems.push(problem),
                Some(Ok(manifest)) => {
                    let verified_at = self.verified_at(&manifest, &names).await;
                    let drill = self.drill(&manifest, &names).await;
                    listing.artifacts.push(Stored {
                        manifest,
                        verified_at,
                        drill,
                    });
                }
            }
        }
        listing.sort_newest_first();
        Ok(listing)
    }

    async fn list_wal(&self) -> Result<WalListing> {
        let entries = self.blobs.names().await?;
        let mut listing = WalListing {
            next_sequence: entries
                .iter()
                .filter_map(|e| {
                    crate::wal::object::parse_id(e.name.split('.').next().unwrap_or_default())
                })
                .map(|(_, seq)| seq.saturating_add(1))
                .max()
                .unwrap_or(0),
            ..Default::default()
        };
        let objects = entries
            .iter()
            .filter(|e| is_manifest_name(&e.name) && is_wal_name(&e.name));
        for e in objects {
            match self.read_manifest(&e.name).await? {
                Some(Ok(m)) if m.wal.is_some() => listing.objects.push(m),
                Some(Ok(m)) => listing.problems.push(format!(
                    "{}: named like a WAL object but has no wal section",
                    m.id
                )),
                Some(Err(problem)) => listing.problems.push(problem),
                None => {}
            }
        }
        listing.objects.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(listing)
    }

    async fn begin(&self, name: &str) -> Result<ArtifactUpload<B>> {
        artifact::check_file_name(name).map_err(|e| self.err(e))?;
        let put = self.blobs.put_new(name).await?;
        Ok(ArtifactUpload {
            blobs: self.blobs.clone(),
            name: name.to_string(),
            put,
        })
    }

    async fn open(&self, m: &Manifest) -> Result<ByteStream> {
        match self.blobs.open(&m.artifact).await? {
            // Appended gigabytes are noticed after READ_PAST_SIZE, not read.
            Opened::Stream(s) => Ok(Box::pin(s.take(m.size.saturating_add(READ_PAST_SIZE)))),
            // The manifest is there but its artifact cannot be read: no retry
            // brings it back, so it counts as a bad artifact, not a store problem.
            Opened::Unreadable(reason) => Err(Error::Corrupt {
                id: m.id.clone(),
                reason,
            }),
        }
    }

    async fn put_state(&self, id: &str, mut bytes: ByteStream) -> Result<StateBlob> {
        let file = artifact::state_name(id);
        let mut put = self.blobs.put_new(&file).await?;
        let mut stored = HashCount::default();
        let mut spare = None;
        loop {
            let chunk = match pipe::read_chunk(&mut bytes, spare.take()).await {
                Ok(c) if c.is_empty() => break,
                Ok(c) => c,
                Err(e) => {
                    put.abort().await;
                    return Err(Error::io(format!("reading the state for {file}"), e));
                }
            };
            stored.update(&chunk);
            match put.write(chunk).await {
                Ok(back) => spare = back,
                Err(e) => {
                    put.abort().await;
                    return Err(e);
                }
            }
        }
        put.finish().await?;
        let (sha256, size) = stored.finish();
        Ok(StateBlob { file, size, sha256 })
    }

    async fn open_state(&self, m: &Manifest) -> Result<Option<ByteStream>> {
        let Some(st) = &m.state else {
            return Ok(None);
        };
        match self.blobs.open(&st.file).await? {
            Opened::Stream(s) => Ok(Some(Box::pin(
                s.take(st.size.saturating_add(READ_PAST_SIZE)),
            ))),
            Opened::Unreadable(reason) => Err(Error::Corrupt {
                id: m.id.clone(),
                reason: format!("its chain state: {reason}"),
            }),
        }
    }

    async fn locked_until(&self, m: &Manifest) -> Result<Option<DateTime<Utc>>> {
        self.blobs
            .locked_until(&artifact::manifest_name(&m.id))
            .await
    }

    async fn delete(&self, m: &Manifest) -> Result<Removal> {
        // Written last, the manifest is locked longest of the artifact's
        // own blobs: once it may go, they may too. Its removal is durable
        // before the data goes: a crash in between leaves a leftover, never
        // a manifest that points at nothing.
        let manifest = self.remove(&artifact::manifest_name(&m.id), true).await?;
        if manifest != Removal::Removed {
            return Ok(manifest);
        }
        self.blobs.delete(&m.artifact, false).await?;
        if let Some(st) = &m.state {
            self.blobs.delete(&st.file, false).await?;
        }
        // Records written after the manifest may be locked beyond it; one
        // left is a leftover, removed once its lock ends.
        for record in [artifact::verified_name(&m.id), artifact::drill_name(&m.id)] {
            self.remove(&record, false).await?;
        }
        Ok(Removal::Removed)
    }

    async fn mark_verified(&self, m: &Manifest, at: DateTime<Utc>) -> Result<()> {
        let record = verified_record(m, at);
        self.blobs
            .put_small(&artifact::verified_name(&m.id), record, true)
            .await
    }

    async fn record_drill(&self, m: &Manifest, record: &DrillRecord) -> Result<()> {
        self.blobs
            .put_small(&artifact::drill_name(&m.id), record.to_json(), true)
            .await
    }

    async fn leftovers(&self) -> Result<Vec<Leftover<B::Incomplete>>> {
        let entries: Vec<Entry> = self.blobs.names().await?;
        let plain = || entries.iter().filter(|e| e.plain);
        let committed: HashSet<&str> = plain()
            .filter_map(|e| e.name.strip_suffix(MANIFEST_SUFFIX))
            .filter(|id| !id.starts_with('.'))
            .collect();
        let mut out: Vec<_> = plain()
            .filter(|e| is_orphan(&e.name, &committed))
            .map(|e| Leftover {
                name: e.name.clone(),
                blob: e.name.clone(),
                modified: e.modified,
                what: Left::Blob,
            })
            .collect();
        for (upload, started) in self.blobs.incomplete().await? {
            out.push(Leftover {
                name: upload.to_string(),
                blob: upload.blob(),
                modified: started,
                what: Left::Upload(upload),
            });
        }
        Ok(out)
    }

    async fn remove_leftover(&self, leftover: &Leftover<B::Incomplete>) -> Result<Removal> {
        match &leftover.what {
            Left::Blob => self.remove(&leftover.name, false).await,
            Left::Upload(upload) => {
                self.blobs.abort_incomplete(upload).await?;
                Ok(Removal::Removed)
            }
        }
    }
}

/// A WAL object's file (`crate::wal::object`): never a backup.
fn is_wal_name(name: &str) -> bool {
    name.starts_with(crate::wal::object::ID_PREFIX)
}

fn is_manifest_name(name: &str) -> bool {
    !name.starts_with('.') && name.ends_with(MANIFEST_SUFFIX)
}

/// An artifact being written into a blob store.
pub struct ArtifactUpload<B: Blobs> {
    blobs: B,
    name: String,
    put: B::Put,
}

impl<B: Blobs> Upload for ArtifactUpload<B> {
    async fn write(&mut self, chunk: AlignedBuf) -> Result<Option<AlignedBuf>> {
        self.put.write(chunk).await
    }

    async fn commit(self, manifest: &Manifest) -> Result<()> {
        self.put.finish().await?;
        let name = artifact::manifest_name(&manifest.id);
        if let Err(e) = self.blobs.put_small(&name, manifest.to_json(), false).await {
            // Without its manifest the artifact does not count; do not leave it behind.
            let _ = self.blobs.delete(&self.name, false).await;
            return Err(e);
        }
        Ok(())
    }

    async fn abort(self) {
        self.put.abort().await;
    }
}

/// The protocol against a store in memory that records what it is asked,
/// so the order of puts and deletes is pinned independently of any backend.
#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Default)]
    struct State {
        blobs: BTreeMap<String, Vec<u8>>,
        uploads: Vec<String>,
        log: Vec<String>,
        refuse_puts: bool,
        /// Blobs under an object lock, and until when.
        locked: BTreeMap<String, DateTime<Utc>>,
    }

    #[derive(Clone, Default)]
    struct Mem(Arc<Mutex<State>>);

    impl Mem {
        fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
            f(&mut self.0.lock().unwrap())
        }
        fn log(&self, line: String) {
            self.with(|s| s.log.push(line));
        }
        fn take_log(&self) -> Vec<String> {
            self.with(|s| std::mem::take(&mut s.log))
        }
        fn insert(&self, name: &str, bytes: &[u8]) {
            self.with(|s| s.blobs.insert(name.into(), bytes.to_vec()));
        }
        fn refused(&self, why: &str) -> Error {
            Error::Target {
                target: self.describe(),
                message: why.into(),
            }
        }
    }

    struct MemPut {
        mem: Mem,
        name: String,
        buf: Vec<u8>,
    }

    impl Unfinished for String {
        fn blob(&self) -> String {
            self.clone()
        }
    }

    impl Blobs for Mem {
        type Put = MemPut;
        type Incomplete = String;
        fn describe(&self) -> String {
            "mem://h".into()
        }
        fn place(&self, name: &str) -> String {
            format!("mem://h/{name}")
        }
        fn check_is_fatal(&self) -> bool {
            false
        }
        fn local_folder(&self) -> Option<&Path> {
            None
        }
        async fn check(&self) -> Result<()> {
            Ok(())
        }
        async fn names(&self) -> Result<Vec<Entry>> {
            let names: Vec<String> = self.with(|s| s.blobs.keys().cloned().collect());
            Ok(names
                .into_iter()
                .map(|name| Entry {
                    name,
                    modified: Utc::now(),
                    plain: true,
                })
                .collect())
        }
        async fn confirm_empty(&self) -> Result<()> {
            Ok(())
        }
        async fn get_small(&self, name: &str, cap: u64) -> Result<Small> {
            Ok(match self.with(|s| s.blobs.get(name).cloned()) {
                None => Small::Gone,
                Some(b) if b.len() as u64 > cap => Small::Refused("too big".into()),
                Some(b) => Small::Bytes(b),
            })
        }
        async fn open(&self, name: &str) -> Result<Opened> {
            Ok(match self.with(|s| s.blobs.get(name).cloned()) {
                None => Opened::Unreadable(format!("{name} is missing")),
                Some(b) => Opened::Stream(Box::pin(std::io::Cursor::new(b))),
            })
        }
        async fn put_small(&self, name: &str, bytes: Vec<u8>, replace: bool) -> Result<()> {
            self.log(format!("put {name}"));
            if self.with(|s| s.refuse_puts || (!replace && s.blobs.contains_key(name))) {
                return Err(self.refused("refused"));
            }
            self.insert(name, &bytes);
            Ok(())
        }
        async fn put_new(&self, name: &str) -> Result<MemPut> {
            if self.with(|s| s.blobs.contains_key(name)) {
                return Err(self.refused("exists"));
            }
            self.log(format!("put-new {name}"));
            self.with(|s| s.uploads.push(name.into()));
            Ok(MemPut {
                mem: self.clone(),
                name: name.into(),
                buf: Vec::new(),
            })
        }
        async fn delete(&self, name: &str, durable: bool) -> Result<()> {
            let how = if durable { " (durable)" } else { "" };
            self.log(format!("delete {name}{how}"));
            self.with(|s| s.blobs.remove(name));
            Ok(())
        }
        async fn locked_until(&self, name: &str) -> Result<Option<DateTime<Utc>>> {
            Ok(self.with(|s| s.locked.get(name).copied()))
        }
        async fn incomplete(&self) -> Result<Vec<(String, DateTime<Utc>)>> {
            let uploads = self.with(|s| s.uploads.clone());
            Ok(uploads.into_iter().map(|u| (u, Utc::now())).collect())
        }
        async fn abort_incomplete(&self, upload: &String) -> Result<()> {
            self.log(format!("abort {upload}"));
            self.with(|s| s.uploads.retain(|u| u != upload));
            Ok(())
        }
    }

    impl Put for MemPut {
        async fn write(&mut self, mut chunk: AlignedBuf) -> Result<Option<AlignedBuf>> {
            self.buf.extend_from_slice(&chunk);
            chunk.clear();
            Ok(Some(chunk))
        }
        async fn finish(self) -> Result<()> {
            self.mem.log(format!("finish {}", self.name));
            self.mem.insert(&self.name, &self.buf);
            self.mem.with(|s| s.uploads.retain(|u| *u != self.name));
            Ok(())
        }
        async fn abort(self) {
            self.mem.with(|s| s.uploads.retain(|u| *u != self.name));
        }
    }

    const ID: &str = "20260102T000000Z-files";

    fn manifest(id: &str, size: u64) -> Manifest {
        let json = serde_json::json!({
            "format": "lifeboat/v1", "id": id, "artifact": format!("{id}.tar.zst"),
            "name": "n", "namespace": "ns", "source": "files", "layout": "paths",
            "paths": ["/data"], "started_at": "2026-01-02T00:00:00Z",
            "finished_at": "2026-01-02T00:00:00Z", "compression": "zstd:3",
            "encryption": "none", "size": size, "sha256": "00", "entries": 1, "bytes_in": 1,
            "warnings": [], "tool_version": "t", "source_meta": {}
        });
        Manifest::from_json(json.to_string().as_bytes()).unwrap()
    }

    /// The names `leftovers` reports, sorted.
    async fn leftover_names(t: &Artifacts<Mem>) -> Vec<String> {
        let mut names: Vec<String> = t
            .leftovers()
            .await
            .unwrap()
            .into_iter()
            .map(|l| l.name)
            .collect();
        names.sort();
        names
    }

    async fn committed(t: &Artifacts<Mem>, m: &Manifest, body: &[u8]) {
        let mut up = t.begin(&m.artifact).await.unwrap();
        up.write(AlignedBuf::from_slice(body)).await.unwrap();
        up.commit(m).await.unwrap();
    }

    #[tokio::test]
    async fn the_manifest_is_written_last_and_deleted_first() {
        let mem = Mem::default();
        let t = Artifacts::new(mem.clone());
        let m = manifest(ID, 4);
        committed(&t, &m, b"data").await;
        assert_eq!(
            mem.take_log(),
            [
                format!("put-new {ID}.tar.zst"),
                format!("finish {ID}.tar.zst"),
                format!("put {ID}.manifest.json"),
            ]
        );
        let at = Utc::now();
        t.mark_verified(&m, at).await.unwrap();
        let drill = DrillRecord::new(
            &m,
            crate::drill::Verdict::Failed,
            2.0,
            "test -f /data/x",
            "no such file",
        );
        t.record_drill(&m, &drill).await.unwrap();
        let listing = t.list().await.unwrap();
        assert_eq!(listing.artifacts[0].verified_at, Some(at));
        assert_eq!(listing.artifacts[0].drill, Some(drill));
        assert!(listing.artifacts[0].failed_drill());
        mem.take_log();
        t.delete(&m).await.unwrap();
        assert_eq!(
            mem.take_log(),
            [
                format!("delete {ID}.manifest.json (durable)"),
                format!("delete {ID}.tar.zst"),
                format!("delete {ID}.verified.json"),
                format!("delete {ID}.drill.json"),
            ]
        );
        assert!(mem.with(|s| s.blobs.is_empty()));
    }

    #[tokio::test]
    async fn a_locked_manifest_keeps_everything_and_a_locked_record_stays_a_leftover() {
        let mem = Mem::default();
        let t = Artifacts::new(mem.clone());
        let m = manifest(ID, 4);
        committed(&t, &m, b"data").await;
        t.mark_verified(&m, Utc::now()).await.unwrap();
        let until = Utc::now() + chrono::TimeDelta::days(1);
        let manifest_name = format!("{ID}.manifest.json");
        mem.with(|s| s.locked.insert(manifest_name.clone(), until));
        mem.take_log();
        assert_eq!(t.delete(&m).await.unwrap(), Removal::LockedUntil(until));
        assert!(mem.take_log().is_empty(), "nothing was asked to go");
        assert_eq!(t.list().await.unwrap().artifacts.len(), 1);
        // The manifest's lock ended; the record written after it is still held.
        let verified = format!("{ID}.verified.json");
        mem.with(|s| {
            s.locked.remove(&manifest_name);
            s.locked.insert(verified.clone(), until);
        });
        assert_eq!(t.delete(&m).await.unwrap(), Removal::Removed);
        assert_eq!(leftover_names(&t).await, [verified]);
        let left = t.leftovers().await.unwrap().remove(0);
        assert_eq!(
            t.remove_leftover(&left).await.unwrap(),
            Removal::LockedUntil(until)
        );
        mem.with(|s| s.locked.clear());
        assert_eq!(t.remove_leftover(&left).await.unwrap(), Removal::Removed);
        assert!(mem.with(|s| s.blobs.is_empty()));
    }

    #[tokio::test]
    async fn a_manifest_that_cannot_be_stored_takes_its_artifact_along() {
        let mem = Mem::default();
        let t = Artifacts::new(mem.clone());
        let mut up = t.begin(&format!("{ID}.tar.zst")).await.unwrap();
        up.write(AlignedBuf::from_slice(b"data")).await.unwrap();
        mem.with(|s| s.refuse_puts = true);
        assert!(up.commit(&manifest(ID, 4)).await.is_err());
        assert!(mem.with(|s| s.blobs.is_empty()));
        assert!(t.begin("../x.tar").await.is_err(), "not a plain file name");
    }

    #[tokio::test]
    async fn a_listing_reports_what_it_cannot_use_and_lists_the_rest() {
        let mem = Mem::default();
        let t = Artifacts::new(mem.clone());
        committed(&t, &manifest(ID, 4), b"data").await;
        let other = "20260103T000000Z-files";
        mem.insert(
            &format!("{other}.manifest.json"),
            &manifest(ID, 4).to_json(),
        );
        mem.insert("20260104T000000Z-files.manifest.json", b"{ not json");
        let big = vec![b' '; MAX_VERIFIED_BYTES as usize + 1];
        mem.insert(&format!("{ID}.verified.json"), &big);
        // A drill record for other bytes under this id does not count.
        let mut other_bytes = manifest(ID, 4);
        other_bytes.sha256 = "11".into();
        let foreign =
            DrillRecord::new(&other_bytes, crate::drill::Verdict::Passed, 1.0, "true", "");
        mem.insert(&format!("{ID}.drill.json"), &foreign.to_json());
        mem.insert(".hidden.manifest.json", b"ignored");
        let listing = t.list().await.unwrap();
        assert_eq!(listing.artifacts.len(), 1);
        assert_eq!(listing.artifacts[0].verified_at, None, "record too big");
        assert_eq!(listing.artifacts[0].drill, None, "record for other bytes");
        assert_eq!(listing.problems.len(), 2, "{:?}", listing.problems);
        assert!(listing.problems[0].starts_with(&format!(
            "mem://h/{other}.manifest.json: not a valid manifest: its id"
        )));
    }

    #[tokio::test]
    async fn wal_objects_are_listed_apart_and_the_next_sequence_passes_every_wal_file() {
        let mem = Mem::default();
        let t = Artifacts::new(mem.clone());
        committed(&t, &manifest(ID, 4), b"data").await;
        // A committed object, and the data of one whose manifest never came.
        let wal = |seq: u32| {
            let id = crate::wal::object::id(1, seq);
            let json = serde_json::json!({
                "format": "lifeboat/v1", "id": id, "artifact": format!("{id}.tar.zst"),
                "name": "n", "namespace": "ns", "source": "postgres", "layout": "paths",
                "paths": ["/data"], "started_at": "2026-01-02T00:00:00Z",
                "finished_at": "2026-01-02T00:00:00Z", "compression": "zstd:3",
                "encryption": "none", "size": 4, "sha256": "00", "entries": 1, "bytes_in": 1,
                "warnings": [], "tool_version": "t", "source_meta": {},
                "wal": {"timeline": 1, "sequence": seq, "from": "0/1000000", "to": "0/1000100",
                        "segment_size": 16777216, "system_identifier": "7"}
            });
            Manifest::from_json(json.to_string().as_bytes()).unwrap()
        };
        committed(&t, &wal(3), b"wal!").await;
        mem.insert("wal-00000001-00000009.tar.zst", b"cut off");
        let backups = t.list().await.unwrap();
        assert_eq!(backups.artifacts.len(), 1, "{backups:?}");
        assert!(backups.problems.is_empty(), "{backups:?}");
        let w = t.list_wal().await.unwrap();
        assert_eq!(w.objects.len(), 1);
        assert_eq!(w.objects[0].wal.as_ref().unwrap().sequence, 3);
        assert_eq!(
            w.next_sequence, 10,
            "never a sequence a leftover still names"
        );
    }

    #[tokio::test]
    async fn leftovers_are_what_no_manifest_covers_and_unfinished_uploads() {
        let mem = Mem::default();
        let t = Artifacts::new(mem.clone());
        committed(&t, &manifest(ID, 4), b"data").await;
        mem.insert("20260105T000000Z-files.tar.zst", b"orphan");
        mem.insert("20260106T000000Z-files.verified.json", b"{}");
        mem.insert(".lifeboat-probe-1", b"not ours to judge");
        let _never_finished = t.begin("20260107T000000Z-files.tar").await.unwrap();
        let names = leftover_names(&t).await;
        assert_eq!(
            names,
            [
                "20260105T000000Z-files.tar.zst",
                "20260106T000000Z-files.verified.json",
                "20260107T000000Z-files.tar",
            ]
        );
        for l in t.leftovers().await.unwrap() {
            t.remove_leftover(&l).await.unwrap();
        }
        assert!(t.leftovers().await.unwrap().is_empty());
        assert_eq!(t.list().await.unwrap().artifacts.len(), 1);
        assert!(mem
            .take_log()
            .contains(&"abort 20260107T000000Z-files.tar".to_string()));
    }

    #[tokio::test]
    async fn an_artifact_is_read_at_most_a_little_past_its_size() {
        let mem = Mem::default();
        let t = Artifacts::new(mem.clone());
        let m = manifest(ID, 10);
        mem.insert(&m.artifact, &vec![1u8; 10 + READ_PAST_SIZE as usize + 1000]);
        let mut read = Vec::new();
        t.open(&m)
            .await
            .unwrap()
            .read_to_end(&mut read)
            .await
            .unwrap();
        assert_eq!(read.len() as u64, 10 + READ_PAST_SIZE);
        let missing = manifest("20260108T000000Z-files", 1);
        assert!(matches!(t.open(&missing).await, Err(Error::Corrupt { .. })));
    }

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
            drill: None,
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
        // A passed drill outranks a verify among equally new ones.
        let mut drilled = stored("20261123T020000Z-postgres", "2026-11-23T02:00:00Z", false);
        drilled.drill = Some(DrillRecord::new(
            &drilled.manifest,
            crate::drill::Verdict::Passed,
            1.0,
            "true",
            "",
        ));
        l.artifacts.push(drilled);
        l.sort_newest_first();
        assert_eq!(l.artifacts[1].manifest.id, "20261123T020000Z-postgres");
    }

    #[test]
    fn a_drill_record_or_a_state_without_its_manifest_is_a_leftover() {
        let committed: HashSet<&str> = ["20261123T020000Z-files"].into_iter().collect();
        assert!(!is_orphan("20261123T020000Z-files.drill.json", &committed));
        assert!(is_orphan("20261122T020000Z-files.drill.json", &committed));
        assert!(!is_orphan("20261123T020000Z-files.state.zst", &committed));
        assert!(is_orphan("20261122T020000Z-files.state.zst", &committed));
    }

    #[tokio::test]
    async fn a_links_state_is_stored_before_its_manifest_and_deleted_after_it() {
        let mem = Mem::default();
        let t = Artifacts::new(mem.clone());
        let mut m = manifest(ID, 4);
        let state: ByteStream = Box::pin(std::io::Cursor::new(b"state".to_vec()));
        let blob = t.put_state(ID, state).await.unwrap();
        assert_eq!(blob.file, format!("{ID}.state.zst"));
        assert_eq!(blob.size, 5);
        assert_eq!(
            blob.sha256,
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"state"))
        );
        // Before its manifest, the state is a leftover like any other blob.
        assert_eq!(leftover_names(&t).await, [format!("{ID}.state.zst")]);
        m.chain = Some(ID.into());
        m.state = Some(blob);
        committed(&t, &m, b"data").await;
        assert_eq!(
            mem.take_log(),
            [
                format!("put-new {ID}.state.zst"),
                format!("finish {ID}.state.zst"),
                format!("put-new {ID}.tar.zst"),
                format!("finish {ID}.tar.zst"),
                format!("put {ID}.manifest.json"),
            ]
        );
        assert!(t.leftovers().await.unwrap().is_empty());
        let listed = t.list().await.unwrap().artifacts.remove(0).manifest;
        let mut back = Vec::new();
        t.open_state(&listed)
            .await
            .unwrap()
            .unwrap()
            .read_to_end(&mut back)
            .await
            .unwrap();
        assert_eq!(back, b"state");
        t.delete(&m).await.unwrap();
        let log = mem.take_log();
        assert_eq!(log[0], format!("delete {ID}.manifest.json (durable)"));
        assert!(log.contains(&format!("delete {ID}.state.zst")), "{log:?}");
        assert!(mem.with(|s| s.blobs.is_empty()));
    }
}
