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
    tune_allocator();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKER_THREADS)
        .enable_all()
        .build()
}

/// Buffers of this size and more (an S3 part, a pipe chunk's vector) get
/// pages of their own from the kernel and give them back when freed.
/// glibc's default threshold rises to the largest block freed, after which
/// such buffers come from the heap and stay in the process: measured on a
/// 1 GiB backup to S3 with 8 MiB parts, 61 MiB peak RSS by default, 53 MiB
/// with this (README, "Bounds").
const MMAP_THRESHOLD: i32 = 1 << 20;
/// Heaps glibc keeps for threads: by default eight per core, each keeping
/// what its threads freed; two are enough for two async workers and the
/// pipeline's threads, which hand buffers to each other anyway.
const ARENA_MAX: i32 = 2;

/// Called before any thread starts: the settings apply to what follows.
/// Only glibc has them; elsewhere the allocator's defaults stay.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; it is called before
    // the runtime starts its threads.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_ARENA_MAX, ARENA_MAX);
    }
}
