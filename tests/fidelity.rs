//! Fidelity (issue 18): what a restore gives back beyond the bytes, and
//! what `verify` says when the target is not as it should be.
//!
//! These tests mount filesystems (a small tmpfs, a read-only bind mount),
//! so they need root; without it each says it skipped and why.

use std::fs::{self, File};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use lifeboat_tests::*;
use sha2::{Digest, Sha256};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// A mount this test made, unmounted when dropped, also when the test
/// panics, so a failed run leaves nothing mounted.
struct Mount(PathBuf);

impl Mount {
    /// A tmpfs of `size` (e.g. `64m`) at `dir`.
    fn tmpfs(dir: &Path, size: &str) -> Mount {
        run_ok(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o"])
                .arg(format!("size={size}"))
                .arg("tmpfs")
                .arg(dir),
        );
        Mount(dir.to_path_buf())
    }

    /// `dir` made read-only in a way root cannot bypass (`chmod` would not
    /// stop root): bound onto itself, then remounted read-only.
    fn read_only_bind(dir: &Path) -> Mount {
        run_ok(Command::new("mount").arg("--bind").arg(dir).arg(dir));
        let m = Mount(dir.to_path_buf());
        run_ok(
            Command::new("mount")
                .args(["-o", "remount,ro,bind"])
                .arg(dir),
        );
        m
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// True (and says so) when the test cannot run here.
fn skipped(test: &str) -> bool {
    if is_root() {
        return false;
    }
    eprintln!(
        "{test}: skipped: it mounts filesystems, which needs root (CI runs the tests as root)"
    );
    true
}

/// The sha256 of a file, read 1 MiB at a time (a 1 GiB file is never in memory).
fn sha256_of(path: &Path) -> String {
    let mut f = File::open(path).unwrap();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; MIB as usize];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            return hex::encode(h.finalize());
        }
        h.update(&buf[..n]);
    }
}

fn env(data: &Path, backup: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("LIFEBOAT_PATHS", data.display().to_string()),
        ("LIFEBOAT_TARGETS", format!("file://{}", backup.display())),
        ("HOSTNAME", "fid-0".to_string()),
    ]
}

fn cmd(name: &str, env: &[(&'static str, String)]) -> Command {
    lifeboat(name, &pairs(env))
}

#[test]
fn a_sparse_file_restores_sparse_into_the_small_volume_it_came_from() {
    if skipped("a_sparse_file_restores_sparse_into_the_small_volume_it_came_from") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (data, backup) = (tmp.path().join("volume"), tmp.path().join("backup"));
    fs::create_dir_all(&data).unwrap();
    fs::create_dir_all(&backup).unwrap();
    // Dropped before `tmp`, which is declared first.
    let _volume = Mount::tmpfs(&data, "64m");

    // 1 GiB, nearly all holes: data at 0, at 300 MiB, and up to the very
    // end from an offset that is not block-aligned.
    let disk = data.join("disk.img");
    let f = File::create(&disk).unwrap();
    f.set_len(GIB).unwrap();
    f.write_all_at(&noise(64 * 1024, 1), 0).unwrap();
    f.write_all_at(&noise(64 * 1024, 2), 300 * MIB).unwrap();
    f.write_all_at(&noise(5000, 3), GIB - 5000).unwrap();
    drop(f);
    // Ends in a hole, at a length that is not block-aligned either.
    let tail = data.join("tail-hole");
    let f = File::create(&tail).unwrap();
    f.set_len(100 * MIB + 123).unwrap();
    f.write_all_at(b"head", 0).unwrap();
    drop(f);
    let files = [&disk, &tail];
    let before: Vec<(u64, String)> = files
        .iter()
        .map(|p| (fs::metadata(p).unwrap().len(), sha256_of(p)))
        .collect();

    let env = env(&data, &backup);
    run_ok(cmd("lifeboat-sidecar", &env).arg("backup-now"));
    let arts = artifacts(&history(&backup, "fid-0"));
    let stored = fs::metadata(&arts[0]).unwrap().len();
    eprintln!("1.1 GiB of mostly holes stored in {stored} bytes");

    for p in files {
        fs::remove_file(p).unwrap();
    }
    let out = run_ok(&mut cmd("lifeboat-restore", &env));
    assert!(
        stderr(&out).contains("restore completed"),
        "{}",
        stderr(&out)
    );
    for (p, (len, sha)) in files.iter().zip(&before) {
        let md = fs::metadata(p).unwrap();
        assert_eq!(md.len(), *len, "{}", p.display());
        assert_eq!(&sha256_of(p), sha, "{}", p.display());
        // The data blocks, not the holes: a few hundred KiB at most.
        let allocated = md.blocks() * 512;
        assert!(
            allocated < 4 * MIB,
            "{} takes {allocated} bytes on disk; its holes were written",
            p.display()
        );
    }
}

/// Sets the mtime (and atime) of `p` itself, not of a symlink's target.
fn set_mtime_ns(p: &Path, secs: i64, nsec: i64) {
    let ts = libc::timespec {
        tv_sec: secs as libc::time_t,
        tv_nsec: nsec as libc::c_long,
    };
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid C string and two timespecs; AT_SYMLINK_NOFOLLOW
    // touches a link itself.
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            [ts, ts].as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(
        r,
        0,
        "utimensat {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
}

#[test]
fn mtimes_keep_their_nanoseconds_through_lifeboat_restore_and_gnu_tar() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, backup) = (tmp.path().join("data"), tmp.path().join("backup"));
    fs::create_dir_all(data.join("folder")).unwrap();
    fs::create_dir_all(&backup).unwrap();
    fs::write(data.join("small.txt"), b"read ahead with its batch").unwrap();
    // Past the read-ahead's largest file: streamed on its own.
    fs::write(data.join("large.bin"), noise(200 * 1024, 7)).unwrap();
    fs::write(data.join("folder/inner.txt"), b"inside").unwrap();
    std::os::unix::fs::symlink("../small.txt", data.join("folder/link")).unwrap();
    // A GNU long-name record and a long link target beside the PAX record.
    fs::write(data.join("n".repeat(200)), b"long name").unwrap();
    let long_target = format!("{}small.txt", "./".repeat(60));
    std::os::unix::fs::symlink(&long_target, data.join("long-link")).unwrap();
    fs::write(data.join("whole-seconds.txt"), b"no fraction").unwrap();

    let mut with_nanos = 0;
    let mut all: Vec<PathBuf> = snapshot(&data)
        .into_keys()
        .map(|k| data.join(std::ffi::OsStr::from_bytes(&k)))
        .collect();
    all.sort();
    for (i, p) in all.iter().enumerate() {
        let nsec = if p.ends_with("whole-seconds.txt") {
            0
        } else {
            with_nanos += 1;
            // Distinct, and with digits everywhere a cut or rounding would show.
            123_456_789 + i as i64 * 1_001
        };
        set_mtime_ns(p, 1_700_000_000 + i as i64 * 3_600, nsec);
    }
    let before = snapshot(&data);
    assert_eq!(
        before.values().filter(|n| n.mtime_nsec != 0).count(),
        with_nanos
    );

    let env = env(&data, &backup);
    run_ok(cmd("lifeboat-sidecar", &env).arg("backup-now"));
    let art = artifacts(&history(&backup, "fid-0")).remove(0);

    // One PAX record per entry with nanoseconds, none for whole seconds.
    let raw = zstd::Decoder::new(File::open(&art).unwrap()).unwrap();
    let mut archive = tar::Archive::new(raw);
    let pax = archive
        .entries()
        .unwrap()
        .raw(true)
        .filter(|e| e.as_ref().unwrap().header().entry_type() == tar::EntryType::XHeader)
        .count();
    assert_eq!(pax, with_nanos);

    // GNU tar reads the records too, as the README tells a person to use it.
    let by_hand = tmp.path().join("by-hand");
    fs::create_dir(&by_hand).unwrap();
    run_ok(Command::new("sh").arg("-c").arg(format!(
        "zstd -dc '{}' | tar -xpf - -C '{}'",
        art.display(),
        by_hand.display()
    )));
    assert_same(
        &before,
        &snapshot(&by_hand.join(data.strip_prefix("/").unwrap())),
    );

    fs::remove_dir_all(&data).unwrap();
    run_ok(&mut cmd("lifeboat-restore", &env));
    assert_same(&before, &snapshot(&data));
}

/// `n` backups of a one-file volume; their ids, oldest first.
fn backups(env: &[(&'static str, String)], data: &Path, n: usize) -> Vec<String> {
    fs::create_dir_all(data).unwrap();
    (0..n)
        .map(|i| {
            fs::write(data.join("f"), format!("version {i}")).unwrap();
            let out = run_ok(cmd("lifeboat-sidecar", env).arg("backup-now"));
            stdout(&out).trim().to_string()
        })
        .collect()
}

#[test]
fn verify_all_reports_an_empty_or_garbled_manifest_as_failed() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, backup) = (tmp.path().join("data"), tmp.path().join("backup"));
    let env = env(&data, &backup);
    let ids = backups(&env, &data, 3);
    let hist = history(&backup, "fid-0");
    let manifest = |id: &str| hist.join(format!("{id}.manifest.json"));
    // Truncated to nothing (a full disk, a crash of the copy that put it
    // there), and overwritten with something that is not JSON.
    File::create(manifest(&ids[0])).unwrap();
    fs::write(manifest(&ids[1]), b"{\"format\": \"lifeboat/v1\", \"id\": ").unwrap();

    let out = cmd("lifeboat-sidecar", &env)
        .args(["verify", "--all"])
        .output()
        .unwrap();
    let (text, err) = (stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(1), "{text}\n{err}");
    for bad in &ids[..2] {
        let line = format!("FAILED  {}: not a valid manifest", manifest(bad).display());
        assert!(text.contains(&line), "no {line:?} in:\n{text}");
    }
    assert!(text.contains(&format!("ok      {} ", ids[2])), "{text}");
    assert!(
        err.contains("2 of 3 artifact(s) failed verification"),
        "{err}"
    );
}

#[test]
fn verify_on_a_read_only_target_says_ok_and_that_the_mark_was_not_recorded() {
    if skipped("verify_on_a_read_only_target_says_ok_and_that_the_mark_was_not_recorded") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (data, backup) = (tmp.path().join("data"), tmp.path().join("backup"));
    let env = env(&data, &backup);
    let ids = backups(&env, &data, 1);
    // chmod would not stop root; a read-only mount does.
    let _ro = Mount::read_only_bind(&history(&backup, "fid-0"));

    let out = run_ok(cmd("lifeboat-sidecar", &env).args(["verify", "--all"]));
    let (text, err) = (stdout(&out), stderr(&out));
    let line = format!("ok      {} ", ids[0]);
    assert!(text.contains(&line), "{text}");
    assert!(
        text.contains("(verified; could not record the mark: ")
            && text.contains("Read-only file system"),
        "{text}"
    );
    assert!(!text.contains("FAILED"), "{text}");
    assert!(
        err.contains("WARN") && err.contains("could not be recorded"),
        "{err}"
    );
}

/// Packed files (here random bytes, as model weights and archives are)
/// are stored raw and text is compressed, in one artifact: it restores
/// byte for byte through lifeboat and by hand with `zstd -dc | tar -x`, and
/// it is no larger than compressing everything (issue 26).
#[test]
fn packed_files_stored_raw_beside_compressed_text_restore_byte_for_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, backup) = (tmp.path().join("data"), tmp.path().join("backup"));
    fs::create_dir_all(data.join("models")).unwrap();
    fs::create_dir_all(data.join("notes")).unwrap();
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let mut noise = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    };
    let text = b"epoch 7 loss 0.0412 accuracy 0.981\n".repeat(150_000);
    // Text, two packed files in a row, text between, a packed one last.
    fs::write(data.join("notes/a.log"), &text).unwrap();
    fs::write(data.join("models/w1.bin"), noise(5 << 20)).unwrap();
    fs::write(data.join("models/w2.bin"), noise((6 << 20) + 333)).unwrap();
    fs::write(data.join("notes/b.log"), &text[..(3 << 20)]).unwrap();
    fs::write(data.join("z.safetensors"), noise((4 << 20) + 1)).unwrap();
    let before = snapshot(&data);

    let mut env = env(&data, &backup);
    env.push(("LIFEBOAT_LOG", "lifeboat=debug".to_string()));
    let out = run_ok(cmd("lifeboat-sidecar", &env).arg("backup-now"));
    let log = stderr(&out);
    assert_eq!(log.matches("stored raw").count(), 3, "{log}");
    let art = artifacts(&history(&backup, "fid-0")).remove(0);
    let packed = (5 << 20) + (6 << 20) + 333 + (4 << 20) + 1;
    let size = fs::metadata(&art).unwrap().len() as usize;
    assert!(
        size < packed + packed / 100,
        "{size} bytes for {packed} packed"
    );

    let by_hand = tmp.path().join("by-hand");
    fs::create_dir(&by_hand).unwrap();
    run_ok(Command::new("sh").arg("-c").arg(format!(
        "zstd -dc '{}' | tar -xpf - -C '{}'",
        art.display(),
        by_hand.display()
    )));
    assert_same(
        &before,
        &snapshot(&by_hand.join(data.strip_prefix("/").unwrap())),
    );

    fs::remove_dir_all(&data).unwrap();
    run_ok(&mut cmd("lifeboat-restore", &env));
    assert_same(&before, &snapshot(&data));
}
