//! A byte buffer whose first byte sits on a [`BLOCK`] boundary: the pipe's
//! chunks on their way to a store, and [`crate::direct_write`]'s own
//! buffer. A full chunk can then go to the disk past the page cache
//! (`O_DIRECT` wants the memory aligned too) without a copy into another
//! buffer first (docs/ARCHITECTURE.md §3, "Backup pipeline").
//!
//! The bytes are zeroed once, when the buffer is made, and stay
//! initialized: a reader fills the part after [`AlignedBuf::len`] through
//! [`AlignedBuf::unfilled`] with no `unsafe` on the caller's side.

use std::ops::Deref;

/// Offsets, lengths and addresses of a direct write are multiples of this:
/// every disk's logical block (512 or 4096 bytes).
pub const BLOCK: usize = 4096;

#[repr(C, align(4096))]
#[derive(Clone, Copy)]
struct Page([u8; BLOCK]);

/// `capacity` bytes (a multiple of [`BLOCK`]), the first `len` of them in use.
pub struct AlignedBuf {
    pages: Vec<Page>,
    len: usize,
}

impl AlignedBuf {
    /// An empty buffer of `capacity` bytes, rounded up to whole blocks.
    pub fn new(capacity: usize) -> Self {
        AlignedBuf {
            pages: vec![Page([0; BLOCK]); capacity.div_ceil(BLOCK)],
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
        self.pages.len() * BLOCK
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
        // SAFETY: `Page` is plain bytes with no padding (size = align =
        // BLOCK), so the pages are `capacity` initialized bytes in a row.
        unsafe { std::slice::from_raw_parts(self.pages.as_ptr().cast::<u8>(), self.capacity()) }
    }

    fn all_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `all`; the borrow is exclusive.
        unsafe {
            std::slice::from_raw_parts_mut(self.pages.as_mut_ptr().cast::<u8>(), self.capacity())
        }
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
}
