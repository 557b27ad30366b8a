//! securesock(1): clap_mangen's sections for the flags (one per `--help` heading, each flag with
//! its variable, default and values), then the subcommands and the hand-written sections: signals,
//! exit status, environment, files. Owns those hand-written words; the flags' words are clap's.

use std::io::{self, Write};

use clap_mangen::Man;
use clap_mangen::roff::{Inline, Roff, bold, italic, roman};

use super::roff_text::{literal, section, term, term_with};
use super::{NAME, command};

/// What securesock is, in more words than `--help`'s one line.
const DESCRIPTION: [&str; 3] = [
    "securesock is a TLS socket server on the system OpenSSL: it terminates TLS on each \
     connection and then greets the client, echoes, forwards the plaintext to an upstream \
     service, or (client mode) takes plaintext in and speaks verified TLS to the upstream. One \
     thread serves each connection; handshakes have a deadline, connections are capped per \
     service and per source address, and shutdown drains.",
    "Without a subcommand it serves. Its settings come either from the flags below, each of \
     which can also be set through the environment variable named with it (a flag on the \
     command line wins), which describe one service; or from --config FILE, a TOML file that \
     holds any number of services and whose keys are these flags' long names: see \
     securesock.toml(5). No other flag may be given with --config.",
    "Each connection ends with one log line on stderr (conn peer=... result=...); the level is \
     RUST_LOG's (info by default).",
];

const SIGNALS: [(&str, &str); 3] = [
    (
        "SIGTERM, SIGINT",
        "Stop accepting and drain: open connections go on until they end or --drain-timeout \
         passes, then each is closed in order (close_notify to the client, a FIN upstream) and \
         logged with result=shutdown. The process then exits 0. A second signal exits at once.",
    ),
    (
        "SIGHUP",
        "Reload. With --config, the file is read again: services added start listening, services \
         removed stop accepting and their open connections finish, services changed get their new \
         settings for new connections, and every certificate and key is loaded again; everything is \
         built and validated before anything changes. With flags alone, each service's \
         certificate, key and the other files it reads are loaded again. Open connections keep \
         what they started with; a reload that fails changes nothing and logs one line naming the \
         file. The file and the certificates are also watched every --watch-interval seconds. \
         securesock ctl reload does the same and answers; the package's systemctl reload uses it.",
    ),
    (
        "SIGKILL",
        "Cannot be handled: open connections are cut without close_notify. Service managers \
         send it only after their stop timeout (the package's unit allows 45 s).",
    ),
];

const EXIT_STATUS: [(&str, &str); 5] = [
    (
        "0",
        "A clean shutdown, connections cut at the drain timeout included; check: the \
         configuration would start; import-stunnel: every option was carried.",
    ),
    (
        "1",
        "The server failed while running; check: the configuration would not start (each \
         error is a line on stdout).",
    ),
    (
        "2",
        "A configuration or start-up problem: a bad flag, variable or file (named with its \
         line and column), an unreadable certificate, an address that cannot be bound. One line \
         on stderr says which. Restarting cannot fix it, so the package's unit does not retry.",
    ),
    (
        "3",
        "import-stunnel: the TOML was written, but some options could not be carried (each \
         named on stderr with its line number).",
    ),
    (
        "128+N",
        "A second signal N (SIGTERM or SIGINT) cut the drain short.",
    ),
];

const FILES: [(&str, &str); 5] = [
    (
        "/etc/securesock/securesock.toml",
        "The configuration file the Debian package's unit and the container image run with \
         (--config), when it exists: securesock.toml(5).",
    ),
    (
        "/etc/default/securesock",
        "The package's SECURESOCK_* settings, read by its unit. While this file differs from \
         the package's copy (/usr/share/securesock/securesock.default), as on a host upgraded \
         from a version configured here, or while securesock.toml is missing, the unit serves \
         these settings instead of the TOML file, and its log says so.",
    ),
    (
        "/etc/securesock/server-cert.pem, /etc/securesock/server-key.pem",
        "The package's certificate and key (a self-signed pair made at install when there is \
         none); the key is root:securesock-keys, mode 0640.",
    ),
    (
        "/run/securesock/",
        "The unit's runtime directory, the one place a unix: listening socket can be created \
         under its ProtectSystem=strict.",
    ),
    (
        "/usr/share/securesock/",
        "gen-certs.sh (a self-signed pair), check.sh (an openssl s_client check of a running \
         server), gen-ticket-key.sh, and an example socket-activation unit.",
    ),
];

const ENVIRONMENT: [(&str, &str); 3] = [
    (
        "SECURESOCK_<FLAG>",
        "Every flag's variable, named with it above: SECURESOCK_ and the long name in capitals \
         with - as _. A switch takes true/false, yes/no, on/off or 1/0; a list takes its entries \
         separated by commas (by spaces where the flag says so). With --config they are not \
         read.",
    ),
    (
        "RUST_LOG",
        "The log level: error, warn, info (the default) or debug.",
    ),
    (
        "LISTEN_FDS, LISTEN_PID",
        "Socket activation (systemd): the inherited listening socket is served instead of \
         binding --listen.",
    ),
];

/// Writes the page.
pub(super) fn render(out: &mut dyn Write) -> io::Result<()> {
    let command = command();
    let version = command.get_version().unwrap_or_default().to_string();
    let man = Man::new(command.clone())
        .title(NAME.to_uppercase())
        .section("1")
        .source(format!("{NAME} {version}"))
        .manual("User Commands");
    man.render_title(out)?;
    man.render_name_section(out)?;

    let mut roff = Roff::new();
    roff.control("SH", ["SYNOPSIS"]);
    synopsis(&mut roff, &command);
    section(&mut roff, "DESCRIPTION", &DESCRIPTION);
    roff.to_writer(out)?;

    // One section per --help heading, every visible flag with its variable, default and values.
    man.render_options_section(out)?;

    let mut roff = Roff::new();
    roff.control("SH", ["SUBCOMMANDS"]);
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        let about = sub
            .get_long_about()
            .or_else(|| sub.get_about())
            .map(ToString::to_string)
            .unwrap_or_default();
        term_with(&mut roff, usage(sub), &about);
        for positional in sub.get_positionals() {
            let values: Vec<String> = positional
                .get_possible_values()
                .iter()
                .filter(|v| !v.is_hide_set())
                .map(|v| v.get_name().to_string())
                .collect();
            if !values.is_empty() {
                roff.text([
                    Inline::LineBreak,
                    italic(value_name(positional)),
                    roman(format!(": {}", values.join(", "))),
                ]);
            }
        }
    }
    table(&mut roff, "SIGNALS", &SIGNALS);
    table(&mut roff, "EXIT STATUS", &EXIT_STATUS);
    table(&mut roff, "ENVIRONMENT", &ENVIRONMENT);
    table(&mut roff, "FILES", &FILES);
    roff.control("SH", ["EXAMPLES"]);
    literal(
        &mut roff,
        "securesock --cert cert.pem --key key.pem\n\
         securesock --listen 0.0.0.0:8443 --mode forward --upstream 127.0.0.1:8080 \\\n\
         \x20   --cert cert.pem --key key.pem\n\
         securesock check --config /etc/securesock/securesock.toml\n\
         securesock import-stunnel /etc/stunnel/stunnel.conf > securesock.toml\n\
         securesock completions bash > /etc/bash_completion.d/securesock",
    );
    section(
        &mut roff,
        "SEE ALSO",
        &[
            "securesock.toml(5), openssl-s_client(1), systemd.service(5), and the documents in \
           the source's docs/ directory (configuration, operations, deployment).",
        ],
    );
    section(&mut roff, "VERSION", &[&version]);
    roff.to_writer(out)
}

/// The ways to run it: serving from flags or a file, then each visible subcommand.
fn synopsis(roff: &mut Roff, command: &clap::Command) {
    roff.text([bold(NAME), roman(" ["), italic("OPTIONS"), roman("]")]);
    roff.control("br", []);
    roff.text([
        bold(NAME),
        roman(" "),
        bold("--config"),
        roman(" "),
        italic("FILE"),
    ]);
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        roff.control("br", []);
        roff.text(usage(sub));
    }
}

/// `securesock NAME [--config FILE | OPTIONS] ARG...` for one subcommand.
fn usage(sub: &clap::Command) -> Vec<Inline> {
    let mut line = vec![bold(format!("{NAME} {}", sub.get_name()))];
    if sub.get_arguments().any(|a| a.get_long() == Some("config")) {
        line.extend([
            roman(" [--config "),
            italic("FILE"),
            roman(" | "),
            italic("OPTIONS"),
            roman("]"),
        ]);
    }
    for positional in sub.get_positionals() {
        line.extend([roman(" "), italic(value_name(positional))]);
    }
    line
}

fn value_name(arg: &clap::Arg) -> String {
    arg.get_value_names()
        .and_then(|names| names.first())
        .map_or_else(|| arg.get_id().to_string(), ToString::to_string)
}

fn table(roff: &mut Roff, title: &str, rows: &[(&str, &str)]) {
    roff.control("SH", [title]);
    for (name, text) in rows {
        term(roff, name, text);
    }
}
