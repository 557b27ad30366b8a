//! `--config FILE` (issue 19 items 1 and 8): a TOML file whose keys are the long flags' names.
//! A one-service file serves as the same flags do, `[defaults]` are inherited and overridden,
//! every kind of malformed file is refused with one line naming FILE:LINE:COLUMN and exit 2, and
//! flags beside `--config` are refused.
//!
//! On the binary: what is tested is the arguments, the exit codes, the start-up lines and the one
//! line on stderr.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::{Server, binary, default_certs, refused_start};

/// Writes `text` as `name` in a fresh directory, which lives as long as the returned guard.
fn config_file(name: &str, text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

/// The default pair's keys, for a `[[service]]` or `[defaults]` table.
fn cert_keys() -> String {
    let certs = default_certs();
    format!(
        "cert = {:?}\nkey = {:?}\n",
        certs.cert.display().to_string(),
        certs.key.display().to_string()
    )
}

/// The binary serving `--config path` (and `env`), started like the flags' servers.
fn serve(path: &Path, env: &[(&str, &str)]) -> Server {
    let mut cmd = Command::new(binary());
    cmd.arg("--config").arg(path);
    for (var, value) in env {
        cmd.env(var, value);
    }
    Server::spawn(cmd, &default_certs().cert)
}

/// The start-up lines up to the listening one, without their timestamps and the port.
fn start_up(server: &Server) -> Vec<String> {
    server.logs.wait_for(&["listening on "]);
    let port = format!(":{}", server.addr.port());
    let lines = server.logs.lines();
    let end = lines
        .iter()
        .position(|l| l.contains("listening on "))
        .expect("a listening line");
    lines[..=end]
        .iter()
        .map(|l| l.split_once(' ').map_or(l.as_str(), |(_, rest)| rest))
        .map(|l| l.replace(&port, ":PORT"))
        .collect()
}

#[test]
fn a_one_service_file_serves_as_the_same_flags_do() {
    let flags = Server::start(&[
        "--greeting",
        "from the file",
        "--max-per-ip",
        "7",
        "--tls-profile",
        "modern",
    ]);
    let (_dir, path) = config_file(
        "one.toml",
        &format!(
            "[[service]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n{}greeting = \"from the file\"\nmax-per-ip = 7\ntls-profile = \"modern\"\n",
            cert_keys()
        ),
    );
    let file = serve(&path, &[]);
    assert_eq!(file.greeting(), b"from the file");
    assert_eq!(file.greeting(), flags.greeting());
    // The same lines but for the service's name (the file's is "web", the flags' "default") and
    // the one saying the file is read again on reload.
    let named = |lines: Vec<String>| -> Vec<String> {
        lines
            .into_iter()
            .filter(|l| !l.contains("is read again on SIGHUP"))
            .map(|l| l.replace("service=web", "service=default"))
            .collect()
    };
    assert_eq!(named(start_up(&file)), start_up(&flags));
}

#[test]
fn defaults_are_inherited_and_a_service_overrides_them() {
    let (_dir, path) = config_file(
        "defaults.toml",
        &format!(
            "[defaults]\n{}greeting = \"from defaults\"\n\n[[service]]\nname = \"a\"\nlisten = \"127.0.0.1:0\"\n",
            cert_keys()
        ),
    );
    assert_eq!(serve(&path, &[]).greeting(), b"from defaults");
    let (_dir, path) = config_file(
        "override.toml",
        &format!(
            "[defaults]\n{}greeting = \"from defaults\"\n\n[[service]]\nname = \"a\"\nlisten = \"127.0.0.1:0\"\ngreeting = \"from the service\"\n",
            cert_keys()
        ),
    );
    assert_eq!(serve(&path, &[]).greeting(), b"from the service");
}

#[test]
fn the_variables_of_the_other_flags_are_not_read_with_a_file() {
    let (_dir, path) = config_file(
        "env.toml",
        &format!(
            "[[service]]\nname = \"a\"\nlisten = \"127.0.0.1:0\"\n{}",
            cert_keys()
        ),
    );
    let server = serve(&path, &[("SECURESOCK_GREETING", "from the environment")]);
    assert_eq!(server.greeting(), b"Hello, secure world!");
    // SECURESOCK_CONFIG names the file, as every flag's variable does.
    let mut cmd = Command::new(binary());
    cmd.env("SECURESOCK_CONFIG", &path);
    assert_eq!(
        Server::spawn(cmd, &default_certs().cert).greeting(),
        b"Hello, secure world!"
    );
}

#[test]
fn each_malformed_file_is_one_line_with_file_line_and_column_and_exit_2() {
    for (text, want) in [
        (
            "[[service]]\nname = \"a\"\nlisten = \"127.0.0.1:0\"\nx = = 1\n",
            "4:5: ",
        ),
        ("[servce]\n", "1:2: unknown field `servce`"),
        (
            "[[service]]\nname = \"a\"\nlisen = \"127.0.0.1:0\"\n",
            "3:1: unknown key 'lisen' in [[service]] (did you mean 'listen'?)",
        ),
        (
            "[[service]]\nname = \"a\"\nzzz = 1\n",
            "3:1: unknown key 'zzz' in [[service]] (accepted: name, listen, ",
        ),
        (
            "[process]\nlisten = \"127.0.0.1:0\"\n",
            "2:1: listen is a service's key: it belongs in a [[service]] or [defaults]",
        ),
        (
            "[[service]]\nname = \"a\"\nmetrics-listen = \"127.0.0.1:0\"\n",
            "3:1: metrics-listen is process-wide: it belongs in [process]",
        ),
        (
            "[[service]]\nname = \"a\"\nbacklog = true\n",
            "3:11: backlog takes a whole number (or its string form), not a boolean",
        ),
        (
            "[[service]]\nname = \"a\"\nlisten = 443\n",
            "3:10: listen takes a string, not an integer",
        ),
        (
            "[[service]]\nname = \"a\"\nhandshake-timeout = \"soon\"\n",
            "3:21: invalid value 'soon' for '--handshake-timeout <SECS>'",
        ),
        (
            "[[service]]\nname = \"a\"\nstrict-sni = \"maybe\"\n",
            "3:14: invalid value 'maybe' for strict-sni (accepted: true, false",
        ),
        (
            "[[service]]\nname = \"a\"\nmode = \"forward\"\n",
            "3:1: --mode forward needs --upstream HOST:PORT",
        ),
        (
            "[[service]]\nlisten = \"127.0.0.1:0\"\n",
            "1:1: a [[service]] without a name",
        ),
        (
            "[[service]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\n[[service]]\nname = \"a\"\nlisten = \"127.0.0.1:2\"\n",
            "5:8: service name 'a' is used twice (first on line 2;",
        ),
        (
            "[[service]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\n[[service]]\nname = \"b\"\nlisten = \"127.0.0.1:1\"\n",
            "6:10: service 'b' listens on 127.0.0.1:1 as service 'a' does",
        ),
        (
            "[[service]]\nname = \"a\"\n\n  [[service.route]]\n  sni = \"a.test\"\n",
            "5:9: route a.test needs its own cert and key",
        ),
        ("# nothing\n", "1:1: no [[service]] table"),
    ] {
        let (_dir, path) = config_file("bad.toml", text);
        let line = refused_start(&["--config", path.to_str().unwrap()]);
        let want = format!("securesock: error: {}:{want}", path.display());
        assert!(line.starts_with(&want), "{text:?}:\n{line}\nwanted {want}");
    }
}

#[test]
fn an_unreadable_config_file_is_one_line_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let line = refused_start(&["--config", dir.path().to_str().unwrap()]);
    assert!(
        line.contains("it is a directory, not a regular file"),
        "{line}"
    );
    let line = refused_start(&["--config", "/nonexistent/securesock.toml"]);
    assert!(line.ends_with("No such file or directory"), "{line}");
}

#[test]
fn flags_beside_config_are_refused() {
    let (_dir, path) = config_file(
        "one.toml",
        &format!(
            "[[service]]\nname = \"a\"\nlisten = \"127.0.0.1:0\"\n{}",
            cert_keys()
        ),
    );
    let path = path.to_str().unwrap();
    for (flag, value) in [
        ("--listen", "127.0.0.1:0"),
        ("--metrics-listen", "127.0.0.1:0"),
    ] {
        let line = refused_start(&["--config", path, flag, value]);
        assert!(
            line.contains(&format!(
                "{flag} cannot be given with --config: the file holds the whole configuration"
            )),
            "{line}"
        );
    }
    let line = refused_start(&["--strict-sni", "--config", path]);
    assert!(
        line.contains("--strict-sni cannot be given with --config"),
        "{line}"
    );
}

#[test]
fn subcommands_do_not_mix_with_the_serving_flags() {
    let line = refused_start(&["--listen", "127.0.0.1:0", "check"]);
    assert!(line.contains("'check' cannot be used with"), "{line}");
}

#[test]
fn two_services_parse_into_two() {
    let (_dir, path) = config_file(
        "two.toml",
        "[process]\nmetrics-listen = \"127.0.0.1:9100\"\nmax-connections = 100\n\n\
         [defaults]\ngreeting = \"hello\"\n\n\
         [[service]]\nname = \"one\"\nlisten = \"127.0.0.1:1001\"\n\n\
         [[service]]\nname = \"two\"\nlisten = \"unix:/run/two.sock\"\nmode = \"echo\"\n",
    );
    let config = securesock::config::parse_args(["securesock", "--config", path.to_str().unwrap()])
        .unwrap_or_else(|e| panic!("{e:?}"));
    let names: Vec<&str> = config.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["one", "two"]);
    assert_eq!(config.process.max_connections, Some(100));
    assert_eq!(
        config.process.metrics_listen,
        Some("127.0.0.1:9100".parse().unwrap())
    );
    assert_eq!(config.services[1].listen.to_string(), "unix:/run/two.sock");
}
