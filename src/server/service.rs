//! One service, bound: its listener (bound here or taken from systemd), its TLS context, resolved
//! upstream, caps, counters and certificate watch, and the start-up lines that describe it. The
//! server ([`super::Server::bind`]) binds every configured service with [`bind`] and accepts on
//! all of them in one loop; a reload of the file ([`super::reconfigure`]) builds a new or changed
//! service with [`build`] (and, for a new address, [`listen`]) before anything changes.
//!
//! Owns what is one service's alone. Never accepts a connection itself and never decides what the
//! process shares (the shutdown signal, the registry, the process-wide cap, the thread pool): the
//! server hands those in as [`Process`].

use std::path::Path;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use anyhow::{Result, bail};
use log::info;

use super::listener::Listener;
use super::{FailureLog, reload};
use crate::config::{Listen, Mode, Service};
use crate::connection::Context;
use crate::connection::gate::Gate;
use crate::connection::mode::{Plan, Settings};
use crate::connection::registry::Registry;
use crate::limits::Tracker;
use crate::metrics::{Families, Metrics};
use crate::shutdown::Shutdown;
use crate::sys::{self, InheritedAddr, UnixName};
use crate::tls;
use crate::upstream::Upstream;

/// What every service shares with the others: one per process.
pub(super) struct Process {
    /// Every connection of every service, under `[process] max-connections` when set; the
    /// drain waits on it, so it covers services a reload removed whose connections still run.
    pub(super) tracker: Arc<Tracker>,
    /// Connections the end of the drain closed, for the drain's summary.
    pub(super) cut: AtomicUsize,
    pub(super) failure_log: FailureLog,
    pub(super) shutdown: Arc<Shutdown>,
    /// Every open connection past its handshake, each naming its service.
    pub(super) registry: Arc<Registry>,
    pub(super) families: Arc<Families>,
    /// The handshake gate every service's connections share: its permits are per CPU, so a
    /// gate a service would give each service the process's CPUs over again.
    pub(super) gate: Arc<Gate>,
    /// Server contexts by TLS settings and file contents, shared by services that have the same.
    pub(super) tls_cache: Mutex<tls::Cache>,
    /// The services serving now with their listeners' descriptions, for the control socket's
    /// `status` and the metrics' active gauge: replaced whenever the accept loop's set changes.
    pub(super) serving: Mutex<Vec<(String, Weak<Shared>)>>,
}

/// What the accept loop and every connection thread of one service share.
pub(super) struct Shared {
    /// What the connection room needs for every connection: the mode with its TLS context
    /// (replaced whole on reload), deadlines, the handshake gate, the shutdown signal.
    pub(super) connections: Context,
    /// This service's open-connection counts, for its own caps.
    pub(super) tracker: Arc<Tracker>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) process: Arc<Process>,
}

/// A bound service, ready to accept.
pub(super) struct Bound {
    pub(super) listener: Listener,
    /// The listener came from systemd (socket activation) and outlives this process.
    pub(super) inherited: bool,
    pub(super) shared: Arc<Shared>,
    /// Its certificates, for the process's reload thread.
    pub(super) watched: reload::Watched,
    /// The "listening on" line, logged when serving starts.
    pub(super) ready_line: String,
}

/// A service built but not listening: everything its connections share, and its certificates'
/// watch.
pub(super) struct Built {
    pub(super) shared: Arc<Shared>,
    pub(super) watched: reload::Watched,
    /// What its certificate is, for a reload's answer: `subject=... not_after=...`.
    pub(super) certificate: String,
}

/// Binds one service: its TLS context, its upstream's name, its listener (`inherited` when
/// systemd passed the socket for it), its certificate watch. Nothing is accepted yet.
pub(super) fn bind(
    service: &Service,
    inherited: Option<sys::Inherited>,
    process: &Arc<Process>,
) -> Result<Bound> {
    // In the order a user would fix them, and before any start-up line: the TLS context, the
    // upstream's name, the listening address.
    let prepared = prepare(service, process)?;
    let (listener, inherited) = listen(service, inherited)?;
    let built = finish(service, prepared, process, None)?;
    let ready_line = ready_line(service, &listener);
    Ok(Bound {
        listener,
        inherited,
        shared: built.shared,
        watched: built.watched,
        ready_line,
    })
}

/// Everything one service's connections share, built and validated: TLS context, resolved
/// upstream, caps, counters (`metrics` when the service had them before a reload), with its
/// start-up lines. No socket: see [`listen`].
pub(super) fn build(
    service: &Service,
    process: &Arc<Process>,
    metrics: Option<Arc<Metrics>>,
) -> Result<Built> {
    let prepared = prepare(service, process)?;
    finish(service, prepared, process, metrics)
}

/// What can fail because of the configuration, built without a word logged: the TLS context and
/// the upstream resolved.
struct Prepared {
    tls: tls::Tls,
    mode: Mode<Arc<Upstream>>,
    /// Each `[[service.route]]`'s own upstream set, in route order (`None`: the service's).
    route_upstreams: Vec<Option<Arc<Upstream>>>,
}

/// The TLS context comes from the process's [`tls::Cache`]: services with the same TLS settings
/// and file contents share one context, built once (1,000 services start in well under a
/// second). The cache re-reads every file on each lookup and reuses only what was made from the
/// same bytes, so a service a reload adds never gets a stale certificate.
fn prepare(service: &Service, process: &Process) -> Result<Prepared> {
    let tls = process
        .tls_cache
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .build(&service.tls)?;
    let mode = service
        .mode
        .clone()
        .try_map_upstream(|spec| Upstream::resolve(&spec))?;
    // Each route's own set, resolved as the service's is, by route index.
    let route_upstreams = service
        .routes
        .iter()
        .map(|r| r.upstream.as_ref().map(Upstream::resolve).transpose())
        .collect::<Result<Vec<_>>>()?;
    Ok(Prepared {
        tls,
        mode,
        route_upstreams,
    })
}

/// The rest of [`build`], with its start-up lines.
fn finish(
    service: &Service,
    prepared: Prepared,
    process: &Arc<Process>,
    metrics: Option<Arc<Metrics>>,
) -> Result<Built> {
    let Prepared {
        tls,
        mode,
        route_upstreams,
    } = prepared;
    let metrics = metrics.unwrap_or_else(|| Arc::new(process.families.service(&service.name)));
    if let Some(info) = &tls.info {
        metrics.certificate_expiry(info.not_after_unix);
    }
    metrics.ocsp(super::ocsp_source(&tls));
    super::host_limits::check_fd_limit(service.limits.max_connections, &mode);
    tls.log_startup(&service.tls);
    // For the reload's failure line: the certificate still in service.
    let serial = tls.info.as_ref().map(|c| c.serial.clone());
    let certificate = match &tls.info {
        Some(c) => format!(
            "subject=\"{}\" serial={} not_after={} expires_in_days={}",
            c.subject, c.serial, c.not_after_unix, c.days_left
        ),
        None => "(no certificate)".to_string(),
    };
    let upstream = mode.upstream().cloned();
    let tls::Tls { side, .. } = tls;
    let shared = Arc::new(Shared {
        connections: Context {
            service: Arc::from(service.name.as_str()),
            plan: Plan::new(mode, side)?.with_route_upstreams(route_upstreams),
            settings: Settings {
                handshake_timeout: service.limits.handshake_timeout,
                idle_timeout: service.limits.idle_timeout,
                max_lifetime: service.limits.max_lifetime,
                connect_timeout: service.connect_timeout,
            },
            gate: Arc::clone(&process.gate),
            registry: Arc::clone(&process.registry),
            shutdown: Arc::clone(&process.shutdown),
            accept_proxy: service.accept_proxy.clone(),
        },
        tracker: Tracker::new(service.limits.max_connections, service.limits.max_per_ip),
        metrics: Arc::clone(&metrics),
        process: Arc::clone(process),
    });
    let watched = reload::Watched::new(
        service.tls.clone(),
        reload::Current::new(shared.connections.plan.contexts(), serial),
        reload::Serving {
            metrics,
            registry: Arc::clone(&process.registry),
        },
        reload::Schedule {
            watch: service.watch_interval,
            // Client mode issues no tickets: rebuilding its context would only drop the
            // upstream's session.
            ticket_key_rotation: match service.mode {
                Mode::Client { .. } => None,
                _ => service.ticket_key_rotation,
            },
        },
        upstream,
    );
    shared
        .connections
        .plan
        .log_startup(&shared.connections.settings);
    if let Some(proxy) = &service.accept_proxy {
        let from = if proxy.from.is_empty() {
            "any peer".to_string()
        } else {
            proxy
                .from
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        info!("accept-proxy: every connection opens with a PROXY v1/v2 header, from {from}");
    }
    Ok(Built {
        shared,
        watched,
        certificate,
    })
}

/// The service's listening socket: bound where it says, or the one systemd passed for it
/// (`inherited`, returned as `true`).
pub(super) fn listen(
    service: &Service,
    inherited: Option<sys::Inherited>,
) -> Result<(Listener, bool)> {
    let (listener, inherited) = match inherited {
        Some(inherited) => (Listener::inherited(inherited)?, true),
        None => (Listener::bind(&service.listen, service.backlog)?, false),
    };
    if inherited {
        info!(
            "socket activation: serving the socket systemd passed ({}); --listen {} is not used",
            listener.describe(),
            service.listen
        );
        if listener.local_addr().is_none() {
            needs_no_tcp_listener(service)?;
        }
    }
    Ok((listener, inherited))
}

/// The "listening on" line, logged when the service starts serving (at start, or when a reload
/// added it).
pub(super) fn ready_line(service: &Service, listener: &Listener) -> String {
    format!(
        "securesock {} listening on {} service={} profile={} mode={} backlog={} max_connections={} max_per_ip={} handshake_timeout={:?}",
        env!("CARGO_PKG_VERSION"),
        listener.describe(),
        service.name,
        service.tls.profile.name(),
        service.mode.name(),
        sys::somaxconn().map_or(service.backlog, |max| service.backlog.min(max)),
        service.limits.max_connections,
        service.limits.max_per_ip,
        service.limits.handshake_timeout,
    )
}

/// Which service each socket systemd passed is for: the one whose listen address is the socket's
/// (a wildcard address matches the other family's wildcard on the same port, since systemd's
/// `ListenStream=PORT` is `[::]:PORT`). One socket and one service keep the single-service rule:
/// the socket is served whatever `--listen` says. Returns one entry per service, in order; a
/// socket no service listens on is refused.
pub(super) fn match_inherited(
    services: &[Service],
    inherited: Vec<sys::Inherited>,
) -> Result<Vec<Option<sys::Inherited>>> {
    let mut matched: Vec<Option<sys::Inherited>> = services.iter().map(|_| None).collect();
    if services.len() == 1 && inherited.len() == 1 {
        matched[0] = inherited.into_iter().next();
        return Ok(matched);
    }
    for socket in inherited {
        let addr = socket.address()?;
        let found = services
            .iter()
            .position(|s| listens_on(&s.listen, &addr))
            .filter(|&i| matched[i].is_none());
        match found {
            Some(i) => matched[i] = Some(socket),
            None => bail!(
                "systemd passed a socket for {} that no service listens on (each ListenStream= needs a service whose listen is that address)",
                describe(&addr)
            ),
        }
    }
    Ok(matched)
}

fn listens_on(listen: &Listen, addr: &InheritedAddr) -> bool {
    match (listen, addr) {
        (Listen::Tcp(want), InheritedAddr::Tcp(got)) => {
            want == got
                || (want.port() == got.port()
                    && want.ip().is_unspecified()
                    && got.ip().is_unspecified())
        }
        (Listen::Unix(want), InheritedAddr::Unix(UnixName::Path(got))) => {
            Path::new(&want.path) == got.as_path()
        }
        _ => false,
    }
}

fn describe(addr: &InheritedAddr) -> String {
    match addr {
        InheritedAddr::Tcp(a) => a.to_string(),
        InheritedAddr::Unix(UnixName::Path(p)) => format!("unix:{}", p.display()),
        InheritedAddr::Unix(UnixName::Abstract(n)) => {
            format!("unix:@{}", String::from_utf8_lossy(n))
        }
    }
}

/// What the configuration refuses with `--listen unix:` it refuses with a UNIX socket systemd
/// passed too: PROXY headers in or out need a TCP client address.
fn needs_no_tcp_listener(service: &Service) -> Result<()> {
    if service.accept_proxy.is_some() {
        bail!(
            "--accept-proxy needs a TCP listening socket: systemd passed a UNIX one (ListenStream=/path)"
        );
    }
    if let Mode::Forward {
        proxy_protocol: Some(_),
        ..
    } = service.mode
    {
        bail!(
            "--proxy-protocol needs a TCP listening socket: systemd passed a UNIX one, whose clients have no address to pass on"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn services(listens: &[&str]) -> Vec<Service> {
        listens
            .iter()
            .map(|l| {
                let mut c = crate::config::parse_args(["securesock", "--listen", l]).unwrap();
                c.services.remove(0)
            })
            .collect()
    }

    #[test]
    fn inherited_sockets_go_to_the_service_listening_on_their_address() {
        let a = TcpListener::bind("127.0.0.1:0").unwrap();
        let b = TcpListener::bind("127.0.0.1:0").unwrap();
        let (pa, pb) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        let svcs = services(&["127.0.0.1:1", &pb.to_string(), &pa.to_string()]);
        let m =
            match_inherited(&svcs, vec![sys::Inherited::Tcp(a), sys::Inherited::Tcp(b)]).unwrap();
        let port = |i: usize| match &m[i] {
            Some(sys::Inherited::Tcp(l)) => Some(l.local_addr().unwrap()),
            _ => None,
        };
        assert_eq!((port(0), port(1), port(2)), (None, Some(pb), Some(pa)));

        let stray = TcpListener::bind("127.0.0.1:0").unwrap();
        let err = match_inherited(&svcs[..2], vec![sys::Inherited::Tcp(stray)])
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("no service listens on"), "{err}");
    }

    #[test]
    fn one_socket_and_one_service_is_served_whatever_the_address() {
        let a = TcpListener::bind("127.0.0.1:0").unwrap();
        let m = match_inherited(&services(&["127.0.0.1:1"]), vec![sys::Inherited::Tcp(a)]);
        assert!(m.unwrap()[0].is_some());
    }

    #[test]
    fn a_wildcard_matches_the_other_familys_wildcard() {
        let want = Listen::Tcp("0.0.0.0:443".parse().unwrap());
        assert!(listens_on(
            &want,
            &InheritedAddr::Tcp("[::]:443".parse().unwrap())
        ));
        assert!(!listens_on(
            &want,
            &InheritedAddr::Tcp("[::]:444".parse().unwrap())
        ));
        assert!(!listens_on(
            &Listen::Tcp("127.0.0.1:443".parse().unwrap()),
            &InheritedAddr::Tcp("[::]:443".parse().unwrap())
        ));
    }
}
