//! Restore drills' results: the record a drill leaves beside the artifact it
//! restored (`<id>.drill.json`, like the verified record), and what the
//! sidecar, `list` and restore make of it (docs/ARCHITECTURE.md §6,
//! "Restore drills").
//!
//! A drill restores an artifact into a scratch volume in a separate pod,
//! starts the app's own image on it and runs a check the user wrote. Its
//! record gives a [`Verdict`]. Only `failed` (the app came up and the
//! check ran and said no) is taken as proof that the artifact does not
//! bring the app back, as a wrong checksum is: restore skips it. A drill
//! that says nothing about the data (the check could not start, the app
//! never became ready, the check was killed) is `inconclusive`: it alerts
//! like a failure, but restores still use the artifact.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::manifest::Manifest;
use crate::program::{self, Ended, Output};
use crate::{Error, Result};

/// The largest drill record read from a store (ours are well under 8 KiB:
/// the check's output is cut to [`OUTPUT_TAIL`]).
pub const MAX_DRILL_BYTES: u64 = 64 * 1024;
/// How much of the check's output a record keeps: its end, where the error is.
pub const OUTPUT_TAIL: usize = 4 * 1024;

/// What a drill says about the artifact it restored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// The app came up on it and the check passed.
    Passed,
    /// The check ran against the app started on it and did not pass:
    /// restores skip the artifact.
    Failed,
    /// The drill could not tell: the check or READY could not start, READY
    /// never passed, or the check was killed. Restores still use it.
    Inconclusive,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Passed => "passed",
            Verdict::Failed => "failed",
            Verdict::Inconclusive => "inconclusive",
        }
    }

    /// What it means for the artifact, in a few words (logs, Events,
    /// notifications).
    pub fn meaning(self) -> &'static str {
        match self {
            Verdict::Passed => "the app came back on this artifact",
            Verdict::Failed => "the app's check failed on this artifact, so restores skip it",
            Verdict::Inconclusive => {
                "the drill could not tell (the check did not run against a ready app); restores still use this artifact: fix the drill and run it again"
            }
        }
    }
}

fn lenient_verdict<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<Verdict>, D::Error> {
    let v = Option::<serde_json::Value>::deserialize(d)?;
    Ok(v.and_then(|v| serde_json::from_value(v).ok()))
}

/// What one drill found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrillRecord {
    /// The artifact drilled, and its checksum: a record for other bytes
    /// under the same id does not count.
    pub id: String,
    pub sha256: String,
    /// `verdict == passed`, for readers that only look for a yes. Left out
    /// of an inconclusive record: the first drills' readers, which knew only
    /// passed and failed and would read `false` as failed, then ignore the
    /// record, which is what inconclusive means.
    #[serde(default)]
    pub passed: bool,
    /// Missing in records of the first drills: [`DrillRecord::verdict`]
    /// reads it from `passed` then. A verdict this version does not know
    /// reads as missing too.
    #[serde(default, rename = "verdict", deserialize_with = "lenient_verdict")]
    pub verdict_kind: Option<Verdict>,
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
        verdict: Verdict,
        restore_seconds: f64,
        check: &str,
        output: &str,
    ) -> DrillRecord {
        DrillRecord {
            id: m.id.clone(),
            sha256: m.sha256.clone(),
            passed: verdict == Verdict::Passed,
            verdict_kind: Some(verdict),
            at: Utc::now(),
            restore_seconds,
            check: check.to_string(),
            output_tail: tail(output, OUTPUT_TAIL).to_string(),
            pod: std::env::var("POD_NAME").ok().filter(|p| !p.is_empty()),
        }
    }

    /// The stored form: without `passed` when inconclusive (see the field).
    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        if self.verdict() == Verdict::Inconclusive {
            if let Some(o) = v.as_object_mut() {
                o.remove("passed");
            }
        }
        serde_json::to_vec(&v).unwrap_or_default()
    }

    /// A stored record, if it is one and speaks for `m` (same id and
    /// checksum); anything else only loses the fact.
    pub fn parse_for(bytes: &[u8], m: &Manifest) -> Option<DrillRecord> {
        let r: DrillRecord = serde_json::from_slice(bytes).ok()?;
        (r.id == m.id && r.sha256 == m.sha256).then_some(r)
    }

    /// The app came back on it.
    pub fn has_passed(&self) -> bool {
        self.verdict() == Verdict::Passed
    }

    /// It was proven not to bring the app back.
    pub fn has_failed(&self) -> bool {
        self.verdict() == Verdict::Failed
    }

    pub fn verdict(&self) -> Verdict {
        match (self.verdict_kind, self.passed) {
            (Some(v), _) => v,
            (None, true) => Verdict::Passed,
            (None, false) => Verdict::Failed,
        }
    }

    /// One word and a time for `list`: `passed 2026-12-01 10:00:00`;
    /// the verdicts that need a person in capitals.
    pub fn summary(&self) -> String {
        let verdict = match self.verdict() {
            Verdict::Passed => "passed",
            Verdict::Failed => "FAILED",
            Verdict::Inconclusive => "INCONCLUSIVE",
        };
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
    /// the verdict, and what was printed last (ending with why).
    ///
    /// With `ready`, READY is retried until it passes and the check then
    /// runs: passing once passes; failing twice in a row (a pause apart, so
    /// one dropped connection does not condemn an artifact) fails; READY
    /// never passing is inconclusive (the app did not come up, which may be
    /// the cluster's doing). Without `ready`, the check is retried until it
    /// passes; one that still exits non-zero at the deadline has failed.
    /// A program that cannot be found or run (including a shell's 126 and
    /// 127) or is killed says nothing about the data: inconclusive.
    pub fn run(&self) -> (Verdict, String) {
        let deadline = Instant::now() + self.timeout;
        let (gate, name) = match &self.ready {
            Some(ready) => (ready, "LIFEBOAT_DRILL_READY"),
            None => (&self.argv, "LIFEBOAT_DRILL_CHECK"),
        };
        let mut tries = 0u32;
        let gate_passed = loop {
            tries += 1;
            let left = deadline.saturating_duration_since(Instant::now());
            let run = run_once(gate, left);
            if run.passed() {
                break run;
            }
            if let Some(why) = run.inconclusive_at_once() {
                warn!("{name} could not run: {why}");
                return (
                    Verdict::Inconclusive,
                    format!("{}\n{name} could not run: {why}", run.output),
                );
            }
            if Instant::now() + self.every >= deadline {
                let verdict = if self.ready.is_some() || !run.exited() {
                    Verdict::Inconclusive
                } else {
                    Verdict::Failed
                };
                let why = format!(
                    "{name} did not pass within {}s ({tries} tries){}",
                    self.timeout.as_secs(),
                    if self.ready.is_some() {
                        "; the app did not come up, the check did not run"
                    } else {
                        ""
                    }
                );
                warn!("{why}");
                return (verdict, format!("{}\n{why}", run.output));
            }
            std::thread::sleep(self.every);
        };
        if self.ready.is_none() {
            info!(tries, "LIFEBOAT_DRILL_CHECK passed");
            return (Verdict::Passed, gate_passed.output);
        }
        info!(
            tries,
            "LIFEBOAT_DRILL_READY passed; running LIFEBOAT_DRILL_CHECK"
        );
        let mut output = String::new();
        for attempt in 1..=2 {
            if attempt == 2 {
                warn!("LIFEBOAT_DRILL_CHECK did not pass; trying it once more");
                std::thread::sleep(self.every);
            }
            let left = deadline
                .saturating_duration_since(Instant::now())
                .max(self.every);
            let run = run_once(&self.argv, left);
            if run.passed() {
                return (Verdict::Passed, run.output);
            }
            if let Some(why) = run.inconclusive_at_once() {
                let out = format!("{}\nLIFEBOAT_DRILL_CHECK could not run: {why}", run.output);
                return (Verdict::Inconclusive, out);
            }
            if !run.exited() {
                return (Verdict::Inconclusive, run.output);
            }
            output = run.output;
        }
        (Verdict::Failed, output)
    }
}

/// One run of a drill's program.
struct Run {
    ended: std::result::Result<Ended, String>,
    /// Stdout and stderr together (the end kept), then how it ended.
    output: String,
}

impl Run {
    fn passed(&self) -> bool {
        matches!(&self.ended, Ok(Ended::Exited(s)) if s.success())
    }

    /// It ran to its own end (not killed, not unstartable).
    fn exited(&self) -> bool {
        matches!(&self.ended, Ok(Ended::Exited(s)) if s.code().is_some())
    }

    /// Why trying again is pointless: the program cannot be started, or a
    /// shell said it could not find or run it (126, 127).
    fn inconclusive_at_once(&self) -> Option<&str> {
        match &self.ended {
            Err(why) => Some(why),
            Ok(Ended::Exited(s)) if matches!(s.code(), Some(126 | 127)) => {
                Some("a shell could not find or run the program (exit 126 or 127)")
            }
            Ok(_) => None,
        }
    }
}

/// One run of a program, killed (with anything it started) after `limit`.
fn run_once(argv: &[String], limit: Duration) -> Run {
    let Some((program, args)) = argv.split_first() else {
        return Run {
            ended: Err("the command is empty".into()),
            output: String::new(),
        };
    };
    let mut cmd = Command::new(program);
    cmd.args(args);
    match program::supervise(cmd, &Default::default(), Some(limit), Output::Merged) {
        Err(e) => Run {
            ended: Err(format!("cannot start {program}: {e}")),
            output: String::new(),
        },
        Ok((ended, out)) => {
            let how = match &ended {
                Ended::Exited(st) if st.success() => String::new(),
                Ended::Exited(st) => format!("\n{program} exited with {st}"),
                Ended::TimedOut(l) => format!("\n{program} was killed after {}s", l.as_secs()),
                Ended::Cancelled => format!("\n{program} was cancelled"),
            };
            Run {
                ended: Ok(ended),
                output: format!("{out}{how}"),
            }
        }
    }
}

/// The last `max` bytes of `s`, starting on a character boundary.
pub fn tail(s: &str, max: usize) -> &str {
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
        let r = DrillRecord::new(&m, Verdict::Passed, 1.5, "test -f /data/x", "ok\n");
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

    fn check(
        argv: Vec<String>,
        ready: Option<Vec<String>>,
        timeout_ms: u64,
        every_ms: u64,
    ) -> Check {
        Check {
            argv,
            ready,
            timeout: Duration::from_millis(timeout_ms),
            every: Duration::from_millis(every_ms),
        }
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
        let c = check(vec!["sh".into(), "-c".into(), script], None, 20000, 50);
        let (verdict, out) = c.run();
        assert_eq!(verdict, Verdict::Passed, "{out}");
        assert!(out.contains("count: 5000"), "{out}");

        // One try, whatever the load: the pause before a second would pass
        // the deadline. (With a second try the deadline could cut it short,
        // which is rightly Inconclusive, and a loaded machine made it so.)
        let never = check(
            argv("sh -c 'echo relation orders does not exist >&2; exit 3'"),
            None,
            5000,
            5000,
        );
        let (verdict, out) = never.run();
        assert_eq!(verdict, Verdict::Failed, "it ran and said no: {out}");
        assert!(out.contains("relation orders does not exist"), "{out}");
        assert!(out.contains("exited with"), "{out}");
        assert!(out.contains("LIFEBOAT_DRILL_CHECK did not pass"), "{out}");
    }

    #[test]
    fn with_a_ready_command_a_failing_check_is_tried_twice_then_fails() {
        let dir = tempfile::tempdir().unwrap();
        let count = dir.path().join("checks");
        let c = check(
            vec![
                "sh".into(),
                "-c".into(),
                format!("echo x >> {}; exit 1", count.display()),
            ],
            Some(argv("true")),
            5000,
            50,
        );
        let (verdict, _) = c.run();
        assert_eq!(verdict, Verdict::Failed);
        assert_eq!(std::fs::read_to_string(&count).unwrap(), "x\nx\n", "twice");
        let missing = check(argv("/nonexistent/psql -c 'select 1'"), None, 200, 100);
        let (verdict, out) = missing.run();
        assert_eq!(
            verdict,
            Verdict::Inconclusive,
            "says nothing about the data"
        );
        assert!(out.contains("cannot start /nonexistent/psql"), "{out}");
    }

    #[test]
    fn an_app_that_never_comes_up_is_inconclusive() {
        let c = check(
            argv("true"),
            Some(argv("sh -c 'echo no response >&2; exit 2'")),
            400,
            100,
        );
        let (verdict, out) = c.run();
        assert_eq!(verdict, Verdict::Inconclusive);
        assert!(
            out.contains("LIFEBOAT_DRILL_READY did not pass") && !out.contains("CHECK did not"),
            "READY's timeout is not the check's failure: {out}"
        );
        // A check killed at the deadline did not say no either.
        let hung = check(argv("sleep 30"), Some(argv("true")), 300, 100);
        let (verdict, out) = hung.run();
        assert_eq!(verdict, Verdict::Inconclusive, "{out}");
        assert!(out.contains("was killed"), "{out}");
        // A check behind a shell whose program is not in the image (127),
        // and one that cannot start after READY: the reason is kept.
        let shell = check(argv("sh -c 'no-such-psql -c 1'"), None, 300, 100);
        assert_eq!(shell.run().0, Verdict::Inconclusive);
        let unstartable = check(argv("/nonexistent/psql"), Some(argv("true")), 300, 100);
        let (verdict, out) = unstartable.run();
        assert_eq!(verdict, Verdict::Inconclusive);
        assert!(out.contains("cannot start /nonexistent/psql"), "{out}");
    }

    #[test]
    fn a_record_of_the_first_drills_reads_its_verdict_from_passed() {
        let m = manifest();
        let mut v =
            serde_json::to_value(DrillRecord::new(&m, Verdict::Failed, 1.0, "c", "")).unwrap();
        v.as_object_mut().unwrap().remove("verdict");
        let r = DrillRecord::parse_for(v.to_string().as_bytes(), &m).unwrap();
        assert_eq!(r.verdict(), Verdict::Failed);
        let r = DrillRecord::new(&m, Verdict::Inconclusive, 1.0, "c", "");
        assert!(!r.passed);
        let stored: serde_json::Value = serde_json::from_slice(&r.to_json()).unwrap();
        assert!(
            stored.get("passed").is_none(),
            "first readers ignore it: {stored}"
        );
        assert_eq!(
            DrillRecord::parse_for(&r.to_json(), &m).unwrap().verdict(),
            Verdict::Inconclusive
        );
        let mut future = stored.clone();
        future["verdict"] = "partly".into();
        future["passed"] = false.into();
        let read = DrillRecord::parse_for(future.to_string().as_bytes(), &m).unwrap();
        assert_eq!(
            read.verdict(),
            Verdict::Failed,
            "an unknown verdict falls back to passed"
        );
        assert!(r
            .to_json()
            .windows(24)
            .any(|w| w == b"\"verdict\":\"inconclusive\""));
        assert!(r.summary().starts_with("INCONCLUSIVE "));
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
        let r = DrillRecord::new(&m, Verdict::Failed, 0.1, "psql -c 'select 1'", &long);
        assert!(r.output_tail.len() <= OUTPUT_TAIL);
        assert!(r.output_tail.ends_with("does not exist"));
        assert!(r.summary().starts_with("FAILED "));
    }
}
