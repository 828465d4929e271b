//! The incremental chain's tar format, on both sides: links written with
//! `D` entries (`lifeboat::chain::dumpdir`) applied in order by GNU tar
//! (`tar -x -G`) and by the restore's reader give the same tree, the last
//! link's: deletions, a folder replaced by a file, a file replaced by a
//! folder and renames included.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use lifeboat::chain::dumpdir::{self, Flag};
use lifeboat::manifest::Manifest;
use lifeboat::tar_read::{self, Mapping, Mode, ReadReport, Step};
use sha2::Digest;

/// One link of a chain, written the way the backup writes it: every folder
/// a `D` entry listing its names, then its content; of the files only
/// those in `stored` (paths relative to `root`), the others flagged `N`.
fn link(root: &Path, stored: &dyn Fn(&Path) -> bool) -> (Vec<u8>, u64) {
    let spool = tempfile::tempdir().unwrap();
    let mut tar = tar::Builder::new(Vec::new());
    let mut entries = 0;
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        let mut names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        let mut list = dumpdir::Builder::new(spool.path());
        let mut files = Vec::new();
        let mut dirs = Vec::new();
        for n in &names {
            let r = rel.join(n);
            let md = fs::symlink_metadata(root.join(&r)).unwrap();
            let flag = if md.is_dir() {
                dirs.push(r);
                Flag::Folder
            } else if stored(&r) {
                files.push(r);
                Flag::Stored
            } else {
                Flag::Earlier
            };
            use std::os::unix::ffi::OsStrExt;
            list.push(flag, n.as_bytes()).unwrap();
        }
        let (len, data) = list.finish().unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::new(dumpdir::TYPEFLAG));
        h.set_mode(fs::metadata(&dir).unwrap().mode() & 0o7777);
        h.set_size(len);
        tar.append_data(&mut h, Path::new("data").join(&rel), data)
            .unwrap();
        entries += 1;
        for f in files {
            let p = root.join(&f);
            let md = fs::symlink_metadata(&p).unwrap();
            let mut h = tar::Header::new_gnu();
            h.set_mode(md.mode() & 0o7777);
            if md.file_type().is_symlink() {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                tar.append_link(
                    &mut h,
                    Path::new("data").join(&f),
                    fs::read_link(&p).unwrap(),
                )
                .unwrap();
            } else {
                let body = fs::read(&p).unwrap();
                h.set_size(body.len() as u64);
                tar.append_data(&mut h, Path::new("data").join(&f), &body[..])
                    .unwrap();
            }
            entries += 1;
        }
        // Depth first, names in order.
        stack.extend(dirs.into_iter().rev());
    }
    (tar.into_inner().unwrap(), entries)
}

/// `tar -x -G` of link `n` into `into`, as a user restores by hand.
fn gnu_tar_apply(tar: &[u8], work: &Path, n: usize, into: &Path) {
    let file = work.join(format!("link-{n}.tar"));
    fs::write(&file, tar).unwrap();
    let out = Command::new("tar")
        .args(["-x", "-G", "-f"])
        .arg(&file)
        .arg("-C")
        .arg(into)
        .output()
        .expect("GNU tar");
    assert!(
        out.status.success(),
        "tar -x -G link {n}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The restore's reader over link `n` at `step` of its chain, which must pass.
fn read_link(tar: &[u8], m: &Manifest, mode: Mode<'_>, step: Step, n: usize) -> ReadReport {
    let progress = Arc::new(lifeboat::progress::Progress::default());
    tar_read::read_artifact(tar, m, None, mode, step, &progress, &Default::default())
        .unwrap_or_else(|e| panic!("link {n}: {e}"))
}

/// What a user compares: every path with its type and content.
fn tree(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let md = fs::symlink_metadata(&p).unwrap();
            let what = if md.is_dir() {
                stack.push(p.clone());
                "folder".to_string()
            } else if md.file_type().is_symlink() {
                format!("-> {}", fs::read_link(&p).unwrap().display())
            } else {
                String::from_utf8_lossy(&fs::read(&p).unwrap()).into_owned()
            };
            out.insert(p.strip_prefix(root).unwrap().to_path_buf(), what);
        }
    }
    out
}

fn manifest(tar: &[u8], entries: u64, n: usize) -> Manifest {
    let id = format!("2026010{}T000000Z-files", n + 1);
    let bytes_in: u64 = 1 << 20;
    Manifest::from_json(
        serde_json::json!({
            "format": "lifeboat/v1", "id": id, "artifact": format!("{id}.tar"),
            "name": "x-0", "namespace": "default", "source": "files",
            "paths": ["/data"],
            "started_at": "2026-01-01T00:00:00Z", "finished_at": "2026-01-01T00:00:01Z",
            "compression": "none", "encryption": "none",
            "size": tar.len(), "sha256": hex::encode(sha2::Sha256::digest(tar)),
            "entries": entries, "bytes_in": bytes_in,
            "warnings": [], "tool_version": "test", "source_meta": {}
        })
        .to_string()
        .as_bytes(),
    )
    .unwrap()
}

#[test]
fn a_chain_applied_by_gnu_tar_and_by_the_restore_gives_the_last_links_tree() {
    let work = tempfile::tempdir().unwrap();
    let vol = work.path().join("vol");
    fs::create_dir_all(vol.join("d/x")).unwrap();
    fs::create_dir_all(vol.join("f")).unwrap();
    fs::write(vol.join("d/x/y"), "1").unwrap();
    fs::write(vol.join("f/z"), "2").unwrap();
    fs::write(vol.join("keep"), "kept").unwrap();
    fs::write(vol.join("gone"), "deleted later").unwrap();
    fs::write(vol.join("old-name"), "renamed later").unwrap();
    let mut links = vec![link(&vol, &|_| true)];
    let mut expected = vec![tree(&vol)];

    // Link 1: deleted, renamed, a folder replaced by a file, a file by a
    // folder, a new symlink, a change in place; "keep" unchanged (N).
    fs::remove_file(vol.join("gone")).unwrap();
    fs::rename(vol.join("old-name"), vol.join("new-name")).unwrap();
    fs::remove_dir_all(vol.join("d")).unwrap();
    fs::write(vol.join("d"), "now a file").unwrap();
    fs::remove_dir_all(vol.join("f")).unwrap();
    fs::create_dir(vol.join("keep.d")).unwrap();
    fs::write(vol.join("keep.d/inner"), "in a new folder").unwrap();
    std::os::unix::fs::symlink("keep", vol.join("f")).unwrap();
    let changed = ["new-name", "d", "f", "keep.d/inner"];
    links.push(link(&vol, &|p| changed.iter().any(|c| p == Path::new(c))));
    expected.push(tree(&vol));

    // Link 2: the file becomes a folder again, and nothing else changes.
    fs::remove_file(vol.join("d")).unwrap();
    fs::create_dir(vol.join("d")).unwrap();
    fs::write(vol.join("d/back"), "a folder again").unwrap();
    links.push(link(&vol, &|p| p == Path::new("d/back")));
    expected.push(tree(&vol));

    // Link 3: nothing changes; every folder below the top is taken as the
    // link before left it, without a look on disk.
    links.push(link(&vol, &|_| false));
    expected.push(tree(&vol));

    // GNU tar, by hand: `tar -x -G` of each link in order.
    let by_hand = work.path().join("by-hand");
    fs::create_dir(&by_hand).unwrap();
    // The restore's reader, into one staging folder.
    let staging = work.path().join("staging");
    fs::create_dir(&staging).unwrap();
    let mappings = [Mapping {
        origin: PathBuf::from("/data"),
        staging: staging.clone(),
        only: None,
    }];
    // Each link given the folder lists the one before left, as a restore
    // does: folders whose list did not change are not purged.
    let mut before = None;
    for (n, ((tar, entries), want)) in links.iter().zip(&expected).enumerate() {
        gnu_tar_apply(tar, work.path(), n, &by_hand);
        assert_eq!(&tree(&by_hand.join("data")), want, "GNU tar after link {n}");

        let m = manifest(tar, *entries, n);
        read_link(tar, &m, Mode::Verify, Step::only(), n);
        let step = Step {
            before: before.take(),
            fresh: n == 0,
            last: false,
        };
        let report = read_link(tar, &m, Mode::Extract(&mappings), step, n);
        assert!(report.lists.is_some(), "link {n} left its folder lists");
        // Only link 3 lists folders (`d`, `keep.d`) as the one before did,
        // below a top folder whose list did not change either.
        let unread = if n == 3 { 2 } else { 0 };
        assert_eq!(
            report.folders_unread, unread,
            "folders link {n} did not look at"
        );
        before = report.lists;
        assert_eq!(&tree(&staging), want, "the restore after link {n}");
    }
}

/// A link into staging that already holds something: every folder purged.
fn into_used() -> Step {
    Step {
        before: None,
        fresh: false,
        last: true,
    }
}

#[test]
fn a_hostile_folder_list_is_refused_and_removes_nothing_outside() {
    let work = tempfile::tempdir().unwrap();
    let staging = work.path().join("staging");
    fs::create_dir_all(staging.join("sub")).unwrap();
    fs::write(staging.join("sub/kept"), "x").unwrap();
    let outside = work.path().join("outside");
    fs::write(&outside, "never touched").unwrap();
    let mappings = [Mapping {
        origin: PathBuf::from("/data"),
        staging: staging.clone(),
        only: None,
    }];
    let progress = Arc::new(lifeboat::progress::Progress::default());
    for (list, why) in [
        (&b"Y../outside\0\0"[..], "not a plain name"),
        (b"Dsub\0Dsub\0\0", "out of order"),
        (b"Rsub\0Tx\0\0", "unknown flag"),
    ] {
        let mut tar = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::new(dumpdir::TYPEFLAG));
        h.set_mode(0o755);
        h.set_size(list.len() as u64);
        tar.append_data(&mut h, "data", list).unwrap();
        let tar = tar.into_inner().unwrap();
        let m = manifest(&tar, 1, 0);
        for mode in [Mode::Verify, Mode::Extract(&mappings)] {
            let e = tar_read::read_artifact(
                &tar[..],
                &m,
                None,
                mode,
                into_used(),
                &progress,
                &Default::default(),
            )
            .unwrap_err()
            .to_string();
            assert!(e.contains(why), "{list:?}: {e}");
        }
        assert_eq!(fs::read_to_string(&outside).unwrap(), "never touched");
    }
}

/// One link taken by the files source's walk, as a backup takes it:
/// compared with `old` (the state the link before left), leaving its own.
fn walked_link(vol: &Path, old: Option<&[u8]>, n: usize) -> (Vec<u8>, u64, u64, Vec<u8>) {
    use lifeboat::chain::state;
    use lifeboat::source::files::FilesSource;
    use lifeboat::source::increment::Increment;
    use lifeboat::source::seam::{Source, SourceCtx};
    use std::io::{Read, Write};

    let work = tempfile::tempdir().unwrap();
    let state_file = work.path().join("state");
    let header = state::Header {
        id: format!("2026010{}T000000Z-files", n + 1),
        chain: "20260100T000000Z-files".into(),
        paths: vec![vol.display().to_string()],
    };
    let old = old.map(|b| {
        let r: Box<dyn Read + Send> = Box::new(std::io::Cursor::new(b.to_vec()));
        let (h, r) = state::Reader::new(r).unwrap();
        assert_eq!(h.paths, header.paths);
        r
    });
    let out: Box<dyn Write + Send> = Box::new(fs::File::create(&state_file).unwrap());
    let src = FilesSource::new(vec![vol.to_path_buf()], lifeboat::glob::GlobSet::empty());
    *src.increment.lock().unwrap() = Some(Increment {
        old,
        new: state::Writer::new(out, &header).unwrap(),
    });
    let mut tar = tar::Builder::new(Vec::new());
    let ctx = SourceCtx {
        progress: Arc::new(lifeboat::progress::Progress::default()),
        cancel: Default::default(),
        raw: Default::default(),
    };
    let report = src.write_tar(&mut tar, &ctx).unwrap();
    let inc = src
        .take_increment()
        .expect("the walk gives the increment back");
    let mut w = inc.new.finish().unwrap();
    w.flush().unwrap();
    drop(w);
    if let Some(old) = inc.old {
        old.finish().unwrap();
    }
    (
        tar.into_inner().unwrap(),
        report.entries,
        report.bytes_in,
        fs::read(&state_file).unwrap(),
    )
}

#[test]
fn the_walk_stores_only_what_changed_and_the_chain_restores_each_state() {
    let work = tempfile::tempdir().unwrap();
    let vol = work.path().join("vol");
    fs::create_dir_all(vol.join("notebooks/old")).unwrap();
    for i in 0..50 {
        fs::write(
            vol.join(format!("notebooks/nb-{i:02}.ipynb")),
            format!("cell {i}"),
        )
        .unwrap();
    }
    fs::write(vol.join("notebooks/old/a"), "a").unwrap();
    fs::write(vol.join("same-size"), "AAAA").unwrap();
    fs::hard_link(vol.join("same-size"), vol.join("same-size.link")).unwrap();
    std::os::unix::fs::symlink("notebooks", vol.join("nb")).unwrap();

    let (tar0, entries0, bytes0, state0) = walked_link(&vol, None, 0);
    let mut states = vec![tree(&vol)];
    let mut links = vec![(tar0, entries0, bytes0)];

    // Changed in place with size and mtime put back (ctime tells), one
    // notebook edited, one deleted, one renamed, a folder removed, a new one.
    let mtime = filetime::FileTime::from_last_modification_time(
        &fs::metadata(vol.join("same-size")).unwrap(),
    );
    std::thread::sleep(std::time::Duration::from_millis(20));
    fs::write(vol.join("same-size"), "BBBB").unwrap();
    filetime::set_file_mtime(vol.join("same-size"), mtime).unwrap();
    fs::write(vol.join("notebooks/nb-07.ipynb"), "edited").unwrap();
    fs::remove_file(vol.join("notebooks/nb-08.ipynb")).unwrap();
    fs::rename(
        vol.join("notebooks/nb-09.ipynb"),
        vol.join("notebooks/renamed.ipynb"),
    )
    .unwrap();
    fs::remove_dir_all(vol.join("notebooks/old")).unwrap();
    fs::create_dir(vol.join("new")).unwrap();
    fs::write(vol.join("new/file"), "new").unwrap();
    let (tar1, entries1, bytes1, state1) = walked_link(&vol, Some(&state0), 1);
    states.push(tree(&vol));
    links.push((tar1, entries1, bytes1));

    // Nothing changed: only the folders and their lists.
    let (tar2, entries2, bytes2, _) = walked_link(&vol, Some(&state1), 2);
    states.push(tree(&vol));
    links.push((tar2, entries2, bytes2));
    assert_eq!(bytes2, 0, "an unchanged volume stores no file content");
    assert_eq!(entries2, 3, "the three folders: {entries2}");
    // The renamed notebook moves its ctime too, so it is stored again (as
    // is the other name of the file changed in place).
    assert!(entries1 < entries0 / 4, "{entries1} of {entries0}");

    let by_hand = work.path().join("by-hand");
    fs::create_dir(&by_hand).unwrap();
    let staging = work.path().join("staging");
    fs::create_dir(&staging).unwrap();
    let mappings = [Mapping {
        origin: vol.clone(),
        staging: staging.clone(),
        only: None,
    }];
    let in_tar = by_hand.join(vol.strip_prefix("/").unwrap());
    for (n, ((tar, entries, bytes_in), want)) in links.iter().zip(&states).enumerate() {
        gnu_tar_apply(tar, work.path(), n, &by_hand);
        assert_eq!(&tree(&in_tar), want, "GNU tar after link {n}");
        let mut m = manifest(tar, *entries, n);
        m.paths = vec![vol.display().to_string()];
        m.bytes_in = *bytes_in;
        // Without the lists of the link before: every folder is purged.
        let step = Step {
            before: None,
            fresh: n == 0,
            last: true,
        };
        read_link(tar, &m, Mode::Extract(&mappings), step, n);
        assert_eq!(&tree(&staging), want, "the restore after link {n}");
    }
}

/// A link that lists a folder twice: first with a list that purges a
/// subfolder (and a symlink out of staging put in its place), then again
/// with the list the link before had. The second list is the same as the
/// link before's, but the folder is no longer as that link left it: the
/// restore must look at it on disk, and never write through the symlink.
#[test]
fn a_folder_listed_twice_is_looked_at_again_and_nothing_is_written_outside() {
    use std::io::Read as _;
    let work = tempfile::tempdir().unwrap();
    let vol = work.path().join("vol");
    fs::create_dir_all(vol.join("p/a")).unwrap();
    fs::write(vol.join("p/a/x"), "x").unwrap();
    let outside = work.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let staging = work.path().join("staging");
    fs::create_dir(&staging).unwrap();
    let mappings = [Mapping {
        origin: PathBuf::from("/data"),
        staging: staging.clone(),
        only: None,
    }];
    let (tar0, entries0) = link(&vol, &|_| true);
    let first = Step {
        before: None,
        fresh: true,
        last: false,
    };
    let report = read_link(
        &tar0,
        &manifest(&tar0, entries0, 0),
        Mode::Extract(&mappings),
        first,
        0,
    );

    let spool = tempfile::tempdir().unwrap();
    let list = |names: &[(Flag, &str)]| {
        let mut b = dumpdir::Builder::new(spool.path());
        for (f, n) in names {
            b.push(*f, n.as_bytes()).unwrap();
        }
        let (_, mut r) = b.finish().unwrap();
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        out
    };
    let mut tar = tar::Builder::new(Vec::new());
    let folder = |tar: &mut tar::Builder<Vec<u8>>, name: &str, data: Vec<u8>| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::new(dumpdir::TYPEFLAG));
        h.set_mode(0o755);
        h.set_size(data.len() as u64);
        tar.append_data(&mut h, name, &data[..]).unwrap();
    };
    folder(&mut tar, "data", list(&[(Flag::Folder, "p")]));
    folder(&mut tar, "data/p", list(&[]));
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_mode(0o777);
    h.set_size(0);
    tar.append_link(&mut h, "data/p/a", &outside).unwrap();
    folder(&mut tar, "data/p", list(&[(Flag::Folder, "a")]));
    folder(&mut tar, "data/p/a", list(&[(Flag::Earlier, "x")]));
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_size(5);
    tar.append_data(&mut h, "data/p/a/passwd", &b"pwned"[..])
        .unwrap();
    let tar = tar.into_inner().unwrap();
    let step = Step {
        before: report.lists,
        fresh: false,
        last: false,
    };
    let progress = Arc::new(lifeboat::progress::Progress::default());
    let result = tar_read::read_artifact(
        &tar[..],
        &manifest(&tar, 6, 1),
        None,
        Mode::Extract(&mappings),
        step,
        &progress,
        &Default::default(),
    );
    assert_eq!(
        fs::read_dir(&outside).unwrap().count(),
        0,
        "written through the symlink"
    );
    // Either refused, or the symlink purged by the second list and a real
    // folder made in its place.
    if let Ok(report) = result {
        assert_eq!(report.folders_unread, 0);
        assert!(
            report.lists.is_none(),
            "a link out of order leaves no lists"
        );
        assert!(fs::symlink_metadata(staging.join("p/a")).unwrap().is_dir());
        assert_eq!(fs::read(staging.join("p/a/passwd")).unwrap(), b"pwned");
    }
}
