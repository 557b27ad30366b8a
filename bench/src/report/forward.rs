//! The forward-mode section: one connection's bulk transfer up and down through each forwarder,
//! medians of MB/s and server CPU s/GiB per chunk pairing, with ratios to nginx.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{Facts, preamble, rank};
use crate::stats::{f, floor, median, num, r, ratio, row, s};

const ORDER: [&str; 3] = ["securesock", "nginx", "stunnel"];

/// Medians of one (chunks, server, direction).
#[derive(Debug, Clone, Copy, Default)]
struct Cell {
    mbs: Option<f64>,
    cpu: Option<f64>,
    runs: usize,
}

/// A chunk pairing's runs: server -> direction -> runs.
type ByServer<'a> = BTreeMap<String, BTreeMap<String, Vec<&'a Value>>>;

/// The table rows: chunk pairings from the largest, then servers in their order.
pub fn rows(results: &[Value]) -> Vec<String> {
    // (client chunk, upstream chunk) -> server -> direction -> runs
    let mut groups: BTreeMap<(u64, u64), ByServer> = BTreeMap::new();
    for v in results {
        let chunks = (
            v["client_chunk"].as_u64().unwrap_or(0),
            v["upstream_chunk"].as_u64().unwrap_or(0),
        );
        groups
            .entry(chunks)
            .or_default()
            .entry(s(v, "/server").to_string())
            .or_default()
            .entry(s(v, "/direction").to_string())
            .or_default()
            .push(v);
    }
    let cell = |runs: Option<&Vec<&Value>>| {
        runs.map_or_else(Cell::default, |runs| Cell {
            mbs: median(runs.iter().filter_map(|v| f(v, "/mb_per_s")).collect()),
            cpu: median(runs.iter().filter_map(|v| f(v, "/cpu_s_per_gib")).collect()),
            runs: runs.len(),
        })
    };
    let kib = |c: u64| format!("{} KiB", num(c as f64 / 1024.0));
    let mut out = Vec::new();
    for ((cc, uc), servers) in groups.into_iter().rev() {
        let ng = servers.get("nginx");
        let (ng_up, ng_down) = (
            cell(ng.and_then(|d| d.get("up"))),
            cell(ng.and_then(|d| d.get("down"))),
        );
        let mut names: Vec<&String> = servers.keys().collect();
        names.sort_by_key(|n| rank(&ORDER, n));
        for name in names {
            let dirs = &servers[name];
            let (up, down) = (cell(dirs.get("up")), cell(dirs.get("down")));
            out.push(row(&[
                kib(cc),
                kib(uc),
                name.clone(),
                floor(up.mbs),
                r(ratio(up.mbs, ng_up.mbs), 2),
                r(up.cpu, 2),
                r(ratio(up.cpu, ng_up.cpu), 2),
                floor(down.mbs),
                r(ratio(down.mbs, ng_down.mbs), 2),
                r(down.cpu, 2),
                r(ratio(down.cpu, ng_down.cpu), 2),
                (up.runs + down.runs).to_string(),
            ]));
        }
    }
    out
}

pub fn markdown(facts: &Facts, results: &[Value]) -> String {
    let bytes = facts.get("bulk_bytes");
    let bullets = [
        format!(
            "command: `{}` ({} round(s), peers alternated within each direction); load average (1, 5, 15 min) {} before, {} after ({} cores, shared with other builds)",
            facts.get("command"),
            facts.get("rounds"),
            facts.get("load_before"),
            facts.get("load_after"),
            facts.get("nproc")
        ),
        format!(
            "one TLS 1.3 connection per run: `examples/bulk.rs` sends {bytes} bytes up (the upstream counts them to EOF and answers with the count) or asks for {bytes} bytes down; the clock runs from connect to the last byte; every pairing of the client's `SSL_read`/`SSL_write` size and the upstream's `read`/`write` size in {{256 KiB, 16 KiB}} (`bulk up|down ADDR BYTES CHUNK UPSTREAM-CHUNK`), rounds interleaved: each round runs every pairing, direction and peer once"
        ),
        "peers: securesock `--mode forward --upstream`; nginx stream `proxy_pass` with `proxy_half_close on` (2 workers, default `proxy_buffer_size` 16k); stunnel `connect =`; all with the same certificate and Mozilla intermediate v6.0 settings as above".to_string(),
        "server CPU: utime+stime of the forwarder's processes over the run ÷ GiB moved; medians over the rounds; ratios are to nginx".to_string(),
        format!("kernel TLS offload: {}", facts.get("ktls")),
    ];
    let mut out = preamble(
        "## Forward mode: bulk transfer on one connection",
        facts,
        &bullets,
    );
    out.push_str("| client chunk | upstream chunk | server | up MB/s | ×nginx | up CPU s/GiB | ×nginx | down MB/s | ×nginx | down CPU s/GiB | ×nginx | runs |\n");
    out.push_str("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
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

    fn run(server: &str, dir: &str, cc: u64, uc: u64, mbs: f64, cpu: f64) -> Value {
        json!({"server": server, "direction": dir, "client_chunk": cc, "upstream_chunk": uc,
               "bytes": 67108864, "mb_per_s": mbs, "cpu_s_per_gib": cpu})
    }

    #[test]
    fn table_from_fixed_rows() {
        let results = [
            run("nginx", "up", 16384, 16384, 500.0, 2.0),
            run("securesock", "up", 16384, 16384, 750.5, 1.0),
            run("securesock", "down", 16384, 16384, 900.0, 1.5),
            run("nginx", "down", 16384, 16384, 600.0, 3.0),
            run("securesock", "up", 262144, 16384, 1000.0, 0.5),
        ];
        assert_eq!(
            rows(&results),
            [
                // The larger client chunk first; no nginx there: no ratios.
                "| 256 KiB | 16 KiB | securesock | 1000 | - | 0.5 | - | - | - | - | - | 1 |",
                "| 16 KiB | 16 KiB | securesock | 750 | 1.5 | 1 | 0.5 | 900 | 1.5 | 1.5 | 0.5 | 2 |",
                "| 16 KiB | 16 KiB | nginx | 500 | 1 | 2 | 1 | 600 | 1 | 3 | 1 | 2 |",
            ]
        );
        let md = markdown(&facts("bulk_bytes=67108864\nktls=unavailable\n"), &results);
        assert!(md.starts_with("## Forward mode: bulk transfer on one connection\n\n- machine"));
        assert!(md.contains("sends 67108864 bytes up"));
        assert!(md.contains("- kernel TLS offload: unavailable\n\n| client chunk |"));
    }
}
