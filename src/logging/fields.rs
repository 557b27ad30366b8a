//! A log line's typed fields: an ordered list of `key` and value, written either as the text
//! line's `key=value` pairs or, through the `log` crate's key-values, as the JSON line's members.
//! One list, two renderings, so the two formats cannot say different things.
//!
//! It only holds and writes values: it never decides what a line reports, and never writes a
//! line itself (that is [`super::emit`]).

use std::borrow::Cow;
use std::fmt;

/// One field's value: typed for the JSON line, and written in the text line as it always was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Value<'a> {
    /// Written as it is in the text line (an address, a label, a protocol name): text that never
    /// needs quotes, or whose readers expect it bare (`peer=unix:uid=1000,pid=42`).
    Word(Cow<'a, str>),
    /// Free text: bare in the text line when it is one word, quoted otherwise ([`quoted`]).
    Text(Cow<'a, str>),
    /// A count or a number of milliseconds: a JSON number.
    Number(u64),
    /// `yes`/`no` in the text line, `true`/`false` in JSON.
    Flag(bool),
    /// Not known (before the handshake, say): `-` in the text line, left out of the JSON line.
    Absent,
}

impl<'a> Value<'a> {
    /// Free text when there is some, else [`Value::Absent`].
    pub(crate) fn text_or_absent(value: Option<&'a str>) -> Value<'a> {
        value.map_or(Value::Absent, |v| Value::Text(Cow::Borrowed(v)))
    }

    /// A word when there is one, else [`Value::Absent`].
    pub(crate) fn word_or_absent(value: Option<&'a str>) -> Value<'a> {
        value.map_or(Value::Absent, |v| Value::Word(Cow::Borrowed(v)))
    }
}

impl fmt::Display for Value<'_> {
    /// The text line's form.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Word(w) => f.write_str(w),
            Value::Text(t) => f.write_str(&quoted(t)),
            Value::Number(n) => write!(f, "{n}"),
            Value::Flag(true) => f.write_str("yes"),
            Value::Flag(false) => f.write_str("no"),
            Value::Absent => f.write_str("-"),
        }
    }
}

/// A line's fields, in the order the text line writes them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Fields<'a> {
    list: Vec<(&'static str, Value<'a>)>,
}

impl<'a> Fields<'a> {
    pub(crate) fn with_capacity(n: usize) -> Fields<'a> {
        Fields {
            list: Vec::with_capacity(n),
        }
    }

    pub(crate) fn push(&mut self, key: &'static str, value: Value<'a>) {
        self.list.push((key, value));
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &(&'static str, Value<'a>)> {
        self.list.iter()
    }
}

impl fmt::Display for Fields<'_> {
    /// `key=value key=value`: the text line's pairs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (key, value)) in self.list.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{key}={value}")?;
        }
        Ok(())
    }
}

/// A value for a key=value log line: bare when it is one word, quoted otherwise.
pub(crate) fn quoted(value: &str) -> String {
    if !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'=')
    {
        value.to_string()
    } else {
        format!("{value:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_keeps_lines_parseable() {
        assert_eq!(quoted("timeout"), "timeout");
        assert_eq!(quoted("wrong version number"), "\"wrong version number\"");
        assert_eq!(quoted("a=b"), "\"a=b\"");
        assert_eq!(quoted(""), "\"\"");
    }

    #[test]
    fn each_kind_writes_its_text_form() {
        let mut fields = Fields::default();
        fields.push("peer", Value::Word("unix:uid=1,pid=2".into()));
        fields.push("reason", Value::Text("no way".into()));
        fields.push("in", Value::Number(7));
        fields.push("resumed", Value::Flag(false));
        fields.push("sni", Value::Absent);
        assert_eq!(
            fields.to_string(),
            "peer=unix:uid=1,pid=2 reason=\"no way\" in=7 resumed=no sni=-"
        );
    }
}
