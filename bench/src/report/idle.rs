//! The idle-connections section: a server's memory before and with K idle connections, how fast it
//! accepted the burst, and whether a second client (127.0.0.2) was still served in 50 ms.

use serde_json::Value;

use super::{Facts, preamble};
use crate::stats::{f, floor, r, ratio, round_to, s, text};

/// One server's row, from its record: labels `name`, `k`, `accept_ms`; the holder's first line
/// as `idle`, the probe's result as `probe`; samples `before` (idle connections not yet open)
/// and `after` (all accepted).
pub fn row(rec: &Value) -> String {
    let mib = |p: &str| f(rec, p).map(|kb| kb / 1024.0);
    let (rss0, rss1) = (f(rec, "/before/rss_kb"), f(rec, "/after/rss_kb"));
    let accepted = f(rec, "/after/fds")
        .zip(f(rec, "/before/fds"))
        .map(|(a, b)| a - b);
    let probe_ok = f(rec, "/probe/ok");
    let probe_max = f(rec, "/probe/latency_us/max");
    let served = probe_ok == Some(20.0) && probe_max.is_some_and(|m| m < 50_000.0);
    format!(
        "| {} | {} | {} | {} | {} in ≤ {} | {} | {} | {} | {} ({}/20 ok, max {} ms) |",
        s(rec, "/name"),
        text(rec, "/k"),
        text(rec, "/idle/connected"),
        floor(f(rec, "/idle/burst_ms").map(|b| round_to(b, 0))),
        floor(accepted),
        text(rec, "/accept_ms"),
        r(mib("/before/rss_kb"), 1),
        r(mib("/after/rss_kb"), 1),
        r(ratio(rss1.zip(rss0).map(|(a, b)| a - b), f(rec, "/k")), 1),
        if served { "yes" } else { "no" },
        probe_ok.map_or("-".into(), |n| n.to_string()),
        r(probe_max.map(|m| m / 1000.0), 1),
    )
}

pub fn markdown(facts: &Facts, results: &[Value]) -> String {
    let (k, timeout) = (facts.get("idle_k"), facts.get("handshake_timeout"));
    let bullets = [
        format!("command: `{}`", facts.get("command")),
        format!("{k} TCP connections from 127.0.0.1 that never send a byte (`securesock-bench --idle {k} -c 4`), held while measuring; securesock runs with `--max-per-ip 10000 --max-connections 20000 --handshake-timeout {timeout}`, nginx with 2 workers and `ssl_handshake_timeout {timeout}s`"),
        "accepted: the server's open descriptors grew by this many, within this time from starting the burst (polled every 10 ms); RSS is VmRSS summed over the server's processes (nginx: master + workers, shared pages counted in each)".to_string(),
        "second client: 20 full handshakes from 127.0.0.2 while the burst is held; \"yes\" when all succeed with the slowest under 50 ms".to_string(),
    ];
    let mut out = preamble("## Idle connections: memory and fairness", facts, &bullets);
    out.push_str("| server | idle asked | connected | client burst ms | accepted | RSS before MiB | RSS with idle MiB | KiB per idle conn | 127.0.0.2 served in 50 ms |\n");
    out.push_str("|---|---:|---:|---:|---|---:|---:|---:|---|\n");
    for rec in results {
        out.push_str(&row(rec));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn row_from_a_fixed_record() {
        let rec = json!({
            "name": "securesock", "k": 200, "accept_ms": 57,
            "idle": {"mode": "idle", "connected": 200, "burst_ms": 12.6},
            "probe": {"ok": 20, "latency_us": {"max": 4_260}},
            "before": {"rss_kb": 5120, "fds": 6},
            "after": {"rss_kb": 7168, "fds": 206},
        });
        assert_eq!(
            row(&rec),
            "| securesock | 200 | 200 | 13 | 200 in ≤ 57 | 5 | 7 | 10.2 | yes (20/20 ok, max 4.3 ms) |"
        );
        let slow = json!({"name": "nginx", "k": 200, "accept_ms": 1,
            "idle": {"connected": 200, "burst_ms": 1}, "probe": {"ok": 20, "latency_us": {"max": 50_000}},
            "before": {"rss_kb": 0, "fds": 0}, "after": {"rss_kb": 0, "fds": 0}});
        assert!(row(&slow).ends_with("| no (20/20 ok, max 50 ms) |"));
    }
}
