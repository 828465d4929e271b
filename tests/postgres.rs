//! Physical PostgreSQL backups against a real PostgreSQL 15 (Debian's
//! packages), started and stopped by these tests on 127.0.0.1: a backup
//! taken while a writer commits, restored into an empty PGDATA before the
//! server starts, yields a server that starts, passes amcheck, and holds
//! every row committed before the backup began, consistent to one moment.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lifeboat_tests::postgres_server::{connect, PgServer, Settings, BIN, PASSWORD};
use lifeboat_tests::*;

/// A started cluster of our own whose backups go to the history `pg-0`.
fn server() -> PgServer {
    let mut pg = PgServer::init("pg-0", Settings::PLAIN);
    pg.start();
    pg
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Each transaction inserts account n and ledger row 1_000_000+n and
/// updates account n-1: after a restore the two tables must agree.
const CONSISTENT: &str = "SELECT count(*) FROM accounts a FULL JOIN \
    (SELECT id - 1000000 AS id FROM ledger WHERE id > 1000000) l USING (id) \
    WHERE a.id IS NULL OR l.id IS NULL";

#[test]
fn a_backup_taken_under_writes_restores_to_a_consistent_server() {
    let mut pg = server();
    let rt = rt();
    rt.block_on(async {
        let c = pg.client("postgres").await;
        c.batch_execute(
            "CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint NOT NULL, note text);
             CREATE TABLE ledger (id bigint PRIMARY KEY, account bigint NOT NULL, payload text);
             CREATE INDEX ON ledger (account);
             INSERT INTO ledger SELECT g, g % 1000, repeat(md5(g::text), 8) FROM generate_series(1, 200000) g;",
        )
        .await
        .unwrap();
    });

    // A writer that records which transactions have committed.
    let committed = Arc::new(AtomicI64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (committed, stop) = (committed.clone(), stop.clone());
        let client = rt.block_on(pg.client("postgres"));
        rt.spawn(async move {
            let mut n: i64 = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let sql = format!(
                    "BEGIN; INSERT INTO accounts VALUES ({n}, 0, repeat('n', 100)); \
                     INSERT INTO ledger VALUES ({}, {n}, 'w'); \
                     UPDATE accounts SET balance = balance + 1 WHERE id = {}; COMMIT;",
                    1_000_000 + n,
                    n - 1
                );
                client.batch_execute(&sql).await.unwrap();
                committed.store(n, Ordering::SeqCst);
                // Flush dirty pages now and then, as a busy server does, so
                // relation files change while the backup reads them.
                if n % 25 == 0 {
                    client.batch_execute("CHECKPOINT").await.unwrap();
                }
            }
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let before_backup = committed.load(Ordering::SeqCst);
    let out = run_ok(pg.cmd("lifeboat-sidecar", &[]).arg("backup-now"));
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    rt.block_on(writer).unwrap();
    let err = stderr(&out);
    assert!(
        err.contains("PostgreSQL backup started") && err.contains("PostgreSQL backup stopped"),
        "{err}"
    );
    assert!(before_backup > 0, "the writer never committed");
    // Relation files change while read by design (WAL replay repairs torn
    // pages); that must not be reported as a problem.
    let hist = history(&pg.backup, "pg-0");
    let manifest = fs::read_dir(&hist)
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().ends_with(".manifest.json"))
        .unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(manifest.path()).unwrap()).unwrap();
    assert_eq!(
        manifest["warnings"],
        serde_json::json!([]),
        "{}",
        manifest["warnings"]
    );
    assert_eq!(manifest["source"], "postgres");
    assert!(
        manifest["source_meta"]["stop_lsn"].is_string()
            && manifest["source_meta"]["system_identifier"].is_string(),
        "{}",
        manifest["source_meta"]
    );

    pg.stop();
    pg.wipe();
    run_ok(&mut pg.cmd("lifeboat-restore", &[]));
    let md = fs::metadata(&pg.data).unwrap();
    assert_eq!(
        md.permissions().mode() & 0o777,
        0o700,
        "PGDATA must be 0700"
    );
    pg.start();

    let (count, inconsistent) = rt.block_on(async {
        let c = pg.client("postgres").await;
        let count: i64 = c
            .query_one(
                "SELECT count(*) FROM accounts WHERE id <= $1",
                &[&before_backup],
            )
            .await
            .unwrap()
            .get(0);
        let bad: i64 = c.query_one(CONSISTENT, &[]).await.unwrap().get(0);
        (count, bad)
    });
    assert_eq!(
        count, before_backup,
        "rows committed before the backup began must all be there"
    );
    assert_eq!(
        inconsistent, 0,
        "accounts and ledger disagree: not one point in time"
    );

    let amcheck = Command::new(format!("{BIN}/pg_amcheck"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &pg.port.to_string(),
            "-U",
            "postgres",
            "--install-missing",
            "--all",
        ])
        .env("PGPASSWORD", PASSWORD)
        .output()
        .unwrap();
    assert!(
        amcheck.status.success(),
        "pg_amcheck: {}{}",
        stdout(&amcheck),
        stderr(&amcheck)
    );

    // A second backup of the restored server, restored again.
    rt.block_on(async {
        pg.client("postgres")
            .await
            .batch_execute("INSERT INTO accounts VALUES (-1, 42, 'after restore')")
            .await
            .unwrap()
    });
    run_ok(pg.cmd("lifeboat-sidecar", &[]).arg("backup-now"));
    pg.stop();
    pg.wipe();
    run_ok(&mut pg.cmd("lifeboat-restore", &[]));
    pg.start();
    let balance: i64 = rt.block_on(async {
        pg.client("postgres")
            .await
            .query_one("SELECT balance FROM accounts WHERE id = -1", &[])
            .await
            .unwrap()
            .get(0)
    });
    assert_eq!(balance, 42);
}

#[test]
fn a_killed_backup_leaves_the_server_ready_for_the_next() {
    let pg = server();
    rt().block_on(async {
        pg.client("postgres")
            .await
            .batch_execute("CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 300000) g")
            .await
            .unwrap()
    });
    let mut child = pg
        .cmd("lifeboat-sidecar", &[("LIFEBOAT_COMPRESSION", "zstd:19")])
        .arg("backup-now")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let hist = history(&pg.backup, "pg-0");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !fs::read_dir(&hist)
        .map(|rd| {
            rd.flatten()
                .any(|e| e.file_name().to_string_lossy().ends_with(".partial"))
        })
        .unwrap_or(false)
    {
        assert!(
            child.try_wait().unwrap().is_none(),
            "backup ended before it could be killed"
        );
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(artifacts(&hist).is_empty());
    // The server ended the backup with the session: a new one starts at once.
    run_ok(pg.cmd("lifeboat-sidecar", &[]).arg("backup-now"));
    assert_eq!(artifacts(&hist).len(), 1);
}

#[test]
fn wrong_password_unreachable_server_and_wrong_path_are_clear_errors() {
    let pg = server();
    let wrong_pw = pg.root.join("wrong-pw");
    fs::write(&wrong_pw, "nope").unwrap();
    let cases: Vec<(Vec<(&'static str, String)>, &str)> = vec![
        (
            vec![("PGPASSWORD_FILE", wrong_pw.to_str().unwrap().into())],
            "password authentication failed",
        ),
        (
            vec![("PGPORT", free_port().to_string())],
            "check PGHOST and PGPORT",
        ),
        (
            vec![("LIFEBOAT_PATHS", pg.root.to_str().unwrap().into())],
            "is not a PostgreSQL data directory",
        ),
    ];
    for (extra, needle) in cases {
        let pairs: Vec<(&'static str, &str)> =
            extra.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let out = pg
            .cmd("lifeboat-sidecar", &pairs)
            .arg("backup-now")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        assert!(
            stderr(&out).contains(needle),
            "expected {needle:?} in:\n{}",
            stderr(&out)
        );
    }
    assert!(artifacts(&history(&pg.backup, "pg-0")).is_empty());
}

#[test]
fn an_artifact_of_another_major_version_is_refused() {
    let mut pg = server();
    run_ok(pg.cmd("lifeboat-sidecar", &[]).arg("backup-now"));
    pg.stop();
    pg.wipe();
    let out = pg
        .cmd("lifeboat-restore", &[("PG_MAJOR", "16")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("taken on PostgreSQL 15, but PG_MAJOR is 16"),
        "{}",
        stderr(&out)
    );
    assert!(!pg.data.exists() || fs::read_dir(&pg.data).unwrap().next().is_none());
    run_ok(&mut pg.cmd("lifeboat-restore", &[("PG_MAJOR", "15")]));
    pg.start();
}

/// A database name that needs quoting everywhere: in SQL, in a libpq
/// connection string (`=`, `'`), and as a file name (`/`).
const WEIRD_DB: &str = "Sales \"Q1\" = 'ü'/x";

fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Every row of every table in `public` of each database, as text, plus the
/// role's password hash: what a user would compare after a restore.
async fn logical_snapshot(pg: &PgServer) -> Vec<String> {
    let mut out = Vec::new();
    for db in ["app", WEIRD_DB] {
        let c = pg.client(db).await;
        let tables: Vec<String> = c
            .query(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        for t in tables {
            let rows: String = c
                .query_one(
                    &format!(
                        "SELECT coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), '') FROM {} t",
                        ident(&t)
                    ),
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            out.push(format!("{db}.{t}:\n{rows}"));
        }
    }
    let c = pg.client("postgres").await;
    let role: String = c
        .query_one(
            "SELECT rolname || ' ' || rolcanlogin || ' ' || rolpassword FROM pg_authid WHERE rolname = 'app_owner'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    out.push(role);
    let owner: String = c
        .query_one(
            "SELECT pg_get_userbyid(datdba)::text FROM pg_database WHERE datname = 'app'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    out.push(format!("app owned by {owner}"));
    out
}

#[test]
fn logical_mode_round_trips_two_databases_through_the_pending_load() {
    let mut pg = server();
    let vol = pg.root.join("volume");
    fs::create_dir(&vol).unwrap();
    let rt = rt();
    rt.block_on(async {
        let c = pg.client("postgres").await;
        for sql in [
            "CREATE ROLE app_owner LOGIN PASSWORD 'app-secret'",
            "CREATE DATABASE app OWNER app_owner",
        ] {
            c.batch_execute(sql).await.unwrap();
        }
        c.batch_execute(&format!("CREATE DATABASE {}", ident(WEIRD_DB)))
            .await
            .unwrap();
        pg.client("app")
            .await
            .batch_execute(
                "SET ROLE app_owner;
                 CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL, blob bytea);
                 INSERT INTO items SELECT g, 'item ' || g || ' ü', decode(md5(g::text) || md5((g * 7)::text), 'hex')
                   FROM generate_series(1, 20000) g;
                 CREATE VIEW recent AS SELECT * FROM items WHERE id > 19990;",
            )
            .await
            .unwrap();
        pg.client(WEIRD_DB)
            .await
            .batch_execute(
                "CREATE TABLE \"Quoted Table\" (k text PRIMARY KEY, v jsonb);
                 INSERT INTO \"Quoted Table\" VALUES ('a', '{\"x\": 1}'), ('b''s', '[1, 2, 3]');",
            )
            .await
            .unwrap();
    });
    let before = rt.block_on(logical_snapshot(&pg));
    let path = format!("{BIN}:{}", std::env::var("PATH").unwrap_or_default());
    let vol_s = vol.to_str().unwrap();
    let env = [
        ("LIFEBOAT_POSTGRES_MODE", "logical"),
        ("LIFEBOAT_PATHS", vol_s),
        ("LIFEBOAT_SCHEDULE", "0 0 1 1 *"),
        ("PATH", path.as_str()),
    ];

    // Without PostgreSQL's client tools: a setup error at once.
    let out = pg
        .cmd(
            "lifeboat-sidecar",
            &[
                ("LIFEBOAT_POSTGRES_MODE", "logical"),
                ("LIFEBOAT_PATHS", vol_s),
                // Debian puts wrappers in /usr/bin: an empty PATH is sure.
                ("PATH", "/nonexistent"),
            ],
        )
        .arg("backup-now")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("LIFEBOAT_POSTGRES_MODE")
            && stderr(&out).contains("pg_dump is not on PATH"),
        "{}",
        stderr(&out)
    );

    run_ok(pg.cmd("lifeboat-sidecar", &env).arg("backup-now"));
    let hist = history(&pg.backup, "pg-0");
    let artifact = artifacts(&hist).pop().expect("one artifact");
    let manifest = manifest_of(&artifact);
    assert_eq!(manifest["layout"], "logical");
    let dbs: Vec<&str> = manifest["source_meta"]["databases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(dbs, ["Sales \"Q1\" = 'ü'/x", "app", "postgres"]);
    // A plain tar: the dumps are where the README says.
    assert_eq!(
        entry_names(&artifact),
        [
            "postgres/Sales \"Q1\" = 'ü'%2Fx.dump",
            "postgres/app.dump",
            "postgres/postgres.dump",
            "postgres/roles.sql"
        ]
    );

    // An operator's copy for inspection lands where `tar -x` would put it.
    let inspect = pg.root.join("inspect");
    run_ok(
        pg.cmd("lifeboat-sidecar", &env)
            .args(["restore", "--to"])
            .arg(&inspect),
    );
    let roles = fs::read_to_string(inspect.join("postgres/roles.sql")).unwrap();
    assert!(roles.contains("CREATE ROLE \"app_owner\""), "{roles}");
    assert!(inspect.join("postgres/app.dump").is_file());

    // A new pod: a fresh cluster in which the image created an empty `app`.
    pg.stop();
    pg.wipe();
    pg.initdb();
    pg.start();
    rt.block_on(async {
        pg.client("postgres")
            .await
            .batch_execute("CREATE DATABASE app")
            .await
            .unwrap()
    });
    let out = run_ok(&mut pg.cmd("lifeboat-restore", &env));
    assert!(stderr(&out).contains("staged"), "{}", stderr(&out));
    assert!(vol.join(".lifeboat-pending/manifest.json").is_file());

    // Until the dump is loaded, a backup would record an empty server.
    fails_with(
        pg.cmd("lifeboat-sidecar", &env).arg("backup-now"),
        1,
        "is not loaded yet",
    );

    // Data lifeboat did not load is never dropped to make room.
    rt.block_on(async {
        pg.client("app")
            .await
            .batch_execute("CREATE TABLE someone_elses (x int)")
            .await
            .unwrap()
    });
    let log = pg.root.join("sidecar.log");
    run_until_logged(
        pg.cmd("lifeboat-sidecar", &env),
        &log,
        "lifeboat does not replace data it did not load",
    );
    assert!(vol.join(".lifeboat-pending/manifest.json").is_file());
    rt.block_on(async {
        pg.client("app")
            .await
            .batch_execute("DROP TABLE someone_elses")
            .await
            .unwrap()
    });

    // Started again (as Kubernetes restarts it), the sidecar loads the dump.
    load_staged_dump(pg.cmd("lifeboat-sidecar", &env), &log);
    assert!(!vol.join(".lifeboat-pending").exists());
    let marker: serde_json::Value =
        serde_json::from_slice(&fs::read(vol.join(".lifeboat-restored")).unwrap()).unwrap();
    assert_eq!(marker["id"], manifest["id"]);

    let after = rt.block_on(logical_snapshot(&pg));
    assert_eq!(before, after);
    // The role came back with its password: the app can log in.
    rt.block_on(async {
        let client = connect(pg.port, "app_owner", "app-secret", "app").await;
        let n: i64 = client
            .query_one("SELECT count(*) FROM recent", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 10);
    });
    // Next start: nothing pending, nothing loaded twice; backups work again.
    run_ok(pg.cmd("lifeboat-sidecar", &env).arg("backup-now"));
    assert_eq!(artifacts(&hist).len(), 2);
}
