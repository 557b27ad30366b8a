//! A service's `[[service.route]]` tables: each a server name (exact or `*.domain`) inside the
//! service's listener, with its own certificate and key, and optionally its own upstream set
//! (forward mode) and access rules, read into [`Route`]s.
//!
//! Keys are the flags' long names ([`ROUTE_KEYS`]), their values taken by the same clap parsers
//! as a service's; what a route may not have (its own client CA, a listen address) is refused
//! with the key's position and what a route accepts. Owns a route table's shape and the checks
//! between routes (duplicate names, a name an `--sni` entry already has); never reads a file and
//! imports nothing from the crate above `config`.

use std::collections::HashMap;
use std::ops::Range;

use toml::{Spanned, Value};

use super::super::keys::{NAME, Place, ROUTE_KEYS, service_name, type_name, unknown};
use super::super::types::{AccessRules, Mode, Route, RouteTls, Service};
use super::super::validate::{SNI_NAME, sni_name, upstream_set};
use super::{Entry, Flags, Located, Table, at};

/// The key a route table is found by.
const SNI: &str = "sni";

/// The client-verification keys a route cannot have: one listener verifies every client against
/// one trust store before it knows which route the client is for.
const VERIFICATION_KEYS: [&str; 3] = ["client-ca", "require-client-cert", "crl"];

/// Every route table of `service`, checked against the service and each other.
pub(super) fn routes(
    flags: &Flags,
    tables: &[Spanned<Table>],
    service: &Service,
) -> Result<Vec<Route>, Located> {
    let Some(first) = tables.first() else {
        return Ok(Vec::new());
    };
    if matches!(service.mode, Mode::Client { .. }) {
        return Err(at(
            first.span(),
            "[[service.route]] needs a TLS listener: client mode's listener is plaintext, with no server name to route by",
        ));
    }
    let mut routes: Vec<Route> = Vec::with_capacity(tables.len());
    let mut names: HashMap<String, ()> = HashMap::new();
    for table in tables {
        let (route, name_at, sni_at) = one(flags, table, service)?;
        if names.insert(route.tls.name.clone(), ()).is_some() {
            return Err(at(
                name_at,
                format!(
                    "route name '{}' is used twice in service '{}' (each [[service.route]] needs its own name; without name = \"...\", its sni names it)",
                    route.tls.name, service.name
                ),
            ));
        }
        if let Some(other) = routes.iter().find(|r| r.tls.sni == route.tls.sni) {
            return Err(at(
                sni_at,
                format!(
                    "sni {} has two routes in service '{}' (route '{}' has it already)",
                    route.tls.sni, service.name, other.tls.name
                ),
            ));
        }
        if service.tls.sni.iter().any(|s| s.name == route.tls.sni) {
            return Err(at(
                sni_at,
                format!(
                    "sni {} is both a route and an --sni entry of service '{}' (keep one: the route has the certificate too)",
                    route.tls.sni, service.name
                ),
            ));
        }
        routes.push(route);
    }
    Ok(routes)
}

/// One route table: the route, where its name stands and where its sni stands.
fn one(
    flags: &Flags,
    table: &Spanned<Table>,
    service: &Service,
) -> Result<(Route, Range<usize>, Range<usize>), Located> {
    let mut name: Option<(String, Range<usize>)> = None;
    let mut sni: Option<(String, Range<usize>)> = None;
    let mut entries: Vec<Entry> = Vec::new();
    for (key, value) in table.get_ref() {
        let k = key.get_ref().as_str();
        if VERIFICATION_KEYS.contains(&k) {
            return Err(at(
                key.span(),
                format!(
                    "{k} cannot be a route's own: a listener verifies every client against the service's client-ca before it knows the route (set it in the [[service]]; a route's allow-cn/-ou/-dns/-uri choose among those clients)"
                ),
            ));
        }
        if !ROUTE_KEYS.contains(&k) {
            return Err(at(key.span(), unknown(k, Place::Route, &ROUTE_KEYS)));
        }
        if k == NAME || k == SNI {
            let Value::String(text) = value.get_ref() else {
                return Err(at(
                    value.span(),
                    format!("{k} takes a string, not {}", type_name(value.get_ref())),
                ));
            };
            if k == NAME {
                service_name(text).map_err(|e| at(value.span(), format!("route {e}")))?;
                name = Some((text.clone(), value.span()));
            } else {
                let checked = sni_name(text)
                    .ok_or_else(|| at(value.span(), format!("bad sni '{text}': {SNI_NAME}")))?;
                sni = Some((checked, value.span()));
            }
            continue;
        }
        entries.push(flags.entry(key, value)?);
    }
    let Some((sni, sni_at)) = sni else {
        return Err(at(
            table.span(),
            "a [[service.route]] without sni (each route needs sni = \"NAME\" or \"*.DOMAIN\", cert and key)",
        ));
    };
    let given = |key: &str| entries.iter().find(|e| e.key == key);
    if given("cert").is_none() || given("key").is_none() {
        return Err(at(
            sni_at,
            format!(
                "route {sni} needs its own cert and key (a name without a certificate of its own is the service's: no route needed)"
            ),
        ));
    }
    let args = flags.parse(&entries, table.span())?;
    let upstream = match given("upstream") {
        None => {
            if let Some(balance) = given("balance") {
                return Err(at(
                    balance.key_at.clone(),
                    format!("route {sni}: balance goes with the route's own upstream"),
                ));
            }
            None
        }
        Some(entry) => {
            let Mode::Forward { upstream: own, .. } = &service.mode else {
                return Err(at(
                    entry.key_at.clone(),
                    format!(
                        "route {sni}: upstream needs mode = \"forward\" (service '{}' is {}: its connections go to no upstream)",
                        service.name,
                        service.mode.name()
                    ),
                ));
            };
            let mut set = upstream_set(&args.upstream)
                .map_err(|e| at(entry.value_at.clone(), format!("route {sni}: {e}")))?;
            // A route's set differs in its addresses (and balance, when given); how long a failed
            // address is skipped and how often names resolve again are the service's.
            if given("balance").is_none() {
                set.balance = own.balance;
            }
            set.retry = own.retry;
            set.resolve = own.resolve;
            Some(set)
        }
    };
    let rules = &args.client_auth;
    let allow = AccessRules {
        cn: rules.allow_cn.clone(),
        ou: rules.allow_ou.clone(),
        dns: nonempty(&rules.allow_dns),
        uri: nonempty(&rules.allow_uri),
    };
    let rule_keys = ["allow-cn", "allow-ou", "allow-dns", "allow-uri"];
    let allow = match rule_keys.iter().find_map(|k| given(k)) {
        None => None,
        Some(entry) => {
            if service.tls.client_auth.is_none() {
                return Err(at(
                    entry.key_at.clone(),
                    format!(
                        "route {sni}: {} needs client-ca in service '{}' (the rules choose among clients verified against it)",
                        entry.key, service.name
                    ),
                ));
            }
            if let Some(empty) = allow
                .cn
                .iter()
                .chain(&allow.ou)
                .find(|v| v.trim().is_empty())
            {
                return Err(at(
                    entry.value_at.clone(),
                    format!("route {sni}: allow-cn/allow-ou value '{empty}' is empty"),
                ));
            }
            Some(allow)
        }
    };
    let (name, name_at) = name.unwrap_or_else(|| (sni.clone(), sni_at.clone()));
    let route = Route {
        tls: RouteTls {
            name,
            sni,
            cert: args.tls.cert,
            key: args.tls.key,
            allow,
        },
        upstream,
    };
    Ok((route, name_at, sni_at))
}

/// A list's values without the empty ones, as the flags' lists are read.
fn nonempty(values: &[String]) -> Vec<String> {
    values
        .iter()
        .filter(|v| !v.trim().is_empty())
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::{line_column, parse};
    use crate::config::{AccessRules, Balance};

    const SERVICE: &str = "[[service]]\nname = \"web\"\nmode = \"forward\"\nupstream = [\"127.0.0.1:80\", \"127.0.0.1:81\"]\nbalance = \"round-robin\"\nupstream-retry = 3\nclient-ca = \"ca.pem\"\nallow-cn = \"svc\"\n";

    fn refused(text: &str) -> String {
        let e = parse(text).unwrap_err();
        let (line, column) = line_column(text, e.at.start);
        format!("{line}:{column}: {}", e.what)
    }

    #[test]
    fn routes_have_their_certificate_upstream_and_rules_and_inherit_the_rest() {
        let config = parse(&format!(
            "{SERVICE}[[service.route]]\nsni = \"A.test\"\ncert = \"a.pem\"\nkey = \"a.key\"\nupstream = \"127.0.0.1:9001\"\nallow-uri = [\"spiffe://x/a\"]\n\
             [[service.route]]\nname = \"wild\"\nsni = \"*.b.test\"\ncert = \"b.pem\"\nkey = \"b.key\"\nupstream = [\"127.0.0.1:9002\", \"127.0.0.1:9003\"]\nbalance = \"priority\"\n\
             [[service.route]]\nsni = \"c.test\"\ncert = \"c.pem\"\nkey = \"c.key\"\n"
        ))
        .unwrap();
        let service = &config.services[0];
        let routes = &service.routes;
        assert_eq!(routes.len(), 3);
        assert_eq!(
            (routes[0].tls.name.as_str(), routes[0].tls.sni.as_str()),
            ("a.test", "a.test")
        );
        let up = routes[0].upstream.as_ref().unwrap();
        assert_eq!(up.addrs, ["127.0.0.1:9001"]);
        assert_eq!(up.balance, Balance::RoundRobin, "the service's balance");
        assert_eq!(up.retry, std::time::Duration::from_secs(3));
        assert_eq!(
            routes[0].tls.allow,
            Some(AccessRules {
                uri: vec!["spiffe://x/a".into()],
                ..AccessRules::default()
            })
        );
        assert_eq!(routes[1].tls.name, "wild");
        assert_eq!(
            routes[1].upstream.as_ref().unwrap().balance,
            Balance::Priority
        );
        assert_eq!(routes[1].tls.allow, None, "the service's rules");
        assert_eq!(routes[2].upstream, None, "the service's upstream");
        let tls: Vec<_> = routes.iter().map(|r| r.tls.clone()).collect();
        assert_eq!(service.tls.routes, tls);
        assert!(
            service
                .tls
                .files()
                .contains(&std::path::PathBuf::from("b.key"))
        );
    }

    #[test]
    fn each_bad_route_is_one_line_at_its_line_and_column() {
        let route = "[[service.route]]\nsni = \"a.test\"\ncert = \"a.pem\"\nkey = \"a.key\"\n";
        let n = SERVICE.lines().count();
        for (text, want) in [
            (
                format!("{SERVICE}{route}listen = \"127.0.0.1:1\"\n"),
                format!(
                    "{}:1: unknown key 'listen' in [[service.route]] (accepted: name, sni, cert, key, upstream, balance, allow-cn, allow-ou, allow-dns, allow-uri)",
                    n + 5
                ),
            ),
            (
                format!("{SERVICE}{route}upstrem = \"127.0.0.1:1\"\n"),
                format!(
                    "{}:1: unknown key 'upstrem' in [[service.route]] (did you mean 'upstream'?)",
                    n + 5
                ),
            ),
            (
                format!("{SERVICE}{route}client-ca = \"other.pem\"\n"),
                format!("{}:1: client-ca cannot be a route's own", n + 5),
            ),
            (
                format!("{SERVICE}[[service.route]]\nsni = \"a b\"\n"),
                format!("{}:7: bad sni 'a b': the name must be a DNS name", n + 2),
            ),
            (
                format!("{SERVICE}[[service.route]]\nsni = 7\n"),
                format!("{}:7: sni takes a string, not an integer", n + 2),
            ),
            (
                format!("{SERVICE}[[service.route]]\ncert = \"a.pem\"\n"),
                format!("{}:1: a [[service.route]] without sni", n + 1),
            ),
            (
                format!("{SERVICE}[[service.route]]\nsni = \"a.test\"\ncert = \"a.pem\"\n"),
                format!("{}:7: route a.test needs its own cert and key", n + 2),
            ),
            (
                format!("{SERVICE}{route}upstream = \"nope\"\n"),
                format!(
                    "{}:12: route a.test: bad upstream 'nope': expected HOST:PORT",
                    n + 5
                ),
            ),
            (
                format!("{SERVICE}{route}upstream = 9\n"),
                format!(
                    "{}:12: upstream takes a string, or an array of them, not an integer",
                    n + 5
                ),
            ),
            (
                format!("{SERVICE}{route}balance = \"random\"\n"),
                format!("{}:11: invalid value 'random' for '--balance", n + 5),
            ),
            (
                format!("{SERVICE}{route}balance = \"priority\"\n"),
                format!(
                    "{}:1: route a.test: balance goes with the route's own upstream",
                    n + 5
                ),
            ),
            (
                format!("[[service]]\nname = \"g\"\n{route}upstream = \"127.0.0.1:1\"\n"),
                "7:1: route a.test: upstream needs mode = \"forward\" (service 'g' is greet"
                    .to_string(),
            ),
            (
                format!("[[service]]\nname = \"e\"\nmode = \"echo\"\n{route}allow-cn = \"x\"\n"),
                "8:1: route a.test: allow-cn needs client-ca in service 'e'".to_string(),
            ),
            (
                format!(
                    "[[service]]\nname = \"c\"\nmode = \"client\"\nupstream = \"127.0.0.1:1\"\n{route}"
                ),
                "5:1: [[service.route]] needs a TLS listener".to_string(),
            ),
            (
                format!("{SERVICE}{route}{route}"),
                format!(
                    "{}:7: route name 'a.test' is used twice in service 'web'",
                    n + 6
                ),
            ),
            (
                format!("{SERVICE}{route}name = \"x\"\n{route}name = \"y\"\n"),
                format!(
                    "{}:7: sni a.test has two routes in service 'web' (route 'x' has it already)",
                    n + 7
                ),
            ),
            (
                format!("{SERVICE}sni = \"a.test=s.pem,s.key\"\n{route}"),
                format!(
                    "{}:7: sni a.test is both a route and an --sni entry of service 'web'",
                    n + 3
                ),
            ),
            (
                format!("{SERVICE}{route}name = \"a b\"\n"),
                format!("{}:8: route name 'a b' holds ' '", n + 5),
            ),
            (
                format!("{SERVICE}route = \"x\"\n"),
                format!("{}:9: ", n + 1),
            ),
        ] {
            let line = refused(&text);
            assert!(
                line.starts_with(&want),
                "{text}\n got: {line}\nwant: {want}"
            );
            assert!(!line.contains('\n'), "{text:?}: {line}");
        }
    }
}
