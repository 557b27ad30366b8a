//! Test harness shared by the integration tests (the server's and the load generator's), one
//! module per concern:
//!
//! - [`certs`]: certificates, from the real scripts or made on the spot;
//! - [`in_process`]: the server in this process ([`InProcess`]), for what a client sees;
//! - [`binary`]: the real `securesock` binary ([`Server`]), for arguments, exit codes, signals and
//!   its stderr;
//! - [`logs`]: the binary's log lines, and waiting for one;
//! - [`clients`]: TLS, `openssl s_client`, plaintext and HTTP clients;
//! - [`peers`]: upstreams and deliberately broken servers on the other side;
//! - [`sys`]: the harness's only unsafe code, the raw system calls the tests make;
//!
//! and here what they share: the patience of a test, the repository, optional tools.
//!
//! Synchronisation is always on something observable: a log line, a socket event, a process exit.

use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

pub mod binary;
pub mod certs;
pub mod clients;
pub mod in_process;
pub mod logs;
pub mod peers;
pub mod sys;

pub use binary::*;
pub use certs::*;
pub use clients::*;
pub use in_process::*;
pub use logs::*;
pub use peers::*;

/// Long enough for anything that should happen, short enough that a hang fails the test.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// The repository's top folder, from the server's package or from the bench crate inside it.
pub fn repo_root() -> &'static Path {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .find(|dir| dir.join("scripts/gen-certs.sh").is_file())
        .unwrap_or(manifest)
}

/// Deterministic pseudo-random bytes (xorshift), so payload tests are repeatable.
pub fn pseudo_random(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.extend_from_slice(&seed.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Resident memory of a process, in KiB.
pub fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Permission bits of a file.
pub fn file_mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// Whether the optional tool `tool` (a program some tests drive: redis-server, faketime,
/// systemd-socket-activate) is on `PATH`, for a test that cannot run without it; `why` says what
/// the test needs it for. When it is missing, the test cannot say anything: outside CI this writes
/// to the terminal which test is skipped and why, and returns false for the test to return (it
/// then passes, as skipped); under `CI=true` it fails the test with the same message, since a CI
/// run must not pass by skipping. `scripts/test.sh` installs every tool.
///
/// ```ignore
/// if !require_tool("redis-server", "client mode against a TLS-only redis") {
///     return;
/// }
/// ```
#[must_use]
pub fn require_tool(tool: &str, why: &str) -> bool {
    let Some(message) = missing_tool(tool, why) else {
        return true;
    };
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{message}");
    }
    // Straight to stderr, not eprintln!: the test harness captures the macros' output of a
    // passing test, and a skip must show in a plain `cargo test`.
    let _ = writeln!(std::io::stderr(), "SKIPPED {message}");
    false
}

/// `None` when `tool` is on `PATH`, else what the test that needs it for `why` cannot do.
fn missing_tool(tool: &str, why: &str) -> Option<String> {
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| is_executable(&dir.join(tool))));
    if found {
        return None;
    }
    let test = std::thread::current()
        .name()
        .unwrap_or("this test")
        .to_string();
    let package = match tool {
        "redis-cli" => "redis-tools",
        "systemd-socket-activate" => "systemd",
        "man" => "man-db",
        other => other,
    };
    Some(format!(
        "{test} needs `{tool}` ({why}), which is not on PATH: install it (apt-get install \
         {package}) or run scripts/test.sh"
    ))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The harness's promise about optional tools: one on `PATH` lets the test run, and a missing one
/// is named with the reason the test needs it. (Whether that skips or fails depends on `CI`,
/// which a test cannot change under the others running beside it.)
#[test]
fn a_missing_tool_is_named_with_why_the_test_needs_it() {
    assert_eq!(missing_tool("sh", "a shell"), None);
    let message =
        missing_tool("securesock-no-such-tool", "to show the message").expect("not on PATH");
    assert!(
        message.contains("`securesock-no-such-tool` (to show the message)"),
        "{message}"
    );
    assert!(
        message.starts_with("support::a_missing_tool_is_named"),
        "{message}"
    );
}
