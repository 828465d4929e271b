//! Continuous WAL archiving for the `postgres` source (docs/ARCHITECTURE.md,
//! "Continuous WAL"): the WAL bytes a server has flushed, read straight out
//! of `pg_wal/` on the shared volume, stored as plain tars of segment files
//! that a restore stages back into `pg_wal/`.
//!
//! - `archiver.rs`: one pass of the sidecar's archiving: what was flushed
//!   since the last object into a new one, then the slot moved on;
//! - `recovery.rs`: the recovery settings a restore writes, and their
//!   removal once the server has promoted;
//! - `object.rs`: WAL objects in a store: ids, the manifest's `wal` section,
//!   which objects a restore stages after a base backup;
//! - `records.rs`: commit and abort times read out of staged WAL, for a
//!   restore to a point in time;
//! - `prune.rs`: retention of WAL objects: those no restore from a kept
//!   base can use;
//! - `position.rs`: WAL positions (LSNs), segment sizes and segment file names;
//! - `span.rs`: which segments the next WAL object carries, and up to where;
//! - `segments.rs`: a span's segments read from `pg_wal/`, checked to be the
//!   segment they are named for, as tar entries;
//! - `staging.rs`: a restore's WAL: the objects after the base, each
//!   verified, into the staged `pg_wal/`, and the recovery settings;
//! - `window.rs`: the times a base backup can be restored to, for `list`;
//! - `slot.rs`: the server's side over SQL: the replication slot that keeps
//!   what is not yet archived, and how far the server has flushed.

pub mod archiver;
pub mod object;
pub mod position;
pub mod prune;
pub mod records;
pub mod recovery;
pub mod segments;
pub mod settings;
pub mod slot;
pub mod span;
pub mod staging;
pub mod window;
