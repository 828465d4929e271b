//! CouchDB-API servers for `tests/couchdb.rs`, started and stopped by the
//! tests on 127.0.0.1 with an admin configured:
//!
//! - PouchDB Server (npm `pouchdb-server`, installed by `scripts/setup.sh`,
//!   or `POUCHDB_SERVER`);
//! - a real Apache CouchDB 3.5 from the relocatable release named by
//!   `LIFEBOAT_TEST_COUCHDB_RELEASE` (a `.tar.zst`; CI passes it). Without
//!   it those tests say why they were skipped and pass, unless
//!   `LIFEBOAT_TEST_REQUIRE_PEERS=1`, where they fail naming the setting.
//!
//! The release is unpacked once per test process into a temporary folder
//! (removed at exit) and shared by every server; each server has its own
//! data folder, ini file, Erlang cookie and private `epmd` on a free port,
//! all started as children of the test and stopped by their PIDs.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

use crate::free_port;

pub const ADMIN: &str = "admin";
pub const PASSWORD: &str = "couch-test-pw";

/// The setting naming the CouchDB release archive.
pub const RELEASE_SETTING: &str = "LIFEBOAT_TEST_COUCHDB_RELEASE";
/// `1`: a test whose peer is missing fails instead of skipping.
pub const REQUIRE_SETTING: &str = "LIFEBOAT_TEST_REQUIRE_PEERS";

/// Which server answers the CouchDB API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    PouchDb,
    CouchDb35,
}

impl Flavor {
    pub fn name(self) -> &'static str {
        match self {
            Flavor::PouchDb => "PouchDB Server",
            Flavor::CouchDb35 => "Apache CouchDB 3.5",
        }
    }

    /// This flavor if available (as [`Flavor::available`]), else PouchDB
    /// Server, for tests that run against one server only.
    pub fn or_pouchdb(self, test: &str) -> Flavor {
        if self.available(test) {
            self
        } else {
            eprintln!("{test}: running against {} instead", Flavor::PouchDb.name());
            Flavor::PouchDb
        }
    }

    /// Whether `test` can run against this flavor here. A missing CouchDB
    /// release is a failure with `LIFEBOAT_TEST_REQUIRE_PEERS=1`, else a
    /// skip said on stderr.
    pub fn available(self, test: &str) -> bool {
        match self {
            Flavor::PouchDb => true,
            Flavor::CouchDb35 => match release_archive() {
                Ok(_) => true,
                Err(why) => {
                    assert!(
                        std::env::var(REQUIRE_SETTING).as_deref() != Ok("1"),
                        "{test}: {why} ({REQUIRE_SETTING}=1: peers are required)"
                    );
                    eprintln!("SKIPPED {test} against {}: {why}", self.name());
                    false
                }
            },
        }
    }
}

/// The release archive from [`RELEASE_SETTING`], or why there is none.
fn release_archive() -> Result<PathBuf, String> {
    let Some(p) = std::env::var_os(RELEASE_SETTING) else {
        return Err(format!(
            "{RELEASE_SETTING} is not set (the path of couchdb-3.5.0-debian12-amd64.tar.zst)"
        ));
    };
    let p = PathBuf::from(p);
    if !p.is_file() {
        return Err(format!("{RELEASE_SETTING}={} is not a file", p.display()));
    }
    Ok(p)
}

/// The unpacked release (`<tmp>/couchdb/`), once per test process.
fn release_root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let archive = release_archive().expect("checked by Flavor::available");
        let dir = tempfile::Builder::new()
            .prefix("lifeboat-test-couchdb-")
            .tempdir()
            .unwrap()
            .keep();
        let started = Instant::now();
        let decoder = zstd::Decoder::new(fs::File::open(&archive).unwrap()).unwrap();
        let mut tar = tar::Archive::new(decoder);
        tar.set_preserve_permissions(true);
        tar.unpack(&dir)
            .unwrap_or_else(|e| panic!("unpacking {}: {e}", archive.display()));
        eprintln!(
            "unpacked {} in {:.1}s",
            archive.display(),
            started.elapsed().as_secs_f64()
        );
        extern "C" fn remove_release() {
            if let Some(root) = ROOT.get() {
                if let Some(parent) = root.parent() {
                    let _ = fs::remove_dir_all(parent);
                }
            }
        }
        // SAFETY: registers a plain function to run at exit.
        unsafe { libc::atexit(remove_release) };
        dir.join("couchdb")
    })
}

/// The Erlang runtime's `bin/` inside the release (`erts-<version>/bin`).
fn erts_bin(root: &Path) -> PathBuf {
    let start = fs::read_to_string(root.join("releases/start_erl.data")).unwrap();
    let version = start.split_whitespace().next().unwrap();
    root.join(format!("erts-{version}/bin"))
}

fn pouchdb_server() -> PathBuf {
    if let Some(p) = std::env::var_os("POUCHDB_SERVER") {
        return p.into();
    }
    let p = PathBuf::from("/opt/lifeboat-test-tools/node_modules/.bin/pouchdb-server");
    assert!(
        p.exists(),
        "pouchdb-server is not installed (scripts/setup.sh installs it)"
    );
    p
}

/// One running server; stopped (SIGKILL, then its `epmd`) when dropped.
pub struct CouchServer {
    pub flavor: Flavor,
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
    /// CouchDB only: its private Erlang port mapper.
    epmd: Option<Child>,
}

impl CouchServer {
    /// A server keeping its databases in `dir`, with an admin.
    ///
    /// A port found free can be taken by another test's server before ours
    /// binds it; ours then exits and "up" is answered by the other one
    /// (seen in CI: the admin PUT got that server's 401). PouchDB Server is
    /// started again on another port then. CouchDB writes its port into its
    /// ini once, so it is started once.
    pub fn start(flavor: Flavor, dir: &Path) -> CouchServer {
        for _ in 0..5 {
            let mut s = CouchServer::unstarted(flavor, dir, free_port());
            match s.spawn() {
                Ok(()) => return s,
                Err(e) => eprintln!(
                    "{} on port {}: {e}; trying another port",
                    flavor.name(),
                    s.port
                ),
            }
        }
        panic!("{}: no free port worked in 5 tries", flavor.name())
    }

    pub fn start_on(flavor: Flavor, dir: &Path, port: u16) -> CouchServer {
        let mut s = CouchServer::unstarted(flavor, dir, port);
        if let Err(e) = s.spawn() {
            panic!("{} on port {port}: {e}", flavor.name());
        }
        s
    }

    fn unstarted(flavor: Flavor, dir: &Path, port: u16) -> CouchServer {
        fs::create_dir_all(dir).unwrap();
        CouchServer {
            flavor,
            port,
            dir: dir.to_path_buf(),
            child: None,
            epmd: None,
        }
    }

    fn spawn(&mut self) -> Result<(), String> {
        match self.flavor {
            Flavor::PouchDb => self.spawn_pouchdb(),
            Flavor::CouchDb35 => {
                self.spawn_couchdb();
                Ok(())
            }
        }
    }

    fn spawn_pouchdb(&mut self) -> Result<(), String> {
        let dir = &self.dir;
        let child = Command::new(pouchdb_server())
            .args(["-o", "127.0.0.1", "-p", &self.port.to_string(), "-n", "-d"])
            .arg(dir)
            .arg("-c")
            .arg(dir.join("config.json"))
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        self.wait_until("up", |s| ureq::get(&s.url("")).call().is_ok());
        // An admin ends "admin party": every request below authenticates.
        // A fresh server of ours accepts it; a refusal means another server
        // answered on the port.
        let created = ureq::put(&self.url(&format!("_config/admins/{ADMIN}")))
            .set("Accept", "application/json")
            .send_json(json!(PASSWORD));
        let exited = self.child.as_mut().unwrap().try_wait().unwrap();
        match (created, exited) {
            (Ok(_), None) => Ok(()),
            (_, Some(status)) => Err(format!("exited ({status}); another server has the port")),
            (Err(e), None) => Err(format!("creating the admin: {e}")),
        }
    }

    fn spawn_couchdb(&mut self) {
        let root = release_root();
        let dir = self.dir.clone();
        let data = dir.join("data");
        fs::create_dir_all(&data).unwrap();
        let ini = dir.join("local.ini");
        // Written once: CouchDB hashes the admin's password into it at
        // first start and keeps its uuid there (the last ini file given).
        if !ini.exists() {
            fs::write(
                &ini,
                format!(
                    "[couchdb]\nsingle_node = true\ndatabase_dir = {d}\nview_index_dir = {d}\n\
                     [cluster]\nn = 1\n\
                     [chttpd]\nbind_address = 127.0.0.1\nport = {port}\n\
                     [admins]\n{ADMIN} = {PASSWORD}\n",
                    d = data.display(),
                    port = self.port
                ),
            )
            .unwrap();
        }
        let vm_args = dir.join("vm.args");
        let mut args = fs::read_to_string(root.join("etc/vm.args")).unwrap();
        // A fixed cookie (else Erlang writes ~/.erlang.cookie) and our own
        // epmd, so stopping this server never touches another one's.
        args.push_str("\n-setcookie lifeboat-test\n-start_epmd false\n");
        fs::write(&vm_args, args).unwrap();

        let erts = erts_bin(root);
        let epmd_port = free_port();
        let epmd = Command::new(erts.join("epmd"))
            .args(["-port", &epmd_port.to_string(), "-address", "127.0.0.1"])
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start epmd");
        self.epmd = Some(epmd);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", epmd_port)).is_err() {
            assert!(Instant::now() < deadline, "epmd did not start");
            std::thread::sleep(Duration::from_millis(20));
        }

        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("couchdb.log"))
            .unwrap();
        let child = Command::new(root.join("bin/couchdb"))
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env("ERL_EPMD_PORT", epmd_port.to_string())
            .env("COUCHDB_ARGS_FILE", &vm_args)
            .env(
                "COUCHDB_INI_FILES",
                format!(
                    "{} {}",
                    root.join("etc/default.ini").display(),
                    ini.display()
                ),
            )
            .env("HOME", &dir)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start CouchDB");
        self.child = Some(child);
        // Up, and done creating `_users` and `_replicator` (single_node).
        self.wait_until("up", |s| {
            ureq::get(&s.url("_up")).call().is_ok() && s.call("GET", "_users", None).0 == 200
        });
    }

    /// Waits until the server has written what it writes by itself after
    /// start (CouchDB: `_users/_design/_auth`, a few seconds later), so
    /// snapshots taken before and after a restore agree.
    pub fn settle(&mut self) {
        if self.flavor == Flavor::CouchDb35 {
            self.wait_until("settled", |s| {
                s.call("GET", "_users/_design/_auth", None).0 == 200
            });
        }
    }

    /// Waits up to 60 s for `ready`; panics with the log if the server
    /// exits or never gets there.
    fn wait_until(&mut self, what: &str, mut ready: impl FnMut(&Self) -> bool) {
        let started = Instant::now();
        let deadline = started + Duration::from_secs(60);
        loop {
            if ready(self) {
                eprintln!(
                    "{} on port {}: {what} after {:.1}s",
                    self.flavor.name(),
                    self.port,
                    started.elapsed().as_secs_f64()
                );
                return;
            }
            let exited = self.child.as_mut().unwrap().try_wait().unwrap();
            if exited.is_some() || Instant::now() > deadline {
                let log = fs::read_to_string(self.dir.join("couchdb.log")).unwrap_or_default();
                let tail: String = log
                    .chars()
                    .rev()
                    .take(4000)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                panic!(
                    "{} on port {}: not {what} ({exited:?}):\n{tail}",
                    self.flavor.name(),
                    self.port
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{path}", self.port)
    }

    /// The server's process (beam for CouchDB, node for PouchDB).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// A request as the admin; status and JSON body (`null` if none).
    pub fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{ADMIN}:{PASSWORD}"));
        let req = ureq::request(method, &self.url(path))
            .set("Accept", "application/json")
            .set("Authorization", &format!("Basic {auth}"));
        let resp = match body {
            Some(b) => req.send_json(b),
            None => req.call(),
        };
        let resp = match resp {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("{method} {path}: {e}"),
        };
        let status = resp.status();
        (status, resp.into_json().unwrap_or(Value::Null))
    }

    /// [`CouchServer::call`] that must succeed.
    pub fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, v) = self.call(method, path, body);
        assert!(status < 300, "{method} {path}: {status} {v}");
        v
    }

    /// A request with a raw body (an attachment), as the admin.
    pub fn put_bytes(&self, path: &str, content_type: &str, body: &[u8]) -> Value {
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{ADMIN}:{PASSWORD}"));
        let resp = ureq::put(&self.url(path))
            .set("Accept", "application/json")
            .set("Authorization", &format!("Basic {auth}"))
            .set("Content-Type", content_type)
            .send_bytes(body)
            .unwrap_or_else(|e| panic!("PUT {path}: {e}"));
        resp.into_json().unwrap()
    }

    /// The raw bytes of a GET (an attachment), as the admin.
    pub fn get_bytes(&self, path: &str) -> Vec<u8> {
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{ADMIN}:{PASSWORD}"));
        let resp = ureq::get(&self.url(path))
            .set("Authorization", &format!("Basic {auth}"))
            .call()
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut resp.into_reader(), &mut out).unwrap();
        out
    }

    /// Stops the server at once (SIGKILL, as a lost pod), then its epmd,
    /// each by the PID it was started with.
    pub fn kill(&mut self) {
        for child in [self.child.take(), self.epmd.take()].into_iter().flatten() {
            let mut c = child;
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The sidecar's settings for this server.
    pub fn env(&self, vol: &Path, backup: &Path, pwfile: &Path) -> Vec<(&'static str, String)> {
        vec![
            ("LIFEBOAT_SOURCE", "couchdb".into()),
            ("LIFEBOAT_PATHS", vol.display().to_string()),
            ("LIFEBOAT_TARGETS", format!("file://{}", backup.display())),
            ("LIFEBOAT_SCHEDULE", "0 0 1 1 *".into()),
            ("LIFEBOAT_COUCHDB_URL", self.url("")),
            ("COUCHDB_USER", ADMIN.into()),
            ("COUCHDB_PASSWORD_FILE", pwfile.display().to_string()),
            ("HOSTNAME", "couch-0".into()),
        ]
    }
}

impl Drop for CouchServer {
    fn drop(&mut self) {
        self.kill();
    }
}
