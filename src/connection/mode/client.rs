//! Client mode's data phase (TLS origination): connect to the upstream, complete TLS with it by
//! the handshake deadline, then relay the plaintext client to it. The TLS facts in the log line
//! are the upstream connection's.
//!
//! Whatever fails before the relay closes the plaintext side with nothing sent: a client of a
//! TLS-only service must never mistake a refused or unverified upstream for an empty answer, and
//! the log line says why.

use openssl::ssl::SslStream;

use crate::relay::Gathered;

use super::{Phase, close_plain};
use crate::connection::gate::Gate;
use crate::connection::handshake::originate;
use crate::connection::registry::Registered;
use crate::connection::report::{Outcome, Report};
use crate::relay::Endpoint;
use crate::sys::{Socket, Stream};
use crate::tls::Connector;
use crate::upstream::Upstream;

pub(crate) fn run<S: Socket + Endpoint>(
    mut plain: S,
    upstream: &Upstream,
    connector: &Connector,
    gate: &Gate,
    phase: &Phase<'_>,
    registered: &mut Registered<'_>,
    report: &mut Report,
) -> Result<(), Outcome> {
    let up = match phase.connect(upstream, report) {
        Ok(up) => up,
        Err(outcome) => {
            close_plain(&mut plain, phase.shutdown);
            return Err(outcome);
        }
    };
    let result = match up {
        Stream::Tcp(up) => {
            originate_and_relay(&mut plain, up, connector, gate, phase, registered, report)
        }
        Stream::Unix(up) => {
            originate_and_relay(&mut plain, up, connector, gate, phase, registered, report)
        }
    };
    if report.handshake.is_none() {
        close_plain(&mut plain, phase.shutdown);
    }
    result
}

fn originate_and_relay<S: Socket + Endpoint, U: Socket>(
    plain: &mut S,
    up: U,
    connector: &Connector,
    gate: &Gate,
    phase: &Phase<'_>,
    registered: &mut Registered<'_>,
    report: &mut Report,
) -> Result<(), Outcome> {
    let mut tls = handshake(up, connector, gate, phase, registered, report)?;
    phase.relay(plain, &mut tls, &[], report)
}

/// TLS with the upstream by the handshake deadline, and its facts in the report and the registry.
/// Never inlined: this is done before the relay, and [`originate_and_relay`]'s frame stays on the
/// stack while the connection is held (see [`crate::sys::release_unused_stack`]).
#[inline(never)]
fn handshake<U: Socket>(
    up: U,
    connector: &Connector,
    gate: &Gate,
    phase: &Phase<'_>,
    registered: &mut Registered<'_>,
    report: &mut Report,
) -> Result<SslStream<Gathered<U>>, Outcome> {
    let deadline = phase.accepted + phase.settings.handshake_timeout;
    // The address connected to: its last session is the one to offer.
    let addr = report.upstream.clone().unwrap_or_default();
    let tls = originate(
        connector,
        &addr,
        up,
        deadline,
        &mut report.sni,
        gate,
        phase.shutdown,
    )?;
    connector.settle(&addr, tls.ssl());
    report.handshake = Some(phase.accepted.elapsed());
    report.record_tls(tls.ssl());
    registered.originated(tls.ssl(), report.sni.clone());
    report.server = tls
        .ssl()
        .peer_certificate()
        .map(|c| crate::tls::subject(&c));
    Ok(tls)
}
