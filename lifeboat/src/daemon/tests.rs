//! The run loop's decisions on tokio's paused clock, with a wall clock that
//! follows it and work that only records what it was asked: no process,
//! no target, no real time.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{sleep, Instant};

use super::annotations::Annotations;
use super::run_loop::Daemon;
use super::serve::Reply;
use super::{Clock, Open, Shutdown, Work};
use crate::config::{Inputs, Role, Settings};
use crate::manifest::Manifest;
use crate::progress::Cancel;
use crate::status::Status;
use crate::{Error, Result};

/// The wall clock at `base` when the test starts, moving with tokio's clock.
struct TestClock {
    base: DateTime<Utc>,
    start: Instant,
}

impl Clock for TestClock {
    fn now(&self) -> DateTime<Utc> {
        self.base + chrono::Duration::from_std(self.start.elapsed()).unwrap()
    }
}

/// What the loop asked of the fake work, with wall-clock times.
#[derive(Default)]
struct Log {
    backups: Vec<DateTime<Utc>>,
    verifies: Vec<DateTime<Utc>>,
    cancelled: usize,
    /// The schedule of each set of settings work was opened for.
    opened: Vec<String>,
}

struct Fake {
    log: Arc<Mutex<Log>>,
    clock: Arc<TestClock>,
    /// How long a backup takes.
    takes: Duration,
}

impl Work for Fake {
    async fn backup(self: &Arc<Self>, cancel: Cancel) -> Result<Manifest> {
        let started = self.clock.now();
        let n = {
            let mut log = self.log.lock().unwrap();
            log.backups.push(started);
            log.backups.len()
        };
        // Looks at the cancel flag as a source does, between pieces of work.
        let end = Instant::now() + self.takes;
        while Instant::now() < end {
            if cancel.load(std::sync::atomic::Ordering::Relaxed) {
                self.log.lock().unwrap().cancelled += 1;
                return Err(Error::Cancelled);
            }
            sleep(Duration::from_millis(100)).await;
        }
        Ok(manifest(n, started, self.clock.now()))
    }

    async fn verify_newest(&self, _status: &Status, clock: &dyn Clock) {
        self.log.lock().unwrap().verifies.push(clock.now());
    }

    fn has_secondaries(&self) -> bool {
        false
    }

    async fn sync_secondaries(&self) -> Vec<usize> {
        vec![]
    }

    fn backlog(&self) -> Vec<usize> {
        vec![]
    }

    async fn refresh(&self, _status: &Status) {}
}

struct FakeOpen {
    log: Arc<Mutex<Log>>,
    clock: Arc<TestClock>,
    takes: Duration,
}

impl Open for FakeOpen {
    type Work = Fake;

    async fn open(&self, settings: &Settings) -> Arc<Fake> {
        let schedule = settings.schedule.as_str().to_string();
        self.log.lock().unwrap().opened.push(schedule);
        Arc::new(Fake {
            log: self.log.clone(),
            clock: self.clock.clone(),
            takes: self.takes,
        })
    }
}

fn manifest(n: usize, started_at: DateTime<Utc>, finished_at: DateTime<Utc>) -> Manifest {
    let id = format!("{}-files", started_at.format("%Y%m%dT%H%M%SZ"));
    Manifest {
        format: crate::manifest::FORMAT.into(),
        artifact: format!("{id}.tar.zst"),
        id,
        name: "web-0".into(),
        namespace: "default".into(),
        source: crate::source::SourceKind::Files,
        layout: Default::default(),
        paths: vec!["/data".into()],
        started_at,
        finished_at,
        compression: "zstd:3".into(),
        encryption: "none".into(),
        recipients: vec![],
        size: n as u64,
        sha256: String::new(),
        entries: 1,
        bytes_in: 0,
        warnings: vec![],
        tool_version: crate::TOOL_VERSION.into(),
        source_meta: serde_json::Value::Null,
        kubernetes: None,
        level: 0,
        base: None,
        chain: None,
        state: None,
        wal: None,
    }
}

/// A loop and the handles a test drives it with.
/// What a test drives the loop with, and sees it by.
struct Handles {
    requests: mpsc::Sender<Reply>,
    shutdown: mpsc::UnboundedSender<()>,
    annotations: watch::Sender<BTreeMap<String, String>>,
    log: Arc<Mutex<Log>>,
    status: Arc<Status>,
}

type Answer = oneshot::Receiver<std::result::Result<Manifest, String>>;

impl Handles {
    /// Asks for a backup as `POST /backup-now` does; the answer comes later.
    async fn ask(&self) -> Answer {
        let (tx, rx) = oneshot::channel();
        self.requests.send(tx).await.unwrap();
        rx
    }

    /// Sets the pod's `lifeboat.dev/*` annotations, as the API watch does.
    fn annotate(&self, pairs: &[(&str, &str)]) {
        let all = pairs
            .iter()
            .map(|(k, v)| (format!("lifeboat.dev/{k}"), v.to_string()))
            .collect();
        self.annotations.send(all).unwrap();
    }

    fn stop(&self) {
        self.shutdown.send(()).unwrap();
    }

    fn log(&self) -> std::sync::MutexGuard<'_, Log> {
        self.log.lock().unwrap()
    }

    fn backups(&self) -> Vec<DateTime<Utc>> {
        self.log().backups.clone()
    }

    fn trigger(&self) -> Option<String> {
        self.status.snapshot().last_attempt.map(|a| a.trigger)
    }

    fn schedule(&self) -> String {
        self.status.snapshot().schedule
    }
}

/// Wall-clock time on the test's day.
fn at(h: u32, m: u32, s: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 20, h, m, s).unwrap()
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// The loop as it runs after start-up, at wall-clock `base`, with `env`
/// over a minimal valid configuration; annotations come through a watch
/// channel as they do from the API. Each backup takes `takes`.
async fn harness(
    base: DateTime<Utc>,
    env: &[(&str, &str)],
    takes: Duration,
) -> (Daemon<FakeOpen>, Handles) {
    let vars: BTreeMap<String, String> = [
        ("LIFEBOAT_PATHS", "/data"),
        ("LIFEBOAT_TARGETS", "file:///backup"),
        ("HOSTNAME", "web-0"),
        ("LIFEBOAT_ANNOTATIONS_FILE", "/nonexistent/annotations"),
    ]
    .iter()
    .chain(env)
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let inputs = Inputs::from_env(vars);
    let settings = Settings::from_inputs(&inputs, Role::Backup).unwrap();
    let clock = Arc::new(TestClock {
        base,
        start: Instant::now(),
    });
    let log = Arc::new(Mutex::new(Log::default()));
    let open = FakeOpen {
        log: log.clone(),
        clock: clock.clone(),
        takes,
    };
    let work = open.open(&settings).await;
    let status = Arc::new(Status::new(&settings, clock.now()));
    let (request_tx, requests) = mpsc::channel(super::REQUEST_QUEUE);
    let (shutdown_tx, shutdown) = Shutdown::channel();
    let (annotations_tx, from_api) = watch::channel(BTreeMap::new());
    let daemon = Daemon {
        component: "test",
        open,
        clock,
        settings,
        work,
        status: status.clone(),
        requests,
        shutdown,
        annotations: Annotations::new(inputs, Some(from_api)),
        drills: Default::default(),
        wal: Default::default(),
    };
    let handles = Handles {
        requests: request_tx,
        shutdown: shutdown_tx,
        annotations: annotations_tx,
        log,
        status,
    };
    (daemon, handles)
}

/// Runs the loop beside `script`, then asks it to shut down (if the
/// script has not) and waits for it. Returns how long the loop ran.
async fn drive(
    daemon: &mut Daemon<FakeOpen>,
    h: &Handles,
    script: impl std::future::Future<Output = ()>,
) -> Duration {
    let start = Instant::now();
    let (ran, ()) = tokio::join!(
        async {
            daemon.run().await;
            start.elapsed()
        },
        async {
            script.await;
            h.stop();
        }
    );
    ran
}

/// A `backup-now` request 1 s into the test, which starts a backup; then
/// `wait` more.
async fn request_at_1s(h: &Handles, wait: Duration) -> Answer {
    sleep(secs(1)).await;
    let answer = h.ask().await;
    sleep(wait).await;
    answer
}

const BY_ANNOTATION: Option<&str> = Some("annotation lifeboat.dev/backup-now");

#[tokio::test(start_paused = true)]
async fn scheduled_backup_starts_at_the_scheduled_wall_clock_time() {
    let (mut daemon, h) = harness(at(1, 59, 0), &[], secs(1)).await;
    assert_eq!(
        h.status.snapshot().next_run,
        None,
        "not before the loop runs"
    );
    drive(&mut daemon, &h, async {
        sleep(secs(30)).await;
        assert_eq!(h.status.snapshot().next_run, Some(at(2, 0, 0)));
        assert!(h.backups().is_empty());
        sleep(Duration::from_millis(61_500)).await;
        assert_eq!(h.backups(), vec![at(2, 0, 0)]);
        assert_eq!(h.trigger().as_deref(), Some("schedule"));
        let st = h.status.snapshot();
        assert_eq!(st.backups.success, 1);
        assert_eq!(st.next_run, Some(at(2, 0, 0) + chrono::Duration::days(1)));
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn backup_now_requests_during_a_backup_join_it() {
    let (mut daemon, h) = harness(at(10, 0, 0), &[], secs(60)).await;
    drive(&mut daemon, &h, async {
        let first = request_at_1s(&h, secs(10)).await;
        assert_eq!(h.status.snapshot().running.map(|r| r.work), Some("backup"));
        let second = h.ask().await;
        sleep(secs(10)).await;
        let third = h.ask().await;
        let ids: Vec<String> = [first.await, second.await, third.await]
            .into_iter()
            .map(|r| r.unwrap().unwrap().id)
            .collect();
        assert_eq!(ids, vec!["20261120T100001Z-files".to_string(); 3]);
        assert_eq!(h.backups(), vec![at(10, 0, 1)]);
        // The next request starts a backup of its own.
        let fourth = h.ask().await.await.unwrap().unwrap();
        assert_eq!(fourth.id, "20261120T100101Z-files");
        assert_eq!(h.status.snapshot().backups.success, 2);
        assert_eq!(h.trigger().as_deref(), Some("backup-now request"));
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn annotations_during_a_backup_backup_now_joins_it_and_the_rest_waits() {
    let (mut daemon, h) = harness(at(10, 0, 0), &[], secs(60)).await;
    assert_eq!(h.schedule(), "0 2 * * *");
    drive(&mut daemon, &h, async {
        let first = request_at_1s(&h, secs(10)).await;
        h.annotate(&[("backup-now", "a"), ("schedule", "30 4 * * *")]);
        sleep(secs(20)).await;
        // Seen, but held: the settings in force stay until the backup ends.
        assert_eq!(h.schedule(), "0 2 * * *");
        assert_eq!(h.log().opened.len(), 1);
        assert!(first.await.unwrap().is_ok());
        sleep(secs(10)).await;
        assert_eq!(h.backups().len(), 1, "the running backup served backup-now");
        assert_eq!(h.log().opened, vec!["0 2 * * *", "30 4 * * *"]);
        assert_eq!(h.schedule(), "30 4 * * *");
        let next = at(4, 30, 0) + chrono::Duration::days(1);
        assert_eq!(h.status.snapshot().next_run, Some(next));
        sleep(secs(60)).await;
        assert_eq!(h.backups().len(), 1, "served once");
        // A new value is a new request.
        h.annotate(&[("backup-now", "b"), ("schedule", "30 4 * * *")]);
        sleep(secs(70)).await;
        assert_eq!(h.backups().len(), 2);
        assert_eq!(h.trigger().as_deref(), BY_ANNOTATION);
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn backup_now_annotation_is_served_while_another_annotation_is_invalid() {
    let (mut daemon, h) = harness(at(10, 0, 0), &[], secs(1)).await;
    drive(&mut daemon, &h, async {
        sleep(secs(1)).await;
        h.annotate(&[("backup-now", "x"), ("schedule", "not a schedule")]);
        sleep(secs(10)).await;
        assert_eq!(h.backups().len(), 1);
        assert_eq!(h.trigger().as_deref(), BY_ANNOTATION);
        // The previous settings stay in force ...
        assert_eq!(h.schedule(), "0 2 * * *");
        assert_eq!(h.log().opened.len(), 1);
        // ... and the request is served once, not at every poll.
        sleep(secs(60)).await;
        assert_eq!(h.backups().len(), 1);
        // Fixed: the settings are taken, and the value already served
        // starts nothing.
        h.annotate(&[("backup-now", "x"), ("schedule", "30 4 * * *")]);
        sleep(secs(60)).await;
        assert_eq!(h.schedule(), "30 4 * * *");
        assert_eq!(h.log().opened.len(), 2);
        assert_eq!(h.backups().len(), 1);
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn verification_runs_on_its_own_schedule_and_backups_follow_a_new_schedule() {
    let env = [
        ("LIFEBOAT_SCHEDULE", "0 3 * * *"),
        ("LIFEBOAT_VERIFY_SCHEDULE", "30 2 * * *"),
    ];
    let (mut daemon, h) = harness(at(2, 0, 0), &env, secs(1)).await;
    drive(&mut daemon, &h, async {
        sleep(secs(30 * 60 + 5)).await;
        assert_eq!(h.log().verifies, vec![at(2, 30, 0)]);
        assert!(h.backups().is_empty());
        assert!(h.status.snapshot().running.is_none());
        sleep(secs(30 * 60)).await;
        assert_eq!(h.backups(), vec![at(3, 0, 0)]);
        // A schedule annotation moves the next backup; verification keeps its time.
        h.annotate(&[("schedule", "15 3 * * *")]);
        sleep(secs(15 * 60)).await;
        assert_eq!(h.backups(), vec![at(3, 0, 0), at(3, 15, 0)]);
        assert_eq!(h.log().verifies, vec![at(2, 30, 0)]);
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_while_idle_exits_at_once() {
    let (mut daemon, h) = harness(at(10, 0, 0), &[], secs(1)).await;
    let ran = drive(&mut daemon, &h, async {
        sleep(secs(3)).await;
    })
    .await;
    assert_eq!(ran, secs(3));
    assert!(h.backups().is_empty());
}

#[tokio::test(start_paused = true)]
async fn shutdown_during_a_backup_grants_the_grace_period_then_cancels() {
    let env = [("LIFEBOAT_GRACE_PERIOD", "20s")];
    let (mut daemon, h) = harness(at(10, 0, 0), &env, secs(3600)).await;
    let mut answer = None;
    let ran = drive(&mut daemon, &h, async {
        let waiting = request_at_1s(&h, secs(9)).await;
        h.stop();
        sleep(secs(19)).await;
        assert_eq!(h.log().cancelled, 0, "still within the grace period");
        answer = Some(waiting.await.unwrap());
    })
    .await;
    // Cancelled 20 s after the request, seen within the fake's 100 ms step.
    let (from, to) = (secs(30), Duration::from_millis(30_100));
    assert!(ran >= from && ran <= to, "{ran:?}");
    assert_eq!(h.log().cancelled, 1);
    let e = answer.unwrap().unwrap_err();
    assert_eq!(e, Error::Cancelled.to_string());
    let st = h.status.snapshot();
    assert_eq!((st.backups.success, st.backups.failure), (0, 1));
}

#[tokio::test(start_paused = true)]
async fn a_second_shutdown_cancels_the_backup_at_once() {
    let (mut daemon, h) = harness(at(10, 0, 0), &[], secs(3600)).await;
    let ran = drive(&mut daemon, &h, async {
        let waiting = request_at_1s(&h, secs(4)).await;
        h.stop();
        sleep(secs(5)).await;
        h.stop();
        assert!(waiting.await.unwrap().is_err());
    })
    .await;
    let (from, to) = (secs(10), Duration::from_millis(10_100));
    assert!(ran >= from && ran <= to, "{ran:?}");
    assert_eq!(h.log().cancelled, 1);
}

/// `LIFEBOAT_BACKUP_AT_START=on`: a history with no backup (a first
/// deploy) or one whose newest backup predates the last scheduled run (the
/// pod was down at 02:00) is backed up as the loop starts; one that is up
/// to date is not, and the schedule goes on as before.
#[tokio::test(start_paused = true)]
async fn at_start_a_missing_or_missed_backup_is_taken_at_once() {
    let on = [("LIFEBOAT_BACKUP_AT_START", "on")];
    let (mut daemon, h) = harness(at(9, 0, 0), &on, secs(1)).await;
    drive(&mut daemon, &h, async {
        sleep(secs(5)).await;
        assert_eq!(h.backups(), vec![at(9, 0, 0)]);
        assert_eq!(
            h.trigger().as_deref(),
            Some("start (LIFEBOAT_BACKUP_AT_START)")
        );
        assert_eq!(
            h.status.snapshot().next_run,
            Some(at(2, 0, 0) + chrono::Duration::days(1))
        );
    })
    .await;

    for (newest, taken) in [(at(1, 0, 0), true), (at(2, 0, 5), false)] {
        let (mut daemon, h) = harness(at(9, 0, 0), &on, secs(1)).await;
        let m = manifest(1, newest, newest + chrono::Duration::minutes(1));
        h.status.backup_finished("schedule", newest, Ok(&m), newest);
        drive(&mut daemon, &h, async {
            sleep(secs(5)).await;
            assert_eq!(!h.backups().is_empty(), taken, "newest at {newest}");
        })
        .await;
    }

    // Off (the default): nothing at start, even with no backup at all.
    let (mut daemon, h) = harness(at(9, 0, 0), &[], secs(1)).await;
    drive(&mut daemon, &h, async {
        sleep(secs(5)).await;
        assert!(h.backups().is_empty());
    })
    .await;
}
