//! The fixed-size byte queue each direction of a relay owns: taken lazily when bytes first arrive,
//! released whenever it is empty (a quiet connection's memory).
//!
//! Owns the buffer's memory and its compaction; it must never grow past its size (a full buffer
//! stops the reading, which is what pushes back on a fast sender) or do any I/O.

use super::BUF_SIZE;

/// The largest TLS record's plaintext. A read into less room than this is allowed but wasteful, so
/// the buffer compacts before offering a shorter tail.
pub(super) const RECORD: usize = 16 * 1024;

/// A fixed-size byte queue: filled at `end`, drained from `start`. Its memory is taken when bytes
/// are first put in and can be given back whenever it is empty.
pub(super) struct Buffer {
    /// Empty (no allocation) until [`Buffer::room`] is first asked for, and again after
    /// [`Buffer::release`].
    data: Box<[u8]>,
    start: usize,
    end: usize,
}

impl Buffer {
    /// A buffer that starts out queueing `bytes`; it is larger than [`BUF_SIZE`] only if they
    /// need it. With no bytes it holds no memory yet.
    pub(super) fn holding(bytes: &[u8]) -> Buffer {
        let data = if bytes.is_empty() {
            Box::default()
        } else {
            let mut data = vec![0; BUF_SIZE.max(bytes.len())].into_boxed_slice();
            data[..bytes.len()].copy_from_slice(bytes);
            data
        };
        Buffer {
            data,
            start: 0,
            end: bytes.len(),
        }
    }

    /// Gives the memory back when nothing is queued. The next [`Buffer::room`] takes it again.
    pub(super) fn release(&mut self) {
        if self.is_empty() {
            self.data = Box::default();
        }
    }

    /// Whether the buffer holds memory now.
    pub(super) fn is_allocated(&self) -> bool {
        !self.data.is_empty()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.start == self.end
    }

    pub(super) fn has_room(&self) -> bool {
        // A buffer without memory has all of BUF_SIZE to offer: room() takes it.
        !self.is_allocated() || self.end - self.start < self.data.len()
    }

    pub(super) fn filled(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    /// The free space after the queued bytes. The bytes move to the front first when the tail is
    /// shorter than a record: a rare, small copy that keeps every read large.
    pub(super) fn room(&mut self) -> &mut [u8] {
        if !self.is_allocated() {
            self.data = vec![0; BUF_SIZE].into_boxed_slice();
        }
        if self.start > 0 && self.data.len() - self.end < RECORD {
            self.data.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        &mut self.data[self.end..]
    }

    pub(super) fn commit(&mut self, n: usize) {
        self.end += n;
    }

    pub(super) fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffer_compacts_only_when_the_tail_is_short() {
        let mut b = Buffer::holding(&[]);
        let room = b.room().len();
        assert_eq!(room, BUF_SIZE);
        b.commit(BUF_SIZE - 100);
        b.consume(RECORD);
        // 100 bytes of tail: compaction moves the queued bytes to the front.
        assert_eq!(b.room().len(), RECORD + 100);
        assert_eq!(b.filled().len(), BUF_SIZE - 100 - RECORD);
        b.consume(b.filled().len());
        assert!(b.is_empty());
        assert_eq!(b.room().len(), BUF_SIZE);
    }

    #[test]
    fn a_buffer_takes_memory_when_filled_and_gives_it_back_only_when_empty() {
        let mut b = Buffer::holding(&[]);
        assert!(!b.is_allocated());
        assert!(b.has_room());
        assert_eq!(b.room().len(), BUF_SIZE);
        assert!(b.is_allocated());
        b.room()[..3].copy_from_slice(b"abc");
        b.commit(3);
        b.release();
        assert!(b.is_allocated(), "released with bytes queued");
        assert_eq!(b.filled(), b"abc");
        b.consume(3);
        b.release();
        assert!(!b.is_allocated());
        assert!(b.is_empty());
        assert_eq!(b.room().len(), BUF_SIZE);
    }

    #[test]
    fn a_preamble_is_queued_at_once() {
        let b = Buffer::holding(b"PROXY");
        assert!(b.is_allocated());
        assert_eq!(b.filled(), b"PROXY");
    }

    #[test]
    fn a_full_buffer_offers_no_room() {
        let mut b = Buffer::holding(&[]);
        // Takes the memory, as a read does before it commits.
        b.room();
        b.commit(BUF_SIZE);
        assert!(!b.has_room());
        b.consume(1);
        assert!(b.has_room());
        assert_eq!(b.room().len(), 1);
    }
}
