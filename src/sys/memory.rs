//! The process's allocator settings, and giving memory back while a connection is quiet: the
//! unused part of its thread's stack, the thread's OpenSSL state, and the heap's free pages.
//!
//! Owns the allocator's configuration ([`malloc_conf`]) and the calls that release memory; it
//! must never decide when to release it (the relay does).
//!
//! The whole process allocates from jemalloc: the binary's `#[global_allocator]` for Rust, and,
//! because tikv-jemalloc-sys is built with unprefixed symbols, the C `malloc`/`free` that libssl,
//! libcrypto and libc call too. glibc's malloc gives every thread a cache (tcache) that only an
//! environment variable can turn off, and with thousands of mostly idle connection threads those
//! caches were a third of a held connection's memory; jemalloc's are turned off here, in the
//! binary, however it is started.

use std::ffi::{CStr, c_char};

use super::ossl_ext;

/// The allocator's options, which jemalloc reads once, at its first allocation (before `main`):
/// - `tcache:false`: no per-thread cache. An idle connection thread would otherwise keep what its
///   handshake freed (the cache is flushed only by that thread's own later allocations), and a
///   thread per connection makes that thousands of caches;
/// - `percpu_arena:percpu`: one arena per CPU, chosen by the CPU a thread runs on, so arenas do not
///   grow with the thread count and, with no cache, allocations on different cores rarely share a
///   lock;
/// - `narenas:1`: with per-CPU arenas, jemalloc takes the larger of this and the CPU count, so
///   the count stays one arena per CPU; what the setting changes is that jemalloc keeps per-CPU
///   arenas where the process may run on fewer CPUs than the machine has (taskset, a container's
///   cpuset, systemd's `CPUAffinity=`). Without it jemalloc finds the CPU count "not
///   deterministic" there, writes a warning to stderr at the first allocation and falls back to
///   four arenas per allowed CPU that threads share round-robin whatever CPU they run on (at
///   2,000 held connections that cost no memory, 29.7–29.8 KiB RSS each either way: the decay
///   and purge below keep the extra arenas small; what it loses is that concurrent allocations
///   on different cores no longer have arenas of their own). With it, a CPU whose number is past
///   the count gets its arena when a thread first allocates there;
/// - `dirty_decay_ms:1000`, `muzzy_decay_ms:0`: pages freed in a burst (handshakes) go back to the
///   kernel within a second instead of ten, and [`trim_heap`] purges at once when connections fall
///   quiet.
///
/// `MALLOC_CONF` in the environment is read after this and overrides it, key by key.
/// The name is jemalloc's: it looks for a symbol `malloc_conf` (a weak one of its own otherwise).
#[allow(non_upper_case_globals)]
#[unsafe(no_mangle)]
#[used]
pub static malloc_conf: Option<&'static c_char> = Some(&CONF[0]);

/// [`malloc_conf`]'s text, NUL-terminated as jemalloc reads it.
static CONF: [c_char; CONF_TEXT.len()] = as_c_chars(CONF_TEXT);

/// See [`malloc_conf`].
const CONF_TEXT: &[u8] =
    b"tcache:false,percpu_arena:percpu,narenas:1,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

/// The bytes of an ASCII text as C's `char`s (`i8` here), in a constant.
const fn as_c_chars<const N: usize>(text: &[u8]) -> [c_char; N] {
    let mut out = [0; N];
    let mut i = 0;
    while i < N {
        // ASCII only: every byte of CONF_TEXT is below 128, so the cast keeps its value.
        out[i] = text[i] as c_char;
        i += 1;
    }
    out
}

/// Room kept below the stack pointer where the stack is given back through libc's madvise(2)
/// (not on x86-64, which makes the call inline): the wrapper's return address and frame, and
/// AArch64's or any other ABI's use of the space just below the stack pointer. Every page that
/// reaches into this room is kept.
#[cfg(not(target_arch = "x86_64"))]
const STACK_MARGIN: usize = 256;

/// Gives the kernel back the pages of this thread's stack that lie wholly below the stack pointer.
/// Nothing live is there: the stack grows down, and what deeper calls (the TLS handshake,
/// OpenSSL's cleanup, the heap trim) left behind is never read again. The pages stay mapped, and a
/// later call that goes that deep faults in zeroed pages as it would on a new thread. A held idle
/// connection then keeps only the pages its frames and its wait use resident, instead of
/// everything its handshake touched. Does nothing where the stack's bounds cannot be read.
///
/// Always inlined, and the cut taken at the stack pointer itself rather than under a frame with a
/// margin: the frames from the thread's start down to the relay's poll are kept within two pages
/// (docs/scaling.md, "The connection thread's stack"), a hundred bytes or so above the second
/// page's end, and a frame of this function's own or a margin would reach into a third page and
/// keep it. The relay calls this last, from its loop's own frame, after everything else it gives
/// back, and then waits with nothing deeper in between.
#[inline(always)]
pub fn release_unused_stack() {
    let Some((low, high)) = stack_bounds() else {
        return;
    };
    let sp = stack_pointer();
    if sp <= low || sp > high {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    // SAFETY: madvise(MADV_DONTNEED) of [low, rsp rounded down to a page): this thread's own
    // stack below the stack pointer, where no live frame is (the stack grows down). The asm is
    // not `nostack`, so the compiler keeps nothing it will read again below the stack pointer
    // (no red zone) across it; the system call itself writes nothing there. The range is empty
    // (and nothing is done) when the stack pointer is in the stack's lowest page. MADV_DONTNEED
    // only drops the pages' contents, which nothing reads before writing; a failure changes
    // nothing. The syscall clobbers rcx, r11 and the flags, rax holds its result.
    unsafe {
        std::arch::asm!(
            "mov rsi, rsp",
            "and rsi, -4096",
            "cmp rsi, rdi",
            "jbe 2f",
            "sub rsi, rdi",
            "syscall",
            "2:",
            inlateout("rax") libc::SYS_madvise => _,
            in("rdi") low,
            out("rsi") _,
            in("rdx") libc::MADV_DONTNEED,
            lateout("rcx") _,
            lateout("r11") _,
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let top = sp.saturating_sub(STACK_MARGIN) & !4095;
        if top > low {
            // SAFETY: [low, top) is this thread's own stack below the stack pointer by the
            // margin, where no live frame is; MADV_DONTNEED only drops the pages' contents,
            // which nothing reads before writing; a failure changes nothing.
            unsafe {
                libc::madvise(low as *mut libc::c_void, top - low, libc::MADV_DONTNEED);
            }
        }
    }
}

/// The calling thread's stack, lowest and highest address; None where they cannot be read. Never
/// inlined: its locals (the attributes glibc fills in) are below the stack pointer by the time the
/// stack is given back.
#[inline(never)]
fn stack_bounds() -> Option<(usize, usize)> {
    // SAFETY: an all-zero pthread_attr_t is only a place for pthread_getattr_np to fill in.
    let mut attr: libc::pthread_attr_t = unsafe { std::mem::zeroed() };
    // SAFETY: pthread_getattr_np initialises `attr` for the calling thread, which exists.
    if unsafe { libc::pthread_getattr_np(libc::pthread_self(), &mut attr) } != 0 {
        return None;
    }
    let mut low: *mut libc::c_void = std::ptr::null_mut();
    let mut size: libc::size_t = 0;
    // SAFETY: `attr` was initialised above; the call writes the two values it is given and
    // pthread_attr_destroy then frees what pthread_getattr_np allocated, once.
    let found = unsafe {
        let found = libc::pthread_attr_getstack(&attr, &mut low, &mut size) == 0;
        libc::pthread_attr_destroy(&mut attr);
        found
    };
    found.then(|| (low as usize, low as usize + size))
}

/// The stack pointer where this is inlined.
#[inline(always)]
fn stack_pointer() -> usize {
    let sp: usize;
    // SAFETY: the instruction only copies the stack pointer into a register; it reads no memory
    // and changes nothing else.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        std::arch::asm!("mov {}, rsp", out(reg) sp, options(nomem, nostack, preserves_flags));
    }
    // SAFETY: as above, on AArch64.
    #[cfg(target_arch = "aarch64")]
    unsafe {
        std::arch::asm!("mov {}, sp", out(reg) sp, options(nomem, nostack, preserves_flags));
    }
    // Elsewhere a local's address, which is in this frame; STACK_MARGIN covers what lies below.
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        let marker = 0u8;
        sp = std::hint::black_box(&marker) as *const u8 as usize;
    }
    sp
}

/// Frees what OpenSSL keeps for the calling thread alone: its two random generators (a
/// CTR-DRBG with an AES-256 context each) and its error queue. A thread that will next speak TLS
/// only after a quiet spell gets them again on first use, seeded from the shared generator.
pub fn release_openssl_thread_state() {
    ossl_ext::thread_stop();
}

/// Returns the heap's free pages to the kernel now, in every arena (jemalloc's
/// `arena.<all>.purge`), instead of when the decay timer next runs, which, in a process whose
/// threads have all gone quiet, is not until something allocates again.
pub fn trim_heap() {
    // MALLCTL_ARENAS_ALL (4096): every arena.
    let _ = mallctl_call(c"arena.4096.purge");
}

/// Runs a jemalloc control that takes and returns nothing; false when jemalloc refuses it.
fn mallctl_call(name: &CStr) -> bool {
    // SAFETY: `name` is NUL-terminated; a control that neither reads nor writes is given null
    // pointers and zero lengths, as mallctl(3) documents.
    unsafe {
        tikv_jemalloc_sys::mallctl(
            name.as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        ) == 0
    }
}

/// Reads a jemalloc control whose value is a `T` (`bool` for `opt.tcache`, `usize` for
/// `arenas.narenas`, `isize` for the decay times, `*const c_char` for strings); None when jemalloc
/// has no such control. Only the tests read settings back.
#[cfg(test)]
fn mallctl_read<T: Copy + Default>(name: &CStr) -> Option<T> {
    let mut value = T::default();
    let mut len = std::mem::size_of::<T>();
    // SAFETY: `name` is NUL-terminated; `value` is a T of `len` bytes that mallctl writes at most
    // `len` bytes into; every caller names a control whose type is T (mallctl(3)), and a control of
    // another size is refused with EINVAL, not written.
    let ok = unsafe {
        tikv_jemalloc_sys::mallctl(
            name.as_ptr(),
            (&raw mut value).cast::<std::ffi::c_void>(),
            &mut len,
            std::ptr::null_mut(),
            0,
        ) == 0
    };
    ok.then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allocator_runs_with_the_binarys_own_settings() {
        assert_eq!(
            mallctl_read::<bool>(c"opt.tcache"),
            Some(false),
            "per-thread caches are off"
        );
        assert_eq!(mallctl_read::<isize>(c"opt.dirty_decay_ms"), Some(1000));
        assert_eq!(mallctl_read::<isize>(c"opt.muzzy_decay_ms"), Some(0));
        let percpu = mallctl_read::<usize>(c"opt.percpu_arena").expect("opt.percpu_arena");
        // SAFETY: jemalloc answers opt.percpu_arena with a pointer to a static NUL-terminated name.
        let percpu = unsafe { CStr::from_ptr(percpu as *const c_char) };
        assert_eq!(percpu, c"percpu");
        assert!(
            mallctl_call(c"arena.4096.purge"),
            "trim_heap's control is one jemalloc has"
        );
    }

    /// libssl and libcrypto call `malloc` through the dynamic linker; it must find jemalloc's, in
    /// this executable, before glibc's, or OpenSSL's allocations (most of a connection's heap)
    /// would keep glibc's per-thread caches.
    #[test]
    fn openssls_malloc_is_jemallocs() {
        // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name only looks the symbol up.
        let found = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"malloc".as_ptr()) };
        let jemalloc = tikv_jemalloc_sys::malloc as *const std::ffi::c_void;
        assert_eq!(found.cast_const(), jemalloc);
    }
}
