//! The JSON line: one object a line, `ts`, `level` and `msg` always, then `event` and the line's
//! fields where it has them. A line [`super::emit`] wrote (the `conn` line) brings its fields
//! typed; any other line is the text line it would be, as `msg`, with its `key=value` pairs also
//! read out as fields, so a room's log line needs no change to be useful in JSON (and the reload
//! and start-up lines keep one source, their text).
//!
//! It only renders: it never changes what a line says, and never drops its text (`msg` keeps the
//! whole text of every line whose fields were read out of it).

use log::Record;
use log::kv::{self, Key, VisitSource};
use serde_json::Value as Json;

/// The member naming what a line reports.
pub(super) const EVENT: &str = "event";

/// Members every line has; a field of the same name is left out rather than written twice.
const RESERVED: [&str; 4] = ["ts", "level", "msg", EVENT];

/// Lines without typed fields that still name an event, by how their text starts: the start-up,
/// reload, refusal, drain and signal lines.
const EVENTS: [(&str, &str); 9] = [
    ("refused ", "refused"),
    ("reload ok ", "reload_ok"),
    ("reload failed ", "reload_failed"),
    ("metrics on ", "metrics_listening"),
    ("draining: ", "draining"),
    ("drain timeout: ", "drain_timeout"),
    ("drained: ", "drained"),
    ("received SIG", "signal"),
    ("conn ", "conn"),
];

/// Keys whose value, read out of a text line, is a JSON number (when it is one). Every other key
/// read out of text is a string, so a field keeps one JSON type whatever its value (a service
/// named `443` stays `"443"`, a certificate serial stays hex text).
const NUMBERS: [&str; 15] = [
    "in",
    "out",
    "ms",
    "limit",
    "suppressed_since_last",
    "backlog",
    "max_connections",
    "max_per_ip",
    "not_after",
    "expires_in_days",
    "id",
    "age_ms",
    "chain",
    "max",
    "max_map_count",
];

/// The whole line, without its newline.
pub(super) fn line(ts: &str, record: &Record<'_>) -> String {
    let mut members = Members::default();
    let _ = record.key_values().visit(&mut members);
    let (msg, event, fields) = match members.event {
        // Typed fields: the event names the line (its text is those same fields).
        Some(event) => (event.clone(), Some(event), members.fields),
        None => {
            let text = record.args().to_string();
            let event = event_of(&text);
            let mut fields = pairs(&text);
            if event == Some("listening")
                && let Some(listen) = text
                    .split(" listening on ")
                    .nth(1)
                    .and_then(|rest| rest.split(' ').next())
            {
                fields.insert(0, ("listen".to_string(), Json::from(listen)));
            }
            let event = event.map(str::to_string);
            (text, event, fields)
        }
    };
    let mut out = String::with_capacity(64 + msg.len() + 24 * fields.len());
    out.push_str("{\"ts\":");
    push_json(&mut out, &Json::from(ts));
    out.push_str(",\"level\":");
    push_json(&mut out, &Json::from(record.level().as_str()));
    out.push_str(",\"msg\":");
    push_json(&mut out, &Json::from(msg));
    if let Some(event) = event {
        out.push_str(",\"event\":");
        push_json(&mut out, &Json::from(event));
    }
    let mut seen: Vec<&str> = Vec::with_capacity(fields.len());
    for (key, value) in &fields {
        if RESERVED.contains(&key.as_str()) || seen.contains(&key.as_str()) {
            continue;
        }
        seen.push(key);
        out.push(',');
        push_json(&mut out, &Json::from(key.as_str()));
        out.push(':');
        push_json(&mut out, value);
    }
    out.push('}');
    out
}

fn push_json(out: &mut String, value: &Json) {
    // Serialising a string, number or bool into a String cannot fail.
    out.push_str(&serde_json::to_string(value).unwrap_or_default());
}

/// The event a text line names, by how it starts.
fn event_of(text: &str) -> Option<&'static str> {
    if let Some((_, event)) = EVENTS.iter().find(|(start, _)| text.starts_with(start)) {
        return Some(event);
    }
    // `securesock 0.1.0 listening on 127.0.0.1:443 service=...`
    (text.starts_with("securesock ") && text.contains(" listening on ")).then_some("listening")
}

/// The key-values `emit` gave, typed.
#[derive(Default)]
struct Members {
    event: Option<String>,
    fields: Vec<(String, Json)>,
}

impl<'kvs> VisitSource<'kvs> for Members {
    fn visit_pair(&mut self, key: Key<'kvs>, value: kv::Value<'kvs>) -> Result<(), kv::Error> {
        let json = if let Some(n) = value.to_u64() {
            Json::from(n)
        } else if let Some(b) = value.to_bool() {
            Json::from(b)
        } else if let Some(s) = value.to_borrowed_str() {
            Json::from(s)
        } else {
            Json::from(value.to_string())
        };
        if key.as_str() == EVENT && self.event.is_none() {
            self.event = Some(value.to_string());
        } else {
            self.fields.push((key.as_str().to_string(), json));
        }
        Ok(())
    }
}

/// The `key=value` pairs of a text line, in order: a key is a lowercase word (`_` and digits
/// allowed) right after a space or the line's start; a value runs to the next space, or is a
/// quoted string as [`super::fields::quoted`] writes it. A bare value loses the punctuation that ends a
/// clause (`service=web:` is `web`); `-` (not known) is left out.
fn pairs(text: &str) -> Vec<(String, Json)> {
    let mut out = Vec::new();
    let mut rest = text;
    loop {
        rest = rest.trim_start_matches(' ');
        if rest.is_empty() {
            return out;
        }
        let key_len = rest
            .bytes()
            .take_while(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_')
            .count();
        let is_pair = key_len > 0
            && rest.as_bytes()[0].is_ascii_lowercase()
            && rest.as_bytes().get(key_len) == Some(&b'=');
        if !is_pair {
            // Not a pair: skip the word (a quoted stretch counts as one).
            rest = skip_word(rest);
            continue;
        }
        let key = &rest[..key_len];
        let after = &rest[key_len + 1..];
        let (value, tail) = if after.starts_with('"') {
            match unquote(after) {
                Some((value, tail)) => (Some(value), tail),
                None => (None, skip_word(after)),
            }
        } else {
            let end = after.find(' ').unwrap_or(after.len());
            let bare = after[..end].trim_end_matches([':', ';', ',']);
            ((!bare.is_empty()).then(|| bare.to_string()), &after[end..])
        };
        rest = tail;
        let Some(value) = value else { continue };
        if value == "-" && !after.starts_with('"') {
            continue;
        }
        let json = match value.parse::<u64>() {
            Ok(n) if NUMBERS.contains(&key) && !after.starts_with('"') => Json::from(n),
            _ => Json::from(value),
        };
        out.push((key.to_string(), json));
    }
}

/// What follows the next word (or quoted stretch).
fn skip_word(text: &str) -> &str {
    if text.starts_with('"')
        && let Some((_, tail)) = unquote(text)
    {
        return tail;
    }
    let end = text.find(' ').unwrap_or(text.len());
    &text[end..]
}

/// A string written with Rust's `{:?}` (as [`super::fields::quoted`] does): its value and what follows
/// the closing quote; `None` when it does not close.
fn unquote(text: &str) -> Option<(String, &str)> {
    let mut value = String::new();
    let mut chars = text.char_indices().skip(1);
    while let Some((at, c)) = chars.next() {
        match c {
            '"' => return Some((value, &text[at + 1..])),
            '\\' => match chars.next()?.1 {
                'n' => value.push('\n'),
                'r' => value.push('\r'),
                't' => value.push('\t'),
                '0' => value.push('\0'),
                'u' => {
                    // \u{XXXX}
                    let mut hex = String::new();
                    for (_, h) in chars.by_ref() {
                        match h {
                            '{' => {}
                            '}' => break,
                            h => hex.push(h),
                        }
                    }
                    value.push(
                        u32::from_str_radix(&hex, 16)
                            .ok()
                            .and_then(char::from_u32)?,
                    );
                }
                other => value.push(other),
            },
            c => value.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> Json {
        let line = line(
            "2026-12-01T00:00:00.000Z",
            &Record::builder()
                .args(format_args!("{text}"))
                .level(log::Level::Warn)
                .build(),
        );
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line}: {e}"))
    }

    #[test]
    fn a_text_line_keeps_its_text_and_gives_its_pairs() {
        let text = "refused peer=127.0.0.1:5 via=10.0.0.1:9 service=web reason=per_ip_cap limit=4 suppressed_since_last=0";
        let json = parsed(text);
        assert_eq!(json["ts"], "2026-12-01T00:00:00.000Z");
        assert_eq!(json["level"], "WARN");
        assert_eq!(json["msg"], text);
        assert_eq!(json["event"], "refused");
        assert_eq!(json["peer"], "127.0.0.1:5");
        assert_eq!(json["via"], "10.0.0.1:9");
        assert_eq!(json["limit"], 4);
        assert_eq!(json["suppressed_since_last"], 0);
    }

    #[test]
    fn quoted_values_punctuation_and_unknowns() {
        let json = parsed(
            "reload failed trigger=signal service=443: cannot read \"/x y\"; still serving serial=-",
        );
        assert_eq!(json["event"], "reload_failed");
        // A service named with digits stays a string; the clause's colon is not the name's.
        assert_eq!(json["service"], "443");
        assert!(json.get("serial").is_none(), "{json}");
        let json = parsed(
            "reload ok trigger=file_change service=web subject=\"CN=a \\\"b\\\"\" serial=0A1B not_after=1800000000 expires_in_days=30",
        );
        assert_eq!(json["subject"], "CN=a \"b\"");
        assert_eq!(json["serial"], "0A1B");
        assert_eq!(json["not_after"], 1_800_000_000u64);
        assert_eq!(json["expires_in_days"], 30);
    }

    #[test]
    fn a_line_without_pairs_is_its_text() {
        let json = parsed("drained: all connections finished (3)");
        assert_eq!(json["event"], "drained");
        assert_eq!(json["msg"], "drained: all connections finished (3)");
        let json = parsed("key exchange groups X25519MLKEM768:x25519");
        assert!(json.get("event").is_none(), "{json}");
        assert_eq!(json.as_object().map(|o| o.len()), Some(3), "{json}");
    }

    #[test]
    fn a_field_named_as_a_member_does_not_overwrite_it() {
        let json = parsed("odd msg=x level=y ts=z peer=a peer=b");
        assert_eq!(json["msg"], "odd msg=x level=y ts=z peer=a peer=b");
        assert_eq!(json["level"], "WARN");
        assert_eq!(json["peer"], "a");
    }
}
