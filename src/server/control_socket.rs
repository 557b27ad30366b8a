//! Starts the control socket ([`crate::control`]) for a bound server: binds its file as a UNIX
//! listener's is bound (0600, or 0660 with its group), and hands the control room what it reads
//! (the registry, each service's state) and what it may do (reload) as closures, so that room
//! never imports this one.
//!
//! Owns only the wiring; the protocol and the access check are the control room's.

use std::sync::{Arc, PoisonError};
use std::time::Instant;

use anyhow::{Result, anyhow};
use openssl::asn1::Asn1Time;

use super::Handle;
use super::listener::UnixSocket;
use super::service::{Process, Shared};
use crate::config::{ControlSocket, UnixListen};
use crate::control::{self, Access, CertStatus, Control, ServiceStatus, Sources, UpstreamStatus};
use crate::sys;

/// Binds the control socket and starts its thread.
pub(super) fn start(
    config: &ControlSocket,
    process: &Arc<Process>,
    handle: Handle,
) -> Result<Control> {
    let gid = config
        .group
        .as_deref()
        .map(|g| {
            sys::group_id(g).map_err(|e| {
                anyhow!(
                    "--control-socket-group {g}: {}",
                    crate::reason::io_reason(&e)
                )
            })
        })
        .transpose()?;
    let socket = UnixSocket::bind_named(
        &UnixListen {
            path: config.path.clone(),
            mode: if gid.is_some() { 0o660 } else { 0o600 },
            group: config.group.clone(),
        },
        control::backlog(),
        "--control-socket-group",
    )
    .map_err(|e| anyhow!("control socket: {e:#}"))?;
    // The set the accept loop serves now (it publishes each change a reload makes).
    let of = Arc::clone(process);
    let sources = Sources {
        registry: Arc::clone(&process.registry),
        shutdown: Arc::clone(&process.shutdown),
        started: Instant::now(),
        services: Box::new(move || {
            let serving = of
                .serving
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            serving
                .iter()
                .filter_map(|(l, s)| s.upgrade().map(|s| status(l, &s)))
                .collect()
        }),
        reload: Box::new(move || {
            let answer = handle.reload_now();
            (answer.ok, answer.lines)
        }),
    };
    let access = Access {
        uid: sys::effective_uid(),
        gid,
    };
    let path = socket.path().display().to_string();
    let listener = socket.listener().try_clone()?;
    control::serve(listener, Box::new(socket), path, access, sources)
}

/// One service's state now.
fn status(listen: &str, shared: &Shared) -> ServiceStatus {
    let plan = &shared.connections.plan;
    let certificates = plan
        .contexts()
        .acceptor()
        .and_then(|a| a.context().certificate().map(ToOwned::to_owned))
        .map(|cert| {
            let days_left = Asn1Time::days_from_now(0)
                .ok()
                .and_then(|now| now.diff(cert.not_after()).ok())
                .map_or(0, |d| i64::from(d.days));
            CertStatus {
                subject: crate::tls::subject(&cert),
                not_after: cert.not_after().to_string(),
                days_left,
            }
        })
        .into_iter()
        .collect();
    let upstreams = plan
        .upstream()
        .map(|u| {
            u.health()
                .into_iter()
                .map(|(addr, up)| UpstreamStatus { addr, up })
                .collect()
        })
        .unwrap_or_default();
    ServiceStatus {
        name: shared.connections.service.to_string(),
        listen: listen.to_string(),
        mode: plan.name(),
        open: shared.tracker.active(),
        certificates,
        upstreams,
    }
}
