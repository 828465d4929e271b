//! The WAL archive's settings, as `crate::config` reads them
//! (`config/wal.rs`) and the archiver uses them.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// `LIFEBOAT_WAL_*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalSettings {
    /// `LIFEBOAT_WAL_INTERVAL`: the newest archived byte is at most this
    /// old (plus an upload) while the store answers.
    pub interval: Duration,
    /// `LIFEBOAT_WAL_QUIET_MAX`: how long WAL that ends no transaction
    /// (checkpoints, autovacuum's pruning, standby snapshots) may wait for
    /// one before it is archived anyway; zero archives it every interval.
    /// It waits only inside its segment: a completed segment is archived.
    pub quiet_max: Duration,
    /// `LIFEBOAT_WAL_SLOT`: the replication slot's name.
    pub slot: String,
    /// `LIFEBOAT_WAL_MAX_RETAINED`: past this much held WAL the slot is
    /// dropped, so the app's volume never fills because of us.
    pub max_retained: u64,
    /// `LIFEBOAT_RESTORE_TARGET_TIME`: how far a restore replays.
    pub until: Until,
}

/// How far a restore replays the archived WAL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Until {
    /// All of it: the newest state the archive holds.
    End,
    /// The state at a time (`LIFEBOAT_RESTORE_TARGET_TIME`, `restore
    /// --target-time`): every transaction that ended by then, none after.
    Time {
        at: DateTime<Utc>,
        /// Where the time was given, for the error when the archive does
        /// not reach it.
        setting: String,
    },
}

impl Default for WalSettings {
    fn default() -> Self {
        WalSettings {
            interval: Duration::from_secs(60),
            quiet_max: Duration::from_secs(600),
            slot: "lifeboat".into(),
            max_retained: 4 << 30,
            until: Until::End,
        }
    }
}
