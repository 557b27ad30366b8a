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
//! - `args.rs`: the clap struct, one flattened struct per `--help` heading (listen, mode, TLS,
//!   client authentication, upstream, limits, operations): flag names, variables, defaults, help;
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
pub mod stunnel;
mod types;
mod validate;

pub use args::{
    Args, ClientAuthArgs, LimitsArgs, ListenArgs, ModeArgs, OperationsArgs, TlsArgs, UpstreamArgs,
};
pub use cidr::Cidr;
pub use errors::ArgsError;
pub use types::{
    AcceptProxy, AccessRules, ClientAuth, Config, DEFAULT_LISTEN_MODE, Identity, Limits, Listen,
    Mode, ProxyProtocol, SniSpec, TlsProfile, TlsSettings, UNIX_PREFIX, UnixListen, UpstreamTls,
};
pub use validate::{is_dns_name, seconds};

use clap::Parser;

/// Parses and validates a command line (the program name first), environment variables included.
pub fn parse_args<I, T>(args: I) -> Result<Config, ArgsError>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let args = Args::try_parse_from(args).map_err(ArgsError::from_clap)?;
    args.validate().map_err(ArgsError::Invalid)
}

/// [`parse_args`] for the rooms' tests: the flags after the program name, and any refusal as text.
#[cfg(test)]
fn parse(args: &[&str]) -> Result<Config, String> {
    let mut full = vec!["securesock"];
    full.extend_from_slice(args);
    parse_args(full).map_err(|e| match e {
        ArgsError::Info(e) => e.to_string(),
        ArgsError::Invalid(line) => line,
    })
}
