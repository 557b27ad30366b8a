//! Sampling the processes under test through /proc: CPU ticks, memory, threads and open
//! descriptors of a server and its children (nginx's workers), and the box's kernel memory and
//! load, as one [`Snapshot`] that `securesock-bench sample` prints as a JSON line.
//!
//! This module only reads /proc; it never signals, starts or waits for a process, and it never
//! interprets a figure (the report does that).

use std::fs;
use std::path::Path;

use serde_json::{Value, json};

/// The kernel stack each thread costs: THREAD_SIZE, 16 KiB on x86-64 and arm64.
pub const KERNEL_STACK_KIB: f64 = 16.0;

/// What one process's /proc/PID/stat says that the bench needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub ppid: u32,
    /// utime + stime in clock ticks (threads included, exited ones too).
    pub cpu_ticks: u64,
}

/// Parses /proc/PID/stat text. The fields are counted after the ")" that ends the command name,
/// which may itself hold spaces and parentheses: ppid is field 4, utime 14 and stime 15.
pub fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (the state).
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(Stat {
        ppid: u32::try_from(field(4)?).ok()?,
        cpu_ticks: field(14)? + field(15)?,
    })
}

/// A "Name: value [kB]" field of /proc/PID/status or /proc/meminfo, as a number.
pub fn status_field(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        if key != name {
            return None;
        }
        value.split_whitespace().next()?.parse().ok()
    })
}

/// The PIDs whose parent is `pid`, from every /proc/N/stat (what `pgrep -P` lists).
fn children(pid: u32) -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found: Vec<u32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| {
            fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|t| parse_stat(&t))
                .is_some_and(|s| s.ppid == pid)
        })
        .collect();
    found.sort_unstable();
    found
}

/// The process and its children: a server's "family" (nginx: master + workers).
pub fn family(pid: u32) -> Vec<u32> {
    let mut all = vec![pid];
    all.extend(children(pid));
    all
}

/// The clock ticks per second that /proc/PID/stat counts in.
pub fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf only reads a configuration value; it has no pointers and no side effects.
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    // Linux has reported 100 on every architecture since 2.6; a failure (-1) falls back to it.
    u64::try_from(tck).ok().filter(|&t| t > 0).unwrap_or(100)
}

/// One look at a server's processes and at the box.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub pids: Vec<u32>,
    pub cpu_ticks: u64,
    pub clk_tck: u64,
    /// kB, summed over the processes (shared pages counted in each).
    pub rss_kb: u64,
    pub hwm_kb: u64,
    pub pte_kb: u64,
    pub threads: u64,
    pub fds: u64,
    /// The whole box's, from /proc/meminfo: other work moves them too.
    pub kernel_stack_kb: u64,
    pub page_tables_kb: u64,
    /// The 1, 5 and 15 minute load averages, as /proc/loadavg writes them.
    pub load: String,
}

/// Adds one process's /proc/PID/stat and /proc/PID/status text to a snapshot (a process that has
/// gone counts nothing).
pub fn add_process(snap: &mut Snapshot, stat: Option<&str>, status: Option<&str>) {
    if let Some(s) = stat.and_then(parse_stat) {
        snap.cpu_ticks += s.cpu_ticks;
    }
    if let Some(status) = status {
        let f = |name| status_field(status, name).unwrap_or(0);
        snap.rss_kb += f("VmRSS");
        snap.hwm_kb += f("VmHWM");
        snap.pte_kb += f("VmPTE");
        snap.threads += f("Threads");
    }
}

/// The first three fields of /proc/loadavg.
pub fn load_of(loadavg: &str) -> String {
    loadavg
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn count_entries(dir: &Path) -> u64 {
    fs::read_dir(dir).map_or(0, |d| d.count() as u64)
}

/// Samples the families of `pids` (summed) and the box.
pub fn sample(pids: &[u32]) -> Snapshot {
    let mut snap = Snapshot {
        clk_tck: clock_ticks_per_sec(),
        ..Snapshot::default()
    };
    for &pid in pids {
        for p in family(pid) {
            let stat = fs::read_to_string(format!("/proc/{p}/stat")).ok();
            let status = fs::read_to_string(format!("/proc/{p}/status")).ok();
            add_process(&mut snap, stat.as_deref(), status.as_deref());
            snap.fds += count_entries(Path::new(&format!("/proc/{p}/fd")));
            snap.pids.push(p);
        }
    }
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    snap.kernel_stack_kb = status_field(&meminfo, "KernelStack").unwrap_or(0);
    snap.page_tables_kb = status_field(&meminfo, "PageTables").unwrap_or(0);
    snap.load = load_of(&fs::read_to_string("/proc/loadavg").unwrap_or_default());
    snap
}

impl Snapshot {
    pub fn to_json(&self) -> Value {
        json!({
            "pids": self.pids,
            "cpu_ticks": self.cpu_ticks,
            "clk_tck": self.clk_tck,
            "rss_kb": self.rss_kb,
            "hwm_kb": self.hwm_kb,
            "pte_kb": self.pte_kb,
            "threads": self.threads,
            "fds": self.fds,
            "kernel_stack_kb": self.kernel_stack_kb,
            "page_tables_kb": self.page_tables_kb,
            "load": self.load,
        })
    }
}

/// CPU seconds used between two samples of the same processes.
pub fn cpu_seconds(before_ticks: u64, after_ticks: u64, clk_tck: u64) -> f64 {
    after_ticks.saturating_sub(before_ticks) as f64 / clk_tck.max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A captured /proc/PID/stat of an nginx worker, with a name holding a space and a ")".
    const STAT: &str = "4242 (nginx: wo)rker) S 4200 4200 4200 0 -1 4194624 1208 0 0 0 \
        731 262 0 0 20 0 1 0 35193 12345678 2600 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";

    const STATUS: &str = "Name:\tnginx\nUmask:\t0022\nState:\tS (sleeping)\nPid:\t4242\n\
        PPid:\t4200\nVmPeak:\t   20988 kB\nVmHWM:\t    7360 kB\nVmRSS:\t    6144 kB\n\
        VmPTE:\t      72 kB\nThreads:\t3\nSigQ:\t0/63422\n";

    #[test]
    fn stat_fields_are_counted_after_the_last_parenthesis() {
        assert_eq!(
            parse_stat(STAT),
            Some(Stat {
                ppid: 4200,
                cpu_ticks: 731 + 262
            })
        );
        assert_eq!(parse_stat("12 (short) R"), None);
        assert_eq!(parse_stat(""), None);
    }

    #[test]
    fn status_fields_are_read_by_exact_name() {
        assert_eq!(status_field(STATUS, "VmRSS"), Some(6144));
        assert_eq!(status_field(STATUS, "VmHWM"), Some(7360));
        assert_eq!(status_field(STATUS, "Threads"), Some(3));
        // "Vm" is a prefix of several names, never a name.
        assert_eq!(status_field(STATUS, "Vm"), None);
        let meminfo = "MemTotal:       16375580 kB\nKernelStack:        5456 kB\nPageTables:        15884 kB\nSecPageTables:         0 kB\n";
        assert_eq!(status_field(meminfo, "PageTables"), Some(15884));
        assert_eq!(status_field(meminfo, "KernelStack"), Some(5456));
    }

    #[test]
    fn a_family_sums_its_processes_and_a_gone_one_counts_nothing() {
        let mut snap = Snapshot::default();
        add_process(&mut snap, Some(STAT), Some(STATUS));
        add_process(&mut snap, Some(STAT), Some(STATUS));
        add_process(&mut snap, None, None);
        assert_eq!(snap.cpu_ticks, 2 * 993);
        assert_eq!(snap.rss_kb, 2 * 6144);
        assert_eq!(snap.hwm_kb, 2 * 7360);
        assert_eq!(snap.pte_kb, 144);
        assert_eq!(snap.threads, 6);
    }

    #[test]
    fn cpu_seconds_are_the_tick_difference_over_the_clock() {
        assert_eq!(cpu_seconds(100, 350, 100), 2.5);
        assert_eq!(cpu_seconds(0, 0, 100), 0.0);
        // A process that restarted between the samples never gives negative time.
        assert_eq!(cpu_seconds(500, 10, 100), 0.0);
        assert_eq!(cpu_seconds(0, 1000, 250), 4.0);
    }

    #[test]
    fn load_is_the_three_averages() {
        assert_eq!(
            load_of("26.53 10.87 4.08 53/340 24421\n"),
            "26.53 10.87 4.08"
        );
    }

    #[test]
    fn this_process_samples_itself() {
        let snap = sample(&[std::process::id()]);
        assert_eq!(snap.pids[0], std::process::id());
        assert!(snap.rss_kb > 0 && snap.threads >= 1 && snap.fds >= 1);
        assert!(snap.clk_tck > 0);
        assert_eq!(snap.load.split(' ').count(), 3);
    }
}
