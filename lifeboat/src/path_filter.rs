//! `restore --to DIR --path P`: which entries of an artifact a restore
//! writes, for one file back without a full restore (README, "One file
//! back"). The whole stream is still read and its sha256 verified; only
//! the writing is filtered (docs/ARCHITECTURE.md, "Restore").

use std::path::Path;

use crate::glob::{Glob, GlobSet};

/// The `--path` patterns, as entry names are written in a tar: the
/// backed-up path without its leading `/` (`home/jovyan/analysis.ipynb`).
/// A pattern names a file, or a folder with everything below it; `*` stays
/// inside one folder, `**` crosses folders.
#[derive(Debug)]
pub struct PathFilter {
    patterns: Vec<String>,
    set: GlobSet,
}

impl PathFilter {
    /// The patterns as given (a leading `/` is dropped, as a person may
    /// well write the path as it was in the pod); an error names the one
    /// that is wrong.
    pub fn new(patterns: &[String]) -> Result<PathFilter, String> {
        let mut set = Vec::new();
        let mut kept = Vec::new();
        for p in patterns {
            let t = p.trim().trim_start_matches('/').trim_end_matches('/');
            if t.is_empty() {
                return Err(format!(
                    "--path {p:?} names nothing; e.g. --path home/jovyan/analysis.ipynb"
                ));
            }
            if t.split('/').any(|c| c == "..") {
                return Err(format!(
                    "--path {p:?} climbs out with ..; name the path as it was backed up, e.g. home/jovyan/analysis.ipynb"
                ));
            }
            let glob = Glob::build(t, true)
                .map_err(|e| format!("--path {p:?} is not a valid pattern: {e}"))?;
            set.push(glob);
            kept.push(t.to_string());
        }
        let set = GlobSet::new(set);
        Ok(PathFilter {
            patterns: kept,
            set,
        })
    }

    /// Whether the entry `name` (as in the tar) is wanted: it, or a folder
    /// it lies in, matches a pattern.
    pub fn wants(&self, name: &Path) -> bool {
        name.ancestors()
            .any(|a| !a.as_os_str().is_empty() && self.set.is_match(a))
    }

    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(p: &[&str]) -> PathFilter {
        PathFilter::new(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn a_file_a_folder_and_globs() {
        let f = filter(&[
            "/home/jovyan/analysis.ipynb",
            "home/jovyan/data/",
            "home/jovyan/*.csv",
        ]);
        assert!(f.wants(Path::new("home/jovyan/analysis.ipynb")));
        assert!(!f.wants(Path::new("home/jovyan/analysis.ipynb.bak")));
        assert!(f.wants(Path::new("home/jovyan/data")));
        assert!(f.wants(Path::new("home/jovyan/data/deep/x.parquet")));
        assert!(f.wants(Path::new("home/jovyan/a.csv")));
        assert!(
            !f.wants(Path::new("home/jovyan/sub/a.csv")),
            "* stays in its folder"
        );
        assert!(!f.wants(Path::new("home/jovyan")));
        let deep = filter(&["home/**/*.ipynb"]);
        assert!(deep.wants(Path::new("home/jovyan/sub/x.ipynb")));
    }

    #[test]
    fn nothing_and_climbing_out_are_refused() {
        for bad in ["", "/", "../etc/passwd", "home/../../x", "home/[x"] {
            assert!(PathFilter::new(&[bad.to_string()]).is_err(), "{bad:?}");
        }
    }
}
