//! The `securesock` binary: parse the command line into a [`Config`], start logging in its
//! format, bind the [`Server`], turn signals into calls on its [`Handle`], run it, and map how it
//! ended to an exit code.
//!
//! `securesock check` checks instead of serving: see [`securesock::check`] for its output and
//! exit codes. `securesock completions SHELL` and `securesock manual PAGE` print a completion
//! script or a manual page: see [`securesock::manual`].
//!
//! Exit codes: 0 after a clean shutdown (connections cut at the drain timeout included), 2 for any
//! configuration or start-up problem (printed as one line naming it), 1 when the server fails while
//! running, 128+N when a second signal N cuts the drain short. `import-stunnel FILE`: 0 when every
//! option was carried, 3 when some were left out (each named on stderr), 2 when the file cannot be
//! read or stunnel would refuse it.

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
/// `import-stunnel`: the TOML was written, but some option could not be carried.
const EXIT_INCOMPLETE: u8 = 3;

/// Rust's allocations go to jemalloc too (with sized frees); C's `malloc` already does, through the
/// unprefixed symbols. Its settings are `securesock::sys::memory`'s.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let config: Config = match parse_invocation(std::env::args_os()) {
        Ok(Invocation::Serve(config)) => config,
        // The dry run's findings are its output, on stdout; it starts no logger, so the loaders'
        // own warnings do not repeat them on stderr.
        Ok(Invocation::Check(config)) => return ExitCode::from(securesock::check::run(&config)),
        Ok(Invocation::ImportStunnel(file)) => return import_stunnel(&file),
        Ok(Invocation::Ctl { socket, command }) => {
            return ExitCode::from(securesock::control::client::run(&socket, &command));
        }
        Ok(Invocation::Completions(shell)) => {
            return print("the completion script", |out| {
                securesock::manual::completions(shell, out)
            });
        }
        Ok(Invocation::Manual(page)) => {
            return print("the manual page", |out| securesock::manual::page(page, out));
        }
        Err(ArgsError::Info(help)) => {
            // --help / --version: clap prints it; a closed stdout is not worth an error.
            let _ = help.print();
            return ExitCode::SUCCESS;
        }
        Err(ArgsError::Invalid(line)) => return fail(EXIT_CONFIG, &line),
    };
    securesock::logging::init(config.process.log_format);
    let server = match Server::bind(&config) {
        Ok(server) => server,
        Err(e) => return fail(EXIT_CONFIG, &format!("{e:#}")),
    };
    let reloading = match &config.process.config_file {
        Some(file) => format!("reading {} again", file.display()),
        None => "reloading the certificate".to_string(),
    };
    if let Err(e) = handle_signals(server.handle(), reloading) {
        return fail(EXIT_CONFIG, &format!("{e:#}"));
    }
    match server.run() {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => fail(EXIT_RUNTIME, &format!("server failed: {e}")),
    }
}

/// `securesock import-stunnel FILE`: the TOML on stdout, each finding on stderr; exit 0 when
/// everything was carried, 3 when something was left out, 2 when the file cannot be read or
/// stunnel itself would refuse it.
fn import_stunnel(file: &std::path::Path) -> ExitCode {
    let import = match securesock::config::stunnel::import_file(file) {
        Ok(import) => import,
        Err(e) => return fail(EXIT_CONFIG, &e.to_string()),
    };
    let mut stderr = std::io::stderr().lock();
    for finding in &import.findings {
        let _ = writeln!(stderr, "{finding}");
    }
    if let Err(e) = std::io::stdout().lock().write_all(import.toml.as_bytes()) {
        return fail(EXIT_RUNTIME, &format!("writing the TOML: {e}"));
    }
    ExitCode::from(if import.complete() {
        0
    } else {
        EXIT_INCOMPLETE
    })
}

/// `completions` and `manual`: `write` on stdout, exit 0, or 1 when stdout fails.
fn print(
    what: &str,
    write: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<()>,
) -> ExitCode {
    let mut stdout = std::io::stdout().lock();
    match write(&mut stdout).and_then(|()| stdout.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(EXIT_RUNTIME, &format!("writing {what}: {e}")),
    }
}

/// Prints one line to stderr (in the log's format once logging runs) and returns the exit code.
fn fail(code: u8, message: &str) -> ExitCode {
    securesock::logging::fatal(message);
    ExitCode::from(code)
}

/// SIGTERM/SIGINT start the drain, and a second one exits at once; SIGHUP reloads: the
/// configuration file when there is one (`reloading` says which), else the certificates.
fn handle_signals(server: Handle, reloading: String) -> Result<()> {
    let mut signals =
        Signals::new([SIGTERM, SIGINT, SIGHUP]).context("installing signal handlers")?;
    thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if signal == SIGHUP {
                    info!("received SIGHUP: {reloading}");
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
