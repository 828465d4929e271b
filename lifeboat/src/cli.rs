//! Process setup shared by both binaries.

use std::io::IsTerminal;

use tracing_subscriber::filter::Targets;

/// The operator's command (`kubectl exec … -- lifeboat-sidecar list`), as
/// the advice in the library's messages names it: spelled here only.
pub const SIDECAR_COMMAND: &str = "lifeboat-sidecar";

/// `tracing` to stderr, filtered by `LIFEBOAT_LOG` (default `info`), fields
/// first, then a short sentence; colours only on a terminal.
pub fn init_logging() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;

    let (filter, refused) = log_filter(std::env::var("LIFEBOAT_LOG").ok().as_deref());
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal());
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .init();
    if let Some(why) = refused {
        tracing::warn!("{why}");
    }
}

/// `LIFEBOAT_LOG`: a level (`debug`), or a default level and levels per
/// module (`info,lifeboat::store=debug`). A value that is none of these
/// logs at `info` and says why, rather than keeping the process from
/// starting. `Targets`, not `EnvFilter`: the latter's span and field
/// filters bring a regex engine (0.5 MB of each binary, README "Binary size").
fn log_filter(value: Option<&str>) -> (Targets, Option<String>) {
    let info = Targets::new().with_default(tracing::Level::INFO);
    let Some(v) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return (info, None);
    };
    let refuse = |why: &str| {
        Some(format!(
            "LIFEBOAT_LOG={v:?} is not a log filter ({why}); logging at info. Accepted: a level (error, warn, info, debug, trace, off), or levels per module like info,lifeboat=debug"
        ))
    };
    // Targets reads an empty directive as "errors only" and a span filter
    // as a module that never logs; EnvFilter skipped the one and honoured
    // the other, so either would silently change what a user sees.
    let directives: Vec<&str> = v
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .collect();
    if let Some(d) = directives.iter().find(|d| d.contains(['[', '{', '"'])) {
        return (
            info,
            refuse(&format!(
                "{d:?}: span and field filters are not supported; name a module"
            )),
        );
    }
    if let Some(d) = directives.iter().find(|d| d.ends_with('=')) {
        return (info, refuse(&format!("{d:?} names no level")));
    }
    match directives.join(",").parse::<Targets>() {
        Ok(t) => (t, None),
        Err(e) => (info, refuse(&e.to_string())),
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::level_filters::LevelFilter;
    use tracing::Level;

    #[test]
    fn the_log_filter_takes_levels_and_levels_per_module() {
        let (t, refused) = log_filter(None);
        assert!(refused.is_none());
        assert!(t.would_enable("lifeboat", &Level::INFO));
        assert!(!t.would_enable("lifeboat", &Level::DEBUG));

        // A trailing or doubled comma is not a directive of its own.
        let (t, refused) = log_filter(Some("debug,"));
        assert!(refused.is_none());
        assert!(t.would_enable("lifeboat", &Level::DEBUG));
        let (t, _) = log_filter(Some("info,,lifeboat=debug"));
        assert!(t.would_enable("aws_sdk_s3", &Level::INFO));
        assert!(t.would_enable("lifeboat", &Level::DEBUG));

        let (t, refused) = log_filter(Some("DEBUG"));
        assert!(refused.is_none());
        assert!(t.would_enable("aws_sdk_s3", &Level::DEBUG));

        let (t, _) = log_filter(Some("warn,lifeboat::store=trace"));
        assert!(t.would_enable("lifeboat::store::s3", &Level::TRACE));
        assert!(!t.would_enable("lifeboat::backup", &Level::INFO));
        assert_eq!(
            log_filter(Some("off")).0.default_level(),
            Some(LevelFilter::OFF)
        );
    }

    #[test]
    fn a_wrong_log_filter_logs_at_info_and_says_why() {
        for (value, named) in [
            ("info,[backup]=debug", "span and field filters"),
            ("lifeboat[restore]=trace", "span and field filters"),
            ("lifeboat=", "names no level"),
        ] {
            let (t, refused) = log_filter(Some(value));
            assert!(t.would_enable("lifeboat", &Level::INFO));
            assert!(refused.expect(value).contains(named), "{value}");
        }
        let (t, refused) = log_filter(Some("lifeboat=loud"));
        assert!(t.would_enable("lifeboat", &Level::INFO));
        let why = refused.expect("refused");
        assert!(why.contains("LIFEBOAT_LOG=\"lifeboat=loud\""), "{why}");
        assert!(why.contains("info,lifeboat=debug"), "{why}");
    }
}
