//! One measured run as one JSON line: the load generator's (or `bulk`'s) result, the samples of
//! the server taken before and after it, the labels the script gives it (server, round, ...), and
//! what follows from them for its section (server CPU per connection or per GiB, memory per held
//! connection), plus the progress line the script prints while it runs.
//!
//! This module turns inputs into a record; it never reads /proc (procfs does) and never writes a
//! table (the report does).

use serde_json::{Map, Value, json};

use crate::procfs::KERNEL_STACK_KIB;
use crate::stats::{f, floor, num, r, ratio, s, text};

/// What goes into a record, already read from its files.
#[derive(Debug, Default)]
pub struct Inputs {
    /// The run's own result: its fields become the record's.
    pub run: Option<Value>,
    pub before: Option<Value>,
    pub after: Option<Value>,
    /// Other results kept under a name of their own (a repeated name collects a list).
    pub named: Vec<(String, Value)>,
    /// Labels: `KEY=VALUE`, numbers kept as numbers.
    pub labels: Vec<(String, String)>,
}

/// A label's value: a number when it reads as one, else the text.
fn label_value(v: &str) -> Value {
    match serde_json::from_str::<Value>(v) {
        Ok(n @ Value::Number(_)) => n,
        _ => Value::String(v.to_string()),
    }
}

/// Every value stored under a name, whether it was given once or more.
pub fn all(v: &Value, key: &str) -> Vec<Value> {
    match v.get(key) {
        Some(Value::Array(list)) => list.clone(),
        Some(one) => vec![one.clone()],
        None => Vec::new(),
    }
}

/// The merged record, before its section adds what follows from it.
pub fn merge(inputs: Inputs) -> Value {
    let mut rec = match inputs.run {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    for (k, v) in inputs.labels {
        rec.insert(k, label_value(&v));
    }
    for (k, v) in inputs.named {
        match rec.get_mut(&k) {
            Some(Value::Array(list)) => list.push(v),
            Some(first) => *first = Value::Array(vec![first.take(), v]),
            None => {
                rec.insert(k, v);
            }
        }
    }
    if let (Some(b), Some(a)) = (&inputs.before, &inputs.after) {
        // Ticks, not seconds, so each section's arithmetic is done once, in one order.
        let ticks = f(a, "/cpu_ticks").unwrap_or(0.0) - f(b, "/cpu_ticks").unwrap_or(0.0);
        rec.insert("server_cpu_ticks".into(), json!(ticks.max(0.0)));
        rec.insert("clk_tck".into(), json!(f(a, "/clk_tck").unwrap_or(100.0)));
    }
    if let Some(b) = inputs.before {
        rec.insert("before".into(), b);
    }
    if let Some(a) = inputs.after {
        rec.insert("after".into(), a);
    }
    Value::Object(rec)
}

/// Server CPU in µs per successful connection, None when none succeeded.
fn cpu_us_per_conn(rec: &Value) -> Option<f64> {
    let (t, tck, ok) = (
        f(rec, "/server_cpu_ticks")?,
        f(rec, "/clk_tck")?,
        f(rec, "/ok")?,
    );
    (ok > 0.0).then(|| t * 1_000_000.0 / tck / ok)
}

/// Adds what the section derives from a merged record, and returns it with its progress line.
pub fn finish(section: &str, mut rec: Value) -> (Value, Option<String>) {
    match section {
        "throughput" | "client" => {
            let cpu = cpu_us_per_conn(&rec);
            rec["server_cpu_us"] = json!(cpu);
            let rate = floor(f(&rec, "/conns_per_s"));
            let p99 = f(&rec, "/latency_us/p99").map_or("null".into(), |p| num(p / 1000.0));
            let failed = text(&rec, "/failed");
            let line = if section == "throughput" {
                format!(
                    "  {} c={} resume={} round {}: {rate} conns/s, p99 {p99} ms, failed {failed}",
                    s(&rec, "/server"),
                    text(&rec, "/concurrency"),
                    text(&rec, "/resume"),
                    text(&rec, "/round"),
                )
            } else {
                format!(
                    "  {} client c={} {} round {}: {rate} conns/s, p99 {p99} ms, {} µs CPU/conn, failed {failed}",
                    s(&rec, "/server"),
                    text(&rec, "/concurrency"),
                    s(&rec, "/kind"),
                    text(&rec, "/round"),
                    floor(Some(cpu.unwrap_or(0.0))),
                )
            };
            (rec, Some(line))
        }
        "forward" => {
            let gib = f(&rec, "/bytes").map(|b| b / 1_073_741_824.0);
            let cpu = match (f(&rec, "/server_cpu_ticks"), f(&rec, "/clk_tck")) {
                (Some(t), Some(tck)) => ratio(Some(t / tck), gib),
                _ => None,
            };
            rec["cpu_s_per_gib"] = json!(cpu);
            let kib = |p| f(&rec, p).map_or("null".into(), |c| num(c / 1024.0));
            let line = format!(
                "  {} {} client {} KiB, upstream {} KiB: {} MB/s, {} CPU s/GiB",
                s(&rec, "/server"),
                s(&rec, "/direction"),
                kib("/client_chunk"),
                kib("/upstream_chunk"),
                text(&rec, "/mb_per_s"),
                r(cpu, 2),
            );
            (rec, Some(line))
        }
        "idle" => {
            let line = crate::report::idle::row(&rec);
            (rec, Some(line))
        }
        "established" => {
            let rec = established(&rec);
            let line = rec.to_string();
            (rec, Some(line))
        }
        _ => (rec, None),
    }
}

/// Memory per held connection: what the server's family and the box's kernel grew by while the
/// connections were held, over how many the holders report connected.
fn established(rec: &Value) -> Value {
    let connected: u64 = all(rec, "holder")
        .iter()
        .filter(|h| s(h, "/mode") == "established")
        .filter_map(|h| h.get("connected")?.as_u64())
        .sum();
    let d = |p: &str| Some(f(rec, &format!("/after{p}"))? - f(rec, &format!("/before{p}"))?);
    let per = |kb: Option<f64>| ratio(kb, Some(connected as f64));
    let meminfo = d("/kernel_stack_kb")
        .zip(d("/page_tables_kb"))
        .map(|(a, b)| a + b);
    let own = d("/threads")
        .zip(d("/pte_kb"))
        .map(|(t, p)| t * KERNEL_STACK_KIB + p);
    let probe = rec.get("probe").cloned().unwrap_or(Value::Null);
    json!({
        "server": rec.get("server"),
        "mode": rec.get("mode"),
        "n": rec.get("n"),
        "connected": connected,
        "load": rec.pointer("/after/load"),
        "rss_kib": per(d("/rss_kb")),
        "kernel_meminfo_kib": per(meminfo),
        "kernel_own_kib": per(own),
        "probe_ok": probe.get("connected"),
        "probe_max_ms": probe.get("slowest_ms"),
        "probe_errors": probe.get("errors"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(ticks: u64, rss: u64, threads: u64, pte: u64, ks: u64, pt: u64) -> Value {
        json!({"cpu_ticks": ticks, "clk_tck": 100, "rss_kb": rss, "threads": threads,
               "pte_kb": pte, "kernel_stack_kb": ks, "page_tables_kb": pt, "load": "1.00 0.50 0.25"})
    }

    #[test]
    fn throughput_cpu_is_per_successful_connection() {
        let rec = merge(Inputs {
            run: Some(
                json!({"ok": 1000, "failed": 0, "conns_per_s": 1234.5, "concurrency": 16, "resume": false, "latency_us": {"p99": 2500}}),
            ),
            before: Some(snap(100, 0, 0, 0, 0, 0)),
            after: Some(snap(350, 0, 0, 0, 0, 0)),
            labels: vec![
                ("server".into(), "nginx".into()),
                ("round".into(), "2".into()),
            ],
            ..Inputs::default()
        });
        let (rec, line) = finish("throughput", rec);
        // 250 ticks at 100/s = 2.5 s over 1000 connections.
        assert_eq!(f(&rec, "/server_cpu_us"), Some(2500.0));
        assert_eq!(rec["round"], json!(2));
        assert_eq!(
            line.unwrap(),
            "  nginx c=16 resume=false round 2: 1234 conns/s, p99 2.5 ms, failed 0"
        );
    }

    #[test]
    fn no_success_means_no_cpu_per_connection() {
        let rec = merge(Inputs {
            run: Some(json!({"ok": 0, "failed": 5, "conns_per_s": 0, "latency_us": {"p99": 0}})),
            before: Some(snap(0, 0, 0, 0, 0, 0)),
            after: Some(snap(10, 0, 0, 0, 0, 0)),
            labels: vec![
                ("server".into(), "stunnel".into()),
                ("kind".into(), "full".into()),
            ],
            ..Inputs::default()
        });
        let (rec, line) = finish("client", rec);
        assert_eq!(rec["server_cpu_us"], Value::Null);
        assert!(line.unwrap().contains("0 µs CPU/conn, failed 5"));
    }

    #[test]
    fn forward_cpu_is_per_gib_moved() {
        let rec = merge(Inputs {
            run: Some(
                json!({"direction": "up", "bytes": 536870912, "client_chunk": 262144, "upstream_chunk": 16384, "mb_per_s": 812.0}),
            ),
            before: Some(snap(0, 0, 0, 0, 0, 0)),
            after: Some(snap(75, 0, 0, 0, 0, 0)),
            labels: vec![("server".into(), "securesock".into())],
            ..Inputs::default()
        });
        let (rec, line) = finish("forward", rec);
        assert_eq!(f(&rec, "/cpu_s_per_gib"), Some(1.5));
        assert_eq!(
            line.unwrap(),
            "  securesock up client 256 KiB, upstream 16 KiB: 812 MB/s, 1.5 CPU s/GiB"
        );
    }

    #[test]
    fn established_memory_is_per_connected_client() {
        let holder = |n| json!({"mode": "established", "connected": n});
        let rec = merge(Inputs {
            before: Some(snap(0, 10_000, 2, 100, 5000, 15000)),
            after: Some(snap(0, 30_000, 102, 1100, 7000, 16000)),
            named: vec![
                ("holder".into(), holder(600)),
                ("holder".into(), holder(400)),
                (
                    "probe".into(),
                    json!({"connected": 20, "slowest_ms": 3.5, "errors": {}}),
                ),
            ],
            labels: vec![
                ("server".into(), "securesock".into()),
                ("mode".into(), "forward".into()),
                ("n".into(), "1000".into()),
            ],
            ..Inputs::default()
        });
        let (rec, _) = finish("established", rec);
        assert_eq!(rec["connected"], json!(1000));
        assert_eq!(f(&rec, "/rss_kib"), Some(20.0));
        assert_eq!(f(&rec, "/kernel_meminfo_kib"), Some(3.0));
        // 100 threads x 16 KiB + 1000 kB of page tables.
        assert_eq!(f(&rec, "/kernel_own_kib"), Some(2.6));
        assert_eq!(rec["probe_ok"], json!(20));
        assert_eq!(rec["load"], json!("1.00 0.50 0.25"));
    }
}
