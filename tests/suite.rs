//! Every end-to-end test file (all of tests/ but `e2e.rs`) as a module of
//! ONE test binary, `suite`. One binary per file made each of them
//! instantiate the support library's generics again at opt-level 2 and link
//! on its own: the CI build of this package took minutes for that alone.
//! The files stay where they were (`mod couchdb;` is tests/couchdb.rs), and
//! cargo-nextest still runs each test in a process of its own, so the tests
//! see no more of each other than before. A test's name now starts with its
//! file: `cargo nextest run -E 'test(/^couchdb::/)'`, or
//! `cargo test -p lifeboat-tests --test suite couchdb::`.
//!
//! `e2e.rs` stays a binary of its own: tests/e2e/run.sh runs it alone
//! (`--test e2e`) against a real cluster.

mod arangodb;
mod artifact_bytes;
mod config_errors;
mod couchdb;
mod crash;
mod crash_loop;
mod drill;
mod encryption;
mod faults;
mod fidelity;
mod hostile;
mod incremental;
mod jupyter;
mod kube_api;
mod kustomize;
mod memory_shapes;
mod one_file;
mod operations;
mod postgres;
mod restore_fallback;
mod restore_faults;
mod roundtrip;
mod s3;
mod secrets;
mod store_suite;
mod timescaledb;
mod untrusted;
mod wal_archive;
mod wal_recovery;
