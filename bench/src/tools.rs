//! The subcommands scripts/bench.sh calls around the load: `sample` (a server's processes through
//! /proc), `measure` (a load run between two samples of the server, recorded), `hold` (a burst
//! held against a server, measured meanwhile: the `held` module), `record` (one measured run as a
//! JSON line), `report` (a section's markdown and the throughput chart's gnuplot data), `publish` (a section into a BENCHMARKS.md), `machine` (the machine and versions lines,
//! the kernel TLS sentence) and `peer` (start and stop the servers measured: the `peer`
//! module).
//!
//! Apart from `peer`, `hold` and `measure`'s load command, this module reads and writes the files it is
//! given and nothing else: it never starts or stops a process and never makes a connection (the
//! load generator does).

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use serde_json::Value;

use crate::record::{self, Inputs};
use crate::report::{self, Facts, markdown};
use crate::{held, procfs};

/// The first argument that selects a subcommand instead of a load run.
pub const NAMES: [&str; 8] = [
    "sample", "measure", "hold", "record", "report", "publish", "machine", "peer",
];

/// The benchmark's bookkeeping around the load: /proc samples, run records, the report.
#[derive(Debug, Parser)]
#[command(name = "securesock-bench", version)]
pub struct Tools {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Sample a server's processes (each PID and its children) and the box, as one JSON line
    Sample {
        /// Process to sample with its children (nginx: the master); repeat to sum several
        #[arg(long, value_name = "PID", required = true)]
        pid: Vec<u32>,
        /// First wait (every 10 ms, for at most 30 s) until the processes hold this many descriptors
        #[arg(long, value_name = "N")]
        wait_fds: Option<u64>,
        /// With --wait-fds: N more than this earlier sample held
        #[arg(long, value_name = "FILE", requires = "wait_fds")]
        over: Option<PathBuf>,
        /// Label the sample: KEY=VALUE (numbers stay numbers)
        #[arg(long = "set", value_name = "KEY=VALUE")]
        labels: Vec<String>,
        /// Append the line to this file instead of printing it
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Run a load command between two samples of a server's processes and record the run
    Measure {
        /// Which section's figures follow from it (as for record)
        #[arg(long)]
        section: String,
        /// The server to sample, with its children
        #[arg(long, value_name = "PID")]
        pid: u32,
        /// Label the record: KEY=VALUE (numbers stay numbers)
        #[arg(long = "set", value_name = "KEY=VALUE")]
        labels: Vec<String>,
        /// Append the record to this file instead of printing it
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// The load command; its stdout is the run's result (a JSON line)
        #[arg(last = true, required = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// Hold a burst of idle or established connections against a server and record it meanwhile
    Hold {
        /// idle or established
        #[arg(long)]
        section: String,
        /// The server to sample, with its children
        #[arg(long, value_name = "PID")]
        pid: u32,
        /// The server's address
        #[arg(long, value_name = "HOST:PORT")]
        target: String,
        /// Connections to hold
        #[arg(long, value_name = "N")]
        count: u64,
        /// The most connections one holder process opens (each is a descriptor)
        #[arg(long, value_name = "N", default_value_t = 9500)]
        per_process: u64,
        /// Label the record: KEY=VALUE (numbers stay numbers)
        #[arg(long = "set", value_name = "KEY=VALUE")]
        labels: Vec<String>,
        /// Append the record to this file instead of printing it
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Make one run's record from its result and the samples around it; print its progress line
    Record {
        /// Which section's figures follow from it: throughput, client, forward, idle, established, services, soak
        #[arg(long)]
        section: String,
        /// The run's result (first JSON line); its fields become the record's
        #[arg(long, value_name = "FILE")]
        run: Option<PathBuf>,
        /// The sample taken before the run
        #[arg(long, value_name = "FILE")]
        before: Option<PathBuf>,
        /// The sample taken after the run
        #[arg(long, value_name = "FILE")]
        after: Option<PathBuf>,
        /// Keep another result under a name: KEY=FILE (a repeated KEY collects a list)
        #[arg(long = "json", value_name = "KEY=FILE")]
        named: Vec<String>,
        /// Label the record: KEY=VALUE (numbers stay numbers)
        #[arg(long = "set", value_name = "KEY=VALUE")]
        labels: Vec<String>,
        /// Append the record to this file instead of printing it
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Write a section's markdown from its records
    Report {
        /// throughput, forward, client, idle, established, services or soak
        section: String,
        /// The section's records, one JSON line each
        #[arg(long, value_name = "FILE")]
        results: PathBuf,
        /// KEY=VALUE lines about the run (command, rounds, load averages, ...)
        #[arg(long, value_name = "FILE")]
        facts: Vec<PathBuf>,
        /// One more fact: KEY=VALUE, over those of --facts
        #[arg(long = "fact", value_name = "KEY=VALUE")]
        fact: Vec<String>,
        /// The machine and versions lines every section opens with
        #[arg(long, value_name = "FILE")]
        versions: Option<PathBuf>,
        /// throughput: the end-of-run samples, one per server (peak RSS)
        #[arg(long, value_name = "FILE")]
        hwm: Option<PathBuf>,
        /// established: securesock's start-up warnings to quote
        #[arg(long, value_name = "FILE")]
        warnings: Option<PathBuf>,
        /// throughput: write the chart's data files and chart.gp (drawing DIR/chart.png) here
        #[arg(long, value_name = "DIR")]
        plot: Option<PathBuf>,
        /// Write the markdown here instead of printing it
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Describe the machine and the software measured (the lines every section opens with)
    Machine {
        /// The Debian release whose root the run is in
        #[arg(long, default_value = "")]
        suite: String,
        /// Cores, as nproc counts them
        #[arg(long, default_value = "")]
        nproc: String,
        /// The key exchange groups the peers are given
        #[arg(long, default_value = "")]
        groups: String,
        /// The securesock binary measured
        #[arg(long, value_name = "BIN", default_value = "securesock")]
        securesock: PathBuf,
        /// Print only the kernel TLS offload sentence
        #[arg(long)]
        ktls: bool,
    },
    /// Start or stop the peers measured (securesock, nginx, stunnel, the examples)
    Peer {
        #[command(subcommand)]
        action: crate::peer::Action,
    },
    /// Put a section into a BENCHMARKS.md between its markers, appending it when new
    Publish {
        /// The BENCHMARKS.md to change (made when missing)
        #[arg(long, value_name = "FILE")]
        into: PathBuf,
        /// The section's name in its markers
        #[arg(long)]
        section: String,
        /// The section's markdown
        #[arg(long, value_name = "FILE")]
        from: PathBuf,
    },
}

fn read(path: &Path) -> Result<String> {
    fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// The first JSON line of a file; None when it has none (a run that failed before reporting).
fn first_json(path: &Path) -> Result<Option<Value>> {
    let text = fs::read_to_string(path).unwrap_or_default();
    match text.lines().find(|l| !l.trim().is_empty()) {
        None => Ok(None),
        Some(line) => serde_json::from_str(line)
            .map(Some)
            .with_context(|| format!("{}: not JSON: {line}", path.display())),
    }
}

fn pair(arg: &str) -> Result<(String, String)> {
    match arg.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => bail!("expected KEY=VALUE, got '{arg}'"),
    }
}

/// Prints a line, or appends it to `out`.
fn emit(out: Option<&Path>, text: &str) -> Result<()> {
    match out {
        None => {
            let mut stdout = std::io::stdout();
            stdout.write_all(text.as_bytes())?;
            stdout.flush()?;
        }
        Some(path) => fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .with_context(|| format!("writing {}", path.display()))?,
    }
    Ok(())
}

/// Finishes a record for its section, prints its progress line and writes it.
fn write_record(section: &str, inputs: Inputs, out: Option<&Path>) -> Result<()> {
    let (rec, progress) = record::finish(section, record::merge(inputs));
    if let Some(line) = progress {
        eprintln!("{line}");
    }
    emit(out, &format!("{rec}\n"))
}

pub fn run(tools: Tools) -> Result<()> {
    match tools.command {
        Command::Sample {
            pid,
            wait_fds,
            over,
            labels,
            out,
        } => {
            let mut snap = procfs::sample(&pid);
            let base = match over {
                Some(p) => first_json(&p)?.and_then(|v| v["fds"].as_u64()).unwrap_or(0),
                None => 0,
            };
            if let Some(want) = wait_fds.map(|n| n + base) {
                snap = held::wait_fds(&pid, want);
            }
            let labels = labels.iter().map(|l| pair(l)).collect::<Result<Vec<_>>>()?;
            let rec = record::merge(Inputs {
                run: Some(snap.to_json()),
                labels,
                ..Inputs::default()
            });
            emit(out.as_deref(), &format!("{rec}\n"))
        }
        Command::Hold {
            section,
            pid,
            target,
            count,
            per_process,
            labels,
            out,
        } => {
            let labels = labels.iter().map(|l| pair(l)).collect::<Result<_>>()?;
            let inputs = held::hold(&section, pid, &target, count, per_process, labels)?;
            write_record(&section, inputs, out.as_deref())
        }
        Command::Record {
            section,
            run,
            before,
            after,
            named,
            labels,
            out,
        } => {
            let run = match run {
                Some(path) => match first_json(&path)? {
                    Some(v) => Some(v),
                    None => {
                        eprintln!(
                            "securesock-bench record: no result in {}; run not counted",
                            path.display()
                        );
                        return Ok(());
                    }
                },
                None => None,
            };
            let mut inputs = Inputs {
                run,
                before: before.map(|p| first_json(&p)).transpose()?.flatten(),
                after: after.map(|p| first_json(&p)).transpose()?.flatten(),
                labels: labels.iter().map(|l| pair(l)).collect::<Result<_>>()?,
                ..Inputs::default()
            };
            for n in &named {
                let (k, path) = pair(n)?;
                inputs
                    .named
                    .push((k, first_json(Path::new(&path))?.unwrap_or(Value::Null)));
            }
            write_record(&section, inputs, out.as_deref())
        }
        Command::Measure {
            section,
            pid,
            labels,
            out,
            command,
        } => {
            // clap requires at least one word after `--`.
            let (program, args) = command.split_first().context("no load command after --")?;
            let before = procfs::sample(&[pid]).to_json();
            let done = std::process::Command::new(program)
                .args(args)
                .stderr(std::process::Stdio::inherit())
                .output()
                .with_context(|| format!("running {program}"))?;
            let after = procfs::sample(&[pid]).to_json();
            if !done.status.success() {
                eprintln!(
                    "securesock-bench measure: {} from: {}",
                    done.status,
                    command.join(" ")
                );
            }
            let text = String::from_utf8_lossy(&done.stdout);
            let Some(line) = text.lines().find(|l| !l.trim().is_empty()) else {
                eprintln!(
                    "securesock-bench measure: no result from {}; run not counted",
                    command.join(" ")
                );
                return Ok(());
            };
            let run: Value = serde_json::from_str(line)
                .with_context(|| format!("{program}: not JSON: {line}"))?;
            let inputs = Inputs {
                run: Some(run),
                before: Some(before),
                after: Some(after),
                labels: labels.iter().map(|l| pair(l)).collect::<Result<_>>()?,
                ..Inputs::default()
            };
            write_record(&section, inputs, out.as_deref())
        }
        Command::Report {
            section,
            results,
            facts,
            fact,
            versions,
            hwm,
            warnings,
            plot,
            out,
        } => {
            let mut all = Facts::default();
            for path in &facts {
                all.add_lines(&read(path)?);
            }
            all.add_lines(&fact.join("\n"));
            if let Some(path) = versions {
                all.versions = read(&path)?;
            }
            let results = report::records(&read(&results)?)?;
            let md = match section.as_str() {
                "throughput" => {
                    let hwm = match hwm {
                        Some(p) => report::records(&read(&p)?)?,
                        None => Vec::new(),
                    };
                    if let Some(dir) = plot {
                        let shown = dir.display().to_string();
                        for (name, text) in report::throughput::chart(&all, &results, &shown) {
                            fs::write(dir.join(&name), text)
                                .with_context(|| format!("writing {shown}/{name}"))?;
                        }
                    }
                    report::throughput::markdown(&all, &results, &hwm)
                }
                "forward" => report::forward::markdown(&all, &results),
                "client" => report::client::markdown(&all, &results),
                "idle" => report::idle::markdown(&all, &results),
                "established" => {
                    let w = warnings.map(|p| read(&p)).transpose()?.unwrap_or_default();
                    report::established::markdown(&all, &results, &w)
                }
                "services" => report::services::markdown(&all, &results),
                "soak" => report::soak::markdown(&all, &results),
                other => bail!("no section '{other}'"),
            };
            match out {
                Some(path) => {
                    fs::write(&path, md).with_context(|| format!("writing {}", path.display()))
                }
                None => emit(None, &md),
            }
        }
        Command::Machine {
            suite,
            nproc,
            groups,
            securesock,
            ktls,
        } => {
            let text = if ktls {
                format!("{}\n", crate::machine::ktls())
            } else {
                crate::machine::versions(&suite, &nproc, &groups, &securesock)
            };
            emit(None, &text)
        }
        Command::Peer { action } => crate::peer::run(action),
        Command::Publish {
            into,
            section,
            from,
        } => {
            let existing = fs::read_to_string(&into).ok();
            let body = read(&from)?;
            let md = markdown::replace_section(existing.as_deref(), &section, &body);
            fs::write(&into, md).with_context(|| format!("writing {}", into.display()))?;
            eprintln!("wrote section '{section}' of {}", into.display());
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_key_value_pairs() {
        assert_eq!(pair("a=b=c").unwrap(), ("a".to_string(), "b=c".to_string()));
        assert!(pair("novalue").is_err());
        assert!(pair("=x").is_err());
    }

    #[test]
    fn subcommands_parse() {
        let t = Tools::try_parse_from([
            "securesock-bench",
            "sample",
            "--pid",
            "1",
            "--pid",
            "2",
            "--set",
            "server=nginx",
        ])
        .unwrap();
        assert!(matches!(t.command, Command::Sample { ref pid, .. } if pid == &[1, 2]));
        assert!(Tools::try_parse_from(["securesock-bench", "sample"]).is_err());
        for name in NAMES {
            assert!(
                Tools::try_parse_from(["securesock-bench", name, "--help"])
                    .is_err_and(|e| !e.use_stderr())
            );
        }
    }

    #[test]
    fn a_file_without_a_result_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("run.json");
        fs::write(&p, "").unwrap();
        assert_eq!(first_json(&p).unwrap(), None);
        fs::write(&p, "\n{\"ok\":3}\n{\"ok\":4}\n").unwrap();
        assert_eq!(first_json(&p).unwrap(), Some(serde_json::json!({"ok": 3})));
        assert_eq!(first_json(&dir.path().join("missing")).unwrap(), None);
    }
}
