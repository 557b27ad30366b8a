//! The TLS side's socket ([`Gathered`]): while a lane drains its buffer into `SSL_write`, the
//! records OpenSSL produces (one per call, up to four per drain) are gathered in user space and
//! leave with one send(2) when the drain ends, instead of one send per record. On loopback or a LAN
//! every send costs the sender the receiver's TCP receive path and a wake-up, which TCP_CORK used
//! to save at the price of two setsockopt(2) calls a drain; one send saves both.
//!
//! Owns the gathered bytes and their order: nothing written after them may overtake them, and what
//! a send could not take stays here, in order, until a later send takes it. It must never wait or
//! hold more than one drain's records: while bytes are left over, every write answers
//! `WouldBlock`, so OpenSSL keeps its record and the relay polls for POLLOUT.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};

use super::BUF_SIZE;
use crate::sys::Socket;

/// The most a gathering batch holds: one drain's plaintext ([`BUF_SIZE`], four full records) and
/// each record's header, padding and tag, with room to spare (TLS 1.3 adds 22 bytes a record,
/// a TLS 1.2 CBC suite at most 325).
pub(super) const GATHER_CAP: usize = BUF_SIZE + 4 * 512;

/// A stream socket whose writes can be gathered into one send. Outside a batch (the handshake,
/// single records, close_notify) a write goes straight to the socket, as it would unwrapped.
pub struct Gathered<S> {
    inner: S,
    /// The records of the open batch, or what the last send left of them. Holds no memory
    /// until the first batch, and again after [`Gathered::release`]; while busy it keeps its
    /// capacity, so a drain does not allocate.
    out: Vec<u8>,
    /// How much of `out` the socket has taken.
    sent: usize,
    /// A batch is open: writes are appended to `out` rather than sent.
    gathering: bool,
}

impl<S: Socket> Gathered<S> {
    pub fn new(inner: S) -> Gathered<S> {
        Gathered {
            inner,
            out: Vec::new(),
            sent: 0,
            gathering: false,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Opens a batch: writes from now on are kept until [`Gathered::send_gathered`].
    pub(super) fn gather(&mut self) {
        if self.out.capacity() == 0 {
            self.out.reserve_exact(GATHER_CAP);
        }
        self.gathering = true;
    }

    /// Closes the batch, if one is open, and sends what is gathered or left over, until all of it
    /// is out or the socket refuses more: `Ok(n)`, `n` bytes went by this call, and if
    /// [`Gathered::pending`] still holds the socket is full; `WouldBlock` when it took nothing.
    pub(super) fn send_gathered(&mut self) -> io::Result<usize> {
        self.gathering = false;
        let before = self.sent;
        while self.sent < self.out.len() {
            match self.inner.write(&self.out[self.sent..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.sent += n,
                // A partial send, then a refusal: the socket is full for now.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && self.sent > before => {
                    return Ok(self.sent - before);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let moved = self.out.len() - before;
        // Emptied, not freed: the next drain gathers into the same memory.
        self.out.clear();
        self.sent = 0;
        Ok(moved)
    }

    /// Sends what is held until all of it is out (`Ok`), or the socket takes no more
    /// (`WouldBlock`).
    fn send_all(&mut self) -> io::Result<()> {
        self.send_gathered()?;
        if self.pending() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(())
    }

    /// Whether bytes OpenSSL has written are still here, not yet in the socket.
    pub(super) fn pending(&self) -> bool {
        !self.out.is_empty()
    }

    /// Whether it holds gathering memory now: from its first batch until a quiet spell.
    pub fn holds_memory(&self) -> bool {
        self.out.capacity() > 0
    }

    /// Gives the gathering memory back when nothing is held (a quiet connection's memory).
    pub(super) fn release(&mut self) {
        if self.out.is_empty() {
            self.out = Vec::new();
        }
    }
}

/// The socket and how much is held, not the bytes themselves.
impl<S: std::fmt::Debug> std::fmt::Debug for Gathered<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gathered")
            .field("inner", &self.inner)
            .field("held", &(self.out.len() - self.sent))
            .field("gathering", &self.gathering)
            .finish()
    }
}

impl<S: Socket> Write for Gathered<S> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let fits = self.gathering && self.sent == 0 && self.out.len() + data.len() <= GATHER_CAP;
        if self.pending() && !fits {
            // Older bytes go first; if they cannot, this write waits with them (OpenSSL keeps
            // its record and retries it), so the buffer never grows past one batch.
            self.send_all()?;
        }
        if self.gathering {
            self.out.extend_from_slice(data);
            return Ok(data.len());
        }
        self.inner.write(data)
    }

    fn flush(&mut self) -> io::Result<()> {
        // OpenSSL flushes after a handshake flight or an alert, never inside a batch. Left-over
        // bytes that still do not fit are the relay's to wait for (it polls for POLLOUT while
        // any are pending); a refusal here would only be an error OpenSSL discards.
        if self.pending() && !self.gathering {
            match self.send_all() {
                Err(e) if e.kind() != io::ErrorKind::WouldBlock => return Err(e),
                _ => {}
            }
        }
        self.inner.flush()
    }
}

impl<S: Socket> Read for Gathered<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf)
    }
}

impl<S: Socket> AsRawFd for Gathered<S> {
    fn as_raw_fd(&self) -> RawFd {
        self.inner.as_raw_fd()
    }
}

impl<S: Socket> Socket for Gathered<S> {
    fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        self.inner.set_nonblocking(on)
    }

    /// Only called after close_notify has gone out, which it cannot before every gathered byte.
    fn shutdown_write(&self) -> io::Result<()> {
        self.inner.shutdown_write()
    }

    fn set_cork(&self, on: bool) -> bool {
        self.inner.set_cork(on)
    }

    fn set_nodelay(&self) {
        self.inner.set_nodelay();
    }

    fn tcp_local_addr(&self) -> Option<SocketAddr> {
        self.inner.tcp_local_addr()
    }

    fn reset_on_close(&self) -> bool {
        self.inner.reset_on_close()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    /// A connected pair on 127.0.0.1: the gathered, non-blocking end with a small send buffer,
    /// and its peer.
    fn pair() -> (Gathered<TcpStream>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (b, _) = listener.accept().unwrap();
        a.set_nonblocking(true).unwrap();
        socket2::SockRef::from(&a)
            .set_send_buffer_size(4096)
            .unwrap();
        socket2::SockRef::from(&b)
            .set_recv_buffer_size(4096)
            .unwrap();
        (Gathered::new(a), b)
    }

    #[test]
    fn a_batch_goes_out_in_one_send_and_its_memory_is_kept_until_released() {
        let (mut g, mut peer) = pair();
        g.gather();
        for chunk in [b"one " as &[u8], b"two ", b"three"] {
            assert_eq!(g.write(chunk).unwrap(), chunk.len());
        }
        assert!(g.pending());
        assert_eq!(g.send_gathered().unwrap(), 13);
        assert!(!g.pending());
        assert!(g.out.capacity() >= GATHER_CAP, "kept for the next drain");
        let mut got = [0u8; 13];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"one two three");
        g.release();
        assert_eq!(g.out.capacity(), 0);
        // Outside a batch a write goes straight to the socket.
        assert_eq!(g.write(b"direct").unwrap(), 6);
        assert!(!g.pending());
        assert_eq!(g.out.capacity(), 0);
    }

    #[test]
    fn what_a_full_socket_leaves_holds_back_every_later_write_and_keeps_its_order() {
        let (mut g, mut peer) = pair();
        let data: Vec<u8> = (0..GATHER_CAP).map(|i| (i % 251) as u8).collect();
        g.gather();
        for record in data.chunks(16 * 1024 + 22) {
            assert_eq!(g.write(record).unwrap(), record.len());
        }
        let took = g.send_gathered().unwrap();
        assert!(took < GATHER_CAP, "a small socket took the whole batch");
        assert!(g.pending());
        // Later writes, in a batch or not, wait behind the left-over bytes.
        assert_eq!(
            g.write(b"late").unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        g.gather();
        assert_eq!(
            g.write(b"late").unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        g.release();
        assert!(g.pending(), "never gives back bytes not yet sent");
        assert!(g.out.capacity() <= GATHER_CAP, "the batch never grew");
        let reader = std::thread::spawn(move || {
            let mut got = vec![0u8; GATHER_CAP + 4];
            peer.read_exact(&mut got).unwrap();
            got
        });
        // As the peer reads, the left-over bytes go, and only then the late write: it is refused
        // (and retried once the socket takes more) until nothing older is left.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            match g.write(b"late") {
                Ok(n) => {
                    assert_eq!(n, 4);
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let ready = crate::sys::wait(
                        g.as_raw_fd(),
                        crate::sys::Interest::Write,
                        Some(deadline),
                    );
                    assert!(ready.unwrap(), "the socket never took more");
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert!(!g.pending());
        let got = reader.join().unwrap();
        assert_eq!(&got[..GATHER_CAP], &data[..]);
        assert_eq!(&got[GATHER_CAP..], b"late");
    }
}
