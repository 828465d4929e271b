//! Names of artifacts and manifests (docs/ARCHITECTURE.md §5):
//! `<prefix>/<namespace>/<name>/<YYYYMMDDTHHMMSSZ>-<source>.tar.<zst|gz>[.age]` and
//! `<same stem>.manifest.json` beside it.

use chrono::{DateTime, NaiveDateTime, Utc};

use crate::compression::Compression;

pub const MANIFEST_SUFFIX: &str = ".manifest.json";
/// Suffix of a record written when `verify` re-read an artifact successfully.
pub const VERIFIED_SUFFIX: &str = ".verified.json";
/// Suffix of the record a restore drill leaves (`crate::drill`).
pub const DRILL_SUFFIX: &str = ".drill.json";
/// Suffix of the state an incremental chain's link leaves for the next
/// (`crate::chain::state`, zstd-compressed).
pub const STATE_SUFFIX: &str = ".state.zst";
/// Appended to the artifact's name when it is encrypted with age.
pub const ENCRYPTED_EXTENSION: &str = ".age";
/// Where exported objects live in the tar: `kubernetes/<kind>/<name>.yaml`.
pub const KUBE_TAR_DIR: &str = "kubernetes";

/// `KUBE_TAR_DIR` as an origin path, the form restore mappings and
/// `LIFEBOAT_PATHS` use.
pub fn kube_tar_origin() -> std::path::PathBuf {
    std::path::Path::new("/").join(KUBE_TAR_DIR)
}
/// A database name as a file name: readable, but never a path. `/`, `%`,
/// control characters and a leading dot are written as `%XX`.
pub fn safe_file_name(name: &str) -> String {
    let mut out = String::new();
    for (i, ch) in name.chars().enumerate() {
        if ch == '/' || ch == '%' || ch.is_control() || (i == 0 && ch == '.') {
            let mut b = [0u8; 4];
            for byte in ch.encode_utf8(&mut b).bytes() {
                out.push_str(&format!("%{byte:02X}"));
            }
        } else {
            out.push(ch);
        }
    }
    out
}

const STAMP: &str = "%Y%m%dT%H%M%SZ";

/// The id of an artifact: its UTC start stamp and the source kind.
pub fn id(started: DateTime<Utc>, source: &str) -> String {
    format!("{}-{source}", started.format(STAMP))
}

/// `<id>.tar.zst`, with `.age` appended when encrypted.
pub fn file_name(id: &str, compression: Compression, encrypted: bool) -> String {
    let age = if encrypted { ENCRYPTED_EXTENSION } else { "" };
    format!("{id}{}{age}", compression.extension())
}

pub fn manifest_name(id: &str) -> String {
    format!("{id}{MANIFEST_SUFFIX}")
}

pub fn verified_name(id: &str) -> String {
    format!("{id}{VERIFIED_SUFFIX}")
}

pub fn drill_name(id: &str) -> String {
    format!("{id}{DRILL_SUFFIX}")
}

pub fn state_name(id: &str) -> String {
    format!("{id}{STATE_SUFFIX}")
}

/// Whether `id` is the canonical `<stamp>-<source>` id of a `source`
/// artifact (no `/` or `.`: it names files).
pub fn is_canonical_id(id: &str, source: &str) -> bool {
    id_time(id).is_some_and(|t| self::id(t, source) == id)
}

/// The time encoded in an id, if it is one of ours.
pub fn id_time(id: &str) -> Option<DateTime<Utc>> {
    let stamp = id.get(..16)?;
    NaiveDateTime::parse_from_str(stamp, STAMP)
        .ok()
        .map(|t| t.and_utc())
}

/// Artifact names come from manifests, which come from storage: never let one
/// name a file outside the artifact's folder.
pub fn check_file_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.contains('/') || name.starts_with('.') || name.contains('\0') {
        return Err(format!("artifact name {name:?} is not a plain file name"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn names_follow_the_documented_layout() {
        let t = Utc.with_ymd_and_hms(2026, 11, 23, 2, 0, 5).unwrap();
        let id = id(t, "files");
        assert_eq!(id, "20261123T020005Z-files");
        assert_eq!(
            file_name(&id, Compression::Zstd(3), false),
            "20261123T020005Z-files.tar.zst"
        );
        assert_eq!(manifest_name(&id), "20261123T020005Z-files.manifest.json");
        assert_eq!(id_time(&id), Some(t));
        assert!(check_file_name("../x").is_err());
        assert!(check_file_name(".hidden").is_err());
    }
}
