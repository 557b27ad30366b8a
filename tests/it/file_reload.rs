//! Issue 19, item 5: reload of the configuration file. With `--config FILE`, SIGHUP and a change
//! of the file's contents read it again: services added start listening, services removed stop
//! accepting while their open connections finish, services changed get their new settings for new
//! connections on the socket they already had; a file that does not parse or build changes
//! nothing and says where it is wrong. Issue 21's `reload_now` answers what changed.
//!
//! On the binary (signals and the log lines are what is tested), synchronised on the lines the
//! server writes; `reload_now` in this process, through the library.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;

use openssl::ssl::SslStream;
use securesock::config::load_file;
use securesock::server::{STILL_SERVING, Server as InProcessServer};

use crate::support::{
    PATIENCE, Server, binary, connector_trusting, default_certs, echoes, read_to_close_notify,
    serial_of, served_serial, write_cert_for,
};

const SIGHUP: i32 = 1;

/// A `[[service]]` table listening on a fresh port, with the default pair and `extra` keys.
fn service(name: &str, extra: &str) -> String {
    let certs = default_certs();
    format!(
        "[[service]]\nname = {name:?}\nlisten = \"127.0.0.1:0\"\ncert = {:?}\nkey = {:?}\n{extra}\n",
        certs.cert.display().to_string(),
        certs.key.display().to_string()
    )
}

fn greet(name: &str, greeting: &str) -> String {
    service(name, &format!("greeting = {greeting:?}"))
}

fn echo(name: &str) -> String {
    service(name, "mode = \"echo\"")
}

/// `[defaults]` that watch the files (the configuration file included) every 0.1 s.
const WATCH_FAST: &str = "[defaults]\nwatch-interval = 0.1\n";

/// `[defaults]` that watch no file: only SIGHUP reloads.
const WATCH_OFF: &str = "[defaults]\nwatch-interval = 0\n";

struct File {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl File {
    fn new(text: &str) -> File {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("securesock.toml");
        std::fs::write(&path, text).unwrap();
        File { _dir: dir, path }
    }

    /// Replaces the contents whole (a rename, as editors and config managers do), so the watcher
    /// never reads half a file.
    fn rewrite(&self, text: &str) {
        let tmp = self.path.with_extension("new");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &self.path).unwrap();
    }
}

/// The binary serving `--config path`.
fn serve(path: &Path) -> Server {
    let mut cmd = Command::new(binary());
    cmd.arg("--config").arg(path);
    Server::spawn(cmd, &default_certs().cert)
}

/// The address of `name` from its latest "listening on" line (port 0 is a fresh port each time).
fn addr_of(server: &Server, name: &str, nth: usize) -> SocketAddr {
    let lines = server
        .logs
        .wait_for_n(&["listening on ", &format!("service={name} ")], nth);
    let line = &lines[nth - 1];
    line.split("listening on ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
}

fn greeting(addr: SocketAddr) -> Vec<u8> {
    let tcp = TcpStream::connect(addr).expect("connecting");
    tcp.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut tls = connector_trusting(&default_certs().cert)
        .connect("localhost", tcp)
        .expect("handshake");
    read_to_close_notify(&mut tls)
}

fn echo_client(addr: SocketAddr) -> SslStream<TcpStream> {
    let tcp = TcpStream::connect(addr).expect("connecting");
    tcp.set_read_timeout(Some(PATIENCE)).unwrap();
    connector_trusting(&default_certs().cert)
        .connect("localhost", tcp)
        .expect("handshake")
}

/// Waits for the `n`th "reload ok" of the file.
fn reloaded(server: &Server, n: usize) -> String {
    server
        .logs
        .wait_for_n(&["reload ok trigger=", " file="], n)
        .remove(n - 1)
}

#[test]
fn a_service_added_starts_answering_and_one_removed_stops_while_its_connection_finishes() {
    let file = File::new(&format!("{}{}", greet("a", "from a"), echo("b")));
    let server = serve(&file.path);
    let a = addr_of(&server, "a", 1);
    let b = addr_of(&server, "b", 1);
    let mut open = echo_client(b);
    echoes(&mut open, b"before");

    file.rewrite(&format!("{}{}", greet("a", "from a"), greet("c", "from c")));
    server.signal(SIGHUP);
    let line = reloaded(&server, 1);
    assert!(
        line.contains("trigger=signal") && line.contains("added=c removed=b changed=- unchanged=1"),
        "{line}"
    );
    let c = addr_of(&server, "c", 1);
    assert_eq!(greeting(c), b"from c");
    server.logs.wait_for(&[
        "reload: service=b stopped accepting on",
        "1 open connection(s)",
    ]);
    let refused = TcpStream::connect(b).expect_err("b's port still accepts");
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    // The connection open on the removed service goes on, and ends as any other.
    echoes(&mut open, b"after");
    open.shutdown().unwrap();
    let conn = server.logs.wait_for(&["conn ", "service=b "]);
    assert!(conn.contains("result=ok"), "{conn}");
    assert_eq!(greeting(a), b"from a");
}

#[test]
fn an_echo_connection_on_an_unchanged_service_keeps_echoing_through_20_reloads_and_a_changed_service_keeps_its_socket()
 {
    let text = |n: usize| {
        format!(
            "{WATCH_OFF}{}{}",
            echo("e"),
            greet("g", &format!("hello {n}"))
        )
    };
    let file = File::new(&text(0));
    let server = serve(&file.path);
    let e = addr_of(&server, "e", 1);
    let g = addr_of(&server, "g", 1);
    let mut open = echo_client(e);
    // A client connecting in a loop to the service that changes at every reload.
    let stop = Arc::new(AtomicBool::new(false));
    let (served, refusals) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let looping = {
        let (stop, served, refusals) = (stop.clone(), served.clone(), refusals.clone());
        thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                match TcpStream::connect(g) {
                    Ok(tcp) => {
                        tcp.set_read_timeout(Some(PATIENCE)).unwrap();
                        let mut tls = connector_trusting(&default_certs().cert)
                            .connect("localhost", tcp)
                            .expect("handshake");
                        assert!(read_to_close_notify(&mut tls).starts_with(b"hello "));
                        served.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(_) => {
                        refusals.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        })
    };
    for n in 1..=20 {
        file.rewrite(&text(n));
        server.signal(SIGHUP);
        let line = reloaded(&server, n);
        assert!(line.contains("changed=g unchanged=1"), "{n}: {line}");
        echoes(&mut open, format!("still here {n}").as_bytes());
        assert_eq!(greeting(g), format!("hello {n}").as_bytes());
    }
    stop.store(true, Ordering::SeqCst);
    looping.join().unwrap();
    assert_eq!(
        refusals.load(Ordering::SeqCst),
        0,
        "refused during a reload"
    );
    assert!(served.load(Ordering::SeqCst) > 0);
    assert_eq!(addr_of(&server, "g", 1), g);
    assert_eq!(
        server.logs.matching(&["listening on ", "service=g "]).len(),
        1,
        "g was bound again"
    );
    assert!(server.logs.matching(&["stopped accepting"]).is_empty());
}

#[test]
fn a_changed_certificate_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let new = write_cert_for(dir.path(), "localhost");
    let file = File::new(&format!("{WATCH_FAST}{}", greet("web", "hi")));
    let server = serve(&file.path);
    let web = addr_of(&server, "web", 1);
    assert_eq!(
        served_serial(web).unwrap(),
        serial_of(&default_certs().cert)
    );
    let text = format!(
        "{WATCH_FAST}[[service]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\ncert = {:?}\nkey = {:?}\ngreeting = \"hi\"\n",
        new.cert.display().to_string(),
        new.key.display().to_string()
    );
    // No signal: the change of the file is enough.
    file.rewrite(&text);
    let line = reloaded(&server, 1);
    assert!(
        line.contains("trigger=file_change") && line.contains("changed=web"),
        "{line}"
    );
    let serial = serial_of(&new.cert);
    server
        .logs
        .wait_for(&["reload: service=web changed:", &format!("serial={serial}")]);
    assert_eq!(served_serial(web).unwrap(), serial);
}

#[test]
fn a_file_with_a_syntax_error_or_a_bad_certificate_changes_nothing() {
    let file = File::new(&format!("{WATCH_FAST}{}", greet("a", "from a")));
    let server = serve(&file.path);
    let a = addr_of(&server, "a", 1);
    let shown = file.path.display().to_string();

    // Line 5, column 1: the service table's `name` without its `=`.
    file.rewrite(&format!(
        "{WATCH_FAST}{}{}",
        greet("a", "changed"),
        "[[service]]\nname \"b\"\n"
    ));
    server.signal(SIGHUP);
    let line = server.logs.wait_for(&["reload failed trigger=signal"]);
    let at = greet("a", "changed").lines().count() + 4;
    assert!(
        line.contains(&format!("{shown}:{at}:")) && line.contains(STILL_SERVING),
        "{line}"
    );
    assert_eq!(greeting(a), b"from a");

    // A certificate that does not exist, seen as the file changes: named, with its service.
    let missing = file.path.with_file_name("missing.pem");
    file.rewrite(&format!(
        "{WATCH_FAST}{}{}",
        greet("a", "changed"),
        service("b", &format!("cert = {:?}", missing.display().to_string())).replacen(
            "cert = ",
            "# cert = ",
            1
        )
    ));
    let line = server
        .logs
        .wait_for(&["reload failed trigger=file_change", "service=b"]);
    assert!(
        line.contains("missing.pem") && line.contains(STILL_SERVING),
        "{line}"
    );
    assert_eq!(greeting(a), b"from a");
    assert!(server.logs.matching(&["reload ok"]).is_empty());
    assert!(server.logs.matching(&["service=b"]).len() == 1);
}

#[test]
fn reload_now_answers_what_changed_or_why_nothing_did() {
    let file = File::new(&format!("{}{}", greet("a", "from a"), greet("b", "from b")));
    let config = load_file(&file.path).unwrap();
    let server = InProcessServer::bind(&config).unwrap();
    let handle = server.handle();
    let running = thread::spawn(move || server.run());

    file.rewrite(&format!("{}{}", greet("a", "from a"), greet("c", "from c")));
    let answer = handle.reload_now();
    assert!(answer.ok, "{answer:?}");
    assert!(
        answer.lines[0].contains("trigger=control")
            && answer.lines[0].contains("added=c removed=b"),
        "{answer:?}"
    );
    let serial = serial_of(&default_certs().cert);
    let has = |what: &[&str]| {
        answer
            .lines
            .iter()
            .any(|l| what.iter().all(|w| l.contains(w)))
    };
    assert!(
        has(&["service=c added:", &serial, "expires_in_days="]),
        "{answer:?}"
    );
    assert!(has(&["service=b removed"]), "{answer:?}");
    // The unchanged service's certificate was reloaded, with its expiry.
    assert!(
        has(&["reload ok trigger=control service=a", &serial, "not_after="]),
        "{answer:?}"
    );

    file.rewrite("[[service]]\nname = 1\n");
    let answer = handle.reload_now();
    assert!(!answer.ok);
    assert!(
        answer.lines[0].contains(&format!("{}:2:8:", file.path.display())),
        "{answer:?}"
    );
    assert_eq!(answer.lines.last().map(String::as_str), Some(STILL_SERVING));

    handle.shutdown();
    running.join().unwrap().unwrap();
}

#[test]
fn reload_now_with_flags_alone_reloads_every_certificate() {
    let certs = default_certs();
    let config = securesock::config::parse_args([
        "securesock",
        "--listen",
        "127.0.0.1:0",
        "--cert",
        &certs.cert.display().to_string(),
        "--key",
        &certs.key.display().to_string(),
    ])
    .unwrap();
    let server = InProcessServer::bind(&config).unwrap();
    let handle = server.handle();
    let answer = handle.reload_now();
    assert!(answer.ok, "{answer:?}");
    assert_eq!(answer.lines.len(), 1, "{answer:?}");
    assert!(
        answer.lines[0].starts_with("reload ok trigger=control service=default subject="),
        "{answer:?}"
    );
    drop(server);
}
