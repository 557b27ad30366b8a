//! The result of a greet or echo run and its two forms: the human table and the `--json` object
//! (whose field names the bench report and the tests read).
//!
//! This room formats; it never measures.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

/// The result of a greet or echo run.
pub struct Summary {
    pub target: String,
    pub mode: &'static str,
    pub resume: bool,
    pub concurrency: usize,
    pub elapsed: Duration,
    pub ok: u64,
    pub failed: u64,
    pub resumed: u64,
    /// Latency percentiles of successful connections, in microseconds: p50, p90, p99, max, mean.
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
    pub protocols: BTreeMap<&'static str, u64>,
    pub ciphers: BTreeMap<&'static str, u64>,
    pub errors: BTreeMap<String, u64>,
    /// This process's CPU time over the run.
    pub client_cpu: Duration,
}

/// The most frequent key of a count map.
fn most<'a>(map: &BTreeMap<&'a str, u64>) -> &'a str {
    map.iter().max_by_key(|(_, n)| **n).map_or("-", |(k, _)| *k)
}

impl Summary {
    pub fn conns_per_sec(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn resumed_pct(&self) -> f64 {
        if self.ok == 0 {
            0.0
        } else {
            100.0 * self.resumed as f64 / self.ok as f64
        }
    }

    /// Client CPU per attempted connection, in microseconds.
    pub fn client_cpu_us_per_conn(&self) -> f64 {
        let n = (self.ok + self.failed).max(1);
        self.client_cpu.as_secs_f64() * 1e6 / n as f64
    }

    pub fn protocol(&self) -> &str {
        most(&self.protocols)
    }

    pub fn cipher(&self) -> &str {
        most(&self.ciphers)
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "target": self.target,
            "mode": self.mode,
            "resume": self.resume,
            "concurrency": self.concurrency,
            "elapsed_s": round3(self.elapsed.as_secs_f64()),
            "ok": self.ok,
            "failed": self.failed,
            "conns_per_s": round3(self.conns_per_sec()),
            "resumed": self.resumed,
            "resumed_pct": round3(self.resumed_pct()),
            "latency_us": {
                "p50": self.p50_us,
                "p90": self.p90_us,
                "p99": self.p99_us,
                "max": self.max_us,
                "mean": round3(self.mean_us),
            },
            "protocol": self.protocol(),
            "cipher": self.cipher(),
            "protocols": self.protocols,
            "ciphers": self.ciphers,
            "client_cpu_us_per_conn": round3(self.client_cpu_us_per_conn()),
            "errors": self.errors,
        })
    }

    /// The human table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let ms = |us: u64| us as f64 / 1000.0;
        let _ = writeln!(
            out,
            "target       {} ({}, {})",
            self.target,
            self.protocol(),
            self.cipher()
        );
        let _ = writeln!(
            out,
            "run          {} {}, {} client(s), {:.1} s",
            self.mode,
            if self.resume { "resumed" } else { "full" },
            self.concurrency,
            self.elapsed.as_secs_f64()
        );
        let _ = writeln!(out, "connections  {} ok, {} failed", self.ok, self.failed);
        let _ = writeln!(out, "rate         {:.0} conns/s", self.conns_per_sec());
        let _ = writeln!(out, "resumed      {:.1} %", self.resumed_pct());
        let _ = writeln!(
            out,
            "latency      p50 {:.2} ms   p90 {:.2} ms   p99 {:.2} ms   max {:.2} ms",
            ms(self.p50_us),
            ms(self.p90_us),
            ms(self.p99_us),
            ms(self.max_us)
        );
        let _ = writeln!(
            out,
            "client cpu   {:.0} µs per connection",
            self.client_cpu_us_per_conn()
        );
        for (reason, n) in &self.errors {
            let _ = writeln!(out, "failure      {n} x {reason}");
        }
        out
    }
}

pub(crate) fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
