//! The harness's only unsafe code: the few raw system calls the tests make (who we run as, a
//! signal to a child, dropping to another user under a task limit). The crate denies `unsafe_code`
//! everywhere else, as the server does outside its `sys/`.
#![allow(unsafe_code)]

use std::os::unix::process::CommandExt as _;
use std::process::Command;

/// The effective user ID of the test process.
pub fn euid() -> libc::uid_t {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// The effective group ID of the test process.
pub fn egid() -> libc::gid_t {
    // SAFETY: getegid has no preconditions and cannot fail.
    unsafe { libc::getegid() }
}

/// Sends `signal` to `pid`; the caller passes a child it started and has not reaped yet, so the
/// PID cannot name another process.
pub fn kill(pid: libc::pid_t, signal: i32) -> std::io::Result<()> {
    // SAFETY: kill(2) takes plain integers; which process it reaches is the caller's contract
    // above.
    if unsafe { libc::kill(pid, signal) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Makes `cmd` run as `uid`/`gid` with no supplementary groups and at most `tasks` tasks of that
/// user (RLIMIT_NPROC), set in the child between fork and exec.
pub fn run_as_with_task_limit(
    cmd: &mut Command,
    uid: libc::uid_t,
    gid: libc::gid_t,
    tasks: libc::rlim_t,
) {
    // SAFETY: the closure runs in the forked child before exec and only makes async-signal-safe
    // system calls (setrlimit, setgroups, setgid, setuid), reporting failure as an io::Error.
    unsafe {
        cmd.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: tasks,
                rlim_max: tasks,
            };
            if libc::setrlimit(libc::RLIMIT_NPROC, &limit) != 0
                || libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(gid) != 0
                || libc::setuid(uid) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
