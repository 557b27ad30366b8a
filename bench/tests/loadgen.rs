//! The load generator against the real server: the server library running in this process on
//! 127.0.0.1 port 0 with a certificate from scripts/gen-certs.sh (the harness the server's tests
//! use), driven by the real `securesock-bench` binary with --json.
//!
//! Only counts, the protocol and failure reasons are asserted, never a figure: these tests prove the
//! tool measures what it says, not how fast anything is.

// The server's harness, from its one test binary; these tests use its certificates and the
// in-process server, and the rest of it serves the server's own tests.
#[allow(dead_code, unused_imports)]
#[path = "../../tests/it/support/mod.rs"]
mod support;

use std::process::{Command, Output, Stdio};

use serde_json::Value;
use support::{InProcess as Server, default_certs};

/// Connections per run: enough for every thread to offer tickets many times, still well under a
/// second against a debug build.
const N: u64 = 300;
const CLIENTS: &str = "4";

fn bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_securesock-bench"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running securesock-bench")
}

/// Each line of stdout as JSON.
fn json_lines(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn run_json(args: &[&str]) -> Value {
    let out = bench(args);
    assert!(out.status.success(), "securesock-bench {args:?}: {out:?}");
    let mut lines = json_lines(&out);
    assert_eq!(lines.len(), 1, "{out:?}");
    lines.remove(0)
}

#[test]
fn full_and_resumed_handshakes_all_succeed() {
    let cert = &default_certs().cert;
    let server = Server::start(&[]);
    let target = server.addr.to_string();
    let ca = cert.to_str().unwrap();
    let n = N.to_string();

    let full = run_json(&[&target, "--ca", ca, "-n", &n, "-c", CLIENTS, "--json"]);
    assert_eq!(full["ok"], N, "{full}");
    assert_eq!(full["failed"], 0, "{full}");
    assert_eq!(full["resumed"], 0, "{full}");
    assert_eq!(full["protocol"], "TLSv1.3", "{full}");
    assert!(full["latency_us"]["p99"].as_u64().unwrap() > 0, "{full}");

    let resumed = run_json(&[
        &target, "--ca", ca, "-n", &n, "-c", CLIENTS, "--resume", "--json",
    ]);
    assert_eq!(resumed["ok"], N, "{resumed}");
    assert_eq!(resumed["failed"], 0, "{resumed}");
    assert_eq!(resumed["protocol"], "TLSv1.3", "{resumed}");
    assert!(resumed["resumed_pct"].as_f64().unwrap() > 0.0, "{resumed}");
    // Each thread's first connection has nothing to offer, so never everything resumes.
    assert!(resumed["resumed"].as_u64().unwrap() < N, "{resumed}");
}

#[test]
fn a_wrong_payload_or_an_untrusted_certificate_counts_as_failed() {
    let other = tempfile::tempdir().unwrap();
    let other_cert = support::write_cert(
        other.path(),
        "other",
        support::now_unix() - 60,
        support::now_unix() + 86_400,
    )
    .cert;
    let server = Server::start(&["--greeting", "Hello, other world!"]);
    let target = server.addr.to_string();

    let out = bench(&[&target, "--insecure", "-n", "5", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let report = &json_lines(&out)[0];
    assert_eq!(report["ok"], 0, "{report}");
    assert_eq!(report["failed"], 5, "{report}");
    assert!(
        report["errors"].to_string().contains("wrong payload"),
        "{report}"
    );

    let out = bench(&[
        &target,
        "--ca",
        other_cert.to_str().unwrap(),
        "--expect",
        "Hello, other world!",
        "-n",
        "3",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let report = &json_lines(&out)[0];
    assert_eq!(report["failed"], 3, "{report}");
    assert!(
        report["errors"]
            .to_string()
            .contains("certificate verify failed"),
        "{report}"
    );
}

#[test]
fn idle_connections_are_opened_and_held() {
    // The server's handshake deadline (10 s by default) is far beyond the hold, so every
    // connection must still be open when the hold ends.
    let server = Server::start(&[]);
    let out = bench(&[
        &server.addr.to_string(),
        "--idle",
        "20",
        "-c",
        "2",
        "--hold",
        "0.5",
        "--json",
    ]);
    assert!(out.status.success(), "{out:?}");
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 2, "{out:?}");
    assert_eq!(lines[0]["connected"], 20, "{}", lines[0]);
    assert_eq!(lines[0]["failed"], 0, "{}", lines[0]);
    assert_eq!(lines[1]["still_open"], 20, "{}", lines[1]);
}

#[test]
fn plaintext_load_checks_the_greeting_through_a_tls_client() {
    // The greet server behind securesock's own client mode: what bench.sh --client measures.
    let server = Server::start(&[]);
    let up = server.addr.to_string();
    let ca = default_certs().cert.to_str().unwrap().to_string();
    let client = Server::start(&[
        "--mode",
        "client",
        "--upstream",
        &up,
        "--upstream-ca",
        &ca,
        "--upstream-name",
        "localhost",
    ]);
    let target = client.addr.to_string();
    let n = N.to_string();
    let good = run_json(&[&target, "--plaintext", "-n", &n, "-c", CLIENTS, "--json"]);
    assert_eq!(good["ok"], N, "{good}");
    assert_eq!(good["failed"], 0, "{good}");
    assert_eq!(good["protocol"], "plaintext", "{good}");

    let out = bench(&[
        &target,
        "--plaintext",
        "--expect",
        "other",
        "-n",
        "5",
        "--json",
    ]);
    let wrong = &json_lines(&out)[0];
    assert_eq!(wrong["failed"], 5, "{wrong}");
}

#[test]
fn established_connections_echo_their_probe_and_are_held() {
    let server = Server::start(&["--mode", "echo"]);
    let out = bench(&[
        &server.addr.to_string(),
        "--established",
        "20",
        "-c",
        "2",
        "--hold",
        "0.5",
        "--insecure",
        "--json",
    ]);
    assert!(out.status.success(), "{out:?}");
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 2, "{out:?}");
    assert_eq!(lines[0]["mode"], "established", "{}", lines[0]);
    assert_eq!(lines[0]["connected"], 20, "{}", lines[0]);
    assert_eq!(lines[0]["failed"], 0, "{}", lines[0]);
    assert!(
        lines[0]["slowest_ms"].as_f64().unwrap() > 0.0,
        "{}",
        lines[0]
    );
    assert_eq!(lines[1]["mode"], "established-end", "{}", lines[1]);
    assert_eq!(lines[1]["still_open"], 20, "{}", lines[1]);
}

#[test]
fn established_connections_fail_where_the_probe_does_not_come_back() {
    // The greeting server answers with its greeting and close_notify, not the probe: every
    // connection must count as failed, none as held.
    let server = Server::start(&[]);
    let out = bench(&[
        &server.addr.to_string(),
        "--established",
        "5",
        "--hold",
        "0.001",
        "--insecure",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let lines = json_lines(&out);
    assert_eq!(lines[0]["connected"], 0, "{}", lines[0]);
    assert_eq!(lines[0]["failed"], 5, "{}", lines[0]);
}
