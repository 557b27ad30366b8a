//! `securesock-bench hold`: a server measured while a burst of connections is held against it (the
//! idle-memory and established sections). It samples the server, starts this same binary as the
//! holders (`--idle` or `--established`, spread over processes under the per-process descriptor
//! limit), waits for each burst's report, samples the server again, times a client from 127.0.0.2
//! meanwhile, stops the holders and writes the record.
//!
//! This room starts and stops only its own holder processes and never makes a connection itself;
//! the figures follow from the record (`record::finish`), not from here.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::procfs::{self, Snapshot};
use crate::record::Inputs;

/// How a section holds its burst and probes the server meanwhile.
struct Shape {
    /// The holder's flag and its other arguments, after the target and the count.
    flag: &'static str,
    hold_args: &'static [&'static str],
    /// The second client's run, after the target.
    probe_args: &'static [&'static str],
    /// Under this name the holders' reports go into the record.
    named: &'static str,
    /// How long every holder has to report its burst.
    deadline: Duration,
}

fn shape(section: &str) -> Result<Shape> {
    Ok(match section {
        "idle" => Shape {
            flag: "--idle",
            hold_args: &["-c", "4", "--hold", "600", "--json"],
            probe_args: &["--source", "127.0.0.2", "--insecure", "-n", "20", "--json"],
            named: "idle",
            deadline: Duration::from_secs(20),
        },
        "established" => Shape {
            flag: "--established",
            hold_args: &[
                "-c",
                "4",
                "--hold",
                "3600",
                "--timeout",
                "60",
                "--insecure",
                "--json",
            ],
            // One after another, each timed from connect to its 16 bytes back.
            probe_args: &[
                "--source",
                "127.0.0.2",
                "--established",
                "20",
                "-c",
                "1",
                "--hold",
                "0.001",
                "--insecure",
                "--json",
            ],
            named: "holder",
            // 19,000 handshakes take a while on a busy 2-core box: up to 10 minutes.
            deadline: Duration::from_secs(600),
        },
        other => bail!("hold: no section '{other}' (idle or established)"),
    })
}

/// Splits `n` connections over as few processes as hold at most `per` each, the remainder spread
/// so the shares add up to exactly `n`.
pub fn shares(n: u64, per: u64) -> Vec<u64> {
    let per = per.max(1);
    let k = n.div_ceil(per).max(1);
    (0..k).map(|i| n / k + u64::from(i < n % k)).collect()
}

/// Samples `pid` until it holds `want` descriptors, every 10 ms for at most 30 s.
pub fn wait_fds(pid: &[u32], want: u64) -> Snapshot {
    let mut snap = procfs::sample(pid);
    for _ in 0..3000 {
        if snap.fds >= want {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
        snap = procfs::sample(pid);
    }
    snap
}

/// The first non-empty line of a child's stdout, as JSON; None when it closes without one.
fn first_line(child: &mut Child, tx: mpsc::Sender<Option<Value>>) {
    let Some(out) = child.stdout.take() else {
        let _ = tx.send(None);
        return;
    };
    std::thread::spawn(move || {
        let line = BufReader::new(out)
            .lines()
            .map_while(Result::ok)
            .find(|l| !l.trim().is_empty());
        let _ = tx.send(line.and_then(|l| serde_json::from_str(&l).ok()));
    });
}

/// Stops the holders (they are this process's children, so each is reaped too).
fn stop(holders: &mut [Child]) {
    for h in holders.iter_mut() {
        let _ = h.kill();
        let _ = h.wait();
    }
}

/// Holds `count` connections against `target` (the server `pid`), returns the record's inputs.
pub fn hold(
    section: &str,
    pid: u32,
    target: &str,
    count: u64,
    per_process: u64,
    labels: Vec<(String, String)>,
) -> Result<Inputs> {
    let shape = shape(section)?;
    let me = std::env::current_exe().context("finding this binary")?;
    let before = procfs::sample(&[pid]);
    let started = Instant::now();
    let mut holders = Vec::new();
    let (tx, rx) = mpsc::channel();
    for share in shares(count, per_process) {
        let spawned = Command::new(&me)
            .arg(target)
            .args([shape.flag, &share.to_string()])
            .args(shape.hold_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting a holder");
        match spawned {
            Ok(mut child) => {
                first_line(&mut child, tx.clone());
                holders.push(child);
            }
            Err(e) => {
                stop(&mut holders);
                return Err(e);
            }
        }
    }
    let end = started + shape.deadline;
    let mut reports = Vec::new();
    while reports.len() < holders.len() {
        match rx.recv_timeout(end.saturating_duration_since(Instant::now())) {
            Ok(report) => reports.push(report.unwrap_or(Value::Null)),
            Err(_) => {
                stop(&mut holders);
                bail!(
                    "hold: the holders did not report within {:?}",
                    shape.deadline
                );
            }
        }
    }
    let mut labels = labels;
    let after = if section == "idle" {
        // Accepted = the server holds a descriptor for each (polled every 10 ms, so ±10 ms).
        let after = wait_fds(&[pid], before.fds + count);
        labels.push((
            "accept_ms".into(),
            started.elapsed().as_millis().to_string(),
        ));
        after
    } else {
        // securesock gives back a quiet connection's buffers and stack after 0.5 s
        // (relay::QUIET); the measure is taken once every connection has been quiet for twice that.
        std::thread::sleep(Duration::from_secs(1));
        procfs::sample(&[pid])
    };
    let probe = Command::new(&me)
        .arg(target)
        .args(shape.probe_args)
        .stdin(Stdio::null())
        .output();
    stop(&mut holders);
    let probe = probe
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_owned)
        })
        .and_then(|l| serde_json::from_str(&l).ok())
        .unwrap_or(Value::Null);
    let mut named: Vec<(String, Value)> = reports
        .into_iter()
        .map(|r| (shape.named.to_string(), r))
        .collect();
    named.push(("probe".into(), probe));
    Ok(Inputs {
        run: None,
        before: Some(before.to_json()),
        after: Some(after.to_json()),
        named,
        labels,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up_and_stay_under_the_limit() {
        assert_eq!(shares(200, 9500), [200]);
        assert_eq!(shares(19000, 9500), [9500, 9500]);
        assert_eq!(shares(19001, 9500), [6334, 6334, 6333]);
        for (n, per) in [(1, 1), (7, 2), (600, 9500), (20000, 9500)] {
            let s = shares(n, per);
            assert_eq!(s.iter().sum::<u64>(), n);
            assert!(s.iter().all(|&x| x <= per), "{s:?}");
        }
    }

    #[test]
    fn only_the_two_held_sections_have_a_shape() {
        assert!(shape("idle").is_ok() && shape("established").is_ok());
        assert!(shape("soak").is_err());
    }
}
