//! Counters for operators, and the optional `/metrics` endpoint ([`http`]) that serves them in the
//! Prometheus (OpenMetrics) text format over plain HTTP on its own thread.
//!
//! The counters are always kept (each is an atomic add); the endpoint exists only with
//! `--metrics-listen`. One registry serves the whole process ([`Families`]); every series carries
//! the `service` it counts for, and each service counts through its own [`Metrics`] handle. This room owns the registry and the names of every family; it must never
//! count a key, a certificate or a peer's data, only numbers about them.

use std::sync::{Arc, Mutex, PoisonError};
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

/// A series' labels: `service` first, then the family's own (`reason`, `result`), values from a
/// fixed set known at compile time except the service's name, which the configuration gives.
type Labels = Vec<(&'static str, String)>;

/// Each service's stapled OCSP response, by service name.
type OcspSlots = Vec<(String, Option<Arc<dyn OcspSource>>)>;

/// The histogram every service's handshake durations go into: 1 ms to about 16 s, which covers a
/// loopback handshake and the longest handshake deadline.
fn handshake_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// Every family the process exports, each series labelled with its `service`: one registry for
/// the whole process, served by one endpoint. Each service counts through its own [`Metrics`].
pub(crate) struct Families {
    registry: Registry,
    accepted: Family<Labels, Counter>,
    /// Set from each service's connection tracker when scraped, so it can never drift from the
    /// truth.
    active: Family<Labels, Gauge>,
    refused: Family<Labels, Counter>,
    handshakes: Family<Labels, Counter>,
    handshake_seconds: Family<Labels, Histogram, fn() -> Histogram>,
    bytes_in: Family<Labels, Counter>,
    bytes_out: Family<Labels, Counter>,
    reloads: Family<Labels, Counter>,
    /// Connections a reload ended because their client certificate was no longer accepted.
    revoked: Family<Labels, Counter>,
    cert_not_after: Family<Labels, Gauge>,
    /// The stapled OCSP response's age, nextUpdate and whether it is stapled now: read from each
    /// service's [`Metrics::ocsp`] at each scrape, since the age changes by itself.
    ocsp_age: Family<Labels, Gauge>,
    ocsp_next_update: Family<Labels, Gauge>,
    ocsp_stapled: Family<Labels, Gauge>,
    /// Each service's response in service, replaced on reload; `None` without `--ocsp-response`.
    ocsp: Mutex<OcspSlots>,
}

/// One service's counters: what the server, its connections and its reload count through. A
/// handle on the process's [`Families`] with the service's name as every series' `service` label.
#[derive(Clone)]
pub(crate) struct Metrics {
    all: Arc<Families>,
    service: String,
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

impl Families {
    pub(crate) fn new() -> Arc<Families> {
        let mut registry = Registry::with_prefix("securesock");
        let all = Families {
            accepted: Family::default(),
            active: Family::default(),
            refused: Family::default(),
            handshakes: Family::default(),
            handshake_seconds: Family::new_with_constructor(handshake_histogram),
            bytes_in: Family::default(),
            bytes_out: Family::default(),
            reloads: Family::default(),
            revoked: Family::default(),
            cert_not_after: Family::default(),
            ocsp_age: Family::default(),
            ocsp_next_update: Family::default(),
            ocsp_stapled: Family::default(),
            ocsp: Mutex::new(Vec::new()),
            registry: Registry::default(),
        };
        registry.register(
            "connections_accepted",
            "TCP connections accepted",
            all.accepted.clone(),
        );
        registry.register(
            "connections_active",
            "Connections open now",
            all.active.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections closed at once by a cap (reason: max_connections, max_per_ip, max_connections_process, proxy_peer)",
            all.refused.clone(),
        );
        registry.register(
            "handshakes",
            "TLS handshakes by result (ok, timeout, not_tls, protocol_version, no_shared_cipher, client_cert, server_cert, alpn, unknown_name, eof, protocol_error, error); in client mode, the upstream handshakes",
            all.handshakes.clone(),
        );
        registry.register(
            "handshake_duration_seconds",
            "Time from accept to a completed handshake",
            all.handshake_seconds.clone(),
        );
        registry.register(
            "received_bytes",
            "Application bytes received from clients",
            all.bytes_in.clone(),
        );
        registry.register(
            "sent_bytes",
            "Application bytes sent to clients",
            all.bytes_out.clone(),
        );
        registry.register(
            "reloads",
            "Certificate reloads by result (ok, failed)",
            all.reloads.clone(),
        );
        registry.register(
            "revoked_connections",
            "Open connections a reload ended because their client certificate was no longer accepted (revoked, untrusted, not allowed)",
            all.revoked.clone(),
        );
        registry.register(
            "certificate_not_after_timestamp_seconds",
            "Expiry of the certificate being served, as a Unix timestamp",
            all.cert_not_after.clone(),
        );
        registry.register(
            "ocsp_response_age_seconds",
            "Age of the OCSP response from --ocsp-response (now minus its thisUpdate)",
            all.ocsp_age.clone(),
        );
        registry.register(
            "ocsp_response_next_update_timestamp_seconds",
            "nextUpdate of the OCSP response from --ocsp-response, as a Unix timestamp",
            all.ocsp_next_update.clone(),
        );
        registry.register(
            "ocsp_response_stapled",
            "1 while the OCSP response is current and stapled, 0 once past nextUpdate or without one",
            all.ocsp_stapled.clone(),
        );
        Arc::new(Families { registry, ..all })
    }

    /// The counters of the service `name`, whose unlabelled series (accepted, active, bytes, the
    /// handshake histogram, revoked, the certificate's expiry, OCSP) exist from now on at zero.
    pub(crate) fn service(self: &Arc<Self>, name: &str) -> Metrics {
        let l = service_label(name);
        drop(self.accepted.get_or_create(&l));
        drop(self.active.get_or_create(&l));
        drop(self.handshake_seconds.get_or_create(&l));
        drop(self.bytes_in.get_or_create(&l));
        drop(self.bytes_out.get_or_create(&l));
        drop(self.revoked.get_or_create(&l));
        drop(self.cert_not_after.get_or_create(&l));
        self.ocsp_slots().push((name.to_string(), None));
        Metrics {
            all: Arc::clone(self),
            service: name.to_string(),
        }
    }

    fn ocsp_slots(&self) -> std::sync::MutexGuard<'_, OcspSlots> {
        // Each update replaces one slot whole, so a panicking holder leaves nothing half-done.
        self.ocsp.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The exposition text, with each service's active gauge set from `active` (service name,
    /// connections open now) and the OCSP gauges read first.
    pub(crate) fn render(&self, active: &[(String, usize)]) -> String {
        for (service, open) in active {
            self.active
                .get_or_create(&service_label(service))
                .set(i64::try_from(*open).unwrap_or(i64::MAX));
        }
        let sources = self.ocsp_slots().clone();
        for (service, source) in sources {
            let l = service_label(&service);
            let (age, next, stapled) = match source {
                Some(o) => (
                    o.age_secs(),
                    o.next_update_unix().unwrap_or(0),
                    i64::from(o.is_stapled()),
                ),
                None => (0, 0, 0),
            };
            self.ocsp_age.get_or_create(&l).set(age);
            self.ocsp_next_update.get_or_create(&l).set(next);
            self.ocsp_stapled.get_or_create(&l).set(stapled);
        }
        let mut out = String::new();
        // Writing into a String cannot fail; an error would only come from a broken encoder.
        if encode(&mut out, &self.registry).is_err() {
            warn!("metrics encoding failed");
        }
        out
    }
}

fn service_label(service: &str) -> Labels {
    vec![("service", service.to_string())]
}

impl Metrics {
    /// The service's label plus one of the family's own.
    fn with(&self, name: &'static str, value: &str) -> Labels {
        vec![("service", self.service.clone()), (name, value.to_string())]
    }

    fn own(&self) -> Labels {
        service_label(&self.service)
    }

    /// The service these counters are for.
    pub(crate) fn service(&self) -> &str {
        &self.service
    }

    pub(crate) fn accepted(&self) {
        self.all.accepted.get_or_create(&self.own()).inc();
    }

    pub(crate) fn refused(&self, reason: &'static str) {
        self.all
            .refused
            .get_or_create(&self.with("reason", reason))
            .inc();
    }

    /// Records how a handshake ended; `duration` only for completed ones.
    pub(crate) fn handshake(&self, result: &'static str, duration: Option<Duration>) {
        self.all
            .handshakes
            .get_or_create(&self.with("result", result))
            .inc();
        if let Some(d) = duration {
            self.all
                .handshake_seconds
                .get_or_create(&self.own())
                .observe(d.as_secs_f64());
        }
    }

    pub(crate) fn bytes(&self, received: u64, sent: u64) {
        let own = self.own();
        self.all.bytes_in.get_or_create(&own).inc_by(received);
        self.all.bytes_out.get_or_create(&own).inc_by(sent);
    }

    pub(crate) fn reload(&self, ok: bool) {
        self.all
            .reloads
            .get_or_create(&self.with("result", if ok { "ok" } else { "failed" }))
            .inc();
    }

    /// Counts connections a reload ended for their client certificate.
    pub(crate) fn revoked(&self, connections: usize) {
        self.all
            .revoked
            .get_or_create(&self.own())
            .inc_by(u64::try_from(connections).unwrap_or(u64::MAX));
    }

    pub(crate) fn certificate_expiry(&self, not_after_unix: i64) {
        self.all
            .cert_not_after
            .get_or_create(&self.own())
            .set(not_after_unix);
    }

    /// The OCSP response in service from now on (at start and after each reload).
    pub(crate) fn ocsp(&self, source: Option<Arc<dyn OcspSource>>) {
        let mut slots = self.all.ocsp_slots();
        match slots.iter_mut().find(|(s, _)| *s == self.service) {
            Some((_, slot)) => *slot = source,
            None => slots.push((self.service.clone(), source)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_names_every_family() {
        let all = Families::new();
        let m = all.service("web");
        all.service("idle");
        m.accepted();
        m.refused("max_per_ip");
        m.handshake("ok", Some(Duration::from_millis(3)));
        m.bytes(5, 20);
        m.reload(false);
        m.revoked(2);
        m.certificate_expiry(1_900_000_000);
        let text = all.render(&[("web".into(), 7)]);
        for want in [
            "securesock_connections_accepted_total{service=\"web\"} 1",
            "securesock_connections_accepted_total{service=\"idle\"} 0",
            "securesock_connections_active{service=\"web\"} 7",
            "securesock_connections_refused_total{service=\"web\",reason=\"max_per_ip\"} 1",
            "securesock_handshakes_total{service=\"web\",result=\"ok\"} 1",
            "securesock_handshake_duration_seconds_count{service=\"web\"} 1",
            "securesock_handshake_duration_seconds_count{service=\"idle\"} 0",
            "securesock_received_bytes_total{service=\"web\"} 5",
            "securesock_sent_bytes_total{service=\"web\"} 20",
            "securesock_reloads_total{service=\"web\",result=\"failed\"} 1",
            "securesock_revoked_connections_total{service=\"web\"} 2",
            "securesock_certificate_not_after_timestamp_seconds{service=\"web\"} 1900000000",
            "securesock_ocsp_response_stapled{service=\"idle\"} 0",
            "# EOF",
        ] {
            assert!(text.contains(want), "{want} missing in:\n{text}");
        }
    }
}
