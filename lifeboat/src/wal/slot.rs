//! The server's side of archiving, over SQL: a permanent physical
//! replication slot that keeps every segment not yet archived, how far the
//! server has flushed, and how much WAL the slot holds back. No replication
//! connection: the slot is created and moved on with plain functions.
//! PostgreSQL 13 or newer (`wal_status`); the tests run 14 to 18.

use tokio_postgres::Client;

use super::position::{Lsn, SegmentSize};
use super::segments::Server;
use crate::source::postgres::PgConn;
use crate::{Error, Result};

/// Where the server's WAL stands: flushed up to `lsn`, on `timeline`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flushed {
    pub lsn: Lsn,
    pub timeline: u32,
}

/// What the slot holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    /// The oldest WAL position the server keeps for the slot.
    pub restart_lsn: Lsn,
    /// Created just now: WAL from before it may be gone, so an archive
    /// starts with a new base backup taken after this.
    pub created: bool,
    /// The server removed WAL the slot held (`wal_status = 'lost'`, past
    /// `max_slot_wal_keep_size`): the archive has a gap from here on.
    pub lost: bool,
}

/// A slot name PostgreSQL takes: lower-case letters, digits and `_`, at
/// most 63 bytes.
pub fn check_slot_name(name: &str) -> std::result::Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a replication slot name: lower-case letters, digits and _, at most 63 characters"
        ))
    }
}

/// The server's system identifier and WAL segment size, which every
/// archived segment is checked against ([`super::segments`]).
pub async fn identity(client: &Client, conn: &PgConn) -> Result<Server> {
    let row = client
        .query_one(
            "SELECT system_identifier::text, \
             (SELECT setting FROM pg_settings WHERE name = 'wal_segment_size') \
             FROM pg_control_system()",
            &[],
        )
        .await
        .map_err(|e| conn.error(e))?;
    let (sysid, size): (String, String) = (row.get(0), row.get(1));
    let unexpected = |what: &str| {
        Error::Source(format!(
            "{}: unexpected {what} from the server",
            conn.describe()
        ))
    };
    Ok(Server {
        system_id: sysid.parse().map_err(|_| unexpected("system identifier"))?,
        size: size
            .parse()
            .ok()
            .and_then(|b| SegmentSize::new(b).ok())
            .ok_or_else(|| unexpected("wal_segment_size"))?,
    })
}

/// How far the server has flushed its WAL, and on which timeline; None
/// while it is in recovery (a standby, or a restore still replaying): it
/// has no WAL of its own to archive yet.
pub async fn flushed(client: &Client, conn: &PgConn) -> Result<Option<Flushed>> {
    let row = client
        .query_one(
            "SELECT pg_is_in_recovery(), \
             CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_flush_lsn()::text END, \
             CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_walfile_name(pg_current_wal_flush_lsn()) END",
            &[],
        )
        .await
        .map_err(|e| conn.error(e))?;
    let (in_recovery, lsn, file): (bool, Option<String>, Option<String>) =
        (row.get(0), row.get(1), row.get(2));
    let (Some(lsn), Some(file), false) = (lsn, file, in_recovery) else {
        return Ok(None);
    };
    let lsn: Lsn = lsn.parse().map_err(Error::Source)?;
    // pg_walfile_name names the current timeline first.
    let timeline = file
        .get(..8)
        .and_then(|t| u32::from_str_radix(t, 16).ok())
        .ok_or_else(|| Error::Source(format!("unexpected WAL file name {file:?}")))?;
    Ok(Some(Flushed { lsn, timeline }))
}

/// What the server's own bound on slots is (`max_slot_wal_keep_size`),
/// after [`server_bound`] looked at it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerBound {
    /// It was unlimited; we set it to `LIFEBOAT_WAL_MAX_RETAINED`.
    Set(u64),
    /// Someone set it: respected as it is (bytes).
    Kept(u64),
    /// It is unlimited and left so: the setting bounds every slot, and
    /// these other slots (a replica's, a logical subscriber's) are not
    /// ours to invalidate.
    Shared(Vec<String>),
}

/// Makes the server itself drop our slot's hold past the bound, so the
/// volume cannot fill while the sidecar is down (a crash loop, a node
/// drain): when `max_slot_wal_keep_size` is unlimited (-1, PostgreSQL's
/// default) and our slot is the only one, it is set to `max_retained`
/// with `ALTER SYSTEM` and reloaded; a value someone set is kept. The
/// setting reloads without a restart.
pub async fn server_bound(
    client: &Client,
    conn: &PgConn,
    slot: &str,
    max_retained: u64,
) -> Result<ServerBound> {
    let row = client
        .query_one(
            "SELECT (SELECT setting::bigint FROM pg_settings WHERE name = 'max_slot_wal_keep_size'), \
             ARRAY(SELECT slot_name::text FROM pg_replication_slots WHERE slot_name <> $1 AND NOT temporary ORDER BY 1)",
            &[&slot],
        )
        .await
        .map_err(|e| conn.error(e))?;
    // In MB, the setting's unit.
    let (mb, others): (i64, Vec<String>) = (row.get(0), row.get(1));
    if mb >= 0 {
        return Ok(ServerBound::Kept((mb as u64) << 20));
    }
    if !others.is_empty() {
        return Ok(ServerBound::Shared(others));
    }
    let set = (max_retained >> 20).max(1);
    // One statement per call: ALTER SYSTEM refuses to run in the implicit
    // transaction of a multi-statement query.
    for sql in [
        format!("ALTER SYSTEM SET max_slot_wal_keep_size = '{set}MB'"),
        "SELECT pg_reload_conf()".to_string(),
    ] {
        client
            .batch_execute(&sql)
            .await
            .map_err(|e| conn.error(e))?;
    }
    Ok(ServerBound::Set(set << 20))
}

/// The permanent physical slot named `name` on the server `client` talks to.
pub struct Slot<'a> {
    name: &'a str,
    client: &'a Client,
    conn: &'a PgConn,
}

impl<'a> Slot<'a> {
    pub fn new(name: &'a str, client: &'a Client, conn: &'a PgConn) -> Slot<'a> {
        Slot { name, client, conn }
    }

    /// The slot as a restarted sidecar left it, or a new one that holds
    /// WAL from now on. A slot of that name that is not a permanent
    /// physical one is someone else's: an error, never dropped.
    pub async fn ensure(&self) -> Result<Held> {
        check_slot_name(self.name).map_err(Error::Source)?;
        let mut lost = false;
        if let Some((restart, was_lost)) = self.existing().await? {
            match restart {
                Some(restart_lsn) if !was_lost => {
                    return Ok(Held {
                        restart_lsn,
                        created: false,
                        lost: false,
                    })
                }
                // Invalidated by the server (past max_slot_wal_keep_size):
                // it holds nothing any more and never will again, so a new
                // one replaces it, and the gap is reported.
                _ if was_lost => lost = true,
                // Ours, but holding nothing (never reserved): nothing is
                // lost by making it again, reserving.
                _ => {}
            }
            self.remove().await?;
        }
        let row = self
            .client
            .query_one(
                "SELECT lsn::text FROM pg_create_physical_replication_slot($1, true, false)",
                &[&self.name],
            )
            .await
            .map_err(|e| self.conn.error(e))?;
        let restart_lsn: Lsn = row.get::<_, String>(0).parse().map_err(Error::Source)?;
        tracing::info!(slot = self.name, %restart_lsn, "replication slot created; it keeps the WAL not yet archived");
        Ok(Held {
            restart_lsn,
            created: true,
            lost,
        })
    }

    /// Our slot's restart position (None when it holds nothing) and
    /// whether WAL it held was removed; None when there is no such slot.
    async fn existing(&self) -> Result<Option<(Option<Lsn>, bool)>> {
        let rows = self
            .client
            .query(
                "SELECT slot_type, temporary, restart_lsn::text, wal_status \
                 FROM pg_replication_slots WHERE slot_name = $1",
                &[&self.name],
            )
            .await
            .map_err(|e| self.conn.error(e))?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        let (kind, temporary, restart, status): (String, bool, Option<String>, Option<String>) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        if kind != "physical" || temporary {
            return Err(Error::Source(format!(
                "{}: the replication slot {:?} exists and is not a permanent physical slot ({}{kind}); it is left alone: choose another slot name",
                self.conn.describe(),
                self.name,
                if temporary { "temporary, " } else { "" },
            )));
        }
        let restart = restart
            .map(|r| r.parse::<Lsn>())
            .transpose()
            .map_err(Error::Source)?;
        Ok(Some((restart, status.as_deref() == Some("lost"))))
    }

    /// Lets the server recycle WAL before `to`: called only once the
    /// object holding it is committed. Never moves the slot back.
    pub async fn advance(&self, to: Lsn) -> Result<()> {
        // The server refuses a move back; GREATEST makes one a no-op, in
        // the same statement that finds the slot.
        let moved = self
            .client
            .query_opt(
                "SELECT 1 FROM pg_replication_slots s, \
                 pg_replication_slot_advance(s.slot_name, GREATEST(s.restart_lsn, $2::text::pg_lsn)) \
                 WHERE s.slot_name = $1",
                &[&self.name, &to.to_string()],
            )
            .await
            .map_err(|e| self.conn.error(e))?;
        match moved {
            Some(_) => Ok(()),
            None => Err(Error::Source(format!(
                "{}: the replication slot {:?} is gone (dropped by someone?)",
                self.conn.describe(),
                self.name
            ))),
        }
    }

    /// How many bytes of WAL the slot holds back from recycling, up to
    /// the server's current write position.
    pub async fn retained(&self) -> Result<u64> {
        let row = self
            .client
            .query_opt(
                "SELECT (pg_current_wal_lsn() - restart_lsn)::bigint \
                 FROM pg_replication_slots WHERE slot_name = $1",
                &[&self.name],
            )
            .await
            .map_err(|e| self.conn.error(e))?;
        let held: Option<i64> = row.and_then(|r| r.get(0));
        Ok(held.map_or(0, |b| b.max(0) as u64))
    }

    /// Drops the slot, so the server recycles what it held.
    pub async fn remove(&self) -> Result<()> {
        self.client
            .query(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                 WHERE slot_name = $1",
                &[&self.name],
            )
            .await
            .map_err(|e| self.conn.error(e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_names_are_what_postgres_takes() {
        assert!(check_slot_name("lifeboat_wal").is_ok());
        assert!(check_slot_name(&"a".repeat(63)).is_ok());
        for bad in ["", "Lifeboat", "life-boat", "a b", &"a".repeat(64)] {
            let e = check_slot_name(bad).unwrap_err();
            assert!(e.contains("lower-case letters"), "{e}");
        }
    }
}
