//! Continuous WAL archiving for the `postgres` source (docs/ARCHITECTURE.md,
//! "Continuous WAL"): the WAL bytes a server has flushed, read straight out
//! of `pg_wal/` on the shared volume, stored as plain tars of segment files
//! that a restore stages back into `pg_wal/`.
//!
//! - `position.rs`: WAL positions (LSNs), segment sizes and segment file names;
//! - `span.rs`: which segments the next WAL object carries, and up to where;
//! - `segments.rs`: a span's segments read from `pg_wal/`, checked to be the
//!   segment they are named for, as tar entries;
//! - `slot.rs`: the server's side over SQL: the replication slot that keeps
//!   what is not yet archived, and how far the server has flushed.

pub mod position;
pub mod segments;
pub mod slot;
pub mod span;
