//! Hostile artifacts: names with `..`, absolute names, a file written
//! through a symlink (pointing outside, or inside), a hard link to an
//! outside file, device nodes and FIFOs, and decompression bombs.
//! Each artifact carries a correct manifest (right sha256, size, counts), so
//! only the entry checks stand between it and the filesystem. The helpers
//! live in `tests/support/hostile.rs`.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use lifeboat_tests::hostile::{e, hostile_tar, Entry, Plant};
use lifeboat_tests::*;
use tar::{EntryType, Header};

/// Stores `entries` as a committed artifact with an honest manifest.
fn plant(backup: &Path, data: &Path, entries: &[Entry]) {
    Plant::files(backup, data).entries(entries);
}

fn plant_tar(backup: &Path, data: &Path, tar: &[u8], entries: u64, bytes_in: u64) {
    Plant::files(backup, data).tar(tar, entries, bytes_in);
}

fn plant_stored(backup: &Path, data: &Path, stored: &[u8], entries: u64, bytes_in: u64) {
    Plant::files(backup, data).stored(stored, entries, bytes_in);
}

struct World {
    tmp: tempfile::TempDir,
    data: PathBuf,
    backup: PathBuf,
    outside: PathBuf,
}

fn world() -> World {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("vol/data");
    let backup = tmp.path().join("backup");
    let outside = tmp.path().join("outside");
    fs::create_dir_all(&backup).unwrap();
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("secret"), b"do not touch").unwrap();
    World {
        tmp,
        data,
        backup,
        outside,
    }
}

impl World {
    fn restore(&self) -> std::process::Output {
        lifeboat(
            "lifeboat-restore",
            &[
                ("LIFEBOAT_PATHS", self.data.to_str().unwrap()),
                (
                    "LIFEBOAT_TARGETS",
                    &format!("file://{}", self.backup.display()),
                ),
                ("HOSTNAME", "x-0"),
            ],
        )
        .output()
        .unwrap()
    }

    fn rel(&self) -> String {
        self.data
            .strip_prefix("/")
            .unwrap()
            .to_str()
            .unwrap()
            .to_string()
    }

    /// Every file named `evil` anywhere in the test's folder.
    fn evil_files(&self) -> Vec<PathBuf> {
        let mut found = vec![];
        let mut stack = vec![self.tmp.path().to_path_buf()];
        while let Some(p) = stack.pop() {
            for ent in fs::read_dir(&p).into_iter().flatten() {
                let ent = ent.unwrap();
                let ft = ent.file_type().unwrap();
                if ent.file_name() == "evil" {
                    found.push(ent.path());
                }
                if ft.is_dir() {
                    stack.push(ent.path());
                }
            }
        }
        found
    }

    /// Restore refused the artifact for `why`, and wrote nothing anywhere.
    fn assert_refused(&self, why: &str) {
        let out = self.restore();
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        assert!(
            stderr(&out).contains(why),
            "expected {why:?} in:\n{}",
            stderr(&out)
        );
        assert!(self.evil_files().is_empty(), "{:?}", self.evil_files());
        self.outside_untouched();
    }

    fn outside_untouched(&self) {
        assert_eq!(
            fs::read(self.outside.join("secret")).unwrap(),
            b"do not touch"
        );
        let names: Vec<_> = fs::read_dir(&self.outside)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "something landed outside: {names:?}");
    }
}

#[test]
fn dot_dot_names_are_refused() {
    let w = world();
    let rel = w.rel();
    let inner = format!("{rel}/../../../outside/evil");
    plant(
        &w.backup,
        &w.data,
        &[
            e(format!("{rel}/").as_bytes(), EntryType::Directory, b"", b""),
            e(inner.as_bytes(), EntryType::Regular, b"", b"pwned"),
            e(b"../evil", EntryType::Regular, b"", b"pwned"),
        ],
    );
    w.assert_refused("contains '..'");
}

#[test]
fn absolute_names_are_refused() {
    let w = world();
    let rel = w.rel();
    let abs = w.outside.join("evil");
    plant(
        &w.backup,
        &w.data,
        &[
            e(format!("{rel}/").as_bytes(), EntryType::Directory, b"", b""),
            e(
                abs.to_str().unwrap().as_bytes(),
                EntryType::Regular,
                b"",
                b"pwned",
            ),
        ],
    );
    w.assert_refused("is an absolute path");
}

/// A symlink pointing outside is restored as it was (it is the user's
/// data), but a later entry that would be written through it refuses the
/// whole artifact: nothing lands outside.
#[test]
fn nothing_is_written_through_a_symlink_pointing_outside() {
    for relative in [false, true] {
        let w = world();
        let target = if relative {
            b"../../outside".to_vec()
        } else {
            w.outside.to_str().unwrap().as_bytes().to_vec()
        };
        let rel = w.rel();
        plant(
            &w.backup,
            &w.data,
            &[
                e(format!("{rel}/").as_bytes(), EntryType::Directory, b"", b""),
                e(
                    format!("{rel}/link").as_bytes(),
                    EntryType::Symlink,
                    &target,
                    b"",
                ),
                e(
                    format!("{rel}/link/evil").as_bytes(),
                    EntryType::Regular,
                    b"",
                    b"pwned",
                ),
            ],
        );
        w.assert_refused("through a symlink");
    }
}

/// Symlinks are kept verbatim, whatever they point at, as `tar -x` keeps
/// them: absolute, up and out of the path, dangling, and chains of links.
#[test]
fn symlinks_are_restored_verbatim_whatever_they_point_at() {
    let links: [(&str, &str); 5] = [
        ("datasets", "../shared/datasets"),
        ("conda", "/opt/conda"),
        ("dangling", "no/such/file"),
        ("d0/up", "../../../../.."),
        ("esc", "d0/up/../../.."),
    ];
    // The data folder, `d0/`, the links, and `extra` entries after them.
    let plant_links = |w: &World, extra: &[(&str, &[u8])]| {
        let rel = w.rel();
        let mut names = vec![format!("{rel}/"), format!("{rel}/d0/")];
        names.extend(links.iter().map(|(n, _)| format!("{rel}/{n}")));
        names.extend(extra.iter().map(|(n, _)| format!("{rel}/{n}")));
        let mut entries: Vec<Entry> = names[..2]
            .iter()
            .map(|n| e(n.as_bytes(), EntryType::Directory, b"", b""))
            .collect();
        for ((_, to), name) in links.iter().zip(&names[2..]) {
            entries.push(e(name.as_bytes(), EntryType::Symlink, to.as_bytes(), b""));
        }
        for ((_, data), name) in extra.iter().zip(&names[2 + links.len()..]) {
            entries.push(e(name.as_bytes(), EntryType::Regular, b"", data));
        }
        plant(&w.backup, &w.data, &entries);
    };
    let w = world();
    plant_links(&w, &[]);
    let out = w.restore();
    assert!(out.status.success(), "{}", stderr(&out));
    for (name, to) in links {
        let got = fs::read_link(w.data.join(name)).unwrap();
        assert_eq!(got, Path::new(to), "{name}");
    }
    w.outside_untouched();

    // The same chain with a file written through `esc`: refused whole.
    let w = world();
    plant_links(&w, &[("esc/evil", b"pwned")]);
    w.assert_refused("through a symlink");
}

/// Not hostile, only foreign: a tar that returns to a folder after leaving
/// it (ours never does). Restore keeps only the folders on the current path
/// open, so it must take the folder up again and still end with the
/// folder's own mtime, not the time of the late write.
#[test]
fn a_tar_returning_to_a_folder_still_restores_its_mtime() {
    use std::os::unix::fs::MetadataExt;
    let w = world();
    let rel = w.rel();
    let names = [
        format!("{rel}/"),
        format!("{rel}/a/"),
        format!("{rel}/a/deep/"),
        format!("{rel}/b/"),
        format!("{rel}/b/f"),
        format!("{rel}/a/deep/g"),
        format!("{rel}/a/h"),
    ];
    let kinds = [
        EntryType::Directory,
        EntryType::Directory,
        EntryType::Directory,
        EntryType::Directory,
        EntryType::Regular,
        EntryType::Regular,
        EntryType::Regular,
    ];
    let entries: Vec<Entry> = names
        .iter()
        .zip(kinds)
        .map(|(n, k)| {
            let data: &[u8] = if k == EntryType::Regular {
                n.as_bytes()
            } else {
                b""
            };
            e(n.as_bytes(), k, b"", data)
        })
        .collect();
    plant(&w.backup, &w.data, &entries);
    let out = w.restore();
    assert!(out.status.success(), "{}", stderr(&out));
    for (n, k) in names.iter().zip(kinds) {
        let p = Path::new("/").join(n.trim_end_matches('/'));
        if k == EntryType::Regular {
            assert_eq!(fs::read(&p).unwrap(), n.as_bytes(), "{n}");
        }
        assert_eq!(fs::metadata(&p).unwrap().mtime(), 1_700_000_000, "{n}");
    }
}

/// Not hostile, only foreign: a tar that lists paths again. Small files are
/// written by helper threads while the walk reads on (file_writes.rs), so
/// this checks the walk still ends as `tar -x` would: the last entry for a
/// path wins whatever it replaces, and a hard link finds the file written
/// just before it.
#[test]
fn a_path_listed_again_ends_as_its_last_entry() {
    use std::os::unix::fs::MetadataExt;
    let w = world();
    let rel = w.rel();
    let n = |s: &str| format!("{rel}/{s}");
    let (root, a, f, g, h, s) = (n(""), n("a/"), n("a/f"), n("a/g"), n("a/h"), n("a/s"));
    let big = vec![b'x'; 300 * 1024];
    let entries = [
        e(root.as_bytes(), EntryType::Directory, b"", b""),
        e(a.as_bytes(), EntryType::Directory, b"", b""),
        e(f.as_bytes(), EntryType::Regular, b"", b"first"),
        e(f.as_bytes(), EntryType::Regular, b"", b"second"),
        e(g.as_bytes(), EntryType::Regular, b"", b"a file first"),
        e(g.as_bytes(), EntryType::Symlink, b"f", b""),
        e(h.as_bytes(), EntryType::Link, f.as_bytes(), b""),
        e(s.as_bytes(), EntryType::Symlink, b"nowhere", b""),
        e(s.as_bytes(), EntryType::Regular, b"", &big),
        e(s.as_bytes(), EntryType::Regular, b"", b"small again"),
    ];
    plant(&w.backup, &w.data, &entries);
    let out = w.restore();
    assert!(out.status.success(), "{}", stderr(&out));
    let at = |s: &str| w.data.join(s);
    assert_eq!(fs::read(at("a/f")).unwrap(), b"second");
    assert_eq!(fs::read_link(at("a/g")).unwrap(), Path::new("f"));
    assert_eq!(fs::read(at("a/h")).unwrap(), b"second");
    assert_eq!(
        fs::metadata(at("a/h")).unwrap().ino(),
        fs::metadata(at("a/f")).unwrap().ino()
    );
    assert_eq!(fs::read(at("a/s")).unwrap(), b"small again");
    assert_eq!(fs::metadata(at("a")).unwrap().mtime(), 1_700_000_000);
    w.outside_untouched();
}

#[test]
fn a_symlink_inside_cannot_be_used_to_write_elsewhere() {
    let w = world();
    let rel = w.rel();
    // `sub` points inside the volume (allowed), but a later entry that would
    // be written through it is refused: we never write through links.
    plant(
        &w.backup,
        &w.data,
        &[
            e(format!("{rel}/").as_bytes(), EntryType::Directory, b"", b""),
            e(
                format!("{rel}/real/").as_bytes(),
                EntryType::Directory,
                b"",
                b"",
            ),
            e(
                format!("{rel}/sub").as_bytes(),
                EntryType::Symlink,
                b"real",
                b"",
            ),
            e(
                format!("{rel}/sub/evil").as_bytes(),
                EntryType::Regular,
                b"",
                b"pwned",
            ),
        ],
    );
    w.assert_refused("through a symlink");
}

#[test]
fn a_hard_link_to_an_outside_file_is_refused() {
    let w = world();
    let rel = w.rel();
    let outside_rel = w.outside.join("secret");
    let outside_rel = outside_rel
        .strip_prefix("/")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    plant(
        &w.backup,
        &w.data,
        &[
            e(format!("{rel}/").as_bytes(), EntryType::Directory, b"", b""),
            e(
                format!("{rel}/evil").as_bytes(),
                EntryType::Link,
                outside_rel.as_bytes(),
                b"",
            ),
        ],
    );
    w.assert_refused("hard link to a file outside");
}

#[test]
fn device_nodes_and_fifos_are_skipped_with_a_warning() {
    let w = world();
    let rel = w.rel();
    plant(
        &w.backup,
        &w.data,
        &[
            e(format!("{rel}/").as_bytes(), EntryType::Directory, b"", b""),
            e(format!("{rel}/null").as_bytes(), EntryType::Char, b"", b""),
            e(format!("{rel}/sda").as_bytes(), EntryType::Block, b"", b""),
            e(format!("{rel}/pipe").as_bytes(), EntryType::Fifo, b"", b""),
            e(
                format!("{rel}/notes.txt").as_bytes(),
                EntryType::Regular,
                b"",
                b"kept\n",
            ),
        ],
    );
    let out = w.restore();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    for (name, kind) in [("null", "Char"), ("sda", "Block"), ("pipe", "Fifo")] {
        assert!(
            err.contains(&format!("{rel}/{name} is a {kind}; skipped")),
            "no warning for {name} in:\n{err}"
        );
        assert!(
            fs::symlink_metadata(w.data.join(name)).is_err(),
            "{name} was created"
        );
    }
    assert_eq!(fs::read(w.data.join("notes.txt")).unwrap(), b"kept\n");
    w.outside_untouched();
}

/// A header that claims a size its data does not have.
fn header_claiming(name: &str, size: u64) -> Vec<u8> {
    let mut h = Header::new_gnu();
    h.set_path(name).unwrap();
    h.set_entry_type(EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(size);
    h.set_mtime(1_700_000_000);
    h.set_cksum();
    h.as_bytes().to_vec()
}

#[test]
fn an_entry_claiming_a_huge_size_is_refused_before_anything_is_written() {
    let w = world();
    let rel = w.rel();
    let mut tar = hostile_tar(&[e(
        format!("{rel}/").as_bytes(),
        EntryType::Directory,
        b"",
        b"",
    )]);
    tar.truncate(512); // drop the end-of-archive blocks
    tar.extend(header_claiming(&format!("{rel}/evil"), 1 << 40));
    tar.extend(vec![b'x'; 4096]);
    plant_tar(&w.backup, &w.data, &tar, 2, 4096);
    w.assert_refused("entries hold more than the 4096 bytes the manifest records");
    assert!(!w.data.exists() || fs::read_dir(&w.data).unwrap().next().is_none());
}

#[test]
fn a_stream_decompressing_far_beyond_its_manifest_is_stopped() {
    // 1 GiB of zeros after a valid one-file tar compresses to a few KiB;
    // reading it to the end would cost minutes of CPU and, as a long-name
    // record, as much memory.
    let w = world();
    let rel = w.rel();
    let body = hostile_tar(&[
        e(format!("{rel}/").as_bytes(), EntryType::Directory, b"", b""),
        e(
            format!("{rel}/evil").as_bytes(),
            EntryType::Regular,
            b"",
            b"small",
        ),
    ]);
    let mut z = zstd::Encoder::new(Vec::new(), 19).unwrap();
    z.write_all(&body).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..1024 {
        z.write_all(&zeros).unwrap();
    }
    let stored = z.finish().unwrap();
    assert!(stored.len() < 1 << 20, "{}", stored.len());
    plant_stored(&w.backup, &w.data, &stored, 2, 5);
    let started = std::time::Instant::now();
    w.assert_refused("decompression bomb");
    eprintln!("refused after {:?}", started.elapsed());

    // The same with a GNU long-name record claiming 1 GiB of name.
    let w = world();
    let mut tar = Vec::new();
    let mut h = Header::new_gnu();
    h.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"././@LongLink");
    h.set_entry_type(EntryType::GNULongName);
    h.set_size(1 << 30);
    h.set_cksum();
    tar.extend(h.as_bytes());
    let mut z = zstd::Encoder::new(Vec::new(), 19).unwrap();
    z.write_all(&tar).unwrap();
    let name = vec![b'a'; 1 << 20];
    for _ in 0..1024 {
        z.write_all(&name).unwrap();
    }
    let stored = z.finish().unwrap();
    plant_stored(&w.backup, &w.data, &stored, 1, 0);
    w.assert_refused("decompression bomb");
}
