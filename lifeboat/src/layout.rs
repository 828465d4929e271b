//! Every name lifeboat itself leaves beside the user's data: the
//! `.lifeboat-*` family, in one place (docs/ARCHITECTURE.md, "Restore
//! decisions"). A backup never stores these names, an artifact never brings
//! them in, and restore tells its own work apart from the app's data by them.

/// Written after a completed restore; holds the artifact's id.
pub const RESTORED_MARKER: &str = ".lifeboat-restored";
/// Present while a restore moves entries into place: a restore that finds it
/// was cut short and is redone.
pub const RESTORING_MARKER: &str = ".lifeboat-restoring";
/// `<path>/.lifeboat-staging-<id>`: an artifact being extracted beside the data.
pub const STAGING_PREFIX: &str = ".lifeboat-staging-";
/// `<path>/.lifeboat-pending`: a verified logical dump waiting to be loaded.
pub const PENDING_DIR: &str = ".lifeboat-pending";

/// Whether `name` (one path component) is lifeboat's own in a data folder.
pub fn is_ours(name: &[u8]) -> bool {
    is_restore_work(name) || name == RESTORED_MARKER.as_bytes() || name == PENDING_DIR.as_bytes()
}

/// The names a restore in progress owns: its staging folders and its marker.
pub fn is_restore_work(name: &[u8]) -> bool {
    name == RESTORING_MARKER.as_bytes() || name.starts_with(STAGING_PREFIX.as_bytes())
}

/// The history lock in a folder target: `.lifeboat-<what>-<digest>.lock`.
pub fn lock_file_name(what: &str, digest: &str) -> String {
    format!(".lifeboat-{what}-{digest}.lock")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_family_and_nothing_else() {
        for n in [
            ".lifeboat-restored",
            ".lifeboat-restoring",
            ".lifeboat-pending",
            ".lifeboat-staging-20261201T000000Z-files",
        ] {
            assert!(is_ours(n.as_bytes()), "{n}");
        }
        for n in [".lifeboat", ".lifeboat-restored.bak", "lost+found", "data"] {
            assert!(!is_ours(n.as_bytes()), "{n}");
        }
        assert!(!is_restore_work(b".lifeboat-restored"));
    }
}
