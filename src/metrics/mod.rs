//! Counters for operators, and the optional `/metrics` endpoint ([`http`]) that serves them in the
//! Prometheus (OpenMetrics) text format over plain HTTP on its own thread.
//!
//! The counters are always kept (each is an atomic add); the endpoint exists only with
//! `--metrics-listen`. This room owns the registry and the names of every family; it must never
//! count a key, a certificate or a peer's data, only numbers about them.

use std::time::Duration;

use log::warn;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

pub(crate) mod http;

pub(crate) use http::serve;

/// One label, `name="value"`, with values from a fixed set known at compile time.
type Label = Vec<(&'static str, &'static str)>;

fn label(name: &'static str, value: &'static str) -> Label {
    vec![(name, value)]
}

/// Every counter the server keeps.
pub(crate) struct Metrics {
    registry: Registry,
    accepted: Counter,
    /// Set from the connection tracker when scraped, so it can never drift from the truth.
    active: Gauge,
    refused: Family<Label, Counter>,
    handshakes: Family<Label, Counter>,
    handshake_seconds: Histogram,
    bytes_in: Counter,
    bytes_out: Counter,
    reloads: Family<Label, Counter>,
    /// Connections a reload ended because their client certificate was no longer accepted.
    revoked: Counter,
    cert_not_after: Gauge,
    /// The stapled OCSP response's age, nextUpdate and whether it is stapled now: read from
    /// [`Metrics::ocsp`] at each scrape, since the age changes by itself.
    ocsp_age: Gauge,
    ocsp_next_update: Gauge,
    ocsp_stapled: Gauge,
    /// The response in service, replaced on reload; `None` without `--ocsp-response`.
    ocsp: std::sync::Mutex<Option<std::sync::Arc<dyn OcspSource>>>,
}

/// What the OCSP gauges read at each scrape (the tls room's `Stapler`, through the server).
pub(crate) trait OcspSource: Send + Sync {
    /// Seconds since the response's thisUpdate.
    fn age_secs(&self) -> i64;
    /// Its nextUpdate as a Unix timestamp, `None` when it has none.
    fn next_update_unix(&self) -> Option<i64>;
    /// Whether it is stapled now (current, OpenSSL's leeway included).
    fn is_stapled(&self) -> bool;
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        let mut registry = Registry::with_prefix("securesock");
        let accepted = Counter::default();
        let active = Gauge::default();
        let refused = Family::<Label, Counter>::default();
        let handshakes = Family::<Label, Counter>::default();
        // 1 ms to about 16 s: covers a loopback handshake and the longest handshake deadline.
        let handshake_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 15));
        let bytes_in = Counter::default();
        let bytes_out = Counter::default();
        let reloads = Family::<Label, Counter>::default();
        let revoked = Counter::default();
        let cert_not_after = Gauge::default();
        let ocsp_age = Gauge::default();
        let ocsp_next_update = Gauge::default();
        let ocsp_stapled = Gauge::default();
        registry.register(
            "connections_accepted",
            "TCP connections accepted",
            accepted.clone(),
        );
        registry.register("connections_active", "Connections open now", active.clone());
        registry.register(
            "connections_refused",
            "Connections closed at once by a cap (reason: max_connections, max_per_ip)",
            refused.clone(),
        );
        registry.register(
            "handshakes",
            "TLS handshakes by result (ok, timeout, not_tls, protocol_version, no_shared_cipher, client_cert, server_cert, alpn, unknown_name, eof, protocol_error, error); in client mode, the upstream handshakes",
            handshakes.clone(),
        );
        registry.register(
            "handshake_duration_seconds",
            "Time from accept to a completed handshake",
            handshake_seconds.clone(),
        );
        registry.register(
            "received_bytes",
            "Application bytes received from clients",
            bytes_in.clone(),
        );
        registry.register(
            "sent_bytes",
            "Application bytes sent to clients",
            bytes_out.clone(),
        );
        registry.register(
            "reloads",
            "Certificate reloads by result (ok, failed)",
            reloads.clone(),
        );
        registry.register(
            "revoked_connections",
            "Open connections a reload ended because their client certificate was no longer accepted (revoked, untrusted, not allowed)",
            revoked.clone(),
        );
        registry.register(
            "certificate_not_after_timestamp_seconds",
            "Expiry of the certificate being served, as a Unix timestamp",
            cert_not_after.clone(),
        );
        registry.register(
            "ocsp_response_age_seconds",
            "Age of the OCSP response from --ocsp-response (now minus its thisUpdate)",
            ocsp_age.clone(),
        );
        registry.register(
            "ocsp_response_next_update_timestamp_seconds",
            "nextUpdate of the OCSP response from --ocsp-response, as a Unix timestamp",
            ocsp_next_update.clone(),
        );
        registry.register(
            "ocsp_response_stapled",
            "1 while the OCSP response is current and stapled, 0 once past nextUpdate or without one",
            ocsp_stapled.clone(),
        );
        Metrics {
            registry,
            accepted,
            active,
            refused,
            handshakes,
            handshake_seconds,
            bytes_in,
            bytes_out,
            reloads,
            revoked,
            cert_not_after,
            ocsp_age,
            ocsp_next_update,
            ocsp_stapled,
            ocsp: std::sync::Mutex::new(None),
        }
    }

    pub(crate) fn accepted(&self) {
        self.accepted.inc();
    }

    pub(crate) fn refused(&self, reason: &'static str) {
        self.refused.get_or_create(&label("reason", reason)).inc();
    }

    /// Records how a handshake ended; `duration` only for completed ones.
    pub(crate) fn handshake(&self, result: &'static str, duration: Option<Duration>) {
        self.handshakes
            .get_or_create(&label("result", result))
            .inc();
        if let Some(d) = duration {
            self.handshake_seconds.observe(d.as_secs_f64());
        }
    }

    pub(crate) fn bytes(&self, received: u64, sent: u64) {
        self.bytes_in.inc_by(received);
        self.bytes_out.inc_by(sent);
    }

    pub(crate) fn reload(&self, ok: bool) {
        self.reloads
            .get_or_create(&label("result", if ok { "ok" } else { "failed" }))
            .inc();
    }

    /// Counts connections a reload ended for their client certificate.
    pub(crate) fn revoked(&self, connections: usize) {
        self.revoked
            .inc_by(u64::try_from(connections).unwrap_or(u64::MAX));
    }

    pub(crate) fn certificate_expiry(&self, not_after_unix: i64) {
        self.cert_not_after.set(not_after_unix);
    }

    /// The OCSP response in service from now on (at start and after each reload).
    pub(crate) fn ocsp(&self, source: Option<std::sync::Arc<dyn OcspSource>>) {
        let mut slot = self
            .ocsp
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *slot = source;
    }

    /// The exposition text, with the active gauge set to `active` and the OCSP gauges read first.
    pub(crate) fn render(&self, active: usize) -> String {
        self.active.set(i64::try_from(active).unwrap_or(i64::MAX));
        let ocsp = self
            .ocsp
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        match ocsp {
            Some(o) => {
                self.ocsp_age.set(o.age_secs());
                self.ocsp_next_update.set(o.next_update_unix().unwrap_or(0));
                self.ocsp_stapled.set(i64::from(o.is_stapled()));
            }
            None => {
                self.ocsp_age.set(0);
                self.ocsp_next_update.set(0);
                self.ocsp_stapled.set(0);
            }
        }
        let mut out = String::new();
        // Writing into a String cannot fail; an error would only come from a broken encoder.
        if encode(&mut out, &self.registry).is_err() {
            warn!("metrics encoding failed");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_names_every_family() {
        let m = Metrics::new();
        m.accepted();
        m.refused("max_per_ip");
        m.handshake("ok", Some(Duration::from_millis(3)));
        m.bytes(5, 20);
        m.reload(false);
        m.revoked(2);
        m.certificate_expiry(1_900_000_000);
        let text = m.render(7);
        for want in [
            "securesock_connections_accepted_total 1",
            "securesock_connections_active 7",
            "securesock_connections_refused_total{reason=\"max_per_ip\"} 1",
            "securesock_handshakes_total{result=\"ok\"} 1",
            "securesock_handshake_duration_seconds_count 1",
            "securesock_received_bytes_total 5",
            "securesock_sent_bytes_total 20",
            "securesock_reloads_total{result=\"failed\"} 1",
            "securesock_revoked_connections_total 2",
            "securesock_certificate_not_after_timestamp_seconds 1900000000",
            "# EOF",
        ] {
            assert!(text.contains(want), "{want} missing in:\n{text}");
        }
    }
}
