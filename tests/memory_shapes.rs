//! The shapes of data whose bookkeeping could grow with the data, at a
//! small scale: many files in one folder, and many files with two hard
//! links whose second names all come after every first one. Backed up with
//! `backup-now` and restored with `lifeboat-restore`, the tree comes back
//! equal (names, bytes, modes, owners, mtimes, and the two names of each
//! file sharing one inode). Their memory at full scale (1,000,000 files,
//! 200,000 inodes) is measured by `bench/run.sh --shapes`, not here: timed
//! and memory targets of release builds belong to the benchmark.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use lifeboat_tests::*;

const ONE_FOLDER_FILES: usize = 20_000;
const LINKED_INODES: usize = 5_000;

fn files_in_one_folder(root: &Path) {
    let d = root.join("one-folder");
    fs::create_dir(&d).unwrap();
    for i in 0..ONE_FOLDER_FILES {
        // Created in another order than the names sort in.
        let n = (i * 7919) % ONE_FOLDER_FILES;
        let content = match n % 1000 {
            // A few files too large for the read-ahead.
            0 => noise(100 * 1024 + n, n as u64),
            _ => format!("file {n}\n").into_bytes(),
        };
        fs::write(d.join(format!("img-{n:07}.dat")), content).unwrap();
    }
}

/// Every first name under `a/`, every second one under `b/`; every tenth
/// file also has a third name under `c/`.
fn hard_links(root: &Path) {
    for i in 0..LINKED_INODES {
        let sub = format!("d{:02}", i / 1000);
        let (a, b) = (root.join("a").join(&sub), root.join("b").join(&sub));
        if i % 1000 == 0 {
            fs::create_dir_all(&a).unwrap();
            fs::create_dir_all(&b).unwrap();
        }
        let first = a.join(format!("f{i:06}"));
        let content = match i % 500 {
            0 => noise(80 * 1024, i as u64),
            _ => format!("linked {i}\n").repeat(8).into_bytes(),
        };
        fs::write(&first, content).unwrap();
        fs::hard_link(&first, b.join(format!("f{i:06}"))).unwrap();
        if i % 10 == 0 {
            let c = root.join("c");
            fs::create_dir_all(&c).unwrap();
            fs::hard_link(&first, c.join(format!("f{i:06}"))).unwrap();
        }
    }
}

fn env(data: &Path, backup: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("LIFEBOAT_PATHS", data.display().to_string()),
        ("LIFEBOAT_TARGETS", format!("file://{}", backup.display())),
        ("LIFEBOAT_NAME", "shapes".to_string()),
    ]
}

/// Backs up `data`, wipes it, restores it with the init container and
/// compares; returns the artifact's entry names in archive order.
fn round_trip(tmp: &Path, data: &Path) -> Vec<String> {
    let backup = tmp.join("backup");
    fs::create_dir_all(&backup).unwrap();
    let before = snapshot(data);
    let env = env(data, &backup);
    let pairs = pairs(&env);
    run_ok(lifeboat("lifeboat-sidecar", &pairs).arg("backup-now"));
    let arts = artifacts(&history(&backup, "shapes"));
    assert_eq!(arts.len(), 1, "{arts:?}");
    let decoder = zstd::Decoder::new(fs::File::open(&arts[0]).unwrap()).unwrap();
    let order: Vec<String> = tar::Archive::new(decoder)
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();

    fs::remove_dir_all(data).unwrap();
    run_ok(&mut lifeboat("lifeboat-restore", &pairs));
    assert_same(&before, &snapshot(data));
    order
}

#[test]
fn many_files_in_one_folder_round_trip_in_name_order() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    fs::create_dir(&data).unwrap();
    files_in_one_folder(&data);
    let order = round_trip(tmp.path(), &data);
    let rel = data.join("one-folder");
    let prefix = format!("{}/", rel.strip_prefix("/").unwrap().display());
    let files: Vec<&String> = order.iter().filter(|n| n.starts_with(&prefix)).collect();
    assert_eq!(files.len(), ONE_FOLDER_FILES);
    let mut sorted = files.clone();
    sorted.sort();
    assert!(files == sorted, "entries are not in name order");
}

#[test]
fn many_hard_links_round_trip_as_one_inode_each() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    fs::create_dir(&data).unwrap();
    hard_links(&data);
    round_trip(tmp.path(), &data);
    // assert_same compared the groups of names per inode; say it plainly too.
    for i in [0usize, 1, 10, 500, LINKED_INODES - 1] {
        let sub = format!("d{:02}/f{i:06}", i / 1000);
        let a = fs::metadata(data.join("a").join(&sub)).unwrap();
        let b = fs::metadata(data.join("b").join(&sub)).unwrap();
        assert_eq!((a.dev(), a.ino()), (b.dev(), b.ino()), "{sub}");
        assert_eq!(a.nlink(), if i % 10 == 0 { 3 } else { 2 }, "{sub}");
    }
    // The data is stored once per inode: by hand, `tar -x` makes the same links.
    let by_hand = tmp.path().join("by-hand");
    fs::create_dir(&by_hand).unwrap();
    let art = &artifacts(&history(&tmp.path().join("backup"), "shapes"))[0];
    run_ok(Command::new("sh").arg("-c").arg(format!(
        "zstd -dc '{}' | tar -xf - -C '{}'",
        art.display(),
        by_hand.display()
    )));
    let rel = data.strip_prefix("/").unwrap();
    let a = fs::metadata(by_hand.join(rel).join("a/d03/f003333")).unwrap();
    let b = fs::metadata(by_hand.join(rel).join("b/d03/f003333")).unwrap();
    assert_eq!(a.ino(), b.ino());
}
