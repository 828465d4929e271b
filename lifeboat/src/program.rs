//! Running external programs: the tools a logical dump needs (`pg_dump`,
//! `pg_restore`), hooks and a restore drill's check. Found on `PATH`,
//! killed (with whatever they started) when we die, are cancelled or their
//! time is up, and their output kept (bounded) so an error can say what
//! the program said.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::progress::{is_cancelled, Cancel};
use crate::{Error, Result};

/// The end of a tool's stderr kept for error messages. Its last lines say
/// why it failed; a chatty tool must not grow our memory.
pub const STDERR_KEEP: usize = 8 * 1024;
/// How often a running tool is checked for exit or cancellation.
const POLL: Duration = Duration::from_millis(100);

/// The first executable `name` on `PATH`.
pub fn find(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| {
            p.metadata()
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// Whose program it is, which decides the error its failure is: a
/// database tool's (`pg_dump`, `pg_restore`) is the source's, retried like
/// any source failure; a hook's is `Error::Hook`, the user's own program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    Source,
    Hook,
}

impl Owner {
    fn failed(self, message: String) -> Error {
        match self {
            Owner::Source => Error::Source(message),
            Owner::Hook => Error::Hook(message),
        }
    }

    fn io(self, what: String, e: std::io::Error) -> Error {
        match self {
            Owner::Source => Error::io(what, e),
            Owner::Hook => Error::Hook(Error::io(what, e).to_string()),
        }
    }
}

/// Runs a database tool to the end on this (blocking) thread; stdout is
/// whatever the caller set. Returns the tool's stderr (its warnings) on
/// success.
pub fn run(cmd: Command, what: &str, cancel: &Cancel) -> Result<String> {
    run_within(cmd, what, cancel, None, Owner::Source)
}

/// [`run`] for `owner`, killing the program once `limit` has passed (hooks
/// must not hang the schedule).
pub fn run_within(
    cmd: Command,
    what: &str,
    cancel: &Cancel,
    limit: Option<Duration>,
    owner: Owner,
) -> Result<String> {
    let (ended, said) = supervise(cmd, cancel, limit, Output::Stderr)
        .map_err(|e| owner.io(format!("starting {what}"), e))?;
    let said = said.trim();
    match ended {
        Ended::Exited(status) if status.success() => Ok(said.to_string()),
        Ended::Exited(status) => Err(owner.failed(format!(
            "{what} failed ({status}){}{said}",
            if said.is_empty() { "" } else { ": " }
        ))),
        Ended::TimedOut(l) => Err(owner.failed(format!(
            "{what} did not finish within {}s and was killed{}{said}",
            l.as_secs(),
            if said.is_empty() {
                ""
            } else {
                "; it printed: "
            },
        ))),
        Ended::Cancelled => Err(Error::Cancelled),
    }
}

/// Which of a program's output [`supervise`] keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Its stderr; stdout goes wherever the caller set it (a dump's pipe).
    Stderr,
    /// Stdout and stderr as one stream, in the order written (a drill's
    /// check, whose output a person reads as a whole).
    Merged,
}

/// How a supervised program ended.
#[derive(Debug)]
pub enum Ended {
    Exited(std::process::ExitStatus),
    /// Killed after this limit.
    TimedOut(Duration),
    /// Killed because we were asked to stop.
    Cancelled,
}

/// Runs `cmd` to its end on this (blocking) thread, in a process group of
/// its own that is killed with it: on `limit`, on `cancel`, and when
/// something it left behind still holds its output open after it exited
/// (`sh -c 'daemon &'`), which would otherwise hang us. It also dies with
/// us (`PR_SET_PDEATHSIG`): a tool must not outlive a killed sidecar and
/// keep loading or dumping. Returns how it ended and the end of what it
/// printed (the last [`STDERR_KEEP`] bytes). Only a failure to start it is
/// an error.
pub fn supervise(
    mut cmd: Command,
    cancel: &Cancel,
    limit: Option<Duration>,
    output: Output,
) -> std::io::Result<(Ended, String)> {
    let deadline = limit.map(|l| (Instant::now() + l, l));
    let (reader, writer) = std::io::pipe()?;
    cmd.stdin(Stdio::null());
    if output == Output::Merged {
        cmd.stdout(writer.try_clone()?);
    }
    cmd.stderr(writer);
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: setpgid, prctl and getppid are async-signal-safe, and nothing
    // here allocates or touches memory of ours.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setpgid(0, 0) != 0 || libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // We died between the fork and the prctl: the signal will not come.
            if libc::getppid() != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    // Our copies of the pipe's write end are in `cmd`: drop them, so the
    // reader sees the end once the program (and whatever it started) is gone.
    drop(cmd);
    let group = child.id() as libc::pid_t;
    let kill_group = || {
        // SAFETY: a plain syscall. Called while the leader is unreaped or
        // after it exited with members left: the group's id stays reserved
        // while any member lives. (Once all are gone, the kill is harmless
        // unless the id was handed to a new group meanwhile: not within
        // the seconds this takes.)
        unsafe { libc::kill(-group, libc::SIGKILL) };
    };
    let kept = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (done_tx, done) = std::sync::mpsc::channel();
    {
        let kept = kept.clone();
        std::thread::spawn(move || {
            tail_into(reader, &kept);
            let _ = done_tx.send(());
        });
    }
    let ended = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ended::Exited(status),
            Ok(None) => {}
            Err(e) => {
                kill_group();
                let _ = child.wait();
                return Err(e);
            }
        }
        if is_cancelled(cancel) {
            break Ended::Cancelled;
        }
        if let Some((_, l)) = deadline.filter(|(at, _)| Instant::now() >= *at) {
            break Ended::TimedOut(l);
        }
        std::thread::sleep(POLL);
    };
    if !matches!(ended, Ended::Exited(_)) {
        kill_group();
        let _ = child.wait();
    }
    if done.recv_timeout(OUTPUT_GRACE).is_err() {
        // It exited, but something it started still holds the pipe.
        tracing::warn!(
            "a program exited but left processes behind that hold its output; killing them"
        );
        kill_group();
        // Where we are PID 1 (a container's entrypoint) they are ours to
        // reap once they die; elsewhere waitpid finds none at once. One
        // that left the group (setsid) keeps the pipe, and the reader
        // thread, until it exits; we go on without its output.
        reap_group(group);
        let _ = done.recv_timeout(OUTPUT_GRACE);
    }
    let bytes = kept.lock().map(|k| k.clone()).unwrap_or_default();
    Ok((ended, String::from_utf8_lossy(&bytes).into_owned()))
}

/// Reaps the dead of process group `group` that are our children, for up
/// to a second.
fn reap_group(group: libc::pid_t) {
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        // SAFETY: a plain syscall on a group we started.
        match unsafe { libc::waitpid(-group, std::ptr::null_mut(), libc::WNOHANG) } {
            0 => std::thread::sleep(Duration::from_millis(20)),
            n if n > 0 => {}
            _ => return,
        }
    }
}

/// How long a program's output may stay open after it exited.
const OUTPUT_GRACE: Duration = Duration::from_secs(2);

/// Reads `r` to its end into `kept`, keeping the last [`STDERR_KEEP`] bytes
/// (readable by the caller at any time, so a reader that never ends does
/// not lose what was said).
fn tail_into(mut r: impl Read, kept: &std::sync::Mutex<Vec<u8>>) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = r.read(&mut buf) {
        if n == 0 {
            break;
        }
        let Ok(mut k) = kept.lock() else { return };
        k.extend_from_slice(&buf[..n]);
        if k.len() > STDERR_KEEP {
            let cut = k.len() - STDERR_KEEP;
            k.drain(..cut);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_tool_says_what_it_printed() {
        let mut c = Command::new("sh");
        c.args(["-c", "echo 'pg_dump: error: no such database' >&2; exit 1"]);
        let e = run(c, "pg_dump", &Default::default()).unwrap_err();
        assert!(e.to_string().contains("no such database"), "{e}");
    }

    #[test]
    fn stderr_is_bounded() {
        let mut c = Command::new("sh");
        c.args([
            "-c",
            "head -c 100000 /dev/zero | tr '\\0' x >&2; echo end >&2",
        ]);
        let said = run(c, "chatty", &Default::default()).unwrap();
        assert!(said.len() <= STDERR_KEEP && said.ends_with("end"));
    }

    #[test]
    fn a_tool_past_its_limit_is_killed() {
        let mut c = Command::new("sh");
        c.args(["-c", "echo started >&2; exec sleep 30"]);
        let t = std::time::Instant::now();
        let e = run_within(
            c,
            "hook",
            &Default::default(),
            Some(Duration::from_millis(300)),
            Owner::Hook,
        )
        .unwrap_err();
        assert!(
            matches!(e, Error::Hook(_)),
            "a hook's failure is the hook's: {e:?}"
        );
        let e = e.to_string();
        assert!(t.elapsed() < Duration::from_secs(10), "{e}");
        assert!(
            e.contains("did not finish within") && e.contains("started"),
            "{e}"
        );
    }

    #[test]
    fn a_program_that_leaves_a_child_behind_does_not_hang_us() {
        // The background sleep holds stderr open after sh exits.
        let mut c = Command::new("sh");
        c.args(["-c", "sleep 60 & echo started >&2"]);
        let t = std::time::Instant::now();
        let said = run(c, "hook", &Default::default()).unwrap();
        assert_eq!(said, "started");
        assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    }

    #[test]
    fn merged_output_keeps_both_streams_in_order() {
        let mut c = Command::new("sh");
        c.args(["-c", "echo one; echo two >&2; echo three; exit 4"]);
        let (ended, out) = supervise(c, &Default::default(), None, Output::Merged).unwrap();
        assert!(matches!(ended, Ended::Exited(s) if s.code() == Some(4)));
        assert_eq!(out, "one\ntwo\nthree\n");
        let e = supervise(
            Command::new("/nonexistent/psql"),
            &Default::default(),
            None,
            Output::Merged,
        )
        .unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
    }

    #[test]
    fn finds_sh_on_path() {
        assert!(find("sh").is_some());
        assert!(find("no-such-tool-lifeboat").is_none());
    }
}
