//! The shell scripts users run: gen-certs.sh makes what the tutorial makes (plus SANs, safely),
//! check.sh passes against the server and fails against anything that is not TLS.

// check.sh runs against the server in this process; the README example starts the binary as it is
// written.

use std::io::Write;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::thread;

use openssl::x509::X509;

use crate::support;
use crate::support::{InProcess, Server, repo_root};

fn script(name: &str, args: &[&str]) -> Output {
    Command::new(repo_root().join("scripts").join(name))
        .args(args)
        .output()
        .unwrap()
}

fn load(path: &Path) -> X509 {
    X509::from_pem(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn gen_certs_makes_an_rsa2048_365_day_cert_with_sans_and_a_private_key() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("certs");
    let out = script(
        "gen-certs.sh",
        &[
            "--out",
            out_dir.to_str().unwrap(),
            "--name",
            "example.test",
            "--name",
            "10.1.2.3",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("Fingerprint="), "{stdout}");
    assert!(stdout.contains("openssl s_client -connect"), "{stdout}");

    let cert = load(&out_dir.join("server-cert.pem"));
    let key = cert.public_key().unwrap();
    assert_eq!(key.rsa().unwrap().size() * 8, 2048);
    let days = cert.not_before().diff(cert.not_after()).unwrap().days;
    assert_eq!(days, 365);
    let sans: Vec<String> = cert
        .subject_alt_names()
        .unwrap()
        .iter()
        .map(|n| match (n.dnsname(), n.ipaddress()) {
            (Some(d), _) => d.to_string(),
            (_, Some(ip)) => ip.iter().map(u8::to_string).collect::<Vec<_>>().join("."),
            _ => String::new(),
        })
        .collect();
    for want in ["localhost", "127.0.0.1", "example.test", "10.1.2.3"] {
        assert!(sans.iter().any(|s| s == want), "{want} not in {sans:?}");
    }
    let mode = std::fs::metadata(out_dir.join("server-key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn gen_certs_keeps_existing_files_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    assert!(script("gen-certs.sh", &["--out", d]).status.success());
    let key = std::fs::read(dir.path().join("server-key.pem")).unwrap();
    let again = script("gen-certs.sh", &["--out", d]);
    assert!(again.status.success(), "a second run must be harmless");
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    assert_eq!(
        std::fs::read(dir.path().join("server-key.pem")).unwrap(),
        key
    );
    assert!(
        script("gen-certs.sh", &["--out", d, "--force", "--days", "30"])
            .status
            .success()
    );
    assert_ne!(
        std::fs::read(dir.path().join("server-key.pem")).unwrap(),
        key
    );
    let cert = load(&dir.path().join("server-cert.pem"));
    assert_eq!(cert.not_before().diff(cert.not_after()).unwrap().days, 30);
}

#[test]
fn gen_certs_refuses_bad_arguments() {
    for args in [&["--days", "soon"][..], &["--bogus"][..], &["--out"][..]] {
        let out = script("gen-certs.sh", args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
}

#[test]
fn check_passes_against_the_server() {
    let server = InProcess::start(&[]);
    let out = script(
        "check.sh",
        &[
            &server.addr.to_string(),
            "--ca",
            server.certs.to_str().unwrap(),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("protocol:     TLSv1.3"), "{stdout}");
    assert!(stdout.contains("verification: OK"), "{stdout}");
    assert!(
        stdout.contains("received:     Hello, secure world!"),
        "{stdout}"
    );
}

/// Runs check.sh and returns its `FAIL:` message (which spans lines when TEXT does), asserting it
/// failed with exit code 1.
fn check_failure(args: &[&str]) -> String {
    let out = script("check.sh", args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{args:?}: {}{stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    let from = stderr
        .find("FAIL: ")
        .unwrap_or_else(|| panic!("{args:?}: no FAIL line in {stderr}"));
    let message = &stderr[from..];
    // s_client's own report follows, each line indented.
    let end = message.find("\n  s_client: ").unwrap_or(message.len());
    message[..end].trim_end().to_string()
}

#[test]
fn check_fails_on_wrong_greeting_and_wrong_ca() {
    let server = InProcess::start(&[]);
    let addr = server.addr.to_string();
    let ca = server.certs.to_str().unwrap();
    let line = check_failure(&[&addr, "--ca", ca, "--expect", "something else"]);
    assert_eq!(
        line,
        "FAIL: expected 'something else' (14 bytes), received 20 bytes that differ"
    );
    let other = tempfile::tempdir().unwrap();
    let stranger = support::write_cert(
        other.path(),
        "stranger",
        support::now_unix() - 60,
        support::now_unix() + 86_400,
    );
    let line = check_failure(&[&addr, "--ca", stranger.cert.to_str().unwrap()]);
    assert!(
        line.starts_with("FAIL: certificate did not verify against ")
            && line.contains("stranger-cert.pem: self-signed certificate"),
        "{line}"
    );
}

/// `$(cat)` drops trailing newlines: a greeting with one must still fail the check.
#[test]
fn check_is_byte_exact() {
    let server = InProcess::start(&["--greeting", "Hello, secure world!\n"]);
    let ca = server.certs.to_str().unwrap();
    let line = check_failure(&[&server.addr.to_string(), "--ca", ca]);
    assert_eq!(
        line,
        "FAIL: expected 'Hello, secure world!' (20 bytes), received 21 bytes that differ"
    );
    // And the same text the other way round: --expect with the newline, a server without.
    let server = InProcess::start(&[]);
    let line = check_failure(&[
        &server.addr.to_string(),
        "--ca",
        ca,
        "--expect",
        "Hello, secure world!\n",
    ]);
    assert_eq!(
        line,
        "FAIL: expected 'Hello, secure world!\n' (21 bytes), received 20 bytes that differ"
    );
}

#[test]
fn check_fails_when_the_server_closes_without_close_notify() {
    let (addr, server) = support::bare_close_server(b"Hello, secure world!");
    let ca = support::default_certs().cert.to_str().unwrap();
    let line = check_failure(&[&addr.to_string(), "--ca", ca]);
    assert_eq!(
        line,
        "FAIL: the server closed the connection without close_notify (unexpected EOF)"
    );
    server.join().unwrap();
}

#[test]
fn check_fails_against_a_plaintext_greeter() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let greeter = thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let _ = s.write_all(b"Hello, secure world!");
    });
    assert_eq!(
        check_failure(&[&addr.to_string()]),
        "FAIL: no TLS handshake"
    );
    greeter.join().unwrap();
}

/// The shell words of a README command: whitespace-separated, with single quotes (the only
/// quoting the README uses) removed.
fn shell_words(command: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    let mut started = false;
    for c in command.chars() {
        match c {
            '\'' => {
                quoted = !quoted;
                started = true;
            }
            c if c.is_whitespace() && !quoted => {
                if started {
                    words.push(std::mem::take(&mut word));
                    started = false;
                }
            }
            c => {
                word.push(c);
                started = true;
            }
        }
    }
    if started {
        words.push(word);
    }
    words
}

/// The SNI example in docs/tls.md, run as written from a fresh directory holding only the quick start's
/// default pair: its gen-certs.sh lines make the files its --sni flags name, the server starts
/// with them, and its s_client line verifies the api.example.com certificate by name.
#[test]
fn the_readme_sni_example_runs_as_written() {
    let readme = std::fs::read_to_string(repo_root().join("docs/tls.md")).unwrap();
    let section = readme
        .split("## SNI and ALPN")
        .nth(1)
        .and_then(|rest| rest.split("```sh\n").nth(1))
        .and_then(|block| block.split("```").next())
        .expect("an sh block in docs/tls.md's SNI section");
    // One command per line, continuation lines joined; a trailing `&` or `</dev/null` is the
    // shell's business.
    let commands: Vec<Vec<String>> = section
        .replace("\\\n", " ")
        .lines()
        .map(|l| {
            shell_words(l)
                .into_iter()
                .filter(|w| w != "&" && w != "</dev/null")
                .collect::<Vec<_>>()
        })
        .filter(|w| !w.is_empty())
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let run_here = |words: &[String]| {
        let program = if words[0].starts_with("scripts/") {
            repo_root().join(&words[0])
        } else {
            Path::new(&words[0]).to_path_buf()
        };
        let out = Command::new(program)
            .args(&words[1..])
            .current_dir(dir.path())
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{words:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    };
    // The quick start's default pair, in the directory's certs/.
    run_here(&["scripts/gen-certs.sh".to_string()]);

    let mut server = None;
    let mut checked = 0;
    for words in &commands {
        match words[0].as_str() {
            "scripts/gen-certs.sh" => {
                run_here(words);
            }
            "target/release/securesock" => {
                let mut cmd = Command::new(support::binary());
                cmd.args(&words[1..])
                    .args(["--listen", "127.0.0.1:0"])
                    .current_dir(dir.path());
                server = Some(Server::spawn(
                    cmd,
                    &dir.path().join("certs/server-cert.pem"),
                ));
            }
            "openssl" => {
                let server = server.as_ref().expect("the server starts before s_client");
                let words: Vec<String> = words
                    .iter()
                    .map(|w| w.replace("127.0.0.1:12345", &server.addr.to_string()))
                    .collect();
                let out = run_here(&words);
                let stderr = String::from_utf8_lossy(&out.stderr);
                assert!(stderr.contains("Verification: OK"), "{stderr}");
                assert!(
                    stderr.contains("Peer certificate: CN = api.example.com"),
                    "{stderr}"
                );
                assert_eq!(out.stdout, b"Hello, secure world!");
                checked += 1;
            }
            other => panic!("the SNI example runs {other:?}, which this test does not know"),
        }
    }
    assert_eq!(checked, 1, "the example's s_client line ran");
}

#[test]
fn gen_certs_keeps_a_wildcard_name_whatever_the_directory_holds() {
    let dir = tempfile::tempdir().unwrap();
    // A file the wildcard would match if the shell expanded it.
    std::fs::write(dir.path().join("www.example.org"), b"").unwrap();
    let out = Command::new(repo_root().join("scripts/gen-certs.sh"))
        .args(["--out", "org", "--name", "*.example.org"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cert = load(&dir.path().join("org/server-cert.pem"));
    let cn = cert
        .subject_name()
        .entries_by_nid(openssl::nid::Nid::COMMONNAME)
        .next()
        .map(|e| String::from_utf8_lossy(e.data().as_slice()).into_owned());
    assert_eq!(cn.as_deref(), Some("*.example.org"));
    let dns: Vec<String> = cert
        .subject_alt_names()
        .unwrap()
        .iter()
        .filter_map(|n| n.dnsname().map(str::to_string))
        .collect();
    assert_eq!(dns, ["localhost", "*.example.org"]);
}

/// Only an explicit `--write` may touch the tracked BENCHMARKS.md, and never from a `--quick` run;
/// the check happens before anything is installed, built or run. (That a `--quick` run leaves
/// `git status` clean needs nginx and stunnel and was checked by hand.)
#[test]
fn bench_quick_refuses_to_write_the_published_figures() {
    let out = script("bench.sh", &["--quick", "--write"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--write"), "{stderr}");
    let help = script("bench.sh", &["--help"]);
    assert!(help.status.success());
    let help = String::from_utf8_lossy(&help.stdout);
    for promise in [
        "--out DIR",
        "--write",
        "Nothing in the working tree changes",
    ] {
        assert!(
            help.contains(promise),
            "{promise} missing from --help:\n{help}"
        );
    }
}
