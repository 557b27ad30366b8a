//! Certificate reload without restart: on request (SIGHUP) and when the files' contents change.
//! In client mode the files are the upstream CA and the client certificate and key. The upstream's
//! name (forward and client modes) is resolved again at each reload too.
//!
//! A reload builds a whole new TLS context from the files, validates it exactly as start-up does,
//! and swaps it in atomically; connections already open keep the context they started with. On any
//! failure the current context stays, and one error line names the file. Change detection reads
//! the files' contents through their paths, so a symlink re-pointed to a new target (certbot's
//! `live/`, Kubernetes secret volumes) counts as a change even when the link itself is untouched.

use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use log::{error, info};
use openssl::sha::Sha256;

use crate::config::TlsSettings;
use crate::connection::mode::Contexts;
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
}

impl Current {
    pub(crate) fn new(contexts: Contexts, serial: Option<String>) -> Current {
        Current { contexts, serial }
    }
}

/// Builds a new context and swaps it in; on failure keeps the old one. Returns whether it swapped.
pub(crate) fn reload(
    settings: &TlsSettings,
    current: &mut Current,
    metrics: &Metrics,
    why: Trigger,
) -> bool {
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
            match &info {
                Some(c) => {
                    info!(
                        "reload ok trigger={} subject=\"{}\" serial={} not_after={} expires_in_days={}",
                        trigger_name(why),
                        c.subject,
                        c.serial,
                        c.not_after_unix,
                        c.days_left
                    );
                    c.warn_if_expiring();
                    metrics.certificate_expiry(c.not_after_unix);
                }
                // Client mode without a client certificate: the trust anchors were reloaded.
                None => info!("reload ok trigger={} (no certificate)", trigger_name(why)),
            }
            metrics.reload(true);
            true
        }
        Err(e) => {
            error!(
                "reload failed trigger={}: {e:#}; still serving serial={}",
                trigger_name(why),
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
    info!("reload: on SIGHUP {watching}; session-ticket keys {rotation}");
    let (tx, rx) = mpsc::channel::<()>();
    let mut loaded = fingerprint(&settings);
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
                        reload(&settings, &mut current, &metrics, Trigger::Signal)
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
                                &metrics,
                                Trigger::TicketKeyRotation,
                            )
                        } else if schedule.watch.is_some() {
                            let now = fingerprint(&settings);
                            let changed = now != loaded && now == seen;
                            seen = now;
                            if changed {
                                refresh();
                                loaded = now;
                                reload(&settings, &mut current, &metrics, Trigger::FileChange)
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
