//! `securesock-bench peer start|stop`: the servers scripts/bench.sh measures, started and
//! stopped. `start` fills the peer's configuration from its template in bench/peers/ (embedded at
//! build time), spawns it with its output in the run's folder, waits with a deadline until it is
//! ready (its "listening on 127.0.0.1:PORT" log line, or its port accepting), writes its PID file
//! and prints `PID PORT`. `stop` ends peers by PID and waits until they are gone.
//!
//! This room starts and stops processes and touches only the run's folder; it never samples a
//! process or records a figure (the other subcommands do), and it ends only the PIDs it is given.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Subcommand, ValueEnum};
use securesock::tls::{INTERMEDIATE_TLS12_CIPHERS, TLS13_CIPHERSUITES};

const NGINX: &str = include_str!("../peers/nginx.conf.in");
const STUNNEL_SERVER: &str = include_str!("../peers/stunnel-server.conf.in");
const STUNNEL_CLIENT: &str = include_str!("../peers/stunnel-client.conf.in");

/// Where the ports of peers that cannot report their own (nginx, stunnel) are taken from: below
/// the kernel's ephemeral range, so the load's own outgoing connections never compete for them.
const FIRST_PORT: u16 = 24400;
/// How often readiness and exit are polled.
const POLL: Duration = Duration::from_millis(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    /// target/release/securesock on 127.0.0.1:0 with the certificate; EXTRA: more flags
    Securesock,
    /// nginx's stream module: greets, or forwards to --upstream
    Nginx,
    /// stunnel as a TLS server in front of --upstream (plaintext)
    Stunnel,
    /// stunnel `client = yes`: plaintext in, TLS to --upstream
    StunnelClient,
    /// Any program that logs "listening on 127.0.0.1:PORT"; EXTRA: the command
    Program,
}

/// What a started peer must serve before it is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Check {
    /// TLS greetings, the certificate verified against --cert
    Tls,
    /// Plaintext greetings (through a TLS client)
    Plaintext,
}

#[derive(Debug, Subcommand)]
pub enum Action {
    /// Start a peer, wait until it is ready, write DIR/NAME.pid and print "PID PORT"
    Start(Box<Start>),
    /// Stop peers (SIGTERM, then SIGKILL after the deadline) and wait until they are gone
    Stop {
        /// The peers' PIDs, as `start` printed them
        pid: Vec<u32>,
        /// Seconds to wait for each to exit after SIGTERM
        #[arg(long, default_value_t = 20.0)]
        deadline: f64,
    },
}

#[derive(Debug, clap::Args)]
pub struct Start {
    pub kind: Kind,
    /// Names its files in --dir: NAME.log (its output), NAME.pid, NAME.conf or NAME/ (nginx)
    pub name: String,
    /// The run's work folder
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// Where securesock was built
    #[arg(long, value_name = "DIR", default_value = "target/release")]
    pub bin: PathBuf,
    #[arg(long, value_name = "FILE", default_value = "")]
    pub cert: PathBuf,
    #[arg(long, value_name = "FILE", default_value = "")]
    pub key: PathBuf,
    /// Key exchange groups, colon-separated, for nginx and stunnel
    #[arg(long, default_value = "X25519:prime256v1:secp384r1")]
    pub groups: String,
    /// Seconds a handshake may take (long enough that idle connections outlive any section)
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    pub handshake_timeout: u64,
    /// What nginx's greeting `return` sends
    #[arg(long, default_value = "Hello, secure world!")]
    pub greeting: String,
    /// The plaintext (or, for stunnel-client, TLS) server behind the peer, on 127.0.0.1
    #[arg(long, value_name = "PORT")]
    pub upstream: Option<u16>,
    /// nginx worker processes
    #[arg(long, default_value_t = 2)]
    pub workers: u32,
    /// nginx ssl_session_cache (off: no resumption)
    #[arg(long, default_value = "shared:MozSSL:10m")]
    pub session_cache: String,
    /// Put VAR=VALUE in the peer's environment
    #[arg(long = "env", value_name = "VAR=VALUE")]
    pub env: Vec<String>,
    /// Once ready, three greetings through the peer must succeed (as securesock-bench makes them)
    #[arg(long)]
    pub check: Option<Check>,
    /// With --check tls: a client on the library's default groups must also negotiate this group
    #[arg(long, value_name = "GROUP", requires = "check")]
    pub expect_group: Option<String>,
    /// Seconds the peer has to get ready
    #[arg(long, default_value_t = 20.0)]
    pub deadline: f64,
    /// securesock: more flags; program: the command and its arguments
    #[arg(last = true, value_name = "EXTRA")]
    pub extra: Vec<String>,
}

pub fn run(action: Action) -> Result<()> {
    match action {
        Action::Start(start) => {
            let (pid, port) = start_peer(&start)?;
            println!("{pid} {port}");
            Ok(())
        }
        Action::Stop { pid, deadline } => stop(&pid, seconds(deadline)?),
    }
}

fn seconds(value: f64) -> Result<Duration> {
    securesock::config::seconds("deadline", value).map_err(anyhow::Error::msg)
}

/// How a started peer says it is ready.
enum Ready {
    /// Its log has "listening on 127.0.0.1:PORT" (and the port is read from it).
    Logged,
    /// Its port, chosen here, accepts a connection.
    Port(u16),
}

/// A peer's configuration from its template: every `@KEY@` replaced by its value, in one pass (a
/// value is never searched for placeholders). A placeholder without a value is an error, so no
/// configuration is ever started half filled; an `@` that starts no placeholder stays as it is.
pub fn fill(template: &str, values: &[(&str, String)]) -> Result<String> {
    let mut out = String::with_capacity(template.len() + 256);
    let mut missing = Vec::new();
    let mut rest = template;
    while let Some(at) = rest.find('@') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let len = after
            .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(after.len());
        if len > 0 && after[len..].starts_with('@') {
            let key = &after[..len];
            match values.iter().find(|(k, _)| *k == key) {
                Some((_, v)) => out.push_str(v),
                None => missing.push(key.to_string()),
            }
            rest = &after[len + 1..];
        } else {
            out.push('@');
            rest = after;
        }
    }
    out.push_str(rest);
    if !missing.is_empty() {
        missing.dedup();
        bail!("placeholders left unfilled: @{}@", missing.join("@, @"));
    }
    Ok(out)
}

/// The port in a "listening on 127.0.0.1:PORT" log line (securesock's, the examples'), the first.
pub fn listening_port(log: &str) -> Option<u16> {
    log.lines().find_map(|line| {
        let (_, after) = line.split_once("listening on 127.0.0.1:")?;
        let digits = after
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(after.len());
        after[..digits].parse().ok()
    })
}

/// A loopback port nothing listens on, from [`FIRST_PORT`] up.
fn free_port() -> Result<u16> {
    (FIRST_PORT..u16::MAX)
        .find(|&p| TcpListener::bind((Ipv4Addr::LOCALHOST, p)).is_ok())
        .context("no free loopback port")
}

/// The command, configuration and readiness of a peer; writes its configuration into the folder.
fn plan(s: &Start) -> Result<(Vec<String>, Ready)> {
    let dir = &s.dir;
    let shown = |p: &Path| p.display().to_string();
    let mut values = vec![
        ("CERT", shown(&s.cert)),
        ("KEY", shown(&s.key)),
        ("GROUPS", s.groups.clone()),
        ("TLS12_CIPHERS", INTERMEDIATE_TLS12_CIPHERS.to_string()),
        ("TLS13_SUITES", TLS13_CIPHERSUITES.to_string()),
        ("HANDSHAKE_TIMEOUT", s.handshake_timeout.to_string()),
    ];
    let upstream = || {
        s.upstream
            .with_context(|| format!("a {:?} peer needs --upstream", s.kind))
    };
    let write = |path: &Path, template: &str, values: &[(&str, String)]| -> Result<()> {
        let text = fill(template, values).with_context(|| format!("filling {}", path.display()))?;
        fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    };
    Ok(match s.kind {
        Kind::Securesock => {
            let mut cmd: Vec<String> = vec![
                shown(&s.bin.join("securesock")),
                "--listen".into(),
                "127.0.0.1:0".into(),
                "--cert".into(),
                shown(&s.cert),
                "--key".into(),
                shown(&s.key),
                "--handshake-timeout".into(),
                s.handshake_timeout.to_string(),
            ];
            cmd.extend(s.extra.iter().cloned());
            (cmd, Ready::Logged)
        }
        Kind::Program => {
            if s.extra.is_empty() {
                bail!("a program peer needs its command after --");
            }
            (s.extra.clone(), Ready::Logged)
        }
        Kind::Nginx => {
            let port = free_port()?;
            let home = dir.join(&s.name);
            fs::create_dir_all(&home).with_context(|| format!("making {}", home.display()))?;
            // Greet with `return`, or forward to a plaintext upstream (half-close on, as a TLS
            // front for a request/response protocol needs).
            let body = match s.upstream {
                None => format!("return \"{}\";", s.greeting),
                Some(up) => format!("proxy_pass 127.0.0.1:{up}; proxy_half_close on;"),
            };
            values.extend([
                ("WORKERS", s.workers.to_string()),
                ("DIR", shown(&home)),
                ("PORT", port.to_string()),
                ("BODY", body),
                ("SESSION_CACHE", s.session_cache.clone()),
            ]);
            let conf = home.join("nginx.conf");
            write(&conf, NGINX, &values)?;
            let cmd = [
                "nginx",
                "-e",
                &shown(&home.join("error.log")),
                "-p",
                &shown(&home),
            ];
            let mut cmd: Vec<String> = cmd.iter().map(|a| a.to_string()).collect();
            cmd.extend(["-c".to_string(), shown(&conf)]);
            (cmd, Ready::Port(port))
        }
        Kind::Stunnel | Kind::StunnelClient => {
            let port = free_port()?;
            values.extend([
                ("LOG", shown(&dir.join(format!("{}.log", s.name)))),
                ("PORT", port.to_string()),
                ("UPSTREAM_PORT", upstream()?.to_string()),
            ]);
            let conf = dir.join(format!("{}.conf", s.name));
            let template = match s.kind {
                Kind::Stunnel => STUNNEL_SERVER,
                _ => STUNNEL_CLIENT,
            };
            write(&conf, template, &values)?;
            (vec!["stunnel".into(), shown(&conf)], Ready::Port(port))
        }
    })
}

fn start_peer(s: &Start) -> Result<(u32, u16)> {
    let (cmd, ready) = plan(s)?;
    let log_path = s.dir.join(format!("{}.log", s.name));
    // Emptied first, so an earlier peer's log under the same name is never read.
    let log =
        fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let mut command = Command::new(&cmd[0]);
    command
        .args(&cmd[1..])
        // Never the caller's stdout: the script reads "PID PORT" from it to its end.
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    for kv in &s.env {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--env wants VAR=VALUE, got '{kv}'"))?;
        command.env(k, v);
    }
    let mut child = command
        .spawn()
        .with_context(|| format!("starting {}", cmd.join(" ")))?;
    let pid = child.id();
    let ready = wait_ready(&mut child, &ready, &log_path, seconds(s.deadline)?).and_then(|port| {
        s.check
            .map_or(Ok(()), |how| check(s, port, how))
            .map(|()| port)
    });
    match ready {
        Ok(port) => {
            let pid_file = s.dir.join(format!("{}.pid", s.name));
            fs::write(&pid_file, format!("{pid}\n"))
                .with_context(|| format!("writing {}", pid_file.display()))?;
            Ok((pid, port))
        }
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            let log = fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            for line in tail.iter().rev() {
                eprintln!("  {}: {line}", s.name);
            }
            Err(e.context(format!("peer {} ({})", s.name, cmd.join(" "))))
        }
    }
}

fn wait_ready(child: &mut Child, ready: &Ready, log: &Path, deadline: Duration) -> Result<u16> {
    let end = Instant::now() + deadline;
    loop {
        let port = match ready {
            Ready::Logged => listening_port(&fs::read_to_string(log).unwrap_or_default()),
            Ready::Port(p) => {
                let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, *p));
                TcpStream::connect_timeout(&addr, Duration::from_millis(100))
                    .ok()
                    .map(|_| *p)
            }
        };
        if let Some(port) = port {
            return Ok(port);
        }
        if let Some(status) = child.try_wait()? {
            bail!("exited ({status}) before it was ready");
        }
        if Instant::now() >= end {
            bail!("not ready after {} s", deadline.as_secs_f64());
        }
        std::thread::sleep(POLL);
    }
}

/// The greeting check every peer passes before it is measured, and the group it negotiates.
fn check(s: &Start, port: u16, how: Check) -> Result<()> {
    let target = format!("127.0.0.1:{port}");
    let mut args = vec!["securesock-bench", &target, "-n", "3", "--json"];
    let cert = s.cert.display().to_string();
    match how {
        Check::Tls => args.extend(["--ca", &cert]),
        Check::Plaintext => args.push("--plaintext"),
    }
    let plan = crate::load::parse_args(&args).map_err(|e| anyhow::anyhow!("{e}"))?;
    let summary = crate::load::run(&plan)?;
    if summary.ok == 0 {
        bail!("fails the greeting check: {}", summary.to_json());
    }
    let Some(want) = &s.expect_group else {
        return Ok(());
    };
    let tcp =
        TcpStream::connect_timeout(&SocketAddr::from((Ipv4Addr::LOCALHOST, port)), plan.timeout)?;
    tcp.set_read_timeout(Some(plan.timeout))?;
    let got = crate::load::connector(&plan)?
        .configure()?
        .connect("127.0.0.1", tcp)
        .map_err(|e| anyhow::anyhow!("handshake for the group check: {e}"))
        .map(|tls| securesock::sys::negotiated_group(tls.ssl()))?;
    match got {
        Some(g) if g == *want => Ok(()),
        other => bail!(
            "negotiates '{}', not {want}",
            other.as_deref().unwrap_or("no KEM group")
        ),
    }
}

/// Whether a process is still running: not gone and not a zombie waiting for its parent (the
/// peers are not this process's children, so it cannot reap them).
fn alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // The state follows the command name, which is in parentheses and may hold anything.
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

fn signal(pid: u32, sig: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    if pid <= 0 {
        return;
    }
    // SAFETY: kill(2) takes plain integers and touches no memory of ours; the PID is positive,
    // so it names one process, never a group; an exited one only makes it return ESRCH.
    unsafe { libc::kill(pid, sig) };
}

/// SIGTERM to each PID, then waits for all; SIGKILL to those left at the deadline.
fn stop(pids: &[u32], deadline: Duration) -> Result<()> {
    for &pid in pids {
        signal(pid, libc::SIGTERM);
    }
    let until_gone = |d: Duration| {
        let end = Instant::now() + d;
        while pids.iter().any(|&p| alive(p)) && Instant::now() < end {
            std::thread::sleep(POLL);
        }
    };
    until_gone(deadline);
    let left: Vec<u32> = pids.iter().copied().filter(|&p| alive(p)).collect();
    if left.is_empty() {
        return Ok(());
    }
    for &pid in &left {
        eprintln!("securesock-bench peer stop: {pid} ignored SIGTERM; killing it");
        signal(pid, libc::SIGKILL);
    }
    until_gone(Duration::from_secs(5));
    match pids.iter().find(|&&p| alive(p)) {
        Some(p) => bail!("process {p} is still running"),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values() -> Vec<(&'static str, String)> {
        vec![
            ("PORT", "24400".into()),
            ("BODY", "a @PORT@ & | \\ b".into()),
        ]
    }

    #[test]
    fn fill_replaces_every_placeholder_once_and_leaves_other_ats() {
        let got = fill(
            "listen @PORT@; @BODY@ @PORT@ user@host @ @lower@",
            &values(),
        )
        .unwrap();
        assert_eq!(
            got,
            "listen 24400; a @PORT@ & | \\ b 24400 user@host @ @lower@"
        );
    }

    #[test]
    fn fill_refuses_a_placeholder_without_a_value() {
        let e = fill("@PORT@ @WORKERS@ @DIR@", &values()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "placeholders left unfilled: @WORKERS@, @DIR@"
        );
    }

    #[test]
    fn every_template_fills_from_what_start_gives_it() {
        let s = |k: &'static str| (k, format!("<{k}>"));
        let common = ["CERT", "KEY", "GROUPS", "TLS12_CIPHERS", "TLS13_SUITES"];
        let common = common.into_iter().chain(["HANDSHAKE_TIMEOUT", "PORT"]);
        let nginx: Vec<_> = common
            .clone()
            .chain(["WORKERS", "DIR", "BODY", "SESSION_CACHE"])
            .map(s)
            .collect();
        let stunnel: Vec<_> = common.chain(["LOG", "UPSTREAM_PORT"]).map(s).collect();
        for (template, values) in [
            (NGINX, &nginx),
            (STUNNEL_SERVER, &stunnel),
            (STUNNEL_CLIENT, &stunnel),
        ] {
            let text = fill(template, values).unwrap();
            assert!(text.contains("<PORT>"), "{text}");
            assert!(!text.contains("@P"), "{text}");
        }
    }

    #[test]
    fn the_port_comes_from_the_first_listening_line() {
        let log = "starting\n2024 INFO securesock listening on 127.0.0.1:41234 (greet)\n\
                   listening on 127.0.0.1:9\n";
        assert_eq!(listening_port(log), Some(41234));
        assert_eq!(
            listening_port("bulk upstream listening on 127.0.0.1:80"),
            Some(80)
        );
        assert_eq!(
            listening_port("listening on [::1]:80\nlistening on 127.0.0.1:"),
            None
        );
        assert_eq!(listening_port(""), None);
    }

    #[test]
    fn a_peer_that_exits_is_not_alive_and_stop_ignores_the_gone() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        assert!(alive(pid));
        signal(pid, libc::SIGTERM);
        // Our own child: a zombie until reaped, which `alive` counts as gone.
        let end = Instant::now() + Duration::from_secs(10);
        while alive(pid) && Instant::now() < end {
            std::thread::sleep(POLL);
        }
        assert!(!alive(pid));
        let _ = child.wait();
        stop(&[pid], Duration::from_millis(50)).unwrap();
    }

    #[test]
    fn a_program_is_ready_when_it_logs_its_port() {
        let dir = tempfile::tempdir().unwrap();
        let start = |extra: &[&str], deadline: f64| Start {
            kind: Kind::Program,
            name: "p".into(),
            dir: dir.path().to_path_buf(),
            bin: PathBuf::new(),
            cert: PathBuf::new(),
            key: PathBuf::new(),
            groups: String::new(),
            handshake_timeout: 1,
            greeting: String::new(),
            upstream: None,
            workers: 1,
            session_cache: String::new(),
            env: vec!["PEER_TEST=7".into()],
            check: None,
            expect_group: None,
            deadline,
            extra: extra.iter().map(|a| a.to_string()).collect(),
        };
        let script = "echo \"listening on 127.0.0.1:$PEER_TEST\" >&2; exec sleep 30";
        let (pid, port) = start_peer(&start(&["sh", "-c", script], 10.0)).unwrap();
        assert_eq!(port, 7);
        let pid_file = fs::read_to_string(dir.path().join("p.pid")).unwrap();
        assert_eq!(pid_file.trim(), pid.to_string());
        stop(&[pid], Duration::from_secs(10)).unwrap();
        let e = start_peer(&start(&["sh", "-c", "exit 3"], 10.0)).unwrap_err();
        assert!(format!("{e:#}").contains("before it was ready"), "{e:#}");
    }
}
