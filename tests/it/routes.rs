//! Issue 19, item 3: SNI routes. One listener, `[[service.route]]` tables for `a.test` and
//! `b.test` with certificates and upstreams of their own (each upstream a plaintext server that
//! says who it is): each name reaches its own upstream with its own certificate, an unknown name
//! gets the service's, strict SNI refuses it with unrecognized_name, a route's access rules decide
//! for its connections instead of the service's, a session made on one route does not resume on
//! another, and bad route tables are one FILE:LINE:COL line and exit 2.
//!
//! On the binary, with the real `openssl s_client`; what is observed is what the client gets (the
//! certificate, the upstream's words, alerts, `Reused`) and the `conn` lines.

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::thread;

use openssl::ssl::{SslConnector, SslFiletype, SslMethod, SslStream, SslVerifyMode};

use crate::support::{
    CertPair, PATIENCE, Server, binary, brief_field, default_certs, echoes, mtls,
    read_to_close_notify, refused_start, s_client, s_client_full, write_cert_for,
};

/// A plaintext upstream that answers every connection with `who` and closes.
fn says(who: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let _ = conn.write_all(who.as_bytes());
            let _ = conn.shutdown(std::net::Shutdown::Write);
        }
    });
    addr
}

/// A certificate and key as a route's or a service's keys.
fn keys(pair: &CertPair) -> String {
    format!(
        "cert = {:?}\nkey = {:?}\n",
        pair.cert.display().to_string(),
        pair.key.display().to_string()
    )
}

/// The test's files: route certificates for a.test, b.test and *.w.test, and the config file.
struct Setup {
    dir: tempfile::TempDir,
    a: CertPair,
    b: CertPair,
    wild: CertPair,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let a = write_cert_for(dir.path(), "a.test");
        let b = write_cert_for(dir.path(), "b.test");
        let wild = write_cert_for(dir.path(), "*.w.test");
        Setup { dir, a, b, wild }
    }

    /// A forward service to `default` with routes a.test (to `a`) and b.test (to `b`), each with
    /// its certificate, and *.w.test (named `wild`) with its certificate and the service's
    /// upstream; `extra` goes into the service, `route_a` into a.test's table.
    fn file(
        &self,
        upstreams: [SocketAddr; 3],
        service_keys: &str,
        extra: &str,
        route_a: &str,
    ) -> PathBuf {
        let [default, a, b] = upstreams;
        let text = format!(
            "[[service]]\nname = \"front\"\nlisten = \"127.0.0.1:0\"\nmode = \"forward\"\nupstream = \"{default}\"\n{service_keys}{extra}\n\
             [[service.route]]\nsni = \"a.test\"\n{}upstream = [\"{a}\"]\n{route_a}\n\
             [[service.route]]\nsni = \"b.test\"\n{}upstream = \"{b}\"\n\
             [[service.route]]\nname = \"wild\"\nsni = \"*.w.test\"\n{}",
            keys(&self.a),
            keys(&self.b),
            keys(&self.wild),
        );
        let path = self.dir.path().join("routes.toml");
        std::fs::write(&path, text).unwrap();
        path
    }
}

fn serve(path: &Path) -> Server {
    let mut cmd = Command::new(binary());
    cmd.arg("--config").arg(path);
    Server::spawn(cmd, &default_certs().cert)
}

/// s_client asking for `name` (no name at all when empty), with `extra` arguments.
fn ask(server: &Server, name: &str, extra: &[&str]) -> Output {
    let mut args: Vec<&str> = Vec::new();
    if name.is_empty() {
        args.push("-noservername");
    } else {
        args.extend(["-servername", name]);
    }
    args.extend_from_slice(extra);
    s_client(server.addr, &args)
}

/// What the upstream said through the connection, and the CN of the certificate served.
fn reached(out: &Output) -> (String, String) {
    let cert = brief_field(out, "Peer certificate").unwrap_or_default();
    (String::from_utf8_lossy(&out.stdout).into_owned(), cert)
}

#[test]
fn each_name_reaches_its_own_upstream_with_its_own_certificate() {
    let setup = Setup::new();
    let ups = [says("default"), says("upstream a"), says("upstream b")];
    let server = serve(&setup.file(ups, &keys(default_certs()), "", ""));
    for (name, want, cn) in [
        ("a.test", "upstream a", "CN=a.test"),
        ("A.Test", "upstream a", "CN=a.test"),
        ("b.test", "upstream b", "CN=b.test"),
        // A route without an upstream of its own: its certificate, the service's upstream.
        ("x.w.test", "default", "CN=*.w.test"),
        // Unknown names, and none at all: the service's certificate and upstream.
        ("c.test", "default", "CN=localhost"),
        ("", "default", "CN=localhost"),
    ] {
        let out = ask(&server, name, &[]);
        let (said, cert) = reached(&out);
        assert_eq!(said, want, "{name}: {out:?}");
        assert_eq!(cert.replace(' ', ""), cn, "{name}");
    }
    let line = |sni: &str| {
        server
            .logs
            .wait_for(&["conn peer=", &format!("sni={sni} ")])
    };
    let a = line("a.test");
    assert!(a.contains(" route=a.test "), "{a}");
    assert!(a.contains(&format!(" upstream={} ", ups[1])), "{a}");
    assert!(line("b.test").contains(" route=b.test "));
    assert!(line("x.w.test").contains(" route=wild "));
    let unknown = line("c.test");
    assert!(!unknown.contains("route="), "{unknown}");
    assert!(
        unknown.contains(&format!(" upstream={} ", ups[0])),
        "{unknown}"
    );
    server.logs.wait_for(&["route name=a.test sni=a.test"]);
    server.logs.wait_for(&["route 0: forwarding to"]);
}

#[test]
fn strict_sni_refuses_a_name_no_route_is_for_with_unrecognized_name() {
    let setup = Setup::new();
    let ups = [says("default"), says("upstream a"), says("upstream b")];
    let server = serve(&setup.file(ups, &keys(default_certs()), "strict-sni = true\n", ""));
    let out = ask(&server, "c.test", &[]);
    assert!(out.stdout.is_empty(), "served: {out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unrecognized name"), "{err}");
    server
        .logs
        .wait_for(&["result=handshake_failed", "kind=unknown_name", "sni=c.test"]);
    // The routes' names and the default certificate's own are served.
    assert_eq!(reached(&ask(&server, "b.test", &[])).0, "upstream b");
    assert_eq!(reached(&ask(&server, "localhost", &[])).0, "default");
}

/// s_client arguments presenting the gen-ca.sh client certificate `name` (`client`, `api`).
fn as_client(name: &str) -> Vec<String> {
    vec![
        "-cert".into(),
        mtls(&format!("{name}-cert.pem")),
        "-key".into(),
        mtls(&format!("{name}-key.pem")),
    ]
}

#[test]
fn a_routes_access_rules_decide_for_its_connections_instead_of_the_services() {
    let setup = Setup::new();
    let ups = [says("default"), says("upstream a"), says("upstream b")];
    // The service lets in CN=client; route a.test only the api workload's URI; b.test inherits.
    let service = format!(
        "{}client-ca = {:?}\nallow-cn = \"client\"\n",
        keys(default_certs()),
        mtls("ca-cert.pem")
    );
    let path = setup.file(
        ups,
        &service,
        "",
        "allow-uri = [\"spiffe://example.org/service/api\"]",
    );
    let server = serve(&path);
    for version in ["-tls1_3", "-tls1_2"] {
        for (name, client, want) in [
            ("a.test", "api", Some("upstream a")),
            ("a.test", "client", None),
            ("localhost", "client", Some("default")),
            ("localhost", "api", None),
            ("b.test", "client", Some("upstream b")),
            ("b.test", "api", None),
        ] {
            let mut extra = as_client(client);
            extra.push(version.into());
            let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
            let out = ask(&server, name, &extra);
            let said = String::from_utf8_lossy(&out.stdout);
            match want {
                Some(want) => assert_eq!(said, want, "{version} {name} as {client}: {out:?}"),
                None => {
                    assert!(said.is_empty(), "{version} {name} as {client}: {out:?}");
                    let err = String::from_utf8_lossy(&out.stderr);
                    assert!(
                        err.contains("alert") || err.contains("access denied"),
                        "{version} {name} as {client}: no alert: {err}"
                    );
                }
            }
        }
    }
    // TLS 1.2 and 1.3, three refusals each, each with its line and the name it asked for (a
    // refused handshake has no route on its line: the route is named once a connection is in).
    let refused = server.logs.wait_for_n(&["kind=not_allowed"], 6);
    for sni in ["a.test", "localhost", "b.test"] {
        let n = refused
            .iter()
            .filter(|l| l.contains(&format!(" sni={sni} ")))
            .count();
        assert_eq!(n, 2, "{sni}: {refused:#?}");
    }
    let served = server.logs.wait_for(&["result=ok", "sni=a.test "]);
    assert!(served.contains(" route=a.test "), "{served}");
    assert!(served.contains("CN=api"), "{served}");
}

/// Saves a session from a connection asking for `name`, or offers a saved one: what the
/// upstream said, and whether the session was resumed.
fn resumes(
    server: &Server,
    version: &str,
    name: &str,
    session: &Path,
    save: bool,
) -> (String, bool) {
    let flag = if save { "-sess_out" } else { "-sess_in" };
    let out = s_client_full(
        server.addr,
        &[
            version,
            "-servername",
            name,
            flag,
            session.to_str().unwrap(),
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let reused = text.contains("Reused,");
    let said = ["upstream a", "upstream b", "default"]
        .into_iter()
        .find(|w| text.contains(w))
        .unwrap_or("nothing")
        .to_string();
    (said, reused)
}

#[test]
fn a_session_made_on_one_route_does_not_resume_on_another() {
    let setup = Setup::new();
    let ups = [says("default"), says("upstream a"), says("upstream b")];
    let server = serve(&setup.file(ups, &keys(default_certs()), "", ""));
    for version in ["-tls1_2", "-tls1_3"] {
        let session = setup.dir.path().join(format!("a{version}.pem"));
        assert_eq!(
            resumes(&server, version, "a.test", &session, true),
            ("upstream a".to_string(), false)
        );
        assert_eq!(
            resumes(&server, version, "a.test", &session, false),
            ("upstream a".to_string(), true),
            "{version}: the same route resumes"
        );
        assert_eq!(
            resumes(&server, version, "b.test", &session, false),
            ("upstream b".to_string(), false),
            "{version}: a session of route a.test resumed on b.test"
        );
        assert_eq!(
            resumes(&server, version, "c.test", &session, false),
            ("default".to_string(), false),
            "{version}: a session of route a.test resumed on the default"
        );
    }
}

#[test]
fn bad_route_tables_are_one_line_at_their_position_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let a = write_cert_for(dir.path(), "a.test");
    let service = format!(
        "[[service]]\nname = \"front\"\nlisten = \"127.0.0.1:0\"\n{}",
        keys(default_certs())
    );
    let route = format!("[[service.route]]\nsni = \"a.test\"\n{}", keys(&a));
    let n = service.lines().count();
    for (text, want) in [
        (
            format!("{service}{route}listen = \"127.0.0.1:1\"\n"),
            format!(
                ":{}:1: unknown key 'listen' in [[service.route]] (accepted: name, sni, cert, key, upstream,",
                n + 5
            ),
        ),
        (
            format!("{service}{route}upstream = \"127.0.0.1:1\"\n"),
            format!(
                ":{}:1: route a.test: upstream needs mode = \"forward\" (service 'front' is greet",
                n + 5
            ),
        ),
        (
            format!("{service}{route}{route}"),
            format!(":{}:7: route name 'a.test' is used twice", n + 6),
        ),
        (
            format!("{service}[[service.route]]\nsni = \"a.test\"\n"),
            format!(":{}:7: route a.test needs its own cert and key", n + 2),
        ),
        (
            format!("{service}{route}client-ca = \"ca.pem\"\n"),
            format!(":{}:1: client-ca cannot be a route's own", n + 5),
        ),
    ] {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, &text).unwrap();
        let line = refused_start(&["--config", path.to_str().unwrap()]);
        let want = format!("securesock: error: {}{want}", path.display());
        assert!(
            line.starts_with(&want),
            "{text}\n got: {line}\nwant: {want}"
        );
    }
}

#[test]
fn check_names_each_routes_certificate_and_upstream() {
    let setup = Setup::new();
    let ups = [says("default"), says("upstream a"), says("upstream b")];
    let path = setup.file(ups, &keys(default_certs()), "", "");
    let run = |path: &Path| {
        Command::new(binary())
            .args(["check", "--config"])
            .arg(path)
            .output()
            .unwrap()
    };
    let out = run(&path);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{text}");
    for want in [
        format!(
            "front: ok: sni name a.test is covered by certificate {}",
            setup.a.cert.display()
        ),
        format!(
            "front: ok: sni name *.w.test is covered by certificate {}",
            setup.wild.cert.display()
        ),
        format!("front: ok: upstream {} resolves to {}", ups[2], ups[2]),
    ] {
        assert!(text.contains(&want), "no {want:?} in\n{text}");
    }
    assert!(text.contains(&setup.b.cert.display().to_string()), "{text}");
    // Route b.test's key swapped for a.test's, and its upstream a name that does not resolve.
    let bad = std::fs::read_to_string(&path)
        .unwrap()
        .replace(
            &setup.b.key.display().to_string(),
            &setup.a.key.display().to_string(),
        )
        .replace(&ups[2].to_string(), "no-such-host.invalid:80");
    std::fs::write(&path, bad).unwrap();
    let out = run(&path);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{text}");
    let errors: Vec<&str> = text.lines().filter(|l| l.contains(": error: ")).collect();
    assert!(
        errors
            .iter()
            .any(|l| l.contains(&setup.b.cert.display().to_string())
                || l.contains(&setup.a.key.display().to_string())),
        "{errors:#?}"
    );
    assert!(
        errors.iter().any(|l| l.contains("no-such-host.invalid")),
        "{errors:#?}"
    );
}

/// Connects asking for `name`, presenting the gen-ca.sh client certificate `client`, and echoes
/// once: the handshake is done and the connection is in its data phase (and in the registry).
fn echo_as(server: &Server, name: &str, client: &str) -> SslStream<TcpStream> {
    let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap();
    // The route certificates are self-signed; what is under test is the client's.
    b.set_verify(SslVerifyMode::NONE);
    b.set_certificate_chain_file(mtls(&format!("{client}-cert.pem")))
        .unwrap();
    b.set_private_key_file(mtls(&format!("{client}-key.pem")), SslFiletype::PEM)
        .unwrap();
    let tcp = TcpStream::connect(server.addr).unwrap();
    tcp.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut tls = b.build().connect(name, tcp).unwrap();
    echoes(&mut tls, client.as_bytes());
    tls
}

#[test]
fn a_reload_checks_a_route_s_connections_against_the_route_s_rules() {
    let setup = Setup::new();
    let crl = crate::support::empty_crl_of_test_ca(
        setup.dir.path(),
        "empty-crl.pem",
        &["-crldays", "30"],
    );
    // The service lets in CN=client; route a.test the api workload and CN=revoked; b.test
    // inherits the service's rule.
    let text = format!(
        "[[service]]\nname = \"front\"\nlisten = \"127.0.0.1:0\"\nmode = \"echo\"\n{}client-ca = {:?}\ncrl = {:?}\nallow-cn = \"client\"\n\
         [[service.route]]\nsni = \"a.test\"\n{}allow-uri = \"spiffe://example.org/service/api\"\nallow-cn = \"revoked\"\n\
         [[service.route]]\nsni = \"b.test\"\n{}",
        keys(default_certs()),
        mtls("ca-cert.pem"),
        crl.display().to_string(),
        keys(&setup.a),
        keys(&setup.b),
    );
    let path = setup.dir.path().join("echo.toml");
    std::fs::write(&path, text).unwrap();
    let server = serve(&path);
    let mut api = echo_as(&server, "a.test", "api");
    let mut revoked = echo_as(&server, "a.test", "revoked");
    let mut client = echo_as(&server, "b.test", "client");

    // The CRL now revokes CN=revoked: that connection ends; the api workload's, which the
    // service's own rule would refuse, stays, as its route lets it in.
    let beside = crl.with_extension("new");
    std::fs::write(&beside, std::fs::read(mtls("crl.pem")).unwrap()).unwrap();
    std::fs::rename(&beside, &crl).unwrap();
    server.signal(libc::SIGHUP);
    let line = server.logs.wait_for(&["reload ok"]);
    assert!(
        line.contains("closed 1 connection(s) whose certificate is no longer accepted"),
        "{line}"
    );
    assert_eq!(read_to_close_notify(&mut revoked), b"");
    let conn = server.logs.wait_for(&["conn ", "result=revoked"]);
    assert!(conn.contains("client=\"CN=revoked\""), "{conn}");
    assert!(conn.contains(" route=a.test "), "{conn}");
    echoes(&mut api, b"still here");
    echoes(&mut client, b"still here");
}

#[test]
fn a_route_with_rules_requires_a_certificate_where_the_service_does_not() {
    let setup = Setup::new();
    let ups = [says("default"), says("upstream a"), says("upstream b")];
    // Client certificates are optional on the service and it has no rules; route a.test has.
    let service = format!(
        "{}client-ca = {:?}\n",
        keys(default_certs()),
        mtls("ca-cert.pem")
    );
    let server = serve(&setup.file(ups, &service, "", "allow-cn = \"client\""));
    for version in ["-tls1_3", "-tls1_2"] {
        assert_eq!(reached(&ask(&server, "localhost", &[version])).0, "default");
        assert_eq!(reached(&ask(&server, "b.test", &[version])).0, "upstream b");
        let out = ask(&server, "a.test", &[version]);
        assert!(
            out.stdout.is_empty(),
            "{version}: served without a certificate: {out:?}"
        );
        let err = String::from_utf8_lossy(&out.stderr);
        // Refused in the handshake, with the alert OpenSSL sends for a missing certificate.
        assert!(
            err.contains("certificate required") || err.contains("handshake failure"),
            "{version}: {err}"
        );
        let mut with = as_client("client");
        with.push(version.into());
        let with: Vec<&str> = with.iter().map(String::as_str).collect();
        assert_eq!(reached(&ask(&server, "a.test", &with)).0, "upstream a");
    }
    let refused = server
        .logs
        .wait_for_n(&["result=handshake_failed", "sni=a.test "], 2);
    assert!(
        refused.iter().all(|l| l.contains("kind=client_cert")),
        "{refused:#?}"
    );
}
