//! TimescaleDB, against a real TimescaleDB 2.28 on Debian's PostgreSQL 15
//! (installed by scripts/setup.sh from the release that
//! `LIFEBOAT_TEST_TIMESCALEDB_RELEASE` names; `.ci/run` passes it). A
//! database with a hypertable of 61 daily chunks, 30 of them compressed, a
//! continuous aggregate with a refresh policy and a foreign key to a plain
//! table, backed up while a writer commits, comes back exact through both
//! the physical and the logical mode; a logical dump the server refuses
//! stops being retried, is reported, and backups go on.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lifeboat_tests::postgres_server::{PgServer, Settings, SyncClient, BIN};
use lifeboat_tests::*;

const SETTING: &str = "LIFEBOAT_TEST_TIMESCALEDB_RELEASE";

/// Whether the real TimescaleDB is here; says why not, or fails in CI.
fn timescaledb_present() -> bool {
    let installed = Path::new("/usr/lib/postgresql/15/lib/timescaledb.so").exists();
    let required = std::env::var("LIFEBOAT_TEST_REQUIRE_PEERS").as_deref() == Ok("1");
    match std::env::var(SETTING) {
        Ok(p) if Path::new(&p).is_file() => {
            assert!(
                installed,
                "{SETTING}={p} is set but TimescaleDB is not installed: run scripts/setup.sh"
            );
            true
        }
        other => {
            let why = match other {
                Ok(p) => format!("{SETTING}={p} is not a file"),
                Err(_) => format!("{SETTING} is not set"),
            };
            assert!(
                !required,
                "{why}; CI must pass the TimescaleDB release (../shared/timescaledb)"
            );
            eprintln!("SKIPPED: TimescaleDB tests need a real TimescaleDB: {why}");
            false
        }
    }
}

/// A cluster of our own with TimescaleDB preloaded and pg_dump on PATH,
/// backing up PGDATA to the history `tsdb-0`; initdb'd, not started.
fn server() -> PgServer {
    let mut pg = PgServer::init("tsdb-0", Settings::TIMESCALEDB);
    pg.env.extend([
        ("LIFEBOAT_SCHEDULE", "0 0 1 1 *".to_string()),
        (
            "PATH",
            format!("{BIN}:{}", std::env::var("PATH").unwrap_or_default()),
        ),
    ]);
    pg
}

const DB: &str = "metrics";

/// The database users run: sensors (plain table) ← readings (hypertable,
/// daily chunks over 60 days, the older 30 compressed), an hourly
/// continuous aggregate with a refresh policy, and `live`, a hypertable
/// the writer fills during the backup (kept apart so the rest is static).
fn populate(pg: &PgServer) {
    pg.sync_client("postgres")
        .exec(&format!("CREATE DATABASE {DB}"));
    // One statement per call: a continuous aggregate cannot be created
    // inside the transaction a multi-statement call runs in.
    let c = pg.sync_client(DB);
    let sql = "CREATE EXTENSION timescaledb;
         CREATE TABLE sensors (id int PRIMARY KEY, name text NOT NULL);
         INSERT INTO sensors SELECT g, 'sensor ' || g FROM generate_series(1, 10) g;
         CREATE TABLE readings (t timestamptz NOT NULL, sensor int NOT NULL REFERENCES sensors(id), v double precision);
         SELECT create_hypertable('readings', 't', chunk_time_interval => interval '1 day');
         INSERT INTO readings
           SELECT t, 1 + (extract(epoch FROM t)::bigint / 600) % 10, (extract(epoch FROM t)::bigint % 997) / 7.0
           FROM generate_series(timestamptz '2026-09-01', timestamptz '2026-10-31', interval '10 minutes') t;
         ALTER TABLE readings SET (timescaledb.compress, timescaledb.compress_segmentby = 'sensor');
         SELECT count(compress_chunk(c)) FROM show_chunks('readings', older_than => timestamptz '2026-10-01') c;
         CREATE MATERIALIZED VIEW hourly WITH (timescaledb.continuous) AS
           SELECT time_bucket('1 hour', t) AS bucket, sensor, avg(v) AS avg_v, count(*) AS n
           FROM readings GROUP BY 1, 2 WITH DATA;
         SELECT add_continuous_aggregate_policy('hourly', start_offset => NULL,
           end_offset => interval '1 hour', schedule_interval => interval '1 hour');
         CREATE TABLE live (t timestamptz NOT NULL, n bigint NOT NULL);
         SELECT create_hypertable('live', 't', chunk_time_interval => interval '1 hour')";
    for statement in sql.split(";\n") {
        c.exec(statement);
    }
}

/// What a user checks after a restore, in one comparable list.
fn facts(pg: &PgServer) -> Vec<String> {
    let c = pg.sync_client(DB);
    let mut out = Vec::new();
    let mut add = |what: &str, sql: &str| {
        for r in c.rows(sql) {
            out.push(format!("{what}: {r}"));
        }
    };
    add(
        "rows per chunk",
        "SELECT tableoid::regclass::text, count(*) FROM readings GROUP BY 1 ORDER BY 1",
    );
    add(
        "chunks",
        "SELECT count(*), count(*) FILTER (WHERE is_compressed) FROM timescaledb_information.chunks \
         WHERE hypertable_name = 'readings'",
    );
    add(
        "compressed rows",
        "SELECT count(*), md5(string_agg(t::text || sensor || v, ',' ORDER BY t, sensor)) \
         FROM readings WHERE t < '2026-10-01'",
    );
    add(
        "all rows",
        "SELECT md5(string_agg(t::text || sensor || v, ',' ORDER BY t, sensor)) FROM readings",
    );
    add(
        "jobs",
        "SELECT proc_name, hypertable_name, schedule_interval FROM timescaledb_information.jobs \
         WHERE job_id >= 1000 ORDER BY 1, 2",
    );
    add(
        "foreign keys",
        "SELECT conname FROM pg_constraint WHERE contype = 'f' AND conrelid = 'readings'::regclass",
    );
    add("sensors", "SELECT count(*) FROM sensors");
    out
}

/// The continuous aggregate agrees with a fresh aggregate of the base table.
fn aggregate_is_consistent(pg: &PgServer) {
    let c = pg.sync_client(DB);
    c.exec("CALL refresh_continuous_aggregate('hourly', NULL, NULL)");
    let differ = c.one(
        "SELECT count(*) FROM ((SELECT bucket, sensor, round(avg_v::numeric, 9), n FROM hourly
            EXCEPT SELECT time_bucket('1 hour', t), sensor, round(avg(v)::numeric, 9), count(*) FROM readings GROUP BY 1, 2)
          UNION ALL
           (SELECT time_bucket('1 hour', t), sensor, round(avg(v)::numeric, 9), count(*) FROM readings GROUP BY 1, 2
            EXCEPT SELECT bucket, sensor, round(avg_v::numeric, 9), n FROM hourly)) d",
    );
    assert_eq!(differ, "0", "aggregate buckets differ from the base table");
    let buckets = c.one("SELECT count(*) FROM hourly");
    assert!(buckets.parse::<i64>().unwrap() > 1000, "{buckets} buckets");
    // The foreign key is enforced after the restore: a reading of an
    // unknown sensor is refused.
    let refused = c
        .try_exec("INSERT INTO readings VALUES ('2026-10-15', 999, 1.0)")
        .expect_err("the foreign key to sensors must refuse sensor 999");
    assert!(refused.contains("foreign key"), "{refused}");
}

/// Commits one row per transaction into `live` until stopped; returns the
/// number committed.
struct Writer {
    stop: Arc<AtomicBool>,
    committed: Arc<AtomicI64>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(pg: &PgServer) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let committed = Arc::new(AtomicI64::new(0));
        let (s, n, port) = (stop.clone(), committed.clone(), pg.port);
        let handle = std::thread::spawn(move || {
            let c = SyncClient::connect(port, DB);
            let mut i = 0i64;
            while !s.load(Ordering::Relaxed) {
                i += 1;
                c.exec(&format!(
                    "INSERT INTO live VALUES (timestamptz '2026-11-01' + {i} * interval '1 second', {i})"
                ));
                n.store(i, Ordering::Relaxed);
            }
        });
        while committed.load(Ordering::Relaxed) < 50 {
            std::thread::sleep(Duration::from_millis(20));
        }
        Writer {
            stop,
            committed,
            handle: Some(handle),
        }
    }

    fn committed(&self) -> i64 {
        self.committed.load(Ordering::Relaxed)
    }

    fn stop(mut self) -> i64 {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().unwrap().join().unwrap();
        self.committed()
    }
}

/// `live` holds rows 1..=n with no gap, n between what was committed when
/// the backup started and when it ended.
fn live_rows_are_a_prefix(pg: &PgServer, at_start: i64, at_end: i64) {
    let r = pg.sync_client(DB).one(
        "SELECT count(*) || '|' || coalesce(min(n), 0) || '|' || coalesce(max(n), 0) FROM live",
    );
    let f: Vec<i64> = r.split('|').map(|x| x.parse().unwrap()).collect();
    assert_eq!(f[0], f[2], "live rows have gaps: {r}");
    assert!(
        f[0] >= at_start && f[0] <= at_end,
        "live has {} rows; committed {at_start} at the backup's start, {at_end} at its end",
        f[0]
    );
}

/// A started server with TimescaleDB preloaded and the database users run
/// populated; `None` (the test skips) without a real TimescaleDB.
fn populated_server() -> Option<PgServer> {
    if !timescaledb_present() {
        return None;
    }
    let mut pg = server();
    pg.start();
    populate(&pg);
    Some(pg)
}

/// `<root>/volume`, created: the pod's volume the logical mode stages its
/// dump in.
fn volume(pg: &PgServer) -> PathBuf {
    let vol = pg.root.join("volume");
    fs::create_dir(&vol).unwrap();
    vol
}

/// A backup taken while a writer commits, and what its restore must give.
struct UnderWrites {
    /// The facts before the backup (the writer touches only `live`).
    before: Vec<String>,
    /// Rows the writer had committed when the backup started and ended.
    at_start: i64,
    at_end: i64,
}

impl UnderWrites {
    /// `backup-now` (with `extra` set) while the writer commits.
    fn backup(pg: &PgServer, extra: &[(&'static str, &str)]) -> UnderWrites {
        let before = facts(pg);
        let w = Writer::start(pg);
        let at_start = w.committed();
        run_ok(pg.cmd("lifeboat-sidecar", extra).arg("backup-now"));
        let at_end = w.stop();
        UnderWrites {
            before,
            at_start,
            at_end,
        }
    }

    /// The restored server holds what was there before the backup, its
    /// aggregate agrees with its base table, and `live` one prefix.
    fn assert_restored(&self, pg: &PgServer) {
        assert_eq!(self.before, facts(pg));
        aggregate_is_consistent(pg);
        live_rows_are_a_prefix(pg, self.at_start, self.at_end);
    }
}

#[test]
fn physical_backup_under_writes_restores_hypertables_exactly() {
    let Some(mut pg) = populated_server() else {
        return;
    };
    let taken = UnderWrites::backup(&pg, &[]);

    pg.stop();
    pg.wipe();
    run_ok(&mut pg.cmd("lifeboat-restore", &[]));
    pg.start();
    taken.assert_restored(&pg);
}

#[test]
fn logical_backup_under_writes_loads_in_restore_mode_and_is_exact() {
    let Some(mut pg) = populated_server() else {
        return;
    };
    let vol = volume(&pg);
    let logical = [
        ("LIFEBOAT_POSTGRES_MODE", "logical"),
        ("LIFEBOAT_PATHS", vol.to_str().unwrap()),
    ];
    let taken = UnderWrites::backup(&pg, &logical);

    pg.fresh();
    run_ok(&mut pg.cmd("lifeboat-restore", &logical));
    let log = pg.root.join("sidecar.log");
    load_staged_dump(pg.cmd("lifeboat-sidecar", &logical), &log);
    let text = fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("loading it in TimescaleDB's restore mode"),
        "{text}"
    );
    assert!(
        !text.contains("pg_restore: "),
        "pg_restore complained:\n{text}"
    );
    taken.assert_restored(&pg);
    // Restore mode is off again, so the policies' background jobs run.
    assert_eq!(pg.sync_client(DB).one("SHOW timescaledb.restoring"), "off");
}

/// A notification receiver on 127.0.0.1 that keeps every body.
fn receiver() -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let got: Arc<Mutex<Vec<String>>> = Default::default();
    let seen = got.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut r = BufReader::new(stream.try_clone().unwrap());
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; len];
            let _ = r.read_exact(&mut body);
            seen.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&body).into_owned());
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    });
    (port, got)
}

/// A new pod whose server lacks TimescaleDB (not preloaded): the load is
/// refused. The sidecar stops retrying, says so in `/status`, a log error
/// and a notification, backs up the server as it is, and a restart does
/// not load the dump over what was written since.
#[test]
fn a_dump_the_server_refuses_is_reported_once_and_backups_go_on() {
    let Some(mut pg) = populated_server() else {
        return;
    };
    let vol = volume(&pg);
    let (port, got) = receiver();
    let hook = format!("http://127.0.0.1:{port}/hook");
    let env = pg.env_with(&[
        ("LIFEBOAT_POSTGRES_MODE", "logical"),
        ("LIFEBOAT_PATHS", vol.to_str().unwrap()),
        ("LIFEBOAT_NOTIFY_URL", hook.as_str()),
    ]);
    run_ok(lifeboat("lifeboat-sidecar", &pairs(&env)).arg("backup-now"));
    // The new pod's server does not preload TimescaleDB.
    pg.settings = Settings::PLAIN;
    pg.fresh();
    run_ok(&mut lifeboat("lifeboat-restore", &pairs(&env)));

    let log = pg.root.join("sidecar.log");
    let sc = RunningSidecar::start(&pairs(&env), &log);
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let status = loop {
        let st = sc.status();
        if !st["load_refused"].is_null() {
            break st;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the refused load was never reported:\n{}",
            sc.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let why = status["load_refused"].as_str().unwrap();
    assert!(why.contains("retrying cannot fix"), "{why}");
    assert!(why.contains("timescaledb"), "{why}");
    assert!(why.contains("load-refused.json"), "{why}");
    assert_eq!(sc.get("/readyz").0, 503);
    assert!(vol.join(".lifeboat-pending/load-refused.json").is_file());
    // Backups of the server as it is run again.
    let reply = ureq::post(&sc.url("/backup-now"))
        .timeout(Duration::from_secs(120))
        .call();
    assert!(reply.is_ok(), "{reply:?}\n{}", sc.log_text());
    let text = sc.log_text();
    assert_eq!(text.matches("retrying cannot fix").count(), 1, "{text}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !got
        .lock()
        .unwrap()
        .iter()
        .any(|b| b.contains("load_refused"))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no load_refused notification"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(sc.stop().success());

    // A restart does not load it again.
    let again = pg.root.join("again.log");
    let mut cmd = lifeboat("lifeboat-sidecar", &pairs(&env));
    cmd.arg("run");
    run_until_logged(cmd, &again, "next scheduled backup");
    let text = fs::read_to_string(&again).unwrap();
    assert!(
        text.contains("refused this restored dump earlier"),
        "{text}"
    );
    assert!(!text.contains("loading the restored dump"), "{text}");
}
