//! The manifest: the JSON commit marker written next to each artifact, last.
//! Its fields are a contract with users (documented in README.md).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::source::kind::SourceKind;

pub const FORMAT: &str = "lifeboat/v1";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always `lifeboat/v1` for this layout.
    pub format: String,
    /// `<UTC stamp>-<source>`, e.g. `20261123T020000Z-files`.
    pub id: String,
    /// File name of the artifact beside this manifest.
    pub artifact: String,
    pub name: String,
    pub namespace: String,
    pub source: SourceKind,
    /// How the tar is laid out and put back; absent in older manifests.
    #[serde(default)]
    pub layout: Layout,
    /// Absolute paths that were backed up; with `layout: paths` tar entry
    /// names are these without the leading `/`. With `layout: logical` the
    /// first is where the init container stages the dump for loading.
    pub paths: Vec<String>,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    /// `zstd:3`, `gzip:6` or `none`.
    pub compression: String,
    /// `none`, or `age` when the stored bytes are age-encrypted (after
    /// compression: `age -d | zstd -dc | tar -x`).
    pub encryption: String,
    /// With `encryption: age`: the public keys (`age1…`) it was encrypted
    /// to; any one matching secret key decrypts it. Never key material.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recipients: Vec<String>,
    /// Bytes stored (the artifact file's size).
    pub size: u64,
    /// Hex SHA-256 of the stored bytes: `sha256sum <artifact>` prints the same.
    pub sha256: String,
    /// Tar entries written (files, folders, links).
    pub entries: u64,
    /// Uncompressed bytes of file contents read from the source.
    pub bytes_in: u64,
    /// Things a person should know, e.g. files that changed while read.
    pub warnings: Vec<String>,
    pub tool_version: String,
    /// Source-specific facts (Postgres LSNs, CouchDB doc counts, ...).
    pub source_meta: serde_json::Value,
    /// With `LIFEBOAT_INCLUDE_KUBE`: objects per kind stored as YAML under
    /// `kubernetes/<kind>/<name>.yaml` (e.g. `{"configmaps": 3}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<std::collections::BTreeMap<String, u64>>,
    /// In an incremental chain (`LIFEBOAT_FULL_EVERY`): 0 for the chain's
    /// full first link, N for the N-th link after it. Absent (0) outside
    /// chains.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub level: u32,
    /// A link's base: the id of the link before it, which a restore applies
    /// first. Absent at level 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    /// The id of the chain's first (level 0) link; absent outside chains.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain: Option<String>,
    /// What the next link of the chain compares the volume with, stored
    /// beside the artifact. Not needed to restore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<StateBlob>,
    /// A WAL object of a `postgres` pod's continuous archive (id
    /// `wal-<timeline>-<sequence>`), not a backup: what WAL it holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wal: Option<crate::wal::object::WalSection>,
}

/// The chain state a link left (docs/ARCHITECTURE.md, "Incremental chains").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateBlob {
    /// `<id>.state.zst`, beside the artifact.
    pub file: String,
    pub size: u64,
    /// Hex SHA-256 of the stored bytes.
    pub sha256: String,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// More links than this in one chain is not one of ours (a new chain
/// starts before it).
pub use crate::chain::plan::MAX_LEVEL;

/// What the entries of an artifact are, which decides how it is restored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Layout {
    /// Files under their absolute paths (without the leading `/`): the init
    /// container puts them back before the app starts.
    #[default]
    Paths,
    /// A logical dump under `<source>/` (e.g. `postgres/app.dump`): the init
    /// container verifies and stages it, and the sidecar loads it through
    /// the server once that answers (docs/ARCHITECTURE.md, "The pending load").
    Logical,
}

impl Manifest {
    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("manifest serializes");
        v.push(b'\n');
        v
    }

    /// Parses and checks a manifest read from a store. A manifest is
    /// untrusted input (docs/ARCHITECTURE.md, "Restore trusts nothing"): every
    /// field that names a file or a folder is checked here, once, so no
    /// caller can be led outside its history folder or its configured paths.
    pub fn from_json(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() as u64 > MAX_MANIFEST_BYTES {
            return Err(format!(
                "{} bytes, more than a manifest may have ({MAX_MANIFEST_BYTES})",
                bytes.len()
            ));
        }
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(format!(
                "is empty ({} bytes): a commit that never completed, or a damaged store",
                bytes.len()
            ));
        }
        let m: Manifest = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if m.format != FORMAT {
            return Err(format!(
                "unknown format {:?} (this tool reads {FORMAT})",
                m.format
            ));
        }
        m.check()?;
        Ok(m)
    }

    /// The checks of [`Manifest::from_json`] beyond the JSON shape.
    fn check(&self) -> Result<(), String> {
        if let SourceKind::Unknown(name) = &self.source {
            return Err(format!(
                "source {name:?} is not one of files, postgres, couchdb, arangodb"
            ));
        }
        let kind = &self.source;
        // The id names the manifest, the artifact and the verified record:
        // only the canonical `<stamp>-<source>` form, or a WAL object's
        // `wal-<timeline>-<sequence>`, which have no `/` or `.`.
        if let Some(w) = &self.wal {
            if *kind != SourceKind::Postgres || self.layout != Layout::Paths || self.chain.is_some()
            {
                return Err(
                    "a WAL object is a postgres artifact of layout paths, outside any chain".into(),
                );
            }
            w.check(&self.id)?;
        } else if !crate::artifact::is_canonical_id(&self.id, kind.as_str()) {
            return Err(format!(
                "id {:?} is not of the form YYYYMMDDTHHMMSSZ-{}",
                self.id, self.source
            ));
        }
        crate::artifact::check_file_name(&self.artifact)?;
        let ext = self.artifact.strip_prefix(self.id.as_str()).unwrap_or("");
        let ext = ext
            .strip_suffix(crate::artifact::ENCRYPTED_EXTENSION)
            .unwrap_or(ext);
        if ![".tar", ".tar.zst", ".tar.gz"].contains(&ext) {
            return Err(format!(
                "artifact {:?} is not named <id>.tar[.zst|.gz][.age] for id {:?}",
                self.artifact, self.id
            ));
        }
        let layout_fits = match kind {
            SourceKind::Files => self.layout == Layout::Paths,
            SourceKind::CouchDb | SourceKind::ArangoDb => self.layout == Layout::Logical,
            SourceKind::Postgres | SourceKind::Unknown(_) => true,
        };
        if !layout_fits {
            return Err(format!(
                "a {} artifact cannot have layout {:?}",
                self.source, self.layout
            ));
        }
        if self.layout == Layout::Paths && self.paths.is_empty() {
            return Err("lists no paths".into());
        }
        for p in &self.paths {
            if !is_clean_absolute(p) {
                return Err(format!(
                    "path {p:?} is not a clean absolute path (no '.', '..', '//' or trailing '/')"
                ));
            }
        }
        self.check_chain()
    }

    /// A link's fields name other artifacts and a file beside it: each
    /// must be a canonical id of the same history, older than this one,
    /// so that following `base` always ends, at the chain's first link.
    fn check_chain(&self) -> Result<(), String> {
        let Some(chain) = &self.chain else {
            if self.level != 0 || self.base.is_some() || self.state.is_some() {
                return Err("has level, base or state but no chain".into());
            }
            return Ok(());
        };
        if self.source != SourceKind::Files {
            return Err(format!(
                "a {} artifact cannot be part of an incremental chain",
                self.source
            ));
        }
        let id_of_files = |what: &str, id: &str| {
            if crate::artifact::is_canonical_id(id, "files") {
                Ok(())
            } else {
                Err(format!(
                    "{what} {id:?} is not of the form YYYYMMDDTHHMMSSZ-files"
                ))
            }
        };
        id_of_files("chain", chain)?;
        if self.level > MAX_LEVEL {
            return Err(format!("level {} is more than {MAX_LEVEL}", self.level));
        }
        match (&self.base, self.level) {
            (None, 0) if chain == &self.id => {}
            (None, 0) => {
                return Err(format!(
                    "a chain's first link (level 0) must be its own chain, not {chain:?}"
                ))
            }
            (Some(_), 0) => return Err("a level 0 link has no base".into()),
            (None, _) => return Err(format!("level {} has no base", self.level)),
            (Some(base), _) => {
                id_of_files("base", base)?;
                // Ids sort by time: the base is older, the chain's first
                // no newer than the base.
                if base.as_str() >= self.id.as_str() || chain.as_str() > base.as_str() {
                    return Err(format!(
                        "base {base:?} and chain {chain:?} must be older than the link {:?}, the chain no newer than the base",
                        self.id
                    ));
                }
            }
        }
        if let Some(st) = &self.state {
            if st.file != crate::artifact::state_name(&self.id) {
                return Err(format!(
                    "state file {:?} is not {:?}",
                    st.file,
                    crate::artifact::state_name(&self.id)
                ));
            }
        }
        Ok(())
    }

    /// A link that holds only changes: it restores only on top of its base.
    pub fn is_increment(&self) -> bool {
        self.level > 0
    }

    /// The links this artifact restores from, oldest first (itself alone
    /// outside chains), each base looked up by id through `find`: every
    /// base must be there, one level less, of the same chain and paths.
    /// Ends because [`Manifest::from_json`] keeps each base older.
    pub fn chain_links<'a>(
        &'a self,
        find: impl Fn(&str) -> Option<&'a Manifest>,
    ) -> Result<Vec<&'a Manifest>, ChainGap> {
        let mut links = vec![self];
        let mut link = self;
        while let Some(base) = &link.base {
            let Some(b) = find(base) else {
                return Err(ChainGap::Missing {
                    base: base.clone(),
                    level: link.level.saturating_sub(1),
                });
            };
            if b.chain != link.chain || b.level + 1 != link.level || b.paths != link.paths {
                return Err(ChainGap::Misfit {
                    link: link.id.clone(),
                    level: link.level,
                    base: base.clone(),
                    base_level: b.level,
                    base_chain: b.chain.clone(),
                });
            }
            links.push(b);
            link = b;
        }
        links.reverse();
        Ok(links)
    }
}

/// Why [`Manifest::chain_links`] could not follow a chain to its start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainGap {
    /// `base`, which a link of level `level + 1` builds on, is not there.
    Missing { base: String, level: u32 },
    /// `link` names `base` as its base, which is not the link before it.
    Misfit {
        link: String,
        level: u32,
        base: String,
        base_level: u32,
        base_chain: Option<String>,
    },
}

impl ChainGap {
    /// The base that broke the chain.
    pub fn base(&self) -> &str {
        match self {
            ChainGap::Missing { base, .. } | ChainGap::Misfit { base, .. } => base,
        }
    }
}

/// At most this many warnings go into a manifest (a backup's or a
/// verification's); the rest are counted. A volume full of churning temp
/// files must not make a manifest huge.
pub const MAX_WARNINGS: usize = 100;

/// The largest manifest read from a store (and written: a backup whose
/// manifest would be larger fails). Most are a few KiB (warnings are capped
/// at `MAX_WARNINGS`); a CouchDB or ArangoDB manifest lists each
/// database in `source_meta` (~250 bytes), so this holds ~130,000 of them.
/// Anything larger is not one of ours, and reading it whole would let a
/// store decide our memory.
pub const MAX_MANIFEST_BYTES: u64 = 32 * 1024 * 1024;

/// `/a/b`: absolute, no empty, `.` or `..` part, no trailing `/`, no NUL.
pub fn is_clean_absolute(p: &str) -> bool {
    let Some(rest) = p.strip_prefix('/') else {
        return false;
    };
    !p.contains('\0')
        && (rest.is_empty()
            || rest
                .split('/')
                .all(|c| !c.is_empty() && c != "." && c != ".."))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(id: &str, artifact: &str, source: &str, layout: &str, paths: &[&str]) -> Vec<u8> {
        serde_json::json!({
            "format": "lifeboat/v1", "id": id, "artifact": artifact,
            "name": "n", "namespace": "ns", "source": source, "layout": layout, "paths": paths,
            "started_at": "2026-01-01T00:00:00Z", "finished_at": "2026-01-01T00:00:00Z",
            "compression": "zstd:3", "encryption": "none", "size": 1, "sha256": "00",
            "entries": 1, "bytes_in": 1, "warnings": [], "tool_version": "t", "source_meta": {}
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn untrusted_fields_are_checked() {
        let ok = |id: &str, art: &str, src: &str, layout: &str, paths: &[&str]| {
            Manifest::from_json(&json(id, art, src, layout, paths))
        };
        let id = "20260101T000000Z-files";
        assert!(ok(id, &format!("{id}.tar.zst"), "files", "paths", &["/data"]).is_ok());
        assert!(ok(id, &format!("{id}.tar.gz.age"), "files", "paths", &["/"]).is_ok());
        for bad_id in [
            "../other/20260101T000000Z-files",
            "20260101T000000Z-files/..",
            "x",
            "20260101T000000Z-couchdb",
        ] {
            let e = ok(
                bad_id,
                "20260101T000000Z-files.tar.zst",
                "files",
                "paths",
                &["/data"],
            )
            .unwrap_err();
            assert!(e.contains("is not of the form"), "{bad_id}: {e}");
        }
        assert!(ok(
            id,
            "20260101T000001Z-files.tar.zst",
            "files",
            "paths",
            &["/d"]
        )
        .is_err());
        assert!(ok(id, &format!("{id}.tar.zst.exe"), "files", "paths", &["/d"]).is_err());
        for p in ["/../../tmp/x", "data", "/data/", "//data", "/a/./b", ""] {
            assert!(
                ok(id, &format!("{id}.tar.zst"), "files", "paths", &[p]).is_err(),
                "{p}"
            );
        }
        let logical = "20260101T000000Z-couchdb";
        assert!(ok(
            logical,
            &format!("{logical}.tar.zst"),
            "couchdb",
            "logical",
            &["/d"]
        )
        .is_ok());
        assert!(ok(
            logical,
            &format!("{logical}.tar.zst"),
            "couchdb",
            "paths",
            &["/d"]
        )
        .is_err());
        let abs = "20260101T000000Z-/tmp/evil";
        assert!(ok(
            abs,
            &format!("{abs}.tar.zst"),
            "/tmp/evil",
            "logical",
            &["/d"]
        )
        .is_err());
        assert!(ok(id, &format!("{id}.tar.zst"), "files", "logical", &["/d"]).is_err());
        let big = vec![b' '; MAX_MANIFEST_BYTES as usize + 1];
        assert!(Manifest::from_json(&big)
            .unwrap_err()
            .contains("more than a manifest"));
    }

    #[test]
    fn chain_fields_are_checked() {
        let id = "20260101T020000Z-files";
        let with = |fields: serde_json::Value| {
            let mut v: serde_json::Value = serde_json::from_slice(&json(
                id,
                &format!("{id}.tar.zst"),
                "files",
                "paths",
                &["/d"],
            ))
            .unwrap();
            for (k, x) in fields.as_object().unwrap() {
                v[k] = x.clone();
            }
            Manifest::from_json(v.to_string().as_bytes())
        };
        let state =
            serde_json::json!({"file": format!("{id}.state.zst"), "size": 9, "sha256": "00"});
        let first = "20260101T000000Z-files";
        let base = "20260101T010000Z-files";
        let m = with(serde_json::json!({"level": 2, "base": base, "chain": first, "state": state}))
            .unwrap();
        assert!(m.is_increment());
        assert_eq!(m.base.as_deref(), Some(base));
        let back = Manifest::from_json(&m.to_json()).unwrap();
        assert_eq!(back, m);
        assert!(with(serde_json::json!({"chain": id, "state": state})).is_ok());
        // A plain full backup writes none of the fields.
        let plain = with(serde_json::json!({})).unwrap();
        let text = String::from_utf8(plain.to_json()).unwrap();
        for field in ["\"level\"", "\"base\"", "\"chain\"", "\"state\""] {
            assert!(!text.contains(field), "{text}");
        }
        for (bad, why) in [
            (serde_json::json!({"level": 1, "base": base}), "no chain"),
            (serde_json::json!({"state": state}), "no chain"),
            (serde_json::json!({"chain": first}), "its own chain"),
            (serde_json::json!({"chain": id, "base": base}), "no base"),
            (
                serde_json::json!({"level": 1, "chain": first}),
                "has no base",
            ),
            (
                serde_json::json!({"level": 1, "base": "../x", "chain": first}),
                "base",
            ),
            (
                serde_json::json!({"level": 1, "base": "20260101T030000Z-files", "chain": first}),
                "older",
            ),
            (
                serde_json::json!({"level": 1, "base": id, "chain": first}),
                "older",
            ),
            (
                serde_json::json!({"level": 1, "base": first, "chain": base}),
                "older",
            ),
            (
                serde_json::json!({"level": 1, "base": base, "chain": "20260101T000000Z-couchdb"}),
                "chain",
            ),
            (
                serde_json::json!({"level": 1, "base": base, "chain": first,
                "state": {"file": "../../etc/passwd", "size": 1, "sha256": "00"}}),
                "state file",
            ),
            (
                serde_json::json!({"level": 200000, "base": base, "chain": first}),
                "more than",
            ),
        ] {
            let e = with(bad.clone()).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        let couch = "20260101T020000Z-couchdb";
        let mut v: serde_json::Value = serde_json::from_slice(&json(
            couch,
            &format!("{couch}.tar.zst"),
            "couchdb",
            "logical",
            &["/d"],
        ))
        .unwrap();
        v["chain"] = couch.into();
        let e = Manifest::from_json(v.to_string().as_bytes()).unwrap_err();
        assert!(e.contains("cannot be part of an incremental chain"), "{e}");
    }
}
