//! What a held, idle connection keeps of its thread's stack once it has been quiet: nothing below
//! the stack pointer of the poll(2) it waits in. The relay gives back every stack page below its
//! wait (the handshake's, OpenSSL's and the heap trim's) as the last thing it does before waiting,
//! so a connection thread keeps resident only the pages its live frames span.
//!
//! How many pages those frames span depends on how the binary was compiled: in an optimised build
//! (`cargo test --release`) they fit in two pages, which is checked too; a debug build's frames
//! are many times larger, so there only the "nothing below the wait" half is checked.

// On the binary: its threads' stacks are read from /proc, which only a separate process gives.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;
use std::time::Instant;

use openssl::ssl::SslStream;

use crate::support::{PATIENCE, Server, echoes};

/// Connections held at once in each mode.
const HELD: usize = 3;

/// The stack pages a held connection's thread may keep in an optimised build: glibc's thread
/// descriptor and static TLS, and the frames from the thread's start down to the relay's poll
/// (docs/scaling.md, "The connection thread's stack").
const OPTIMISED_PAGES: usize = 2;

const PAGE: u64 = 4096;

/// The x86-64 system call number of poll(2), as /proc/PID/task/TID/syscall shows it.
const SYS_POLL: u64 = 7;

/// One connection thread's stack, as it waits.
#[derive(Debug)]
struct Held {
    tid: String,
    /// The stack pointer at the system call, and the end (top) of the stack mapping holding it.
    sp: u64,
    top: u64,
    /// Resident pages of that mapping, counted from its top (0 is the top page).
    resident: Vec<u64>,
}

/// The server's `conn` threads that wait in a poll(2) whose timeout is longer than the relay's
/// quiet spell (so past the point where the relay gave its memory back), with their stacks.
fn settled_threads(pid: i32) -> Vec<Held> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let ranges: Vec<(u64, u64)> = maps
        .lines()
        .filter_map(|l| {
            let (lo, hi) = l.split_whitespace().next()?.split_once('-')?;
            Some((
                u64::from_str_radix(lo, 16).ok()?,
                u64::from_str_radix(hi, 16).ok()?,
            ))
        })
        .collect();
    let mut held = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap().path();
        let comm = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
        if comm.trim() != "conn" {
            continue;
        }
        // "NR ARG1 .. ARG6 SP PC" while in a system call.
        let syscall = std::fs::read_to_string(task.join("syscall")).unwrap_or_default();
        let fields: Vec<u64> = syscall
            .split_whitespace()
            .map(|f| u64::from_str_radix(f.trim_start_matches("0x"), 16).unwrap_or(u64::MAX))
            .collect();
        let [nr, _fds, _nfds, timeout, .., sp, _pc] = fields[..] else {
            continue;
        };
        // poll's timeout, in milliseconds: the relay waits at most QUIET (500 ms) until it has
        // given its memory back, then until the idle timeout (an hour here).
        if nr != SYS_POLL || timeout as i32 <= 1000 {
            continue;
        }
        let Some(&(lo, hi)) = ranges.iter().find(|(lo, hi)| (*lo..*hi).contains(&sp)) else {
            continue;
        };
        let resident = resident_pages(pid, lo, hi);
        held.push(Held {
            tid: task.file_name().unwrap().to_string_lossy().into_owned(),
            sp,
            top: hi,
            resident,
        });
    }
    held
}

/// The resident pages of `[lo, hi)` in `pid`, as indices from the top page down.
fn resident_pages(pid: i32, lo: u64, hi: u64) -> Vec<u64> {
    use std::os::unix::fs::FileExt;
    let pagemap = std::fs::File::open(format!("/proc/{pid}/pagemap")).unwrap();
    let pages = (hi - lo) / PAGE;
    let mut entries = vec![0u8; pages as usize * 8];
    pagemap.read_exact_at(&mut entries, lo / PAGE * 8).unwrap();
    entries
        .chunks_exact(8)
        .enumerate()
        .filter(|(_, e)| u64::from_le_bytes((*e).try_into().unwrap()) >> 63 == 1)
        .map(|(i, _)| pages - 1 - i as u64)
        .collect()
}

/// Holds `HELD` connections through `server`, each after one echo round trip, until every one of
/// their threads has settled; then checks their stacks.
fn check_held_stacks(server: &Server) {
    let tls = server.connector();
    let mut held: Vec<SslStream<TcpStream>> = Vec::new();
    for _ in 0..HELD {
        let tcp = TcpStream::connect(server.addr).unwrap();
        tcp.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut s = tls.connect("localhost", tcp).unwrap();
        echoes(&mut s, b"held");
        held.push(s);
    }
    let deadline = Instant::now() + PATIENCE;
    let threads = loop {
        let threads = settled_threads(server.pid());
        if threads.len() >= HELD {
            break threads;
        }
        assert!(
            Instant::now() < deadline,
            "the held connections' threads never settled into their long wait: {threads:?}"
        );
        thread::yield_now();
    };
    for t in &threads {
        assert!(!t.resident.is_empty(), "no resident page read for {t:?}");
        // The page holding the stack pointer, counted from the top as `resident` is.
        let sp_page = (t.top - 1 - t.sp) / PAGE;
        let below: Vec<u64> = t
            .resident
            .iter()
            .copied()
            .filter(|&p| p > sp_page)
            .collect();
        assert!(
            below.is_empty(),
            "thread {} keeps stack pages below its wait (pages from the top {below:?}, the \
             wait's is {sp_page}): {t:?}",
            t.tid
        );
        if !cfg!(debug_assertions) {
            assert!(
                t.resident.len() <= OPTIMISED_PAGES,
                "thread {} keeps {} stack pages, {} deep: more than {OPTIMISED_PAGES}: {t:?}",
                t.tid,
                t.resident.len(),
                t.top - t.sp
            );
        }
    }
}

/// Skips where /proc shows neither the system call nor the pages (another architecture, or a
/// kernel that hides them).
fn readable() -> bool {
    if !cfg!(target_arch = "x86_64") {
        eprintln!("skipped: reads x86-64 system call numbers from /proc");
        return false;
    }
    // One entry only: the file has one for every page of the address space.
    let mut entry = [0u8; 8];
    let own = std::fs::File::open("/proc/self/pagemap")
        .and_then(|f| std::os::unix::fs::FileExt::read_exact_at(&f, &mut entry, 0));
    if own.is_err() {
        eprintln!("skipped: /proc/PID/pagemap cannot be read here");
        return false;
    }
    true
}

#[test]
fn a_held_echo_connection_keeps_no_stack_below_its_wait() {
    if !readable() {
        return;
    }
    let server = Server::start(&["--mode", "echo", "--idle-timeout", "3600"]);
    check_held_stacks(&server);
}

#[test]
fn a_held_forward_connection_keeps_no_stack_below_its_wait() {
    if !readable() {
        return;
    }
    // A plaintext echo upstream, one thread per connection.
    let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
    let up = upstream.local_addr().unwrap().to_string();
    thread::spawn(move || {
        for conn in upstream.incoming() {
            let Ok(mut conn) = conn else { return };
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 || conn.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    let server = Server::start(&[
        "--mode",
        "forward",
        "--upstream",
        &up,
        "--idle-timeout",
        "3600",
    ]);
    check_held_stacks(&server);
}
