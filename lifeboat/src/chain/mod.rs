//! Incremental chains (docs/ARCHITECTURE.md, "Incremental chains"): a full
//! backup, then links that hold only what changed, each a plain GNU
//! incremental tar that `tar -x -G` applies in order.
//!
//! - `dumpdir.rs`: the `D` entries that list what each folder held, so that
//!   applying a link removes what was deleted;
//! - `state.rs`: what the next link compares the volume with, stored
//!   beside each link;
//! - `digests.rs`: what applying a link leaves for the next, so that a
//!   restore reads only the folders whose list changed;
//! - `plan.rs`: whether the next backup is full, a new chain's first link,
//!   or the next link (`LIFEBOAT_FULL_EVERY`).

pub mod digests;
pub mod dumpdir;
pub mod plan;
pub mod state;
