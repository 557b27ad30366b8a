//! `--config FILE`: a TOML file whose keys are the long flags' names, turned into the same raw
//! [`Args`] the command line fills and checked by the same functions.
//!
//! The shape: an optional `[process]` table (the process-wide keys: `metrics-listen`,
//! `log-failed-handshakes`, and `max-connections` as a cap over every service), an optional
//! `[defaults]` table (any service key, inherited by every service), and `[[service]]` tables,
//! each with a unique `name` and any service key, and its `[[service.route]]` tables (SNI routes,
//! read by `route.rs` beside this file). A key's value is what the flag takes: a string,
//! a number where the flag takes a number (or its string form), a boolean where the flag is a
//! switch (or one of the strings the switch's variable takes), and an array where the flag is
//! repeatable (or one string). The key list is the flags' list, read from clap, so a new flag is a
//! new key.
//!
//! How: each table becomes the command line it stands for (`--KEY=VALUE` words) and goes through
//! clap's own parsers (with the environment variables switched off: the file is the whole
//! configuration) and then [`Args::validate`], so the flags' meaning, defaults, checks and
//! messages are the file's. Every refusal is one line with the file, line and column of the key or
//! value at fault (`keys.rs` knows the keys and their types). Owns the file's shape, turning
//! tables into words and its errors' positions; never checks a value itself
//! (clap and `validate.rs` do), reads no file but the one (through `read.rs`), and imports nothing
//! from the crate above `config`.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::ops::Range;
use std::path::Path;

use clap::{Arg, CommandFactory, FromArgMatches};
use serde::Deserialize;
use toml::{Spanned, Value};

use super::args::Args;
use super::errors::ArgsError;
use super::keys::{
    Kind, NAME, NOT_KEYS, PROCESS_ONLY, PROCESS_TOO, Place, ROUTE, is_service_key, key_takes, kind,
    service_name, switch, type_name, unknown,
};

mod route;
use super::types::{Config, Listen, Process, Service};

/// One table's keys and their values, with where each stands in the file.
type Table = BTreeMap<Spanned<String>, Spanned<Value>>;

/// The whole file, as serde reads it: any other top-level key is refused with its position.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    process: Option<Spanned<Table>>,
    defaults: Option<Spanned<Table>>,
    #[serde(default)]
    service: Vec<Spanned<Table>>,
}

/// The file again, for each service's `[[service.route]]` tables alone: read this way, every key
/// and value inside a route keeps its position, which a nested value of [`Table`] does not.
#[derive(Deserialize)]
struct RouteDocument {
    #[serde(default)]
    service: Vec<ServiceRoutes>,
}

#[derive(Deserialize)]
struct ServiceRoutes {
    #[serde(default)]
    route: Vec<Spanned<Table>>,
}

/// A refusal and the bytes of the file it is about.
#[derive(Debug)]
struct Located {
    at: Range<usize>,
    what: String,
}

fn at(span: Range<usize>, what: impl Into<String>) -> Located {
    Located {
        at: span,
        what: what.into(),
    }
}

/// The 1-based line and column (in characters) of byte `offset` of `text`.
pub(super) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..floor_char_boundary(text, offset)];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line, column)
}

fn floor_char_boundary(text: &str, offset: usize) -> usize {
    let mut at = offset.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// Reads `--config FILE` into the configuration it describes, or one line
/// `FILE:LINE:COLUMN: what is wrong (what is accepted)`.
pub(super) fn load(path: &Path) -> Result<Config, String> {
    let text = super::read::read_config(path)?;
    parse(&text).map_err(|e| {
        let (line, column) = line_column(&text, e.at.start);
        format!("{}:{line}:{column}: {}", path.display(), e.what)
    })
}

/// A key given in a table: where it stands and the command-line words it stands for.
#[derive(Debug, Clone)]
struct Entry {
    key: String,
    key_at: Range<usize>,
    value_at: Range<usize>,
    words: Vec<OsString>,
}

/// A `[[service]]` table read, before its values are checked.
struct ServiceTable {
    name: String,
    /// Where the service is named (or its table, when the name is missing): what a refusal about
    /// the service as a whole points at.
    at: Range<usize>,
    entries: Vec<Entry>,
}

/// The text of a file, parsed and checked.
fn parse(text: &str) -> Result<Config, Located> {
    let doc: Document = toml::from_str(text).map_err(|e| {
        at(
            e.span().unwrap_or(0..0),
            e.message().trim().replace('\n', "; "),
        )
    })?;
    let routes: RouteDocument = toml::from_str(text).map_err(|e| {
        at(
            e.span().unwrap_or(0..0),
            e.message().trim().replace('\n', "; "),
        )
    })?;
    let flags = Flags::new();
    let process = match &doc.process {
        Some(table) => flags.process(table)?,
        None => flags.process(&Spanned::new(0..0, Table::new()))?,
    };
    let defaults = match &doc.defaults {
        Some(table) => flags.entries(table, Place::Defaults)?,
        None => Vec::new(),
    };
    if doc.service.is_empty() {
        return Err(at(
            0..0,
            "no [[service]] table (a configuration file needs at least one, with name and its keys)",
        ));
    }
    let mut names: HashMap<String, Range<usize>> = HashMap::new();
    let mut services: Vec<Service> = Vec::with_capacity(doc.service.len());
    for (i, table) in doc.service.iter().enumerate() {
        let route_tables = routes.service.get(i).map_or(&[][..], |s| &s.route[..]);
        let table = flags.service(table, &defaults)?;
        if let Some(first) = names.get(&table.name) {
            let (line, _) = line_column(text, first.start);
            return Err(at(
                table.at,
                format!(
                    "service name '{}' is used twice (first on line {line}; each [[service]] needs its own name)",
                    table.name
                ),
            ));
        }
        names.insert(table.name.clone(), table.at.clone());
        let mut service = flags.validate(&table)?;
        service.routes = route::routes(&flags, route_tables, &service)?;
        service.tls.routes = service.routes.iter().map(|r| r.tls.clone()).collect();
        // Port 0 is a fresh port for each socket, so services on it never collide.
        let any_port = matches!(&service.listen, Listen::Tcp(a) if a.port() == 0);
        if let Some(other) = services
            .iter()
            .find(|s| !any_port && s.listen == service.listen)
        {
            let listen_at = table
                .entries
                .iter()
                .find(|e| e.key == "listen")
                .map_or(table.at.clone(), |e| e.value_at.clone());
            return Err(at(
                listen_at,
                format!(
                    "service '{}' listens on {} as service '{}' does (each service needs its own listen address)",
                    service.name, service.listen, other.name
                ),
            ));
        }
        services.push(service);
    }
    Ok(Config { process, services })
}

/// The flags, as clap knows them: the key list and the parser every table goes through.
struct Flags {
    /// `Args`' command with the environment variables switched off.
    command: clap::Command,
    /// The same command, parsing: built once and reused for every table, where cloning the whole
    /// command for each (and the matches after it) was a third of a 1,000-service start.
    parser: std::cell::RefCell<clap::Command>,
}

impl Flags {
    fn new() -> Flags {
        let command = Args::command().mut_args(|a| a.env(None::<&'static str>));
        Flags {
            parser: std::cell::RefCell::new(command.clone()),
            command,
        }
    }

    /// The flag a key names, if any.
    fn arg(&self, key: &str) -> Option<&Arg> {
        if NOT_KEYS.contains(&key) {
            return None;
        }
        self.command
            .get_arguments()
            .find(|a| a.get_long() == Some(key))
    }

    /// Every key a service (or `[defaults]`) accepts, in `--help` order.
    fn service_keys(&self) -> Vec<&str> {
        let mut keys = vec![NAME];
        keys.extend(
            self.command
                .get_arguments()
                .filter_map(Arg::get_long)
                .filter(|l| is_service_key(l)),
        );
        keys
    }

    /// `[process]`: its keys checked, and the process-wide settings they give (the flags'
    /// defaults for the keys not given).
    fn process(&self, table: &Spanned<Table>) -> Result<Process, Located> {
        let accepted: Vec<&str> = PROCESS_ONLY.iter().chain(&PROCESS_TOO).copied().collect();
        let mut entries = Vec::new();
        for (key, value) in table.get_ref() {
            if !accepted.contains(&key.get_ref().as_str()) {
                let what = if self.arg(key.get_ref()).is_some() || key.get_ref() == NAME {
                    format!(
                        "{} is a service's key: it belongs in a [[service]] or [defaults] (accepted in [process]: {})",
                        key.get_ref(),
                        accepted.join(", ")
                    )
                } else {
                    unknown(key.get_ref(), Place::Process, &accepted)
                };
                return Err(at(key.span(), what));
            }
            entries.push(self.entry(key, value)?);
        }
        let args = self.parse(&entries, table.span())?;
        let max_connections = match entries.iter().find(|e| e.key == "max-connections") {
            Some(entry) => {
                super::validate::limits(args.limits.clone())
                    .map_err(|e| at(entry.value_at.clone(), e))?;
                Some(args.limits.max_connections)
            }
            None => None,
        };
        let ops =
            super::validate::operations(args.operations).map_err(|e| locate(e, &entries, table))?;
        Ok(Process {
            metrics_listen: ops.metrics_listen,
            log_failed_handshakes: ops.log_failed_handshakes,
            max_connections,
            log_format: ops.log_format,
            control_socket: ops.control_socket,
            // Set by the caller that knows the path (`config::load_file`).
            config_file: None,
        })
    }

    /// A `[[service]]` table: its name, and its entries over `[defaults]`'.
    fn service(&self, table: &Spanned<Table>, defaults: &[Entry]) -> Result<ServiceTable, Located> {
        let name = match table.get_ref().iter().find(|(k, _)| k.get_ref() == NAME) {
            Some((_, value)) => match value.get_ref() {
                Value::String(name) => {
                    service_name(name).map_err(|e| at(value.span(), e))?;
                    (name.clone(), value.span())
                }
                other => {
                    return Err(at(
                        value.span(),
                        format!("name takes a string, not {}", type_name(other)),
                    ));
                }
            },
            None => {
                return Err(at(
                    table.span(),
                    "a [[service]] without a name (each needs name = \"...\", unique in the file)",
                ));
            }
        };
        let mut merged: BTreeMap<String, Entry> = defaults
            .iter()
            .map(|e| (e.key.clone(), e.clone()))
            .collect();
        for entry in self.entries(table, Place::Service)? {
            merged.insert(entry.key.clone(), entry);
        }
        Ok(ServiceTable {
            name: name.0,
            at: name.1,
            entries: merged.into_values().collect(),
        })
    }

    /// The service keys of `[defaults]` or a `[[service]]`, each checked for its type.
    fn entries(&self, table: &Spanned<Table>, place: Place) -> Result<Vec<Entry>, Located> {
        let mut entries = Vec::new();
        for (key, value) in table.get_ref() {
            let name = key.get_ref().as_str();
            if name == NAME {
                if place == Place::Defaults {
                    return Err(at(
                        key.span(),
                        "name belongs in each [[service]], not in [defaults] (every name is unique)",
                    ));
                }
                continue;
            }
            if name == ROUTE {
                if place == Place::Defaults {
                    return Err(at(
                        key.span(),
                        "routes belong in a [[service]] ([[service.route]]), not in [defaults] (each is one listener's)",
                    ));
                }
                // Read with their positions by `route::routes`.
                continue;
            }
            if PROCESS_ONLY.contains(&name) {
                return Err(at(
                    key.span(),
                    format!("{name} is process-wide: it belongs in [process]"),
                ));
            }
            if self.arg(name).is_none() {
                return Err(at(key.span(), unknown(name, place, &self.service_keys())));
            }
            entries.push(self.entry(key, value)?);
        }
        Ok(entries)
    }

    /// A key's value as the command-line words of its flag, or why its type is wrong.
    fn entry(&self, key: &Spanned<String>, value: &Spanned<Value>) -> Result<Entry, Located> {
        let name = key.get_ref().as_str();
        let arg = self
            .arg(name)
            .ok_or_else(|| at(key.span(), format!("unknown key '{name}'")))?;
        let (kind, list) = kind(arg);
        let wrong = |got: &Value| {
            at(
                value.span(),
                format!("{name} takes {}, not {}", key_takes(arg), type_name(got)),
            )
        };
        let mut words = Vec::new();
        let items: Vec<&Value> = match value.get_ref() {
            Value::Array(items) if list => items.iter().collect(),
            one => vec![one],
        };
        for item in items {
            let on = match (kind, item) {
                (Kind::Switch, Value::Boolean(on)) => *on,
                (Kind::Switch, Value::String(s)) => switch(s).ok_or_else(|| {
                    at(
                        value.span(),
                        format!(
                            "invalid value '{s}' for {name} (accepted: true, false, or the strings true, false, 1, 0, yes, no, on, off)"
                        ),
                    )
                })?,
                (Kind::Number, Value::Integer(n)) => {
                    words.push(format!("--{name}={n}").into());
                    continue;
                }
                (Kind::Number, Value::Float(n)) => {
                    words.push(format!("--{name}={n}").into());
                    continue;
                }
                (Kind::Number | Kind::Text, Value::String(s)) => {
                    words.push(format!("--{name}={s}").into());
                    continue;
                }
                (_, other) => return Err(wrong(other)),
            };
            // A switch that is off is a flag not given.
            if on {
                words.push(format!("--{name}").into());
            }
        }
        Ok(Entry {
            key: name.to_string(),
            key_at: key.span(),
            value_at: value.span(),
            words,
        })
    }

    /// The entries' words through clap: the raw groups, or the first entry clap refuses.
    fn parse(&self, entries: &[Entry], table: Range<usize>) -> Result<Args, Located> {
        let words = |entries: &[&Entry]| {
            let mut argv: Vec<OsString> = vec!["securesock".into()];
            argv.extend(entries.iter().flat_map(|e| e.words.iter().cloned()));
            argv
        };
        let all: Vec<&Entry> = entries.iter().collect();
        match self.try_parse(words(&all)) {
            Ok(args) => Ok(args),
            // The fast path failed: find the value clap refuses on its own.
            Err(line) => Err(entries
                .iter()
                .find_map(|e| {
                    self.try_parse(words(&[e]))
                        .err()
                        .map(|line| at(e.value_at.clone(), line))
                })
                .unwrap_or_else(|| at(table, line))),
        }
    }

    fn try_parse(&self, argv: Vec<OsString>) -> Result<Args, String> {
        let mut matches = self
            .parser
            .borrow_mut()
            .try_get_matches_from_mut(argv)
            .map_err(|e| match ArgsError::from_clap(e) {
                ArgsError::Invalid(line) => line,
                ArgsError::Info(e) => e.to_string(),
            })?;
        Args::from_arg_matches_mut(&mut matches).map_err(|e| e.to_string())
    }

    /// A service's entries through clap and [`Args::validate`]: the one service they describe.
    fn validate(&self, table: &ServiceTable) -> Result<Service, Located> {
        let args = self.parse(&table.entries, table.at.clone())?;
        let config = args.validate().map_err(|e| {
            let entry = mentioned(&e, &table.entries);
            at(entry.map_or(table.at.clone(), |e| e.key_at.clone()), e)
        })?;
        // Flags describe exactly one service; the file names it.
        let mut service = config
            .services
            .into_iter()
            .next()
            .ok_or_else(|| at(table.at.clone(), "no service"))?;
        service.name.clone_from(&table.name);
        Ok(service)
    }
}

/// A refusal from a group's check, at the first key it names (`--KEY`), else at the table.
fn locate(message: String, entries: &[Entry], table: &Spanned<Table>) -> Located {
    let place = mentioned(&message, entries).map_or(table.span(), |e| e.key_at.clone());
    at(place, message)
}

/// The first entry whose flag `message` names (`--KEY`), else the first whose key it holds as a
/// word (`bad metrics-listen address`).
fn mentioned<'a>(message: &str, entries: &'a [Entry]) -> Option<&'a Entry> {
    let words = |from: usize| {
        message[from..]
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
            .map(|w| w.trim_start_matches("--").trim_end_matches('-'))
            .filter(|w| !w.is_empty())
    };
    let flagged = message.match_indices("--").find_map(|(i, _)| {
        let flag = words(i).next()?;
        entries.iter().find(|e| e.key == flag)
    });
    flagged.or_else(|| words(0).find_map(|w| entries.iter().find(|e| e.key == w)))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;
    use crate::config::Cli;

    /// The file's refusal as `LINE:COLUMN: what`.
    fn refused(text: &str) -> String {
        let e = parse(text).unwrap_err();
        let (line, column) = line_column(text, e.at.start);
        format!("{line}:{column}: {}", e.what)
    }

    /// A file's one service and its process settings are what the flags give, but for the name.
    fn same(file: &Config, flags: &Config) {
        assert_eq!(file.services.len(), 1);
        let mut service = file.services[0].clone();
        service.name = crate::config::DEFAULT_SERVICE.into();
        assert_eq!(format!("{service:?}"), format!("{:?}", flags.services[0]));
        assert_eq!(
            format!("{:?}", file.process),
            format!("{:?}", flags.process)
        );
    }

    #[test]
    fn every_long_flag_is_a_key_except_the_process_wide_and_the_meaningless() {
        let flags = Flags::new();
        let service_keys = flags.service_keys();
        let mut table = toml::Table::new();
        for arg in Cli::command().get_arguments() {
            let long = arg.get_long().unwrap();
            if NOT_KEYS.contains(&long) {
                assert!(flags.arg(long).is_none(), "{long}");
                continue;
            }
            assert!(flags.arg(long).is_some(), "--{long} is no key");
            assert_eq!(
                service_keys.contains(&long),
                !PROCESS_ONLY.contains(&long),
                "--{long}"
            );
            if !PROCESS_ONLY.contains(&long) {
                let value = match kind(flags.arg(long).unwrap()) {
                    (Kind::Switch, _) => Value::Boolean(true),
                    (Kind::Number, _) => Value::Integer(1),
                    (Kind::Text, false) => Value::String("x".into()),
                    (Kind::Text, true) => Value::Array(vec![Value::String("x".into())]),
                };
                table.insert(long.to_string(), value);
            }
        }
        // Every service key, with a value of its type, is accepted as a key (the values' meaning
        // is the flags' checks', not this test's).
        let text = toml::to_string(&toml::Table::from_iter([(
            "defaults".to_string(),
            Value::Table(table),
        )]))
        .unwrap();
        let doc: Document = toml::from_str(&text).unwrap();
        let entries = flags
            .entries(doc.defaults.as_ref().unwrap(), Place::Defaults)
            .unwrap();
        assert_eq!(entries.len(), service_keys.len() - 1);
        for key in PROCESS_ONLY.iter().chain(&PROCESS_TOO) {
            assert!(flags.arg(key).is_some(), "{key}");
        }
    }

    #[test]
    fn one_service_is_what_the_same_flags_give() {
        let file = parse(
            r#"
            [process]
            metrics-listen = "127.0.0.1:9100"
            log-failed-handshakes = 0
            [[service]]
            name = "web"
            listen = "127.0.0.1:8443"
            mode = "forward"
            upstream = "127.0.0.1:8080"
            proxy-protocol = "v2"
            cert = "c.pem"
            key = "k.pem"
            sni = "a.test=a.pem,a.key"
            alpn = ["h2", "http/1.1"]
            client-ca = "ca.pem"
            allow-cn = "client"
            accept-proxy = true
            accept-proxy-from = ["10.0.0.0/8", "192.168.0.0/16"]
            backlog = 100
            idle-timeout = 2.5
            max-lifetime = "60"
            strict-sni = "yes"
            "#,
        )
        .unwrap();
        let flags = crate::config::parse_config(&[
            "--metrics-listen=127.0.0.1:9100",
            "--log-failed-handshakes=0",
            "--listen=127.0.0.1:8443",
            "--mode=forward",
            "--upstream=127.0.0.1:8080",
            "--proxy-protocol=v2",
            "--cert=c.pem",
            "--key=k.pem",
            "--sni=a.test=a.pem,a.key",
            "--alpn=h2,http/1.1",
            "--client-ca=ca.pem",
            "--allow-cn=client",
            "--accept-proxy",
            "--accept-proxy-from=10.0.0.0/8,192.168.0.0/16",
            "--backlog=100",
            "--idle-timeout=2.5",
            "--max-lifetime=60",
            "--strict-sni",
        ])
        .unwrap();
        same(&file, &flags);
    }

    #[test]
    fn defaults_are_inherited_and_a_service_overrides_them() {
        let file = parse(
            r#"
            [defaults]
            greeting = "from defaults"
            tls-profile = "modern"
            strict-sni = true
            [[service]]
            name = "a"
            tls-profile = "intermediate"
            strict-sni = false
            "#,
        )
        .unwrap();
        same(
            &file,
            &crate::config::parse_config(&["--greeting", "from defaults"]).unwrap(),
        );
    }

    #[test]
    fn the_process_cap_is_the_process_s_and_each_service_keeps_its_own() {
        let service = "[[service]]\nname = \"a\"\nmax-connections = 500\n";
        let config = parse(service).unwrap();
        assert_eq!(config.process.max_connections, None);
        assert_eq!(config.services[0].limits.max_connections, 500);
        let config = parse(&format!("[process]\nmax-connections = 50\n{service}")).unwrap();
        assert_eq!(config.process.max_connections, Some(50));
        assert_eq!(config.services[0].limits.max_connections, 500);
    }

    #[test]
    fn many_services_each_with_its_name_and_the_defaults() {
        let config = parse(
            r#"
            [defaults]
            greeting = "hello"
            [[service]]
            name = "one"
            listen = "127.0.0.1:1001"
            [[service]]
            name = "two"
            listen = "127.0.0.1:1002"
            mode = "forward"
            upstream = "127.0.0.1:80"
            "#,
        )
        .unwrap();
        let names: Vec<&str> = config.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["one", "two"]);
        let on_port_0 = "[[service]]\nname = \"a\"\nlisten = \"127.0.0.1:0\"\n";
        let both = format!("{on_port_0}{}", on_port_0.replace("\"a\"", "\"b\""));
        assert_eq!(
            parse(&both).unwrap().services.len(),
            2,
            "port 0 is a fresh port each"
        );
        assert_eq!(
            config.services[0].mode,
            crate::config::Mode::Greet {
                greeting: b"hello".to_vec()
            }
        );
        assert!(matches!(
            config.services[1].mode,
            crate::config::Mode::Forward { .. }
        ));
    }

    #[test]
    fn each_malformed_file_is_one_line_at_its_line_and_column() {
        for (text, want) in [
            ("x = = 1", "1:5: "),
            ("[servce]", "1:2: unknown field `servce`"),
            (
                "[[service]]\nname = \"a\"\nlisen = \"x\"",
                "3:1: unknown key 'lisen' in [[service]] (did you mean 'listen'?)",
            ),
            (
                "[[service]]\nname = \"a\"\nzzz = 1",
                "3:1: unknown key 'zzz' in [[service]] (accepted: name, listen,",
            ),
            (
                "[process]\nzzz = 1",
                "2:1: unknown key 'zzz' in [process] (accepted: metrics-listen,",
            ),
            (
                "[process]\nlisten = \"x\"",
                "2:1: listen is a service's key",
            ),
            (
                "[defaults]\nmetrics-listen = \"x\"",
                "2:1: metrics-listen is process-wide",
            ),
            (
                "[defaults]\nname = \"x\"",
                "2:1: name belongs in each [[service]]",
            ),
            (
                "[[service]]\nname = \"a\"\nbacklog = true",
                "3:11: backlog takes a whole number (or its string form), not a boolean",
            ),
            (
                "[[service]]\nname = \"a\"\nlisten = 443",
                "3:10: listen takes a string, not an integer",
            ),
            (
                "[[service]]\nname = \"a\"\nallow-cn = [[1]]",
                "3:12: allow-cn takes a string, or an array of them, not an array",
            ),
            (
                "[[service]]\nname = \"a\"\naccept-proxy = \"maybe\"",
                "3:16: invalid value 'maybe' for accept-proxy",
            ),
            (
                "[[service]]\nname = \"a\"\nbacklog = \"many\"",
                "3:11: invalid value 'many' for '--backlog <N>'",
            ),
            (
                "[[service]]\nname = \"a\"\nmode = \"forward\"",
                "3:1: --mode forward needs --upstream",
            ),
            (
                "[[service]]\nname = \"a\"\nbacklog = 0",
                "3:1: --backlog must be at least 1",
            ),
            (
                "[[service]]\nlisten = \"127.0.0.1:1\"",
                "1:1: a [[service]] without a name",
            ),
            (
                "[[service]]\nname = 7",
                "2:8: name takes a string, not an integer",
            ),
            ("[[service]]\nname = \"a b\"", "2:8: name 'a b' holds ' '"),
            (
                "[[service]]\nname = \"a\"\n[[service]]\nname = \"a\"",
                "4:8: service name 'a' is used twice (first on line 2;",
            ),
            (
                "[[service]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\n[[service]]\nname = \"b\"\nlisten = \"127.0.0.1:1\"",
                "6:10: service 'b' listens on 127.0.0.1:1 as service 'a' does",
            ),
            (
                "[defaults]\n[[defaults.route]]\nsni = \"a.test\"\n[[service]]\nname = \"a\"",
                "2:12: routes belong in a [[service]]",
            ),
            (
                "[process]\nmetrics-listen = \"9100\"\n[[service]]\nname = \"a\"",
                "2:1: bad metrics-listen address '9100'",
            ),
            (
                "[[service]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\nbacklog = 0\nmode = \"echo\"",
                "4:1: --backlog must be at least 1",
            ),
            (
                "[process]\nmetrics-listen = \"9100\"\nlog-failed-handshakes = 5\n[[service]]\nname = \"a\"",
                "2:1: bad metrics-listen address",
            ),
            (
                "[process]\nmax-connections = 0\n[[service]]\nname = \"a\"",
                "2:19: --max-connections must be at least 1",
            ),
            ("", "1:1: no [[service]] table"),
        ] {
            let line = refused(text);
            assert!(line.starts_with(want), "{text:?}: {line}");
            assert!(!line.contains('\n'), "{text:?}: {line}");
        }
    }
}
