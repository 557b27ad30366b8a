//! The host's limits a thread per connection runs into, checked at start-up: the open-file limit
//! (raised as far as the process may), `kernel.pid_max`, `kernel.threads-max`, `vm.max_map_count`
//! and `RLIMIT_NPROC`, each short one named in a warning with the value `--max-connections` needs;
//! and the number of connection threads `vm.max_map_count` leaves room for.
//!
//! It only reads and warns: it never refuses the start and never changes a sysctl.

use std::sync::Arc;

use log::warn;

use crate::config::Mode;
use crate::sys;
use crate::upstream::Upstream;

/// Descriptors the server holds besides its connections: the listener, files read on reload, the
/// metrics endpoint.
const FD_MARGIN: u64 = 64;

/// Warns when the open-file limit would stop the server short of `--max-connections`, after
/// raising it as far as the process may.
pub(crate) fn check_fd_limit(max_connections: usize, mode: &Mode<Arc<Upstream>>) {
    let per_connection = mode.descriptors_per_connection();
    let need = per_connection * max_connections as u64 + FD_MARGIN;
    match sys::raise_fd_limit() {
        Ok(n) if n < need => warn!(
            "open-file limit is {n}: --max-connections {max_connections} needs {need} ({per_connection} per connection in {} mode, plus {FD_MARGIN} for the server); raise it (ulimit -n, LimitNOFILE=)",
            mode.name()
        ),
        Ok(_) => {}
        Err(e) => warn!("cannot read the open-file limit: {e}"),
    }
}

/// Threads the server runs besides one per connection (accept loop, reload, metrics, signals), with
/// room to spare.
const THREAD_MARGIN: u64 = 16;

/// The `kernel.pid_max` to suggest: the kernel's own ceiling, since the host's other processes
/// need PIDs too and a larger PID space costs nothing until used.
const SUGGESTED_PID_MAX: u64 = 4_194_304;

/// Memory maps the process needs besides those of its connection threads: malloc's arenas grow a
/// few each, glibc keeps the stacks of exited threads mapped for reuse (up to 40 MiB of them), and
/// the binary and libraries hold the rest of [`ThreadLimits::maps_in_use`].
const MAP_MARGIN: u64 = 1024;

/// Memory maps each connection thread takes: its stack and the stack's guard page, and the
/// alternate signal stack and guard page the Rust runtime gives every thread to report a stack
/// overflow. The runtime aborts the whole process when a new thread cannot map the latter, so the
/// server never starts a thread that `vm.max_map_count` has no room for ([`thread_budget`]).
const MAPS_PER_THREAD: u64 = 4;

/// How many connection threads may exist at once without reaching `vm.max_map_count`; unbounded
/// when it cannot be read.
pub(crate) fn thread_budget(limits: &ThreadLimits) -> usize {
    limits.max_map_count.map_or(usize::MAX, |max| {
        let budget = max.saturating_sub(limits.maps_in_use + MAP_MARGIN) / MAPS_PER_THREAD;
        usize::try_from(budget).unwrap_or(usize::MAX)
    })
}

/// The kernel's and the process's ceilings that a thread per connection runs into, as read at
/// start; `None` where a value cannot be read or is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ThreadLimits {
    /// `kernel.pid_max`: every thread takes a PID, from the one space every process on the host
    /// shares.
    pub(crate) pid_max: Option<u64>,
    /// `kernel.threads-max`: threads on the whole host.
    pub(crate) threads_max: Option<u64>,
    /// `vm.max_map_count`: memory maps of one process; each connection thread takes
    /// [`MAPS_PER_THREAD`].
    pub(crate) max_map_count: Option<u64>,
    /// Maps the process holds already (binary, libraries, heaps).
    pub(crate) maps_in_use: u64,
    /// `RLIMIT_NPROC`: threads of every process of this user; `None` when unlimited or, for root,
    /// not enforced.
    pub(crate) nproc: Option<u64>,
}

impl ThreadLimits {
    /// Reads the limits in force for this process.
    pub(crate) fn read() -> ThreadLimits {
        let sysctl = |name: &str| -> Option<u64> {
            let path = format!("/proc/sys/{}", name.replace('.', "/"));
            std::fs::read_to_string(path).ok()?.trim().parse().ok()
        };
        let maps_in_use = std::fs::read_to_string("/proc/self/maps")
            .map_or(0, |maps| maps.lines().count() as u64);
        ThreadLimits {
            pid_max: sysctl("kernel.pid_max"),
            threads_max: sysctl("kernel.threads-max"),
            max_map_count: sysctl("vm.max_map_count"),
            maps_in_use,
            nproc: sys::nproc_limit(),
        }
    }
}

/// What would stop the server short of `max_connections` connection threads, one warning per
/// limit, each naming the sysctl or rlimit and the value `--max-connections` needs.
pub(crate) fn thread_limit_warnings(max_connections: usize, limits: &ThreadLimits) -> Vec<String> {
    let n = max_connections as u64;
    let threads = n + THREAD_MARGIN;
    let maps = MAPS_PER_THREAD * n + limits.maps_in_use + MAP_MARGIN;
    let mut warnings = Vec::new();
    let mut check = |value: Option<u64>, need: u64, what: &str, why: &str, how: String| {
        if let Some(v) = value
            && v < need
        {
            warnings.push(format!(
                "{what} is {v}: --max-connections {max_connections} needs at least {need} ({why}); raise it ({how}) or lower --max-connections"
            ));
        }
    };
    check(
        limits.pid_max,
        threads,
        "kernel.pid_max",
        "a PID per connection thread, from the space every process on the host shares",
        format!("sysctl -w kernel.pid_max={SUGGESTED_PID_MAX}"),
    );
    check(
        limits.threads_max,
        threads,
        "kernel.threads-max",
        "a thread per connection, counted over the whole host",
        format!("sysctl -w kernel.threads-max={threads}"),
    );
    check(
        limits.max_map_count,
        maps,
        "vm.max_map_count",
        "four memory maps per connection thread (its stack and signal stack, each with a guard page), plus the process's own; beyond it connections are refused",
        format!("sysctl -w vm.max_map_count={maps}"),
    );
    check(
        limits.nproc,
        threads,
        "RLIMIT_NPROC",
        "a thread per connection, counted over every process of this user",
        format!("ulimit -u {threads}; LimitNPROC= and TasksMax= under systemd"),
    );
    warnings
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This box's values: PIDs and maps to spare for 10,000 connections, not for 40,000.
    fn host() -> ThreadLimits {
        ThreadLimits {
            pid_max: Some(32_768),
            threads_max: Some(192_729),
            max_map_count: Some(65_530),
            maps_in_use: 300,
            nproc: None,
        }
    }

    #[test]
    fn limits_with_room_to_spare_give_no_warning() {
        assert_eq!(thread_limit_warnings(10_000, &host()), Vec::<String>::new());
        assert_eq!(
            thread_limit_warnings(1_000_000, &ThreadLimits::default()),
            Vec::<String>::new(),
            "unreadable limits are not guessed at"
        );
    }

    #[test]
    fn each_short_limit_is_named_with_the_value_needed() {
        let w = thread_limit_warnings(40_000, &host());
        assert_eq!(w.len(), 2, "{w:#?}");
        assert!(
            w[0].starts_with(
                "kernel.pid_max is 32768: --max-connections 40000 needs at least 40016"
            ),
            "{}",
            w[0]
        );
        assert!(
            w[0].contains("sysctl -w kernel.pid_max=4194304"),
            "{}",
            w[0]
        );
        // Four maps per thread, the 300 in use and the margin: 160000 + 300 + 1024.
        assert!(
            w[1].starts_with(
                "vm.max_map_count is 65530: --max-connections 40000 needs at least 161324"
            ),
            "{}",
            w[1]
        );
        assert!(
            w[1].contains("sysctl -w vm.max_map_count=161324"),
            "{}",
            w[1]
        );
    }

    #[test]
    fn a_limit_exactly_at_the_need_is_enough_and_one_below_is_not() {
        let need = 20_000 + THREAD_MARGIN;
        let at = ThreadLimits {
            threads_max: Some(need),
            nproc: Some(need),
            ..ThreadLimits::default()
        };
        assert!(thread_limit_warnings(20_000, &at).is_empty());
        let below = ThreadLimits {
            threads_max: Some(need - 1),
            nproc: Some(need - 1),
            ..ThreadLimits::default()
        };
        let w = thread_limit_warnings(20_000, &below);
        assert_eq!(w.len(), 2, "{w:#?}");
        assert!(w[0].starts_with("kernel.threads-max is 20015:"), "{}", w[0]);
        assert!(w[1].starts_with("RLIMIT_NPROC is 20015:"), "{}", w[1]);
        assert!(w[1].contains("ulimit -u 20016"), "{}", w[1]);
    }

    #[test]
    fn the_thread_budget_leaves_the_maps_in_use_and_the_margin() {
        // (65530 - 300 - 1024) / 4
        assert_eq!(thread_budget(&host()), 16_051);
        assert_eq!(thread_budget(&ThreadLimits::default()), usize::MAX);
        let tiny = ThreadLimits {
            max_map_count: Some(1000),
            ..host()
        };
        assert_eq!(thread_budget(&tiny), 0);
        // The warning and the budget agree: a --max-connections the warning lets pass fits.
        let w = thread_limit_warnings(16_051, &host());
        assert!(w.is_empty(), "{w:#?}");
        let w = thread_limit_warnings(16_052, &host());
        assert_eq!(w.len(), 1, "{w:#?}");
    }

    #[test]
    fn reading_the_limits_finds_this_hosts_sysctls() {
        let l = ThreadLimits::read();
        assert!(l.pid_max.is_some_and(|v| v >= 301), "{l:?}");
        assert!(l.max_map_count.is_some_and(|v| v > 0), "{l:?}");
        assert!(l.maps_in_use > 0, "{l:?}");
    }
}
