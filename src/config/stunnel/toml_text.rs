//! The TOML text the import writes: a comment saying where it came from and which of stunnel's
//! defaults differ, `[defaults]`, then each `[[service]]` with its `[[service.route]]`s, keys in
//! the order `render.rs` gives them. Owns quoting (basic strings, every control character
//! escaped); never decides which keys there are.

use std::fmt::Write as _;

/// A TOML value as the import writes it.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Value {
    Str(String),
    Int(u64),
    Bool(bool),
    List(Vec<String>),
}

/// A table's keys in the order they are written.
pub(super) type Table = Vec<(&'static str, Value)>;

fn quote(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn write_value(value: &Value) -> String {
    match value {
        Value::Str(text) => quote(text),
        Value::Int(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::List(items) => {
            let items: Vec<String> = items.iter().map(|i| quote(i)).collect();
            format!("[{}]", items.join(", "))
        }
    }
}

fn write_table(out: &mut String, indent: &str, table: &Table) {
    for (key, value) in table {
        let _ = writeln!(out, "{indent}{key} = {}", write_value(value));
    }
}

pub(super) fn write_toml(source: &str, shared: &Table, tables: &[(Table, Vec<Table>)]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Imported from stunnel's {source} by `securesock import-stunnel`."
    );
    out.push_str(
        "# What could not be carried is named on stderr with its line; `securesock check` checks\n",
    );
    out.push_str("# the files and names. stunnel's defaults that differ from securesock's: TIMEOUTidle 43200 s\n");
    out.push_str(
        "# (idle-timeout 300 here), TIMEOUTconnect 10 s (connect-timeout 5), sslVersionMin TLSv1\n",
    );
    out.push_str("# (TLS 1.2 at least here); set them in [defaults] to keep stunnel's.\n");
    if !shared.is_empty() {
        out.push_str("\n[defaults]\n");
        write_table(&mut out, "", shared);
    }
    for (table, routes) in tables {
        out.push_str("\n[[service]]\n");
        write_table(&mut out, "", table);
        for route in routes {
            out.push_str("\n  [[service.route]]\n");
            write_table(&mut out, "  ", route);
        }
    }
    out
}
