//! securesock.toml(5): the configuration file's tables and every key, each written from the clap
//! flag it is named after (its help, what it takes, its default and values), so the page lists
//! exactly the keys the loader accepts. Owns the words about the file as a whole (its tables,
//! inheritance, the refusals, an example); never a key's own meaning, which is its flag's.

use std::io::{self, Write};

use clap::{Arg, Command};
use clap_mangen::roff::{Inline, Roff, bold, italic, roman};

use super::roff_text::{literal, section, term};
use super::{NAME, command};
use crate::config::{is_process_key, is_service_key, key_takes, route_keys};

const DESCRIPTION: [&str; 4] = [
    "securesock --config FILE reads its whole configuration from FILE, a TOML document. The \
     Debian package's unit and the container image use /etc/securesock/securesock.toml when it \
     exists. Any number of services run in the one process, each with its own listener, mode, \
     TLS context, access rules, upstreams and limits.",
    "Every key is the long name of a securesock(1) flag, with the same meaning, default and \
     validation, so the flags' documentation is the file's: listen = \"0.0.0.0:443\" is \
     --listen 0.0.0.0:443. A switch takes true or false; a number an integer or a float (or its \
     string form); a repeatable flag an array of strings, or one string.",
    "Unknown keys, values of the wrong type, a service without a name, two services with the \
     same name or the same listen address are refused at start with FILE:LINE:COLUMN, what is \
     wrong and what is accepted, and exit status 2. With --config no other flag may be given, \
     and the SECURESOCK_* variables of the other flags are not read.",
    "securesock check --config FILE checks a file without serving: every certificate, key, CA \
     and upstream name, and whether each listen address is free.",
];

/// Writes the page.
pub(super) fn render(out: &mut dyn Write) -> io::Result<()> {
    let command = command();
    let version = command.get_version().unwrap_or_default().to_string();
    let mut roff = Roff::new();
    roff.control(
        "TH",
        [
            "SECURESOCK.TOML",
            "5",
            "",
            &format!("{NAME} {version}"),
            "File Formats",
        ],
    );
    section(
        &mut roff,
        "NAME",
        &["securesock.toml - the configuration file of securesock"],
    );
    roff.control("SH", ["SYNOPSIS"]);
    roff.text([bold("/etc/securesock/securesock.toml")]);
    roff.control("br", []);
    roff.text([bold(NAME), roman(" --config "), italic("FILE")]);
    section(&mut roff, "DESCRIPTION", &DESCRIPTION);

    roff.control("SH", ["TABLES"]);
    term(
        &mut roff,
        "[process]",
        "Optional. The settings of the whole process: the keys under PROCESS KEYS. \
         max-connections here is a cap on top of every service's own.",
    );
    term(
        &mut roff,
        "[defaults]",
        "Optional. Any service key but name: every service inherits it unless it sets the key \
         itself.",
    );
    term(
        &mut roff,
        "[[service]]",
        "One table per service, at least one: a name (required, unique) and the service keys \
         below.",
    );
    term(
        &mut roff,
        "[[service.route]]",
        "Inside a service, by SNI: clients that ask for the route's sni name get its own \
         certificate, upstreams and access rules, on the service's listener. The keys are under \
         ROUTE KEYS.",
    );

    roff.control("SH", ["PROCESS KEYS"]);
    for arg in command
        .get_arguments()
        .filter(|a| is_key(a, is_process_key))
    {
        key(&mut roff, arg);
    }

    roff.control("SH", ["SERVICE KEYS"]);
    roff.control("PP", []);
    roff.text([roman(
        "In [[service]] and [defaults], grouped as securesock(1) groups their flags.",
    )]);
    term(
        &mut roff,
        "name",
        "The service's name, in its log lines (service=NAME) and metrics: 1 to 64 letters, \
         digits, '.', '_' or '-'; unique in the file. Required in [[service]], refused in \
         [defaults].",
    );
    let mut headings: Vec<&str> = Vec::new();
    for arg in command.get_arguments() {
        if let Some(heading) = arg.get_help_heading() {
            if !headings.contains(&heading) {
                headings.push(heading);
            }
        }
    }
    for heading in headings {
        let args: Vec<&Arg> = command
            .get_arguments()
            .filter(|a| a.get_help_heading() == Some(heading) && is_key(a, is_service_key))
            .collect();
        if args.is_empty() {
            continue;
        }
        roff.control("SS", [heading]);
        for arg in args {
            key(&mut roff, arg);
        }
    }

    roff.control("SH", ["ROUTE KEYS"]);
    term(
        &mut roff,
        "sni",
        "The name the route is for: exact, or *.domain for one label. Required.",
    );
    term(
        &mut roff,
        "name",
        "The route's name in conn lines (route=NAME); the sni when not given.",
    );
    roff.control("PP", []);
    roff.text([roman(
        "And, each as in [[service]] and in its place for clients that asked for this name (cert and key required; client-ca, require-client-cert and crl are the service's alone; allow-* needs the service's client-ca):",
    )]);
    // The flags a route may have its own value of: the file's own list, less the two keys
    // written by hand above (no flag has their meaning in a route).
    for &name in route_keys()
        .iter()
        .filter(|k| !["name", "sni"].contains(*k))
    {
        if let Some(arg) = flag(&command, name) {
            key(&mut roff, arg);
        }
    }

    roff.control("SH", ["EXAMPLE"]);
    roff.text([roman(
        "Three services: a web front with a route by name, a TLS front for a plaintext IMAP \
         server, and a client-mode tunnel that gives a local program TLS to a remote Redis.",
    )]);
    literal(&mut roff, EXAMPLE);
    section(
        &mut roff,
        "SEE ALSO",
        &[
            "securesock(1), stunnel(8): securesock import-stunnel FILE writes a stunnel.conf \
           as this file.",
        ],
    );
    roff.to_writer(out)
}

/// The example, the three-service file the README shows too.
pub(super) const EXAMPLE: &str = r#"[process]
metrics-listen = "127.0.0.1:9100"

[defaults]
tls-profile = "intermediate"
max-per-ip = 64

[[service]]
name = "web"
listen = "0.0.0.0:443"
mode = "forward"
cert = "/etc/ssl/web/fullchain.pem"
key = "/etc/ssl/web/privkey.pem"
upstream = ["10.0.0.5:8080", "10.0.0.6:8080"]
balance = "round-robin"

  [[service.route]]
  sni = "api.example.com"
  cert = "/etc/ssl/api/fullchain.pem"
  key = "/etc/ssl/api/privkey.pem"
  upstream = ["127.0.0.1:9000"]

[[service]]
name = "imaps"
listen = "0.0.0.0:993"
mode = "forward"
cert = "/etc/ssl/mail/fullchain.pem"
key = "/etc/ssl/mail/privkey.pem"
upstream = "127.0.0.1:143"

[[service]]
name = "redis"
listen = "127.0.0.1:6379"
mode = "client"
upstream = "redis.example.com:6380"
upstream-ca = "/etc/securesock/redis-ca.pem""#;

/// Whether `arg` is a key of the table `is_in` says (help and version never are).
fn is_key(arg: &Arg, is_in: fn(&str) -> bool) -> bool {
    !arg.is_hide_set() && arg.get_long().is_some_and(is_in)
}

fn flag<'a>(command: &'a Command, long: &str) -> Option<&'a Arg> {
    command.get_arguments().find(|a| a.get_long() == Some(long))
}

/// One key: `name = ` what it takes, then its flag's help, values and default.
fn key(roff: &mut Roff, arg: &Arg) {
    let Some(long) = arg.get_long() else {
        return;
    };
    roff.control("TP", []);
    roff.text([bold(long), roman(" = "), italic(key_takes(arg))]);
    let help = arg
        .get_long_help()
        .or_else(|| arg.get_help())
        .map(ToString::to_string)
        .unwrap_or_default();
    let mut text: Vec<Inline> = vec![roman(format!("{help}."))];
    let values: Vec<String> = arg
        .get_possible_values()
        .iter()
        .filter(|v| !v.is_hide_set())
        .map(|v| v.get_name().to_string())
        .collect();
    if !values.is_empty() {
        text.push(roman(format!(" One of: {}.", values.join(", "))));
    }
    let defaults: Vec<String> = arg
        .get_default_values()
        .iter()
        .map(|v| v.to_string_lossy().into_owned())
        .collect();
    if !defaults.is_empty() {
        text.push(roman(format!(" Default: {}.", defaults.join(", "))));
    }
    text.push(roman(format!(" The flag --{long}.")));
    roff.text(text);
}
