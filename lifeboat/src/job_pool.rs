//! Runs small jobs on helper threads, in any order, and says how far the
//! jobs are done *in order*: "every job before number N has ended". A restore
//! hands it the writing of small files (docs/ARCHITECTURE.md, "Restore"),
//! so the thread walking the tar reads on while files are created and
//! written; what must wait for a folder's files (its metadata, a hard link
//! to one of them) waits for that number.
//!
//! Bounded: at most `max_jobs` jobs and `max_cost` bytes are out at once;
//! [`JobPool::submit`] waits for room. The first job that fails stops the
//! rest (they are dropped unrun) and its error is what the next call
//! returns: a restore that failed is thrown away whole.

use std::collections::BTreeSet;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use crate::{Error, Result};

type Work = Box<dyn FnOnce() -> Result<()> + Send>;

struct Job {
    seq: u64,
    cost: usize,
    work: Work,
}

#[derive(Default)]
struct State {
    /// Every job numbered below this has ended.
    done_below: u64,
    /// Jobs ended ahead of one before them.
    early: BTreeSet<u64>,
    cost_out: usize,
    failed: Option<Error>,
    /// Set once a job failed: the jobs still queued are dropped unrun.
    stop: bool,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A job that panicked poisons nothing we rely on: the counters are
        // updated after the job, outside it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub struct JobPool {
    /// Each thread's queue; emptied when the pool is dropped: the threads
    /// then end.
    lanes: Vec<Sender<Job>>,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    submitted: u64,
    max_jobs: u64,
    max_cost: usize,
}

impl JobPool {
    /// `threads` helper threads named `name`; at most `max_jobs` jobs and
    /// `max_cost` bytes of them out at once (one job may cost more: it then
    /// goes out alone).
    pub fn new(name: &str, threads: usize, max_jobs: usize, max_cost: usize) -> Result<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        });
        let (mut handles, mut lanes) = (Vec::new(), Vec::new());
        for _ in 0..threads.max(1) {
            let (lane, queue) = mpsc::channel::<Job>();
            let shared = shared.clone();
            let spawned = std::thread::Builder::new()
                .name(name.into())
                .spawn(move || work(&queue, &shared));
            match spawned {
                Ok(h) => {
                    handles.push(h);
                    lanes.push(lane);
                }
                // Fewer helpers are only slower; none at all is an error.
                Err(e) if handles.is_empty() => {
                    return Err(Error::io(format!("starting a {name} thread"), e))
                }
                Err(_) => break,
            }
        }
        Ok(JobPool {
            lanes,
            shared,
            threads: handles,
            submitted: 0,
            max_jobs: max_jobs.max(1) as u64,
            max_cost,
        })
    }

    /// Queues `work` in lane `lane`, waiting first for room. Jobs of one
    /// lane run one after the other on one thread, in turn (a restore's
    /// lane is the folder: files created in one folder at once only wait
    /// for each other on the folder's lock, spinning). Returns its number,
    /// or the error of a job that failed before.
    pub fn submit(
        &mut self,
        cost: usize,
        lane: u64,
        work: impl FnOnce() -> Result<()> + Send + 'static,
    ) -> Result<u64> {
        let seq = self.submitted;
        {
            let mut s = self.wait_while(|s, pool| {
                let out = seq - s.done_below;
                out > 0 && (out >= pool.max_jobs || s.cost_out + cost > pool.max_cost)
            })?;
            s.cost_out += cost;
        }
        let job = Job {
            seq,
            cost,
            work: Box::new(work),
        };
        let n = self.lanes.len() as u64;
        self.lanes[(lane % n) as usize]
            .send(job)
            .map_err(|_| Error::Internal("the file writing threads have ended".into()))?;
        self.submitted += 1;
        Ok(seq)
    }

    /// The number the next job will get: waiting for it to be reached by
    /// [`Self::done_below`] waits for every job queued so far.
    pub fn next_seq(&self) -> u64 {
        self.submitted
    }

    /// Every job numbered below this has ended; or the error of one that
    /// failed.
    pub fn done_below(&self) -> Result<u64> {
        self.wait_while(|_, _| false).map(|s| s.done_below)
    }

    /// Waits until every job numbered below `seq` has ended. Returns the
    /// error of one that failed.
    pub fn wait_for(&mut self, seq: u64) -> Result<()> {
        let seq = seq.min(self.submitted);
        self.wait_while(|s, _| s.done_below < seq).map(|_| ())
    }

    /// Waits while `blocked` holds, or returns the first failure.
    fn wait_while(
        &self,
        blocked: impl Fn(&State, &JobPool) -> bool,
    ) -> Result<MutexGuard<'_, State>> {
        let mut s = self.shared.lock();
        loop {
            if let Some(e) = s.failed.take() {
                // Kept failing: the pool never runs a job again.
                s.failed = Some(Error::Internal(format!(
                    "an earlier file write failed: {e}"
                )));
                return Err(e);
            }
            if s.stop {
                return Err(Error::Internal("an earlier file write failed".into()));
            }
            if !blocked(&s, self) {
                return Ok(s);
            }
            s = self
                .shared
                .changed
                .wait(s)
                .unwrap_or_else(|p| p.into_inner());
        }
    }
}

impl Drop for JobPool {
    fn drop(&mut self) {
        // Jobs still queued are not run: dropping without waiting means
        // the restore is being abandoned.
        self.shared.lock().stop = true;
        self.lanes.clear();
        for h in self.threads.drain(..) {
            let _ = h.join();
        }
    }
}

fn work(queue: &Receiver<Job>, shared: &Shared) {
    loop {
        let Ok(job) = queue.recv() else { return };
        let stopped = shared.lock().stop;
        // Where panics unwind (tests; release builds abort), a panic in a
        // job would leave the walk waiting for it for ever: it becomes the
        // job's error instead.
        let result = match stopped {
            true => Ok(()),
            false => std::panic::catch_unwind(std::panic::AssertUnwindSafe(job.work))
                .unwrap_or_else(|_| Err(Error::Internal("a file writing thread crashed".into()))),
        };
        let mut s = shared.lock();
        s.cost_out -= job.cost;
        if let Err(e) = result {
            if !s.stop {
                s.failed = Some(e);
                s.stop = true;
            }
        }
        if job.seq == s.done_below {
            s.done_below += 1;
            loop {
                let next = s.done_below;
                if !s.early.remove(&next) {
                    break;
                }
                s.done_below += 1;
            }
        } else {
            s.early.insert(job.seq);
        }
        drop(s);
        shared.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[test]
    fn done_below_counts_in_order_whatever_order_jobs_end() {
        let mut pool = JobPool::new("test", 3, 8, 1 << 20).unwrap();
        let ran = Arc::new(AtomicUsize::new(0));
        for i in 0..40u64 {
            let ran = ran.clone();
            pool.submit(1, i, move || {
                // Later jobs end first now and then.
                std::thread::sleep(Duration::from_millis((40 - i) % 3));
                ran.fetch_add(1, Ordering::SeqCst);
                Ok(())
            })
            .unwrap();
            assert!(pool.done_below().unwrap() <= pool.next_seq());
        }
        pool.wait_for(pool.next_seq()).unwrap();
        assert_eq!(pool.done_below().unwrap(), 40);
        assert_eq!(ran.load(Ordering::SeqCst), 40);
    }

    /// The most jobs of `cost` that ran at once, of `n` queued.
    fn most_at_once(mut pool: JobPool, n: usize, cost: usize) -> usize {
        let out = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        for k in 0..n {
            let (out, most) = (out.clone(), most.clone());
            pool.submit(cost, k as u64, move || {
                let now = out.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(1));
                out.fetch_sub(1, Ordering::SeqCst);
                Ok(())
            })
            .unwrap();
        }
        pool.wait_for(u64::MAX).unwrap();
        most.load(Ordering::SeqCst)
    }

    #[test]
    fn no_more_than_the_bounds_are_out() {
        let by_count = JobPool::new("test", 4, 3, 1 << 20).unwrap();
        assert!(most_at_once(by_count, 30, 1) <= 3);
        // By cost: two jobs of 6 with room for 10 never run together.
        let by_cost = JobPool::new("test", 4, 100, 10).unwrap();
        assert_eq!(most_at_once(by_cost, 10, 6), 1);
    }

    #[test]
    fn a_failed_job_is_the_next_answer_and_stops_the_rest() {
        let mut pool = JobPool::new("test", 2, 4, 1 << 20).unwrap();
        let ran = Arc::new(AtomicUsize::new(0));
        pool.submit(1, 0, || Err(Error::Internal("disk on fire".into())))
            .unwrap();
        let mut failed = None;
        for _ in 0..20 {
            let ran = ran.clone();
            let r = pool.submit(1, 0, move || {
                ran.fetch_add(1, Ordering::SeqCst);
                Ok(())
            });
            if let Err(e) = r {
                failed = Some(e);
                break;
            }
        }
        let failed = match failed {
            Some(e) => e,
            None => pool.wait_for(u64::MAX).unwrap_err(),
        };
        assert!(failed.to_string().contains("disk on fire"), "{failed}");
        // And it stays failed.
        assert!(pool.wait_for(u64::MAX).is_err());
        assert!(pool.submit(1, 0, || Ok(())).is_err());
    }
}
