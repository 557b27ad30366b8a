//! The benchmark report: each section's markdown (and the throughput chart's gnuplot data) from
//! the records `securesock-bench record` wrote during the run, and the facts the script knows about
//! it (the command line, rounds, load averages, versions). One module per section; `markdown`
//! puts a section into a BENCHMARKS.md between its markers.
//!
//! The report only reads records and facts and writes text; it never runs or samples anything, so
//! a table can be checked from fixed rows.

pub mod client;
pub mod established;
pub mod forward;
pub mod idle;
pub mod markdown;
pub mod services;
pub mod soak;
pub mod throughput;

use std::collections::BTreeMap;

use serde_json::Value;

/// What the script knows about the run, as `KEY=VALUE` lines (the last one of a key wins), and
/// the machine and versions lines every section opens with.
#[derive(Debug, Default, Clone)]
pub struct Facts {
    map: BTreeMap<String, String>,
    /// Markdown list lines, each ending in a newline.
    pub versions: String,
}

impl Facts {
    /// Adds `KEY=VALUE` lines; lines without `=` are ignored.
    pub fn add_lines(&mut self, text: &str) {
        for line in text.lines() {
            if let Some((k, v)) = line.split_once('=') {
                self.map.insert(k.to_string(), v.to_string());
            }
        }
    }

    /// A fact, or "" when the script did not give it.
    pub fn get(&self, key: &str) -> &str {
        self.map.get(key).map_or("", String::as_str)
    }
}

/// Every JSON line of a records file (blank lines skipped).
pub fn records(text: &str) -> anyhow::Result<Vec<Value>> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).map_err(|e| anyhow::anyhow!("not a JSON record ({e}): {l}"))
        })
        .collect()
}

/// The place of `name` in `order`, for sorting rows as the report always has (None first).
pub fn rank(order: &[&str], name: &str) -> Option<usize> {
    order.iter().position(|o| *o == name)
}

/// A section's heading, the versions lines, then its bullet lines and a blank line.
pub fn preamble(title: &str, facts: &Facts, bullets: &[String]) -> String {
    let mut out = format!("{title}\n\n{}", facts.versions);
    for b in bullets {
        out.push_str("- ");
        out.push_str(b);
        out.push('\n');
    }
    out.push('\n');
    out
}

#[cfg(test)]
pub(crate) mod fixtures {
    use super::Facts;

    /// The facts every section's tests share.
    pub(crate) fn facts(extra: &str) -> Facts {
        let mut f = Facts {
            versions: "- machine: 2 cores\n- OpenSSL 3.0.17 1 Jul 2025\n".to_string(),
            ..Facts::default()
        };
        f.add_lines("command=scripts/bench.sh --quick\nrounds=1\nduration=1\nnproc=2\ngroups=X25519:prime256v1:secp384r1\n");
        f.add_lines(extra);
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_keep_the_last_value_and_values_may_hold_equals_signs() {
        let mut f = Facts::default();
        f.add_lines("a=1\nenv=GLIBC_TUNABLES=glibc.malloc.tcache_count=0\nnot a fact\na=2\n");
        assert_eq!(f.get("a"), "2");
        assert_eq!(f.get("env"), "GLIBC_TUNABLES=glibc.malloc.tcache_count=0");
        assert_eq!(f.get("missing"), "");
    }

    #[test]
    fn records_are_json_lines() {
        let r = records("{\"a\":1}\n\n{\"a\":2}\n").unwrap();
        assert_eq!(r.len(), 2);
        assert!(records("{\"a\":1}\nnope\n").is_err());
    }
}
