//! Shared session-ticket keys (`--ticket-key-file`): replicas given the same file resume each
//! other's sessions; the file is made by the real `scripts/gen-ticket-key.sh`, checked at start,
//! and reloaded when it changes.

// Replicas run in this process; the reload test reads lines on stderr and the refused starts are
// exit codes, so those stay on the binary.

use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::{InProcess, Server, binary, default_certs, repo_root, s_client_full};

/// Runs the real gen-ticket-key.sh; returns its exit code.
fn gen_key(file: &Path, force: bool) -> Option<i32> {
    let mut cmd = Command::new(repo_root().join("scripts/gen-ticket-key.sh"));
    if force {
        cmd.arg("--force");
    }
    let out = cmd.arg(file).output().unwrap();
    out.status.code()
}

fn key_file(dir: &Path, name: &str) -> PathBuf {
    let file = dir.join(name);
    assert_eq!(gen_key(&file, false), Some(0));
    file
}

fn server(keys: &Path, extra: &[&str]) -> Server {
    let mut args = vec!["--ticket-key-file", keys.to_str().unwrap()];
    args.extend_from_slice(extra);
    Server::start(&args)
}

/// A replica in this process sharing the ticket keys in `keys`, for the test that reads no log.
fn replica(keys: &Path) -> InProcess {
    InProcess::start(&["--ticket-key-file", keys.to_str().unwrap()])
}

/// Connects with the session in `session` (saving a new one with `save`); true when resumed.
fn resumed(addr: SocketAddr, session: &Path, save: bool) -> bool {
    let flag = if save { "-sess_out" } else { "-sess_in" };
    let out = s_client_full(addr, &["-tls1_3", flag, session.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Hello, secure world!"), "{text}");
    text.contains("Reused, TLSv1.3")
}

#[test]
fn the_script_writes_one_private_key_and_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = key_file(dir.path(), "sub/ticket.key");
    let first = fs::read(&file).unwrap();
    assert_eq!(first.len(), 80);
    let mode = fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
    assert_eq!(gen_key(&file, false), Some(0));
    assert_eq!(
        fs::read(&file).unwrap(),
        first,
        "overwritten without --force"
    );
    assert_eq!(gen_key(&file, true), Some(0));
    assert_ne!(
        fs::read(&file).unwrap(),
        first,
        "--force did not replace it"
    );
}

#[test]
fn replicas_with_the_same_keys_resume_each_others_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let shared = key_file(dir.path(), "shared.key");
    let (a, b) = (replica(&shared), replica(&shared));
    let session = dir.path().join("session.pem");
    assert!(!resumed(a.addr, &session, true));
    assert!(
        resumed(b.addr, &session, false),
        "did not resume on the other replica"
    );
    assert!(resumed(a.addr, &session, false));

    let other = key_file(dir.path(), "other.key");
    let c = replica(&other);
    assert!(
        !resumed(c.addr, &session, false),
        "resumed under different keys"
    );
}

#[test]
fn a_new_first_key_keeps_old_tickets_resuming_while_the_old_key_is_listed() {
    let dir = tempfile::tempdir().unwrap();
    let old = key_file(dir.path(), "old.key");
    let file = dir.path().join("ticket.key");
    fs::copy(&old, &file).unwrap();
    let server = server(&file, &["--watch-interval", "0.2"]);
    let session = dir.path().join("session.pem");
    assert!(!resumed(server.addr, &session, true));

    // Rotation: a new key in front, the old one still listed.
    let new = key_file(dir.path(), "new.key");
    let rotated = [fs::read(&new).unwrap(), fs::read(&old).unwrap()].concat();
    let tmp = dir.path().join("ticket.key.tmp");
    fs::write(&tmp, rotated).unwrap();
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600)).unwrap();
    fs::rename(&tmp, &file).unwrap();
    server.logs.wait_for(&["reload ok trigger=file_change"]);
    assert!(
        resumed(server.addr, &session, false),
        "a ticket under the listed old key did not resume"
    );

    // The old key dropped: its tickets no longer resume.
    fs::copy(&new, &tmp).unwrap();
    fs::rename(&tmp, &file).unwrap();
    server
        .logs
        .wait_for_n(&["reload ok trigger=file_change"], 2);
    assert!(
        !resumed(server.addr, &session, false),
        "a ticket outlived its key's removal"
    );
}

#[test]
fn open_or_malformed_key_files_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let certs = default_certs();
    let start = |file: &Path| {
        Command::new("timeout")
            .arg("20")
            .arg(binary())
            .args(["--listen", "127.0.0.1:0", "--cert"])
            .arg(&certs.cert)
            .arg("--key")
            .arg(&certs.key)
            .arg("--ticket-key-file")
            .arg(file)
            .output()
            .unwrap()
    };
    let open = key_file(dir.path(), "open.key");
    fs::set_permissions(&open, fs::Permissions::from_mode(0o644)).unwrap();
    let out = start(&open);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("mode 0644"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let short = dir.path().join("short.key");
    fs::write(&short, [0u8; 79]).unwrap();
    fs::set_permissions(&short, fs::Permissions::from_mode(0o600)).unwrap();
    let out = start(&short);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("79 bytes"));
}
