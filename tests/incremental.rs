//! Incremental chains (`LIFEBOAT_FULL_EVERY`) as a user meets them: each
//! link restores the volume as it was when that link was taken, byte for
//! byte (deletions, renames, type changes, modes, owners and hard links
//! included); GNU tar applies the same chain by hand to the same tree; a
//! bad link restores the state just before it; retention keeps whole
//! chains; a state that cannot be used starts a new chain.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use lifeboat_tests::*;

struct Volume {
    tmp: tempfile::TempDir,
    data: PathBuf,
    backup: PathBuf,
    extra: Vec<(&'static str, String)>,
}

impl Volume {
    fn new(full_every: &str) -> Volume {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("home/jovyan");
        let backup = tmp.path().join("backup");
        fs::create_dir_all(&data).unwrap();
        fs::create_dir_all(&backup).unwrap();
        Volume {
            tmp,
            data,
            backup,
            extra: vec![("LIFEBOAT_FULL_EVERY", full_every.into())],
        }
    }

    fn cmd(&self, name: &str) -> Command {
        let mut env = vec![
            ("LIFEBOAT_PATHS", self.data.display().to_string()),
            (
                "LIFEBOAT_TARGETS",
                format!("file://{}", self.backup.display()),
            ),
            ("HOSTNAME", "nb-0".to_string()),
        ];
        env.extend(self.extra.iter().cloned());
        lifeboat(name, &pairs(&env))
    }

    /// A backup; its id.
    fn backup(&self) -> String {
        let out = run_ok(self.cmd("lifeboat-sidecar").arg("backup-now"));
        stdout(&out).trim().to_string()
    }

    fn history(&self) -> PathBuf {
        history(&self.backup, "nb-0")
    }

    fn manifest(&self, id: &str) -> serde_json::Value {
        let p = self.history().join(format!("{id}.manifest.json"));
        serde_json::from_slice(&fs::read(p).unwrap()).unwrap()
    }

    /// `restore --to` of `id` into a new folder; the volume's tree in it.
    fn restore_to(&self, id: &str) -> PathBuf {
        let to = self.tmp.path().join(format!("to-{id}"));
        run_ok(
            self.cmd("lifeboat-sidecar")
                .args(["restore", "--to"])
                .arg(&to)
                .args(["--id", id]),
        );
        to.join(self.data.strip_prefix("/").unwrap())
    }

    /// The chain ending at `id` applied by hand, as the README says:
    /// `zstd -dc <link> | tar -x -G -p -f - -C <dir>`, oldest first.
    fn by_hand(&self, chain: &[String]) -> PathBuf {
        let out = self.tmp.path().join(format!("by-hand-{}", chain.len()));
        fs::create_dir_all(&out).unwrap();
        for id in chain {
            let artifact = self.history().join(format!("{id}.tar.zst"));
            let mut zstd = Command::new("zstd")
                .args(["-dc"])
                .arg(&artifact)
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let st = Command::new("tar")
                .args(["-x", "-G", "-p", "-f", "-", "-C"])
                .arg(&out)
                .stdin(zstd.stdout.take().unwrap())
                .status()
                .unwrap();
            assert!(zstd.wait().unwrap().success(), "zstd -dc {id}");
            assert!(st.success(), "tar -x -G of {id}: {st}");
        }
        out.join(self.data.strip_prefix("/").unwrap())
    }
}

/// What changes between links: everything a chain must carry.
fn change(data: &Path, step: usize) {
    let p = |s: &str| data.join(s);
    match step {
        1 => {
            fs::write(p("notebooks/a.ipynb"), b"{\"cells\": [\"changed\"]}").unwrap();
            fs::remove_file(p("secret")).unwrap();
            // A folder renamed, hard links inside it.
            fs::rename(p("models"), p("weights")).unwrap();
            fs::set_permissions(p("run.sh"), fs::Permissions::from_mode(0o700)).unwrap();
            std::os::unix::fs::lchown(p("empty.txt"), Some(4242), Some(4343)).unwrap();
            symlink("weights/blob.bin", p("new-link")).unwrap();
            // A folder replaced by a file, and a file by a folder.
            fs::remove_dir(p("empty-dir")).unwrap();
            fs::write(p("empty-dir"), b"now a file").unwrap();
            fs::remove_file(p("run.sh")).unwrap();
            fs::create_dir(p("run.sh")).unwrap();
            fs::write(p("run.sh/inside"), b"x").unwrap();
        }
        2 => {
            fs::create_dir_all(p("brand/new/deep")).unwrap();
            fs::write(p("brand/new/deep/f"), noise(70_000, 9)).unwrap();
            fs::remove_dir_all(p("notebooks/deep")).unwrap();
            // Same bytes, newer mtime: stored again (GNU tar does too).
            set_mtime(&p("three"), 1_700_000_000);
        }
        3 => {} // nothing changed
        4 => fs::write(p("empty.txt"), b"no longer empty").unwrap(),
        _ => unreachable!(),
    }
}

#[test]
fn each_link_restores_its_own_tree_and_gnu_tar_applies_the_chain_alike() {
    assert!(
        is_root(),
        "this test checks owners and must run as root (CI does)"
    );
    let v = Volume::new("4");
    crate::roundtrip::build_tree(&v.data);
    let mut ids = vec![v.backup()];
    let mut trees = vec![snapshot(&v.data)];
    for step in 1..=4 {
        change(&v.data, step);
        ids.push(v.backup());
        trees.push(snapshot(&v.data));
    }
    // Four backups per chain: the fifth starts a new one.
    let levels: Vec<u64> = ids
        .iter()
        .map(|id| v.manifest(id)["level"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(levels, [0, 1, 2, 3, 0]);
    for i in 1..4 {
        let m = v.manifest(&ids[i]);
        assert_eq!(m["base"], ids[i - 1].as_str());
        assert_eq!(m["chain"], ids[0].as_str());
        assert_eq!(m["state"]["file"], format!("{}.state.zst", ids[i]));
    }
    assert_eq!(v.manifest(&ids[4])["chain"], ids[4].as_str());
    assert!(v.manifest(&ids[4]).get("base").is_none());
    // Nothing changed before link 3: it stores no file contents, only
    // the folders' lists.
    assert_eq!(v.manifest(&ids[3])["bytes_in"], 0);
    let full = v.manifest(&ids[0])["size"].as_u64().unwrap();
    assert!(v.manifest(&ids[3])["size"].as_u64().unwrap() * 20 < full);

    for (id, tree) in ids.iter().zip(&trees) {
        assert_same(tree, &snapshot(&v.restore_to(id)));
    }
    // The same by hand, with nothing but zstd and GNU tar.
    assert_same(&trees[3], &snapshot(&v.by_hand(&ids[..4])));

    // The init container: the newest link of the newest chain.
    fs::remove_dir_all(&v.data).unwrap();
    let out = run_ok(&mut v.cmd("lifeboat-restore"));
    assert!(stderr(&out).contains(&ids[4]), "{}", stderr(&out));
    assert_same(&trees[4], &snapshot(&v.data));

    let list = stdout(&run_ok(v.cmd("lifeboat-sidecar").arg("list")));
    assert!(list.contains(&format!("L3 of {}", ids[0])), "{list}");
    let verify = stdout(&run_ok(v.cmd("lifeboat-sidecar").arg("verify")));
    assert!(verify.contains(&format!("ok      {}", ids[4])), "{verify}");
}

#[test]
fn a_bad_link_restores_the_state_just_before_it() {
    let v = Volume::new("10");
    fs::write(v.data.join("f"), "0").unwrap();
    let mut ids = vec![v.backup()];
    let mut trees = vec![snapshot(&v.data)];
    for step in 1..=3 {
        fs::write(v.data.join(format!("f{step}")), step.to_string()).unwrap();
        ids.push(v.backup());
        trees.push(snapshot(&v.data));
    }
    // Link 1 damaged: links 1 to 3 cannot be restored, link 0 can.
    let artifact = v.history().join(format!("{}.tar.zst", ids[1]));
    let mut b = fs::read(&artifact).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 0x40;
    fs::write(&artifact, b).unwrap();
    fs::remove_dir_all(&v.data).unwrap();
    let out = run_ok(&mut v.cmd("lifeboat-restore"));
    let err = stderr(&out);
    assert_same(&trees[0], &snapshot(&v.data));
    assert!(
        err.contains(&format!(
            "restore completed; the app may start id=\"{}\"",
            ids[0]
        )),
        "{err}"
    );
    // Once link 1 is proven bad (reading link 3's chain), neither link 2
    // nor link 1 itself is read again.
    assert!(
        err.contains(&format!(
            "link {} (level 1) of its incremental chain is bad",
            ids[1]
        )),
        "{err}"
    );
    assert!(err.contains("it was proven bad above"), "{err}");
    assert_eq!(
        err.matches(&format!("applying link link={}", ids[1]))
            .count(),
        1,
        "{err}"
    );
    let verify = v.cmd("lifeboat-sidecar").arg("verify").output().unwrap();
    assert_eq!(verify.status.code(), Some(1));
    assert!(
        stdout(&verify).contains(&format!("FAILED  {}", ids[1])),
        "{}",
        stdout(&verify)
    );

    // A link whose base is gone is not restored alone.
    fs::remove_file(v.history().join(format!("{}.manifest.json", ids[2]))).unwrap();
    let to = v.tmp.path().join("to");
    let out = v
        .cmd("lifeboat-sidecar")
        .args(["restore", "--to"])
        .arg(&to)
        .args(["--id", &ids[3]])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!(
            "link {} (level 2), which it builds on, is not on this target",
            ids[2]
        )),
        "{}",
        stderr(&out)
    );
    // Nor is a link added to that chain: the next backup starts a new one.
    let out = run_ok(v.cmd("lifeboat-sidecar").arg("backup-now"));
    let id = stdout(&out).trim().to_string();
    assert!(
        stderr(&out).contains(&format!(
            "link {} of the chain is missing, unreadable or does not fit",
            ids[2]
        )),
        "{}",
        stderr(&out)
    );
    assert_eq!(v.manifest(&id)["chain"], id.as_str());
}

#[test]
fn retention_keeps_whole_chains_and_a_lost_state_starts_a_new_one() {
    let mut v = Volume::new("3");
    v.extra.push(("LIFEBOAT_RETENTION", "last=2".into()));
    let mut ids = Vec::new();
    for i in 0..7 {
        fs::write(v.data.join(format!("f{i}")), i.to_string()).unwrap();
        ids.push(v.backup());
    }
    // Chains: 0-2, 3-5, 6. Kept: the newest two (5 and 6) and what 5
    // builds on (3, 4); chain 0-2 went whole, state files included.
    let mut left: Vec<String> = fs::read_dir(v.history())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    let mut want = Vec::new();
    for id in &ids[3..] {
        for suffix in [".manifest.json", ".state.zst", ".tar.zst"] {
            want.push(format!("{id}{suffix}"));
        }
    }
    want.sort();
    assert_eq!(left, want);

    // The newest link's state lost: the next backup is a new chain's
    // full first link, and says why.
    fs::remove_file(v.history().join(format!("{}.state.zst", ids[6]))).unwrap();
    fs::write(v.data.join("f7"), "7").unwrap();
    // A second link of chain 6 would need that state.
    let out = run_ok(v.cmd("lifeboat-sidecar").arg("backup-now"));
    let id = stdout(&out).trim().to_string();
    assert!(
        stderr(&out).contains(
            "the chain's state could not be used; this backup starts a new incremental chain"
        ),
        "{}",
        stderr(&out)
    );
    assert_eq!(v.manifest(&id)["chain"], id.as_str());
    let before = snapshot(&v.data);
    fs::remove_dir_all(&v.data).unwrap();
    run_ok(&mut v.cmd("lifeboat-restore"));
    assert_same(&before, &snapshot(&v.data));
}
