//! Certificate reload without restart: on request (SIGHUP) and when the files' contents change.
//! In client mode the files are the upstream CA and the client certificate and key. The upstream's
//! name (forward and client modes) is resolved again at each reload too.
//!
//! A reload builds a whole new TLS context from the files, validates it exactly as start-up does,
//! and swaps it in atomically; connections already open keep the context they started with. On any
//! failure the current context stays, and one error line names the file. Change detection reads
//! the files' contents through their paths, so a symlink re-pointed to a new target (certbot's
//! `live/`, Kubernetes secret volumes) counts as a change even when the link itself is untouched.
//!
//! Revocation reaches open connections: when a reload changes what client certificates are
//! checked against (the client CA's or the CRL's contents, the access rules), every connection in
//! the [`Registry`] whose client certificate the new context would refuse is asked to end, with
//! the reason; each closes in order on its own thread (close_notify, a FIN upstream) and logs
//! `result=revoked`. The reload thread only checks certificates and sets flags: it never waits on
//! a connection.
//!
//! Owns one service's certificate state ([`Watched`]: the files' digests, when to look again,
//! when the ticket keys rotate); the process's one reload thread ([`super::reconfigure`]) holds a
//! [`Watched`] per service and drives them all. Never decides which services exist.

use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};
use openssl::sha::Sha256;
use openssl::ssl::SslAcceptor;

use crate::config::{AccessRules, TlsSettings};
use crate::connection::mode::Contexts;
use crate::connection::registry::Registry;
use crate::metrics::Metrics;
use crate::tls;
use crate::upstream::Upstream;

/// A digest of every file the TLS context is built from. A file that cannot be read contributes
/// its error, so its disappearance or return is a change too.
fn fingerprint(settings: &TlsSettings) -> [u8; 32] {
    let mut h = Sha256::new();
    for path in settings.files() {
        h.update(path.as_os_str().as_encoded_bytes());
        // Bounded and non-blocking: a file swapped for a FIFO or a device must not hang the
        // watcher (the largest bound, no mode rule: this only notices a change).
        match crate::tls::read_bounded(&path, crate::tls::FileKind::Crl) {
            Ok(bytes) => {
                h.update(b"\0ok\0");
                h.update(&bytes);
            }
            Err(e) => {
                h.update(b"\0err\0");
                h.update(format!("{e:#}").as_bytes());
            }
        }
        h.update(b"\0\0");
    }
    h.finish()
}

/// A digest of what client certificates are checked against: the client CA's and the CRL's
/// contents and the access rules. `None` without client certificates. A file that cannot be read
/// contributes its error, as in [`fingerprint`].
fn client_verification(settings: &TlsSettings) -> Option<[u8; 32]> {
    let auth = settings.client_auth.as_ref()?;
    let mut h = Sha256::new();
    for path in std::iter::once(&auth.ca).chain(auth.crl.as_ref()) {
        h.update(path.as_os_str().as_encoded_bytes());
        match std::fs::read(path) {
            Ok(bytes) => {
                h.update(b"\0ok\0");
                h.update(&bytes);
            }
            Err(e) => {
                h.update(b"\0err\0");
                h.update(e.to_string().as_bytes());
            }
        }
        h.update(b"\0\0");
    }
    let AccessRules { cn, ou, dns, uri } = &settings.allow;
    for (kind, values) in [("cn", cn), ("ou", ou), ("dns", dns), ("uri", uri)] {
        for value in values {
            h.update(kind.as_bytes());
            h.update(b"=");
            h.update(value.as_bytes());
            h.update(b"\0");
        }
    }
    Some(h.finish())
}

/// Asks every registered connection whose client certificate `acceptor` and `rules` no longer
/// accept to end; returns how many were asked.
fn end_refused(
    registry: &Registry,
    service: &str,
    acceptor: &SslAcceptor,
    settings: &TlsSettings,
) -> usize {
    let mut ends = Vec::new();
    for entry in registry.snapshot(service) {
        let Some(client) = &entry.client else {
            continue;
        };
        // A connection on a [[service.route]] is checked against that route's rules.
        let rules = tls::rules_for(settings, entry.sni.as_deref());
        match tls::still_refused(acceptor, rules, &client.leaf, &client.chain) {
            Ok(None) => {}
            Ok(Some(why)) => {
                debug!(
                    "reload: ending connection id={} peer={} sni={} proto={} age_ms={}: {why}",
                    entry.id,
                    entry.peer,
                    entry.sni.as_deref().unwrap_or("-"),
                    entry.protocol.unwrap_or("-"),
                    entry.accepted.elapsed().as_millis()
                );
                ends.push((entry, why));
            }
            Err(e) => warn!(
                "reload: cannot check the client certificate of connection peer={}: {e:#}; it stays open",
                entry.peer
            ),
        }
    }
    registry.end(ends)
}

/// Why a reload runs.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Trigger {
    Signal,
    FileChange,
    TicketKeyRotation,
    /// [`super::Handle::reload_now`]: a caller waits for the answer (the control socket).
    Control,
}

/// The TLS context in service, and the serial of its certificate for the failure line.
pub(crate) struct Current {
    contexts: Contexts,
    serial: Option<String>,
    /// What the context in service checks client certificates against ([`client_verification`]).
    client_verification: Option<[u8; 32]>,
}

impl Current {
    pub(crate) fn new(contexts: Contexts, serial: Option<String>) -> Current {
        Current {
            contexts,
            serial,
            client_verification: None,
        }
    }
}

/// What a reload needs besides the settings and the context in service.
pub(crate) struct Serving {
    pub(crate) metrics: Arc<Metrics>,
    /// The open connections, whose client certificates a reload checks again.
    pub(crate) registry: Arc<Registry>,
}

/// Builds a new context and swaps it in; on failure keeps the old one. Returns the line logged
/// (without its level): `Ok` when it swapped.
pub(crate) fn reload(
    settings: &TlsSettings,
    current: &mut Current,
    serving: &Serving,
    why: Trigger,
) -> Result<String, String> {
    match tls::build(settings) {
        Ok(new) => install(settings, current, serving, why, new),
        Err(e) => Err(failed(current, serving, why, &e)),
    }
}

/// Logs and counts a reload that could not build its context: the old one stays.
fn failed(current: &Current, serving: &Serving, why: Trigger, e: &anyhow::Error) -> String {
    let line = format!(
        "reload failed trigger={} service={}: {e:#}; still serving serial={}",
        trigger_name(why),
        serving.metrics.service(),
        current.serial.as_deref().unwrap_or("-")
    );
    error!("{line}");
    serving.metrics.reload(false);
    line
}

/// Puts a context already built (and validated) in service, and checks the open connections'
/// client certificates against it when what they are checked against changed.
fn install(
    settings: &TlsSettings,
    current: &mut Current,
    serving: &Serving,
    why: Trigger,
    new: tls::Tls,
) -> Result<String, String> {
    let metrics = &serving.metrics;
    // Read before the swap: a file that changes after this counts as a change at the next reload.
    let verification = client_verification(settings);
    // In service before the line says so: whoever reads "reload ok" and connects gets the new
    // context.
    let ocsp = super::ocsp_source(&new);
    let info = new.info;
    if let Err(e) = current.contexts.install(new.side) {
        return Err(failed(current, serving, why, &e));
    }
    metrics.ocsp(ocsp);
    current.serial = info.as_ref().map(|c| c.serial.clone());
    let mut closed = String::new();
    if verification != current.client_verification {
        current.client_verification = verification;
        if let Some(acceptor) = current.contexts.acceptor() {
            let n = end_refused(
                &serving.registry,
                serving.metrics.service(),
                &acceptor,
                settings,
            );
            metrics.revoked(n);
            closed = format!("; closed {n} connection(s) whose certificate is no longer accepted");
        }
    }
    let line = match &info {
        Some(c) => {
            let line = format!(
                "reload ok trigger={} service={} subject=\"{}\" serial={} not_after={} expires_in_days={}{closed}",
                trigger_name(why),
                metrics.service(),
                c.subject,
                c.serial,
                c.not_after_unix,
                c.days_left
            );
            info!("{line}");
            c.warn_if_expiring();
            metrics.certificate_expiry(c.not_after_unix);
            line
        }
        // Client mode without a client certificate: the trust anchors were reloaded.
        None => {
            let line = format!(
                "reload ok trigger={} service={} (no certificate)",
                trigger_name(why),
                metrics.service()
            );
            info!("{line}");
            line
        }
    };
    metrics.reload(true);
    Ok(line)
}

pub(crate) fn trigger_name(why: Trigger) -> &'static str {
    match why {
        Trigger::Signal => "signal",
        Trigger::FileChange => "file_change",
        Trigger::TicketKeyRotation => "ticket_key_rotation",
        Trigger::Control => "control",
    }
}

/// When the reload thread acts on its own for one service.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Schedule {
    /// How often to look at the files; `None` when only SIGHUP reloads.
    pub watch: Option<Duration>,
    /// How long one context's session-ticket keys may live; `None` when they change only on reload.
    pub ticket_key_rotation: Option<Duration>,
}

/// One service's certificates as the process's reload thread watches them: the context in
/// service, the files' digests, and when to look at them (or rotate the ticket keys) next.
///
/// A change is acted on once the files have stayed the same for one whole interval, so a renewal
/// that writes the certificate and then the key is seen as one change, not as a mismatched pair.
/// A content that failed is not retried until it changes again (or SIGHUP asks).
///
/// Every new context has new session-ticket keys (OpenSSL makes them at random per context), so
/// rebuilding it when `schedule.ticket_key_rotation` has passed since the last successful build
/// bounds how long a stolen key could decrypt recorded sessions: forward secrecy for resumed
/// sessions. Tickets from before a rotation no longer resume; those clients do one full handshake.
pub(crate) struct Watched {
    settings: TlsSettings,
    current: Current,
    serving: Serving,
    schedule: Schedule,
    /// Resolved again at each reload (forward and client modes).
    upstream: Option<Arc<Upstream>>,
    /// The files' digest when the context in service was last built (or tried).
    loaded: [u8; 32],
    /// Their digest at the last look: a change counts once it holds for a whole interval.
    seen: [u8; 32],
    next_look: Option<Instant>,
    rotate_at: Option<Instant>,
}

impl Watched {
    /// Starts watching one service's files, and says how its reloads happen.
    pub(crate) fn new(
        settings: TlsSettings,
        mut current: Current,
        serving: Serving,
        schedule: Schedule,
        upstream: Option<Arc<Upstream>>,
    ) -> Watched {
        let watching = match schedule.watch {
            Some(every) => {
                format!("and when the certificate files change (checked every {every:?})")
            }
            None => "only (file watching off)".to_string(),
        };
        let rotation = match (&settings.ticket_keys, schedule.ticket_key_rotation) {
            (Some(file), _) => format!("come from {} and change with it", file.display()),
            (None, Some(every)) => format!("rotate every {every:?} and on each reload"),
            (None, None) => "rotate on each reload only".to_string(),
        };
        info!(
            "reload: service={}: on SIGHUP {watching}; session-ticket keys {rotation}",
            serving.metrics.service()
        );
        let loaded = fingerprint(&settings);
        current.client_verification = client_verification(&settings);
        let now = Instant::now();
        Watched {
            next_look: schedule.watch.map(|w| now + w),
            rotate_at: schedule.ticket_key_rotation.map(|r| now + r),
            settings,
            current,
            serving,
            schedule,
            upstream,
            loaded,
            seen: loaded,
        }
    }

    /// The service's counters.
    pub(crate) fn metrics(&self) -> &Metrics {
        &self.serving.metrics
    }

    /// When [`Watched::on_time`] has something to do next; `None`: only when asked.
    pub(crate) fn due(&self) -> Option<Instant> {
        [self.next_look, self.rotate_at].into_iter().flatten().min()
    }

    fn refresh(&self) {
        if let Some(up) = &self.upstream {
            up.refresh();
        }
    }

    /// A reload asked for (SIGHUP, the control socket): the files are read again whatever their
    /// digest says.
    pub(crate) fn on_request(&mut self, why: Trigger) -> Result<String, String> {
        let built = self.prepare(&mut tls::Cache::new());
        self.finish(why, built)
    }

    /// The first half of [`Watched::on_request`], for a reload that must build every context
    /// before it puts any in service: the upstream resolved again, the context built through
    /// `cache`, which is new for each reload pass: services with the same settings and files get
    /// one new context between them (with new ticket keys), as at start, and none keeps the old.
    pub(crate) fn prepare(&mut self, cache: &mut tls::Cache) -> anyhow::Result<tls::Tls> {
        self.seen = fingerprint(&self.settings);
        self.loaded = self.seen;
        self.refresh();
        cache.build(&self.settings)
    }

    /// The second half: what [`Watched::prepare`] built put in service, or its failure logged.
    pub(crate) fn finish(
        &mut self,
        why: Trigger,
        built: anyhow::Result<tls::Tls>,
    ) -> Result<String, String> {
        let done = match built {
            Ok(new) => install(&self.settings, &mut self.current, &self.serving, why, new),
            Err(e) => Err(failed(&self.current, &self.serving, why, &e)),
        };
        if done.is_ok() {
            self.rotate_at = self
                .schedule
                .ticket_key_rotation
                .map(|r| Instant::now() + r);
        }
        done
    }

    /// What is due at `now`: the ticket keys' rotation, or a look at the files (a reload when they
    /// changed and then held still for one interval).
    pub(crate) fn on_time(&mut self, now: Instant) {
        if self.due().is_none_or(|t| t > now) {
            return;
        }
        if self.rotate_at.is_some_and(|t| now >= t) {
            self.loaded = fingerprint(&self.settings);
            self.seen = self.loaded;
            // On failure the old context (and keys) stay; try again next period.
            self.rotate_at = self.schedule.ticket_key_rotation.map(|r| now + r);
            self.next_look = self.schedule.watch.map(|w| now + w);
            let done = reload(
                &self.settings,
                &mut self.current,
                &self.serving,
                Trigger::TicketKeyRotation,
            );
            if done.is_ok() {
                self.rotate_at = self
                    .schedule
                    .ticket_key_rotation
                    .map(|r| Instant::now() + r);
            }
            return;
        }
        self.next_look = self.schedule.watch.map(|w| now + w);
        let digest = fingerprint(&self.settings);
        let changed = digest != self.loaded && digest == self.seen;
        self.seen = digest;
        if changed {
            self.refresh();
            self.loaded = digest;
            let done = reload(
                &self.settings,
                &mut self.current,
                &self.serving,
                Trigger::FileChange,
            );
            if done.is_ok() {
                self.rotate_at = self
                    .schedule
                    .ticket_key_rotation
                    .map(|r| Instant::now() + r);
            }
        }
    }
}
