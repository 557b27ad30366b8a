//! stunnel's settings as securesock's keys: `[defaults]` for what the global
//! section sets that means the same in every mode (timeouts, protocol versions), one
//! `[[service]]` per section, a section whose `sni = PRIMARY:PATTERN` makes it a name-based
//! virtual service as a `[[service.route]]` of its primary. Owns which stunnel setting becomes
//! which key (the flags' long names, as config/args.rs spells them) and why the others cannot; a
//! key's own meaning and checks stay the flag's (`validate.rs`, when the file is loaded), and the
//! text is `toml_text.rs`'s.

use std::collections::HashSet;
use std::net::IpAddr;

use super::service::{Service, Val};
use super::toml_text::{Table, Value, write_toml};
use super::{At, Finding, Import, ImportError, Parsed};

/// The directories that hold the system's trusted CAs, which securesock's client mode trusts
/// when no upstream-ca is given (OpenSSL's default path on Debian, Ubuntu, Fedora, Alpine).
const SYSTEM_CA_DIRS: [&str; 3] = ["/etc/ssl/certs", "/usr/lib/ssl/certs", "/etc/pki/tls/certs"];

fn s(value: &str) -> Value {
    Value::Str(value.to_string())
}

/// Converts the parsed file.
pub(super) fn convert(parsed: &Parsed) -> Result<Import, ImportError> {
    let mut defaults = Service::default();
    for opt in &parsed.global {
        defaults.apply(opt, parsed, false)?;
    }
    let mut said = std::mem::take(&mut defaults.said);
    let mut services = Vec::new();
    for section in &parsed.sections {
        // A new section starts as a copy of the global section's service-level options.
        let mut service = defaults.clone();
        for opt in &section.options {
            service.apply(opt, parsed, true)?;
        }
        services.push((section, service));
    }
    let shared = shared_keys(&mut defaults);
    said.append(&mut defaults.said);
    if parsed.sections.is_empty() {
        said.push(super::service::Said {
            at: At { file: 0, line: 1 },
            option: "[service]".into(),
            why: "no service section: stunnel would serve one connection on its standard input (inetd mode), which securesock does not".into(),
            left_out: true,
        });
    }

    let mut tables: Vec<(Table, Vec<Table>)> = Vec::new();
    let mut names = HashSet::new();
    let mut primaries: Vec<(String, usize, Service)> = Vec::new();
    for (section, service) in &mut services {
        if is_secondary(service) {
            continue;
        }
        let built = service_tables(&section.name, section.at, service, parsed)?;
        for (i, mut table) in built.into_iter().enumerate() {
            let name = unique(&mut names, &section.name);
            if name != section.name && i == 0 {
                service.note(
                    section.at,
                    &format!("[{}]", section.name),
                    format!("a second section of that name: its service is named {name}"),
                );
            }
            table.insert(0, ("name", Value::Str(name)));
            table.retain(|(k, v)| shared.iter().all(|(sk, sv)| sk != k || sv != v));
            if i == 0 {
                primaries.push((section.name.clone(), tables.len(), service.clone()));
            }
            tables.push((table, Vec::new()));
        }
    }
    for (section, service) in &mut services {
        if is_secondary(service) {
            route(
                section.name.as_str(),
                section.at,
                service,
                &primaries,
                &mut tables,
            );
        }
    }

    for (_, service) in services {
        said.extend(service.said);
    }
    let mut seen = HashSet::new();
    said.retain(|x| seen.insert((x.at, x.option.clone(), x.why.clone())));
    said.sort_by_key(|x| x.at);
    let findings = said
        .into_iter()
        .map(|x| Finding {
            at: parsed.at(x.at),
            option: x.option,
            why: x.why,
            left_out: x.left_out,
        })
        .collect();
    Ok(Import {
        toml: write_toml(&parsed.paths[0].display().to_string(), &shared, &tables),
        findings,
    })
}

fn unique(names: &mut HashSet<String>, name: &str) -> String {
    let mut candidate = name.to_string();
    let mut n = 1;
    while !names.insert(candidate.clone()) {
        n += 1;
        candidate = format!("{name}-{n}");
    }
    candidate
}

/// A server-mode section with `sni = PRIMARY:PATTERN`: a name-based virtual service of another.
fn is_secondary(service: &Service) -> bool {
    !service.client && service.sni.as_ref().is_some_and(|v| v.value.contains(':'))
}

/// The keys that mean the same in every mode, as the global section sets them: `[defaults]`.
fn shared_keys(defaults: &mut Service) -> Table {
    let mut table = Table::new();
    if let Some(profile) = tls_profile(defaults) {
        table.push(("tls-profile", s(profile)));
    }
    timeouts(defaults, &mut table);
    table
}

fn timeouts(service: &Service, table: &mut Table) {
    for (key, val) in [
        ("connect-timeout", &service.timeout_connect),
        ("idle-timeout", &service.timeout_idle),
    ] {
        // apply() checked that the value is a number.
        if let Some(secs) = val.as_ref().and_then(|v| v.value.parse().ok()) {
            table.push((key, Value::Int(secs)));
        }
    }
}

/// sslVersion, sslVersionMin and sslVersionMax as a Mozilla profile.
fn tls_profile(service: &mut Service) -> Option<&'static str> {
    let mut profile = None;
    if let Some(min) = service.ssl_min.clone() {
        if min.value.eq_ignore_ascii_case("TLSv1.3") {
            profile = Some("modern");
        } else if min.value.eq_ignore_ascii_case("TLSv1.2") {
            profile = Some("intermediate");
        } else {
            service.left_out(min.at, &min.option, format!("{}: securesock offers no version below TLS 1.2 (tls-profile intermediate: TLS 1.2 and 1.3)", min.value));
        }
    }
    if let Some(max) = service.ssl_max.clone() {
        let top = ["all", "TLSv1.3"]
            .iter()
            .any(|v| max.value.eq_ignore_ascii_case(v));
        if !top {
            service.left_out(max.at, &max.option, format!("{}: securesock has no highest version below TLS 1.3 (intermediate offers TLS 1.2 and 1.3, modern 1.3 only)", max.value));
        }
    }
    profile
}

/// A `cert` or `key` that names a token (`pkcs11:...`) rather than a file: left out, with the
/// pair, since securesock reads PEM files only.
fn pem_pair(service: &mut Service) -> Option<(Val, Val)> {
    let cert = service.cert.clone()?;
    let key = service.key.clone().unwrap_or_else(|| cert.clone());
    let uri = |v: &Val| {
        !v.value.starts_with('/')
            && v.value.split_once(':').is_some_and(|(scheme, _)| {
                !scheme.is_empty() && scheme.chars().all(|c| c.is_ascii_alphanumeric())
            })
    };
    if uri(&cert) || uri(&key) {
        for val in [cert, key] {
            if uri(&val) {
                service.left_out(val.at, &val.option, "a token URI (an engine's or provider's): securesock loads certificates and keys from PEM files only");
            }
        }
        return None;
    }
    Some((cert, key))
}

fn port(value: &str) -> Result<u16, String> {
    match value.parse::<u16>() {
        Ok(port) if port > 0 => Ok(port),
        _ => Err(format!(
            "{value}: the port must be a number from 1 to 65535 (securesock looks up no service names)"
        )),
    }
}

/// `accept`: `[HOST:]PORT` or a UNIX socket path; no host is every IPv4 address (0.0.0.0), as
/// stunnel's manual says. The note is about an address that changes.
fn listen_address(value: &str) -> Result<(String, Option<String>), String> {
    if value.starts_with('/') {
        return Ok((format!("unix:{value}"), None));
    }
    let (host, p) = value.rsplit_once(':').unwrap_or(("", value));
    let p = port(p)?;
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    match bare.parse::<IpAddr>() {
        _ if bare.is_empty() => Ok((format!("0.0.0.0:{p}"), None)),
        Ok(IpAddr::V4(ip)) => Ok((format!("{ip}:{p}"), None)),
        Ok(IpAddr::V6(ip)) => Ok((format!("[{ip}]:{p}"), None)),
        Err(_) if bare.eq_ignore_ascii_case("localhost") => Ok((
            format!("127.0.0.1:{p}"),
            Some("localhost is listened on as 127.0.0.1 (stunnel binds every address it resolves to, ::1 too)".into()),
        )),
        Err(_) => Err(format!("{host}: securesock listens on an IP address, not a name (write the address the name stands for)")),
    }
}

/// `connect`: `[HOST:]PORT` or a UNIX socket path; no host is localhost, as stunnel's manual says.
fn upstream_address(value: &str) -> Result<String, String> {
    if value.starts_with('/') {
        return Ok(format!("unix:{value}"));
    }
    let (host, p) = value.rsplit_once(':').unwrap_or(("localhost", value));
    let p = port(p)?;
    if host.contains(':') && !host.starts_with('[') {
        return Ok(format!("[{host}]:{p}"));
    }
    Ok(format!("{host}:{p}"))
}

/// `connect` lines as `upstream` (one string, or a list with `balance`), `failover` as balance.
fn upstream(service: &mut Service, table: &mut Table) {
    let mut list = Vec::new();
    for val in service.connect.clone() {
        match upstream_address(&val.value) {
            Ok(address) => list.push(address),
            Err(why) => service.left_out(val.at, &val.option, why),
        }
    }
    let balance = match &service.failover {
        Some(f) if f.value.eq_ignore_ascii_case("rr") => Some("round-robin"),
        Some(_) => Some("priority"),
        None if list.len() > 1 => Some("priority"),
        None => None,
    };
    match list.len() {
        0 => {}
        1 => table.push(("upstream", Value::Str(list.remove(0)))),
        _ => table.push(("upstream", Value::List(list))),
    }
    if let Some(balance) = balance {
        table.push(("balance", s(balance)));
    }
}

/// The section's tables: one per `accept` address (securesock listens on one per service), or
/// none when the service cannot be carried at all.
fn service_tables(
    name: &str,
    at: At,
    service: &mut Service,
    parsed: &Parsed,
) -> Result<Vec<Table>, ImportError> {
    let section = format!("[{name}]");
    if (service.verify_chain || service.verify_peer)
        && service.ca_file.is_none()
        && service.ca_path.is_none()
    {
        return Err(ImportError(format!(
            "{}: {section}: verifyChain or verifyPeer needs CAfile or CApath (stunnel refuses it)",
            parsed.at(at)
        )));
    }
    if service.connect.is_empty() {
        let why = match service.exec {
            Some(_) => "its far end is exec (a program), which securesock does not run",
            None => "it has no connect (stunnel needs two ends)",
        };
        service.left_out(at, &section, why);
        return Ok(Vec::new());
    }
    let mut listens = Vec::new();
    for val in service.accept.clone() {
        match listen_address(&val.value) {
            Ok((address, note)) => {
                if let Some(note) = note {
                    service.note(val.at, &val.option, note);
                }
                if !listens.is_empty() {
                    service.note(val.at, &val.option, format!("securesock listens on one address per service: {address} is a copy of the service, named after it with a number"));
                }
                listens.push(address);
            }
            Err(why) => service.left_out(val.at, &val.option, why),
        }
    }
    if listens.is_empty() {
        service.left_out(at, &section, "no accept address securesock can listen on");
        return Ok(Vec::new());
    }

    let mut table = Table::new();
    table.push(("listen", Value::Str(listens[0].clone())));
    table.push(("mode", s(if service.client { "client" } else { "forward" })));
    upstream(service, &mut table);
    if service.client {
        client_side(at, service, &mut table);
    } else {
        server_side(at, service, &mut table);
    }
    if let Some(protocol) = service.protocol.clone() {
        if protocol.value.eq_ignore_ascii_case("proxy") && !service.client {
            // stunnel's protocol = proxy sends a PROXY v1 header to the connect side.
            table.push(("proxy-protocol", s("v1")));
        } else if protocol.value.eq_ignore_ascii_case("proxy") {
            service.left_out(
                protocol.at,
                &protocol.option,
                "proxy: stunnel sends a PROXY header only in server mode",
            );
        } else {
            service.left_out(protocol.at, &protocol.option, format!("{}: securesock speaks TLS from the first byte and negotiates nothing before it (STARTTLS, CONNECT, SOCKS); point clients at a port where TLS starts at once", protocol.value));
        }
    }
    if let Some(profile) = tls_profile(service) {
        table.push(("tls-profile", s(profile)));
    }
    timeouts(service, &mut table);

    let mut tables = vec![table.clone()];
    for address in &listens[1..] {
        let mut copy = table.clone();
        copy[0].1 = Value::Str(address.clone());
        tables.push(copy);
    }
    Ok(tables)
}

/// A server-mode service: its certificate, and client verification with its allow rules.
fn server_side(at: At, service: &mut Service, table: &mut Table) {
    match pem_pair(service) {
        Some((cert, key)) => {
            table.push(("cert", s(&cert.value)));
            table.push(("key", s(&key.value)));
        }
        None if service.cert.is_some() => {}
        None => service.left_out(at, "cert", "stunnel refuses a server-mode service without cert (securesock would use its default certs/server-cert.pem)"),
    }
    if service.verify_peer {
        pinned(service);
    }
    if !service.verify_chain {
        if service.request_cert && !service.verify_peer {
            let at = service.verify_at.unwrap_or(at);
            service.left_out(at, "requireCert", "stunnel asks for a client certificate it does not verify; securesock verifies every one it asks for (client-ca)");
        }
        return;
    }
    match (service.ca_file.clone(), service.ca_path.clone()) {
        (Some(file), path) => {
            table.push(("client-ca", s(&file.value)));
            if let Some(path) = path {
                service.left_out(path.at, &path.option, "client-ca takes one PEM file, so only CAfile's CAs are trusted: add the directory's certificates to it");
            }
        }
        (None, Some(path)) => service.left_out(path.at, &path.option, "client-ca takes one PEM file, not a directory: concatenate the directory's CA certificates into one (cat DIR/*.pem > FILE) and name it in client-ca"),
        (None, None) => {}
    }
    if service.require_cert {
        table.push(("require-client-cert", Value::Bool(true)));
    }
    if let Some(crl) = &service.crl_file {
        table.push(("crl", s(&crl.value)));
    }
    if let Some(path) = service.crl_path.clone() {
        service.left_out(path.at, &path.option, "crl takes one PEM file, not a directory: concatenate the CRLs into one and name it in crl");
    }
    if !service.check_host.is_empty() {
        let names = service.check_host.iter().map(|v| v.value.clone()).collect();
        table.push(("allow-dns", Value::List(names)));
        let first = service.check_host[0].clone();
        service.note(first.at, &first.option, "as allow-dns, which matches the certificate's DNS names only (stunnel's checkHost also matches the subject CN of a certificate without DNS names: add allow-cn for such clients)");
    }
    for ip in service.check_ip.clone() {
        service.left_out(
            ip.at,
            &ip.option,
            "securesock's allow rules match CN, OU, DNS and URI names, not IP addresses",
        );
    }
}

/// verifyPeer (or verify = 3 or 4): the peer's own certificate pinned in CAfile/CApath.
fn pinned(service: &mut Service) {
    let at = service.verify_at.unwrap_or(At { file: 0, line: 1 });
    service.left_out(at, "verifyPeer", "securesock verifies a chain to a CA, not a pinned peer certificate (a self-signed peer certificate in the CA file is a CA of its own; or pin its name with allow-* or upstream-name)");
}

/// A client-mode service: the upstream's verification and the certificate shown to it.
fn client_side(at: At, service: &mut Service, table: &mut Table) {
    if service.verify_peer {
        pinned(service);
    }
    if let Some(file) = &service.ca_file {
        table.push(("upstream-ca", s(&file.value)));
    }
    if let Some(path) = service.ca_path.clone() {
        let system = SYSTEM_CA_DIRS.contains(&path.value.trim_end_matches('/'));
        if !system || service.ca_file.is_some() {
            service.left_out(path.at, &path.option, "upstream-ca takes one PEM file, not a directory, and replaces the system trust store: concatenate the CA certificates into one file and name it in upstream-ca");
        }
    }
    if !service.verify_chain && !service.verify_peer {
        service.note(at, "verifyChain", "absent, so stunnel does not verify this upstream; securesock always does, against the system trust store (or upstream-ca) and upstream-name");
    }
    let mut name = None;
    for check in service
        .check_host
        .clone()
        .into_iter()
        .chain(service.check_ip.clone())
    {
        if name.is_none() {
            name = Some(check.value.clone());
        } else {
            service.left_out(check.at, &check.option, "securesock checks the upstream's certificate for one name or address (upstream-name), the first given");
        }
    }
    if name.is_none() && service.verify_chain {
        service.note(at, "verifyChain", "without checkHost stunnel checks the chain only; securesock also checks that the certificate is for the host of connect (or upstream-name)");
    }
    if let Some(sni) = service.sni.clone() {
        match &name {
            _ if sni.value.is_empty() => service.left_out(sni.at, &sni.option, "securesock always sends the upstream's name as SNI when it is a DNS name"),
            None => {
                name = Some(sni.value.clone());
                service.note(sni.at, &sni.option, "as upstream-name, which is sent as SNI and is also the name the upstream's certificate must be for");
            }
            Some(n) if *n == sni.value => {}
            Some(_) => service.left_out(sni.at, &sni.option, "securesock sends the name it checks (upstream-name, from checkHost) as SNI, not another"),
        }
    }
    if let Some(name) = name {
        table.push(("upstream-name", Value::Str(name)));
    }
    if let Some((cert, key)) = pem_pair(service) {
        table.push(("upstream-cert", s(&cert.value)));
        table.push(("upstream-key", s(&key.value)));
    }
    for crl in [service.crl_file.clone(), service.crl_path.clone()]
        .into_iter()
        .flatten()
    {
        service.left_out(
            crl.at,
            &crl.option,
            "securesock checks no CRL for the upstream's certificate",
        );
    }
}

/// A secondary (`sni = PRIMARY:PATTERN`) section as a route of its primary's table.
fn route(
    name: &str,
    at: At,
    service: &mut Service,
    primaries: &[(String, usize, Service)],
    tables: &mut [(Table, Vec<Table>)],
) {
    let section = format!("[{name}]");
    let Some(sni) = service.sni.clone() else {
        return;
    };
    let (primary, pattern) = sni.value.split_once(':').unwrap_or((&sni.value, ""));
    let Some((_, index, main)) = primaries.iter().find(|(n, _, _)| n == primary) else {
        service.left_out(
            sni.at,
            &sni.option,
            format!("no server-mode service [{primary}] to be a name of (stunnel refuses it)"),
        );
        return;
    };
    let mut table = Table::new();
    table.push(("sni", s(pattern)));
    // Without a certificate of its own the name is answered with the primary's, as stunnel's
    // secondary context would be by the certificate the listener already has: a route needs one.
    if let Some((cert, key)) = pem_pair(service).or_else(|| pem_pair(&mut main.clone())) {
        table.push(("cert", s(&cert.value)));
        table.push(("key", s(&key.value)));
    }
    if !service.connect.is_empty() {
        upstream(service, &mut table);
    }
    let differs = service.verify_chain != main.verify_chain
        || service.verify_peer != main.verify_peer
        || service.require_cert != main.require_cert
        || service.ca_file.as_ref().map(|v| &v.value) != main.ca_file.as_ref().map(|v| &v.value)
        || service.crl_file.as_ref().map(|v| &v.value) != main.crl_file.as_ref().map(|v| &v.value);
    if differs {
        service.left_out(at, &section, "client verification (CAfile, CRLfile, verify*) is the listener's: the primary's applies to every name; a route has allow rules of its own");
    }
    if main.verify_chain && !service.check_host.is_empty() {
        let names = service.check_host.iter().map(|v| v.value.clone()).collect();
        table.push(("allow-dns", Value::List(names)));
    }
    let same = |a: &Option<Val>, b: &Option<Val>| {
        a.as_ref().map(|v| &v.value) == b.as_ref().map(|v| &v.value)
    };
    let shared = [
        (service.protocol.clone(), &main.protocol, "protocol"),
        (
            service.timeout_idle.clone(),
            &main.timeout_idle,
            "TIMEOUTidle",
        ),
        (
            service.timeout_connect.clone(),
            &main.timeout_connect,
            "TIMEOUTconnect",
        ),
        (service.ssl_min.clone(), &main.ssl_min, "sslVersionMin"),
    ];
    for (mine, theirs, what) in shared {
        if !same(&mine, theirs) {
            let at = mine.as_ref().map_or(at, |v| v.at);
            service.left_out(
                at,
                what,
                format!("a route shares its service's {what}: [{primary}]'s applies"),
            );
        }
    }
    for val in service.accept.clone() {
        service.left_out(
            val.at,
            &val.option,
            format!("a name-based service is reached through [{primary}]'s listener"),
        );
    }
    if service.connect.is_empty() && service.exec.is_some() {
        service.left_out(
            at,
            &section,
            "its far end is exec (a program), which securesock does not run",
        );
    }
    tables[*index].1.push(table);
}
