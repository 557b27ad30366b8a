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

use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
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

/// Builds a new context and swaps it in; on failure keeps the old one. Returns whether it swapped.
pub(crate) fn reload(
    settings: &TlsSettings,
    current: &mut Current,
    serving: &Serving,
    why: Trigger,
) -> bool {
    let metrics = &serving.metrics;
    // Read before the build: a file that changes after this counts as a change at the next reload.
    let verification = client_verification(settings);
    // In service before the line says so: whoever reads "reload ok" and connects gets the new
    // context.
    let built = tls::build(settings).and_then(|new| {
        let ocsp = super::ocsp_source(&new);
        current.contexts.install(new.side)?;
        metrics.ocsp(ocsp);
        Ok(new.info)
    });
    match built {
        Ok(info) => {
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
                    closed = format!(
                        "; closed {n} connection(s) whose certificate is no longer accepted"
                    );
                }
            }
            match &info {
                Some(c) => {
                    info!(
                        "reload ok trigger={} service={} subject=\"{}\" serial={} not_after={} expires_in_days={}{closed}",
                        trigger_name(why),
                        metrics.service(),
                        c.subject,
                        c.serial,
                        c.not_after_unix,
                        c.days_left
                    );
                    c.warn_if_expiring();
                    metrics.certificate_expiry(c.not_after_unix);
                }
                // Client mode without a client certificate: the trust anchors were reloaded.
                None => info!(
                    "reload ok trigger={} service={} (no certificate)",
                    trigger_name(why),
                    metrics.service()
                ),
            }
            metrics.reload(true);
            true
        }
        Err(e) => {
            error!(
                "reload failed trigger={} service={}: {e:#}; still serving serial={}",
                trigger_name(why),
                metrics.service(),
                current.serial.as_deref().unwrap_or("-")
            );
            metrics.reload(false);
            false
        }
    }
}

fn trigger_name(why: Trigger) -> &'static str {
    match why {
        Trigger::Signal => "signal",
        Trigger::FileChange => "file_change",
        Trigger::TicketKeyRotation => "ticket_key_rotation",
    }
}

/// When the reload thread acts on its own.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Schedule {
    /// How often to look at the files; `None` when only SIGHUP reloads.
    pub watch: Option<Duration>,
    /// How long one context's session-ticket keys may live; `None` when they change only on reload.
    pub ticket_key_rotation: Option<Duration>,
}

/// Starts the reload thread. Sending on the returned channel asks for a reload now (SIGHUP);
/// with `schedule.watch` set, the files are also polled at that interval.
///
/// A change is acted on once the files have stayed the same for one whole interval, so a renewal
/// that writes the certificate and then the key is seen as one change, not as a mismatched pair.
/// A content that failed is not retried until it changes again (or SIGHUP asks).
///
/// Every new context has new session-ticket keys (OpenSSL makes them at random per context), so
/// rebuilding it when `schedule.ticket_key_rotation` has passed since the last successful build
/// bounds how long a stolen key could decrypt recorded sessions: forward secrecy for resumed
/// sessions. Tickets from before a rotation no longer resume; those clients do one full handshake.
pub(crate) fn spawn(
    settings: TlsSettings,
    mut current: Current,
    metrics: Arc<Metrics>,
    registry: Arc<Registry>,
    schedule: Schedule,
    upstream: Option<Arc<Upstream>>,
) -> Result<Sender<()>> {
    let refresh = move || {
        if let Some(up) = &upstream {
            up.refresh();
        }
    };
    let watching = match schedule.watch {
        Some(every) => format!("and when the certificate files change (checked every {every:?})"),
        None => "only (file watching off)".to_string(),
    };
    let rotation = match (&settings.ticket_keys, schedule.ticket_key_rotation) {
        (Some(file), _) => format!("come from {} and change with it", file.display()),
        (None, Some(every)) => format!("rotate every {every:?} and on each reload"),
        (None, None) => "rotate on each reload only".to_string(),
    };
    info!(
        "reload: service={}: on SIGHUP {watching}; session-ticket keys {rotation}",
        metrics.service()
    );
    let (tx, rx) = mpsc::channel::<()>();
    let mut loaded = fingerprint(&settings);
    current.client_verification = client_verification(&settings);
    let serving = Serving { metrics, registry };
    thread::Builder::new()
        .name("reload".into())
        .spawn(move || {
            let mut seen = loaded;
            let rotation = schedule.ticket_key_rotation;
            let mut rotate_at = rotation.map(|r| Instant::now() + r);
            loop {
                let until_rotation = rotate_at.map(|t| t.saturating_duration_since(Instant::now()));
                let event = match [schedule.watch, until_rotation].into_iter().flatten().min() {
                    Some(wait) => rx.recv_timeout(wait),
                    None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
                };
                let rebuilt = match event {
                    Ok(()) => {
                        seen = fingerprint(&settings);
                        refresh();
                        loaded = seen;
                        reload(&settings, &mut current, &serving, Trigger::Signal)
                    }
                    Err(RecvTimeoutError::Timeout) => {
                        if rotate_at.is_some_and(|t| Instant::now() >= t) {
                            loaded = fingerprint(&settings);
                            seen = loaded;
                            // On failure the old context (and keys) stay; try again next period.
                            rotate_at = rotation.map(|r| Instant::now() + r);
                            reload(
                                &settings,
                                &mut current,
                                &serving,
                                Trigger::TicketKeyRotation,
                            )
                        } else if schedule.watch.is_some() {
                            let now = fingerprint(&settings);
                            let changed = now != loaded && now == seen;
                            seen = now;
                            if changed {
                                refresh();
                                loaded = now;
                                reload(&settings, &mut current, &serving, Trigger::FileChange)
                            } else {
                                false
                            }
                        } else {
                            false
                        }
                    }
                    Err(RecvTimeoutError::Disconnected) => return,
                };
                if rebuilt {
                    rotate_at = rotation.map(|r| Instant::now() + r);
                }
            }
        })
        .context("starting the reload thread")?;
    Ok(tx)
}
