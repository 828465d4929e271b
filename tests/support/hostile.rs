//! Hostile artifacts in one place: crafted tar streams and committed
//! artifacts whose checksums are honest (right sha256, size, entries,
//! bytes_in), so only the content or the manifest's other fields are
//! hostile. A new case is one function in a test file.

use std::fs;
use std::io::Write;
use std::path::Path;

use sha2::{Digest, Sha256};
use tar::{EntryType, Header};

/// One raw tar entry.
pub struct Entry<'a> {
    pub name: &'a [u8],
    pub kind: EntryType,
    pub link: &'a [u8],
    pub data: &'a [u8],
}

pub fn e<'a>(name: &'a [u8], kind: EntryType, link: &'a [u8], data: &'a [u8]) -> Entry<'a> {
    Entry {
        name,
        kind,
        link,
        data,
    }
}

/// Writes raw headers: the tar crate's safe setters would refuse these names.
pub fn hostile_tar(entries: &[Entry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for en in entries {
        let mut h = Header::new_old();
        h.as_old_mut().name[..en.name.len()].copy_from_slice(en.name);
        h.as_old_mut().linkname[..en.link.len()].copy_from_slice(en.link);
        h.set_entry_type(en.kind);
        h.set_mode(if en.kind == EntryType::Directory {
            0o755
        } else {
            0o644
        });
        h.set_size(en.data.len() as u64);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        b.append(&h, en.data).unwrap();
    }
    b.into_inner().unwrap()
}

pub fn zstd(bytes: &[u8]) -> Vec<u8> {
    let mut z = zstd::Encoder::new(Vec::new(), 3).unwrap();
    z.write_all(bytes).unwrap();
    z.finish().unwrap()
}

/// What to plant: a history (`backup/default/<pod>`), an id, and the
/// manifest's fields that are not checksums.
pub struct Plant<'a> {
    pub backup: &'a Path,
    pub pod: &'a str,
    pub id: &'a str,
    pub source: &'a str,
    pub layout: &'a str,
    pub paths: Vec<String>,
}

impl<'a> Plant<'a> {
    /// A files artifact of `data` for pod `x-0`, id 2026-01-01.
    pub fn files(backup: &'a Path, data: &Path) -> Self {
        Plant {
            backup,
            pod: "x-0",
            id: "20260101T000000Z-files",
            source: "files",
            layout: "paths",
            paths: vec![data.to_str().unwrap().to_string()],
        }
    }

    /// Stores `entries` as a committed artifact with an honest manifest.
    pub fn entries(&self, entries: &[Entry]) {
        let bytes_in = entries.iter().map(|e| e.data.len() as u64).sum();
        self.tar(&hostile_tar(entries), entries.len() as u64, bytes_in);
    }

    /// Stores a tar stream; the manifest records `entries` and `bytes_in`.
    pub fn tar(&self, tar: &[u8], entries: u64, bytes_in: u64) {
        self.stored(&zstd(tar), entries, bytes_in);
    }

    /// Stores zstd-compressed bytes as they are.
    pub fn stored(&self, stored: &[u8], entries: u64, bytes_in: u64) {
        self.stored_with(stored, entries, bytes_in, |_| {});
    }

    /// Stores zstd-compressed bytes; `edit` may change the manifest (its
    /// checksums stay those of `stored`).
    pub fn stored_with(
        &self,
        stored: &[u8],
        entries: u64,
        bytes_in: u64,
        edit: impl FnOnce(&mut serde_json::Value),
    ) {
        let hist = crate::history(self.backup, self.pod);
        fs::create_dir_all(&hist).unwrap();
        let id = self.id;
        fs::write(hist.join(format!("{id}.tar.zst")), stored).unwrap();
        let mut manifest = manifest_json(id, stored, entries, bytes_in);
        manifest["source"] = self.source.into();
        manifest["layout"] = self.layout.into();
        manifest["paths"] = self.paths.clone().into();
        manifest["name"] = self.pod.into();
        edit(&mut manifest);
        fs::write(
            hist.join(format!("{id}.manifest.json")),
            manifest.to_string(),
        )
        .unwrap();
    }
}

/// An honest manifest for `stored` (files, zstd:3, no paths yet).
pub fn manifest_json(id: &str, stored: &[u8], entries: u64, bytes_in: u64) -> serde_json::Value {
    serde_json::json!({
        "format": "lifeboat/v1", "id": id, "artifact": format!("{id}.tar.zst"),
        "name": "x-0", "namespace": "default", "source": "files", "layout": "paths",
        "paths": [],
        "started_at": "2026-01-01T00:00:00Z", "finished_at": "2026-01-01T00:00:01Z",
        "compression": "zstd:3", "encryption": "none",
        "size": stored.len(), "sha256": hex::encode(Sha256::digest(stored)),
        "entries": entries, "bytes_in": bytes_in,
        "warnings": [], "tool_version": "test", "source_meta": {}
    })
}
