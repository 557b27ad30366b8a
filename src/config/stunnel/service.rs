//! One stunnel service's settings, as stunnel builds them: the global section's service-level
//! options first (stunnel copies them into each new section), then the section's own, each line
//! overriding or adding to what came before (`accept`, `connect`, `checkHost` and `checkIP` add;
//! the rest replace). Owns the options' values as stunnel reads them and the refusals stunnel
//! would print itself (a `yes`/`no` option with another value, a bad number or protocol
//! version); what securesock makes of the settings is `render.rs`'s.

use super::{At, ImportError, Opt, Parsed};

/// A value and the line it came from.
#[derive(Debug, Clone)]
pub(super) struct Val {
    pub(super) value: String,
    pub(super) at: At,
    /// The option's name as the line writes it.
    pub(super) option: String,
}

/// Something said about a line while reading it: an option left out, or a note.
#[derive(Debug, Clone)]
pub(super) struct Said {
    pub(super) at: At,
    pub(super) option: String,
    pub(super) why: String,
    pub(super) left_out: bool,
}

/// One service's settings once every line that applies to it is read.
#[derive(Debug, Clone, Default)]
pub(super) struct Service {
    pub(super) client: bool,
    pub(super) accept: Vec<Val>,
    pub(super) connect: Vec<Val>,
    pub(super) failover: Option<Val>,
    pub(super) cert: Option<Val>,
    pub(super) key: Option<Val>,
    pub(super) ca_file: Option<Val>,
    pub(super) ca_path: Option<Val>,
    pub(super) crl_file: Option<Val>,
    pub(super) crl_path: Option<Val>,
    /// `verifyChain`, `verifyPeer`, `requireCert` and `verify` as stunnel's four flags.
    pub(super) request_cert: bool,
    pub(super) require_cert: bool,
    pub(super) verify_chain: bool,
    pub(super) verify_peer: bool,
    /// The last line that set any of the four.
    pub(super) verify_at: Option<At>,
    pub(super) check_host: Vec<Val>,
    pub(super) check_ip: Vec<Val>,
    pub(super) sni: Option<Val>,
    pub(super) timeout_idle: Option<Val>,
    pub(super) timeout_connect: Option<Val>,
    pub(super) protocol: Option<Val>,
    pub(super) ssl_min: Option<Val>,
    pub(super) ssl_max: Option<Val>,
    pub(super) exec: Option<Val>,
    /// Options no securesock key carries, and notes.
    pub(super) said: Vec<Said>,
}

/// The options only the global section takes (stunnel's parse_global_option), with why none is
/// carried; `None` where securesock already does what the value says.
fn global_option(key: &str, value: &str) -> Option<Option<&'static str>> {
    let why = match key.to_ascii_lowercase().as_str() {
        "chroot" => {
            "securesock does not chroot itself; the package's systemd unit sandboxes it (ProtectSystem=strict, a dynamic user)"
        }
        "compression" => "securesock never compresses TLS (CRIME)",
        "egd" | "rndbytes" | "rndfile" | "rndoverwrite" => {
            "OpenSSL 3 seeds its random generator from the kernel"
        }
        "engine" | "enginectrl" | "enginedefault" | "provider" | "providerparameter" => {
            "securesock loads certificates and keys from PEM files only (no engines or providers)"
        }
        "fips" => {
            "FIPS mode is the system OpenSSL's configuration (openssl.cnf), not a securesock setting"
        }
        "foreground" if value.eq_ignore_ascii_case("yes") => return Some(None),
        "foreground" => {
            "securesock always runs in the foreground, logging to stderr; the service manager (the package's systemd unit) runs it in the background"
        }
        "iconactive" | "iconerror" | "iconidle" | "taskbar" => "Windows GUI only",
        "log" | "output" | "syslog" => {
            "securesock logs to stderr (the journal under systemd); RUST_LOG sets the level"
        }
        "pid" => "securesock writes no PID file; the service manager tracks its process",
        "service" => "the syslog and inetd service name: securesock logs as securesock",
        "setenv" => "securesock runs no programs (no exec), so has no environment to set",
        _ => return None,
    };
    Some(Some(why))
}

/// The service-level options no securesock key carries, with why.
fn unsupported(key: &str) -> Option<&'static str> {
    Some(match key {
        "ciphers" | "ciphersuites" | "curves" | "options" | "config" | "securitylevel" => {
            "securesock applies the Mozilla profile's ciphers, groups and options (tls-profile: intermediate or modern), not a list of its own"
        }
        "execargs" | "pty" | "retry" => {
            "securesock runs no programs: it relays to a socket (connect)"
        }
        "engineid" | "enginenum" | "caengine" | "castore" => {
            "securesock loads certificates, keys and CAs from PEM files only"
        }
        "ident" => "securesock does no IDENT (RFC 1413) checking",
        "libwrap" => {
            "securesock has no TCP Wrappers; admit clients with allow-* rules or a firewall"
        }
        "local" => "securesock does not choose the source address of upstream connections",
        "ocsp" | "ocspaia" | "ocspflag" | "ocspnonce" | "ocsprequire" | "timeoutocsp" => {
            "securesock does not ask OCSP responders about peer certificates (it staples its own response in server mode: ocsp-response)"
        }
        "protocolauthentication"
        | "protocoldomain"
        | "protocolheader"
        | "protocolhost"
        | "protocolpassword"
        | "protocolusername" => {
            "securesock negotiates no application protocol before TLS (protocol)"
        }
        "pskidentity" | "psksecrets" => {
            "securesock authenticates with certificates, not pre-shared keys"
        }
        "redirect" => "securesock refuses a client that fails verification; it redirects none",
        "reset" => "securesock ends connections its own way (close_notify, then FIN)",
        "sessioncachesize"
        | "sessioncachetimeout"
        | "sessionresume"
        | "sessiond"
        | "ticketkeysecret"
        | "ticketmacsecret" => {
            "securesock resumes sessions with tickets of its own (ticket-key-rotation, or ticket-key-file for keys shared by replicas, a format of its own)"
        }
        "socket" | "stack" => "socket options and thread stacks are securesock's own",
        "timeoutbusy" => {
            "securesock has no separate busy timeout (idle-timeout covers a silent peer)"
        }
        "timeoutclose" => "securesock has no setting for the wait for the peer's close_notify",
        "transparent" => {
            "securesock does no transparent proxying; send the client's address with proxy-protocol instead"
        }
        "delay" => "securesock resolves upstream names at start and on reload, not per connection",
        "logid" => "securesock's conn line identifies each connection its own way",
        "debug" => "securesock logs to stderr at RUST_LOG's level (info by default)",
        "setuid" | "setgid" => {
            "securesock does not change its user: start it as the user it should run as (the package's systemd unit uses a dynamic user)"
        }
        "checkemail" => "securesock does not match e-mail addresses in peer certificates",
        _ => return None,
    })
}

fn yes_no(opt: &Opt, parsed: &Parsed) -> Result<bool, ImportError> {
    if opt.value.eq_ignore_ascii_case("yes") {
        Ok(true)
    } else if opt.value.eq_ignore_ascii_case("no") {
        Ok(false)
    } else {
        Err(refused(
            opt,
            parsed,
            "the argument needs to be either 'yes' or 'no'",
        ))
    }
}

fn refused(opt: &Opt, parsed: &Parsed, why: &str) -> ImportError {
    ImportError(format!(
        "{}: \"{} = {}\": {why}",
        parsed.at(opt.at),
        opt.key,
        opt.value
    ))
}

/// The protocol versions stunnel's sslVersion* options take.
pub(super) const VERSIONS: [&str; 7] = [
    "all", "SSLv2", "SSLv3", "TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3",
];

impl Service {
    /// Says that an option is left out, with why.
    pub(super) fn left_out(&mut self, at: At, option: &str, why: impl Into<String>) {
        self.said.push(Said {
            at,
            option: option.to_string(),
            why: why.into(),
            left_out: true,
        });
    }

    /// Says something about an option that is carried with a meaning that changes.
    pub(super) fn note(&mut self, at: At, option: &str, why: impl Into<String>) {
        self.said.push(Said {
            at,
            option: option.to_string(),
            why: why.into(),
            left_out: false,
        });
    }

    /// Reads one line into the settings. `in_section`: the line is a section's own (a global
    /// option there is one stunnel refuses).
    pub(super) fn apply(
        &mut self,
        opt: &Opt,
        parsed: &Parsed,
        in_section: bool,
    ) -> Result<(), ImportError> {
        let key = opt.key.to_ascii_lowercase();
        if let Some(global) = global_option(&key, &opt.value) {
            if in_section {
                return Err(refused(
                    opt,
                    parsed,
                    "a global option, which stunnel takes only before the first [section]",
                ));
            }
            if let Some(why) = global {
                self.left_out(opt.at, &opt.key, why);
            }
            return Ok(());
        }
        let val = || Val {
            value: opt.value.clone(),
            at: opt.at,
            option: opt.key.clone(),
        };
        let verify_line = |s: &mut Service| s.verify_at = Some(opt.at);
        match key.as_str() {
            "client" => self.client = yes_no(opt, parsed)?,
            "accept" => self.accept.push(val()),
            "connect" => self.connect.push(val()),
            "exec" => {
                self.exec = Some(val());
                self.left_out(
                    opt.at,
                    &opt.key,
                    "securesock runs no programs: it relays to a socket (connect)",
                );
            }
            "failover" => {
                if !["rr", "prio"].iter().any(|f| opt.value.eq_ignore_ascii_case(f)) {
                    return Err(refused(
                        opt,
                        parsed,
                        "the argument needs to be either 'rr' or 'prio'",
                    ));
                }
                self.failover = Some(val());
            }
            "cert" => self.cert = Some(val()),
            "key" => self.key = Some(val()),
            "cafile" => self.ca_file = Some(val()),
            "capath" => self.ca_path = Some(val()),
            "crlfile" => self.crl_file = Some(val()),
            "crlpath" => self.crl_path = Some(val()),
            "verifychain" => {
                let on = yes_no(opt, parsed)?;
                self.verify_chain = on;
                if on {
                    self.request_cert = true;
                    self.require_cert = true;
                }
                verify_line(self);
            }
            "verifypeer" => {
                let on = yes_no(opt, parsed)?;
                self.verify_peer = on;
                if on {
                    self.request_cert = true;
                    self.require_cert = true;
                }
                verify_line(self);
            }
            "requirecert" => {
                if yes_no(opt, parsed)? {
                    self.request_cert = true;
                    self.require_cert = true;
                } else {
                    self.require_cert = false;
                }
                verify_line(self);
            }
            "verify" => {
                let level: u8 = match opt.value.parse() {
                    Ok(level @ 0..=4) => level,
                    _ => return Err(refused(opt, parsed, "bad verify level")),
                };
                self.request_cert = true;
                self.require_cert = level >= 2;
                self.verify_chain = (1..=3).contains(&level);
                self.verify_peer = level >= 3;
                verify_line(self);
            }
            "checkhost" => self.check_host.push(val()),
            "checkip" => self.check_ip.push(val()),
            "sni" => self.sni = Some(val()),
            "timeoutidle" | "timeoutconnect" => {
                if opt.value.parse::<u32>().is_err() {
                    return Err(refused(opt, parsed, "illegal timeout"));
                }
                if key == "timeoutidle" {
                    self.timeout_idle = Some(val());
                } else {
                    self.timeout_connect = Some(val());
                }
            }
            "protocol" => self.protocol = Some(val()),
            "sslversion" | "sslversionmin" | "sslversionmax" => {
                if !VERSIONS.iter().any(|v| opt.value.eq_ignore_ascii_case(v)) {
                    return Err(refused(opt, parsed, "invalid protocol version"));
                }
                if key != "sslversionmax" {
                    self.ssl_min = Some(val());
                }
                if key != "sslversionmin" {
                    self.ssl_max = Some(val());
                }
            }
            "renegotiation" if !yes_no(opt, parsed)? => {}
            "renegotiation" => self.left_out(
                opt.at,
                &opt.key,
                "securesock never renegotiates (TLS 1.3 has no renegotiation, and it is off in TLS 1.2)",
            ),
            other => match unsupported(other) {
                Some(why) => self.left_out(opt.at, &opt.key, why),
                None => self.left_out(
                    opt.at,
                    &opt.key,
                    "not an option stunnel 5 knows (stunnel refuses it)",
                ),
            },
        }
        Ok(())
    }
}
