//! Echo mode's data phase: every byte the client sends goes back to it, until the client ends its
//! side, the connection goes idle, its lifetime passes or the drain ends. The pumping is
//! [`crate::relay::echo`]'s; this only bounds it and records how it went.

use openssl::ssl::SslStream;

use super::{Phase, relayed};
use crate::connection::report::{Outcome, Report};
use crate::relay::{self, Gathered};
use crate::sys::Socket;

// Always inlined into connection::serve, the frame above it: one frame fewer on the stack that
// stays resident while a held connection waits (docs/scaling.md, "The connection thread's
// stack").
#[inline(always)]
pub(crate) fn run<S: Socket>(
    mut tls: SslStream<Gathered<S>>,
    phase: &Phase<'_>,
    report: &mut Report,
) -> Result<(), Outcome> {
    let result = relay::echo(&mut tls, &phase.bounds());
    relayed(result, report)
}
