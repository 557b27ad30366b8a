//! The configuration reference, `docs/configuration.md`, names exactly the flags `securesock --help`
//! prints, each with the environment variable and the default `--help` shows, so that adding,
//! renaming or removing a flag without its row (or a row without its flag) fails here instead of
//! leaving the reference wrong.
//!
//! The reference's convention, which this parses: each flag has one table row, the row starts with
//! the flag in backticks (`` | `--flag VALUE` | ``), its second column names the variable in
//! backticks, and its third holds the default in backticks wherever `--help` shows one.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

/// What one side says about a flag.
#[derive(Debug, Default, Clone, PartialEq)]
struct Flag {
    /// The `SECURESOCK_*` variable, when the flag has one.
    env: Option<String>,
    /// `--help`: the `[default: ...]` value, quotes removed. The reference: its default column.
    default: Option<String>,
}

/// Every `--long` flag in clap's long help, with the `[env: ...]` and `[default: ...]` lines that
/// follow it. An option line is indented at most six spaces (`  -h, --help`, `      --listen
/// <ADDR>`); descriptions, their "Possible values" lists and the env and default lines are indented
/// further, and headings not at all, so a flag a description mentions is not taken for one.
fn help_flags(help: &str) -> BTreeMap<String, Flag> {
    let mut flags = BTreeMap::new();
    let mut current: Vec<String> = Vec::new();
    for line in help.lines() {
        let text = line.trim_start();
        let indent = line.len() - text.len();
        if (1..=6).contains(&indent) && text.starts_with('-') {
            current = text
                .split_whitespace()
                .take_while(|w| w.starts_with('-'))
                .map(|w| w.trim_end_matches(','))
                .filter(|w| w.starts_with("--"))
                .map(|w| w.split(['=', '<', '[']).next().unwrap_or(w).to_string())
                .collect();
            for flag in &current {
                flags.insert(flag.clone(), Flag::default());
            }
        } else if let Some(rest) = text.strip_prefix("[env: ") {
            let name = rest.split('=').next().unwrap_or(rest).trim_end_matches(']');
            for flag in &current {
                flags.get_mut(flag).unwrap().env = Some(name.to_string());
            }
        } else if let Some(rest) = text.strip_prefix("[default: ") {
            let value = rest.strip_suffix(']').unwrap_or(rest);
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value);
            for flag in &current {
                flags.get_mut(flag).unwrap().default = Some(value.to_string());
            }
        } else if indent == 0 && !text.is_empty() {
            // A heading ("Options:", "Listen:") or the usage: no flag's lines continue past it.
            current.clear();
        }
    }
    flags
}

/// The backticked spans of a markdown cell, in order.
fn code_spans(cell: &str) -> Vec<&str> {
    cell.split('`').skip(1).step_by(2).collect()
}

/// Every flag row of the reference: a table row whose first cell starts with a backticked `--flag`.
/// Returns the rows by flag, and the flags that have more than one row.
fn reference_flags(markdown: &str) -> (BTreeMap<String, Flag>, Vec<String>) {
    let mut flags = BTreeMap::new();
    let mut twice = Vec::new();
    for line in markdown.lines() {
        if !line.starts_with("| `--") {
            continue;
        }
        let cells: Vec<&str> = line.split('|').skip(1).collect();
        let names: Vec<String> = code_spans(cells[0])
            .into_iter()
            .filter(|s| s.starts_with("--"))
            .map(|s| s.split([' ', '=']).next().unwrap_or(s).to_string())
            .collect();
        let env = cells
            .get(1)
            .and_then(|c| code_spans(c).into_iter().next())
            .map(str::to_string);
        let default = cells.get(2).map(|c| c.trim().to_string());
        for name in names {
            let row = Flag {
                env: env.clone(),
                default: default.clone(),
            };
            if flags.insert(name.clone(), row).is_some() {
                twice.push(name);
            }
        }
    }
    (flags, twice)
}

/// What is wrong between `--help` and the reference, one line each; empty when they agree.
fn differences(help: &BTreeMap<String, Flag>, reference: &BTreeMap<String, Flag>) -> Vec<String> {
    let mut problems = Vec::new();
    for (flag, said) in help {
        let Some(row) = reference.get(flag) else {
            problems.push(format!(
                "{flag}: printed by --help, no row in the reference"
            ));
            continue;
        };
        if said.env != row.env {
            problems.push(format!(
                "{flag}: --help says env {:?}, the reference {:?}",
                said.env, row.env
            ));
        }
        if let Some(default) = &said.default {
            let cell = row.default.as_deref().unwrap_or("");
            if !code_spans(cell).contains(&default.as_str()) {
                problems.push(format!(
                    "{flag}: --help says default `{default}`, the reference's default column is {cell:?}"
                ));
            }
        }
    }
    for flag in reference.keys() {
        if !help.contains_key(flag) {
            problems.push(format!(
                "{flag}: a row in the reference, not printed by --help"
            ));
        }
    }
    problems
}

#[test]
fn the_configuration_reference_names_every_flag_help_prints_and_no_other() {
    // No SECURESOCK_* variable of the caller's may show up as a value in the help text.
    let out = Command::new(env!("CARGO_BIN_EXE_securesock"))
        .arg("--help")
        .env_clear()
        .output()
        .unwrap();
    assert!(out.status.success(), "securesock --help failed: {out:?}");
    let help = String::from_utf8(out.stdout).unwrap();
    let help = help_flags(&help);
    // A floor, so that a change in clap's layout that hides every flag from the parser fails
    // instead of comparing two empty sets.
    assert!(
        help.len() >= 40 && help.contains_key("--listen") && help.contains_key("--help"),
        "parsed too few flags from --help: {:?}",
        help.keys()
    );

    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/configuration.md");
    let markdown = std::fs::read_to_string(&path).unwrap();
    let (reference, twice) = reference_flags(&markdown);
    assert!(twice.is_empty(), "flags with more than one row: {twice:?}");

    let problems = differences(&help, &reference);
    assert!(
        problems.is_empty(),
        "docs/configuration.md and `securesock --help` disagree:\n  {}",
        problems.join("\n  ")
    );
}

/// The parser against clap's layouts: grouped under headings, short and long forms, possible
/// values whose lines start with `-`, a description that names another flag, a quoted default.
#[test]
fn help_parser_reads_flags_env_and_defaults_and_nothing_else() {
    let help = "\
Usage: securesock [OPTIONS]

Listen:
      --listen <ADDR>
          Address to listen on
          --not-a-flag in a description
          
          [env: SECURESOCK_LISTEN=]
          [default: 0.0.0.0:12345]

      --mode <MODE>
          Possible values:
          - greet:   Send the greeting
          - echo:    Send back
          
          [env: SECURESOCK_MODE=echo]
          [default: greet]

TLS:
      --greeting <TEXT>
          [env: SECURESOCK_GREETING=]
          [default: \"Hello, secure world!\"]

      --strict-sni
          Refuse unknown names

Options:
  -h, --help
          Print help
";
    let flags = help_flags(help);
    let names: Vec<&str> = flags.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        ["--greeting", "--help", "--listen", "--mode", "--strict-sni"]
    );
    assert_eq!(flags["--mode"].env.as_deref(), Some("SECURESOCK_MODE"));
    assert_eq!(flags["--mode"].default.as_deref(), Some("greet"));
    assert_eq!(
        flags["--greeting"].default.as_deref(),
        Some("Hello, secure world!")
    );
    assert_eq!(flags["--strict-sni"], Flag::default());
    assert_eq!(flags["--help"], Flag::default());
}

#[test]
fn reference_parser_reads_rows_and_reports_each_difference() {
    let markdown = "\
Prose that mentions `--listen` is not a row.

| flag | environment | default | meaning |
|---|---|---|---|
| `--listen ADDR` | `SECURESOCK_LISTEN` | `0.0.0.0:12345` | where |
| `--mode MODE` | `SECURESOCK_MODE` | `echo` | what |
| `--help`, `-h` | — | — | help |
| `--gone` | `SECURESOCK_GONE` | — | removed from the binary |
| `--help` | — | — | again |
";
    let (reference, twice) = reference_flags(markdown);
    assert_eq!(twice, ["--help"]);
    let help = help_flags(
        "\
Options:
      --listen <ADDR>
          [env: SECURESOCK_LISTEN=]
          [default: 0.0.0.0:12345]
      --mode <MODE>
          [env: SECURESOCK_MODE=]
          [default: greet]
      --new <X>
          [env: SECURESOCK_NEW=]
  -h, --help
          Print help
",
    );
    assert_eq!(
        differences(&help, &reference),
        [
            "--mode: --help says default `greet`, the reference's default column is \"`echo`\"",
            "--new: printed by --help, no row in the reference",
            "--gone: a row in the reference, not printed by --help",
        ]
    );
}
