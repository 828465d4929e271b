//! The exact bytes of the artifact of a small crafted tree are pinned, so a
//! refactor that changes what a backup writes (entry order, header fields,
//! PAX records, hard-link and symlink encoding, padding, the zstd frame) is
//! caught here rather than by an operator's `tar -t` diff.
//!
//! What is pinned, and why it is the same on every machine:
//!
//! - Entry names are the absolute paths backed up, so the tree lives at one
//!   fixed path ([`TREE`]) instead of a temporary folder whose name changes
//!   every run; a lock file keeps two test processes (two checkouts on one
//!   machine) from sharing it at once.
//! - Content, modes and mtimes (one with nanoseconds, which adds a PAX
//!   record) are set by the test; the umask does not matter.
//! - Owners (uid/gid) are the one input the test may not control: lifeboat
//!   writes each file's numeric owner (no user or group names). As root the
//!   test gives every entry the owner 1000:100. Not as root the entries are
//!   the runner's own, so the tar stream is hashed after the uid and gid
//!   fields of the entry headers are rewritten to 1000:100 and their
//!   checksums recomputed ([`owners_fixed`]); for a root run that rewrite
//!   changes nothing, which the test checks.
//! - The tar stream is pinned through `LIFEBOAT_COMPRESSION=none`, and the
//!   default zstd artifact must decompress to the very same bytes.
//! - The zstd artifact's own sha256 is pinned too, but only when the owners
//!   are the fixed ones (a root run, as CI and `scripts/test.sh` run);
//!   otherwise the compressed bytes carry this user's uid and cannot be
//!   rewritten without recompressing. zstd is deterministic for the same
//!   input, level and library version (Cargo.lock fixes zstd-sys).
//!   lifeboat compresses in jobs of 1 MiB, each an independent frame made
//!   in one call (`frame_pool`), so which worker made it, and how many
//!   there are, does not change a byte: the digest holds on any machine.
//!
//! When a change of the artifact is intended, the failure message prints
//! the new listing and digests to paste here.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use lifeboat_tests::*;
use sha2::{Digest, Sha256};

/// Where the tree is built: its path is part of every entry's name.
const TREE: &str = "/tmp/lifeboat-test-artifact-bytes/home/jovyan";
/// Held (flock) while the tree exists.
const LOCK: &str = "/tmp/lifeboat-test-artifact-bytes.lock";
/// The owner every entry has in the pinned stream.
const UID: u64 = 1000;
const GID: u64 = 100;

/// Every header of the tar stream (owners fixed), one line each: type,
/// mode, uid:gid, mtime, size, name, link target, and the sha256 of the
/// data (first 16 hex digits); PAX records as `pax key=value`.
const LISTING: &str = "\
d 0750 1000:100 1699971200 0 tmp/lifeboat-test-artifact-bytes/home/jovyan - -
f 0600 1000:100 1699985600 0 tmp/lifeboat-test-artifact-bytes/home/jovyan/empty - e3b0c44298fc1c14
d 0755 1000:100 1699982000 0 tmp/lifeboat-test-artifact-bytes/home/jovyan/folder - -
f 0640 1000:100 1700000000 40000 tmp/lifeboat-test-artifact-bytes/home/jovyan/folder/data.bin - 31f7bee401c4efa7
d 0700 1000:100 1699996400 0 tmp/lifeboat-test-artifact-bytes/home/jovyan/folder/empty-folder - -
l 0777 1000:100 1699992800 0 tmp/lifeboat-test-artifact-bytes/home/jovyan/folder/link ../notes.txt -
f 0644 1000:100 1699978400 26 tmp/lifeboat-test-artifact-bytes/home/jovyan/folder/notes-again.txt - 1c6564b08f42a0b1
h 0644 1000:100 1699978400 0 tmp/lifeboat-test-artifact-bytes/home/jovyan/notes.txt tmp/lifeboat-test-artifact-bytes/home/jovyan/folder/notes-again.txt -
pax mtime=1699974800.123456789
f 0755 1000:100 1699974800 18 tmp/lifeboat-test-artifact-bytes/home/jovyan/run.sh - 299001868fb8c02f
";

/// sha256 of the uncompressed tar stream, owners fixed.
const TAR_SHA256: &str = "ae544ad7a76d93a1b3a07068b5460144256070a0cecc3fa915e394be56173a02";
/// sha256 of the default (zstd:3) artifact, owners fixed. The same whether
/// the sidecar compresses on one thread or on several (see the top).
const ZSTD_SHA256: &str = "8997e1ca6f8addf7b4a10b1bcc84e3bcecd585a40cd2d8eb6fa6a777a8b7f313";

/// Holds an exclusive `flock` on [`LOCK`] until dropped.
struct Lock {
    _file: fs::File,
}

impl Lock {
    fn take() -> Lock {
        use std::os::unix::io::AsRawFd;
        // Read-only will do when another user's run created it.
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(LOCK)
            .or_else(|_| fs::File::open(LOCK))
            .unwrap();
        // SAFETY: flock(2) on a descriptor we own.
        let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
        assert_eq!(r, 0, "flock {LOCK}: {}", std::io::Error::last_os_error());
        Lock { _file: f }
    }
}

impl Drop for Lock {
    /// The tree goes before the lock is released, also after a failure.
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(tree_top());
    }
}

/// The folder below `/tmp` that holds [`TREE`].
fn tree_top() -> &'static Path {
    Path::new(TREE).parent().unwrap().parent().unwrap()
}

/// Builds the crafted tree at [`TREE`] (removing what a previous run left):
/// folders, a nested empty folder, regular files, an empty file, an
/// executable, a hard link, a relative symlink, and fixed times.
fn build_tree(root: &Path) {
    if tree_top().exists() {
        fs::remove_dir_all(tree_top()).unwrap();
    }
    fs::create_dir_all(root.join("folder/empty-folder")).unwrap();
    let w = |p: &str, data: &[u8], mode: u32| {
        fs::write(root.join(p), data).unwrap();
        fs::set_permissions(root.join(p), fs::Permissions::from_mode(mode)).unwrap();
    };
    w("notes.txt", b"lifeboat pins these bytes\n", 0o644);
    w("empty", b"", 0o600);
    w("run.sh", b"#!/bin/sh\necho hi\n", 0o755);
    w("folder/data.bin", &noise(40_000, 7), 0o640);
    // A second name for notes.txt: stored as a hard link entry.
    fs::hard_link(root.join("notes.txt"), root.join("folder/notes-again.txt")).unwrap();
    symlink("../notes.txt", root.join("folder/link")).unwrap();
    let chmod =
        |p: &str, m: u32| fs::set_permissions(root.join(p), fs::Permissions::from_mode(m)).unwrap();
    chmod("folder", 0o755);
    chmod("folder/empty-folder", 0o700);
    chmod("", 0o750);
    if is_root() {
        for rel in entries(root) {
            std::os::unix::fs::lchown(root.join(rel), Some(UID as u32), Some(GID as u32)).unwrap();
        }
    }
    // Fixed times, deepest first so folders keep theirs; one with
    // nanoseconds, which lifeboat writes as a PAX `mtime` record.
    let mut all = entries(root);
    all.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for (i, rel) in all.iter().enumerate() {
        let nsec = if rel == Path::new("run.sh") {
            123_456_789
        } else {
            0
        };
        set_mtime_ns(&root.join(rel), 1_700_000_000 - i as i64 * 3_600, nsec);
    }
}

/// Paths below `root` (itself as ``), relative, sorted.
fn entries(root: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = snapshot(root)
        .into_keys()
        .map(|k| PathBuf::from(OsStr::from_bytes(&k)))
        .collect();
    v.sort();
    v
}

/// The tar stream with the uid and gid of every entry header (files,
/// folders, symlinks, hard links; not the PAX and GNU long-name headers,
/// which lifeboat writes with owner 0 everywhere) set to [`UID`]:[`GID`]
/// and the header checksums recomputed. Everything else is left as it is,
/// so the digest still covers every other byte.
fn owners_fixed(stream: &[u8]) -> Vec<u8> {
    let mut out = stream.to_vec();
    let mut at = 0;
    while at + 512 <= out.len() {
        let block = &mut out[at..at + 512];
        if block.iter().all(|&b| b == 0) {
            at += 512;
            continue;
        }
        let mut h = tar::Header::new_old();
        h.as_mut_bytes().copy_from_slice(block);
        let size = h.entry_size().expect("a header's size");
        let t = h.entry_type();
        if t.is_file() || t.is_dir() || t.is_symlink() || t.is_hard_link() {
            h.set_uid(UID);
            h.set_gid(GID);
            h.set_cksum();
            block.copy_from_slice(h.as_bytes());
        }
        at += 512 + size.div_ceil(512) as usize * 512;
    }
    out
}

/// [`LISTING`]'s form of a tar stream.
fn listing(stream: &[u8]) -> String {
    let mut out = String::new();
    let mut archive = tar::Archive::new(stream);
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        if let Some(pax) = e.pax_extensions().unwrap() {
            for r in pax {
                let r = r.unwrap();
                writeln!(out, "pax {}={}", r.key().unwrap(), r.value().unwrap()).unwrap();
            }
        }
        let h = e.header().clone();
        let kind = match h.entry_type() {
            t if t.is_dir() => "d",
            t if t.is_symlink() => "l",
            t if t.is_hard_link() => "h",
            t if t.is_file() => "f",
            t => panic!("unexpected entry type {t:?}"),
        };
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        let sha = if h.entry_type().is_file() {
            hex::encode(Sha256::digest(&data))[..16].to_string()
        } else {
            "-".into()
        };
        let link = e
            .link_name_bytes()
            .map(|l| String::from_utf8_lossy(&l).into_owned())
            .unwrap_or_else(|| "-".into());
        writeln!(
            out,
            "{kind} {:04o} {}:{} {} {} {} {link} {sha}",
            h.mode().unwrap(),
            h.uid().unwrap(),
            h.gid().unwrap(),
            h.mtime().unwrap(),
            h.size().unwrap(),
            String::from_utf8_lossy(&e.path_bytes()),
        )
        .unwrap();
    }
    out
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// One `backup-now` of [`TREE`] with `compression` into a new file target
/// in `backup`; the artifact's bytes, which its manifest describes.
fn backup(backup: &Path, compression: &str) -> Vec<u8> {
    fs::create_dir(backup).unwrap();
    let targets = format!("file://{}", backup.display());
    run_ok(
        lifeboat(
            "lifeboat-sidecar",
            &[
                ("LIFEBOAT_PATHS", TREE),
                ("LIFEBOAT_TARGETS", &targets),
                ("LIFEBOAT_COMPRESSION", compression),
                ("HOSTNAME", "bytes-0"),
            ],
        )
        .arg("backup-now"),
    );
    let hist = history(backup, "bytes-0");
    let [artifact] = &artifacts(&hist)[..] else {
        panic!("not one artifact in {}", hist.display());
    };
    let name = artifact.file_name().unwrap().to_str().unwrap();
    let stem = name.split(".tar").next().unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(hist.join(format!("{stem}.manifest.json"))).unwrap())
            .unwrap();
    let bytes = fs::read(artifact).unwrap();
    assert_eq!(manifest["compression"], compression);
    assert_eq!(manifest["sha256"], sha256(&bytes), "{compression}");
    assert_eq!(
        manifest["warnings"],
        serde_json::json!([]),
        "{}",
        manifest["warnings"]
    );
    bytes
}

#[test]
fn a_crafted_tree_gives_the_pinned_artifact_bytes() {
    let _lock = Lock::take();
    let root = PathBuf::from(TREE);
    build_tree(&root);
    let tmp = tempfile::tempdir().unwrap();

    let tar_bytes = backup(&tmp.path().join("none"), "none");
    let fixed = owners_fixed(&tar_bytes);
    if is_root() {
        assert_eq!(fixed, tar_bytes, "as root the owners are the fixed ones");
    }

    // The default compression: the same tar, in one zstd frame (the tree
    // is under one 1 MiB job).
    let zst_bytes = backup(&tmp.path().join("zstd"), "zstd:3");
    let unpacked = zstd::decode_all(&zst_bytes[..]).unwrap();
    assert!(
        unpacked == tar_bytes,
        "the zstd artifact does not hold the same tar as the uncompressed one"
    );

    let got_listing = listing(&fixed);
    let got_tar = sha256(&fixed);
    let got_zstd = sha256(&zst_bytes);
    let report = format!(
        "listing:\n{got_listing}\ntar sha256 (owners fixed): {got_tar}\n\
         zstd:3 sha256{}: {got_zstd}",
        if is_root() {
            ""
        } else {
            ", not pinned: not root"
        }
    );
    assert_eq!(got_listing, LISTING, "entries changed; now:\n{report}");
    assert_eq!(got_tar, TAR_SHA256, "tar bytes changed; now:\n{report}");
    if is_root() {
        assert_eq!(
            got_zstd, ZSTD_SHA256,
            "zstd artifact bytes changed; now:\n{report}"
        );
    } else {
        eprintln!(
            "not root: the zstd artifact's digest is not compared (its owners are this user's)"
        );
    }
}
