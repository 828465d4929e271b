//! The WAL archive's settings, as `crate::config` reads them
//! (`config/wal.rs`) and the archiver uses them.

use std::time::Duration;

/// `LIFEBOAT_WAL_*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalSettings {
    /// `LIFEBOAT_WAL_INTERVAL`: the newest archived byte is at most this
    /// old (plus an upload) while the store answers.
    pub interval: Duration,
    /// `LIFEBOAT_WAL_SLOT`: the replication slot's name.
    pub slot: String,
    /// `LIFEBOAT_WAL_MAX_RETAINED`: past this much held WAL the slot is
    /// dropped, so the app's volume never fills because of us.
    pub max_retained: u64,
}

impl Default for WalSettings {
    fn default() -> Self {
        WalSettings {
            interval: Duration::from_secs(60),
            slot: "lifeboat".into(),
            max_retained: 4 << 30,
        }
    }
}
