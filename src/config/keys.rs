//! The file's keys: which long flags are keys and where (`[process]`, a service, neither), how
//! each flag takes its value (and so which TOML types its key accepts), and the words for the
//! refusals about keys (the closest accepted key, a type's name).
//!
//! Owns the key lists and their wording; reads them from clap's definitions of [`super::Args`]
//! where it can, so a new flag is a new key. Never reads a file or checks a value's meaning
//! (`file.rs` and `validate.rs` do), and imports nothing from the crate above `config`.

use clap::builder::{BoolishValueParser, TypedValueParser};
use clap::{Arg, ArgAction};
use toml::Value;

use super::errors::accepted;

/// Flags whose settings are the whole process's: keys of `[process]`, never of a service.
pub(super) const PROCESS_ONLY: [&str; 5] = [
    "metrics-listen",
    "log-failed-handshakes",
    "log-format",
    "control-socket",
    "control-socket-group",
];
/// Keys of `[process]` that a service has too: there, a cap on top of every service's own.
pub(super) const PROCESS_TOO: [&str; 1] = ["max-connections"];
/// Long flags that mean nothing in a file.
pub(super) const NOT_KEYS: [&str; 3] = ["config", "help", "version"];
/// The service key that is no flag: the name in its log lines and metrics.
pub(super) const NAME: &str = "name";
/// A service's `[[service.route]]` tables: SNI routes inside its listener.
pub(super) const ROUTE: &str = "route";
/// The keys of a `[[service.route]]`: `name` (else the sni names it), and the long flags a route
/// may have its own value of.
pub(super) const ROUTE_KEYS: [&str; 10] = [
    NAME,
    "sni",
    "cert",
    "key",
    "upstream",
    "balance",
    "allow-cn",
    "allow-ou",
    "allow-dns",
    "allow-uri",
];

/// Whether the long flag `long` is a key of `[process]` (the manual page's list of them).
/// The keys a `[[service.route]]` table accepts, as the file reads them (for the manual page).
pub fn route_keys() -> &'static [&'static str] {
    &ROUTE_KEYS
}

pub fn is_process_key(long: &str) -> bool {
    PROCESS_ONLY.contains(&long) || PROCESS_TOO.contains(&long)
}

/// Whether the long flag `long` is a key of `[defaults]` and `[[service]]` (the manual page's list
/// of them; `name` is a service key that is no flag).
pub fn is_service_key(long: &str) -> bool {
    !NOT_KEYS.contains(&long) && !PROCESS_ONLY.contains(&long)
}

/// What the key of the flag `arg` takes, in words: the refusal of a wrong type and the
/// securesock.toml(5) page say the same.
pub fn key_takes(arg: &Arg) -> String {
    let (kind, list) = kind(arg);
    let one = takes(kind, value_name(arg));
    if list {
        format!("{one}, or an array of them")
    } else {
        one
    }
}

/// Where a table stands in the file, for the messages about its keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Place {
    Process,
    Defaults,
    Service,
    Route,
}

impl Place {
    fn name(self) -> &'static str {
        match self {
            Place::Process => "[process]",
            Place::Defaults => "[defaults]",
            Place::Service => "[[service]]",
            Place::Route => "[[service.route]]",
        }
    }
}

/// How a flag takes its value, which decides the TOML types its key accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// A switch: a boolean (or a yes/no string).
    Switch,
    /// A number (or its string form).
    Number,
    /// Text.
    Text,
}

/// A service's name appears in every log line and metric of it: letters, digits, `.`, `_`, `-`.
pub(super) fn service_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err(format!(
            "name '{name}' must be 1 to 64 characters (letters, digits, '.', '_', '-')"
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "name '{name}' holds '{c}' (accepted: letters, digits, '.', '_', '-')"
        ));
    }
    Ok(())
}

/// An unknown key's message: the closest accepted key, or all of them.
pub(super) fn unknown(key: &str, place: Place, accepted: &[&str]) -> String {
    let closest = accepted
        .iter()
        .map(|a| (distance(key, a), *a))
        .min()
        .filter(|(d, _)| *d <= 2 || *d <= key.len() / 3);
    match closest {
        Some((_, near)) => format!(
            "unknown key '{key}' in {} (did you mean '{near}'?)",
            place.name()
        ),
        None => format!(
            "unknown key '{key}' in {} (accepted: {})",
            place.name(),
            accepted.join(", ")
        ),
    }
}

/// Levenshtein distance: the edits that turn `a` into `b`.
pub(super) fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

/// A switch's string form, as its variable takes it (clap's BoolishValueParser).
pub(super) fn switch(text: &str) -> Option<bool> {
    let command = clap::Command::new("securesock");
    BoolishValueParser::new()
        .parse_ref(&command, None, std::ffi::OsStr::new(text))
        .ok()
}

/// How a flag takes its value (which decides the TOML types its key accepts), and whether it is
/// repeatable.
pub(super) fn kind(arg: &Arg) -> (Kind, bool) {
    let kind = match arg.get_action() {
        ArgAction::SetTrue => Kind::Switch,
        _ => match value_name(arg) {
            "N" | "SECS" | "GROUP" => Kind::Number,
            _ => Kind::Text,
        },
    };
    (kind, matches!(arg.get_action(), ArgAction::Append))
}

pub(super) fn value_name(arg: &Arg) -> &str {
    arg.get_value_names()
        .and_then(|names| names.first())
        .map_or("", |n| n.as_str())
}

/// What a key of `kind` takes, in words.
pub(super) fn takes(kind: Kind, value_name: &str) -> String {
    match kind {
        Kind::Switch => "true or false".into(),
        Kind::Number if value_name == "GROUP" => "a group name or number".into(),
        Kind::Number => format!(
            "{} (or its string form)",
            accepted(value_name).unwrap_or("a number")
        ),
        Kind::Text => "a string".into(),
    }
}

/// A TOML value's type, in words.
pub(super) fn type_name(value: &Value) -> &'static str {
    match value {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a date-time",
        Value::Array(_) => "an array",
        Value::Table(_) => "a table",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_name_is_1_to_64_letters_digits_dots_underscores_and_dashes() {
        for good in ["a", "web-1.example_2", &"x".repeat(64)] {
            assert_eq!(service_name(good), Ok(()), "{good}");
        }
        for bad in ["", &"x".repeat(65), "a b", "a=b", "é"] {
            assert!(service_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn distance_counts_edits() {
        assert_eq!(distance("lisen", "listen"), 1);
        assert_eq!(distance("", "abc"), 3);
        assert_eq!(distance("kitten", "sitting"), 3);
    }
}
