//! The raw OpenSSL calls the TLS rooms need and the openssl crate does not wrap: a CRL added to a
//! trust store from memory, and the session-ticket decryption callback with the session's peer
//! certificate. Each is fenced here behind a safe function.
//!
//! This file belongs in `sys/ossl_ext.rs` (issue 18's one home of unsafe) at merge; until then it
//! sits beside its only caller. It holds no policy: what a resumed session must pass is decided in
//! `resume`.

use foreign_types::{ForeignType, ForeignTypeRef};
use openssl::asn1::{Asn1GeneralizedTimeRef, Asn1TimeRef};
use openssl::error::ErrorStack;
use openssl::ssl::{SslContextBuilder, SslRef};
use openssl::x509::store::X509StoreBuilderRef;
use openssl::x509::{X509Crl, X509Ref};

/// Adds a CRL to a trust store (`X509_STORE_add_crl`, which takes its own reference).
pub(super) fn add_crl(store: &mut X509StoreBuilderRef, crl: &X509Crl) -> Result<(), ErrorStack> {
    // SAFETY: both pointers are live for the call; OpenSSL takes its own reference to the CRL
    // (X509_CRL_up_ref) and copies nothing else.
    let rc = unsafe { X509_STORE_add_crl(store.as_ptr(), crl.as_ptr()) };
    if rc == 1 {
        Ok(())
    } else {
        Err(ErrorStack::get())
    }
}

/// An OCSP GeneralizedTime as an ASN.1 time, to compare and subtract: OpenSSL's ASN1_TIME and
/// ASN1_GENERALIZEDTIME are the same ASN1_STRING type (`ASN1_TIME_diff` takes either), which the
/// openssl crate types apart and does not convert.
pub(super) fn as_time(t: &Asn1GeneralizedTimeRef) -> &Asn1TimeRef {
    // SAFETY: both are `ASN1_STRING` in OpenSSL; the reference borrows `t`, so it lives no
    // longer than the response that owns it.
    unsafe { Asn1TimeRef::from_ptr(t.as_ptr().cast::<openssl_sys::ASN1_TIME>()) }
}

/// What the decryption hook says about a ticket that decrypted: keep it, or ignore it (a full
/// handshake follows, and the new session gets a ticket as usual).
pub(super) type TicketCheck = fn(&SslRef, &X509Ref) -> bool;

/// Where the hook finds its check (a plain function, so no pointer has to outlive a context):
/// one per process, set by the first context that installs it.
static TICKET_CHECK: std::sync::OnceLock<TicketCheck> = std::sync::OnceLock::new();

/// Runs `check` on the peer certificate of every session ticket that decrypts, TLS 1.2 and 1.3
/// alike (`SSL_CTX_set_session_ticket_cb`), before OpenSSL resumes the session: a ticket whose
/// certificate fails it is ignored and the handshake goes on as a full one. OpenSSL calls this
/// on the context the connection started on (its session context), so `builder` is the default
/// context; the check sees the connection, whose context is by then the one SNI chose.
pub(super) fn on_ticket_decrypted(
    builder: &mut SslContextBuilder,
    check: TicketCheck,
) -> Result<(), ErrorStack> {
    // One check exists (resume's); every context installs that same function, so the first
    // one set is the one every later context would set.
    let _ = TICKET_CHECK.set(check);
    // SAFETY: `builder` is a live SSL_CTX; the callback is a plain function with no argument
    // pointer, which reads only the static above.
    let rc = unsafe {
        SSL_CTX_set_session_ticket_cb(
            builder.as_ptr(),
            None,
            Some(decrypt_ticket_cb),
            std::ptr::null_mut(),
        )
    };
    if rc == 1 {
        Ok(())
    } else {
        Err(ErrorStack::get())
    }
}

const SSL_TICKET_SUCCESS: libc::c_int = 5;
const SSL_TICKET_SUCCESS_RENEW: libc::c_int = 6;
const SSL_TICKET_RETURN_IGNORE_RENEW: libc::c_int = 2;
const SSL_TICKET_RETURN_USE: libc::c_int = 3;
const SSL_TICKET_RETURN_USE_RENEW: libc::c_int = 4;

/// The decryption callback: OpenSSL's default answers (use a ticket that decrypted, renewing it
/// when the key callback asked; otherwise a full handshake with a new ticket), except that a
/// ticket whose peer certificate fails the check is not used. It must not unwind into C.
unsafe extern "C" fn decrypt_ticket_cb(
    ssl: *mut openssl_sys::SSL,
    session: *mut openssl_sys::SSL_SESSION,
    _key_name: *const libc::c_uchar,
    _key_name_len: libc::size_t,
    status: libc::c_int,
    _arg: *mut libc::c_void,
) -> libc::c_int {
    let use_it = match status {
        SSL_TICKET_SUCCESS => SSL_TICKET_RETURN_USE,
        SSL_TICKET_SUCCESS_RENEW => SSL_TICKET_RETURN_USE_RENEW,
        _ => return SSL_TICKET_RETURN_IGNORE_RENEW,
    };
    if ssl.is_null() || session.is_null() {
        return SSL_TICKET_RETURN_IGNORE_RENEW;
    }
    // SAFETY: OpenSSL passes the live SSL being handshaken and the session it decrypted; the
    // session owns its peer certificate (get0: no reference taken) for the whole call.
    let peer = unsafe { SSL_SESSION_get0_peer(session) };
    if peer.is_null() {
        // A session made without a client certificate has nothing to re-check.
        return use_it;
    }
    let Some(check) = TICKET_CHECK.get() else {
        return SSL_TICKET_RETURN_IGNORE_RENEW;
    };
    // SAFETY: as above; both references live only for this call.
    let (ssl, peer) = unsafe { (SslRef::from_ptr(ssl), X509Ref::from_ptr(peer)) };
    let kept = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(ssl, peer)));
    if kept.unwrap_or(false) {
        use_it
    } else {
        SSL_TICKET_RETURN_IGNORE_RENEW
    }
}

type DecryptTicketCallback = unsafe extern "C" fn(
    *mut openssl_sys::SSL,
    *mut openssl_sys::SSL_SESSION,
    *const libc::c_uchar,
    libc::size_t,
    libc::c_int,
    *mut libc::c_void,
) -> libc::c_int;

type GenerateTicketCallback =
    unsafe extern "C" fn(*mut openssl_sys::SSL, *mut libc::c_void) -> libc::c_int;

unsafe extern "C" {
    fn X509_STORE_add_crl(
        store: *mut openssl_sys::X509_STORE,
        crl: *mut openssl_sys::X509_CRL,
    ) -> libc::c_int;
    fn SSL_CTX_set_session_ticket_cb(
        ctx: *mut openssl_sys::SSL_CTX,
        gen_cb: Option<GenerateTicketCallback>,
        dec_cb: Option<DecryptTicketCallback>,
        arg: *mut libc::c_void,
    ) -> libc::c_int;
    fn SSL_SESSION_get0_peer(session: *mut openssl_sys::SSL_SESSION) -> *mut openssl_sys::X509;
}
