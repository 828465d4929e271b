//! lifeboat: application-consistent backups of a pod's volume as plain tarballs.
//!
//! The two binaries (`lifeboat-sidecar`, `lifeboat-restore`) are thin: they parse
//! configuration, call into this crate, and map [`Error`]s to exit codes.
//!
//! The flow (docs/ARCHITECTURE.md §4):
//! ```text
//! Source --(tar entries)--> tar --> compress --> [age encrypt] --> sha256 --> Target upload --> commit manifest
//! Target --(bytes)--> sha256 check --> [age decrypt] --> decompress --> untar into staging --> verify ok --> move into place
//! ```

// A function longer than a screen hides what it does; clippy.toml sets the
// limit (docs/ARCHITECTURE.md §2).
#![warn(clippy::too_many_lines)]

pub mod access;
pub mod aligned;
pub mod annotations;
pub mod artifact;
pub mod artifact_read;
pub mod backup;
pub mod chain;
pub mod cli;
pub mod cluster;
pub mod compression;
pub mod config;
pub mod daemon;
pub mod direct_write;
pub mod dns;
pub mod drill;
pub mod drill_targets;
pub mod durable;
pub mod duration;
pub mod encryption;
pub mod error;
pub mod file_out;
pub mod file_writes;
pub mod frame_pool;
pub mod glob;
pub mod hooks;
pub mod http;
pub mod https;
pub mod incremental;
pub mod job_pool;
pub mod json_split;
pub mod layout;
pub mod lock;
pub mod manifest;
pub mod metrics;
pub mod notify;
pub mod path_filter;
pub mod pending;
pub mod pipe;
pub mod problem;
pub mod program;
pub mod progress;
pub mod protected;
pub mod restore;
pub mod retention;
pub mod schedule;
pub mod small_file;
pub mod source;
pub mod status;
pub mod store;
pub mod tar_read;
pub mod tar_upload;
pub mod wal;
pub mod writeback;

pub use error::{Error, Result};

/// Version string recorded in every manifest (`tool_version`).
pub const TOOL_VERSION: &str = concat!("lifeboat ", env!("CARGO_PKG_VERSION"));
