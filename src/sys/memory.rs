//! Giving memory back while a connection is quiet: the unused part of its thread's stack, the
//! thread's OpenSSL state, and the heap's free pages.
//!
//! Owns the calls that release memory; it must never decide when to release it (the relay does).

use super::ossl_ext;

/// Room left untouched below the marker in [`release_unused_stack`]'s frame: the rest of that frame
/// (a few hundred bytes) and the return address of the madvise(2) call, which are live while the
/// pages below are given back. Every page that reaches into this room is kept.
const STACK_MARGIN: usize = 1024;

/// Gives the kernel back the pages of this thread's stack that lie below the caller's frame (less
/// [`STACK_MARGIN`]). Nothing live is there: the stack grows down, and what deeper calls (the TLS
/// handshake) left behind is never read again. The pages stay mapped, and a later call that goes
/// that deep faults in zeroed pages as it would on a new thread. A held idle connection then keeps
/// only the few pages its wait uses resident, instead of everything its handshake touched.
/// Does nothing where the stack's bounds cannot be read.
pub fn release_unused_stack() {
    // SAFETY: an all-zero pthread_attr_t is only a place for pthread_getattr_np to fill in.
    let mut attr: libc::pthread_attr_t = unsafe { std::mem::zeroed() };
    // SAFETY: pthread_getattr_np initialises `attr` for the calling thread, which exists.
    if unsafe { libc::pthread_getattr_np(libc::pthread_self(), &mut attr) } != 0 {
        return;
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
    if !found {
        return;
    }
    let marker = 0u8;
    let here = std::hint::black_box(&marker) as *const u8 as usize;
    let low = low as usize;
    // Whole pages only, all of them at least STACK_MARGIN below this frame.
    let page = 4096;
    let top = here.saturating_sub(STACK_MARGIN) & !(page - 1);
    if top <= low || here > low + size {
        return;
    }
    // SAFETY: [low, top) is this thread's own stack below every live frame (the stack grows down
    // and `top` is under this function's frame by the margin). MADV_DONTNEED only drops the
    // pages' contents, which nothing will read before writing; a failure changes nothing.
    unsafe {
        libc::madvise(low as *mut libc::c_void, top - low, libc::MADV_DONTNEED);
    }
}

/// Frees what OpenSSL keeps for the calling thread alone: its two random generators (a
/// CTR-DRBG with an AES-256 context each) and its error queue. A thread that will next speak TLS
/// only after a quiet spell gets them again on first use, seeded from the shared generator.
pub fn release_openssl_thread_state() {
    ossl_ext::thread_stop();
}

/// Returns the heap's free pages to the kernel, in every malloc arena (glibc's `malloc_trim`,
/// which since 2.8 also releases whole free pages in the middle of a heap, not only at its top).
/// Without it, what a handshake allocated and freed stays resident for as long as a live object
/// of some other connection sits above it.
pub fn trim_heap() {
    // SAFETY: malloc_trim takes a size and touches only the allocator's own state, under its locks.
    unsafe {
        libc::malloc_trim(0);
    }
}
