//! What the sidecar does about restore drills (README, "Restore drills"):
//! it notices a drill that did not pass in the listing and says so once
//! (an ERROR, a `DrillFailed` Event, a notification). (Whether drills are
//! configured for this pod is `Ops::drill_stale_after`.)
//!
//! "Once" holds across restarts of the sidecar container: the last drill
//! announced is kept in a file in `TMPDIR` (the pod's emptyDir, which a
//! container restart keeps). A new pod announces the newest one again.

use std::path::PathBuf;

use crate::status::DrillState;

/// The file under `TMPDIR` that remembers the drill last announced.
const ANNOUNCED_FILE: &str = "lifeboat-drill-announced";

#[derive(Debug, Default)]
pub(super) struct DrillWatch {
    /// Where the last announcement is remembered; none in tests.
    file: Option<PathBuf>,
    /// The drill last announced, `<id> <time>`.
    announced: Option<String>,
}

impl DrillWatch {
    /// For the sidecar: the memory in `TMPDIR`.
    pub fn for_pod() -> DrillWatch {
        let file = std::env::temp_dir().join(ANNOUNCED_FILE);
        let announced = std::fs::read_to_string(&file)
            .ok()
            .map(|s| s.trim().to_string());
        DrillWatch {
            file: Some(file),
            announced,
        }
    }

    /// Whether `d` (the newest drill) should be announced now; if so, it
    /// is remembered as announced.
    pub fn take_new(&mut self, d: &DrillState) -> bool {
        if d.passed {
            return false;
        }
        let key = format!("{} {}", d.id, d.at.to_rfc3339());
        if self.announced.as_ref() == Some(&key) {
            return false;
        }
        if let Some(f) = &self.file {
            // Best effort: at worst the drill is announced again after a
            // restart.
            if let Err(e) = std::fs::write(f, &key) {
                tracing::debug!(file = %f.display(), "cannot remember the announced drill: {e}");
            }
        }
        self.announced = Some(key);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drill(id: &str, passed: bool) -> DrillState {
        DrillState {
            id: id.into(),
            at: chrono::Utc::now(),
            passed,
            verdict: if passed {
                crate::drill::Verdict::Passed
            } else {
                crate::drill::Verdict::Failed
            },
            restore_seconds: 1.0,
            check: "true".into(),
            output_tail: None,
        }
    }

    #[test]
    fn each_drill_is_announced_once_even_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(ANNOUNCED_FILE);
        let failed = drill("20261201T020000Z-files", false);
        let mut w = DrillWatch {
            file: Some(file.clone()),
            announced: None,
        };
        assert!(
            !w.take_new(&drill("20261201T010000Z-files", true)),
            "passed"
        );
        assert!(w.take_new(&failed));
        assert!(!w.take_new(&failed));
        // A restarted container reads what it announced.
        let mut again = DrillWatch {
            file: Some(file.clone()),
            announced: std::fs::read_to_string(&file).ok(),
        };
        assert!(!again.take_new(&failed));
        assert!(again.take_new(&drill("20261202T020000Z-files", false)));
    }
}
