//! The services section (issue 19's performance figures): handshakes per second through one of 10
//! services against one service alone, the failover cost for the first and the later clients of
//! three upstream sets, and the start, reload and memory of 1,000 services against one.
//!
//! Records, by `kind`: `handshakes` (a load run, labelled `services` and `round`), `failover` (a
//! load run, labelled `set` and `client` = first or later, and `round`), `scale` (labelled
//! `services`, `round`, `start_s`, `reload_s`, `rss_kb`, `threads`, `rss_after_reload_kb`).

use serde_json::Value;

use super::{Facts, preamble};
use crate::stats::{f, median, r, s};

fn of<'a>(results: &'a [Value], kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    results.iter().filter(move |v| s(v, "/kind") == kind)
}

/// Values of `pointer` over the records that `keep`, in record (round) order.
fn values(results: &[Value], kind: &str, keep: impl Fn(&Value) -> bool, pointer: &str) -> Vec<f64> {
    of(results, kind)
        .filter(|v| keep(v))
        .filter_map(|v| f(v, pointer))
        .collect()
}

fn list(xs: &[f64], places: u32) -> String {
    if xs.is_empty() {
        return "-".into();
    }
    xs.iter()
        .map(|x| r(Some(*x), places))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The ratio of medians and the spread of the per-round ratios (rounds paired by `round`).
fn ratio_with_spread(a: &[(f64, f64)], b: &[(f64, f64)]) -> (Option<f64>, Option<(f64, f64)>) {
    let med = |xs: &[(f64, f64)]| median(xs.iter().map(|x| x.1).collect());
    let ratio = match (med(a), med(b)) {
        (Some(x), Some(y)) if y > 0.0 => Some(x / y),
        _ => None,
    };
    let per_round: Vec<f64> = a
        .iter()
        .filter_map(|(round, x)| {
            b.iter()
                .find(|(r2, _)| r2 == round)
                .filter(|(_, y)| *y > 0.0)
                .map(|(_, y)| x / y)
        })
        .collect();
    let spread = per_round
        .iter()
        .copied()
        .fold(None, |acc: Option<(f64, f64)>, x| {
            Some(acc.map_or((x, x), |(lo, hi)| (lo.min(x), hi.max(x))))
        });
    (ratio, spread)
}

fn handshakes(results: &[Value]) -> (String, Option<f64>, Option<(f64, f64)>) {
    let rates = |n: f64| -> Vec<(f64, f64)> {
        of(results, "handshakes")
            .filter(|v| f(v, "/services") == Some(n))
            .filter_map(|v| Some((f(v, "/round")?, f(v, "/conns_per_s")?)))
            .collect()
    };
    let (ten, one) = (rates(10.0), rates(1.0));
    let (ratio, spread) = ratio_with_spread(&ten, &one);
    let mut table = String::from(
        "| services in the process | measured through | conns/s (median) | conns/s, each round | failed |\n|---|---|---:|---:|---:|\n",
    );
    for (n, label, xs) in [
        (1.0, "the one service", &one),
        (10.0, "the first of 10", &ten),
    ] {
        let each: Vec<f64> = xs.iter().map(|x| x.1).collect();
        let failed: f64 = values(
            results,
            "handshakes",
            |v| f(v, "/services") == Some(n),
            "/failed",
        )
        .iter()
        .sum();
        table.push_str(&format!(
            "| {n} | {label} | {} | {} | {failed} |\n",
            r(median(each.clone()), 0),
            list(&each, 0)
        ));
    }
    (table, ratio, spread)
}

/// The upstream sets, in the report's order.
const SETS: [&str; 3] = ["live", "refused-first", "blackholed-first"];

fn failover(results: &[Value]) -> String {
    let ms = |set: &str, client: &str, pointer: &str| -> Vec<f64> {
        values(
            results,
            "failover",
            |v| s(v, "/set") == set && s(v, "/client") == client,
            pointer,
        )
        .into_iter()
        .map(|us| us / 1000.0)
        .collect()
    };
    let mut table = String::from(
        "| upstream set | first client, ms (each round) | later clients p50 ms (median) | later clients max ms (each round) | failed |\n|---|---:|---:|---:|---:|\n",
    );
    for set in SETS {
        let first = ms(set, "first", "/latency_us/max");
        if first.is_empty() {
            continue;
        }
        let failed: f64 = values(results, "failover", |v| s(v, "/set") == set, "/failed")
            .iter()
            .sum();
        table.push_str(&format!(
            "| {set} | {} | {} | {} | {failed} |\n",
            list(&first, 1),
            r(median(ms(set, "later", "/latency_us/p50")), 2),
            list(&ms(set, "later", "/latency_us/max"), 1),
        ));
    }
    table
}

fn scale(results: &[Value]) -> (String, Option<f64>) {
    let mut table = String::from(
        "| services | start s (each round) | reload s (each round) | RSS idle MiB (median) | threads | RSS after one reload MiB (median) |\n|---|---:|---:|---:|---:|---:|\n",
    );
    let mut rss = Vec::new();
    for n in [1.0, 1000.0] {
        let keep = |v: &Value| f(v, "/services") == Some(n);
        let start = values(results, "scale", keep, "/start_s");
        if start.is_empty() {
            continue;
        }
        let kb = median(values(results, "scale", keep, "/rss_kb"));
        rss.push((n, kb));
        table.push_str(&format!(
            "| {n} | {} | {} | {} | {} | {} |\n",
            list(&start, 2),
            list(&values(results, "scale", keep, "/reload_s"), 2),
            r(kb.map(|k| k / 1024.0), 1),
            r(median(values(results, "scale", keep, "/threads")), 0),
            r(
                median(values(results, "scale", keep, "/rss_after_reload_kb")).map(|k| k / 1024.0),
                1
            ),
        ));
    }
    let per_service = match rss.as_slice() {
        [(1.0, Some(one)), (1000.0, Some(many))] => Some((many - one) / 999.0),
        _ => None,
    };
    (table, per_service)
}

/// Whether every start and every reload of 1,000 services took under a second.
fn under_a_second(results: &[Value], pointer: &str) -> Option<bool> {
    let xs = values(
        results,
        "scale",
        |v| f(v, "/services") == Some(1000.0),
        pointer,
    );
    (!xs.is_empty()).then(|| xs.iter().all(|x| *x < 1.0))
}

fn met(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "met",
        Some(false) => "**not met**",
        None => "not measured",
    }
}

pub fn markdown(facts: &Facts, results: &[Value]) -> String {
    let (hs, ratio, spread) = handshakes(results);
    let (sc, per_service) = scale(results);
    let spread_text = spread.map_or("-".to_string(), |(lo, hi)| {
        format!("{}-{}", r(Some(lo), 2), r(Some(hi), 2))
    });
    let within = ratio.map(|x| (0.9..=1.1).contains(&x));
    let bullets = [
        format!(
            "command: `{}`; {} round(s); load average {} before, {} after (the box is shared: compare figures of one run only)",
            facts.get("command"),
            facts.get("rounds"),
            facts.get("load_start"),
            facts.get("load_end")
        ),
        format!(
            "handshakes: `securesock --config` with 10 greet services on one certificate against one with 1, started one after the other, the same load (`securesock-bench -c {} -d {}`, full handshakes) in alternating rounds; one of 10 ÷ one alone: {} (rounds {spread_text}); equal within 10 %: {}",
            facts.get("clients"),
            facts.get("duration"),
            r(ratio, 2),
            met(within)
        ),
        format!(
            "failover: one forward service (`connect-timeout = {}`, `upstream-retry` 10 s) in front of `examples/plain-greeter.rs`, restarted each round; the first client (`-n 1 -c 1`) then {} later ones (`-c 1`), each a TLS handshake and the greeting read to close_notify; sets: live = [greeter], refused-first = [127.0.0.1:1 (closed), greeter], blackholed-first = [a listener whose backlog is full, greeter]",
            facts.get("connect_timeout"),
            facts.get("later")
        ),
        format!(
            "scale: the printf-made file of N greet services on 127.0.0.1 port 0 (one certificate, `watch-interval = 0`); start from exec to the Nth `listening on` line, reload from SIGHUP to the Nth `reload ok` line (the log polled every 10 ms: an upper bound); RSS 0.5 s after each; start under 1 s: {}; reload under 1 s: {}; memory per idle service (RSS of 1,000 less RSS of 1, ÷ 999): {} KiB",
            met(under_a_second(results, "/start_s")),
            met(under_a_second(results, "/reload_s")),
            r(per_service, 1)
        ),
    ];
    let mut out = preamble(
        "## Many services in one process (issue 19): scripts/bench.sh --services",
        facts,
        &bullets,
    );
    out.push_str("Handshakes per second through one of 10 services and through one alone:\n\n");
    out.push_str(&hs);
    out.push_str("\nFailover: what the first client and the later ones pay:\n\n");
    out.push_str(&failover(results));
    out.push_str("\n1,000 services against one:\n\n");
    out.push_str(&sc);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::fixtures::facts;
    use serde_json::json;

    fn rows() -> Vec<Value> {
        let hs = |n, round, rate| json!({"kind": "handshakes", "services": n, "round": round, "conns_per_s": rate, "failed": 0});
        let fo = |set, client, p50, max| json!({"kind": "failover", "set": set, "client": client, "round": 1, "failed": 0, "latency_us": {"p50": p50, "max": max}});
        vec![
            hs(1, 1, 1000.0),
            hs(10, 1, 950.0),
            hs(1, 2, 1100.0),
            hs(10, 2, 1100.0),
            fo("live", "first", 3000, 3000),
            fo("live", "later", 2000, 2500),
            fo("blackholed-first", "first", 1_003_000, 1_003_000),
            fo("blackholed-first", "later", 2100, 2600),
            json!({"kind": "scale", "services": 1, "round": 1, "start_s": 0.02, "reload_s": 0.01, "rss_kb": 10240, "threads": 3, "rss_after_reload_kb": 10240}),
            json!({"kind": "scale", "services": 1000, "round": 1, "start_s": 0.25, "reload_s": 1.4, "rss_kb": 30220, "threads": 1002, "rss_after_reload_kb": 80000}),
        ]
    }

    #[test]
    fn section_from_fixed_rows() {
        let md = markdown(&facts("clients=16\nconnect_timeout=1\nlater=20\n"), &rows());
        // Ratio of medians 1025 / 1050, per-round ratios 0.95 and 1.
        assert!(
            md.contains("one of 10 ÷ one alone: 0.98 (rounds 0.95-1)"),
            "{md}"
        );
        assert!(md.contains("equal within 10 %: met"), "{md}");
        assert!(
            md.contains("| 10 | the first of 10 | 1025 | 950, 1100 | 0 |"),
            "{md}"
        );
        assert!(
            md.contains("| blackholed-first | 1003 | 2.1 | 2.6 | 0 |"),
            "{md}"
        );
        assert!(
            !md.contains("| refused-first |"),
            "a set not measured has no row: {md}"
        );
        assert!(
            md.contains("start under 1 s: met; reload under 1 s: **not met**"),
            "{md}"
        );
        // (30220 - 10240) / 999 KiB.
        assert!(
            md.contains("memory per idle service (RSS of 1,000 less RSS of 1, ÷ 999): 20 KiB"),
            "{md}"
        );
        assert!(
            md.contains("| 1000 | 0.25 | 1.4 | 29.5 | 1002 | 78.1 |"),
            "{md}"
        );
    }

    #[test]
    fn nothing_measured_says_so() {
        let md = markdown(&facts(""), &[]);
        assert!(md.contains("equal within 10 %: not measured"), "{md}");
        assert!(md.contains("start under 1 s: not measured"), "{md}");
    }
}
