//! `LIFEBOAT_PRE_COMMAND` / `LIFEBOAT_POST_COMMAND`: a program run before
//! and after each backup (to flush an app's caches, pause a writer, ...).
//! Run directly, not through a shell: the image has none.

use std::process::{Command, Stdio};

use tracing::{info, warn};

use crate::config::{Hook, Settings};
use crate::manifest::Manifest;
use crate::program::Owner;
use crate::progress::Cancel;
use crate::{Error, Result};

fn command(hook: &Hook, settings: &Settings, phase: &str) -> Command {
    let mut c = Command::new(&hook.argv[0]);
    c.args(&hook.argv[1..])
        .env("LIFEBOAT_PHASE", phase)
        .env("LIFEBOAT_NAME", &settings.name)
        .env("LIFEBOAT_NAMESPACE", &settings.namespace)
        .env("LIFEBOAT_SOURCE", settings.source.kind.as_str());
    // What the hook prints belongs in the container log, beside ours, and
    // never on stdout, where `backup-now` prints the artifact id.
    use std::os::fd::AsFd;
    match std::io::stderr().as_fd().try_clone_to_owned() {
        Ok(fd) => c.stdout(Stdio::from(fd)),
        Err(_) => c.stdout(Stdio::null()),
    };
    c
}

async fn run(hook: &Hook, cmd: Command, cancel: &Cancel) -> Result<()> {
    let what = format!("{} ({})", hook.setting, hook.argv[0]);
    let limit = hook.timeout;
    let cancel = cancel.clone();
    let started = std::time::Instant::now();
    tokio::task::spawn_blocking(move || {
        crate::program::run_within(cmd, &what, &cancel, Some(limit), Owner::Hook).map(|_| ())
    })
    .await
    .map_err(|e| Error::Hook(format!("{} did not run: {e}", hook.setting)))??;
    info!(
        hook = hook.setting,
        program = %hook.argv[0],
        elapsed_ms = started.elapsed().as_millis() as u64,
        "hook finished"
    );
    Ok(())
}

/// Runs the pre-backup hook; its failure fails the backup, with what it
/// printed on stderr in the error.
pub async fn pre(settings: &Settings, cancel: &Cancel) -> Result<()> {
    let Some(hook) = &settings.ops.pre_command else {
        return Ok(());
    };
    run(hook, command(hook, settings, "pre"), cancel).await
}

/// Runs the post-backup hook with `LIFEBOAT_RESULT` (`success`/`failure`)
/// and, after a success, `LIFEBOAT_ARTIFACT_ID`. The backup is decided by
/// then, so a failing post hook is logged, not raised.
pub async fn post(settings: &Settings, result: &Result<Manifest>, cancel: &Cancel) {
    let Some(hook) = &settings.ops.post_command else {
        return;
    };
    let mut cmd = command(hook, settings, "post");
    match result {
        Ok(m) => cmd
            .env("LIFEBOAT_RESULT", "success")
            .env("LIFEBOAT_ARTIFACT_ID", &m.id),
        Err(_) => cmd.env("LIFEBOAT_RESULT", "failure"),
    };
    if let Err(e) = run(hook, cmd, cancel).await {
        warn!("post-backup hook failed (the backup's result stands): {e}");
    }
}
