//! The manual pages and completion scripts the binary writes (`securesock manual PAGE`,
//! `securesock completions SHELL`): every flag `--help` prints is in securesock(1), every key the
//! file accepts is in securesock.toml(5), `man -l` renders both, and each shell loads its script.
//! Through the real binary: its stdout is what the package installs.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::process::{Command, Output, Stdio};

use crate::support::{binary, require_tool};

fn run(args: &[&str]) -> Output {
    let out = Command::new(binary())
        .args(args)
        .output()
        .expect("running securesock");
    assert!(
        out.status.success(),
        "securesock {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The page's roff source, with roff's escaped hyphens (`\-`) back as `-`.
fn page_source(page: &str) -> String {
    String::from_utf8(run(&["manual", page]).stdout)
        .expect("UTF-8 roff")
        .replace("\\-", "-")
}

/// Every `--long` flag at the start of an option line of `securesock --help` (and of `check
/// --help`), the way docs_reference reads them.
fn help_flags(args: &[&str]) -> BTreeSet<String> {
    let help = String::from_utf8(run(args).stdout).unwrap();
    help.lines()
        .filter_map(|line| {
            let text = line.trim_start();
            let indent = line.len() - text.len();
            ((1..=6).contains(&indent) && text.starts_with('-')).then_some(text)
        })
        .flat_map(|text| {
            text.split_whitespace()
                .take_while(|w| w.starts_with('-'))
                .map(|w| w.trim_end_matches(',').to_string())
                .filter(|w| w.starts_with("--"))
                .map(|w| w.split(['=', '<', '[']).next().unwrap_or(&w).to_string())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The option lines of a rendered OPTIONS-style section: `.TP` then the term line in bold.
fn page_flags(source: &str) -> BTreeSet<String> {
    let lines: Vec<&str> = source.lines().collect();
    lines
        .windows(2)
        .filter(|w| w[0] == ".TP")
        .flat_map(|w| {
            w[1].split(['\\', ' ', ','])
                .filter_map(|word| word.strip_prefix("fB").or(Some(word)))
                .filter(|word| word.starts_with("--"))
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn every_flag_of_help_has_its_entry_in_securesock_1() {
    let flags = help_flags(&["--help"]);
    assert!(
        flags.len() > 40 && flags.contains("--listen") && flags.contains("--config"),
        "too few flags read from --help: {flags:?}"
    );
    let source = page_source("securesock.1");
    let entries = page_flags(&source);
    let missing: Vec<&String> = flags.difference(&entries).collect();
    assert!(
        missing.is_empty(),
        "flags in --help without an entry in securesock(1): {missing:?}"
    );
    // And the reverse: the page names no flag the program lacks.
    let extra: Vec<&String> = entries.difference(&flags).collect();
    assert!(extra.is_empty(), "entries for no flag: {extra:?}");
    // Each flag's variable is on the page too, and every visible subcommand.
    for env in [
        "SECURESOCK_LISTEN",
        "SECURESOCK_UPSTREAM_RESOLVE",
        "SECURESOCK_CONFIG",
    ] {
        assert!(source.contains(env), "{env} not in securesock(1)");
    }
    for sub in [
        "securesock check",
        "securesock import-stunnel",
        "securesock completions",
    ] {
        assert!(source.contains(sub), "{sub} not in securesock(1)");
    }
    for section in ["SIGNALS", "EXIT STATUS", "FILES", "ENVIRONMENT"] {
        assert!(
            source.contains(&format!(".SH \"{section}\""))
                || source.contains(&format!(".SH {section}")),
            "no {section} section"
        );
    }
}

/// The keys of securesock.toml(5): each `.TP` entry's term, `key = type`.
fn page_keys(source: &str, from: &str, to: &str) -> BTreeSet<String> {
    let start = source.find(from).unwrap_or_else(|| panic!("no {from}")) + from.len();
    let end = source[start..].find(to).map_or(source.len(), |e| start + e);
    let lines: Vec<&str> = source[start..end].lines().collect();
    lines
        .windows(2)
        .filter(|w| w[0] == ".TP")
        .filter_map(|w| {
            let term = w[1].strip_prefix("\\fB")?;
            Some(term.split("\\fR").next()?.to_string())
        })
        .collect()
}

#[test]
fn every_key_the_file_accepts_is_in_securesock_toml_5() {
    let source = page_source("securesock.toml.5");
    let flags = help_flags(&["--help"]);
    let process = page_keys(&source, ".SH \"PROCESS KEYS\"", ".SH");
    let service = page_keys(&source, ".SH \"SERVICE KEYS\"", ".SH \"ROUTE KEYS\"");
    assert!(
        process.contains("metrics-listen") && !process.contains("listen"),
        "[process]: {process:?}"
    );
    assert!(
        service.contains("name") && service.contains("upstream"),
        "{service:?}"
    );
    // Each flag but --config, --help and --version is a key of [process], of a service, or of both.
    for flag in &flags {
        let key = flag.trim_start_matches("--");
        if ["config", "help", "version"].contains(&key) {
            continue;
        }
        assert!(
            process.contains(key) || service.contains(key),
            "{flag} is no key in securesock.toml(5)"
        );
    }
    // What the page says a service key is, the loader takes: one file setting each of them.
    // (Only that each is accepted as a key; values are the flags' own tests'.)
    let dir = tempfile::tempdir().unwrap();
    for key in service.iter().filter(|k| k.as_str() != "name") {
        let file = dir.path().join("one.toml");
        std::fs::write(&file, format!("[[service]]\nname = \"a\"\n{key} = []\n")).unwrap();
        let out = Command::new(binary())
            .arg("--config")
            .arg(&file)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !stderr.contains("unknown key"),
            "securesock.toml(5) lists {key}, which the file refuses: {stderr}"
        );
    }
    for section in [
        "[process]",
        "[defaults]",
        "[[service]]",
        "[[service.route]]",
    ] {
        assert!(
            source.contains(section),
            "{section} not in securesock.toml(5)"
        );
    }
}

/// `man -l FILE` renders the page as text, wide enough that no flag is hyphenated at a line end.
fn man(page: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(page);
    std::fs::write(&file, run(&["manual", page]).stdout).unwrap();
    let out = Command::new("man")
        .arg("-l")
        .arg(&file)
        .env("MANWIDTH", "400")
        .env("MANPAGER", "cat")
        .env("PAGER", "cat")
        .env("LANG", "C.UTF-8")
        .output()
        .expect("running man");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "man -l {page}: {stderr}");
    // groff's warnings (a bad request, a macro it does not know) are roff errors in the page.
    assert!(stderr.trim().is_empty(), "man -l {page} warned: {stderr}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn man_renders_both_pages() {
    if !require_tool("man", "rendering the generated pages with man -l") {
        return;
    }
    let text = man("securesock.1");
    assert!(text.contains("SECURESOCK(1)"), "{text}");
    for flag in help_flags(&["--help"]) {
        assert!(text.contains(&flag), "man -l shows no {flag}");
    }
    assert!(text.contains("EXIT STATUS") && text.contains("SIGHUP"));

    let text = man("securesock.toml.5");
    assert!(text.contains("SECURESOCK.TOML(5)"), "{text}");
    assert!(text.contains("[[service.route]]") && text.contains("upstream-resolve = "));
    assert!(
        text.contains("name = \"web\""),
        "the example is shown as written"
    );
}

#[test]
fn each_shell_loads_its_completion_script() {
    let bash = String::from_utf8(run(&["completions", "bash"]).stdout).unwrap();
    assert!(bash.contains("--upstream-resolve") && bash.contains("import-stunnel"));
    // bash: sourcing it registers the completion for securesock.
    let mut child = Command::new("bash")
        .args([
            "--norc",
            "-c",
            "source /dev/stdin && complete -p securesock",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(bash.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("securesock"),
        "bash did not register it: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (shell, check) in [("zsh", "-n"), ("fish", "--no-execute")] {
        let script = run(&["completions", shell]).stdout;
        assert!(
            String::from_utf8_lossy(&script).contains("upstream-resolve"),
            "{shell}"
        );
        if !require_tool(shell, "checking the syntax of its completion script") {
            continue;
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("securesock.completion");
        std::fs::write(&file, &script).unwrap();
        let out = Command::new(shell).arg(check).arg(&file).output().unwrap();
        assert!(
            out.status.success(),
            "{shell} {check}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
