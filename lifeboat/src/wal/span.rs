//! Which segments the next WAL object carries, and up to where.

use super::position::{Lsn, Segment, SegmentSize};

/// The WAL of one object: every segment from the one holding `from`
/// through the one holding the byte before `to`. Each is stored from its
/// start, so a segment an earlier object began is carried again whole and
/// every file in an object is a complete segment file; past `to` the last
/// one is zeros, which end WAL as an unwritten page does. Restoring objects
/// in order leaves the newest copy of each segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub timeline: u32,
    pub from: Lsn,
    pub to: Lsn,
}

impl Span {
    /// What comes after `archived` on `timeline`, with the server flushed
    /// up to `flush`: at most `max_segments` segments, so that an object
    /// stays bounded however long the sidecar was away. None when nothing
    /// new was flushed (an idle server costs no upload).
    pub fn next(
        timeline: u32,
        archived: Lsn,
        flush: Lsn,
        size: SegmentSize,
        max_segments: u64,
    ) -> Option<Span> {
        if flush <= archived {
            return None;
        }
        let first = size.segment_of(archived);
        // Past the end of the address space (a huge bound, an absurd
        // position) the cut is simply the flush.
        let cut = first
            .checked_add(max_segments.max(1))
            .and_then(|s| size.start_of(s))
            .unwrap_or(flush);
        let to = cut.min(flush);
        (to > archived).then_some(Span {
            timeline,
            from: archived,
            to,
        })
    }

    /// Each segment with how many of its bytes are WAL; the rest of it is
    /// stored as zeros.
    pub fn segments(&self, size: SegmentSize) -> impl Iterator<Item = (Segment, u64)> + '_ {
        let (first, last) = if self.to > self.from {
            (
                size.segment_of(self.from),
                size.segment_of(Lsn(self.to.0 - 1)),
            )
        } else {
            (1, 0)
        };
        (first..=last).map(move |segno| {
            // Segments of a span lie below `to`, so their starts exist.
            let start = segno * size.bytes();
            let end = start.saturating_add(size.bytes()).min(self.to.0);
            (
                Segment {
                    timeline: self.timeline,
                    segno,
                },
                end - start,
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn size() -> SegmentSize {
        SegmentSize::new(16 * MIB).unwrap()
    }

    #[test]
    fn nothing_new_is_no_object() {
        assert_eq!(Span::next(1, Lsn(100), Lsn(100), size(), 4), None);
        assert_eq!(Span::next(1, Lsn(100), Lsn(50), size(), 4), None);
    }

    #[test]
    fn the_segment_begun_before_is_carried_again_whole_and_the_last_is_cut_at_the_flush() {
        // Archived up to 1 MiB into segment 2; flushed up to 3 MiB into segment 3.
        let (from, to) = (Lsn(2 * 16 * MIB + MIB), Lsn(3 * 16 * MIB + 3 * MIB));
        let span = Span::next(1, from, to, size(), 4).unwrap();
        assert_eq!(span.to, to);
        let got: Vec<(u64, u64)> = span.segments(size()).map(|(s, n)| (s.segno, n)).collect();
        assert_eq!(got, vec![(2, 16 * MIB), (3, 3 * MIB)]);
    }

    #[test]
    fn a_long_absence_is_cut_into_bounded_objects_that_follow_on() {
        let flush = Lsn(10 * 16 * MIB + 5);
        let mut archived = Lsn(16 * MIB + 7);
        let mut objects = Vec::new();
        while let Some(span) = Span::next(1, archived, flush, size(), 4) {
            let segs: Vec<u64> = span.segments(size()).map(|(s, _)| s.segno).collect();
            assert!(segs.len() <= 4, "{segs:?}");
            objects.push(segs);
            archived = span.to;
        }
        assert_eq!(archived, flush);
        assert_eq!(
            objects,
            vec![vec![1, 2, 3, 4], vec![5, 6, 7, 8], vec![9, 10]]
        );
    }

    #[test]
    fn huge_bounds_and_positions_never_make_a_span_that_runs_backwards() {
        let span = Span::next(
            1,
            Lsn(5 << 32),
            Lsn((5 << 32) + 3 * 16 * MIB),
            size(),
            u64::MAX,
        )
        .unwrap();
        assert_eq!(span.to, Lsn((5 << 32) + 3 * 16 * MIB));
        assert_eq!(span.segments(size()).count(), 3);
        let top = Lsn(u64::MAX);
        let span = Span::next(1, Lsn(u64::MAX - 100), top, size(), 8).unwrap();
        assert!(span.to > span.from);
        let got: Vec<u64> = span.segments(size()).map(|(_, n)| n).collect();
        assert_eq!(got, vec![16 * MIB - 1]);
    }

    #[test]
    fn a_flush_on_a_segment_boundary_ends_with_the_whole_segment_before_it() {
        let span = Span::next(1, Lsn(16 * MIB), Lsn(2 * 16 * MIB), size(), 4).unwrap();
        let got: Vec<(u64, u64)> = span.segments(size()).map(|(s, n)| (s.segno, n)).collect();
        assert_eq!(got, vec![(1, 16 * MIB)]);
    }
}
