//! The `securesock` binary: parse, build the TLS context, bind, serve until a signal, drain.
//!
//! Exit codes: 0 after a clean shutdown, 2 for any configuration or start-up problem (printed as one
//! line naming it), 1 when the server fails while running, 128+N when a second signal N cuts the
//! drain short.

use std::io::Write as _;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::mpsc::Sender;
use std::thread;

use anyhow::{Context, Result};
use arc_swap::ArcSwap;
use log::{info, warn};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use securesock::config::{ArgsError, Config, ModeConfig, ProxyProtocol, parse_args};
use securesock::connection::{Mode, Settings};
use securesock::limits::Tracker;
use securesock::metrics::{self, Metrics};
use securesock::server::{self, Shared, Shutdown};
use securesock::tls::{self, EXPIRY_WARNING_DAYS, Tls, TlsSettings};
use securesock::upstream::Upstream;
use securesock::{net, reload};

/// A failure before serving starts: configuration, certificates, binding.
const EXIT_CONFIG: u8 = 2;
/// A failure while serving.
const EXIT_RUNTIME: u8 = 1;

fn main() -> ExitCode {
    init_logging();
    let config = match parse_args(std::env::args_os()) {
        Ok(config) => config,
        Err(ArgsError::Info(help)) => {
            // --help / --version: clap prints it; a closed stdout is not worth an error.
            let _ = help.print();
            return ExitCode::SUCCESS;
        }
        Err(ArgsError::Invalid(line)) => return fail(EXIT_CONFIG, &line),
    };
    let (listener, shared, shutdown) = match start(&config) {
        Ok(started) => started,
        Err(e) => return fail(EXIT_CONFIG, &format!("{e:#}")),
    };
    match server::run(listener, shared, shutdown, config.limits.drain_timeout) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => fail(EXIT_RUNTIME, &format!("server failed: {e}")),
    }
}

/// Prints one line to stderr and returns the exit code.
fn fail(code: u8, message: &str) -> ExitCode {
    let _ = writeln!(std::io::stderr(), "securesock: error: {message}");
    ExitCode::from(code)
}

/// `2026-11-27T15:17:54.742Z INFO  message`: a timestamp, the level, the message.
fn init_logging() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format(|buf, record| {
            writeln!(
                buf,
                "{} {:<5} {}",
                buf.timestamp_millis(),
                record.level(),
                record.args()
            )
        })
        .init();
}

/// Everything that can fail because of the configuration, in the order a user would fix it, then
/// the threads that serve beside the accept loop (signals, reload, metrics).
fn start(config: &Config) -> Result<(std::net::TcpListener, Arc<Shared>, Arc<Shutdown>)> {
    let settings = config.tls.clone();
    let tls = tls::build(&settings)?;
    let (mode, upstream) = match &config.mode {
        ModeConfig::Greet { greeting } => (
            Mode::Greet {
                greeting: greeting.clone(),
            },
            None,
        ),
        ModeConfig::Echo => (Mode::Echo, None),
        ModeConfig::Forward {
            upstream,
            proxy_protocol,
        } => {
            let upstream = Upstream::resolve(upstream)?;
            let mode = Mode::Forward {
                upstream: Arc::clone(&upstream),
                proxy_protocol: *proxy_protocol,
            };
            (mode, Some(upstream))
        }
    };
    let listener = net::bind(config.listen, config.backlog)
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let local = listener.local_addr().context("reading the bound address")?;
    let shutdown = Shutdown::new().context("creating the shutdown channel")?;
    let metrics = Arc::new(Metrics::new());
    metrics.certificate_expiry(tls.info.not_after_unix);

    // One descriptor per connection (two when forwarding), plus a margin for the listener, files
    // read on reload and the metrics endpoint.
    let per_connection = if upstream.is_some() { 2 } else { 1 };
    match net::raise_fd_limit() {
        Ok(n) if n < per_connection * config.limits.max_connections as u64 + 64 => warn!(
            "open-file limit is {n}: fewer than --max-connections {} needs; raise it (ulimit -n, LimitNOFILE=)",
            config.limits.max_connections
        ),
        Ok(_) => {}
        Err(e) => warn!("cannot read the open-file limit: {e}"),
    }
    let (openssl, series, support) = tls::linked_openssl();
    log::log!(
        support.level(),
        "linked {openssl}: {}; key exchange groups {}",
        support.describe(series),
        tls.groups
    );
    log_certificate(&tls);

    let shared = Arc::new(Shared {
        tls: Arc::new(ArcSwap::from_pointee(tls)),
        settings: Settings {
            mode,
            handshake_timeout: config.limits.handshake_timeout,
            idle_timeout: config.limits.idle_timeout,
            connect_timeout: config.connect_timeout,
        },
        tracker: Tracker::new(config.limits.max_connections, config.limits.max_per_ip),
        metrics: Arc::clone(&metrics),
    });
    if let Some(addr) = config.metrics_listen {
        let tracker = Arc::clone(&shared.tracker);
        metrics::serve(addr, metrics, move || tracker.active())?;
    }
    let reload = reload::spawn(
        settings,
        Arc::clone(&shared.tls),
        Arc::clone(&shared.metrics),
        reload::Schedule {
            watch: config.watch_interval,
            ticket_key_rotation: config.ticket_key_rotation,
        },
        upstream.clone(),
    )?;
    let watching = match config.watch_interval {
        Some(every) => format!("and when the certificate files change (checked every {every:?})"),
        None => "only (file watching off)".to_string(),
    };
    let rotation = match config.ticket_key_rotation {
        Some(every) => format!("every {every:?} and on each reload"),
        None => "on each reload only".to_string(),
    };
    info!("reload: on SIGHUP {watching}; session-ticket keys rotate {rotation}");
    handle_signals(Arc::clone(&shutdown), reload)?;
    if let Some(up) = &upstream {
        info!(
            "forwarding to {} ({:?}) proxy_protocol={} connect_timeout={:?} idle_timeout={:?}",
            up.spec,
            up.addrs(),
            match &config.mode {
                ModeConfig::Forward {
                    proxy_protocol: Some(ProxyProtocol::V1),
                    ..
                } => "v1",
                ModeConfig::Forward {
                    proxy_protocol: Some(ProxyProtocol::V2),
                    ..
                } => "v2",
                _ => "off",
            },
            config.connect_timeout,
            config.limits.idle_timeout
        );
    }
    log_tls_options(&config.tls);
    // Last, once signals are handled: tests and supervisors take this line as "ready".
    info!(
        "securesock {} listening on {local} profile={} mode={} backlog={} max_connections={} max_per_ip={} handshake_timeout={:?}",
        env!("CARGO_PKG_VERSION"),
        config.tls.profile.name(),
        config.mode.name(),
        effective_backlog(config.backlog),
        config.limits.max_connections,
        config.limits.max_per_ip,
        config.limits.handshake_timeout,
    );
    Ok((listener, shared, shutdown))
}

/// One line each for the TLS options beyond the certificate, when used.
fn log_tls_options(tls: &TlsSettings) {
    if let Some(auth) = &tls.client_auth {
        info!(
            "client certificates: verified against {} ({}){}",
            auth.ca.display(),
            if auth.require { "required" } else { "optional" },
            auth.crl
                .as_ref()
                .map(|c| format!(", revocations from {}", c.display()))
                .unwrap_or_default()
        );
    }
    for sni in &tls.sni {
        info!("sni name={} cert={}", sni.name, sni.cert.display());
    }
    if tls.strict_sni {
        info!("strict SNI: names no certificate is for are refused");
    }
    if !tls.alpn.is_empty() {
        info!(
            "alpn protocols={} ({})",
            tls.alpn.join(","),
            if tls.alpn_optional {
                "optional"
            } else {
                "required"
            }
        );
    }
}

/// The backlog the kernel will really use.
fn effective_backlog(asked: u32) -> u32 {
    net::somaxconn().map_or(asked, |max| asked.min(max))
}

fn log_certificate(tls: &Tls) {
    let c = &tls.info;
    info!(
        "certificate subject=\"{}\" sans={} serial={} expires_in_days={} chain={}",
        c.subject,
        if c.sans.is_empty() {
            "-".to_string()
        } else {
            c.sans.join(",")
        },
        c.serial,
        c.days_left,
        c.chain_len
    );
    if c.days_left < EXPIRY_WARNING_DAYS {
        warn!("certificate expires in {} days: renew it", c.days_left);
    }
    if c.self_signed {
        info!(
            "certificate is self-signed: clients must trust it explicitly (s_client -CAfile); use a CA-issued certificate in production"
        );
    }
}

/// SIGTERM/SIGINT start the drain, and a second one exits at once; SIGHUP reloads the certificate.
fn handle_signals(shutdown: Arc<Shutdown>, reload: Sender<()>) -> Result<()> {
    let mut signals =
        Signals::new([SIGTERM, SIGINT, SIGHUP]).context("installing signal handlers")?;
    thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if signal == SIGHUP {
                    info!("received SIGHUP: reloading the certificate");
                    // The reload thread lives as long as the process.
                    let _ = reload.send(());
                    continue;
                }
                let name = if signal == SIGTERM {
                    "SIGTERM"
                } else {
                    "SIGINT"
                };
                if shutdown.requested() {
                    warn!("received {name} again: exiting now");
                    std::process::exit(128 + signal);
                }
                info!("received {name}: shutting down (send it again to exit at once)");
                shutdown.trigger();
            }
        })
        .context("starting the signal thread")?;
    Ok(())
}
