//! The archiver: every `LIFEBOAT_WAL_INTERVAL` the WAL the server flushed
//! since the last object goes into a new one, and only once that object is
//! committed does the slot let the server recycle it (docs/ARCHITECTURE.md,
//! "Continuous WAL"). Runs in the sidecar beside the backup loop.

use std::path::{Path, PathBuf};

use chrono::Utc;
use tracing::{info, warn, Instrument};

use super::object::{self, Gap, WalSection};
use super::position::Lsn;
use super::position::Segment;
use super::segments::{append_history, append_span, history_forks, tail_sha256, Server};
use super::slot::{flushed, identity, server_bound, Flushed, ServerBound, Slot};
use super::span::Span;
use crate::compression::Compression;
use crate::encryption::Recipients;
use crate::manifest::{self, Layout, Manifest};
use crate::source::postgres::PgConn;
use crate::source::SourceKind;
use crate::store::{AnyTarget, Target, Upload};
use crate::tar_upload::upload_tar;
use crate::{Error, Result};

pub use super::settings::WalSettings;

/// Segments per object at most: 256 MiB of WAL at the default segment
/// size, so an object stays bounded however long the sidecar was away.
pub const MAX_SEGMENTS: u64 = 16;

/// What the archiver is given: where to read, where to store, how.
pub struct Setup {
    pub settings: WalSettings,
    pub conn: PgConn,
    pub pgdata: PathBuf,
    pub target: AnyTarget,
    pub compression: Compression,
    pub recipients: Option<Recipients>,
    pub name: String,
    pub namespace: String,
    /// False with `LIFEBOAT_RETENTION=off`: uncommitted objects are left to
    /// the bucket's lifecycle rules (write-only credentials).
    pub deletes: bool,
}

/// The archiver: its [`Setup`], and what it learned from the store.
pub struct Archiver {
    pub setup: Setup,
    /// The newest object this archive holds, once the store was listed.
    newest: Option<Option<WalSection>>,
    /// The next object's sequence number.
    next_sequence: u32,
    /// The recovery settings of a restore were looked at (and reset).
    recovery_checked: bool,
    /// The slot was dropped past the bound: a new one only once the store
    /// takes writes again.
    dropped: bool,
    /// Times the slot was dropped past the bound, by us or by the server.
    pub drops: u64,
    /// Why it was dropped the last time, for the Event and notification.
    pub last_drop: Option<String>,
    /// When the server's own bound (`max_slot_wal_keep_size`) is looked
    /// at next: None once it was (a failure tries again an hour later, so
    /// a missing privilege does not put an error in the server's log
    /// every interval).
    server_bound_due: Option<std::time::Instant>,
    /// The slot was found invalidated by the server this pass: the gap it
    /// left, if the archive has one, is reported as a drop.
    slot_lost: bool,
    /// The archiver dropped the slot itself and reported it: the gap the
    /// next slot finds is that drop, not a new one.
    drop_reported: bool,
    /// A drop was reported this pass (one pass reports one).
    reported_this_pass: bool,
    /// A gap found in the archive, recorded on the next object committed
    /// (reported once, however many passes fail before that).
    gap: Option<Gap>,
    /// When the newest loss recorded in the store was found, from the
    /// listing: a restarted sidecar goes on reporting it (taken by the
    /// loop for `/status` and the alert).
    pub lost_found_at: Option<chrono::DateTime<Utc>>,
    /// The last timeline's history forks, once read.
    forks: Option<(u32, Vec<super::object::Fork>)>,
    /// Since when WAL that ends no transaction waits to be archived
    /// ([`Archiver::may_wait`]).
    quiet_since: Option<std::time::Instant>,
}

/// What one pass did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pass {
    /// Nothing new was flushed: no upload.
    Idle { archived: Lsn, timeline: u32 },
    /// Objects committed; the archive now reaches `archived`.
    Archived {
        objects: u32,
        archived: Lsn,
        timeline: u32,
    },
    /// The server cannot be archived from now (in recovery, a standby).
    Waiting(String),
}

/// Why the archive needs a new base backup before its WAL can be restored:
/// the WAL before now may be gone (a new slot, a lost one, a new timeline
/// or cluster).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeedsBase(pub String);

impl Archiver {
    pub fn new(setup: Setup) -> Archiver {
        Archiver {
            setup,
            newest: None,
            next_sequence: 0,
            recovery_checked: false,
            dropped: false,
            drops: 0,
            last_drop: None,
            server_bound_due: Some(std::time::Instant::now()),
            slot_lost: false,
            drop_reported: false,
            reported_this_pass: false,
            gap: None,
            lost_found_at: None,
            forks: None,
            quiet_since: None,
        }
    }

    /// One pass: connect, hold the slot, archive what was flushed (several
    /// objects after a long absence), advance the slot. `needs_base` is
    /// told why a new base backup is needed, when one is.
    pub async fn pass(&mut self, needs_base: &mut Vec<NeedsBase>) -> Result<Pass> {
        self.reported_this_pass = false;
        let client = self.setup.conn.connect().await?;
        if !self.recovery_checked {
            match super::recovery::reset(&client, &self.setup.conn).await {
                Ok(true) => info!("the server has promoted after a restore from archived WAL; its recovery settings were removed"),
                Ok(false) => {}
                // Archiving matters more; tried again next pass.
                Err(e) => warn!(error = %e, "could not remove the recovery settings a restore left (ALTER SYSTEM needs a superuser or GRANT ALTER SYSTEM); archiving goes on"),
            }
        }
        // Taken before the position is read: every transaction that had
        // ended by now is at or before it.
        let read_at = Utc::now();
        let Some(flush) = flushed(&client, &self.setup.conn).await? else {
            return Ok(Pass::Waiting(format!(
                "{}: the server is in recovery (a standby, or still replaying); WAL is archived from a primary",
                self.setup.conn.describe()
            )));
        };
        self.recovery_checked = true;
        let server = identity(&client, &self.setup.conn).await?;
        if self
            .server_bound_due
            .is_some_and(|t| t <= std::time::Instant::now())
        {
            self.bound_on_server(&client, &server).await;
        }
        let forks = self.forks(flush.timeline);
        let (slot_name, conn) = (self.setup.settings.slot.clone(), self.setup.conn.clone());
        let slot = Slot::new(&slot_name, &client, &conn);
        if self.dropped {
            self.setup.target.check().await?;
            self.dropped = false;
        }
        let held = slot.ensure().await?;
        if held.created {
            needs_base.push(NeedsBase(format!(
                "the replication slot {:?} was created",
                self.setup.settings.slot
            )));
        }
        self.slot_lost = held.lost;
        if held.lost {
            // Whether WAL that was never archived is gone is known once
            // the archive's end is (archived_position).
            warn!(slot = %self.setup.settings.slot, "PostgreSQL invalidated the replication slot (it held more WAL than max_slot_wal_keep_size while nothing moved it on); a new one was made");
            needs_base.push(NeedsBase(format!(
                "the replication slot {:?} lost WAL (max_slot_wal_keep_size)",
                self.setup.settings.slot
            )));
        }
        if self.newest.is_none() {
            if let Err(e) = self.read_store().await {
                return Err(self.bound(&slot, e).await);
            }
        }
        // A new timeline's files begin where its parent ended.
        let begins = forks.last().map_or(Lsn(0), |f| f.end);
        let start = held.restart_lsn.max(begins);
        let mut archived = self.archived_position(&flush, &server, start, needs_base);
        self.drop_reported = false;
        if self.may_wait(&flush, &server, archived) {
            let timeline = flush.timeline;
            return Ok(Pass::Idle { archived, timeline });
        }
        self.quiet_since = None;
        let mut objects = 0;
        while let Some(span) = Span::next(
            flush.timeline,
            archived,
            flush.lsn,
            server.size,
            MAX_SEGMENTS,
        ) {
            let first_of_timeline = !self.continues(&flush, &server);
            let about = About {
                first_of_timeline,
                flushed_at: (span.to == flush.lsn).then_some(read_at),
                forks: forks.clone(),
                gap: self.gap,
            };
            let section = match self.commit(span, &server, about).await {
                Ok(section) => section,
                Err(e) => {
                    // Whether a commit cut off by the store landed is not
                    // known: the next pass lists the store again (its
                    // sequence, its end) and removes what this one left.
                    self.newest = None;
                    return Err(self.bound(&slot, e).await);
                }
            };
            self.gap = None;
            // Committed: now the server may recycle it.
            slot.advance(span.to).await?;
            archived = span.to;
            self.newest = Some(Some(section));
            objects += 1;
        }
        let timeline = flush.timeline;
        Ok(if objects == 0 {
            Pass::Idle { archived, timeline }
        } else {
            Pass::Archived {
                objects,
                archived,
                timeline,
            }
        })
    }

    /// Whether the WAL flushed since the archive's end may wait for the
    /// next pass: it ends no transaction and records nothing else a
    /// restore must bring back ([`super::records::changes_after`]), it
    /// lies inside one segment (a completed one is archived, so the slot
    /// lets the server recycle it), it continues the archive with nothing
    /// to report, and it has not waited `LIFEBOAT_WAL_QUIET_MAX` yet. So a
    /// server that only checkpoints and vacuums does not cost an upload of
    /// its current segment every interval; nothing a client committed
    /// waits (docs/ARCHITECTURE.md, "Continuous WAL").
    fn may_wait(&mut self, flush: &Flushed, server: &Server, archived: Lsn) -> bool {
        let max = self.setup.settings.quiet_max;
        let size = server.size;
        let ends_at_archive = matches!(&self.newest, Some(Some(w)) if w.to == archived);
        if max.is_zero()
            || flush.lsn <= archived
            || self.gap.is_some()
            || !ends_at_archive
            || !self.continues(flush, server)
            || flush.lsn.0.is_multiple_of(size.bytes())
            || size.segment_of(Lsn(flush.lsn.0 - 1)) != size.segment_of(archived)
        {
            return false;
        }
        let since = *self.quiet_since.get_or_insert_with(std::time::Instant::now);
        if since.elapsed() >= max {
            return false;
        }
        let Some(segment_start) = size.start_of(size.segment_of(archived)) else {
            return false;
        };
        let pg_wal = self.setup.pgdata.join("pg_wal");
        match super::records::changes_after(
            &pg_wal,
            flush.timeline,
            size,
            segment_start,
            flush.lsn,
            archived,
        ) {
            Ok(changes) => {
                if !changes {
                    tracing::debug!(archived = %archived, flushed = %flush.lsn, "the WAL since the archive's end ends no transaction; it waits for one, its segment's end or LIFEBOAT_WAL_QUIET_MAX");
                }
                !changes
            }
            Err(e) => {
                tracing::debug!(error = %e, "the WAL since the archive's end could not be read for transaction ends; it is archived now");
                false
            }
        }
    }

    /// The forks of `timeline`'s history, read once per timeline (a
    /// history never changes once written), not on every pass.
    fn forks(&mut self, timeline: u32) -> Vec<super::object::Fork> {
        if let Some((t, f)) = &self.forks {
            if *t == timeline {
                return f.clone();
            }
        }
        match history_forks(&self.setup.pgdata.join("pg_wal"), timeline) {
            Ok(f) => {
                self.forks = Some((timeline, f.clone()));
                f
            }
            // Archiving matters more: objects without forks are not
            // followed onto, but they are kept. Read again next pass.
            Err(e) => {
                warn!(error = %e, timeline, "the timeline's history could not be read; its WAL is archived without it, and a restore from an earlier timeline's base does not follow onto it");
                vec![]
            }
        }
    }

    /// After an object could not be stored: when the slot now holds more
    /// than the bound, drops it so the volume does not fill (a busy
    /// server that the store keeps up with is never dropped). Returns the
    /// error to report.
    async fn bound(&mut self, slot: &Slot<'_>, failed: Error) -> Error {
        let retained = slot.retained().await.unwrap_or(0);
        if retained <= self.setup.settings.max_retained {
            return failed;
        }
        if let Err(e) = slot.remove().await {
            return e;
        }
        self.dropped = true;
        self.drop_reported = true;
        let why = format!(
            "the replication slot {:?} held {retained} bytes of WAL, more than LIFEBOAT_WAL_MAX_RETAINED ({}), and the WAL could not be stored ({failed}); \
             the slot was dropped so the volume does not fill. WAL from here on is archived again, after a new base backup, once the store takes writes",
            self.setup.settings.slot, self.setup.settings.max_retained
        );
        self.note_drop(why.clone());
        Error::Source(why)
    }

    /// WAL that was never archived is gone (the slot was dropped or
    /// invalidated): counted, logged, and kept for the loop's Event and
    /// notification; once per pass.
    fn note_drop(&mut self, why: String) {
        tracing::error!(slot = %self.setup.settings.slot, "{why}");
        if self.reported_this_pass {
            return;
        }
        self.reported_this_pass = true;
        self.drops += 1;
        self.last_drop = Some(why);
    }

    /// Makes the server enforce the bound too ([`server_bound`]), once per
    /// process when it works, else again an hour later; a failure only
    /// warns: the sidecar still enforces the bound while it runs.
    async fn bound_on_server(&mut self, client: &tokio_postgres::Client, server: &Server) {
        let max = self.setup.settings.max_retained;
        let slot = &self.setup.settings.slot;
        let mb = |b: u64| b >> 20;
        // Below this the server can invalidate the slot between two
        // passes of a busy server, with nothing wrong.
        let few = 4 * server.size.bytes();
        match server_bound(client, &self.setup.conn, slot, max).await {
            Ok(ServerBound::Set(b)) => info!(max_slot_wal_keep_size = b, "set PostgreSQL's max_slot_wal_keep_size to LIFEBOAT_WAL_MAX_RETAINED (ALTER SYSTEM): past it the server drops the slot's hold itself, so the volume cannot fill while the sidecar is down"),
            Ok(ServerBound::Kept(b)) if b > max => warn!(max_slot_wal_keep_size = b, max_retained = max, "PostgreSQL's max_slot_wal_keep_size is larger than LIFEBOAT_WAL_MAX_RETAINED and is left as set: while the sidecar is down, the slot can hold that much"),
            Ok(ServerBound::Kept(b)) if b < few => warn!(max_slot_wal_keep_size = b, "PostgreSQL's max_slot_wal_keep_size is less than four WAL segments: under load the server can invalidate the slot between two passes, and the archive gets a gap each time; raise it: ALTER SYSTEM SET max_slot_wal_keep_size = '{}MB'; SELECT pg_reload_conf();", mb(max)),
            Ok(ServerBound::Kept(b)) if b < max => warn!(max_slot_wal_keep_size = b, max_retained = max, "PostgreSQL's max_slot_wal_keep_size is smaller than LIFEBOAT_WAL_MAX_RETAINED and is left as set (lifeboat never changes a value that is set, including one it set itself with an earlier LIFEBOAT_WAL_MAX_RETAINED): the server invalidates the slot at that size. To follow LIFEBOAT_WAL_MAX_RETAINED: ALTER SYSTEM SET max_slot_wal_keep_size = '{}MB'; SELECT pg_reload_conf();", mb(max)),
            Ok(ServerBound::Kept(b)) => info!(max_slot_wal_keep_size = b, "PostgreSQL's max_slot_wal_keep_size is set; it bounds the slot while the sidecar is down"),
            Ok(ServerBound::Shared(others)) => warn!(other_slots = %others.join(", "), "PostgreSQL's max_slot_wal_keep_size is unlimited and other replication slots exist; it bounds every slot, so lifeboat leaves it alone: while the sidecar is down, its slot holds WAL without bound. Set it to what suits every slot: ALTER SYSTEM SET max_slot_wal_keep_size = '{}MB'; SELECT pg_reload_conf();", mb(max)),
            Err(e) => {
                warn!(error = %e, "could not set PostgreSQL's max_slot_wal_keep_size (ALTER SYSTEM needs a superuser or GRANT ALTER SYSTEM ON PARAMETER max_slot_wal_keep_size): the WAL the slot holds is bounded only while the sidecar runs; trying again in an hour");
                self.server_bound_due =
                    Some(std::time::Instant::now() + std::time::Duration::from_secs(3600));
                return;
            }
        }
        self.server_bound_due = None;
    }

    /// The newest object and the next sequence number, from the store.
    async fn read_store(&mut self) -> Result<()> {
        // Uploads a killed sidecar left: this archiver is the only writer
        // of WAL objects, so none of them is in progress.
        for l in self.setup.target.leftovers().await? {
            if !l.blob.starts_with(object::ID_PREFIX) || !(self.setup.deletes || l.is_upload()) {
                continue;
            }
            // A leftover costs storage only: with deletes left to the bucket
            // (write-only credentials) it must not stop the archive.
            match self.setup.target.remove_leftover(&l).await {
                Ok(crate::store::Removal::Removed) => {
                    info!(file = %l.name, "removed an uncommitted WAL object")
                }
                Ok(crate::store::Removal::LockedUntil(until)) => {
                    tracing::debug!(file = %l.name, locked_until = %until, "an uncommitted WAL object stays until its object lock ends")
                }
                Err(e) => {
                    warn!(file = %l.name, error = %e, "could not remove an uncommitted WAL object; the bucket's lifecycle rules or a later start remove it")
                }
            }
        }
        let listing = self.setup.target.list_wal().await?;
        for p in &listing.problems {
            warn!("WAL archive: {p}");
        }
        let newest = listing
            .objects
            .iter()
            .filter_map(|m| m.wal.clone())
            .max_by_key(|w| w.sequence);
        self.next_sequence = listing.next_sequence;
        self.lost_found_at = listing
            .objects
            .iter()
            .filter_map(|m| m.wal.as_ref()?.gap.filter(|g| g.lost))
            .map(|g| g.found_at)
            .max();
        self.newest = Some(newest);
        Ok(())
    }

    /// Whether the newest object is of this server and timeline.
    fn continues(&self, flush: &Flushed, server: &Server) -> bool {
        matches!(&self.newest, Some(Some(w)) if w.timeline == flush.timeline
            && w.system_identifier == server.system_id.to_string())
    }

    /// Where the next object starts: where the newest one ended, on this
    /// timeline of this server; else where the slot holds WAL from.
    fn archived_position(
        &mut self,
        flush: &Flushed,
        server: &Server,
        restart: Lsn,
        needs_base: &mut Vec<NeedsBase>,
    ) -> Lsn {
        let Some(Some(w)) = &self.newest else {
            return restart;
        };
        if !self.continues(flush, server) {
            needs_base.push(NeedsBase(format!(
                "the server is on timeline {} of cluster {}, the archive on timeline {} of {}",
                flush.timeline, server.system_id, w.timeline, w.system_identifier
            )));
            return restart;
        }
        if restart > w.to {
            // WAL between the archive's end and the slot's start may be gone.
            let end = w.to;
            needs_base.push(NeedsBase(format!(
                "the replication slot starts at {restart}, after the archive's end {end}"
            )));
            if self.gap.is_some_and(|g| g.from == end) {
                // Reported when found; a commit since failed.
                return restart;
            }
            self.gap = Some(Gap {
                from: end,
                to: restart,
                found_at: Utc::now(),
                lost: self.slot_lost || self.drop_reported,
            });
            let slot = &self.setup.settings.slot;
            if self.slot_lost {
                self.note_drop(format!(
                    "PostgreSQL invalidated the replication slot {slot:?}: it held more WAL than max_slot_wal_keep_size while nothing archived it \
                     (the sidecar was down, or the store unreachable). The WAL from {end} to {restart} was never archived: the archive cannot restore past {end} \
                     until a new base backup (asked for now); a new slot holds WAL from {restart}"
                ));
            } else if !self.drop_reported {
                warn!(slot = %slot, archive_end = %end, slot_start = %restart, "the replication slot was missing (archiving was turned off for a while, or someone dropped it): the WAL between the archive's end and the new slot's start is not in the archive, and a new base backup starts a new chain");
            }
            return restart;
        }
        let size = server.size;
        // The server crashed and rewrote from inside its last record: its
        // WAL now ends before the archive's, or the archive's last page is
        // not what the server has there now. Carry the segment holding the
        // point again, and the one before it (a record may cross into it).
        let rewritten = if flush.lsn < w.to {
            Some(flush.lsn)
        } else {
            let now = w.tail_sha256.as_ref().and_then(|_| {
                let last = Segment {
                    timeline: w.timeline,
                    segno: size.segment_of(Lsn(w.to.0 - 1)),
                };
                tail_sha256(
                    &self.setup.pgdata.join("pg_wal"),
                    last,
                    size,
                    object::tail_start(w.to, size),
                    w.to,
                )
            });
            (now.is_some() && now != w.tail_sha256).then_some(Lsn(w.to.0 - 1))
        };
        if let Some(point) = rewritten {
            let seg = size.segment_of(point).saturating_sub(1);
            let held = size.start_of(size.segment_of(restart)).unwrap_or(restart);
            let again = size.start_of(seg).unwrap_or(held).max(held);
            warn!(flush = %flush.lsn, archived = %w.to, from = %again, "the server rewrote WAL the archive holds (it crashed inside a record); archiving from {again} again");
            return again;
        }
        w.to
    }

    /// Writes and commits one object.
    async fn commit(&mut self, span: Span, server: &Server, about: About) -> Result<WalSection> {
        let with_history = about.first_of_timeline;
        let mut section = WalSection {
            timeline: span.timeline,
            sequence: self.next_sequence,
            from: span.from,
            to: span.to,
            segment_size: server.size.bytes(),
            system_identifier: server.system_id.to_string(),
            tail_sha256: None,
            flushed_at: about.flushed_at,
            forks: about.forks,
            gap: about.gap,
        };
        let id = object::id(section.timeline, section.sequence);
        let tracing_span =
            tracing::info_span!("wal_object", id = %id, from = %span.from, to = %span.to);
        async {
            let started_at = Utc::now();
            let file_name = crate::artifact::file_name(
                &id,
                self.setup.compression,
                self.setup.recipients.is_some(),
            );
            let mut upload = self.setup.target.begin(&file_name).await?;
            let (pg_wal, entry_dir) = wal_dir(&self.setup.pgdata);
            let server = *server;
            // Entries and file bytes as a restore counts them: whole
            // segments, zeros included, and the history file.
            let producer = move |tar: &mut crate::tar_upload::TarSink| {
                let mtime = started_at.timestamp().max(0) as u64;
                let mut entries = 0;
                let mut bytes = 0;
                if with_history && span.timeline > 1 {
                    if let Some(b) = history_into(tar, &pg_wal, &entry_dir, span.timeline, mtime) {
                        bytes += b;
                        entries += 1;
                    }
                }
                let wal = append_span(tar, &pg_wal, &entry_dir, &span, &server, mtime)?;
                let segments = span.segments(server.size).count() as u64;
                entries += segments;
                bytes += segments * server.size.bytes();
                let last = Segment {
                    timeline: span.timeline,
                    segno: server.size.segment_of(Lsn(span.to.0 - 1)),
                };
                let tail_from = object::tail_start(span.to, server.size);
                let tail = tail_sha256(&pg_wal, last, server.size, tail_from, span.to);
                Ok((wal, entries, bytes, tail))
            };
            let uploaded = upload_tar(
                &mut upload,
                self.setup.compression,
                self.setup.recipients.clone(),
                producer,
            )
            .await;
            let ((wal_bytes, entries, file_bytes, tail), stored) = match uploaded {
                Ok(done) => done,
                Err(e) => {
                    upload.abort().await;
                    return Err(e);
                }
            };
            section.tail_sha256 = tail;
            let m = Manifest {
                format: manifest::FORMAT.into(),
                id: id.clone(),
                artifact: file_name,
                name: self.setup.name.clone(),
                namespace: self.setup.namespace.clone(),
                source: SourceKind::Postgres,
                layout: Layout::Paths,
                paths: vec![self.setup.pgdata.display().to_string()],
                started_at,
                finished_at: Utc::now(),
                compression: self.setup.compression.to_string(),
                encryption: if self.setup.recipients.is_some() {
                    "age"
                } else {
                    "none"
                }
                .into(),
                recipients: self
                    .setup
                    .recipients
                    .as_ref()
                    .map(|r| r.names())
                    .unwrap_or_default(),
                size: stored.size,
                sha256: stored.sha256,
                entries,
                bytes_in: file_bytes,
                warnings: vec![],
                tool_version: crate::TOOL_VERSION.into(),
                source_meta: serde_json::json!({}),
                kubernetes: None,
                level: 0,
                base: None,
                chain: None,
                state: None,
                wal: Some(section.clone()),
            };
            if let Err(e) = Manifest::from_json(&m.to_json()) {
                upload.abort().await;
                return Err(Error::Internal(format!(
                    "the manifest of {id} would not be read back ({e}); nothing was committed"
                )));
            }
            upload.commit(&m).await?;
            self.next_sequence = self.next_sequence.saturating_add(1);
            info!(size = stored.size, wal_bytes, "WAL object committed");
            Ok(section)
        }
        .instrument(tracing_span)
        .await
    }
}

/// What an object records beside its span.
struct About {
    /// The first object of its timeline carries the `.history` file.
    first_of_timeline: bool,
    flushed_at: Option<chrono::DateTime<Utc>>,
    forks: Vec<super::object::Fork>,
    /// The gap before this object, on the first object after one.
    gap: Option<Gap>,
}

/// The timeline's `.history` file into the object, when it can be read
/// (its size); else a WARN. As in `Archiver::forks`: archiving matters more
/// than the history, which only lets a restore from an earlier timeline's
/// base follow onto this one.
fn history_into(
    tar: &mut crate::tar_upload::TarSink,
    pg_wal: &Path,
    entry_dir: &str,
    timeline: u32,
    mtime: u64,
) -> Option<u64> {
    append_history(tar, pg_wal, entry_dir, timeline, mtime)
        .inspect_err(|e| warn!(error = %e, timeline, "the timeline's history file could not be read; this WAL object is stored without it"))
        .ok()
}

/// `pg_wal` on disk, and where it sits in a tar (PGDATA without its
/// leading `/`, as every `paths` artifact names its entries).
fn wal_dir(pgdata: &Path) -> (PathBuf, String) {
    let rel = pgdata.strip_prefix("/").unwrap_or(pgdata);
    (pgdata.join("pg_wal"), format!("{}/pg_wal", rel.display()))
}
