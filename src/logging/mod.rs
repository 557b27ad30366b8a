//! The process's log on stderr: how every line is written (`--log-format text|json`, with or
//! without its timestamp) and the typed fields a line may carry ([`Fields`]).
//!
//! Owns the line formats and their stable field names (docs/operations.md, "Log format"). Never
//! decides what is logged or at which level (the rooms do, through the `log` macros or
//! [`emit`]), and never writes anything but log lines: no secret reaches it that a room did not
//! already put in a text line.

mod fields;
mod json;

use std::io::Write as _;
use std::sync::OnceLock;

use log::Level;
use log::kv::{self, Key, Source, VisitSource};

pub(crate) use fields::{Fields, Value};

use crate::config::LogFormat;

/// The format [`init`] chose, for the one line `main` writes itself when the process fails.
static FORMAT: OnceLock<LogFormat> = OnceLock::new();

/// Starts the logger (once, before the server binds): `RUST_LOG` filters as usual, `info` by
/// default.
///
/// Text lines are `2026-11-27T15:17:54.742Z INFO  message`; when stderr is the journal's stream,
/// journald stamps each line itself, so the text line starts at the level. JSON lines always
/// carry `ts`: a pipeline reading them may not be journald.
pub fn init(format: LogFormat) {
    let _ = FORMAT.set(format);
    let stamped = !stderr_is_journal();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format(move |buf, record| match format {
            LogFormat::Json => {
                let line = json::line(&buf.timestamp_millis().to_string(), record);
                writeln!(buf, "{line}")
            }
            LogFormat::Text if stamped => writeln!(
                buf,
                "{} {:<5} {}",
                buf.timestamp_millis(),
                record.level(),
                record.args()
            ),
            LogFormat::Text => writeln!(buf, "{:<5} {}", record.level(), record.args()),
        })
        .init();
}

/// The one line `main` writes when the process cannot go on: plain text before the logger
/// started or in the text format (`securesock: error: ...`, which scripts match), a JSON line
/// once the JSON logger runs, so that every line of a JSON run parses.
pub fn fatal(message: &str) {
    if FORMAT.get() == Some(&LogFormat::Json) {
        log::error!("securesock: error: {message}");
        log::logger().flush();
    } else {
        let _ = writeln!(std::io::stderr(), "securesock: error: {message}");
    }
}

/// Writes one line named `event` with typed `fields`: in text, `event key=value ...`; in JSON,
/// `event` and each field as members, numbers as numbers and absent values left out. `target` is
/// the calling module (`module_path!()`), which `RUST_LOG` filters on as for the macros.
pub(crate) fn emit(target: &str, level: Level, event: &'static str, fields: &Fields<'_>) {
    if level > log::max_level() {
        return;
    }
    let members = Members { event, fields };
    log::logger().log(
        &log::Record::builder()
            .args(format_args!("{event} {fields}"))
            .level(level)
            .target(target)
            .key_values(&members)
            .build(),
    );
}

/// An [`emit`]ted line's key-values, as the `log` crate hands them to the formatter: `event`
/// first, then every field that has a value.
struct Members<'a> {
    event: &'static str,
    fields: &'a Fields<'a>,
}

impl Source for Members<'_> {
    fn visit<'kvs>(&'kvs self, visitor: &mut dyn VisitSource<'kvs>) -> Result<(), kv::Error> {
        visitor.visit_pair(Key::from_str(json::EVENT), kv::Value::from(self.event))?;
        for (key, value) in self.fields.iter() {
            let value = match value {
                Value::Word(w) | Value::Text(w) => kv::Value::from(&**w),
                Value::Number(n) => kv::Value::from(*n),
                Value::Flag(b) => kv::Value::from(*b),
                Value::Absent => continue,
            };
            visitor.visit_pair(Key::from_str(key), value)?;
        }
        Ok(())
    }
}

/// Whether stderr is the journal's stream: systemd sets `JOURNAL_STREAM=DEVICE:INODE` for a
/// service whose stderr goes to the journal, and says to compare it with stderr itself, since the
/// variable is inherited by everything the service starts (a terminal a desktop session started,
/// a shell whose stderr is a file) where the timestamp is still wanted.
fn stderr_is_journal() -> bool {
    use std::os::fd::AsFd as _;
    use std::os::unix::fs::MetadataExt as _;

    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() else {
        return false;
    };
    std::fs::File::from(fd)
        .metadata()
        .is_ok_and(|m| m.dev() == dev && m.ino() == ino)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The JSON line [`emit`] gives for `fields`, through the same record the logger receives.
    fn emitted(fields: &Fields<'_>) -> serde_json::Value {
        let members = Members {
            event: "conn",
            fields,
        };
        let line = json::line(
            "2026-12-01T00:00:00.000Z",
            &log::Record::builder()
                .args(format_args!("conn {fields}"))
                .level(Level::Info)
                .key_values(&members)
                .build(),
        );
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line}: {e}"))
    }

    #[test]
    fn typed_fields_keep_their_types_and_order_and_absent_ones_are_left_out() {
        let mut fields = Fields::default();
        fields.push("peer", Value::Word("unix:uid=1,pid=2".into()));
        fields.push("sni", Value::Absent);
        fields.push("resumed", Value::Flag(true));
        fields.push("service", Value::Text("443".into()));
        fields.push("in", Value::Number(12));
        fields.push("reason", Value::Text("a \"quoted\" reason\n".into()));
        let json = emitted(&fields);
        assert_eq!(json["msg"], "conn");
        assert_eq!(json["event"], "conn");
        assert_eq!(json["peer"], "unix:uid=1,pid=2");
        assert!(json.get("sni").is_none(), "{json}");
        assert_eq!(json["resumed"], true);
        // Typed as text: a name of digits stays a string.
        assert_eq!(json["service"], "443");
        assert_eq!(json["in"], 12);
        assert_eq!(json["reason"], "a \"quoted\" reason\n");
        let keys: Vec<&String> = json.as_object().unwrap().keys().collect();
        // serde_json's map sorts; the order on the line is checked on the text itself.
        assert_eq!(keys.len(), 9, "{json}");
        let line = json::line(
            "t",
            &log::Record::builder()
                .args(format_args!("conn"))
                .key_values(&Members {
                    event: "conn",
                    fields: &fields,
                })
                .build(),
        );
        assert!(
            line.starts_with(
                r#"{"ts":"t","level":"INFO","msg":"conn","event":"conn","peer":"unix:uid=1,pid=2","resumed":true,"service":"443","in":12,"#
            ),
            "{line}"
        );
    }
}
