//! Counters shared between the worker thread and a task that logs progress
//! on long work, so a person watching `kubectl logs` sees it move.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Progress {
    pub bytes: AtomicU64,
    pub entries: AtomicU64,
    started: Instant,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            bytes: AtomicU64::new(0),
            entries: AtomicU64::new(0),
            started: Instant::now(),
        }
    }
}

impl Progress {
    pub fn add_bytes(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
    }
    pub fn add_entry(&self) {
        self.entries.fetch_add(1, Ordering::Relaxed);
    }
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
    /// MiB per second since start.
    pub fn rate(&self, bytes: u64) -> f64 {
        mib_per_s(bytes, self.elapsed())
    }
}

pub fn mib_per_s(bytes: u64, d: Duration) -> f64 {
    let secs = d.as_secs_f64().max(1e-3);
    (bytes as f64 / (1024.0 * 1024.0) / secs * 10.0).round() / 10.0
}

/// Logs a progress line every `every` until the returned guard is dropped.
pub fn report(progress: Arc<Progress>, every: Duration, what: &'static str) -> ReportGuard {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tick.tick().await;
            if flag.load(Ordering::Relaxed) {
                return;
            }
            let bytes = progress.bytes.load(Ordering::Relaxed);
            tracing::info!(
                mib = bytes / (1024 * 1024),
                entries = progress.entries.load(Ordering::Relaxed),
                mib_per_s = progress.rate(bytes),
                elapsed_s = progress.elapsed().as_secs(),
                "{what} in progress"
            );
        }
    });
    ReportGuard { stop, task }
}

pub struct ReportGuard {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ReportGuard {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.abort();
    }
}

/// Cancellation flag checked by the blocking worker between reads.
pub type Cancel = Arc<AtomicBool>;

pub fn is_cancelled(c: &Cancel) -> bool {
    c.load(Ordering::Relaxed)
}

/// This process's peak resident memory in MiB (`VmHWM`), for the result
/// line of a backup, so memory use is visible where people look.
pub fn peak_rss_mib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}
