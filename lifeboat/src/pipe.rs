//! The bounded pipe between the synchronous tar/compression thread and the
//! async target I/O, plus hashing wrappers. When the consumer is slow the
//! producer blocks; nothing is dropped and nothing grows.

use std::io::{self, Read, Write};

use sha2::{Digest, Sha256};

use crate::aligned::AlignedBuf;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;

/// Bytes in one chunk handed across the pipe. 1 MiB keeps per-chunk overhead
/// (a channel send, a write call) negligible next to the I/O it carries.
pub const CHUNK_SIZE: usize = 1 << 20;

/// Chunks that may wait in the pipe. With the one being filled and the one
/// being written, a pipe holds at most `(QUEUE_DEPTH + 2) * CHUNK_SIZE` = 4 MiB,
/// whatever the size of the data (a recycling writer's pipe one chunk more:
/// see [`ChunkWriter::recycling`]; a folder target's two more, the chunk
/// handed to its write and the one its write-behind thread writes while
/// the next is hashed).
///
/// Two, not more: an S3 target copies the chunks into parts, which are
/// a buffer of their own, and at four the pipe's chunks were what took a
/// backup of small files and text to S3 past 48 MiB (README "Bounds").
pub const QUEUE_DEPTH: usize = 2;

/// Chunks of an artifact read ahead of restore's decompression: reading
/// from a store (S3 above all) gains from more in flight, and a restore
/// holds no parts of its own (at most 6 MiB per pipe).
pub const READ_QUEUE_DEPTH: usize = 4;

pub type Chunk = io::Result<Vec<u8>>;

/// A backup pipe's chunk is half a huge page (`aligned.rs`).
const _: () = assert!(CHUNK_SIZE == crate::aligned::HALF_HUGE);

/// A new chunk for the backup pipe, zeroed.
fn new_chunk() -> AlignedBuf {
    AlignedBuf::half_huge()
}

/// The pipe from a producer's [`ChunkWriter`] to an upload. Its chunks are
/// aligned ([`AlignedBuf`]), so a folder target writes them to the disk
/// as they are; errors come from the producer's own result, not the pipe.
pub fn channel() -> (mpsc::Sender<AlignedBuf>, mpsc::Receiver<AlignedBuf>) {
    mpsc::channel(QUEUE_DEPTH)
}

/// The pipe from a store's stream to restore's reader ([`READ_QUEUE_DEPTH`]).
pub fn read_channel() -> (mpsc::Sender<Chunk>, mpsc::Receiver<Chunk>) {
    mpsc::channel(READ_QUEUE_DEPTH)
}

/// Blocking writer end: fills chunks and sends them when full.
pub struct ChunkWriter {
    tx: mpsc::Sender<AlignedBuf>,
    buf: AlignedBuf,
    spare: Option<Spares<AlignedBuf>>,
    /// Buffers allocated, the first included.
    fresh: usize,
}

impl ChunkWriter {
    pub fn new(tx: mpsc::Sender<AlignedBuf>) -> Self {
        ChunkWriter {
            tx,
            buf: new_chunk(),
            spare: None,
            fresh: 1,
        }
    }

    /// A writer that fills again the chunks the consumer hands back
    /// through [`Returns`], instead of a new one each time.
    ///
    /// A chunk is as large as the allocator's mmap threshold (`cli.rs`), so
    /// each new one was pages of its own: a backup of 1 GiB of packed
    /// files spent a sixth of its CPU faulting in and zeroing a thousand
    /// fresh megabytes and unmapping them again.
    pub fn recycling(tx: mpsc::Sender<AlignedBuf>) -> (Self, Returns<AlignedBuf>) {
        let (returns, spares) = recycle(CHUNK_SIZE, tx.max_capacity());
        let writer = ChunkWriter {
            spare: Some(spares),
            ..ChunkWriter::new(tx)
        };
        (writer, returns)
    }

    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let next = match self.spare.as_ref().and_then(Spares::reuse) {
            Some(mut spare) => {
                spare.clear();
                spare
            }
            None => {
                self.fresh += 1;
                new_chunk()
            }
        };
        let full = std::mem::replace(&mut self.buf, next);
        self.tx
            .blocking_send(full)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the upload stopped"))
    }

    #[cfg(test)]
    fn fresh_buffers(&self) -> usize {
        self.fresh
    }

    /// Sends what is left. Dropping without `finish` loses the tail, which the
    /// consumer notices because the producer's result is joined before commit.
    pub fn finish(mut self) -> io::Result<()> {
        self.send()
    }

    /// Reads up to `max` bytes of `r` straight into the chunk being filled,
    /// after a header of `H` bytes that `head` makes once the count is
    /// known: a file's bytes go into the artifact without a copy through
    /// another buffer. Ok(0) at the end of `r` (and no header). Never
    /// splits the header from its bytes: `None` when fewer than `H + 1`
    /// bytes are left in the chunk, and the caller writes as usual. The
    /// chunks sent stay whole ([`CHUNK_SIZE`]), as a folder target needs to
    /// write them as they are.
    pub fn read_block<const H: usize>(
        &mut self,
        r: &mut dyn Read,
        max: usize,
        head: impl FnOnce(usize) -> [u8; H],
    ) -> Option<io::Result<usize>> {
        // 0 would read as the end of `r`: the caller pads with zeros.
        debug_assert!(max > 0, "a block of no bytes asked for");
        let room = self.buf.capacity() - self.buf.len();
        if room <= H {
            return None;
        }
        let want = max.min(room - H);
        let got = loop {
            match r.read(&mut self.buf.unfilled()[H..H + want]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other,
            }
        };
        let n = match got {
            Ok(n) => n,
            Err(e) => return Some(Err(e)),
        };
        if n == 0 {
            return Some(Ok(0));
        }
        self.buf.unfilled()[..H].copy_from_slice(&head(n));
        self.buf.advance(H + n);
        if self.buf.is_full() {
            if let Err(e) = self.send() {
                return Some(Err(e));
            }
        }
        Some(Ok(n))
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = self.buf.extend_from_slice(data);
        if self.buf.is_full() {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The end that hands used buffers back to be filled again: the consumer
/// of a recycling [`ChunkWriter`], or a recycling [`ChunkReader`] itself.
pub struct Returns<B = Vec<u8>>(std::sync::mpsc::SyncSender<B>);

impl<B> Returns<B> {
    /// Gives `buf` back to be filled again; one too many is dropped.
    pub fn give(&self, buf: B) {
        let _ = self.0.try_send(buf);
    }
}

/// A pair of ends through which a pipe's buffers go round. Every buffer of
/// the pipe can be on its way back at once: the queue (`depth`, the
/// channel's own capacity), the one being filled and the one being used.
fn recycle<B>(size: usize, depth: usize) -> (Returns<B>, Spares<B>) {
    let (back, spare) = std::sync::mpsc::sync_channel(depth + 2);
    (
        Returns(back),
        Spares {
            rx: Some(spare),
            size,
        },
    )
}

/// Blocking reader end: yields the chunks a [`feed`] task sends.
pub struct ChunkReader {
    rx: mpsc::Receiver<Chunk>,
    cur: Vec<u8>,
    pos: usize,
    back: Option<Returns>,
    /// Bytes read or skipped so far: the stream position [`Seek`] reports.
    consumed: u64,
}

impl ChunkReader {
    pub fn new(rx: mpsc::Receiver<Chunk>) -> Self {
        ChunkReader {
            rx,
            cur: Vec::new(),
            pos: 0,
            back: None,
            consumed: 0,
        }
    }

    /// A reader that hands each chunk it has used up back to the producer,
    /// which fills it again through the returned [`Spares`].
    pub fn recycling(rx: mpsc::Receiver<Chunk>, chunk_size: usize) -> (Self, Spares) {
        let (back, spares) = recycle(chunk_size, rx.max_capacity());
        let reader = ChunkReader {
            back: Some(back),
            ..ChunkReader::new(rx)
        };
        (reader, spares)
    }
}

impl ChunkReader {
    /// Makes sure the current chunk has bytes left; false at the end.
    fn fill(&mut self) -> io::Result<bool> {
        while self.pos == self.cur.len() {
            match self.rx.blocking_recv() {
                None => return Ok(false),
                Some(Err(e)) => return Err(e),
                Some(Ok(chunk)) => {
                    let used = std::mem::replace(&mut self.cur, chunk);
                    self.pos = 0;
                    if let Some(back) = &self.back {
                        // Full or gone: the producer allocates or has stopped.
                        back.give(used);
                    }
                }
            }
        }
        Ok(true)
    }
}

impl Read for ChunkReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if !self.fill()? {
            return Ok(0);
        }
        let n = out.len().min(self.cur.len() - self.pos);
        out[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        self.consumed += n as u64;
        Ok(n)
    }
}

/// Forward only: skipping `n` bytes (`SeekFrom::Current(n)`, n ≥ 0) drops
/// them from the chunks without copying. The tar reader skips every
/// entry's padding and unread data this way; its own skip zeroes a 32 KiB
/// buffer each time, which was a tenth of a chain restore's CPU (a link
/// lists every folder: a million entries for 24 links). A stream that ends
/// before the bytes to skip is an error, never a clean end.
impl io::Seek for ChunkReader {
    fn seek(&mut self, to: io::SeekFrom) -> io::Result<u64> {
        let mut left = match to {
            io::SeekFrom::Current(n) if n >= 0 => n as u64,
            io::SeekFrom::Start(n) if n >= self.consumed => n - self.consumed,
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "a stream only skips forward",
                ))
            }
        };
        while left > 0 {
            if !self.fill()? {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the stream ends inside an entry",
                ));
            }
            let n = left.min((self.cur.len() - self.pos) as u64);
            self.pos += n as usize;
            self.consumed += n;
            left -= n;
        }
        Ok(self.consumed)
    }
}

/// Buffers to fill, reused from the ones the reader end has used up.
///
/// A long stream then cycles through the same few buffers instead of
/// allocating on one thread and freeing on another, which glibc's malloc
/// answers with memory kept in each thread's arena: a restore of 4 GiB grew
/// by ~10 MiB that way.
pub struct Spares<B = Vec<u8>> {
    rx: Option<std::sync::mpsc::Receiver<B>>,
    size: usize,
}

impl<B> Spares<B> {
    /// A buffer handed back, if one waits.
    fn reuse(&self) -> Option<B> {
        self.rx.as_ref().and_then(|rx| rx.try_recv().ok())
    }
}

impl Spares {
    /// Fresh buffers every time, for a reader that does not hand them back.
    pub fn none(size: usize) -> Self {
        Spares { rx: None, size }
    }

    /// A buffer of the chunk size, returned one if there is one.
    pub fn take(&self) -> Vec<u8> {
        match self.reuse() {
            Some(mut buf) => {
                buf.resize(self.size, 0);
                buf
            }
            None => vec![0u8; self.size],
        }
    }
}

/// Async side of a read pipe: reads `src` to its end in chunks and sends them.
/// Stops early, without error, when the reader end went away.
pub async fn feed<R: AsyncRead + Unpin>(mut src: R, tx: mpsc::Sender<Chunk>, spares: Spares) {
    loop {
        let mut buf = spares.take();
        let size = buf.len();
        let mut filled = 0;
        // Fill whole chunks so the channel's bound is a bound in bytes.
        while filled < size {
            match src.read(&mut buf[filled..]).await {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
        }
        if filled == 0 {
            return;
        }
        buf.truncate(filled);
        if tx.send(Ok(buf)).await.is_err() || filled < size {
            return;
        }
    }
}

/// Counts and hashes bytes read from `inner`.
pub struct HashReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> HashReader<R> {
    pub fn new(inner: R) -> Self {
        HashReader {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }
    pub fn count(&self) -> u64 {
        self.count
    }
    /// The hex sha256 and count of everything read so far.
    pub fn finish(self) -> (String, u64) {
        (hex::encode(self.hasher.finalize()), self.count)
    }
}

impl<R: Read> Read for HashReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(out)?;
        // Just copied here by this thread: nothing to fetch ahead.
        self.hasher.update(&out[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// The sha256 and size of bytes as they go to (or come from) a store.
#[derive(Default)]
pub struct HashCount {
    hasher: Sha256,
    count: u64,
}

impl HashCount {
    pub fn update(&mut self, bytes: &[u8]) {
        update_ahead(&mut self.hasher, bytes);
        self.count += bytes.len() as u64;
    }

    /// The hex sha256 and the count.
    pub fn finish(self) -> (String, u64) {
        (hex::encode(self.hasher.finalize()), self.count)
    }
}

/// Bytes hashed at a time, while the next as many are fetched.
const HASH_AHEAD: usize = 4096;

/// Hashes `bytes` a page at a time, asking the CPU for the next page
/// before hashing this one. A pipe's chunk was filled by another thread,
/// so its bytes are in another core's cache or further: the CPU's
/// prefetcher did not keep up with the SHA extensions on such bytes, and
/// hashing them took 1.55x as long as hashing bytes in this core's cache
/// (docs/ARCHITECTURE.md, "Hashing").
fn update_ahead(hasher: &mut Sha256, bytes: &[u8]) {
    let mut pages = bytes.chunks(HASH_AHEAD).peekable();
    while let Some(page) = pages.next() {
        if let Some(next) = pages.peek() {
            prefetch(next);
        }
        hasher.update(page);
    }
}

#[cfg(target_arch = "x86_64")]
fn prefetch(bytes: &[u8]) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    for line in bytes.chunks(64) {
        // SAFETY: the intrinsic needs SSE, which every x86-64 CPU has;
        // a prefetch only hints at an address (here inside `bytes`), and
        // never faults or changes memory.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(line.as_ptr().cast()) }
    }
}

/// Other CPUs hash without the hint (no stable prefetch to ask with).
#[cfg(not(target_arch = "x86_64"))]
fn prefetch(_: &[u8]) {}

/// The next whole chunk of `src` (up to [`CHUNK_SIZE`]; shorter only at
/// the end, empty there), to hand to an upload without a copy. Read into
/// `spare` (a buffer an upload handed back) when there is one: a new
/// buffer is zeroed first.
pub async fn read_chunk<R: AsyncRead + Unpin>(
    src: &mut R,
    spare: Option<AlignedBuf>,
) -> io::Result<AlignedBuf> {
    let mut chunk = spare
        .filter(|b| b.capacity() == CHUNK_SIZE)
        .unwrap_or_else(new_chunk);
    chunk.clear();
    while !chunk.is_full() {
        let n = src.read(chunk.unfilled()).await?;
        if n == 0 {
            break;
        }
        chunk.advance(n);
    }
    Ok(chunk)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hashed a page at a time with the next page fetched ahead, any
    /// length and any split of the bytes hashes as sha256 of them whole.
    #[test]
    fn hashing_a_page_ahead_is_plain_sha256() {
        let data: Vec<u8> = (0..3 * CHUNK_SIZE + 4097)
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        for len in [0, 1, 63, 4095, 4096, 4097, CHUNK_SIZE + 3, data.len()] {
            for piece in [1000, 4096, CHUNK_SIZE] {
                let mut h = HashCount::default();
                for p in data[..len].chunks(piece) {
                    h.update(p);
                }
                let want = hex::encode(Sha256::digest(&data[..len]));
                assert_eq!(h.finish(), (want, len as u64), "{len} bytes in {piece}");
            }
        }
    }

    #[tokio::test]
    async fn bytes_cross_the_pipe_intact_and_in_order() {
        let data: Vec<u8> = (0..(3 * CHUNK_SIZE + 12345))
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let (tx, rx) = read_channel();
        let src = data.clone();
        let (reader, spares) = ChunkReader::recycling(rx, CHUNK_SIZE);
        let feeder = tokio::spawn(async move { feed(&src[..], tx, spares).await });
        let got = tokio::task::spawn_blocking(move || {
            let mut r = HashReader::new(reader);
            let mut out = Vec::new();
            r.read_to_end(&mut out).unwrap();
            (out, r.finish())
        })
        .await
        .unwrap();
        feeder.await.unwrap();
        assert_eq!(got.0, data);
        assert_eq!(got.1 .1, data.len() as u64);
        assert_eq!(got.1 .0, hex::encode(Sha256::digest(&data)));
    }

    #[tokio::test]
    async fn a_recycling_writer_fills_the_chunks_handed_back() {
        let data: Vec<u8> = (0..(40 * CHUNK_SIZE + 777))
            .map(|i| (i * 13 % 251) as u8)
            .collect();
        let (tx, mut rx) = channel();
        let (mut writer, returns) = ChunkWriter::recycling(tx);
        let src = data.clone();
        let producer = tokio::task::spawn_blocking(move || {
            for piece in src.chunks(100_000) {
                writer.write_all(piece).unwrap();
            }
            let fresh = writer.fresh_buffers();
            writer.finish().unwrap();
            fresh
        });
        let mut got = Vec::new();
        while let Some(mut chunk) = rx.recv().await {
            got.extend_from_slice(&chunk);
            chunk.clear();
            returns.give(chunk);
        }
        let fresh = producer.await.unwrap();
        assert_eq!(got, data);
        // 41 chunks through the pipe's few buffers, not 41 new ones: the
        // queue's, the one being filled, the one the consumer holds, and
        // one more when the producer asked before the consumer gave back.
        assert!(fresh <= QUEUE_DEPTH + 3, "{fresh} buffers allocated");
    }

    #[test]
    fn skipping_forward_drops_bytes_across_chunks_and_refuses_the_rest() {
        use std::io::{Seek, SeekFrom};
        let (tx, rx) = mpsc::channel(8);
        for chunk in [vec![0u8, 1, 2], vec![3, 4], vec![5, 6, 7, 8]] {
            tx.try_send(Ok(chunk)).unwrap();
        }
        drop(tx);
        let mut r = ChunkReader::new(rx);
        let mut one = [0u8; 1];
        r.read_exact(&mut one).unwrap();
        assert_eq!(r.stream_position().unwrap(), 1);
        assert_eq!(r.seek(SeekFrom::Current(4)).unwrap(), 5, "across a chunk");
        r.read_exact(&mut one).unwrap();
        assert_eq!(one, [5]);
        assert_eq!(r.seek(SeekFrom::Start(7)).unwrap(), 7);
        assert!(r.seek(SeekFrom::Current(-1)).is_err(), "never backwards");
        assert!(r.seek(SeekFrom::Start(3)).is_err(), "never backwards");
        let e = r.seek(SeekFrom::Current(5)).unwrap_err();
        assert_eq!(
            e.kind(),
            io::ErrorKind::UnexpectedEof,
            "ends inside: not a clean end"
        );
    }

    /// A block read in place: its header made from the count read (a short
    /// read included), an interrupted read tried again, nothing at the end
    /// of the reader, and `None` once a header and a byte no longer fit,
    /// so a header is never apart from its bytes. Chunks go out whole.
    #[test]
    fn a_block_read_in_place_carries_its_own_count_and_never_splits() {
        struct Reads(Vec<io::Result<Vec<u8>>>);
        impl Read for Reads {
            fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
                let Some(next) = self.0.pop() else {
                    return Ok(0);
                };
                let bytes = next?;
                out[..bytes.len()].copy_from_slice(&bytes);
                Ok(bytes.len())
            }
        }
        let interrupted = || Err(io::Error::from(io::ErrorKind::Interrupted));
        let (tx, mut rx) = mpsc::channel(8);
        let mut w = ChunkWriter::new(tx);
        w.write_all(&vec![9u8; CHUNK_SIZE - 10]).unwrap();
        let head = |n: usize| [b'h', n as u8, 0];
        // Asked for 5, a short read of 2 after an interruption.
        let mut r = Reads(vec![Ok(b"ab".to_vec()), interrupted()]);
        assert_eq!(w.read_block(&mut r, 5, head).unwrap().unwrap(), 2);
        assert_eq!(
            w.read_block(&mut r, 5, head).unwrap().unwrap(),
            0,
            "the end"
        );
        // 5 left: a header and 2 bytes fill the chunk, which goes out.
        let mut r = Reads(vec![Ok(b"cd".to_vec())]);
        assert_eq!(w.read_block(&mut r, 9, head).unwrap().unwrap(), 2);
        let full = rx.try_recv().unwrap();
        assert_eq!(full.len(), CHUNK_SIZE);
        assert_eq!(&full[CHUNK_SIZE - 10..], b"h\x02\0abh\x02\0cd" as &[u8]);
        // A failed read writes nothing.
        let mut r = Reads(vec![Err(io::Error::other("disk"))]);
        assert!(w.read_block(&mut r, 9, head).unwrap().is_err());
        // 3 bytes short of full: no room for a header and a byte.
        w.write_all(&vec![9u8; CHUNK_SIZE - 3]).unwrap();
        let mut r = Reads(vec![Ok(b"e".to_vec())]);
        assert!(w.read_block(&mut r, 9, head).is_none());
        w.write_all(b"xyz").unwrap();
        let full = rx.try_recv().unwrap();
        assert_eq!(full.len(), CHUNK_SIZE);
        assert_eq!(&full[CHUNK_SIZE - 4..], [9, b'x', b'y', b'z']);
    }

    #[tokio::test]
    async fn writer_sees_a_closed_pipe_as_an_error() {
        let (tx, rx) = channel();
        drop(rx);
        let r = tokio::task::spawn_blocking(move || {
            let mut w = ChunkWriter::new(tx);
            w.write_all(&vec![0u8; 2 * CHUNK_SIZE])
        })
        .await
        .unwrap();
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::BrokenPipe);
    }
}
