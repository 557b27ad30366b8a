//! Where a service listens and what it relays to: a TCP address is bound for a moment, as the
//! server binds it (`SO_REUSEADDR`, the same backlog), and on "address in use" the holder is
//! named (a running securesock is a warning: checking before a reload is the usual use); a UNIX path is free, a stale socket (start-up removes it), a live socket or not a socket
//! at all; the upstream's name resolves, and its addresses are listed.
//!
//! Nothing here keeps a socket or changes a file: the bound socket is closed at once, and a stale
//! UNIX socket is reported, not removed.

use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::Path;

use super::{Report, holder};
use crate::config::{Listen, UNIX_PREFIX, UnixListen, Upstreams};
use crate::reason::io_reason;
use crate::sys;
use crate::upstream::Upstream;

/// The service's listener.
pub(super) fn listen(r: &mut Report<'_>, listen: &Listen, backlog: u32) {
    match listen {
        Listen::Tcp(addr) => tcp(r, "listen", *addr, backlog),
        Listen::Unix(unix) => unix_path(r, unix),
    }
}

/// Binds `addr` as the server would and closes it again; `what` names the setting.
pub(super) fn tcp(r: &mut Report<'_>, what: &str, addr: SocketAddr, backlog: u32) {
    match sys::bind(addr, backlog) {
        Ok(listener) => {
            drop(listener);
            r.ok(format!("{what} {addr} is free"));
        }
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            let holder = holder::holder(addr);
            if holder.securesock {
                // The usual check: the new settings, before `systemctl reload` (which keeps the
                // running server's sockets). Only a fresh start beside it would fail.
                r.warning(format!(
                    "{what} {addr} is in use: {}: a reload of it keeps the socket; a second server would not start",
                    holder.said
                ));
            } else {
                r.error(format!("{what} {addr} is in use: {}", holder.said));
            }
        }
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => r.error(format!(
            "{what} {addr}: {}: a port below 1024 needs root or CAP_NET_BIND_SERVICE",
            io_reason(&e)
        )),
        Err(e) => r.error(format!("{what} {addr}: cannot listen: {}", io_reason(&e))),
    }
}

/// A UNIX socket path, judged as start-up judges it (`server/listener.rs`'s `clear_stale`).
fn unix_path(r: &mut Report<'_>, unix: &UnixListen) {
    let path = &unix.path;
    let shown = format!("listen {UNIX_PREFIX}{}", path.display());
    if let Some(group) = &unix.group
        && let Err(e) = sys::group_id(group)
    {
        r.error(format!("--listen-group {group}: {}", io_reason(&e)));
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !parent.is_dir() {
        r.error(format!(
            "{shown}: the directory {} does not exist",
            parent.display()
        ));
        return;
    }
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            r.ok(format!("{shown} is free"));
            return;
        }
        Err(e) => {
            r.error(format!("{shown}: {}", io_reason(&e)));
            return;
        }
    };
    if !meta.file_type().is_socket() {
        r.error(format!(
            "{shown}: the path exists and is not a socket (start-up will not replace it)"
        ));
        return;
    }
    match UnixStream::connect(path) {
        Ok(_) => r.error(format!(
            "{shown} is a live socket: another process is listening on it"
        )),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => r.ok(format!(
            "{shown} is a stale socket nobody listens on (start-up removes it)"
        )),
        Err(e) => r.error(format!(
            "{shown}: checking the existing socket: {}",
            io_reason(&e)
        )),
    }
}

/// The upstream of forward and client modes: a name resolves (as start-up resolves it, which
/// refuses to start otherwise), and its addresses are listed; a UNIX socket is looked at only
/// when connecting, so one that does not answer yet is a warning.
pub(super) fn upstream(r: &mut Report<'_>, spec: &str, set: &Upstreams) {
    if let Some(path) = spec.strip_prefix(UNIX_PREFIX) {
        match UnixStream::connect(path) {
            Ok(_) => r.ok(format!("upstream {spec} accepts connections")),
            Err(e) => r.warning(format!(
                "upstream {spec}: {}: every connection fails until something listens there",
                io_reason(&e)
            )),
        }
        return;
    }
    let one = Upstreams {
        addrs: vec![spec.to_string()],
        ..set.clone()
    };
    match Upstream::resolve(&one) {
        Ok(up) => {
            let addrs: Vec<String> = up.addrs().iter().map(ToString::to_string).collect();
            r.ok(format!("upstream {spec} resolves to {}", addrs.join(", ")));
        }
        Err(e) => r.error(format!("{e:#}")),
    }
}
