//! The client-mode section: plaintext load through securesock `--mode client` and stunnel
//! `client = yes`, medians per handshake kind and clients, ratios to stunnel and the goal's verdict
//! (at least 1.5x stunnel's conns/s at no more than 0.7x its CPU per connection).

use std::collections::BTreeMap;

use serde_json::Value;

use super::{Facts, preamble};
use crate::stats::{f, floor, median, num, r, ratio, row, s};

struct Median {
    kind: String,
    concurrency: u64,
    server: String,
    rate: Option<f64>,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    cpu: Option<f64>,
    failed: f64,
    ok: f64,
}

/// The table rows: full before resumed, by clients, securesock before stunnel.
pub fn rows(results: &[Value]) -> Vec<String> {
    let mut groups: BTreeMap<(String, u64, String), Vec<&Value>> = BTreeMap::new();
    for v in results {
        let key = (
            s(v, "/kind").to_string(),
            v["concurrency"].as_u64().unwrap_or(0),
            s(v, "/server").to_string(),
        );
        groups.entry(key).or_default().push(v);
    }
    let med = |runs: &[&Value], p: &str| median(runs.iter().filter_map(|v| f(v, p)).collect());
    let mut meds: Vec<Median> = groups
        .into_iter()
        .map(|((kind, concurrency, server), runs)| Median {
            rate: med(&runs, "/conns_per_s"),
            p50_ms: med(&runs, "/latency_us/p50").map(|x| x / 1000.0),
            p99_ms: med(&runs, "/latency_us/p99").map(|x| x / 1000.0),
            cpu: med(&runs, "/server_cpu_us"),
            failed: runs.iter().filter_map(|v| f(v, "/failed")).sum(),
            ok: runs.iter().filter_map(|v| f(v, "/ok")).sum(),
            kind,
            concurrency,
            server,
        })
        .collect();
    meds.sort_by_key(|m| (m.kind != "full", m.concurrency, m.server != "securesock"));
    meds.iter()
        .map(|m| {
            let st = meds.iter().find(|n| {
                n.server == "stunnel" && n.kind == m.kind && n.concurrency == m.concurrency
            });
            let xr = ratio(m.rate, st.and_then(|n| n.rate));
            let xc = ratio(m.cpu, st.and_then(|n| n.cpu));
            let goal = match (m.server.as_str(), xr, xc) {
                ("stunnel", _, _) => "",
                (_, Some(xr), Some(xc)) if xr >= 1.5 && xc <= 0.7 => "met",
                _ => "not met",
            };
            row(&[
                m.kind.clone(),
                m.concurrency.to_string(),
                m.server.clone(),
                floor(m.rate),
                r(xr, 2),
                r(m.p50_ms, 2),
                r(m.p99_ms, 2),
                r(m.cpu, 2),
                r(xc, 2),
                num(m.failed),
                num(m.ok),
                goal.to_string(),
            ])
        })
        .collect()
}

/// Resumed handshakes among all a greet upstream completed, from its `conn` log lines ("-" when
/// it completed none).
pub fn resumed_pct(log: &str) -> String {
    let ok: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" conn ") && l.contains("result=ok"))
        .collect();
    if ok.is_empty() {
        return "-".to_string();
    }
    let resumed = ok.iter().filter(|l| l.contains("resumed=yes")).count();
    format!("{:.1}", 100.0 * resumed as f64 / ok.len() as f64)
}

pub fn markdown(facts: &Facts, results: &[Value]) -> String {
    let duration = facts.get("duration");
    let pct = |key: &str| {
        std::fs::read_to_string(facts.get(key))
            .map_or_else(|_| "-".to_string(), |l| resumed_pct(&l))
    };
    let bullets = [
        format!(
            "command: `{}` ({} round(s), {duration} s per run, peers alternated within each cell)",
            facts.get("command"),
            facts.get("rounds")
        ),
        format!("load: `securesock-bench --plaintext -c CLIENTS -d {duration}`: a plaintext TCP connection, the greeting, a clean EOF; the TLS client in between connects to the upstream, verifies it and relays"),
        "peers: securesock `--mode client --upstream 127.0.0.1:PORT --upstream-ca CERT` (the upstream's IP checked against its certificate); stunnel `client = yes` with `CAfile`, `verifyChain = yes`, `checkIP = 127.0.0.1`; both with Mozilla intermediate v6.0 from the client's side".to_string(),
        format!(
            "upstreams: **full** handshakes go to nginx stream `return` with `ssl_session_cache off` and `ssl_session_tickets off` (2 workers; nothing can resume); **resumed** ones to a securesock greet server per peer (TLS 1.3 tickets), whose logs count the resumed handshakes: securesock client {} %, stunnel client {} % of the connections they completed",
            pct("securesock_upstream_log"),
            pct("stunnel_upstream_log")
        ),
        "CPU: utime+stime of the TLS client's process over the run ÷ successful connections (the upstream's and the load generator's are not counted); medians over the rounds; × is securesock ÷ stunnel".to_string(),
        "goal: at least 1.5× stunnel's conns/s at no more than 0.7× its CPU per connection".to_string(),
    ];
    let mut out = preamble("## Client mode: plaintext in, TLS out", facts, &bullets);
    out.push_str("| handshake | clients | peer | conns/s | ×stunnel | p50 ms | p99 ms | CPU µs/conn | ×stunnel | failed | ok | goal |\n");
    out.push_str("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
    for line in rows(results) {
        out.push_str(&line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(server: &str, kind: &str, c: u64, rate: f64, cpu: Option<f64>) -> Value {
        json!({"server": server, "kind": kind, "concurrency": c, "conns_per_s": rate,
               "latency_us": {"p50": 1234, "p99": 5678}, "server_cpu_us": cpu, "failed": 1, "ok": 99})
    }

    #[test]
    fn table_from_fixed_rows() {
        let results = [
            run("stunnel", "resumed", 1, 100.0, Some(100.0)),
            run("securesock", "resumed", 1, 149.0, Some(50.0)),
            run("stunnel", "full", 16, 100.0, Some(100.0)),
            run("securesock", "full", 16, 200.0, Some(70.0)),
            run("securesock", "full", 1, 300.0, None),
        ];
        assert_eq!(
            rows(&results),
            [
                "| full | 1 | securesock | 300 | - | 1.23 | 5.68 | - | - | 1 | 99 | not met |",
                "| full | 16 | securesock | 200 | 2 | 1.23 | 5.68 | 70 | 0.7 | 1 | 99 | met |",
                "| full | 16 | stunnel | 100 | 1 | 1.23 | 5.68 | 100 | 1 | 1 | 99 |  |",
                "| resumed | 1 | securesock | 149 | 1.49 | 1.23 | 5.68 | 50 | 0.5 | 1 | 99 | not met |",
                "| resumed | 1 | stunnel | 100 | 1 | 1.23 | 5.68 | 100 | 1 | 1 | 99 |  |",
            ]
        );
    }

    #[test]
    fn resumed_share_counts_only_completed_connections() {
        let log = "INFO listening on 127.0.0.1:1\n\
            INFO conn peer=a result=ok resumed=yes\n\
            INFO conn peer=b result=ok resumed=no\n\
            INFO conn peer=c result=handshake-failed resumed=no\n\
            INFO conn peer=d result=ok resumed=yes\n";
        assert_eq!(resumed_pct(log), "66.7");
        assert_eq!(resumed_pct("INFO listening\n"), "-");
    }
}
