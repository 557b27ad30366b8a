//! What the Debian package ships, without building it (scripts/deb-test.sh installs the real
//! package): the example /etc/securesock/securesock.toml means what the shipped
//! /etc/default/securesock means, and the unit's start script (packaging/securesock-start) picks
//! the file or the legacy settings by its documented rule. The script runs for real, with a
//! stand-in binary that prints the arguments it was given. And the image's entry point serves a
//! mounted configuration file (the real binary, a real TLS client).

use std::path::Path;
use std::process::Command;

use securesock::config::{ArgsError, Config, Invocation, parse_invocation};

use crate::support::{Server, binary, default_certs, repo_root};

fn configuration(args: &[&std::ffi::OsStr]) -> Config {
    let mut full = vec!["securesock".as_ref()];
    full.extend_from_slice(args);
    match parse_invocation(full) {
        Ok(Invocation::Serve(config)) => config,
        Ok(_) => panic!("not a configuration to serve"),
        Err(ArgsError::Invalid(line)) => panic!("refused: {line}"),
        Err(ArgsError::Info(e)) => panic!("{e}"),
    }
}

/// The shipped /etc/default/securesock's settings as the flags they stand for
/// (`SECURESOCK_LISTEN=X` is `--listen X`); RUST_LOG is no flag.
fn default_file_flags() -> Vec<String> {
    let text = std::fs::read_to_string(repo_root().join("packaging/default")).unwrap();
    let mut flags = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains('='))
    {
        let (name, value) = line.split_once('=').unwrap();
        if name == "RUST_LOG" {
            continue;
        }
        let flag = name
            .strip_prefix("SECURESOCK_")
            .unwrap_or_else(|| panic!("{name} is no SECURESOCK_ variable"))
            .to_lowercase()
            .replace('_', "-");
        flags.push(format!("--{flag}"));
        flags.push(value.to_string());
    }
    assert!(flags.len() >= 6, "too few settings read: {flags:?}");
    flags
}

#[test]
fn the_shipped_file_serves_what_the_shipped_default_settings_serve() {
    let toml = repo_root().join("packaging/securesock.toml");
    let mut from_file = configuration(&["--config".as_ref(), toml.as_os_str()]);
    // The file's own path (what a reload reads again) is the one thing flags cannot say.
    assert_eq!(
        from_file.process.config_file.as_deref(),
        Some(toml.as_path())
    );
    from_file.process.config_file = None;
    let mut flags = default_file_flags();
    // What securesock-start adds on the legacy rule, so the unit's reload has its socket there too.
    flags.extend([
        "--control-socket".into(),
        "/run/securesock/control.sock".into(),
    ]);
    let args: Vec<&std::ffi::OsStr> = flags.iter().map(|f| f.as_ref()).collect();
    let from_flags = configuration(&args);
    assert_eq!(from_file.services.len(), 1, "one greet service");
    let mut service = from_file.services[0].clone();
    assert_eq!(service.name, "greet");
    service.name = from_flags.services[0].name.clone();
    assert_eq!(
        format!("{service:?}"),
        format!("{:?}", from_flags.services[0])
    );
    assert_eq!(
        format!("{:?}", from_file.process),
        format!("{:?}", from_flags.process)
    );
}

/// Runs packaging/securesock-start with `settings` and `shipped` as the legacy file and the
/// package's copy, and /bin/echo as the binary: what it would exec, and its stderr.
fn start(file: &Path, settings: &Path, shipped: &Path) -> (String, String) {
    let out = Command::new(repo_root().join("packaging/securesock-start"))
        .arg("/bin/echo")
        .arg("--config")
        .arg(file)
        .env("SECURESOCK_START_SETTINGS", settings)
        .env("SECURESOCK_START_SHIPPED", shipped)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    (
        String::from_utf8(out.stdout).unwrap().trim().to_string(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn the_unit_serves_the_file_unless_the_legacy_settings_were_edited_or_the_file_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("securesock.toml");
    let settings = dir.path().join("default");
    let shipped = repo_root().join("packaging/default");
    std::fs::write(&file, "").unwrap();
    let config = format!("--config {}", file.display());

    // A fresh install: the default as shipped, and the file.
    std::fs::copy(&shipped, &settings).unwrap();
    assert_eq!(
        start(&file, &settings, &shipped),
        (config.clone(), String::new())
    );
    // No /etc/default/securesock at all: the file too.
    std::fs::remove_file(&settings).unwrap();
    assert_eq!(start(&file, &settings, &shipped).0, config);

    // An upgraded host whose settings were edited: those flags, and one line saying why.
    let edited = std::fs::read_to_string(&shipped).unwrap().replace(
        "SECURESOCK_LISTEN=0.0.0.0:12345",
        "SECURESOCK_LISTEN=0.0.0.0:12399",
    );
    std::fs::write(&settings, edited).unwrap();
    let (argv, stderr) = start(&file, &settings, &shipped);
    assert_eq!(argv, "", "no --config: the SECURESOCK_* variables rule");
    assert!(stderr.contains("differs from the package's"), "{stderr}");

    // The file removed: the flags again, with the reason.
    std::fs::copy(&shipped, &settings).unwrap();
    std::fs::remove_file(&file).unwrap();
    let (argv, stderr) = start(&file, &settings, &shipped);
    assert_eq!(argv, "");
    assert!(stderr.contains("there is no"), "{stderr}");
}

/// The image's entry point with `SECURESOCK_CONFIG` pointing at `file` (the image's default is
/// /etc/securesock/securesock.toml) and the test's binary on PATH as `securesock`.
fn entrypoint(file: &Path, args: &[&str]) -> Command {
    let bin = Path::new(binary()).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new("sh");
    cmd.arg(repo_root().join("scripts/docker-entrypoint.sh"))
        .args(args)
        .env("PATH", path)
        .env("SECURESOCK_CONFIG", file);
    cmd
}

#[test]
fn the_image_serves_a_mounted_file_and_flags_when_given() {
    let certs = default_certs();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("securesock.toml");
    std::fs::write(
        &file,
        format!(
            "[[service]]\nname = \"mounted\"\nlisten = \"127.0.0.1:0\"\ngreeting = \"from the file\"\ncert = \"{}\"\nkey = \"{}\"\n",
            certs.cert.display(),
            certs.key.display()
        ),
    )
    .unwrap();
    let server = Server::spawn(entrypoint(&file, &[]), &certs.cert);
    assert_eq!(server.greeting(), b"from the file");
    server.logs.wait_for(&["conn ", "service=mounted"]);

    // Flags beside a mounted file: the flags alone, and a line that says the file is not read.
    // (The pair as the image passes it: its variables, which the entry point looks at too.)
    let mut cmd = entrypoint(
        &file,
        &["--listen", "127.0.0.1:0", "--greeting", "from flags"],
    );
    cmd.env("SECURESOCK_CERT", &certs.cert)
        .env("SECURESOCK_KEY", &certs.key);
    let server = Server::spawn(cmd, &certs.cert);
    assert_eq!(server.greeting(), b"from flags");
    server
        .logs
        .wait_for(&["docker-entrypoint: flags given: serving them, not"]);
}

/// The `securesock.toml: |` block of a ConfigMap manifest, as the file the pod sees.
fn configmap_file(manifest: &str) -> String {
    let mut lines = manifest
        .lines()
        .skip_while(|l| l.trim() != "securesock.toml: |");
    assert!(
        lines.next().is_some(),
        "no securesock.toml key in the ConfigMap"
    );
    lines
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| format!("{}\n", l.get(4..).unwrap_or("")))
        .collect()
}

#[test]
fn the_kubernetes_configmap_holds_a_file_securesock_accepts() {
    let manifest = std::fs::read_to_string(
        repo_root().join("deploy/kubernetes/optional/configmap-two-services.yaml"),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("securesock.toml");
    std::fs::write(&file, configmap_file(&manifest)).unwrap();
    let config = configuration(&["--config".as_ref(), file.as_os_str()]);
    let names: Vec<&str> = config.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["greet", "app"]);
    // The readiness probe's port, and the Secret's files.
    assert_eq!(
        config.services[0].listen,
        securesock::config::Listen::Tcp("0.0.0.0:12345".parse().unwrap())
    );
    assert!(
        config
            .services
            .iter()
            .all(|s| s.tls.cert == Path::new("/certs/tls.crt"))
    );
}
