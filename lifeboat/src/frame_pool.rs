//! Compresses a byte stream on worker threads, as independent zstd frames
//! of one job each, written out in the order the bytes came.
//!
//! Why not zstd's own threads (ZSTDMT): there a job reaches a worker only
//! from inside a call of the thread that feeds it, and that thread, once
//! every slot is taken, waits for the *oldest* job. A worker that finished a
//! later job sits idle until then. On 2 cores zstd's two workers were busy
//! 64 % of a backup of text, the cores 75 % (`perf`, 100 ms buckets), where
//! `tar | zstd -T0` keeps them at 95 %. Here the workers take the next job
//! from a queue themselves, and the feeding thread waits only when
//! [`FramePool::in_flight_max`] jobs are out (frames done but not yet
//! written count: it then waits for the oldest, which the one waiting job
//! keeps from idling a worker).
//!
//! A frame per job is what ZSTDMT's jobs were already: each started with an
//! empty history (`compression::ZSTD_JOB_SIZE`); a frame adds its header,
//! a few bytes per job. `zstd -dc` reads the frames as one stream
//! (docs/ARCHITECTURE.md, "Being changed", issue 26).

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// A job's bytes and the buffer its frame goes into.
struct Job {
    seq: u64,
    input: Vec<u8>,
    output: Vec<u8>,
}

/// A job compressed: its buffers back, the frame in `output`.
struct Done {
    seq: u64,
    input: Vec<u8>,
    output: io::Result<Vec<u8>>,
}

pub struct FramePool {
    /// `None` once the pool is being dropped: the workers then end.
    jobs: Option<Sender<Job>>,
    done: Receiver<Done>,
    workers: Vec<JoinHandle<()>>,
    job_size: usize,
    /// Bytes gathered for the next job.
    filling: Vec<u8>,
    /// The sequence number of the next job sent, and of the next frame to
    /// write: the jobs out are the ones between.
    sent: u64,
    written: u64,
    /// Frames done before the ones ahead of them.
    early: BTreeMap<u64, Vec<u8>>,
    /// Buffers back from the workers, to be filled again: fresh ones would
    /// be fresh pages to fault in for every job.
    spare_inputs: Vec<Vec<u8>>,
    spare_outputs: Vec<Vec<u8>>,
}

impl FramePool {
    /// `workers` threads compressing at `level`, each job `job_size` bytes.
    pub fn new(level: i32, workers: u32, job_size: usize) -> io::Result<Self> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let (done_tx, done) = mpsc::channel();
        let queue = Arc::new(Mutex::new(queue));
        let mut handles = Vec::new();
        for _ in 0..workers.max(1) {
            let compressor = zstd::bulk::Compressor::new(level)?;
            let (queue, done_tx) = (queue.clone(), done_tx.clone());
            handles.push(
                std::thread::Builder::new()
                    .name("lifeboat-zstd".into())
                    .spawn(move || work(compressor, &queue, &done_tx))?,
            );
        }
        Ok(FramePool {
            jobs: Some(jobs),
            done,
            workers: handles,
            job_size,
            filling: Vec::with_capacity(job_size),
            sent: 0,
            written: 0,
            early: BTreeMap::new(),
            spare_inputs: Vec::new(),
            spare_outputs: Vec::new(),
        })
    }

    /// Jobs that may be out at once: one for each worker, and one waiting,
    /// so a worker that finishes finds its next job there. Each holds its
    /// input and its frame. (Two waiting were no faster on 2 cores, and
    /// none was 12 % slower: a backup of the bench's notebooks.)
    pub fn in_flight_max(&self) -> usize {
        self.workers.len() + 1
    }

    /// Takes up to a job's worth of `buf`; writes to `out`, in order, the
    /// frames that are done. Returns how much of `buf` it took.
    pub fn write(&mut self, buf: &[u8], out: &mut impl Write) -> io::Result<usize> {
        let n = buf.len().min(self.job_size - self.filling.len());
        self.filling.extend_from_slice(&buf[..n]);
        if self.filling.len() == self.job_size {
            self.send(out)?;
        }
        Ok(n)
    }

    /// Compresses what is gathered and writes every frame still out: the
    /// stream so far is whole frames in `out`.
    pub fn drain(&mut self, out: &mut impl Write) -> io::Result<()> {
        if !self.filling.is_empty() {
            self.send(out)?;
        }
        while self.written < self.sent {
            self.write_next(out)?;
        }
        Ok(())
    }

    /// Sends the gathered bytes as a job, once there is room for one.
    fn send(&mut self, out: &mut impl Write) -> io::Result<()> {
        while (self.sent - self.written) as usize >= self.in_flight_max() {
            self.write_next(out)?;
        }
        self.write_ready(out)?;
        let next = self
            .spare_inputs
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(self.job_size));
        let job = Job {
            seq: self.sent,
            input: std::mem::replace(&mut self.filling, next),
            output: self.spare_outputs.pop().unwrap_or_default(),
        };
        let sent = self.jobs.as_ref().map(|jobs| jobs.send(job).is_ok());
        if sent != Some(true) {
            return Err(io::Error::other("the zstd workers stopped"));
        }
        self.sent += 1;
        Ok(())
    }

    /// Writes the frames done, in order, without waiting.
    fn write_ready(&mut self, out: &mut impl Write) -> io::Result<()> {
        while let Ok(done) = self.done.try_recv() {
            self.keep(done)?;
        }
        while let Some(frame) = self.early.remove(&self.written) {
            self.put(frame, out)?;
        }
        Ok(())
    }

    /// Waits for the next frame in order and writes it.
    fn write_next(&mut self, out: &mut impl Write) -> io::Result<()> {
        loop {
            if let Some(frame) = self.early.remove(&self.written) {
                return self.put(frame, out);
            }
            let done = self
                .done
                .recv()
                .map_err(|_| io::Error::other("the zstd workers stopped"))?;
            self.keep(done)?;
        }
    }

    fn keep(&mut self, done: Done) -> io::Result<()> {
        let mut input = done.input;
        input.clear();
        self.spare_inputs.push(input);
        self.early.insert(done.seq, done.output?);
        Ok(())
    }

    fn put(&mut self, frame: Vec<u8>, out: &mut impl Write) -> io::Result<()> {
        out.write_all(&frame)?;
        self.written += 1;
        self.spare_outputs.push(frame);
        Ok(())
    }
}

impl Drop for FramePool {
    fn drop(&mut self) {
        // Without a sender the workers' queue ends: each finishes the job
        // in hand (a job is at most milliseconds) and returns.
        self.jobs = None;
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

/// A worker: the next job from the queue, compressed into a frame of its own.
fn work(
    mut compressor: zstd::bulk::Compressor<'static>,
    queue: &Mutex<Receiver<Job>>,
    done: &Sender<Done>,
) {
    loop {
        let job = match queue.lock() {
            Ok(queue) => queue.recv(),
            Err(_) => return,
        };
        let Ok(Job {
            seq,
            input,
            mut output,
        }) = job
        else {
            return;
        };
        output.clear();
        output.reserve(zstd::zstd_safe::compress_bound(input.len()));
        // Where panics unwind (tests; release builds abort), a panic here
        // would leave the feeding thread waiting for this frame for ever:
        // it becomes the job's error instead.
        let made = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            compressor.compress_to_buffer(&input[..], &mut output)
        }));
        let output = match made {
            Ok(Ok(_)) => Ok(output),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(io::Error::other("a zstd worker failed")),
        };
        if done.send(Done { seq, input, output }).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(n: usize) -> Vec<u8> {
        (0..n)
            .map(|i| b"lifeboat keeps the data of stateful pods "[i % 41] ^ (i / 4096) as u8)
            .collect()
    }

    #[test]
    fn frames_come_out_in_order_and_read_back_as_one_stream() {
        let data = text(10 << 20 | 12345);
        let mut pool = FramePool::new(3, 3, 64 << 10).unwrap();
        let mut out = Vec::new();
        let mut at = 0;
        // Uneven writes: a job is filled across calls.
        for step in [1usize, 7000, 100_000, 3 << 20].iter().cycle() {
            if at == data.len() {
                break;
            }
            let end = (at + step).min(data.len());
            while at < end {
                at += pool.write(&data[at..end], &mut out).unwrap();
            }
        }
        pool.drain(&mut out).unwrap();
        assert!(out.len() < data.len() / 4, "{} bytes", out.len());
        let back = zstd::stream::decode_all(&out[..]).unwrap();
        assert!(back == data, "the stream read back differs");
    }

    #[test]
    fn a_drain_leaves_whole_frames_and_the_pool_goes_on() {
        let mut pool = FramePool::new(3, 2, 1 << 20).unwrap();
        let mut out = Vec::new();
        pool.write(b"first", &mut out).unwrap();
        pool.drain(&mut out).unwrap();
        assert_eq!(zstd::stream::decode_all(&out[..]).unwrap(), b"first");
        pool.write(b" second", &mut out).unwrap();
        pool.drain(&mut out).unwrap();
        pool.drain(&mut out).unwrap();
        assert_eq!(zstd::stream::decode_all(&out[..]).unwrap(), b"first second");
    }

    #[test]
    fn a_failed_write_of_a_frame_is_an_error() {
        struct Refuses;
        impl Write for Refuses {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::other("disk on fire"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut pool = FramePool::new(3, 2, 4096).unwrap();
        pool.write(&text(4096), &mut Refuses).unwrap();
        assert!(pool.drain(&mut Refuses).is_err());
    }
}
