//! `securesock import-stunnel FILE` through the real binary (arguments, stdout, stderr and exit
//! codes are the binary's): Debian's own stunnel.conf-sample, and configurations written the way
//! stunnel's manual shows them. The TOML it writes parses, holds the services and keys expected,
//! each option left out is named with its line (exit 3; 0 when all was carried; 2 for a file that
//! cannot be read), and an imported file starts (`securesock --config`) on the same port and
//! serves; a three-service file passes `securesock check` and serves every port to real clients.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;

use openssl::ssl::{SslConnector, SslFiletype, SslMethod, SslVerifyMode};

use crate::support::{PATIENCE, Server, binary, mtls, repo_root, upstream_once};

/// What one run printed.
struct Run {
    code: Option<i32>,
    toml: String,
    stderr: Vec<String>,
}

impl Run {
    /// The output as a TOML document, failing the test when it does not parse.
    fn parsed(&self) -> toml::Table {
        self.toml
            .parse()
            .unwrap_or_else(|e| panic!("the output is not TOML: {e}\n{}", self.toml))
    }

    /// The `[[service]]` tables.
    fn services(&self) -> Vec<toml::Table> {
        match self.parsed().get("service") {
            Some(toml::Value::Array(list)) => list
                .iter()
                .map(|s| s.as_table().expect("a table").clone())
                .collect(),
            _ => Vec::new(),
        }
    }

    fn service(&self, name: &str) -> toml::Table {
        self.services()
            .into_iter()
            .find(|s| s.get("name").and_then(|n| n.as_str()) == Some(name))
            .unwrap_or_else(|| panic!("no service {name} in\n{}", self.toml))
    }
}

fn import(file: &Path) -> Run {
    let out = Command::new(binary())
        .arg("import-stunnel")
        .arg(file)
        .output()
        .expect("running securesock import-stunnel");
    Run {
        code: out.status.code(),
        toml: String::from_utf8(out.stdout).expect("UTF-8 TOML"),
        stderr: String::from_utf8_lossy(&out.stderr)
            .lines()
            .map(str::to_string)
            .collect(),
    }
}

/// Writes `text` as `DIR/NAME` and returns the path.
fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn str_of<'a>(table: &'a toml::Table, key: &str) -> &'a str {
    table
        .get(key)
        .and_then(|v| v.as_str())
        .unwrap_or_else(|| panic!("no string {key} in {table:?}"))
}

fn list_of(table: &toml::Table, key: &str) -> Vec<String> {
    match table.get(key) {
        Some(toml::Value::Array(items)) => items
            .iter()
            .map(|i| i.as_str().unwrap().to_string())
            .collect(),
        other => panic!("{key} is not a list: {other:?}"),
    }
}

fn sample() -> PathBuf {
    repo_root().join("tests/it/data/stunnel.conf-sample")
}

#[test]
fn debians_sample_converts_its_three_client_services_and_names_ocspaia() {
    let run = import(&sample());
    assert_eq!(run.code, Some(3), "{:?}", run.stderr);
    let names: Vec<String> = run
        .services()
        .iter()
        .map(|s| str_of(s, "name").to_string())
        .collect();
    assert_eq!(names, ["gmail-pop3", "gmail-imap", "gmail-smtp"]);
    for (name, listen, upstream, host) in [
        (
            "gmail-pop3",
            "127.0.0.1:110",
            "pop.gmail.com:995",
            "pop.gmail.com",
        ),
        (
            "gmail-imap",
            "127.0.0.1:143",
            "imap.gmail.com:993",
            "imap.gmail.com",
        ),
        (
            "gmail-smtp",
            "127.0.0.1:25",
            "smtp.gmail.com:465",
            "smtp.gmail.com",
        ),
    ] {
        let service = run.service(name);
        assert_eq!(str_of(&service, "listen"), listen);
        assert_eq!(str_of(&service, "mode"), "client");
        assert_eq!(str_of(&service, "upstream"), upstream);
        // checkHost is the name checked (and sent); CApath /etc/ssl/certs is the system store,
        // securesock's default, so no upstream-ca.
        assert_eq!(str_of(&service, "upstream-name"), host);
        assert!(!service.contains_key("upstream-ca"), "{service:?}");
    }
    let file = sample().display().to_string();
    let expected: Vec<String> = [69, 78, 87]
        .iter()
        .map(|line| format!("{file}:{line}: OCSPaia not carried: "))
        .collect();
    assert_eq!(run.stderr.len(), 3, "{:?}", run.stderr);
    for (line, prefix) in run.stderr.iter().zip(&expected) {
        assert!(line.starts_with(prefix), "{line} (wanted {prefix}...)");
    }
}

#[test]
fn debians_sample_with_its_examples_uncommented_names_every_option_left_out() {
    // Every commented-out option and section of the sample, switched on (but the include, whose
    // directory this host lacks): the global options, the server examples, exec and PSK.
    let text = std::fs::read_to_string(sample()).unwrap();
    let uncommented: String = text
        .lines()
        .map(|l| match l.strip_prefix(';') {
            Some(rest)
                if rest.starts_with('[')
                    || (rest.contains(" = ") || rest.contains("  = "))
                        && !rest.starts_with(' ')
                        && !rest.starts_with("include") =>
            {
                rest
            }
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "stunnel.conf", &uncommented);
    let run = import(&path);
    assert_eq!(run.code, Some(3), "{:?}", run.stderr);
    let at =
        |line: usize, option: &str| format!("{}:{line}: {option} not carried: ", path.display());
    for (line, option) in [
        (11, "setuid"),
        (12, "setgid"),
        (15, "pid"),
        (19, "debug"),
        (20, "output"),
        (23, "fips"),
        (30, "engine"),
        (31, "engineCtrl"),
        (39, "options"),
        (42, "options"),
        (95, "engineId"),
        (96, "cert"),
        (97, "key"),
        (127, "TIMEOUTclose"),
        (133, "exec"),
        (134, "execArgs"),
        (135, "PSKsecrets"),
    ] {
        let prefix = at(line, option);
        assert!(
            run.stderr.iter().any(|l| l.starts_with(&prefix)),
            "{prefix}... missing from {:#?}",
            run.stderr
        );
    }
    // foreground = yes is what securesock does anyway: nothing left out.
    assert!(
        !run.stderr.iter().any(|l| l.contains("foreground")),
        "{:?}",
        run.stderr
    );
    // The server examples: port alone is every IPv4 address, and connect's localhost.
    let pop3s = run.service("pop3s");
    assert_eq!(str_of(&pop3s, "listen"), "0.0.0.0:995");
    assert_eq!(str_of(&pop3s, "mode"), "forward");
    assert_eq!(str_of(&pop3s, "upstream"), "localhost:110");
    assert_eq!(str_of(&pop3s, "key"), "/etc/stunnel/stunnel.pem");
    let mysql = run.service("mysql");
    assert_eq!(str_of(&mysql, "upstream"), "unix:/run/mysqld/mysqld.sock");
    // The exec service has no socket to relay to: left out whole, and said so.
    assert!(!run.toml.contains("\"shell\""), "{}", run.toml);
    assert!(
        run.stderr.iter().any(|l| l.contains("[shell] not carried")),
        "{:?}",
        run.stderr
    );
}

#[test]
fn a_server_with_client_certificates_and_a_crl_is_carried_whole() {
    let dir = tempfile::tempdir().unwrap();
    let conf = write(
        dir.path(),
        "stunnel.conf",
        "; a TLS front for an internal API: clients need a certificate from our CA\n\
         [api]\n\
         accept  = 127.0.0.1:8443\n\
         connect = 127.0.0.1:8080\n\
         cert = /etc/stunnel/api.pem\n\
         key = /etc/stunnel/api.key\n\
         CAfile = /etc/stunnel/clients-ca.pem\n\
         verifyChain = yes\n\
         CRLfile = /etc/stunnel/clients.crl\n\
         checkHost = frontend.example.org\n\
         sslVersionMin = TLSv1.2\n\
         TIMEOUTidle = 600\n",
    );
    let run = import(&conf);
    assert_eq!(run.code, Some(0), "{:?}", run.stderr);
    let api = run.service("api");
    assert_eq!(str_of(&api, "listen"), "127.0.0.1:8443");
    assert_eq!(str_of(&api, "mode"), "forward");
    assert_eq!(str_of(&api, "upstream"), "127.0.0.1:8080");
    assert_eq!(str_of(&api, "cert"), "/etc/stunnel/api.pem");
    assert_eq!(str_of(&api, "key"), "/etc/stunnel/api.key");
    assert_eq!(str_of(&api, "client-ca"), "/etc/stunnel/clients-ca.pem");
    assert_eq!(
        api.get("require-client-cert").and_then(|v| v.as_bool()),
        Some(true)
    );
    assert_eq!(str_of(&api, "crl"), "/etc/stunnel/clients.crl");
    assert_eq!(list_of(&api, "allow-dns"), ["frontend.example.org"]);
    assert_eq!(str_of(&api, "tls-profile"), "intermediate");
    assert_eq!(
        api.get("idle-timeout").and_then(|v| v.as_integer()),
        Some(600)
    );
    // checkHost carried as allow-dns, whose meaning is narrower: a note, not a left-out option.
    assert!(
        run.stderr.iter().all(|l| l.contains(": note: ")) && run.stderr.len() == 1,
        "{:?}",
        run.stderr
    );
}

#[test]
fn client_mode_redis_and_postgres_tunnels_verify_their_upstream_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let conf = write(
        dir.path(),
        "stunnel.conf",
        "[redis]\n\
         client = yes\n\
         accept = 127.0.0.1:6379\n\
         connect = redis.internal:6380\n\
         CAfile = /etc/stunnel/redis-ca.pem\n\
         verifyChain = yes\n\
         checkHost = redis.internal\n\
         \n\
         [postgres]\n\
         client = yes\n\
         accept = 127.0.0.1:5432\n\
         connect = db.internal:5432\n\
         cert = /etc/stunnel/pg-client.pem\n\
         CAfile = /etc/stunnel/db-ca.pem\n\
         verifyChain = yes\n\
         checkHost = db.internal\n\
         protocol = pgsql\n",
    );
    let run = import(&conf);
    assert_eq!(run.code, Some(3), "{:?}", run.stderr);
    let redis = run.service("redis");
    assert_eq!(str_of(&redis, "mode"), "client");
    assert_eq!(str_of(&redis, "listen"), "127.0.0.1:6379");
    assert_eq!(str_of(&redis, "upstream"), "redis.internal:6380");
    assert_eq!(str_of(&redis, "upstream-ca"), "/etc/stunnel/redis-ca.pem");
    assert_eq!(str_of(&redis, "upstream-name"), "redis.internal");
    let pg = run.service("postgres");
    assert_eq!(str_of(&pg, "upstream-name"), "db.internal");
    // key defaults to cert, as in stunnel.
    assert_eq!(str_of(&pg, "upstream-cert"), "/etc/stunnel/pg-client.pem");
    assert_eq!(str_of(&pg, "upstream-key"), "/etc/stunnel/pg-client.pem");
    // PostgreSQL's SSLRequest is a negotiation before TLS: named with its line, and only it.
    assert_eq!(run.stderr.len(), 1, "{:?}", run.stderr);
    assert!(
        run.stderr[0].starts_with(&format!(
            "{}:17: protocol not carried: pgsql: ",
            conf.display()
        )),
        "{:?}",
        run.stderr
    );
}

#[test]
fn failover_over_several_connects_and_an_include_directory() {
    let dir = tempfile::tempdir().unwrap();
    let parts = dir.path().join("conf.d");
    std::fs::create_dir(&parts).unwrap();
    write(
        &parts,
        "00-global.conf",
        "foreground = yes\nTIMEOUTidle = 120\n",
    );
    write(
        &parts,
        "20-db.conf",
        "[db]\naccept = 127.0.0.1:15432\nconnect = primary.db:5432\nconnect = standby.db:5432\nfailover = prio\ncert = /etc/stunnel/db.pem\nkey = /etc/stunnel/db.key\n",
    );
    write(
        &parts,
        "10-web.conf",
        "[web]\naccept = 8443\nconnect = 10.0.0.5:8080\nconnect = 10.0.0.6:8080\nconnect = 10.0.0.7:8080\nfailover = rr\ncert = /etc/stunnel/web.pem\nTIMEOUTconnect = 2\n",
    );
    let conf = write(
        dir.path(),
        "stunnel.conf",
        &format!("TIMEOUTconnect = 3\ninclude = {}\n", parts.display()),
    );
    let run = import(&conf);
    assert_eq!(run.code, Some(0), "{:?}", run.stderr);
    let defaults = run.parsed()["defaults"].as_table().unwrap().clone();
    assert_eq!(defaults["connect-timeout"].as_integer(), Some(3));
    assert_eq!(defaults["idle-timeout"].as_integer(), Some(120));
    let names: Vec<String> = run
        .services()
        .iter()
        .map(|s| str_of(s, "name").to_string())
        .collect();
    assert_eq!(
        names,
        ["web", "db"],
        "the include directory is read in name order"
    );
    let web = run.service("web");
    assert_eq!(str_of(&web, "listen"), "0.0.0.0:8443");
    assert_eq!(
        list_of(&web, "upstream"),
        ["10.0.0.5:8080", "10.0.0.6:8080", "10.0.0.7:8080"]
    );
    assert_eq!(str_of(&web, "balance"), "round-robin");
    assert_eq!(web["connect-timeout"].as_integer(), Some(2));
    let db = run.service("db");
    assert_eq!(
        list_of(&db, "upstream"),
        ["primary.db:5432", "standby.db:5432"]
    );
    assert_eq!(str_of(&db, "balance"), "priority");
    assert!(
        !db.contains_key("connect-timeout"),
        "inherited from [defaults]: {db:?}"
    );
}

#[test]
fn a_file_it_cannot_read_or_stunnel_would_refuse_exits_2_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("absent.conf");
    let run = import(&missing);
    assert_eq!(run.code, Some(2));
    assert_eq!(run.stderr.len(), 1, "{:?}", run.stderr);
    assert!(
        run.stderr[0].contains("absent.conf: cannot read"),
        "{:?}",
        run.stderr
    );
    assert!(run.toml.is_empty());
    let bad = write(dir.path(), "bad.conf", "[s]\naccept 443\n");
    let run = import(&bad);
    assert_eq!(run.code, Some(2));
    assert_eq!(
        run.stderr,
        [format!(
            "securesock: error: {}:2: \"accept 443\": no '=' found",
            bad.display()
        )]
    );
}

/// Loads a TOML file as `securesock --config FILE` does, returning its services' names.
fn load(toml: &Path) -> Vec<String> {
    let args = ["securesock".as_ref(), "--config".as_ref(), toml.as_os_str()];
    match securesock::config::parse_invocation(args) {
        Ok(securesock::config::Invocation::Serve(config)) => {
            config.services.iter().map(|s| s.name.clone()).collect()
        }
        Ok(_) => panic!("not a configuration to serve"),
        Err(securesock::config::ArgsError::Invalid(line)) => panic!("refused: {line}"),
        Err(securesock::config::ArgsError::Info(e)) => panic!("{e}"),
    }
}

#[test]
fn imported_files_load_as_securesock_configurations() {
    // The file layer's own parser and checks (every key a flag's, each value as the flag takes
    // it): what import-stunnel writes is accepted as it stands.
    let dir = tempfile::tempdir().unwrap();
    let run = import(&sample());
    let out = write(dir.path(), "sample.toml", &run.toml);
    assert_eq!(load(&out), ["gmail-pop3", "gmail-imap", "gmail-smtp"]);
    let conf = write(
        dir.path(),
        "server.conf",
        "sslVersionMin = TLSv1.3\nTIMEOUTidle = 60\n[api]\naccept = 127.0.0.1:8443\nconnect = 8080\ncert = /c.pem\nkey = /k.pem\nCAfile = /ca.pem\nverifyChain = yes\nCRLfile = /crl.pem\ncheckHost = a.example\nprotocol = proxy\nTIMEOUTconnect = 2\n[redis]\nclient = yes\naccept = 127.0.0.1:6379\nconnect = redis.internal:6380\nCAfile = /ca.pem\nverifyChain = yes\ncheckHost = redis.internal\ncert = /client.pem\n",
    );
    let run = import(&conf);
    assert_eq!(run.code, Some(0), "{:?}", run.stderr);
    let out = write(dir.path(), "server.toml", &run.toml);
    assert_eq!(load(&out), ["api", "redis"]);
}

/// A port on 127.0.0.1 that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn client_with(cert: &str) -> SslConnector {
    let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap();
    b.set_ca_file(mtls("ca-cert.pem")).unwrap();
    b.set_certificate_chain_file(mtls(&format!("{cert}-cert.pem")))
        .unwrap();
    b.set_private_key_file(mtls(&format!("{cert}-key.pem")), SslFiletype::PEM)
        .unwrap();
    b.set_verify(SslVerifyMode::PEER);
    b.build()
}

#[test]
fn an_imported_server_starts_on_the_same_port_and_serves() {
    let (upstream, served) = upstream_once(|mut s| {
        let mut ping = [0u8; 4];
        s.read_exact(&mut ping).unwrap();
        s.write_all(b"pong").unwrap();
        ping
    });
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let conf = write(
        dir.path(),
        "stunnel.conf",
        &format!(
            "foreground = yes\n[api]\naccept = 127.0.0.1:{port}\nconnect = {upstream}\ncert = {}\nkey = {}\nCAfile = {}\nverifyChain = yes\nCRLfile = {}\ncheckHost = api.example.org\n",
            mtls("server-cert.pem"),
            mtls("server-key.pem"),
            mtls("ca-cert.pem"),
            mtls("crl.pem"),
        ),
    );
    let run = import(&conf);
    assert_eq!(run.code, Some(0), "{:?}", run.stderr);
    let toml = write(dir.path(), "securesock.toml", &run.toml);
    let mut cmd = Command::new(binary());
    cmd.arg("--config").arg(&toml);
    let server = Server::spawn(cmd, Path::new(&mtls("ca-cert.pem")));
    assert_eq!(server.addr.port(), port, "the port stunnel accepted on");

    // A client whose certificate is for the allowed name is relayed.
    let tcp = TcpStream::connect(server.addr).unwrap();
    tcp.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut tls = client_with("api").connect("localhost", tcp).unwrap();
    tls.write_all(b"ping").unwrap();
    let mut reply = Vec::new();
    let _ = tls.read_to_end(&mut reply);
    assert_eq!(reply, b"pong");
    assert_eq!(&served.join().unwrap(), b"ping");

    // One whose certificate is for no allowed name is refused, as stunnel's checkHost refuses it.
    let tcp = TcpStream::connect(server.addr).unwrap();
    tcp.set_read_timeout(Some(PATIENCE)).unwrap();
    // (TLS 1.3: the refusal arrives as an access_denied alert on the first read.)
    let served = match client_with("client").connect("localhost", tcp) {
        Ok(mut s) => s.read(&mut [0u8; 1]).is_ok_and(|n| n > 0),
        Err(_) => false,
    };
    assert!(!served, "a client without the allowed name was served");
    server
        .logs
        .wait_for(&["result=handshake_failed kind=not_allowed"]);
}

/// A plaintext upstream that says `hello` first, reads one line and answers it with `reply`.
fn line_server(
    hello: &'static [u8],
    reply: &'static [u8],
) -> (std::net::SocketAddr, std::thread::JoinHandle<Vec<u8>>) {
    upstream_once(move |mut s| {
        s.write_all(hello).unwrap();
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while s.read(&mut byte).unwrap() == 1 {
            line.push(byte[0]);
            if byte[0] == b'\n' {
                break;
            }
        }
        s.write_all(reply).unwrap();
        line
    })
}

/// Reads until `want` has arrived (or the stream ends), so a test never waits on a relay's close.
fn read_until(stream: &mut impl Read, want: &[u8]) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while !got.windows(want.len()).any(|w| w == want) {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    got
}

/// The migration the README shows, whole: a stunnel.conf with three services as stunnel's manual
/// writes them (two TLS servers in front of plaintext daemons and a client-mode tunnel) is
/// imported, passes `securesock check`, and `securesock --config` serves all three ports to real
/// clients.
#[test]
fn a_three_service_stunnel_conf_moves_with_import_check_and_run() {
    let certs = crate::support::default_certs();
    let (pop3, pop3_got) = line_server(b"+OK POP3 ready\r\n", b"+OK bye\r\n");
    let (web, web_got) = line_server(b"", b"HTTP/1.0 200 OK\r\n\r\nfrom the web upstream");
    // The client-mode tunnel's far end: a TLS echo server (securesock itself) for localhost.
    let tls_echo = Server::start(&["--mode", "echo"]);
    let [pop3s, https, redis] = [free_port(), free_port(), free_port()];
    let dir = tempfile::tempdir().unwrap();
    let cert = certs.cert.display();
    let key = certs.key.display();
    let conf = write(
        dir.path(),
        "stunnel.conf",
        &format!(
            "; Sample stunnel configuration file, three services\n\
             foreground = yes\n\
             \n\
             [pop3s]\n\
             accept  = 127.0.0.1:{pop3s}\n\
             connect = {pop3}\n\
             cert = {cert}\n\
             key = {key}\n\
             \n\
             [https]\n\
             accept  = 127.0.0.1:{https}\n\
             connect = {web}\n\
             cert = {cert}\n\
             key = {key}\n\
             TIMEOUTclose = 0\n\
             \n\
             [redis]\n\
             client = yes\n\
             accept = 127.0.0.1:{redis}\n\
             connect = {}\n\
             CAfile = {cert}\n\
             verifyChain = yes\n\
             checkHost = localhost\n",
            tls_echo.addr
        ),
    );
    let run = import(&conf);
    let toml = write(dir.path(), "securesock.toml", &run.toml);

    let check = Command::new(binary())
        .args(["check", "--config"])
        .arg(&toml)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&check.stdout);
    assert_eq!(check.status.code(), Some(0), "securesock check:\n{report}");
    for service in ["pop3s", "https", "redis"] {
        assert!(
            report.contains(&format!("{service}: ok: ")),
            "{service} unchecked:\n{report}"
        );
    }

    let mut cmd = Command::new(binary());
    cmd.arg("--config").arg(&toml);
    let server = Server::spawn(cmd, &certs.cert);
    server.logs.wait_for_n(&["listening on "], 3);
    let connector = crate::support::connector_trusting(&certs.cert);
    let tls_to = |port: u16| {
        let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
        tcp.set_read_timeout(Some(PATIENCE)).unwrap();
        connector.connect("localhost", tcp).unwrap()
    };

    // pop3s: the daemon's banner through TLS, a command, its answer.
    let mut tls = tls_to(pop3s);
    assert_eq!(read_until(&mut tls, b"\r\n"), b"+OK POP3 ready\r\n");
    tls.write_all(b"QUIT\r\n").unwrap();
    assert_eq!(read_until(&mut tls, b"bye\r\n"), b"+OK bye\r\n");
    assert_eq!(pop3_got.join().unwrap(), b"QUIT\r\n");
    drop(tls);

    // https: a request and the web upstream's answer.
    let mut tls = tls_to(https);
    tls.write_all(b"GET / HTTP/1.0\r\n").unwrap();
    let answer = read_until(&mut tls, b"from the web upstream");
    assert!(answer.starts_with(b"HTTP/1.0 200 OK"), "{answer:?}");
    assert_eq!(web_got.join().unwrap(), b"GET / HTTP/1.0\r\n");
    drop(tls);

    // redis: plaintext in, verified TLS to the echo server, the bytes back.
    let mut plain = TcpStream::connect(("127.0.0.1", redis)).unwrap();
    plain.set_read_timeout(Some(PATIENCE)).unwrap();
    plain.write_all(b"PING\r\n").unwrap();
    assert_eq!(read_until(&mut plain, b"PING\r\n"), b"PING\r\n");
    drop(plain);

    for service in ["pop3s", "https", "redis"] {
        server
            .logs
            .wait_for(&["conn ", &format!("service={service} ")]);
    }
    // What stunnel had that securesock does not do is named, and the exit code says so.
    assert_eq!(run.code, Some(3), "{:?}", run.stderr);
    assert!(
        run.stderr.iter().any(|l| l.contains("TIMEOUTclose")),
        "{:?}",
        run.stderr
    );
}
