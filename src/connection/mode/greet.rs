//! Greet mode's data phase: the greeting, close_notify, and an orderly close (the tutorial's
//! server, byte for byte). It reads nothing from the client but what the close discards.

use std::time::Instant;

use openssl::ssl::SslStream;

use super::{Phase, close_gracefully, write_all};
use crate::connection::report::{Outcome, Report};
use crate::relay::Gathered;
use crate::sys::Socket;

/// Writes the greeting, then closes in order; the handshake's deadline bounds the whole phase
/// again, counted from now.
pub(crate) fn run<S: Socket>(
    mut tls: SslStream<Gathered<S>>,
    greeting: &[u8],
    phase: &Phase<'_>,
    report: &mut Report,
) -> Result<(), Outcome> {
    let deadline = Instant::now() + phase.settings.handshake_timeout;
    write_all(
        &mut tls,
        greeting,
        deadline,
        phase.shutdown,
        &mut report.bytes_out,
    )?;
    report.bytes_in = close_gracefully(tls, deadline, phase.shutdown);
    Ok(())
}
