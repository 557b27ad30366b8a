//! Start-up checks: every configuration problem is one line on stderr naming it, and exit code 2.

// On the binary: start-up refusals are its exit code and its one line on stderr.

use std::io::Write;
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;

use crate::support;
use crate::support::{binary, default_certs, now_unix, write_cert};

/// Runs the binary with `args` (after the default certificate flags) and returns its one error
/// line, asserting exit code 2 and that nothing else was printed.
fn start_error(args: &[&str]) -> String {
    let certs = default_certs();
    let (cert, key) = (certs.cert.to_str().unwrap(), certs.key.to_str().unwrap());
    let mut all = vec!["--listen", "127.0.0.1:0", "--cert", cert, "--key", key];
    all.extend_from_slice(args);
    support::refused_start(&all)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn missing_certificate_names_the_file_and_the_script() {
    let line = start_error(&["--cert", "/nonexistent/server-cert.pem"]);
    assert!(line.contains("/nonexistent/server-cert.pem"), "{line}");
    assert!(line.contains("scripts/gen-certs.sh"), "{line}");
}

#[test]
fn missing_key_names_the_file() {
    let line = start_error(&["--key", "/nonexistent/server-key.pem"]);
    assert!(line.contains("/nonexistent/server-key.pem"), "{line}");
}

#[test]
fn unreadable_certificate_is_refused() {
    // A directory cannot be read as a file, even by root (the tests may run as root).
    let dir = tempfile::tempdir().unwrap();
    let line = start_error(&["--cert", s(dir.path())]);
    assert!(line.contains("cannot read certificate"), "{line}");
}

#[test]
fn malformed_pem_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.pem");
    std::fs::write(
        &bad,
        "-----BEGIN CERTIFICATE-----\nnot base64 !!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let line = start_error(&["--cert", s(&bad)]);
    assert!(
        line.contains("bad.pem") && line.contains("not valid PEM"),
        "{line}"
    );
    let line = start_error(&["--key", s(&bad)]);
    assert!(
        line.contains("bad.pem") && line.contains("not a valid"),
        "{line}"
    );
}

#[test]
fn key_not_matching_the_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let other = write_cert(dir.path(), "other", now_unix() - 60, now_unix() + 86_400);
    let line = start_error(&["--key", s(&other.key)]);
    assert!(line.contains("does not match"), "{line}");
    assert!(line.contains("other-key.pem"), "{line}");
}

#[test]
fn expired_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let old = write_cert(
        dir.path(),
        "old",
        now_unix() - 10 * 86_400,
        now_unix() - 86_400,
    );
    let line = start_error(&["--cert", s(&old.cert), "--key", s(&old.key)]);
    assert!(
        line.contains("old-cert.pem") && line.contains("expired"),
        "{line}"
    );
}

#[test]
fn bad_listen_address_is_refused() {
    let line = start_error(&["--listen", "localhost:http"]);
    assert!(line.contains("bad listen address"), "{line}");
}

#[test]
fn address_in_use_is_refused() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let line = start_error(&["--listen", &addr]);
    assert!(line.contains(&addr) && line.contains("in use"), "{line}");
}

#[test]
fn bad_flags_are_one_line_too() {
    let line = start_error(&["--tls-profile", "ancient"]);
    assert!(line.contains("ancient"), "{line}");
    let line = start_error(&["--handshake-timeout", "0"]);
    assert!(line.contains("--handshake-timeout"), "{line}");
}

#[test]
fn environment_variables_configure_the_server() {
    let certs = default_certs();
    let mut cmd = Command::new(binary());
    cmd.env("SECURESOCK_LISTEN", "127.0.0.1:0")
        .env("SECURESOCK_CERT", &certs.cert)
        .env("SECURESOCK_KEY", &certs.key)
        .env("SECURESOCK_GREETING", "from the environment");
    let server = support::Server::spawn(cmd, &certs.cert);
    assert_eq!(server.greeting(), b"from the environment");
}

#[test]
fn help_documents_every_flag_with_its_environment_variable() {
    let out = Command::new(binary()).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "listen",
        "cert",
        "key",
        "greeting",
        "tls-profile",
        "max-connections",
        "handshake-timeout",
    ] {
        assert!(help.contains(&format!("--{flag}")), "--{flag} missing");
        let var = format!("SECURESOCK_{}", flag.to_uppercase().replace('-', "_"));
        assert!(help.contains(&var), "{var} missing");
    }
    assert!(help.contains("[default: 0.0.0.0:12345]"));
}

#[test]
fn boolean_variables_take_the_usual_spellings_and_name_themselves_when_wrong() {
    for value in ["1", "TRUE", "yes", "On"] {
        let mut cmd = std::process::Command::new(support::binary());
        cmd.args(["--listen", "127.0.0.1:0"])
            .arg("--cert")
            .arg(&support::default_certs().cert)
            .arg("--key")
            .arg(&support::default_certs().key)
            .env("SECURESOCK_STRICT_SNI", value);
        let server = support::Server::spawn(cmd, &support::default_certs().cert);
        server
            .logs
            .wait_for(&["strict SNI: names no certificate is for are refused"]);
    }
    let out = std::process::Command::new(support::binary())
        .env("SECURESOCK_STRICT_SNI", "maybe")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("SECURESOCK_STRICT_SNI"), "{err}");
    assert!(err.contains("true, false, 1, 0, yes, no, on, off"), "{err}");
}

/// The highest-numbered CPU this process may run on, and how many it may use, from
/// /proc/self/status (`Cpus_allowed_list: 0-3,8`).
fn allowed_cpus() -> (usize, usize) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap()
        .trim()
        .to_string();
    let mut cpus = Vec::new();
    for part in list.split(',') {
        let (lo, hi) = part.split_once('-').unwrap_or((part, part));
        cpus.extend(lo.parse::<usize>().unwrap()..=hi.parse::<usize>().unwrap());
    }
    (*cpus.iter().max().unwrap(), cpus.len())
}

/// Started on fewer CPUs than the machine has (taskset here; a container's cpuset or systemd's
/// `CPUAffinity=` alike), on a CPU whose number is past that count, the allocator keeps its
/// per-CPU arenas without a word on stderr and the server serves. jemalloc alone would call the
/// CPU count "not deterministic", say so on stderr and fall back to arenas that cost every held
/// connection more.
#[test]
fn pinned_to_one_cpu_the_server_starts_quietly_and_serves() {
    if !support::require_tool("taskset", "pin the server to one CPU") {
        return;
    }
    let (last, count) = allowed_cpus();
    if count < 2 {
        // One CPU in all: the pinned count equals the machine's, and nothing can differ.
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED this test needs two CPUs to pin to one"
        );
        return;
    }
    let certs = support::default_certs();
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", &last.to_string(), support::binary()])
        .args(["--listen", "127.0.0.1:0", "--cert"])
        .arg(&certs.cert)
        .arg("--key")
        .arg(&certs.key);
    let server = support::Server::spawn(cmd, &certs.cert);
    assert_eq!(server.greeting(), b"Hello, secure world!");
    let lines = server.logs.lines();
    assert!(
        !lines.iter().any(|l| l.contains("<jemalloc>")),
        "the allocator complained: {lines:?}"
    );
}
