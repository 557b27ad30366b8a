//! `securesock check`: a dry run, like `nginx -t` and `hitch --test`, that also checks what they
//! don't. It takes the validated settings and reports, one line per finding, everything start-up
//! would refuse and what an operator should act on before it bites: each key against its
//! certificate, the chain's order, days until each certificate expires, every `--sni` and route
//! name against its certificate's names, the client CA, CRL, OCSP response and ticket-key files,
//! the TLS context exactly as start-up builds it, the upstreams' addresses (each route's too), and
//! whether each listen address is free (and if not, which process holds it).
//!
//! The output, on stdout, one line per finding:
//!
//! ```text
//! SERVICE: LEVEL: WHAT
//! default: ok: certificate /etc/ssl/web.pem (CN=web) expires in 74 days (Feb 13 12:00:00 2027 GMT)
//! default: error: listen 0.0.0.0:443 is in use: held by pid 812 (nginx)
//! ```
//!
//! `LEVEL` is `ok`, `warning` (it would start, but act on it) or `error` (it would not start, or
//! clients would fail); `grep ': error: '` lists what to fix. `SERVICE` is the service's name
//! (`default` for a command line without a file); process-wide settings (the metrics address)
//! report as `process`. The exit code is 0 when the server would start (warnings allowed), 1
//! otherwise, 2 when the settings themselves are refused (the same one line start-up prints).
//!
//! This room reads files, resolves names and binds sockets for a moment; it never serves, never
//! keeps a socket, and never changes anything it finds (a stale UNIX socket is reported, not
//! removed). It re-implements no loader: it calls tls/'s, and builds the context with
//! [`crate::tls::build`], so what it says about a file is what start-up would say.
//!
//! - `certs`: certificates, keys, chains, SNI names, client CA, CRL, OCSP, ticket keys, the
//!   context;
//! - `listen`: listen addresses (TCP bind test, UNIX path) and upstream names;
//! - `holder`: who holds a TCP port, from /proc.

mod certs;
mod holder;
mod listen;

use std::fmt;

use crate::config::{Config, Service};

/// How much a finding matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Checked and fine.
    Ok,
    /// The server would start, but an operator should act (a certificate about to expire).
    Warning,
    /// The server would not start, or clients would fail.
    Error,
}

impl Level {
    /// The level as the output line shows it.
    pub fn name(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Warning => "warning",
            Level::Error => "error",
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The service it is about (`process` for process-wide settings).
    pub service: String,
    pub level: Level,
    /// What was found, naming the file or address.
    pub what: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.service, self.level.name(), self.what)
    }
}

/// The findings of one service, collected in the order a user would fix them.
pub(crate) struct Report<'a> {
    service: &'a str,
    findings: Vec<Finding>,
}

impl<'a> Report<'a> {
    fn new(service: &'a str) -> Report<'a> {
        Report {
            service,
            findings: Vec::new(),
        }
    }

    fn push(&mut self, level: Level, what: String) {
        self.findings.push(Finding {
            service: self.service.to_string(),
            level,
            what,
        });
    }

    pub(crate) fn ok(&mut self, what: String) {
        self.push(Level::Ok, what);
    }

    pub(crate) fn warning(&mut self, what: String) {
        self.push(Level::Warning, what);
    }

    pub(crate) fn error(&mut self, what: String) {
        self.push(Level::Error, what);
    }

    /// Whether an error with exactly this text was reported already (a loader's message that
    /// the context build would repeat).
    fn has_error(&self, what: &str) -> bool {
        self.findings
            .iter()
            .any(|f| f.level == Level::Error && f.what == what)
    }
}

/// The name process-wide findings carry.
const PROCESS: &str = "process";

/// The listen queue asked for when binding the metrics address for a moment (the queue does not
/// decide whether the address is free).
const METRICS_BACKLOG: u32 = 128;

/// Checks every service, then the process-wide settings.
pub fn check(config: &Config) -> Vec<Finding> {
    let mut findings: Vec<Finding> = config.services.iter().flat_map(check_service).collect();
    if let Some(addr) = config.process.metrics_listen {
        let mut report = Report::new(PROCESS);
        listen::tcp(&mut report, "metrics-listen", addr, METRICS_BACKLOG);
        findings.extend(report.findings);
    }
    findings
}

/// Checks one service: TLS first (files, then the context), then its upstream, then its listener.
fn check_service(service: &Service) -> Vec<Finding> {
    let mut report = Report::new(&service.name);
    certs::check(&mut report, &service.tls);
    if let Some(set) = service.mode.upstream() {
        // Each address of the set on its own line: one that does not resolve is named.
        for spec in &set.addrs {
            listen::upstream(&mut report, spec, set);
        }
    }
    for set in service.routes.iter().filter_map(|r| r.upstream.as_ref()) {
        for spec in &set.addrs {
            listen::upstream(&mut report, spec, set);
        }
    }
    listen::listen(&mut report, &service.listen, service.backlog);
    report.findings
}

/// Whether the findings allow the server to start: no error among them.
pub fn would_start(findings: &[Finding]) -> bool {
    findings.iter().all(|f| f.level != Level::Error)
}

/// `securesock check`: prints the findings to stdout, one a line, and returns the exit code: 0
/// when the server would start (warnings allowed), 1 when it would not. (Settings the parser
/// refuses never get here: `main` prints that one line and exits 2, as start-up does.)
pub fn run(config: &Config) -> u8 {
    use std::io::Write as _;
    let findings = check(config);
    let mut out = std::io::stdout().lock();
    for finding in &findings {
        // A closed stdout (`| head`) is not worth an error; the exit code still says it all.
        let _ = writeln!(out, "{finding}");
    }
    u8::from(!would_start(&findings))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_finding_is_one_greppable_line() {
        let f = Finding {
            service: "web".into(),
            level: Level::Warning,
            what: "certificate /c.pem expires in 3 days".into(),
        };
        assert_eq!(
            f.to_string(),
            "web: warning: certificate /c.pem expires in 3 days"
        );
    }

    #[test]
    fn only_an_error_stops_the_start() {
        let mut r = Report::new("s");
        r.ok("fine".into());
        r.warning("soon".into());
        assert!(would_start(&r.findings));
        r.error("broken".into());
        assert!(!would_start(&r.findings));
        assert!(r.has_error("broken") && !r.has_error("soon"));
    }
}
