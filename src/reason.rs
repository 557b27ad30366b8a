//! What went wrong, in short stable words: the reasons log lines and metrics labels carry for a
//! failed TLS or socket operation, and what a TLS operation that would block is waiting for.
//!
//! Shared by the connection, the relay and the load generator; it never decides what a failure
//! means for a connection (that is the caller's business).

use std::io;

use openssl::ssl::ErrorCode;

use crate::sys::Interest;

/// OpenSSL's reason for a failed TLS operation, or the I/O error behind it: short and stable, for
/// log lines and for grouping failures.
pub fn ssl_reason(e: &openssl::ssl::Error) -> String {
    if let Some(reason) = e
        .ssl_error()
        .and_then(|stack| stack.errors().first())
        .and_then(|err| err.reason())
    {
        return reason.to_string();
    }
    if let Some(io) = e.io_error() {
        return io_reason(io);
    }
    match e.code() {
        ErrorCode::ZERO_RETURN => "closed by peer".into(),
        ErrorCode::SYSCALL => "connection closed by peer".into(),
        code => format!("TLS error {}", code.as_raw()),
    }
}

/// An io::Error's text without Rust's "(os error N)" suffix.
pub fn io_reason(e: &io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// What a TLS operation on a non-blocking socket is waiting for, when it failed only because it
/// would block; `None` for a real failure (or a clean close).
pub fn blocked_on(code: ErrorCode) -> Option<Interest> {
    match code {
        ErrorCode::WANT_READ => Some(Interest::Read),
        ErrorCode::WANT_WRITE => Some(Interest::Write),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_reason_drops_the_os_error_number() {
        let e = io::Error::from_raw_os_error(libc::ENOENT);
        assert_eq!(io_reason(&e), "No such file or directory");
    }

    #[test]
    fn only_want_read_and_want_write_block() {
        assert_eq!(blocked_on(ErrorCode::WANT_READ), Some(Interest::Read));
        assert_eq!(blocked_on(ErrorCode::WANT_WRITE), Some(Interest::Write));
        assert_eq!(blocked_on(ErrorCode::ZERO_RETURN), None);
        assert_eq!(blocked_on(ErrorCode::SSL), None);
    }
}
