//! One file back without a full restore (`restore --to DIR --path P`), as
//! a user who deleted a notebook meets it: only what the paths name is
//! written, byte for byte; the whole artifact is still verified (a damaged
//! byte after the wanted file fails the restore); a path that matches
//! nothing says what the names look like; in an incremental chain, the
//! file comes back as the newest link has it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use lifeboat_tests::*;

struct Pod {
    tmp: tempfile::TempDir,
    data: PathBuf,
    backup: PathBuf,
    extra: Vec<(&'static str, String)>,
}

impl Pod {
    fn new(extra: &[(&'static str, &str)]) -> Pod {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("home/jovyan");
        let backup = tmp.path().join("backup");
        fs::create_dir_all(data.join("project/data")).unwrap();
        fs::create_dir_all(&backup).unwrap();
        fs::write(
            data.join("analysis.ipynb"),
            b"{\"cells\": [\"the one I deleted\"]}",
        )
        .unwrap();
        fs::write(data.join("other.ipynb"), b"{\"cells\": []}").unwrap();
        fs::write(data.join("project/data/a.csv"), b"x,y\n1,2\n").unwrap();
        fs::write(data.join("project/data/b.csv"), vec![7u8; 300_000]).unwrap();
        fs::write(data.join("project/notes.md"), b"# notes\n").unwrap();
        fs::hard_link(
            data.join("other.ipynb"),
            data.join("project/other-link.ipynb"),
        )
        .unwrap();
        Pod {
            tmp,
            data,
            backup,
            extra: extra.iter().map(|(k, v)| (*k, v.to_string())).collect(),
        }
    }

    fn cmd(&self) -> Command {
        let mut env = vec![
            ("LIFEBOAT_PATHS", self.data.display().to_string()),
            (
                "LIFEBOAT_TARGETS",
                format!("file://{}", self.backup.display()),
            ),
            ("HOSTNAME", "nb-0".to_string()),
        ];
        env.extend(self.extra.iter().cloned());
        lifeboat("lifeboat-sidecar", &pairs(&env))
    }

    fn backup(&self) -> String {
        stdout(&run_ok(self.cmd().arg("backup-now")))
            .trim()
            .to_string()
    }

    /// `restore --to` a new folder with these `--path`s: its output.
    fn restore(&self, into: &str, paths: &[&str]) -> (std::process::Output, PathBuf) {
        let to = self.tmp.path().join(into);
        let mut c = self.cmd();
        c.args(["restore", "--to"]).arg(&to);
        for p in paths {
            c.args(["--path", p]);
        }
        (c.output().unwrap(), to)
    }

    /// Where the volume lands below a `--to` folder.
    fn inside(&self, to: &Path) -> PathBuf {
        to.join(self.data.strip_prefix("/").unwrap())
    }
}

/// Every regular file and symlink below `dir`, relative, sorted; not
/// the restore's own marker.
fn files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(".lifeboat-")
            {
                continue;
            }
            if p.is_dir() && !p.is_symlink() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn only_the_named_files_and_folders_come_back() {
    let pod = Pod::new(&[]);
    pod.backup();
    let rel = pod.data.strip_prefix("/").unwrap().display().to_string();
    let (out, to) = pod.restore(
        "one",
        &[
            // As a person copies it from the pod: with the leading /.
            &format!("/{rel}/analysis.ipynb"),
            &format!("{rel}/project/data"),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let got = pod.inside(&to);
    assert_eq!(
        files(&got),
        ["analysis.ipynb", "project/data/a.csv", "project/data/b.csv"]
    );
    for f in files(&got) {
        assert_eq!(
            fs::read(got.join(&f)).unwrap(),
            fs::read(pod.data.join(&f)).unwrap(),
            "{f}"
        );
    }

    // Globs: `*` within a folder.
    let (out, to) = pod.restore("glob", &[&format!("{rel}/*.ipynb")]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(files(&pod.inside(&to)), ["analysis.ipynb", "other.ipynb"]);

    // A hard link whose first name is left out: said, and as nothing
    // else came back, the restore fails (exit 64) instead of a silent 0.
    let (out, to) = pod.restore("link", &[&format!("{rel}/project/other-link.ipynb")]);
    let said = stderr(&out);
    assert_eq!(out.status.code(), Some(64), "{said}");
    assert!(said.contains("which --path leaves out"), "{said}");
    assert!(!to.exists() || files(&to).is_empty());
    // With its first name, both come back.
    let (out, to) = pod.restore(
        "both",
        &[
            &format!("{rel}/project/other-link.ipynb"),
            &format!("{rel}/other.ipynb"),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        files(&pod.inside(&to)),
        ["other.ipynb", "project/other-link.ipynb"]
    );
}

#[test]
fn a_path_that_matches_nothing_says_what_names_look_like() {
    let pod = Pod::new(&[]);
    pod.backup();
    let (out, to) = pod.restore("none", &["jovyan/analysis.ipynb"]);
    let said = stderr(&out);
    assert_eq!(out.status.code(), Some(64), "{said}");
    assert!(said.contains("--path"), "{said}");
    assert!(said.contains("matches no file"), "{said}");
    assert!(
        said.contains(&format!(
            "e.g. {}/",
            pod.data.strip_prefix("/").unwrap().display()
        )),
        "{said}"
    );
    assert!(!to.exists() || files(&to).is_empty());
    let (out, _) = pod.restore("climb", &["../etc/passwd"]);
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
}

/// The wanted file comes first in the stream; a byte damaged in the
/// artifact's compressed bytes after it still fails the restore, and
/// nothing is left in the folder.
#[test]
fn the_whole_artifact_is_verified_even_for_one_file() {
    let pod = Pod::new(&[("LIFEBOAT_COMPRESSION", "none")]);
    let id = pod.backup();
    let artifact = history(&pod.backup, "nb-0").join(format!("{id}.tar"));
    let mut bytes = fs::read(&artifact).unwrap();
    // Inside b.csv's run of 7s, far after analysis.ipynb.
    let at = bytes
        .windows(64)
        .rposition(|w| w.iter().all(|b| *b == 7))
        .unwrap();
    bytes[at] ^= 0xFF;
    fs::write(&artifact, &bytes).unwrap();
    let rel = pod.data.strip_prefix("/").unwrap().display().to_string();
    let (out, to) = pod.restore("damaged", &[&format!("{rel}/analysis.ipynb")]);
    let said = stderr(&out);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("sha256") || said.contains("checksum"),
        "{said}"
    );
    assert!(!to.exists() || files(&to).is_empty(), "{:?}", files(&to));
}

/// In an incremental chain the file comes back as the newest link has it,
/// and a file the chain deleted does not come back.
#[test]
fn from_a_chain_the_newest_state_of_the_file() {
    let pod = Pod::new(&[("LIFEBOAT_FULL_EVERY", "5")]);
    pod.backup();
    fs::write(pod.data.join("analysis.ipynb"), b"{\"cells\": [\"newer\"]}").unwrap();
    fs::remove_file(pod.data.join("project/data/a.csv")).unwrap();
    let id = pod.backup();
    let m: serde_json::Value = serde_json::from_slice(
        &fs::read(history(&pod.backup, "nb-0").join(format!("{id}.manifest.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(m["level"], 1, "a chain's second link");
    let rel = pod.data.strip_prefix("/").unwrap().display().to_string();
    let (out, to) = pod.restore(
        "chain",
        &[
            &format!("{rel}/analysis.ipynb"),
            &format!("{rel}/project/data"),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let got = pod.inside(&to);
    assert_eq!(files(&got), ["analysis.ipynb", "project/data/b.csv"]);
    assert_eq!(
        fs::read(got.join("analysis.ipynb")).unwrap(),
        b"{\"cells\": [\"newer\"]}"
    );
    // Only the file the newest link deleted: in the first link, gone in
    // the chain's state, so nothing comes back, and that is an error.
    let (out, _) = pod.restore("deleted", &[&format!("{rel}/project/data/a.csv")]);
    let said = stderr(&out);
    assert_eq!(out.status.code(), Some(64), "{said}");
    assert!(said.contains("matches no file"), "{said}");
}
