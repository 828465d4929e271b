//! Restore drills' results: the record a drill leaves beside the artifact it
//! restored (`<id>.drill.json`, like the verified record), and what the
//! sidecar, `list` and restore make of it (docs/ARCHITECTURE.md §6,
//! "Restore drills").
//!
//! A drill restores an artifact into a scratch volume in a separate pod,
//! starts the app's own image on it and runs a check the user wrote. Its
//! record says whether that check passed. Restore skips an artifact whose
//! drill failed: a failed drill is taken as proof that the artifact does not
//! bring the app back, as a wrong checksum is. (`list` ranks a passed drill
//! first among equally new artifacts; restore's candidates are ordered by
//! time and id only.)

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::manifest::Manifest;
use crate::{Error, Result};

/// The largest drill record read from a store (ours are well under 8 KiB:
/// the check's output is cut to [`OUTPUT_TAIL`]).
pub const MAX_DRILL_BYTES: u64 = 64 * 1024;
/// How much of the check's output a record keeps: its end, where the error is.
pub const OUTPUT_TAIL: usize = 4 * 1024;

/// What one drill found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrillRecord {
    /// The artifact drilled, and its checksum: a record for other bytes
    /// under the same id does not count.
    pub id: String,
    pub sha256: String,
    pub passed: bool,
    /// When the check finished.
    pub at: DateTime<Utc>,
    /// The restore's wall time in the drill pod.
    pub restore_seconds: f64,
    /// The check as configured (`LIFEBOAT_DRILL_CHECK`).
    pub check: String,
    /// The end of the check's output (stdout and stderr).
    pub output_tail: String,
    /// The drill pod, for `kubectl logs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
}

impl DrillRecord {
    /// A record for `m`; `output` is cut to its last [`OUTPUT_TAIL`] bytes,
    /// on a character boundary.
    pub fn new(
        m: &Manifest,
        passed: bool,
        restore_seconds: f64,
        check: &str,
        output: &str,
    ) -> DrillRecord {
        DrillRecord {
            id: m.id.clone(),
            sha256: m.sha256.clone(),
            passed,
            at: Utc::now(),
            restore_seconds,
            check: check.to_string(),
            output_tail: tail(output, OUTPUT_TAIL).to_string(),
            pod: std::env::var("POD_NAME").ok().filter(|p| !p.is_empty()),
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// A stored record, if it is one and speaks for `m` (same id and
    /// checksum); anything else only loses the fact.
    pub fn parse_for(bytes: &[u8], m: &Manifest) -> Option<DrillRecord> {
        let r: DrillRecord = serde_json::from_slice(bytes).ok()?;
        (r.id == m.id && r.sha256 == m.sha256).then_some(r)
    }

    /// One word and a time for `list`: `passed 2026-12-01 10:00:00`.
    pub fn summary(&self) -> String {
        let verdict = if self.passed { "passed" } else { "FAILED" };
        format!("{verdict} {}", self.at.format("%Y-%m-%d %H:%M:%S"))
    }
}

/// What the drill pod's restore left for its check: `lifeboat-restore`
/// writes it when `LIFEBOAT_DRILL_REPORT` names a file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Restored {
    pub id: String,
    pub target: String,
    pub seconds: f64,
}

impl Restored {
    /// Written whole or not at all (a temporary file renamed).
    pub fn write(&self, path: &Path) -> Result<()> {
        let tmp = path.with_extension("tmp");
        let body = serde_json::to_vec(self).map_err(|e| Error::Internal(e.to_string()))?;
        std::fs::write(&tmp, body)
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| Error::io(format!("writing the drill report {}", path.display()), e))
    }

    pub fn read(path: &Path) -> Result<Restored> {
        let text = crate::small_file::read(path, MAX_DRILL_BYTES).map_err(|e| {
            Error::io(
                format!(
                    "reading the drill report {} (lifeboat-restore writes it when LIFEBOAT_DRILL_REPORT names it; did the restore run?)",
                    path.display()
                ),
                e,
            )
        })?;
        serde_json::from_str(&text).map_err(|e| {
            Error::Internal(format!(
                "the drill report {} is not ours: {e}",
                path.display()
            ))
        })
    }
}

/// The user's check and how long to give the app.
#[derive(Debug, Clone)]
pub struct Check {
    /// `LIFEBOAT_DRILL_CHECK`, split as a shell would (not run by one).
    pub argv: Vec<String>,
    /// `LIFEBOAT_DRILL_READY`: run until it passes before the check runs
    /// once. Without it the check itself is retried until it passes.
    pub ready: Option<Vec<String>>,
    /// How long the app may take to come up and pass.
    pub timeout: Duration,
    /// Pause between tries.
    pub every: Duration,
}

impl Check {
    /// Runs the drill's check against the app started on the restored data:
    /// whether it passed, and what it printed last.
    pub fn run(&self) -> (bool, String) {
        let deadline = Instant::now() + self.timeout;
        let (gate, then_once) = match &self.ready {
            Some(ready) => (ready, true),
            None => (&self.argv, false),
        };
        let mut tries = 0u32;
        let passed = loop {
            tries += 1;
            let left = deadline.saturating_duration_since(Instant::now());
            let (ok, out) = run_once(gate, left);
            if ok {
                break out;
            }
            if Instant::now() + self.every >= deadline {
                let what = if then_once {
                    "LIFEBOAT_DRILL_READY"
                } else {
                    "LIFEBOAT_DRILL_CHECK"
                };
                warn!(
                    tries,
                    "{what} did not pass within {}s",
                    self.timeout.as_secs()
                );
                return (false, out);
            }
            std::thread::sleep(self.every);
        };
        if !then_once {
            info!(tries, "LIFEBOAT_DRILL_CHECK passed");
            return (true, passed);
        }
        info!(
            tries,
            "LIFEBOAT_DRILL_READY passed; running LIFEBOAT_DRILL_CHECK"
        );
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(self.every);
        run_once(&self.argv, left)
    }
}

/// One run of a program, its stdout and stderr together (the end kept),
/// killed after `limit`.
fn run_once(argv: &[String], limit: Duration) -> (bool, String) {
    let Some((program, args)) = argv.split_first() else {
        return (false, "empty command".into());
    };
    let (mut reader, writer) = match std::io::pipe() {
        Ok(p) => p,
        Err(e) => return (false, format!("cannot make a pipe: {e}")),
    };
    let mut cmd = Command::new(program);
    cmd.args(args).stdin(Stdio::null());
    match writer.try_clone() {
        Ok(w) => cmd.stdout(w).stderr(writer),
        Err(e) => return (false, format!("cannot make a pipe: {e}")),
    };
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return (false, format!("cannot start {program}: {e}")),
    };
    // Our copies of the pipe's write end went into `cmd`: drop it so the
    // reader sees the end once the program exits.
    drop(cmd);
    let collect = std::thread::spawn(move || {
        let mut kept = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            kept.extend_from_slice(&buf[..n]);
            if kept.len() > 2 * OUTPUT_TAIL {
                kept.drain(..kept.len() - OUTPUT_TAIL);
            }
        }
        String::from_utf8_lossy(&kept).into_owned()
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(100)),
            Err(_) => break None,
        }
    };
    let out = collect.join().unwrap_or_default();
    match status {
        Some(st) if st.success() => (true, out),
        Some(st) => (false, format!("{out}\n{program} exited with {st}")),
        None => (
            false,
            format!("{out}\n{program} was killed after {}s", limit.as_secs()),
        ),
    }
}

/// The last `max` bytes of `s`, starting on a character boundary.
fn tail(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        let id = "20261201T100000Z-files";
        let json = serde_json::json!({
            "format": "lifeboat/v1", "id": id, "artifact": format!("{id}.tar.zst"),
            "name": "n", "namespace": "ns", "source": "files", "layout": "paths",
            "paths": ["/data"], "started_at": "2026-12-01T10:00:00Z",
            "finished_at": "2026-12-01T10:00:01Z", "compression": "zstd:3",
            "encryption": "none", "size": 1, "sha256": "ab".repeat(32), "entries": 1,
            "bytes_in": 1, "warnings": [], "tool_version": "t", "source_meta": {}
        });
        Manifest::from_json(json.to_string().as_bytes()).expect("a valid manifest")
    }

    #[test]
    fn a_record_counts_only_for_its_own_bytes() {
        let m = manifest();
        let r = DrillRecord::new(&m, true, 1.5, "test -f /data/x", "ok\n");
        assert_eq!(DrillRecord::parse_for(&r.to_json(), &m), Some(r.clone()));
        let mut other = m.clone();
        other.sha256 = "cd".repeat(32);
        assert_eq!(DrillRecord::parse_for(&r.to_json(), &other), None);
        other = m.clone();
        other.id = "20261201T110000Z-files".into();
        assert_eq!(DrillRecord::parse_for(&r.to_json(), &other), None);
        assert_eq!(DrillRecord::parse_for(b"{\"id\": 1}", &m), None);
        assert_eq!(DrillRecord::parse_for(b"\xff", &m), None);
    }

    fn argv(s: &str) -> Vec<String> {
        shell_words::split(s).unwrap()
    }

    #[test]
    fn a_check_is_retried_until_it_passes_or_the_time_is_up() {
        let dir = tempfile::tempdir().unwrap();
        let flag = dir.path().join("up");
        // Comes "up" on the third try.
        let script = format!(
            "n=$(cat {f}.n 2>/dev/null || echo 0); n=$((n+1)); echo $n > {f}.n; \
             [ $n -ge 3 ] && echo 'count: 5000' && exit 0; echo 'not yet' >&2; exit 1",
            f = flag.display()
        );
        let check = Check {
            argv: vec!["sh".into(), "-c".into(), script],
            ready: None,
            timeout: Duration::from_secs(20),
            every: Duration::from_millis(50),
        };
        let (ok, out) = check.run();
        assert!(ok, "{out}");
        assert!(out.contains("count: 5000"), "{out}");

        let never = Check {
            argv: argv("sh -c 'echo relation orders does not exist >&2; exit 3'"),
            ready: None,
            timeout: Duration::from_millis(400),
            every: Duration::from_millis(100),
        };
        let (ok, out) = never.run();
        assert!(!ok);
        assert!(out.contains("relation orders does not exist"), "{out}");
        assert!(out.contains("exited with"), "{out}");
    }

    #[test]
    fn with_a_ready_command_the_check_runs_once() {
        let dir = tempfile::tempdir().unwrap();
        let count = dir.path().join("checks");
        let check = Check {
            argv: vec![
                "sh".into(),
                "-c".into(),
                format!("echo x >> {}; exit 1", count.display()),
            ],
            ready: Some(argv("true")),
            timeout: Duration::from_secs(5),
            every: Duration::from_millis(50),
        };
        let (ok, _) = check.run();
        assert!(!ok);
        assert_eq!(std::fs::read_to_string(&count).unwrap(), "x\n", "run once");
        let missing = Check {
            argv: argv("/nonexistent/psql -c 'select 1'"),
            ready: None,
            timeout: Duration::from_millis(200),
            every: Duration::from_millis(100),
        };
        let (ok, out) = missing.run();
        assert!(!ok);
        assert!(out.contains("cannot start /nonexistent/psql"), "{out}");
    }

    #[test]
    fn the_restore_report_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("restored.json");
        let r = Restored {
            id: "20261201T100000Z-files".into(),
            target: "file:///backup/ns/app-0".into(),
            seconds: 1.25,
        };
        r.write(&p).unwrap();
        assert_eq!(Restored::read(&p).unwrap(), r);
        let err = Restored::read(&dir.path().join("missing.json")).unwrap_err();
        assert!(err.to_string().contains("LIFEBOAT_DRILL_REPORT"), "{err}");
    }

    #[test]
    fn the_output_keeps_its_end_on_a_character_boundary() {
        let m = manifest();
        let long = format!(
            "{}ERROR: relation \"orders\" does not exist",
            "é".repeat(5000)
        );
        let r = DrillRecord::new(&m, false, 0.1, "psql -c 'select 1'", &long);
        assert!(r.output_tail.len() <= OUTPUT_TAIL);
        assert!(r.output_tail.ends_with("does not exist"));
        assert!(r.summary().starts_with("FAILED "));
    }
}
