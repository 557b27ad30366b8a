//! The established-connections section: memory per held, idle TLS connection through each front
//! (medians over the rounds, total as a ratio to nginx), then the tens-of-thousands runs against
//! securesock alone, and securesock's start-up warnings for them.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{Facts, preamble, rank};
use crate::procfs::KERNEL_STACK_KIB;
use crate::stats::{f, median, r, ratio, row, s, text};

/// The fronts compared over the rounds, in the table's order.
const ORDER: [&str; 4] = ["securesock-packaged", "securesock", "nginx", "stunnel"];

fn served(v: &Value) -> bool {
    f(v, "/probe_ok") == Some(20.0) && f(v, "/probe_max_ms").is_some_and(|m| m < 50.0)
}

fn total(v: &Value) -> Option<f64> {
    Some(f(v, "/rss_kib")? + f(v, "/kernel_own_kib")?)
}

/// The per-front table, medians over the rounds.
pub fn fronts(results: &[Value], packaged_env: &str) -> Vec<String> {
    let mut groups: BTreeMap<&str, Vec<&Value>> = BTreeMap::new();
    for v in results {
        let server = s(v, "/server");
        if ORDER.contains(&server) {
            groups.entry(server).or_default().push(v);
        }
    }
    let med = |runs: &[&Value], p: &str| median(runs.iter().filter_map(|v| f(v, p)).collect());
    let total_of = |runs: &[&Value]| median(runs.iter().filter_map(|v| total(v)).collect());
    let ng = groups.get("nginx").and_then(|runs| total_of(runs));
    let mut names: Vec<&str> = groups.keys().copied().collect();
    names.sort_by_key(|n| rank(&ORDER, n));
    names
        .into_iter()
        .map(|name| {
            let runs = &groups[name];
            let n = runs
                .iter()
                .filter_map(|v| f(v, "/connected"))
                .fold(None, |m: Option<f64>, c| Some(m.map_or(c, |m| m.min(c))));
            let served = runs.iter().filter(|v| served(v)).count();
            let pmax = runs
                .iter()
                .filter_map(|v| f(v, "/probe_max_ms"))
                .fold(None, |m: Option<f64>, c| Some(m.map_or(c, |m| m.max(c))));
            let label = if name == "securesock-packaged" {
                format!("securesock, `{packaged_env}`")
            } else {
                name.to_string()
            };
            let t = total_of(runs);
            row(&[
                label,
                r(n, 0),
                r(med(runs, "/rss_kib"), 1),
                r(med(runs, "/kernel_meminfo_kib"), 1),
                r(med(runs, "/kernel_own_kib"), 1),
                r(t, 1),
                r(ratio(t, ng), 1),
                format!(
                    "{} ({served}/{} rounds, slowest {} ms)",
                    if served == runs.len() { "yes" } else { "no" },
                    runs.len(),
                    r(pmax, 1)
                ),
                runs.len().to_string(),
            ])
        })
        .collect()
}

/// The tens-of-thousands runs, one row each, in the order they ran.
pub fn large(results: &[Value]) -> Vec<String> {
    results
        .iter()
        .filter(|v| matches!(s(v, "/server"), "securesock-echo" | "securesock-forward"))
        .map(|v| {
            row(&[
                s(v, "/mode").to_string(),
                format!("{} of {}", text(v, "/connected"), text(v, "/n")),
                r(f(v, "/rss_kib"), 1),
                r(f(v, "/kernel_meminfo_kib"), 1),
                r(f(v, "/kernel_own_kib"), 1),
                r(total(v), 1),
                format!(
                    "{} ({}/20 ok, slowest {} ms)",
                    if served(v) { "yes" } else { "no" },
                    text(v, "/probe_ok"),
                    r(f(v, "/probe_max_ms"), 1)
                ),
                s(v, "/load").to_string(),
            ])
        })
        .collect()
}

/// `warnings`: securesock's WARN lines from the echo-mode run, quoted when there are any.
pub fn markdown(facts: &Facts, results: &[Value], warnings: &str) -> String {
    let env = facts.get("packaged_env");
    let bullets = [
        format!(
            "command: `{}`; load average (1, 5, 15 min) {} before, {} after (the box is shared with other builds)",
            facts.get("command"),
            facts.get("load_before"),
            facts.get("load_after")
        ),
        format!("each client (`securesock-bench --established K -c 4`) completes a TLS 1.3 handshake, sends 16 bytes, reads them back and stays open and silent; the upstream is `examples/echo-upstream.rs` (plaintext echo, one thread, epoll); at most {} connections per load-generator process", facts.get("per_holder")),
        format!("fronts: securesock `--mode forward --upstream` (`--max-connections 20000 --max-per-ip 20000 --idle-timeout 3600`), as a bare binary and with `{env}` in its environment as packaging/securesock.service, the image and the Kubernetes manifest set it (the tens-of-thousands runs use that too); nginx stream `proxy_pass` with 1 worker and `proxy_half_close on`; stunnel `connect =`; same certificate and settings as above"),
        format!("RSS: VmRSS summed over the front's processes with the connections held (measured 1 s after the last one was established) minus before, ÷ connections; kernel (/proc/meminfo): the change in KernelStack + PageTables of the whole box ÷ connections, which other work on the box moves too; kernel (own): the front's new threads × {KERNEL_STACK_KIB} KiB of kernel stack + the change in its VmPTE, ÷ connections; medians over the rounds; \"total\" is RSS + kernel (own)"),
        "127.0.0.2: 20 more connections one after another (`securesock-bench --source 127.0.0.2 --established 20 -c 1 --hold 0.001`: connect, handshake, 16 bytes echoed) while the others are held; \"yes\" when all succeed with the slowest under 50 ms".to_string(),
    ];
    let mut out = preamble(
        "## Established idle connections: memory per connection",
        facts,
        &bullets,
    );
    out.push_str("| front | connections | RSS KiB/conn | kernel (/proc/meminfo) KiB/conn | kernel (own) KiB/conn | total KiB/conn | total ×nginx | 127.0.0.2 served in 50 ms | rounds |\n");
    out.push_str("|---|---:|---:|---:|---:|---:|---:|---|---:|\n");
    for line in fronts(results, env) {
        out.push_str(&line);
        out.push('\n');
    }
    out.push_str("\nTens of thousands against securesock alone, one run each:\n\n");
    out.push_str("| securesock mode | connections held | RSS KiB/conn | kernel (/proc/meminfo) KiB/conn | kernel (own) KiB/conn | total KiB/conn | 127.0.0.2 served in 50 ms | load average |\n");
    out.push_str("|---|---:|---:|---:|---:|---:|---|---|\n");
    for line in large(results) {
        out.push_str(&line);
        out.push('\n');
    }
    if !warnings.trim().is_empty() {
        out.push_str("\nsecuresock's start-up warnings for the echo-mode run (`--max-connections 20000`):\n\n");
        for line in warnings.lines() {
            out.push_str("    ");
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rec(server: &str, mode: &str, rss: f64, own: f64, ok: u64, slowest: f64) -> Value {
        json!({"server": server, "mode": mode, "n": 200, "connected": 200, "load": "1.00 0.50 0.25",
               "rss_kib": rss, "kernel_meminfo_kib": 1.0, "kernel_own_kib": own,
               "probe_ok": ok, "probe_max_ms": slowest, "probe_errors": {}})
    }

    #[test]
    fn tables_from_fixed_rows() {
        let results = [
            rec("securesock", "forward", 10.0, 2.0, 20, 3.0),
            rec("securesock-packaged", "forward", 8.0, 2.0, 20, 4.0),
            rec("nginx", "forward", 5.0, 1.0, 20, 60.0),
            rec("securesock", "forward", 12.0, 2.0, 20, 5.0),
            rec("securesock-echo", "echo", 9.25, 1.0, 19, 2.0),
        ];
        assert_eq!(
            fronts(&results, "GLIBC_TUNABLES=x"),
            [
                "| securesock, `GLIBC_TUNABLES=x` | 200 | 8 | 1 | 2 | 10 | 1.7 | yes (1/1 rounds, slowest 4 ms) | 1 |",
                "| securesock | 200 | 11 | 1 | 2 | 13 | 2.2 | yes (2/2 rounds, slowest 5 ms) | 2 |",
                "| nginx | 200 | 5 | 1 | 1 | 6 | 1 | no (0/1 rounds, slowest 60 ms) | 1 |",
            ]
        );
        assert_eq!(
            large(&results),
            [
                "| echo | 200 of 200 | 9.3 | 1 | 1 | 10.3 | no (19/20 ok, slowest 2 ms) | 1.00 0.50 0.25 |"
            ]
        );
        let md = markdown(
            &super::super::fixtures::facts(""),
            &results,
            "WARN low limit\n",
        );
        assert!(md.ends_with("(`--max-connections 20000`):\n\n    WARN low limit\n"));
        assert!(md.contains("× 16 KiB of kernel stack"));
    }
}
