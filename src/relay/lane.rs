//! One direction of a relay ([`Lane`]): the buffer, the read that fills it and the write that
//! drains it, and the half-close: once the source has ended and everything buffered is out, the
//! end is passed on (close_notify or a FIN) while the other direction keeps flowing; a TLS source
//! that ended without close_notify is passed on as a reset instead.
//!
//! Owns one direction's state; it must never wait (it tries until an operation would block and
//! records what it blocked on) or know the other direction.

use super::buffer::{Buffer, RECORD};
use super::endpoint::{Endpoint, Io};
use crate::sys::Interest;

/// One direction of a relay: a buffer and the state of the read that fills it and the write that
/// drains it. A wait of `None` means the operation may succeed now and is worth trying.
pub(super) struct Lane {
    pub(super) buf: Buffer,
    /// What the last read blocked on, until poll says that is ready.
    pub(super) read_wait: Option<Interest>,
    /// What the last write (or close) blocked on, until poll says that is ready.
    pub(super) write_wait: Option<Interest>,
    /// The source ended; what is buffered still goes out, then the end is passed on.
    pub(super) eof: bool,
    /// The source was TLS and ended without close_notify: its end is passed on as a reset where
    /// the destination can carry one, and the relay stops once it is.
    pub(super) truncated: bool,
    /// The end was passed on to the destination: this direction is finished.
    pub(super) shut: bool,
    pub(super) read: u64,
    pub(super) written: u64,
}

/// Which half of a lane failed, so the caller can blame the right peer.
pub(super) enum Fault {
    Source(String),
    Sink(String),
}

impl Lane {
    pub(super) fn new() -> Lane {
        Lane::with_preamble(&[])
    }

    /// A lane whose first bytes out are `preamble`, which was never read from the source.
    pub(super) fn with_preamble(preamble: &[u8]) -> Lane {
        Lane {
            buf: Buffer::holding(preamble),
            read_wait: None,
            write_wait: None,
            eof: false,
            truncated: false,
            shut: false,
            read: 0,
            written: 0,
        }
    }

    /// What a read waits for, when a read is wanted at all.
    pub(super) fn read_interest(&self) -> Option<Interest> {
        if self.eof || !self.buf.has_room() {
            return None;
        }
        self.read_wait
    }

    /// What a write or the close waits for, when either is wanted at all: while `dst` still holds
    /// bytes an earlier drain gathered, too, even with the buffer empty.
    pub(super) fn write_interest(&self, dst: &impl Endpoint) -> Option<Interest> {
        if self.shut || (self.buf.is_empty() && !self.eof && !dst.pending_out()) {
            return None;
        }
        self.write_wait
    }

    /// Reads from `src` until the buffer is full or the read would block. True when bytes came in.
    pub(super) fn fill(&mut self, src: &mut impl Endpoint) -> Result<bool, Fault> {
        let mut moved = false;
        while !self.eof && self.read_wait.is_none() && self.buf.has_room() {
            match src.read_into(self.buf.room()) {
                Io::Moved(n) => {
                    self.buf.commit(n);
                    self.read += n as u64;
                    moved = true;
                }
                Io::Blocked(interest) => self.read_wait = Some(interest),
                Io::Ended => self.eof = true,
                Io::Truncated => {
                    self.eof = true;
                    self.truncated = true;
                }
                Io::Failed(reason) => return Err(Fault::Source(reason)),
            }
        }
        Ok(moved)
    }

    /// Writes the buffer to `dst` until it is empty or the write would block. True when bytes
    /// went out.
    fn write_out(&mut self, dst: &mut impl Endpoint) -> Result<bool, Fault> {
        let mut moved = false;
        while !self.buf.is_empty() && self.write_wait.is_none() {
            match dst.write_from(self.buf.filled()) {
                Io::Moved(n) => {
                    self.buf.consume(n);
                    self.written += n as u64;
                    moved = true;
                }
                Io::Blocked(interest) => self.write_wait = Some(interest),
                Io::Ended | Io::Truncated => return Err(Fault::Sink("closed".into())),
                Io::Failed(reason) => return Err(Fault::Sink(reason)),
            }
        }
        Ok(moved)
    }

    /// Sends what `dst` still holds from an earlier drain, until it is all out or the socket is
    /// full. True when bytes went.
    fn send_left_over(&mut self, dst: &mut impl Endpoint) -> Result<bool, Fault> {
        if !dst.pending_out() || self.write_wait.is_some() {
            return Ok(false);
        }
        self.send_gathered(dst)
    }

    /// Sends what `dst` gathered (ending its batch) and records how it went. True when bytes
    /// went.
    fn send_gathered(&mut self, dst: &mut impl Endpoint) -> Result<bool, Fault> {
        match dst.send_gathered() {
            Io::Moved(n) => {
                if dst.pending_out() {
                    // A partial send: the socket is full.
                    self.write_wait = Some(Interest::Write);
                }
                Ok(n > 0)
            }
            Io::Blocked(interest) => {
                self.write_wait = Some(interest);
                Ok(false)
            }
            Io::Ended | Io::Truncated => Err(Fault::Sink("closed".into())),
            Io::Failed(reason) => Err(Fault::Sink(reason)),
        }
    }

    /// Writes to `dst` until the buffer is empty or the write would block, then passes the
    /// source's end on once everything is out. True when bytes went out.
    pub(super) fn drain(&mut self, dst: &mut impl Endpoint) -> Result<bool, Fault> {
        // Bytes an earlier drain left in `dst` go before anything else; while they cannot, every
        // write would be refused anyway.
        let flushed = self.send_left_over(dst)?;
        // More than one record's worth is gathered and sent at once: each send on loopback or a
        // LAN costs the sender the receiver's TCP path and a wake-up. The batch ends (and is
        // sent) however the writes end, emptied, blocked or failed, so nothing is held back
        // while the relay waits, and a later close_notify is never gathered.
        let batch = self.write_wait.is_none() && self.buf.filled().len() > RECORD;
        if batch {
            dst.gather();
        }
        let written = self.write_out(dst);
        let sent = if batch {
            self.send_gathered(dst)
        } else {
            Ok(false)
        };
        let moved = written? | sent? | flushed;
        if self.eof
            && !self.shut
            && self.buf.is_empty()
            && self.write_wait.is_none()
            && !dst.pending_out()
        {
            // A cut stream must not reach a plaintext peer as a whole one: the reset goes out
            // when the relay ends, which it does once this lane is shut.
            if self.truncated && dst.reset() {
                self.shut = true;
                return Ok(moved);
            }
            match dst.close_write() {
                Io::Moved(_) => self.shut = true,
                Io::Blocked(interest) => self.write_wait = Some(interest),
                Io::Ended | Io::Truncated | Io::Failed(_) => {
                    // The peer is already gone, so it cannot miss the end-of-stream signal, and
                    // everything it was sent got out: nothing was lost.
                    self.shut = true;
                }
            }
        }
        Ok(moved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::RawFd;

    /// A sink that takes one record per write and then answers with `after`, whose gathered
    /// sends answer with `sends` in turn (then `Moved`), recording the calls it gets.
    struct Sink {
        writes_left: usize,
        after: fn() -> Io,
        sends: Vec<fn() -> Io>,
        gathering: bool,
        pending: bool,
        log: Vec<String>,
    }

    impl Endpoint for Sink {
        fn fd(&self) -> RawFd {
            -1
        }
        fn read_into(&mut self, _: &mut [u8]) -> Io {
            Io::Blocked(Interest::Read)
        }
        fn write_from(&mut self, data: &[u8]) -> Io {
            if (self.pending && !self.gathering) || self.writes_left == 0 {
                self.log.push("blocked-or-failed".into());
                return (self.after)();
            }
            self.writes_left -= 1;
            let n = data.len().min(RECORD);
            self.log.push(format!("write {n}"));
            Io::Moved(n)
        }
        fn close_write(&mut self) -> Io {
            self.log.push("close".into());
            Io::Moved(0)
        }
        fn gather(&mut self) {
            self.log.push("gather".into());
            self.gathering = true;
            self.pending = true;
        }
        fn send_gathered(&mut self) -> Io {
            self.log.push("send".into());
            self.gathering = false;
            let io = if self.sends.is_empty() {
                Io::Moved(1)
            } else {
                (self.sends.remove(0))()
            };
            self.pending = !matches!(io, Io::Moved(_));
            io
        }
        fn pending_out(&self) -> bool {
            self.pending
        }
    }

    fn sink(writes: usize, after: fn() -> Io, sends: Vec<fn() -> Io>) -> Sink {
        Sink {
            writes_left: writes,
            after,
            sends,
            gathering: false,
            pending: false,
            log: Vec::new(),
        }
    }

    fn queued(n: usize) -> Lane {
        let mut lane = Lane::new();
        lane.buf.room();
        lane.buf.commit(n);
        lane
    }

    fn drained(queued_bytes: usize, writes: usize, after: fn() -> Io) -> (Vec<String>, bool) {
        let mut lane = queued(queued_bytes);
        let mut sink = sink(writes, after, Vec::new());
        let ok = lane.drain(&mut sink).is_ok();
        (sink.log, ok)
    }

    #[test]
    fn several_records_are_gathered_and_sent_however_the_writes_end() {
        let (log, ok) = drained(3 * RECORD, 3, || Io::Blocked(Interest::Write));
        assert!(ok);
        assert_eq!(log.first().map(String::as_str), Some("gather"));
        assert_eq!(log.iter().filter(|l| l.starts_with("write")).count(), 3);
        assert_eq!(log.last().map(String::as_str), Some("send"));

        let (log, _) = drained(3 * RECORD, 1, || Io::Blocked(Interest::Write));
        assert_eq!(log.last().map(String::as_str), Some("send"), "{log:?}");

        let (log, ok) = drained(3 * RECORD, 1, || Io::Failed("reset".into()));
        assert!(!ok);
        assert_eq!(log.last().map(String::as_str), Some("send"), "{log:?}");
    }

    #[test]
    fn one_record_or_less_is_not_gathered() {
        let (log, ok) = drained(RECORD, 1, || Io::Blocked(Interest::Write));
        assert!(ok);
        assert_eq!(log, vec!["write 16384".to_string()]);
    }

    #[test]
    fn what_a_send_left_is_waited_for_and_sent_before_the_end_is_passed_on() {
        let mut lane = queued(2 * RECORD);
        lane.eof = true;
        let mut sink = sink(
            usize::MAX,
            || Io::Blocked(Interest::Write),
            vec![|| Io::Blocked(Interest::Write)],
        );
        assert!(
            matches!(lane.drain(&mut sink), Ok(true)),
            "the records were taken"
        );
        // The buffer is empty, but the sink still holds bytes: the lane waits to write them.
        assert!(lane.buf.is_empty());
        assert_eq!(lane.write_interest(&sink), Some(Interest::Write));
        assert!(!lane.shut);
        assert!(!sink.log.contains(&"close".to_string()));
        // POLLOUT: what was left goes first, then close_notify.
        lane.write_wait = None;
        sink.log.clear();
        assert!(matches!(lane.drain(&mut sink), Ok(true)));
        assert_eq!(sink.log, vec!["send".to_string(), "close".to_string()]);
        assert!(lane.shut);
        assert_eq!(lane.write_interest(&sink), None);
    }

    /// The upstream sent its last bytes and waits for an answer: the lane is empty and its
    /// source still open, and only the wait for POLLOUT can move what the send left.
    #[test]
    fn what_a_send_left_is_waited_for_while_the_source_stays_open() {
        let mut lane = queued(2 * RECORD);
        let mut sink = sink(
            usize::MAX,
            || Io::Blocked(Interest::Write),
            vec![|| Io::Blocked(Interest::Write)],
        );
        assert!(matches!(lane.drain(&mut sink), Ok(true)));
        assert!(lane.buf.is_empty() && !lane.eof);
        assert_eq!(lane.write_interest(&sink), Some(Interest::Write));
        lane.write_wait = None;
        sink.log.clear();
        assert!(matches!(lane.drain(&mut sink), Ok(true)));
        assert_eq!(sink.log, vec!["send".to_string()]);
        assert_eq!(lane.write_interest(&sink), None);
    }

    #[test]
    fn a_lane_with_nothing_left_anywhere_asks_for_no_write() {
        let lane = Lane::new();
        let sink = sink(0, || Io::Blocked(Interest::Write), Vec::new());
        assert_eq!(lane.write_interest(&sink), None);
    }
}
