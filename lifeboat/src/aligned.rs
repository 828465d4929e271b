//! A byte buffer whose first byte sits on a [`BLOCK`] boundary: the pipe's
//! chunks on their way to a store, and [`crate::direct_write`]'s own
//! buffer. A full chunk can then go to the disk past the page cache
//! (`O_DIRECT` wants the memory aligned too) without a copy into another
//! buffer first (docs/ARCHITECTURE.md §3, "Backup pipeline").
//!
//! The bytes are zeroed once, when the buffer is made, and stay
//! initialized: a reader fills the part after [`AlignedBuf::len`] through
//! [`AlignedBuf::unfilled`] with no `unsafe` on the caller's side.
//!
//! A backup pipe's chunk ([`AlignedBuf::half_huge`]) is half of a 2 MiB
//! mapping the kernel may back with one huge page, shared with the next
//! such buffer made on the same thread. Its bytes are then one run of
//! physical memory: the disk takes a direct write of it as one request
//! instead of two (a virtio disk splits at 254 pieces, and 1 MiB of small
//! pages is 256), and the kernel pins one folio instead of 256 pages. On
//! the bench machine that took the writing thread's CPU from 154 to 57 ms
//! for 1 GiB and a backup's wall by a tenth (docs/ARCHITECTURE.md, "Huge
//! pages"). Only the backup pipe's buffers, which go round for the whole
//! backup: a restore's buffers live one file each, and a huge page per
//! file would be a fault, 2 MiB zeroed and maybe a compaction per file.

use std::cell::RefCell;
use std::ops::Deref;
use std::ptr::NonNull;
use std::sync::{Arc, Weak};

/// Offsets, lengths and addresses of a direct write are multiples of this:
/// every disk's logical block (512 or 4096 bytes).
pub const BLOCK: usize = 4096;

#[repr(C, align(4096))]
#[derive(Clone, Copy)]
struct Page([u8; BLOCK]);

/// A huge page's size on x86-64 and (4 KiB pages) arm64.
const HUGE: usize = 2 << 20;

/// The size of a buffer made by [`AlignedBuf::half_huge`].
pub const HALF_HUGE: usize = HUGE / 2;

/// `capacity` bytes (a multiple of [`BLOCK`]), the first `len` of them in use.
pub struct AlignedBuf {
    memory: Memory,
    len: usize,
}

enum Memory {
    Pages(Vec<Page>),
    /// Half of `page`, from `at`, owned by this buffer alone.
    Half {
        page: Arc<HugePage>,
        at: usize,
    },
}

/// A 2 MiB mapping on a 2 MiB boundary, which the kernel is asked to back
/// with a huge page (where it has transparent huge pages; where not, it
/// is small pages as any other memory). Unmapped when both halves are
/// dropped.
struct HugePage(NonNull<u8>);

// SAFETY: the mapping is plain memory; each half is reached only through
// the one `AlignedBuf` that owns it.
unsafe impl Send for HugePage {}
unsafe impl Sync for HugePage {}

impl HugePage {
    fn map() -> Option<Arc<Self>> {
        let (rw, private) = (
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
        );
        // SAFETY: a fresh anonymous mapping of 4 MiB, checked below. The
        // head before the first 2 MiB boundary in it (0 to 2 MiB - 4 KiB)
        // and the tail after the 2 MiB from there (4 KiB to 2 MiB, never
        // 0) are unmapped at once, so exactly that 2 MiB stays,
        // zero-filled by the kernel. Pointers are offsets from the
        // mapping's own.
        unsafe {
            let got = libc::mmap(std::ptr::null_mut(), 2 * HUGE, rw, private, -1, 0);
            if got == libc::MAP_FAILED {
                return None;
            }
            let head = (got as usize).next_multiple_of(HUGE) - got as usize;
            let start = got.cast::<u8>().add(head);
            if head > 0 {
                let r = libc::munmap(got, head);
                debug_assert_eq!(r, 0, "unmapping the head");
            }
            let r = libc::munmap(start.add(HUGE).cast(), HUGE - head);
            debug_assert_eq!(r, 0, "unmapping the tail");
            // Only a hint: without huge pages this is small pages.
            libc::madvise(start.cast(), HUGE, libc::MADV_HUGEPAGE);
            // Not null: mmap never maps page 0 for us.
            Some(Arc::new(HugePage(NonNull::new_unchecked(start))))
        }
    }

    /// The half from `at` (0 or [`HALF_HUGE`]).
    fn half(&self, at: usize) -> *mut u8 {
        debug_assert!(at == 0 || at == HALF_HUGE);
        // SAFETY: `at` is inside the 2 MiB mapping.
        unsafe { self.0.as_ptr().add(at) }
    }
}

impl Drop for HugePage {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, which no buffer uses any more.
        let r = unsafe { libc::munmap(self.0.as_ptr().cast(), HUGE) };
        debug_assert_eq!(r, 0, "unmapping a huge page");
    }
}

thread_local! {
    /// The page whose second half no buffer has taken yet. Weak: a page
    /// whose first half is dropped is unmapped, not kept for a buffer
    /// that may never come (an idle sidecar holds none). Per thread, so
    /// the chunks a pipe's producer makes in a row pair up. (A second
    /// half dropped before its first is not handed out again: the page
    /// stays whole until the first goes too.)
    static SECOND_HALF: RefCell<Weak<HugePage>> = const { RefCell::new(Weak::new()) };
}

impl Memory {
    fn pages(capacity: usize) -> Self {
        Memory::Pages(vec![Page([0; BLOCK]); capacity.div_ceil(BLOCK)])
    }

    /// Half a huge page; `None` when no page can be mapped, or on a
    /// thread being torn down.
    fn half() -> Option<Self> {
        SECOND_HALF
            .try_with(|slot| {
                let mut slot = slot.borrow_mut();
                if let Some(page) = slot.upgrade() {
                    *slot = Weak::new();
                    return Some(Memory::Half {
                        page,
                        at: HALF_HUGE,
                    });
                }
                let page = HugePage::map()?;
                *slot = Arc::downgrade(&page);
                Some(Memory::Half { page, at: 0 })
            })
            .ok()
            .flatten()
    }
}

impl AlignedBuf {
    /// An empty buffer of `capacity` bytes, rounded up to whole blocks.
    pub fn new(capacity: usize) -> Self {
        AlignedBuf {
            memory: Memory::pages(capacity),
            len: 0,
        }
    }

    /// An empty buffer of [`HALF_HUGE`] bytes, half of a huge page where
    /// the kernel gives one: for buffers that go round a backup's pipe
    /// for as long as it runs (see the module's comment).
    pub fn half_huge() -> Self {
        AlignedBuf {
            memory: Memory::half().unwrap_or_else(|| Memory::pages(HALF_HUGE)),
            len: 0,
        }
    }

    /// A buffer holding a copy of `bytes`, as large as they are.
    pub fn from_slice(bytes: &[u8]) -> Self {
        let mut buf = AlignedBuf::new(bytes.len());
        buf.extend_from_slice(bytes);
        buf
    }

    pub fn capacity(&self) -> usize {
        match &self.memory {
            Memory::Pages(pages) => pages.len() * BLOCK,
            Memory::Half { .. } => HALF_HUGE,
        }
    }

    /// The first byte, to write through (a pointer from a shared borrow
    /// of the pages must not be written through: [`Self::start_ref`]).
    fn start(&mut self) -> *mut u8 {
        match &mut self.memory {
            Memory::Pages(pages) => pages.as_mut_ptr().cast(),
            Memory::Half { page, at } => page.half(*at),
        }
    }

    fn start_ref(&self) -> *const u8 {
        match &self.memory {
            Memory::Pages(pages) => pages.as_ptr().cast(),
            Memory::Half { page, at } => page.half(*at),
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn is_full(&self) -> bool {
        self.len == self.capacity()
    }

    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Every byte of the buffer, in use or not.
    fn all(&self) -> &[u8] {
        // SAFETY: `capacity` initialized bytes in a row: `Page` is plain
        // bytes with no padding (size = align = BLOCK), and a mapping is
        // zero-filled by the kernel. A half is this buffer's alone.
        unsafe { std::slice::from_raw_parts(self.start_ref(), self.capacity()) }
    }

    fn all_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `all`; the borrow of the buffer, and so of its
        // bytes, is exclusive.
        let capacity = self.capacity();
        unsafe { std::slice::from_raw_parts_mut(self.start(), capacity) }
    }

    /// Appends as much of `bytes` as fits; returns how much that was.
    pub fn extend_from_slice(&mut self, bytes: &[u8]) -> usize {
        let n = bytes.len().min(self.capacity() - self.len);
        let at = self.len;
        self.all_mut()[at..at + n].copy_from_slice(&bytes[..n]);
        self.len += n;
        n
    }

    /// The bytes after the ones in use, to be filled in place and then
    /// counted with [`Self::advance`].
    pub fn unfilled(&mut self) -> &mut [u8] {
        let at = self.len;
        &mut self.all_mut()[at..]
    }

    /// Counts `n` more bytes of [`Self::unfilled`] as in use.
    pub fn advance(&mut self, n: usize) {
        assert!(n <= self.capacity() - self.len, "advanced past the end");
        self.len += n;
    }

    /// Drops the first `n` bytes in use; the rest move to the front.
    pub fn drain_front(&mut self, n: usize) {
        let (n, len) = (n.min(self.len), self.len);
        self.all_mut().copy_within(n..len, 0);
        self.len -= n;
    }

    /// Drops the bytes from `len` on.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.all()[..self.len]
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("len", &self.len)
            .field("capacity", &self.capacity())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filled_in_place_or_by_copy_it_holds_what_was_put_and_stays_aligned() {
        let mut b = AlignedBuf::new(3 * BLOCK + 1);
        assert_eq!(b.capacity(), 4 * BLOCK, "whole blocks");
        assert_eq!(b.as_ptr() as usize % BLOCK, 0);
        assert_eq!(b.extend_from_slice(b"head"), 4);
        b.unfilled()[..3].copy_from_slice(b"abc");
        b.advance(3);
        assert_eq!(&b[..], b"headabc");
        let rest = vec![7u8; 5 * BLOCK];
        assert_eq!(b.extend_from_slice(&rest), 4 * BLOCK - 7, "only what fits");
        assert!(b.is_full());
        b.truncate(7);
        b.drain_front(4);
        assert_eq!(&b[..], b"abc");
        b.truncate(2);
        assert_eq!(&b[..], b"ab");
        b.clear();
        assert!(b.is_empty());
        assert_eq!(&AlignedBuf::from_slice(b"xyz")[..], b"xyz");
    }

    /// Two buffers of half a huge page made in a row on one thread share
    /// one 2 MiB page, each its own half; a page whose second half is
    /// taken, or whose first half is gone, gives no more halves (a new
    /// buffer starts a new page).
    #[test]
    fn buffers_of_half_a_huge_page_pair_up_and_stay_apart() {
        let mut first = AlignedBuf::half_huge();
        let mut second = AlignedBuf::half_huge();
        assert_eq!(
            first.as_ptr() as usize % HUGE,
            0,
            "on a huge page's boundary"
        );
        assert_eq!(
            second.as_ptr() as usize,
            first.as_ptr() as usize + HALF_HUGE
        );
        assert_eq!(
            (first.capacity(), second.capacity()),
            (HALF_HUGE, HALF_HUGE)
        );
        assert!(first.unfilled().iter().all(|&b| b == 0), "zeroed");
        first.extend_from_slice(&[1; HALF_HUGE]);
        second.extend_from_slice(&[2; HALF_HUGE]);
        assert!(first.iter().all(|&b| b == 1) && second.iter().all(|&b| b == 2));
        drop(second);
        let mut third = AlignedBuf::half_huge();
        assert_eq!(third.as_ptr() as usize % HUGE, 0, "a new page: {third:?}");
        assert!(first.iter().all(|&b| b == 1), "the first half untouched");
        third.extend_from_slice(b"abc");
        assert_eq!(&third[..], b"abc");
        drop(third);
        let fourth = AlignedBuf::half_huge();
        assert_eq!(
            fourth.as_ptr() as usize % HUGE,
            0,
            "its first half gone: a new page"
        );
        assert!(fourth.iter().all(|&b| b == 0) && fourth.capacity() == HALF_HUGE);
        assert!(first.iter().all(|&b| b == 1), "the first half untouched");
        assert!(matches!(first.memory, Memory::Half { at: 0, .. }));
        let other = AlignedBuf::new(HALF_HUGE);
        assert!(matches!(other.memory, Memory::Pages(_)), "new: small pages");
        assert_eq!(other.capacity(), HALF_HUGE);
        assert_eq!(other.as_ptr() as usize % BLOCK, 0);
    }
}
