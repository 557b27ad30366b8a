//! Every raw libssl/libcrypto call the openssl crate does not wrap, fenced in one file as
//! pingora's `pingora-openssl/src/ext.rs` does: the negotiated key-exchange group, ClientHello
//! extensions, a connection's session ID context, offering a session on a connection
//! ([`LastSession`]), session-ticket keys with their callback's crypto, the thread-state
//! release `OPENSSL_thread_stop`, a CRL added to a store from memory, an OCSP GeneralizedTime
//! read as an ASN.1 time, and the session-ticket decryption hook with the session's peer
//! certificate (what a resumed session must pass is decided in `tls::resume`).
//!
//! Owns the FFI declarations and the safe wrappers around them; it must never hold TLS policy
//! (which groups, keys or contexts to use is the tls room's).

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use foreign_types::{ForeignType, ForeignTypeRef};
use openssl::asn1::{Asn1GeneralizedTimeRef, Asn1TimeRef};
use openssl::error::ErrorStack;
use openssl::ex_data::Index;
use openssl::ssl::{Ssl, SslContext, SslContextBuilder, SslRef};
use openssl::x509::store::X509StoreBuilderRef;
use openssl::x509::{X509Crl, X509Ref};

unsafe extern "C" {
    /// libcrypto (OpenSSL 1.1.0 and later): frees the calling thread's own OpenSSL state, which
    /// the library creates again on the thread's next use. openssl-sys does not declare it.
    fn OPENSSL_thread_stop();
}

/// `OPENSSL_thread_stop`: frees the calling thread's OpenSSL state (see
/// [`super::memory::release_openssl_thread_state`], which says when that is worth doing).
pub(super) fn thread_stop() {
    // SAFETY: the call touches only the calling thread's OpenSSL thread-local state, which nothing
    // borrows across this call: every SSL object stays valid and independent of it.
    unsafe { OPENSSL_thread_stop() }
}

/// The body of extension `kind` in the ClientHello being processed; only inside the ClientHello
/// callback. The openssl crate does not wrap `SSL_client_hello_get0_ext`.
pub fn client_hello_ext(ssl: &mut openssl::ssl::SslRef, kind: u32) -> Option<&[u8]> {
    use foreign_types::ForeignTypeRef;
    let mut out: *const libc::c_uchar = std::ptr::null();
    let mut len: libc::size_t = 0;
    // SAFETY: `ssl` is a live SSL borrowed mutably for the call; OpenSSL writes a pointer into its
    // own copy of the ClientHello and its length, or returns 0 and writes nothing.
    let found =
        unsafe { openssl_sys::SSL_client_hello_get0_ext(ssl.as_ptr(), kind, &mut out, &mut len) };
    if found != 1 || out.is_null() {
        return None;
    }
    // SAFETY: OpenSSL guarantees `len` bytes at `out`, alive while the ClientHello is processed,
    // which outlives the borrow of `ssl` the slice is tied to (the callback's).
    Some(unsafe { std::slice::from_raw_parts(out, len) })
}

/// Sets one connection's session ID context (at most 32 bytes), which the openssl crate offers
/// only per context. Returns whether OpenSSL took it.
pub fn set_session_id_context(ssl: &mut openssl::ssl::SslRef, sid_ctx: &[u8]) -> bool {
    use foreign_types::ForeignTypeRef;
    let Ok(len) = libc::c_uint::try_from(sid_ctx.len()) else {
        return false;
    };
    // SAFETY: `ssl` is a live SSL; OpenSSL copies `len` bytes from `sid_ctx`, which outlives the
    // call.
    unsafe { SSL_set_session_id_context(ssl.as_ptr(), sid_ctx.as_ptr(), len) == 1 }
}

/// A client context's last session with each upstream address, to offer on the next connection
/// to that address (resumption). OpenSSL requires a session offered on a connection to come from
/// that connection's context, which the openssl crate leaves to the caller (`set_session` is
/// unsafe); each slot records the context its session came from and offers it only to connections
/// of that context. A session is for one server: offered to another address of an upstream set it
/// would only cost a failed resumption, so the slots are keyed by the address a connection goes to.
#[derive(Default)]
pub struct LastSession {
    /// Per address: the session and the address of the SSL_CTX that made it.
    slots: std::sync::Mutex<HashMap<String, (openssl::ssl::SslSession, usize)>>,
}

/// The most addresses kept: names that resolve anew could otherwise grow the map without end.
const SESSION_SLOTS: usize = 256;

/// Where a connection's SSL object carries the upstream address its session is kept under.
fn session_key_index() -> Option<Index<Ssl, String>> {
    static INDEX: OnceLock<Option<Index<Ssl, String>>> = OnceLock::new();
    *INDEX.get_or_init(|| Ssl::new_ex_index().ok())
}

impl LastSession {
    /// Keeps every new session the context made with `builder` gets, under the address its
    /// connection was offered for ([`LastSession::offer`]), the last one winning.
    pub fn install(builder: &mut SslContextBuilder) -> Arc<LastSession> {
        let last = Arc::new(LastSession::default());
        let slot = Arc::clone(&last);
        builder.set_new_session_callback(move |ssl, session| {
            let ctx = context_address(ssl);
            let key = session_key_index().and_then(|i| ssl.ex_data(i)).cloned();
            if let Some(key) = key {
                let mut slots = slot.lock();
                if slots.len() >= SESSION_SLOTS && !slots.contains_key(&key) {
                    slots.clear();
                }
                slots.insert(key, (session, ctx));
            }
        });
        last
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, (openssl::ssl::SslSession, usize)>> {
        self.slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Marks `ssl` as a connection to `key`, so that the sessions it gets are kept under `key`,
    /// without offering one.
    pub fn mark(&self, ssl: &mut SslRef, key: &str) {
        if let Some(index) = session_key_index() {
            ssl.set_ex_data(index, key.to_string());
        }
    }

    /// Marks `ssl` as a connection to `key` and offers that address's last session when it came
    /// from `ssl`'s own context. Returns whether a session was offered.
    pub fn offer(&self, ssl: &mut SslRef, key: &str) -> Result<bool, ErrorStack> {
        self.mark(ssl, key);
        let last = self.lock().get(key).cloned();
        match last {
            Some((session, ctx)) if ctx == context_address(ssl) => {
                // SAFETY: SSL_set_session needs the session to come from the connection's own
                // SSL_CTX, which the address comparison just above establishes.
                unsafe { ssl.set_session(&session) }?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Forgets `key`'s last session (after a failed handshake, which it must not fail again).
    pub fn forget(&self, key: &str) {
        self.lock().remove(key);
    }
}

/// The address of a connection's SSL_CTX, to tell contexts apart.
fn context_address(ssl: &SslRef) -> usize {
    use foreign_types::ForeignTypeRef;
    ssl.ssl_context().as_ptr() as usize
}

/// `SSL_CTRL_GET_NEGOTIATED_GROUP` (ssl.h), behind the `SSL_get_negotiated_group` macro.
const SSL_CTRL_GET_NEGOTIATED_GROUP: libc::c_int = 134;

unsafe extern "C" {
    fn SSL_set_session_id_context(
        ssl: *mut openssl_sys::SSL,
        sid_ctx: *const libc::c_uchar,
        sid_ctx_len: libc::c_uint,
    ) -> libc::c_int;

    /// OpenSSL 3.0 and later: the name of a group ID as `SSL_get_negotiated_group` returns it.
    fn SSL_group_to_name(ssl: *mut openssl_sys::SSL, id: libc::c_int) -> *const libc::c_char;
}

/// The key-exchange group the handshake agreed on (`x25519`, `X25519MLKEM768`, ...), which is how
/// an operator sees post-quantum key exchange in use. The openssl crate wraps neither call.
pub fn negotiated_group(ssl: &openssl::ssl::SslRef) -> Option<String> {
    use foreign_types::ForeignTypeRef;
    let ptr = ssl.as_ptr();
    // SAFETY: `ptr` is a live SSL for the borrow of `ssl`; this control only reads its state.
    let id = unsafe {
        openssl_sys::SSL_ctrl(ptr, SSL_CTRL_GET_NEGOTIATED_GROUP, 0, std::ptr::null_mut())
    };
    let id = libc::c_int::try_from(id).ok().filter(|&id| id > 0)?;
    // SAFETY: as above; the result is NULL or a NUL-terminated string owned by libssl's static
    // tables (or the provider's), valid beyond this call, and copied at once.
    let name = unsafe { SSL_group_to_name(ptr, id) };
    if name.is_null() {
        return None;
    }
    // SAFETY: non-NULL and NUL-terminated, as documented for SSL_group_to_name.
    let name = unsafe { std::ffi::CStr::from_ptr(name) };
    Some(name.to_string_lossy().into_owned())
}

/// One session-ticket key in nginx's `ssl_session_ticket_key` layout (80 bytes): the name that
/// tickets carry, the HMAC-SHA256 key, the AES-256-CBC key.
#[derive(Clone, PartialEq, Eq)]
pub struct TicketKey {
    pub name: [u8; 16],
    pub hmac: [u8; 32],
    pub aes: [u8; 32],
}

impl TicketKey {
    /// The length of one key in a key file.
    pub const LEN: usize = 80;

    /// Splits an 80-byte key into its parts.
    pub fn from_bytes(bytes: &[u8; Self::LEN]) -> TicketKey {
        let mut key = TicketKey {
            name: [0; 16],
            hmac: [0; 32],
            aes: [0; 32],
        };
        key.name.copy_from_slice(&bytes[..16]);
        key.hmac.copy_from_slice(&bytes[16..48]);
        key.aes.copy_from_slice(&bytes[48..]);
        key
    }
}

/// Never prints key material, whatever logs a key by mistake.
impl std::fmt::Debug for TicketKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TicketKey(..)")
    }
}

/// Where each context keeps its ticket keys for the callback.
fn ticket_keys_index() -> Option<Index<SslContext, Arc<Vec<TicketKey>>>> {
    static INDEX: OnceLock<Option<Index<SslContext, Arc<Vec<TicketKey>>>>> = OnceLock::new();
    *INDEX.get_or_init(|| SslContext::new_ex_index().ok())
}

/// Encrypts session tickets with the first of `keys` and decrypts those made with any of them, as
/// nginx's `ssl_session_ticket_key` and HAProxy's `tls-ticket-keys` do, so processes given the same
/// keys resume each other's sessions. A ticket under a key other than the first is renewed with
/// the first. `keys` must not be empty.
pub fn set_ticket_keys(
    ctx: &mut SslContextBuilder,
    keys: Arc<Vec<TicketKey>>,
) -> Result<(), ErrorStack> {
    let idx = ticket_keys_index().ok_or_else(ErrorStack::get)?;
    ctx.set_ex_data(idx, keys);
    // SAFETY: `ctx` is a live SSL_CTX for the call; the callback is a plain function that finds
    // its keys through the context's ex data, which the context owns for its whole life.
    let rc = unsafe { SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx.as_ptr(), Some(ticket_key_cb)) };
    if rc == 1 {
        Ok(())
    } else {
        Err(ErrorStack::get())
    }
}

/// AES-256-CBC's IV length, the most OpenSSL's buffer holds (EVP_MAX_IV_LENGTH).
const TICKET_IV_LEN: usize = 16;

/// The ticket key callback (`SSL_CTX_set_tlsext_ticket_key_evp_cb`): 1 for a ticket handled with
/// the current key, 2 for one to renew, 0 for an unknown key (a full handshake), -1 on error.
/// It must not unwind into C, so it has no panicking path.
unsafe extern "C" fn ticket_key_cb(
    ssl: *mut openssl_sys::SSL,
    name: *mut libc::c_uchar,
    iv: *mut libc::c_uchar,
    cipher: *mut openssl_sys::EVP_CIPHER_CTX,
    mac: *mut openssl_sys::EVP_MAC_CTX,
    encrypt: libc::c_int,
) -> libc::c_int {
    use foreign_types::ForeignTypeRef;
    // SAFETY: OpenSSL calls this with the live SSL whose ticket it is handling.
    let ssl = unsafe { SslRef::from_ptr(ssl) };
    let Some(keys) = ticket_keys_index().and_then(|idx| ssl.ssl_context().ex_data(idx)) else {
        return -1;
    };
    let (key, result) = if encrypt == 1 {
        let Some(first) = keys.first() else {
            return -1;
        };
        // SAFETY: `iv` has room for EVP_MAX_IV_LENGTH bytes and `name` for 16, as the callback's
        // contract says.
        unsafe {
            if openssl_sys::RAND_bytes(iv, TICKET_IV_LEN as libc::c_int) != 1 {
                return -1;
            }
            std::ptr::copy_nonoverlapping(first.name.as_ptr(), name, first.name.len());
        }
        (first, 1)
    } else {
        // SAFETY: `name` points at the ticket's 16-byte key name.
        let wanted = unsafe { std::slice::from_raw_parts(name, 16) };
        match keys.iter().position(|k| k.name[..] == *wanted) {
            Some(i) => (&keys[i], if i == 0 { 1 } else { 2 }),
            None => return 0,
        }
    };
    let mut digest = *b"SHA256\0";
    // SAFETY: the parameter array lives across EVP_MAC_init, which copies what it needs; `digest`
    // is NUL-terminated; the keys outlive the calls; `cipher` and `mac` are the contexts OpenSSL
    // handed over, and `iv` holds the IV it read from the ticket or the one made above.
    unsafe {
        let params = [
            OSSL_PARAM_construct_utf8_string(c"digest".as_ptr(), digest.as_mut_ptr().cast(), 0),
            openssl_sys::OSSL_PARAM_construct_end(),
        ];
        if openssl_sys::EVP_MAC_init(mac, key.hmac.as_ptr(), key.hmac.len(), params.as_ptr()) != 1 {
            return -1;
        }
        let aes = aes_256_cbc();
        let ok = if encrypt == 1 {
            openssl_sys::EVP_EncryptInit_ex(cipher, aes, std::ptr::null_mut(), key.aes.as_ptr(), iv)
        } else {
            openssl_sys::EVP_DecryptInit_ex(cipher, aes, std::ptr::null_mut(), key.aes.as_ptr(), iv)
        };
        if ok != 1 {
            return -1;
        }
    }
    result
}

/// AES-256-CBC for the tickets, fetched from the provider once. `EVP_aes_256_cbc()` is a
/// legacy cipher that makes OpenSSL 3 fetch the provider's implementation by name again on every
/// `EVP_*Init_ex` (a method-store lookup under its lock, per ticket issued or opened); a fetched
/// one is used as it is. The legacy one remains the fallback should the fetch fail.
fn aes_256_cbc() -> *const openssl_sys::EVP_CIPHER {
    static FETCHED: OnceLock<Option<openssl::cipher::Cipher>> = OnceLock::new();
    match FETCHED.get_or_init(|| openssl::cipher::Cipher::fetch(None, "AES-256-CBC", None).ok()) {
        Some(cipher) => cipher.as_ptr(),
        // SAFETY: returns a pointer to libcrypto's static legacy cipher table entry.
        None => unsafe { openssl_sys::EVP_aes_256_cbc() },
    }
}

type TicketKeyCallback = unsafe extern "C" fn(
    *mut openssl_sys::SSL,
    *mut libc::c_uchar,
    *mut libc::c_uchar,
    *mut openssl_sys::EVP_CIPHER_CTX,
    *mut openssl_sys::EVP_MAC_CTX,
    libc::c_int,
) -> libc::c_int;

unsafe extern "C" {
    /// OpenSSL 3.0 and later; the openssl crate wraps only the deprecated HMAC_CTX variant's
    /// macro, not this one.
    fn SSL_CTX_set_tlsext_ticket_key_evp_cb(
        ctx: *mut openssl_sys::SSL_CTX,
        cb: Option<TicketKeyCallback>,
    ) -> libc::c_int;
    fn OSSL_PARAM_construct_utf8_string(
        key: *const libc::c_char,
        buf: *mut libc::c_char,
        bsize: libc::size_t,
    ) -> openssl_sys::OSSL_PARAM;
}

/// Adds a CRL to a trust store (`X509_STORE_add_crl`, which takes its own reference).
pub(crate) fn add_crl(store: &mut X509StoreBuilderRef, crl: &X509Crl) -> Result<(), ErrorStack> {
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
pub(crate) fn as_time(t: &Asn1GeneralizedTimeRef) -> &Asn1TimeRef {
    // SAFETY: both are `ASN1_STRING` in OpenSSL; the reference borrows `t`, so it lives no
    // longer than the response that owns it.
    unsafe { Asn1TimeRef::from_ptr(t.as_ptr().cast::<openssl_sys::ASN1_TIME>()) }
}

/// What the decryption hook says about a ticket that decrypted: keep it, or ignore it (a full
/// handshake follows, and the new session gets a ticket as usual).
pub(crate) type TicketCheck = fn(&SslRef, &X509Ref) -> bool;

/// Where the hook finds its check (a plain function, so no pointer has to outlive a context):
/// one per process, set by the first context that installs it.
static TICKET_CHECK: std::sync::OnceLock<TicketCheck> = std::sync::OnceLock::new();

/// Runs `check` on the peer certificate of every session ticket that decrypts, TLS 1.2 and 1.3
/// alike (`SSL_CTX_set_session_ticket_cb`), before OpenSSL resumes the session: a ticket whose
/// certificate fails it is ignored and the handshake goes on as a full one. OpenSSL calls this
/// on the context the connection started on (its session context), so `builder` is the default
/// context; the check sees the connection, whose context is by then the one SNI chose.
pub(crate) fn on_ticket_decrypted(
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
