//! The converter on texts in memory: stunnel's syntax, its defaults and the keys each option
//! becomes.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use super::{Files, Import, ImportError, import};

/// Files in memory: a path to its text; a directory is every path under it.
struct Memory(BTreeMap<PathBuf, String>);

impl Files for Memory {
    fn read(&mut self, path: &Path) -> io::Result<String> {
        self.0
            .get(path)
            .cloned()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    }

    fn list(&mut self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        let mut found: Vec<PathBuf> = self
            .0
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .cloned()
            .collect();
        // Reverse, so that the converter's own sorting is what puts them in order.
        found.reverse();
        Ok(found)
    }
}

fn convert_files(files: &[(&str, &str)]) -> Result<Import, ImportError> {
    let mut memory = Memory(
        files
            .iter()
            .map(|(p, t)| (PathBuf::from(p), t.to_string()))
            .collect(),
    );
    import(Path::new(files[0].0), &mut memory)
}

fn convert(text: &str) -> Import {
    convert_files(&[("/s.conf", text)]).unwrap()
}

fn lines(import: &Import) -> Vec<String> {
    import.findings.iter().map(|f| f.to_string()).collect()
}

#[test]
fn a_server_service_is_forward_mode_with_stunnels_address_defaults() {
    let out =
        convert("\u{feff}[imaps]\naccept = 993\nconnect = 143\ncert = /etc/stunnel/stunnel.pem\n");
    assert!(out.complete(), "{:?}", lines(&out));
    assert!(out.toml.contains("[[service]]\nname = \"imaps\"\nlisten = \"0.0.0.0:993\"\nmode = \"forward\"\nupstream = \"localhost:143\"\ncert = \"/etc/stunnel/stunnel.pem\"\nkey = \"/etc/stunnel/stunnel.pem\"\n"), "{}", out.toml);
}

#[test]
fn option_names_ignore_case_and_global_service_options_are_every_services() {
    let out = convert(
        "CERT = /c.pem\nKey = /k.pem\nTIMEOUTidle = 600\n[a]\naccept = :::443\nconnect = 10.0.0.1:80\n[b]\nclient = yes\naccept = 127.0.0.1:6379\nconnect = redis:6380\n",
    );
    assert!(
        out.toml.contains("[defaults]\nidle-timeout = 600\n"),
        "{}",
        out.toml
    );
    assert!(out.toml.contains("listen = \"[::]:443\"\nmode = \"forward\"\nupstream = \"10.0.0.1:80\"\ncert = \"/c.pem\"\nkey = \"/k.pem\"\n"), "{}", out.toml);
    assert!(out.toml.contains("mode = \"client\"\nupstream = \"redis:6380\"\nupstream-cert = \"/c.pem\"\nupstream-key = \"/k.pem\"\n"), "{}", out.toml);
    assert!(
        !out.toml
            .contains("idle-timeout = 600\n\n[[service]]\nname = \"b\"")
    );
}

#[test]
fn an_option_not_carried_is_named_with_its_line_and_a_global_option_in_a_section_is_refused() {
    let out = convert(
        "pid = /run/stunnel.pid\nforeground = yes\n[s]\naccept = 465\nconnect = 25\ncert = /c\nciphers = HIGH\nprotocol = smtp\n",
    );
    assert!(!out.complete());
    let said = lines(&out);
    assert!(
        said[0].starts_with("/s.conf:1: pid not carried: "),
        "{said:?}"
    );
    assert!(
        said[1].starts_with("/s.conf:7: ciphers not carried: "),
        "{said:?}"
    );
    assert!(
        said[2].starts_with("/s.conf:8: protocol not carried: smtp: "),
        "{said:?}"
    );
    assert_eq!(said.len(), 3, "{said:?}");
    let err = convert_files(&[("/s.conf", "[s]\npid = /x\n")]).unwrap_err();
    assert!(
        err.0
            .starts_with("/s.conf:2: \"pid = /x\": a global option"),
        "{err}"
    );
    let err = convert_files(&[("/s.conf", "[s]\nclient = maybe\n")]).unwrap_err();
    assert!(err.0.contains("/s.conf:2:"), "{err}");
    let err = convert_files(&[("/s.conf", "[s]\naccept 443\n")]).unwrap_err();
    assert_eq!(err.0, "/s.conf:2: \"accept 443\": no '=' found");
}

#[test]
fn include_reads_a_directory_in_name_order_in_place() {
    let out = convert_files(&[
        ("/s.conf", "include = /d\n"),
        ("/d/00-global.conf", "TIMEOUTconnect = 3\n"),
        ("/d/01-a.conf", "[a]\naccept = 1\nconnect = 2\ncert = /c\n"),
        ("/d/02-b.conf", "[b]\naccept = 3\nconnect = 4\ncert = /c\n"),
    ])
    .unwrap();
    let a = out.toml.find("name = \"a\"").unwrap();
    let b = out.toml.find("name = \"b\"").unwrap();
    assert!(
        a < b && out.toml.contains("[defaults]\nconnect-timeout = 3\n"),
        "{}",
        out.toml
    );
    let err =
        convert_files(&[("/s.conf", "include = /s\n"), ("/s/x", "include = /s\n")]).unwrap_err();
    assert!(err.0.contains("nested more than"), "{err}");
}

#[test]
fn several_connects_are_an_upstream_list_and_failover_is_balance() {
    let out = convert(
        "[s]\naccept = 127.0.0.1:8443\nconnect = 10.0.0.5:8080\nconnect = 10.0.0.6:8080\ncert = /c\nfailover = rr\n",
    );
    assert!(
        out.toml.contains(
            "upstream = [\"10.0.0.5:8080\", \"10.0.0.6:8080\"]\nbalance = \"round-robin\"\n"
        ),
        "{}",
        out.toml
    );
    let out = convert("[s]\naccept = 8443\nconnect = a:1\nconnect = b:1\ncert = /c\n");
    assert!(
        out.toml.contains("balance = \"priority\"\n"),
        "{}",
        out.toml
    );
}

#[test]
fn server_verification_is_client_ca_with_required_certificates_crl_and_allow_dns() {
    let out = convert(
        "[s]\naccept = 443\nconnect = 80\ncert = /c\nkey = /k\nCAfile = /ca\nverifyChain = yes\nCRLfile = /crl\ncheckHost = client.example\n",
    );
    assert!(out.toml.contains("client-ca = \"/ca\"\nrequire-client-cert = true\ncrl = \"/crl\"\nallow-dns = [\"client.example\"]\n"), "{}", out.toml);
    assert!(out.complete(), "{:?}", lines(&out));
    let out = convert(
        "[s]\naccept = 443\nconnect = 80\ncert = /c\nCAfile = /ca\nverifyChain = yes\nrequireCert = no\n",
    );
    assert!(
        out.toml.contains("client-ca = \"/ca\"\n") && !out.toml.contains("require-client-cert"),
        "{}",
        out.toml
    );
    let out =
        convert("[s]\naccept = 443\nconnect = 80\ncert = /c\nCApath = /cas\nverifyPeer = yes\n");
    // verifyPeer alone: no chain is verified, so the pin is the one thing left out.
    assert_eq!(
        out.findings.iter().filter(|f| f.left_out).count(),
        1,
        "{:?}",
        lines(&out)
    );
}

#[test]
fn client_verification_is_upstream_ca_and_name_and_sni_is_the_name_sent() {
    let out = convert(
        "[pg]\nclient = yes\naccept = 127.0.0.1:5432\nconnect = db.example:5433\nCAfile = /ca\nverifyChain = yes\ncheckHost = db.example\nsni = db.example\n",
    );
    assert!(out.complete(), "{:?}", lines(&out));
    assert!(
        out.toml
            .contains("upstream-ca = \"/ca\"\nupstream-name = \"db.example\"\n"),
        "{}",
        out.toml
    );
    let out = convert(
        "[x]\nclient = yes\naccept = 1\nconnect = h:2\nCApath = /etc/ssl/certs\nverifyChain = yes\ncheckIP = 10.1.1.1\n",
    );
    assert!(
        out.complete()
            && out.toml.contains("upstream-name = \"10.1.1.1\"\n")
            && !out.toml.contains("upstream-ca"),
        "{}",
        out.toml
    );
    let out = convert(
        "[x]\nclient = yes\naccept = 1\nconnect = h:2\nsni = other\ncheckHost = h\nCAfile = /ca\nverifyChain = yes\n",
    );
    assert!(
        lines(&out)
            .iter()
            .any(|l| l.starts_with("/s.conf:5: sni not carried")),
        "{:?}",
        lines(&out)
    );
}

#[test]
fn a_server_sni_section_is_a_route_of_its_primary() {
    let out = convert(
        "[tls]\naccept = 443\nconnect = 80\ncert = /default.pem\n[api]\nsni = tls:api.example.com\nconnect = 127.0.0.1:9000\ncert = /api.pem\nkey = /api.key\n",
    );
    assert!(out.complete(), "{:?}", lines(&out));
    assert!(out.toml.contains("\n  [[service.route]]\n  sni = \"api.example.com\"\n  cert = \"/api.pem\"\n  key = \"/api.key\"\n  upstream = \"127.0.0.1:9000\"\n"), "{}", out.toml);
    assert!(!out.toml.contains("name = \"api\""));
}

#[test]
fn protocol_proxy_and_ssl_versions() {
    let out = convert(
        "[s]\naccept = 443\nconnect = 80\ncert = /c\nprotocol = proxy\nsslVersionMin = TLSv1.3\n",
    );
    assert!(
        out.toml
            .contains("proxy-protocol = \"v1\"\ntls-profile = \"modern\"\n"),
        "{}",
        out.toml
    );
    let out = convert("sslVersionMin = TLSv1.2\n[s]\naccept = 443\nconnect = 80\ncert = /c\n");
    assert!(
        out.toml
            .contains("[defaults]\ntls-profile = \"intermediate\"\n"),
        "{}",
        out.toml
    );
    let out = convert("[s]\naccept = 443\nconnect = 80\ncert = /c\nsslVersion = TLSv1\n");
    assert_eq!(
        out.findings.iter().filter(|f| f.left_out).count(),
        2,
        "{:?}",
        lines(&out)
    );
}

#[test]
fn exec_services_are_left_out_and_several_accepts_are_copies() {
    let out = convert(
        "[shell]\naccept = 1337\nexec = /bin/sh\nexecArgs = sh -i\n[two]\naccept = 1\naccept = 127.0.0.1:2\nconnect = 3\ncert = /c\n",
    );
    assert!(!out.toml.contains("shell"), "{}", out.toml);
    assert!(
        out.toml
            .contains("name = \"two-2\"\nlisten = \"127.0.0.1:2\"\n"),
        "{}",
        out.toml
    );
    assert_eq!(
        out.findings.iter().filter(|f| f.left_out).count(),
        3,
        "{:?}",
        lines(&out)
    );
}

#[test]
fn names_and_paths_are_quoted_so_the_output_parses() {
    let out = convert("[we\"ird\\name\u{7}]\naccept = 1\nconnect = 2\ncert = /c \"x\".pem\n");
    let doc: toml::Table = out
        .toml
        .parse()
        .unwrap_or_else(|e| panic!("{e}\n{}", out.toml));
    let service = &doc["service"].as_array().unwrap()[0];
    assert_eq!(service["name"].as_str(), Some("we\"ird\\name\u{7}"));
    assert_eq!(service["cert"].as_str(), Some("/c \"x\".pem"));
}

#[test]
fn comments_are_skipped_even_with_an_equals_sign() {
    let out = convert(
        "; setuid = nobody\n# pid = /run/x.pid\n  ;[commented]\n[s]\n   ; ciphers = HIGH\naccept = 1\nconnect = 2\ncert = /c\n",
    );
    assert!(out.complete(), "{:?}", lines(&out));
    assert!(!out.toml.contains("commented"), "{}", out.toml);
}

#[test]
fn a_service_that_sets_a_default_key_itself_keeps_its_own_value() {
    let out = convert(
        "TIMEOUTidle = 600\n[a]\naccept = 1\nconnect = 2\ncert = /c\nTIMEOUTidle = 30\n[b]\naccept = 3\nconnect = 4\ncert = /c\n",
    );
    let doc: toml::Table = out.toml.parse().unwrap();
    let services = doc["service"].as_array().unwrap();
    assert_eq!(doc["defaults"]["idle-timeout"].as_integer(), Some(600));
    assert_eq!(services[0]["idle-timeout"].as_integer(), Some(30));
    assert!(services[1].get("idle-timeout").is_none(), "{}", out.toml);
}

#[test]
fn two_sections_of_one_name_are_two_services_and_a_note() {
    let out = convert(
        "[s]\naccept = 1\nconnect = 2\ncert = /c\n[s]\naccept = 3\nconnect = 4\ncert = /c\n",
    );
    assert!(
        out.toml.contains("name = \"s\"\n") && out.toml.contains("name = \"s-2\"\n"),
        "{}",
        out.toml
    );
    assert!(out.complete());
    assert_eq!(
        lines(&out),
        ["/s.conf:5: note: [s]: a second section of that name: its service is named s-2"]
    );
}

#[test]
fn a_server_sni_section_without_a_certificate_of_its_own_answers_with_its_primarys() {
    let out = convert(
        "[tls]\naccept = 443\ncert = /main.pem\nkey = /main.key\nconnect = 8080\n[api]\nsni = tls:api.example.com\nconnect = 127.0.0.1:9000\n",
    );
    assert!(out.complete(), "{:?}", lines(&out));
    assert!(
        out.toml.contains(
            "\n  [[service.route]]\n  sni = \"api.example.com\"\n  cert = \"/main.pem\"\n  key = \"/main.key\"\n  upstream = \"127.0.0.1:9000\"\n"
        ),
        "{}",
        out.toml
    );
}
