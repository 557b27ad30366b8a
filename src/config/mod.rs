//! Command line and environment: clap derive turns raw flags (and `SECURESOCK_*` variables) into
//! [`Args`], and [`Args::validate`] turns those into a typed [`Config`] before any work starts.
//!
//! This is the bottom floor: it imports nothing else from the crate, so every room above may use
//! it and it can use none of them. It does no I/O beyond reading what it is told to read (today the
//! command line and the environment; a configuration file named on the command line is the only
//! file it may ever read): it does not open sockets, resolve names, bind, or look at certificate
//! files. Whatever can be checked from the values alone (address syntax, ranges, flag
//! combinations) is checked here, so a bad configuration fails with one line before the server
//! touches anything.
//!
//! The rooms:
//! - `args.rs`: the clap structs: [`Cli`] (the subcommands and `--config`) over [`Args`], one
//!   flattened struct per `--help` heading (listen, mode, TLS, client authentication, upstream,
//!   limits, operations): flag names, variables, defaults, help;
//! - `file.rs`: `--config FILE`, a TOML file whose keys are the long flags' names, through the same
//!   raw groups and checks (`file/route.rs`: its `[[service.route]]` tables); `keys.rs`: which flags are its keys and the TOML types each takes;
//!   `read.rs`: the bounded read of that file;
//! - `validate.rs`: raw group values to typed settings, one function per group;
//! - `types.rs`: every settings type the rest of the server reads;
//! - `cidr.rs`: address blocks;
//! - `errors.rs`: clap's errors as one line;
//! - `stunnel/`: `securesock import-stunnel`, a stunnel.conf read (with its includes) and written
//!   as this file's TOML, with what could not be carried.
//!
//! Every item is re-exported here, so the rest of the crate names `crate::config::NAME` and never
//! the room it lives in.

mod args;
mod cidr;
mod errors;
mod file;
mod keys;
pub(crate) mod read;
pub mod stunnel;
mod types;
mod validate;

pub use args::{
    Args, Cli, ClientAuthArgs, Command, CompletionShell, CtlArgs, CtlCommand, LimitsArgs,
    ListenArgs, ManualPage, ModeArgs, OperationsArgs, Source, TlsArgs, UpstreamArgs,
};
pub use cidr::Cidr;
pub use errors::ArgsError;
pub use keys::{is_process_key, is_service_key, key_takes, route_keys};
pub use types::{
    AcceptProxy, AccessRules, Balance, ClientAuth, Config, ControlSocket, DEFAULT_CONTROL_SOCKET,
    DEFAULT_LISTEN_MODE, DEFAULT_SERVICE, Identity, Limits, Listen, LogFormat, Mode, Process,
    ProxyProtocol, Route, RouteTls, Service, SniSpec, TlsProfile, TlsSettings, UNIX_PREFIX,
    UnixListen, UpstreamTls, Upstreams,
};
pub use validate::{is_dns_name, seconds};

use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches};

/// What a command line asks securesock to do.
#[derive(Debug)]
pub enum Invocation {
    /// Serve this configuration (flags, or `--config FILE`).
    Serve(Config),
    /// `securesock check`: check this configuration without serving.
    Check(Config),
    /// `securesock import-stunnel FILE`: print the TOML equivalent of a stunnel.conf.
    ImportStunnel(PathBuf),
    /// `securesock ctl`: ask the server on this control socket.
    Ctl {
        socket: PathBuf,
        command: CtlCommand,
    },
    /// `securesock completions SHELL`: print that shell's completion script.
    Completions(CompletionShell),
    /// `securesock manual PAGE`: print that manual page.
    Manual(ManualPage),
}

/// Parses and validates a command line (the program name first), environment variables
/// included, into what it asks for: serving (flags or `--config FILE`), or a subcommand.
pub fn parse_invocation<I, T>(args: I) -> Result<Invocation, ArgsError>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let matches = Cli::command()
        .try_get_matches_from(args)
        .map_err(ArgsError::from_clap)?;
    let cli = Cli::from_arg_matches(&matches).map_err(ArgsError::from_clap)?;
    match cli.command {
        None => source(cli.source, &matches).map(Invocation::Serve),
        Some(Command::Check(check)) => {
            let sub = matches.subcommand_matches("check").unwrap_or(&matches);
            source(*check, sub).map(Invocation::Check)
        }
        Some(Command::ImportStunnel { file }) => Ok(Invocation::ImportStunnel(file)),
        Some(Command::Ctl(ctl)) => Ok(Invocation::Ctl {
            socket: ctl_socket(ctl.control_socket, ctl.config.as_deref())?,
            command: ctl.command,
        }),
        Some(Command::Completions { shell }) => Ok(Invocation::Completions(shell)),
        Some(Command::Manual { page }) => Ok(Invocation::Manual(page)),
    }
}

/// The control socket `securesock ctl` talks to: `--control-socket`, else the `[process]
/// control-socket` of `--config FILE` (a file that sets none is refused), else the package's.
fn ctl_socket(
    flag: Option<PathBuf>,
    config: Option<&std::path::Path>,
) -> Result<PathBuf, ArgsError> {
    if let Some(path) = flag {
        return Ok(path);
    }
    let Some(file) = config else {
        return Ok(PathBuf::from(DEFAULT_CONTROL_SOCKET));
    };
    let config = file::load(file).map_err(ArgsError::Invalid)?;
    config
        .process
        .control_socket
        .map(|c| c.path)
        .ok_or_else(|| {
            ArgsError::Invalid(format!(
                "{} sets no control-socket in [process] (give --control-socket PATH)",
                file.display()
            ))
        })
}

/// The configuration a [`Source`] names: its file, or its flags. Flags beside `--config` are
/// refused: the file is the whole configuration, and a flag that silently won (or lost) over it
/// would be a second place to look. No flag is excepted, not even an operational one a unit file
/// might pass: a unit passes `--config FILE` alone, and `[process]` holds the process's settings.
fn source(source: Source, matches: &clap::ArgMatches) -> Result<Config, ArgsError> {
    let Some(path) = source.config else {
        return source.args.validate().map_err(ArgsError::Invalid);
    };
    if let Some(flag) = Args::command()
        .get_arguments()
        .find(|a| matches.value_source(a.get_id().as_str()) == Some(ValueSource::CommandLine))
        .and_then(|a| a.get_long())
    {
        return Err(ArgsError::Invalid(format!(
            "--{flag} cannot be given with --config: the file holds the whole configuration (write it there as the key {flag}, or drop --config)"
        )));
    }
    load_file(&path).map_err(ArgsError::Invalid)
}

/// Reads `--config FILE` into the configuration it describes, remembering the path (for reload),
/// or one line `FILE:LINE:COLUMN: what is wrong (what is accepted)`: what start-up reads and what
/// a reload reads again.
pub fn load_file(path: &std::path::Path) -> Result<Config, String> {
    let mut config = file::load(path)?;
    config.process.config_file = Some(path.to_path_buf());
    Ok(config)
}

/// Parses and validates a command line that serves (the program name first), environment
/// variables included: [`parse_invocation`] for the callers that only serve.
pub fn parse_args<I, T>(args: I) -> Result<Config, ArgsError>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    match parse_invocation(args)? {
        Invocation::Serve(config) => Ok(config),
        Invocation::Check(_)
        | Invocation::ImportStunnel(_)
        | Invocation::Ctl { .. }
        | Invocation::Completions(_)
        | Invocation::Manual(_) => Err(ArgsError::Invalid(
            "a subcommand where a configuration to serve was expected".into(),
        )),
    }
}

/// [`parse_args`] for the rooms' tests: the flags after the program name, and any refusal as text.
#[cfg(test)]
fn parse_config(args: &[&str]) -> Result<Config, String> {
    let mut full = vec!["securesock"];
    full.extend_from_slice(args);
    parse_args(full).map_err(|e| match e {
        ArgsError::Info(e) => e.to_string(),
        ArgsError::Invalid(line) => line,
    })
}

/// [`parse_config`]'s one service, the one the flags describe.
#[cfg(test)]
fn parse(args: &[&str]) -> Result<Service, String> {
    let mut config = parse_config(args)?;
    assert_eq!(config.services.len(), 1, "flags give exactly one service");
    let service = config.services.remove(0);
    assert_eq!(service.name, DEFAULT_SERVICE);
    Ok(service)
}
