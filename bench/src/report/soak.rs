//! The soak section: failures, RSS, open descriptors and threads of securesock at the start, the
//! middle and the end of N connections.

use serde_json::{Map, Value};

use super::{Facts, preamble};
use crate::stats::{f, s, text};

/// The rows, failures counted so far: each record is a sample (`after`) labelled `point` and
/// `connections`, with the load run that led to it (if any) as `run`.
pub fn rows(results: &[Value]) -> Vec<String> {
    let mut failed = 0.0;
    results
        .iter()
        .map(|v| {
            failed += f(v, "/run/failed").unwrap_or(0.0);
            format!(
                "| {} | {} | {failed} | {:.1} | {} | {} |",
                s(v, "/point"),
                text(v, "/connections"),
                f(v, "/after/rss_kb").unwrap_or(0.0) / 1024.0,
                text(v, "/after/fds"),
                text(v, "/after/threads"),
            )
        })
        .collect()
}

/// Every run's failure reasons, merged (a reason seen again takes the later count).
fn errors(results: &[Value]) -> Value {
    let mut all = Map::new();
    for v in results {
        if let Some(Value::Object(e)) = v.pointer("/run/errors") {
            all.extend(e.clone());
        }
    }
    Value::Object(all)
}

pub fn markdown(facts: &Facts, results: &[Value]) -> String {
    let failed: f64 = results.iter().filter_map(|v| f(v, "/run/failed")).sum();
    let peak = results
        .last()
        .and_then(|v| f(v, "/after/hwm_kb"))
        .unwrap_or(0.0)
        / 1024.0;
    let bullets = [
        format!(
            "command: `{}`; 16 clients, full handshakes, {} s in all; peak RSS {peak:.1} MiB",
            facts.get("command"),
            facts.get("seconds")
        ),
        format!("failures: {failed} ({})", errors(results)),
    ];
    let mut out = preamble(
        &format!("## Soak: {} connections", facts.get("soak_n")),
        facts,
        &bullets,
    );
    out.push_str("| point | connections so far | failed so far | RSS MiB | open fds | threads |\n");
    out.push_str("|---|---:|---:|---:|---:|---:|\n");
    for line in rows(results) {
        out.push_str(&line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::fixtures::facts;
    use serde_json::json;

    #[test]
    fn section_from_fixed_rows() {
        let snap = |rss, hwm| json!({"rss_kb": rss, "hwm_kb": hwm, "fds": 7, "threads": 3});
        let results = [
            json!({"point": "start", "connections": 0, "after": snap(5120, 5120)}),
            json!({"point": "middle", "connections": 1000, "after": snap(6144, 8000),
                   "run": {"failed": 2, "errors": {"connect: refused": 2}}}),
            json!({"point": "end", "connections": 2000, "after": snap(6200, 9216),
                   "run": {"failed": 1, "errors": {"connect: refused": 1, "handshake: eof": 0}}}),
        ];
        let md = markdown(&facts("soak_n=2000\nseconds=4\n"), &results);
        assert!(md.starts_with("## Soak: 2000 connections\n\n- machine"));
        assert!(md.contains("- command: `scripts/bench.sh --quick`; 16 clients, full handshakes, 4 s in all; peak RSS 9.0 MiB\n"));
        assert!(md.contains("- failures: 3 ({\"connect: refused\":1,\"handshake: eof\":0})\n"));
        assert!(md.ends_with(
            "|---|---:|---:|---:|---:|---:|\n| start | 0 | 0 | 5.0 | 7 | 3 |\n| middle | 1000 | 2 | 6.0 | 7 | 3 |\n| end | 2000 | 3 | 6.1 | 7 | 3 |\n"
        ));
    }
}
