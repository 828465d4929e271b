//! Running the external tools a logical dump needs (`pg_dump`, `pg_restore`):
//! found on `PATH`, killed when we die or are cancelled, and their stderr
//! kept (bounded) so an error can say what the tool said.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

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
    mut cmd: Command,
    what: &str,
    cancel: &Cancel,
    limit: Option<Duration>,
    owner: Owner,
) -> Result<String> {
    let deadline = limit.map(|l| (std::time::Instant::now() + l, l));
    cmd.stdin(Stdio::null()).stderr(Stdio::piped());
    // SAFETY: prctl is async-signal-safe and touches no memory of ours. A
    // tool must not outlive a killed sidecar and keep loading or dumping.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| owner.io(format!("starting {what}"), e))?;
    let stderr = child.stderr.take().expect("stderr is piped");
    let reader = std::thread::spawn(move || tail(stderr));
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(e) => return Err(owner.io(format!("waiting for {what}"), e)),
        }
        if is_cancelled(cancel) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::Cancelled);
        }
        if let Some((_, l)) = deadline.filter(|(at, _)| std::time::Instant::now() >= *at) {
            let _ = child.kill();
            let _ = child.wait();
            let said = reader.join().unwrap_or_default();
            return Err(owner.failed(format!(
                "{what} did not finish within {}s and was killed{}{}",
                l.as_secs(),
                if said.trim().is_empty() {
                    ""
                } else {
                    "; it printed: "
                },
                said.trim()
            )));
        }
        std::thread::sleep(POLL);
    };
    let said = reader.join().unwrap_or_default();
    let said = said.trim();
    if status.success() {
        Ok(said.to_string())
    } else {
        Err(owner.failed(format!(
            "{what} failed ({status}){}{said}",
            if said.is_empty() { "" } else { ": " }
        )))
    }
}

/// Reads `r` to its end, keeping the last [`STDERR_KEEP`] bytes.
fn tail(mut r: impl Read) -> String {
    let mut kept: Vec<u8> = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = r.read(&mut buf) {
        if n == 0 {
            break;
        }
        kept.extend_from_slice(&buf[..n]);
        if kept.len() > STDERR_KEEP {
            kept.drain(..kept.len() - STDERR_KEEP);
        }
    }
    String::from_utf8_lossy(&kept).into_owned()
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
    fn finds_sh_on_path() {
        assert!(find("sh").is_some());
        assert!(find("no-such-tool-lifeboat").is_none());
    }
}
