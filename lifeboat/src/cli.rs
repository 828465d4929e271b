//! Process setup shared by both binaries.

use std::io::IsTerminal;

/// The operator's command (`kubectl exec … -- lifeboat-sidecar list`), as
/// the advice in the library's messages names it: spelled here only.
pub const SIDECAR_COMMAND: &str = "lifeboat-sidecar";

/// `tracing` to stderr, filtered by `LIFEBOAT_LOG` (default `info`), fields
/// first, then a short sentence; colours only on a terminal.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LIFEBOAT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// Two async workers are plenty for one pipeline: the heavy lifting (tar,
/// compression, hashing) runs on blocking threads.
pub const WORKER_THREADS: usize = 2;

pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKER_THREADS)
        .enable_all()
        .build()
}
