//! The handshake throughput section: medians per mode, clients and server with ratios to nginx
//! (2 workers), peak RSS, every round's securesock/nginx pairing, and the chart's gnuplot data.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{Facts, preamble, rank};
use crate::stats::{f, floor, median, num, r, ratio, round_to, row, s};

/// The order servers appear in, in the table and the chart.
const ORDER: [&str; 4] = ["securesock", "nginx", "nginx-1w", "stunnel"];

/// One row of the medians table.
#[derive(Debug, Clone, PartialEq)]
pub struct Median {
    pub resume: bool,
    pub concurrency: u64,
    pub server: String,
    pub rate: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub cpu_us: Option<f64>,
    pub client_us: Option<f64>,
    pub resumed_pct: Option<f64>,
    pub failed: f64,
    pub ok: f64,
}

fn mode(resume: bool) -> &'static str {
    if resume { "resumed" } else { "full" }
}

fn median_of(runs: &[&Value], pointer: &str) -> Option<f64> {
    median(runs.iter().filter_map(|v| f(v, pointer)).collect())
}

/// Medians over the rounds per (mode, clients, server), in the table's order.
pub fn medians(results: &[Value]) -> Vec<Median> {
    let mut groups: BTreeMap<(bool, u64, String), Vec<&Value>> = BTreeMap::new();
    for v in results {
        let key = (
            v["resume"].as_bool().unwrap_or(false),
            v["concurrency"].as_u64().unwrap_or(0),
            s(v, "/server").to_string(),
        );
        groups.entry(key).or_default().push(v);
    }
    let mut rows: Vec<Median> = groups
        .into_iter()
        .map(|((resume, concurrency, server), runs)| Median {
            resume,
            concurrency,
            server,
            rate: median_of(&runs, "/conns_per_s"),
            p50_ms: median_of(&runs, "/latency_us/p50").map(|x| x / 1000.0),
            p99_ms: median_of(&runs, "/latency_us/p99").map(|x| x / 1000.0),
            cpu_us: median_of(&runs, "/server_cpu_us"),
            client_us: median_of(&runs, "/client_cpu_us_per_conn"),
            resumed_pct: median_of(&runs, "/resumed_pct"),
            failed: runs.iter().filter_map(|v| f(v, "/failed")).sum(),
            ok: runs.iter().filter_map(|v| f(v, "/ok")).sum(),
        })
        .collect();
    rows.sort_by_key(|m| (m.resume, m.concurrency, rank(&ORDER, &m.server)));
    rows
}

/// The medians table's cells for each row, ratios to nginx (2 workers) in the same cell.
pub fn median_cells(rows: &[Median]) -> Vec<Vec<String>> {
    rows.iter()
        .map(|m| {
            let ng = rows.iter().find(|n| {
                n.server == "nginx" && n.resume == m.resume && n.concurrency == m.concurrency
            });
            vec![
                mode(m.resume).to_string(),
                m.concurrency.to_string(),
                m.server.clone(),
                floor(m.rate),
                r(ratio(m.rate, ng.and_then(|n| n.rate)), 1),
                r(m.p50_ms, 1),
                r(m.p99_ms, 1),
                r(m.cpu_us, 1),
                r(ratio(m.cpu_us, ng.and_then(|n| n.cpu_us)), 1),
                r(m.client_us, 1),
                r(m.resumed_pct, 1),
                num(m.failed),
                num(m.ok),
            ]
        })
        .collect()
}

/// Every round's securesock and nginx (2 workers) side by side, where both ran in the cell.
pub fn pairs(results: &[Value]) -> Vec<String> {
    let mut cells: BTreeMap<(bool, u64, u64), Vec<&Value>> = BTreeMap::new();
    for v in results {
        let key = (
            v["resume"].as_bool().unwrap_or(false),
            v["concurrency"].as_u64().unwrap_or(0),
            v["round"].as_u64().unwrap_or(0),
        );
        cells.entry(key).or_default().push(v);
    }
    let p99 = |v: &Value| {
        f(v, "/latency_us/p99").map_or("-".into(), |p| num(round_to(p / 100.0, 0) / 10.0))
    };
    cells
        .into_iter()
        .filter_map(|((resume, c, round), runs)| {
            let a = runs.iter().find(|v| s(v, "/server") == "securesock")?;
            let b = runs.iter().find(|v| s(v, "/server") == "nginx")?;
            let (ra, rb) = (f(a, "/conns_per_s"), f(b, "/conns_per_s"));
            Some(row(&[
                mode(resume).to_string(),
                c.to_string(),
                round.to_string(),
                floor(ra),
                floor(rb),
                r(ratio(ra, rb), 2),
                p99(a),
                p99(b),
            ]))
        })
        .collect()
}

/// The distinct values of a text field over the runs, sorted, comma-joined.
fn distinct(results: &[Value], pointer: &str) -> String {
    let mut all: Vec<&str> = results.iter().map(|v| s(v, pointer)).collect();
    all.sort_unstable();
    all.dedup();
    all.join(", ")
}

/// The section's markdown. `hwm` holds one sample per server (labelled `server`) taken at the end.
pub fn markdown(facts: &Facts, results: &[Value], hwm: &[Value]) -> String {
    let servers: Vec<&str> = facts.get("servers").split_whitespace().collect();
    let duration = facts.get("duration");
    let suite = facts.get("suite");
    // `--cores N`: the servers pinned to N CPUs, nginx with N workers, the client on the rest.
    let cores = facts.get("cores");
    let pinned = match cores {
        "" => String::new(),
        n => format!("{n} core(s), taskset, "),
    };
    let title = if suite.is_empty() && cores.is_empty() {
        "## Handshake throughput (greet mode)".to_string()
    } else if suite.is_empty() {
        format!("## Handshake throughput on {cores} core(s) (taskset, greet mode)")
    } else {
        let openssl = facts.get("openssl").split_whitespace().nth(1).unwrap_or("");
        format!("## Handshake throughput on {suite} (OpenSSL {openssl}, {pinned}greet mode)")
    };
    let workers = if cores.is_empty() { "2" } else { cores };
    let mut bullets = vec![format!(
        "command: `{}` ({} round(s), {duration} s per run, peers alternated within each cell: {})",
        facts.get("command"),
        facts.get("rounds"),
        servers.join(", ")
    )];
    let peers = format!(
        "peers: securesock (thread per connection, default flags, info log to a file); nginx stream `return` with Mozilla's intermediate v6.0 settings (session cache on, tickets off, as Mozilla's generator writes), {workers} worker(s)"
    );
    bullets.push(if servers == ORDER {
        format!("{peers} and 1 worker; stunnel (its default logging) in front of `examples/plain-greeter.rs` (plaintext, not counted in stunnel's CPU)")
    } else {
        peers
    });
    if facts.get("groups").starts_with("X25519MLKEM768:") {
        bullets.push("key exchange: every peer negotiates X25519MLKEM768 with a client on OpenSSL's default groups (checked with `openssl s_client -brief` before the runs); securesock-bench uses those defaults".to_string());
    }
    let client_cpus = match facts.get("client_cpus") {
        "" => format!("on the same {} cores", facts.get("nproc")),
        cpus => format!(
            "pinned to CPU(s) {cpus}, the servers to {}",
            facts.get("server_cpus")
        ),
    };
    bullets.push(format!(
        "client: `securesock-bench --insecure -c CLIENTS -d {duration} [--resume]` {client_cpus}; each run's protocol: {}, cipher: {}",
        distinct(results, "/protocol"),
        distinct(results, "/cipher")
    ));
    bullets.push(format!("server CPU: utime+stime from /proc/PID/stat of the server's processes (nginx: master + workers) over the run ÷ successful connections; medians over the rounds; ratios are to nginx with {workers} worker(s)"));
    bullets.push(format!(
        "load average (1, 5, 15 min) when the runs started: {}; when they ended: {} ({} cores)",
        facts.get("load_start"),
        facts.get("load_end"),
        facts.get("nproc")
    ));
    let mut out = preamble(&title, facts, &bullets);
    out.push_str("| mode | clients | server | conns/s | ×nginx | p50 ms | p99 ms | server CPU µs/conn | ×nginx | client CPU µs/conn | resumed % | failed | ok |\n");
    out.push_str("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for cells in median_cells(&medians(results)) {
        out.push_str(&row(&cells));
        out.push('\n');
    }
    out.push_str("\nPeak RSS over the whole run (VmHWM, summed over each server's processes):\n\n");
    out.push_str("| server | peak RSS MiB |\n|---|---:|\n");
    for h in hwm {
        let mib = f(h, "/hwm_kb").unwrap_or(0.0) / 1024.0;
        out.push_str(&format!("| {} | {mib:.1} |\n", s(h, "/server")));
    }
    let pairs = pairs(results);
    if !pairs.is_empty() {
        out.push_str(
            &format!("\nEvery round, securesock and nginx ({workers} worker(s)) back to back in the same cell:\n\n"),
        );
        out.push_str("| mode | clients | round | securesock conns/s | nginx conns/s | ×nginx | securesock p99 ms | nginx p99 ms |\n");
        out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|\n");
        for p in pairs {
            out.push_str(&p);
            out.push('\n');
        }
    }
    out.push_str(&format!(
        "\n![conns/s and p99 by clients](docs/bench-throughput{}.png)\n",
        chart_suffix(facts)
    ));
    out
}

/// What tells this run's chart from the others' beside the same BENCHMARKS.md: the suite's name
/// (`-trixie`) and the core count (`-cores1`, `-trixie-cores1`), nothing for the default run.
pub fn chart_suffix(facts: &Facts) -> String {
    let suite = match facts.get("suite") {
        "" => String::new(),
        suite => format!("-{suite}"),
    };
    match facts.get("cores") {
        "" => suite,
        cores => format!("{suite}-cores{cores}"),
    }
}

/// The chart: one data file per (mode, server) with "clients conns/s p99-ms" lines, and the gnuplot
/// script that draws `dir/chart.png` from them. Returns (file name, contents) pairs, script last.
pub fn chart(facts: &Facts, results: &[Value], dir: &str) -> Vec<(String, String)> {
    let cells = median_cells(&medians(results));
    let servers: Vec<&str> = facts.get("servers").split_whitespace().collect();
    let mut files = Vec::new();
    let (mut rate_plot, mut p99_plot) = (Vec::new(), Vec::new());
    for (m, dash) in [("full", 1), ("resumed", 2)] {
        for srv in &servers {
            let name = format!("plot-{m}-{srv}.dat");
            let data: String = cells
                .iter()
                .filter(|c| c[0] == m && c[2] == *srv)
                .map(|c| format!("{} {} {}\n", c[1], c[3], c[6]))
                .collect();
            let path = format!("{dir}/{name}");
            rate_plot.push(format!(
                "'{path}' using 1:2 with linespoints dt {dash} title '{srv} {m}'"
            ));
            p99_plot.push(format!(
                "'{path}' using 1:3 with linespoints dt {dash} title '{srv} {m}'"
            ));
            files.push((name, data));
        }
    }
    let script = format!(
        "set terminal pngcairo size 1200,500 noenhanced\n\
         set output '{dir}/chart.png'\n\
         set multiplot layout 1,2 title '{} ({} cores, loopback, medians{})'\n\
         set logscale x 2\n\
         set xlabel 'concurrent clients'\n\
         set key left top font ',8'\n\
         set yrange [0:*]\n\
         set ylabel 'connections/s'\n\
         plot {}\n\
         set ylabel 'p99 latency (ms)'\n\
         plot {}\n\
         unset multiplot\n",
        servers.join(" vs "),
        match facts.get("cores") {
            "" => facts.get("nproc"),
            cores => cores,
        },
        match facts.get("suite") {
            "" => String::new(),
            suite => format!(", {suite}"),
        },
        rate_plot.join(", "),
        p99_plot.join(", "),
    );
    files.push(("chart.gp".to_string(), script));
    files
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::fixtures::facts;
    use serde_json::json;

    fn run(server: &str, c: u64, resume: bool, round: u64, rate: f64, p99: u64, cpu: f64) -> Value {
        json!({"server": server, "concurrency": c, "resume": resume, "round": round,
               "conns_per_s": rate, "latency_us": {"p50": 1500, "p99": p99},
               "server_cpu_us": cpu, "client_cpu_us_per_conn": 300.0, "resumed_pct": if resume { 100.0 } else { 0.0 },
               "failed": 0, "ok": 100, "protocol": "TLSv1.3", "cipher": "TLS_AES_128_GCM_SHA256"})
    }

    fn fixed() -> Vec<Value> {
        vec![
            run("securesock", 1, false, 1, 1000.4, 2_340, 500.0),
            run("nginx", 1, false, 1, 800.0, 3_000, 400.0),
            run("securesock", 1, false, 2, 1200.0, 2_000, 700.0),
            run("nginx", 1, false, 2, 1000.0, 3_000, 500.0),
            run("securesock", 16, true, 1, 3000.0, 9_960, 100.0),
        ]
    }

    #[test]
    fn medians_table_from_fixed_rows() {
        let cells: Vec<String> = median_cells(&medians(&fixed()))
            .iter()
            .map(|c| row(c))
            .collect();
        assert_eq!(
            cells,
            [
                // securesock 1000.4 and 1200 -> 1100.2; nginx 900: 1.22 rounded to 1.2.
                "| full | 1 | securesock | 1100 | 1.2 | 1.5 | 2.2 | 600 | 1.3 | 300 | 0 | 0 | 200 |",
                "| full | 1 | nginx | 900 | 1 | 1.5 | 3 | 450 | 1 | 300 | 0 | 0 | 200 |",
                // No nginx in the cell: no ratios.
                "| resumed | 16 | securesock | 3000 | - | 1.5 | 10 | 100 | - | 300 | 100 | 0 | 100 |",
            ]
        );
    }

    #[test]
    fn pairs_are_per_round_where_both_ran() {
        assert_eq!(
            pairs(&fixed()),
            [
                "| full | 1 | 1 | 1000 | 800 | 1.25 | 2.3 | 3 |",
                "| full | 1 | 2 | 1200 | 1000 | 1.2 | 2 | 3 |",
            ]
        );
    }

    #[test]
    fn a_pinned_run_says_its_cores_in_title_peers_client_and_chart() {
        let facts =
            facts("servers=securesock nginx\ncores=1\nserver_cpus=0\nclient_cpus=1\nnproc=2\n");
        let md = markdown(&facts, &fixed(), &[]);
        assert!(md.starts_with("## Handshake throughput on 1 core(s) (taskset, greet mode)\n"));
        assert!(md.contains("as Mozilla's generator writes), 1 worker(s)\n"));
        assert!(md.contains("[--resume]` pinned to CPU(s) 1, the servers to 0;"));
        assert!(md.contains("ratios are to nginx with 1 worker(s)\n"));
        assert!(md.contains("securesock and nginx (1 worker(s)) back to back"));
        assert!(md.ends_with("(docs/bench-throughput-cores1.png)\n"));
        let (_, script) = chart(&facts, &fixed(), "/w").pop().unwrap();
        assert!(script.contains("securesock vs nginx (1 cores, loopback, medians)"));
        let trixie = crate::report::fixtures::facts(
            "servers=securesock nginx\ncores=2\nsuite=trixie\nopenssl=OpenSSL 3.5.4 x\n",
        );
        let md = markdown(&trixie, &fixed(), &[]);
        assert!(md.starts_with(
            "## Handshake throughput on trixie (OpenSSL 3.5.4, 2 core(s), taskset, greet mode)\n"
        ));
        assert!(md.ends_with("(docs/bench-throughput-trixie-cores2.png)\n"));
    }

    #[test]
    fn section_and_chart() {
        let facts =
            facts("servers=securesock nginx\nload_start=1.00 0.50 0.25\nload_end=2.00 1.00 0.50\n");
        let hwm = [
            json!({"server": "securesock", "hwm_kb": 10342}),
            json!({"server": "nginx", "hwm_kb": 20480}),
        ];
        let md = markdown(&facts, &fixed(), &hwm);
        assert!(md.starts_with("## Handshake throughput (greet mode)\n\n- machine: 2 cores\n"));
        assert!(md.contains("- command: `scripts/bench.sh --quick` (1 round(s), 1 s per run, peers alternated within each cell: securesock, nginx)\n"));
        assert!(md.contains("each run's protocol: TLSv1.3, cipher: TLS_AES_128_GCM_SHA256\n"));
        assert!(md.contains("| securesock | 10.1 |\n| nginx | 20.0 |\n"));
        assert!(!md.contains("key exchange"));
        assert!(md.ends_with("\n\n![conns/s and p99 by clients](docs/bench-throughput.png)\n"));
        let files = chart(&facts, &fixed(), "/w");
        assert_eq!(
            files[0],
            (
                "plot-full-securesock.dat".to_string(),
                "1 1100 2.2\n".to_string()
            )
        );
        let (name, script) = files.last().unwrap();
        assert_eq!(name, "chart.gp");
        assert!(script.contains("title 'securesock vs nginx (2 cores, loopback, medians)'"));
        assert!(script.contains("plot '/w/plot-full-securesock.dat' using 1:2 with linespoints dt 1 title 'securesock full', "));
    }
}
