//! Turning clap's errors into the one line the server prints: the flag or variable, the value, and
//! what is accepted.
//!
//! Owns [`ArgsError`] and the rewriting of clap's text; never decides whether a value is valid
//! (clap's parsers and `validate.rs` do), never does I/O beyond reading the environment to say
//! which variable a bad value came from, and imports nothing from the crate above `config`.

use clap::ArgAction;
use clap::CommandFactory;
use clap::error::{ContextKind, ContextValue, ErrorKind};

use super::args::Args;

/// Why the command line did not produce a configuration.
#[derive(Debug)]
pub enum ArgsError {
    /// `--help` or `--version`: print it and exit 0 (clap knows how).
    Info(clap::Error),
    /// A bad flag or value: one line naming it.
    Invalid(String),
}

impl ArgsError {
    /// Sorts clap's refusal: help and version are for printing, anything else is one line.
    pub(super) fn from_clap(e: clap::Error) -> ArgsError {
        match e.kind() {
            ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => ArgsError::Info(e),
            _ => ArgsError::Invalid(one_line(&e)),
        }
    }
}

/// The values a yes/no variable takes (clap's BoolishValueParser also knows y, n, t and f).
const BOOLEANS: &str = "true, false, 1, 0, yes, no, on, off";

/// What a value of each kind looks like, for errors that would otherwise not say.
pub(super) fn accepted(value_name: &str) -> Option<&'static str> {
    match value_name {
        "N" => Some("a whole number"),
        "SECS" => Some("a number of seconds"),
        _ => None,
    }
}

/// clap's error as one line that names the flag or variable, the value, and what is accepted.
/// clap's own text puts the accepted values and a hint on lines of their own, and says nothing of
/// a value that came from the environment.
fn one_line(e: &clap::Error) -> String {
    let text = e.to_string();
    let mut line = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("invalid arguments")
        .trim_start_matches("error: ")
        .trim()
        .to_string();
    if !matches!(
        e.kind(),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation
    ) {
        return line;
    }
    let flag = match e.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(flag)) => flag.clone(),
        _ => return line,
    };
    let long = flag.split_whitespace().next().unwrap_or_default();
    let command = Args::command();
    let arg = command
        .get_arguments()
        .find(|a| a.get_long().is_some_and(|l| format!("--{l}") == long));
    // A value that came from the environment is named by its variable, which is what the user set.
    if let (Some(arg), Some(ContextValue::String(value))) = (arg, e.get(ContextKind::InvalidValue))
    {
        if let Some(var) = arg.get_env().and_then(|v| v.to_str()) {
            if std::env::var_os(var).is_some_and(|set| set.to_str() == Some(value.as_str())) {
                line = format!("invalid value '{value}' in {var} (for {long})");
            }
        }
    }
    let boolean = arg.is_some_and(|a| matches!(a.get_action(), ArgAction::SetTrue));
    let possible: Vec<String> = arg
        .filter(|_| !boolean)
        .map(|a| {
            a.get_possible_values()
                .iter()
                .filter(|p| !p.is_hide_set())
                .map(|p| p.get_name().to_string())
                .collect()
        })
        .unwrap_or_default();
    if boolean {
        line = format!("{line}; accepted: {BOOLEANS} (any case)");
    } else if !possible.is_empty() {
        line = format!("{line}; accepted: {}", possible.join(", "));
    } else if let Some(kind) = arg
        .and_then(|a| a.get_value_names())
        .and_then(|names| names.first())
        .and_then(|name| accepted(name.as_str()))
    {
        if !line.contains("expected") {
            line = format!("{line}; expected {kind}");
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use crate::config::parse;

    #[test]
    fn rejected_values_say_what_is_accepted() {
        for (args, want) in [
            (&["--mode", "foo"][..], "accepted: greet, echo, forward"),
            (
                &["--tls-profile", "old"][..],
                "accepted: intermediate, modern",
            ),
            (
                &["--handshake-timeout", "-1"][..],
                "more than 0 and at most 86400 seconds, got -1",
            ),
            (
                &["--idle-timeout", "soon"][..],
                "expected a number of seconds",
            ),
            (
                &["--max-connections", "many"][..],
                "expected a whole number",
            ),
            (&["--listen", "nonsense"][..], "expected IP:PORT"),
            (
                &["--mode", "forward", "--upstream", "x"][..],
                "expected HOST:PORT",
            ),
        ] {
            let err = parse(args).unwrap_err();
            assert!(err.contains(want), "{args:?}: {err}");
        }
    }

    #[test]
    fn bad_values_are_refused_with_one_line() {
        for args in [
            &["--listen", "nonsense"][..],
            &["--listen", "127.0.0.1"][..],
            &["--handshake-timeout", "0"][..],
            &["--handshake-timeout", "-3"][..],
            &["--max-connections", "0"][..],
            &["--max-connections", "many"][..],
            &["--no-such-flag"][..],
            &["--tls-profile", "old"][..],
            &["--metrics-listen", "9100"][..],
            &["--watch-interval", "-1"][..],
            &["--mode", "forward"][..],
            &["--mode", "foo"][..],
            &["--upstream", "127.0.0.1:80"][..],
            &["--mode", "forward", "--upstream", "no-port"][..],
            &["--mode", "forward", "--upstream", "host:0"][..],
            &["--proxy-protocol", "v1"][..],
            &["--require-client-cert"][..],
            &["--crl", "x.pem"][..],
            &["--sni", "example.com"][..],
            &["--sni", "bad name=a,b"][..],
            &["--sni", "*.=a,b"][..],
            &["--alpn-optional"][..],
            &["--mode", "client"][..],
            &[
                "--mode",
                "client",
                "--upstream",
                "db:5432",
                "--client-ca",
                "ca.pem",
            ][..],
            &["--mode", "client", "--upstream", "db:5432", "--alpn", "h2"][..],
            &[
                "--mode",
                "client",
                "--upstream",
                "db:5432",
                "--upstream-cert",
                "c.pem",
            ][..],
            &["--mode", "client", "--upstream", "unix:/run/db.sock"][..],
            &["--upstream-ca", "ca.pem"][..],
            &[
                "--mode",
                "forward",
                "--upstream",
                "a:1",
                "--upstream-name",
                "a",
            ][..],
            &["--listen", "unix:relative.sock"][..],
            &["--listen-mode", "0600"][..],
            &["--listen", "unix:/tmp/a.sock", "--listen-mode", "0999"][..],
            &[
                "--listen",
                "unix:/tmp/a.sock",
                "--mode",
                "forward",
                "--upstream",
                "a:1",
                "--proxy-protocol",
                "v2",
            ][..],
            &["--allow-cn", "client"][..],
            &["--allow-uri", "spiffe://x/y"][..],
            &["--accept-proxy-from", "10.0.0.0/8"][..],
            &["--accept-proxy", "--accept-proxy-from", "10.0.0.0/33"][..],
            &["--accept-proxy", "--accept-proxy-from", "nonsense"][..],
            &[
                "--accept-proxy",
                "--accept-proxy-from",
                "10.0.0.0/8",
                "--listen",
                "unix:/run/s.sock",
            ][..],
            &["--accept-proxy"][..],
        ] {
            let err = parse(args).unwrap_err();
            assert!(!err.trim().contains('\n'), "{args:?}: {err}");
        }
    }
}
