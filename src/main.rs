//! The `securesock` binary: logging, parse the command line into a [`Config`], bind the
//! [`Server`], turn signals into calls on its [`Handle`], run it, and map how it ended to an exit
//! code.
//!
//! `securesock check` checks instead of serving: see [`securesock::check`] for its output and
//! exit codes.
//!
//! Exit codes: 0 after a clean shutdown (connections cut at the drain timeout included), 2 for any
//! configuration or start-up problem (printed as one line naming it), 1 when the server fails while
//! running, 128+N when a second signal N cuts the drain short.

use std::io::Write as _;
use std::process::ExitCode;
use std::thread;

use anyhow::{Context, Result};
use log::{info, warn};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use securesock::config::{ArgsError, Config, Invocation, parse_invocation};
use securesock::server::{Handle, Server};

/// A failure before serving starts: configuration, certificates, binding.
const EXIT_CONFIG: u8 = 2;
/// A failure while serving.
const EXIT_RUNTIME: u8 = 1;

fn main() -> ExitCode {
    let config: Config = match parse_invocation(std::env::args_os()) {
        Ok(Invocation::Serve(config)) => config,
        // The dry run's findings are its output, on stdout; it starts no logger, so the loaders'
        // own warnings do not repeat them on stderr.
        Ok(Invocation::Check(config)) => return ExitCode::from(securesock::check::run(&config)),
        // Its helper fills this in (issue 19 item 7).
        Ok(Invocation::ImportStunnel(_)) => {
            return fail(EXIT_CONFIG, "`securesock import-stunnel` is not built yet");
        }
        Err(ArgsError::Info(help)) => {
            // --help / --version: clap prints it; a closed stdout is not worth an error.
            let _ = help.print();
            return ExitCode::SUCCESS;
        }
        Err(ArgsError::Invalid(line)) => return fail(EXIT_CONFIG, &line),
    };
    init_logging();
    let server = match Server::bind(&config) {
        Ok(server) => server,
        Err(e) => return fail(EXIT_CONFIG, &format!("{e:#}")),
    };
    if let Err(e) = handle_signals(server.handle()) {
        return fail(EXIT_CONFIG, &format!("{e:#}"));
    }
    match server.run() {
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

/// SIGTERM/SIGINT start the drain, and a second one exits at once; SIGHUP reloads the certificate.
fn handle_signals(server: Handle) -> Result<()> {
    let mut signals =
        Signals::new([SIGTERM, SIGINT, SIGHUP]).context("installing signal handlers")?;
    thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if signal == SIGHUP {
                    info!("received SIGHUP: reloading the certificate");
                    server.reload();
                    continue;
                }
                let name = if signal == SIGTERM {
                    "SIGTERM"
                } else {
                    "SIGINT"
                };
                if server.shutdown_requested() {
                    warn!("received {name} again: exiting now");
                    std::process::exit(128 + signal);
                }
                info!("received {name}: shutting down (send it again to exit at once)");
                server.shutdown();
            }
        })
        .context("starting the signal thread")?;
    Ok(())
}
