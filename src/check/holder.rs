//! Who holds a TCP port: the listening sockets on it from `/proc/net/tcp` and `/proc/net/tcp6`
//! (their inode and owner), then the processes whose `/proc/PID/fd` holds one of those inodes.
//! What `ss -ltnp` and `fuser` do, without either installed.
//!
//! Only reads /proc; a process of another user hides its descriptors, and then the owner's uid
//! is all that can be said.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::MetadataExt;

/// The kernel's TCP_LISTEN state, as /proc/net/tcp writes it.
const LISTEN: &str = "0A";

/// A listening socket found in /proc/net/tcp{,6}.
#[derive(Debug, PartialEq, Eq)]
struct Listening {
    addr: SocketAddr,
    uid: u32,
    inode: u64,
}

/// The command name the server runs under, as /proc/PID/comm shows it.
const SECURESOCK: &str = "securesock";

/// Who holds a port, as far as /proc tells.
pub(super) struct Holder {
    /// "held by pid N (comm)", or as much as /proc tells.
    pub(super) said: String,
    /// Every process found holding it is a securesock: the one running now, when this is a
    /// check before a reload (which keeps its sockets).
    pub(super) securesock: bool,
}

/// Who holds `addr`.
pub(super) fn holder(addr: SocketAddr) -> Holder {
    let owners = owners_of(addr);
    Holder {
        securesock: all_securesock(&owners),
        said: describe(addr, &owners),
    }
}

/// Whether processes were found and every one is a securesock (none found is not "all").
fn all_securesock(owners: &[(u32, String)]) -> bool {
    !owners.is_empty() && owners.iter().all(|(_, comm)| comm == SECURESOCK)
}

/// The processes holding a socket that listens on `addr`'s port and address.
fn owners_of(addr: SocketAddr) -> Vec<(u32, String)> {
    let inodes: BTreeSet<u64> = listening_on(addr).iter().map(|s| s.inode).collect();
    if inodes.is_empty() {
        return Vec::new();
    }
    owners(&inodes)
}

/// The listening sockets that stop a bind to `addr`.
fn listening_on(addr: SocketAddr) -> Vec<Listening> {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .flat_map(|text| text.lines().filter_map(parse_line).collect::<Vec<_>>())
        .filter(|s| conflicts(s.addr, addr))
        .collect()
}

/// Says who holds `addr`: "held by pid N (comm)" from `owners`, or as much as /proc tells.
fn describe(addr: SocketAddr, owners: &[(u32, String)]) -> String {
    let sockets = listening_on(addr);
    if sockets.is_empty() {
        return "no listening socket on it in /proc/net/tcp (a socket bound without listening, or one in another network namespace)".to_string();
    }
    if !owners.is_empty() {
        let named: Vec<String> = owners
            .iter()
            .map(|(pid, comm)| format!("pid {pid} ({comm})"))
            .collect();
        return format!("held by {}", named.join(", "));
    }
    let me = std::fs::metadata("/proc/self").map(|m| m.uid()).ok();
    unseen(&sockets, me)
}

/// What can be said of sockets whose process /proc does not show: whose they are, when not ours
/// (`me`: this process's uid).
fn unseen(sockets: &[Listening], me: Option<u32>) -> String {
    match sockets.iter().find(|s| Some(s.uid) != me) {
        Some(s) => format!("held by another user's process (uid {})", s.uid),
        None => "held by a process whose descriptors /proc does not show".to_string(),
    }
}

/// Whether a socket listening on `listening` stops a bind to `wanted`: the same port, and the
/// same address or a wildcard on either side (a `[::]` socket may take IPv4 too).
fn conflicts(listening: SocketAddr, wanted: SocketAddr) -> bool {
    if listening.port() != wanted.port() {
        return false;
    }
    let (have, want) = (listening.ip().to_canonical(), wanted.ip().to_canonical());
    have == want
        || (have.is_ipv4() == want.is_ipv4() && (have.is_unspecified() || want.is_unspecified()))
        || (listening.is_ipv6() && listening.ip().is_unspecified())
}

/// One line of /proc/net/tcp or tcp6, when it is a listening socket:
/// `sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...`.
fn parse_line(line: &str) -> Option<Listening> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    if fields.get(3) != Some(&LISTEN) {
        return None;
    }
    Some(Listening {
        addr: parse_addr(fields.get(1)?)?,
        uid: fields.get(7)?.parse().ok()?,
        inode: fields.get(9)?.parse().ok()?,
    })
}

/// `0100007F:1F90` or 32 hex digits and a port: the address as the kernel keeps it (each 32-bit
/// word in network order, printed as a host-order number), the port in host order.
fn parse_addr(text: &str) -> Option<SocketAddr> {
    let (ip, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let mut bytes = Vec::with_capacity(16);
    for i in (0..ip.len()).step_by(8) {
        let word = u32::from_str_radix(ip.get(i..i + 8)?, 16).ok()?;
        bytes.extend_from_slice(&word.to_ne_bytes());
    }
    let ip = match bytes.len() {
        4 => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(bytes).ok()?)),
        16 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// The processes holding one of `inodes` open (pid and command name), by `/proc/*/fd`.
fn owners(inodes: &BTreeSet<u64>) -> Vec<(u32, String)> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        // Another user's process: its descriptors are not ours to read.
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            std::fs::read_link(fd.path()).ok().is_some_and(|target| {
                target
                    .to_str()
                    .and_then(|t| t.strip_prefix("socket:["))
                    .and_then(|t| t.strip_suffix(']'))
                    .and_then(|n| n.parse::<u64>().ok())
                    .is_some_and(|inode| inodes.contains(&inode))
            })
        });
        if holds {
            let comm = std::fs::read_to_string(entry.path().join("comm"))
                .map(|c| c.trim_end().to_string())
                .unwrap_or_else(|_| "?".to_string());
            found.push((pid, comm));
        }
    }
    found.sort();
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn word(ip: [u8; 4]) -> String {
        format!("{:08X}", u32::from_ne_bytes(ip))
    }

    #[test]
    fn a_listening_line_gives_address_owner_and_inode() {
        let line = format!(
            "   0: {}:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4242 1 0000000000000000 100 0 0 10 0",
            word([127, 0, 0, 1])
        );
        assert_eq!(
            parse_line(&line),
            Some(Listening {
                addr: "127.0.0.1:8080".parse().unwrap(),
                uid: 1000,
                inode: 4242
            })
        );
        let established = line.replace(" 0A ", " 01 ");
        assert_eq!(parse_line(&established), None);
    }

    #[test]
    fn an_ipv6_address_reads_word_by_word() {
        let ip: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let o = ip.octets();
        let text: String = o
            .chunks(4)
            .map(|c| word([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(
            parse_addr(&format!("{text}:01BB")),
            Some(SocketAddr::new(IpAddr::V6(ip), 443))
        );
    }

    #[test]
    fn wildcards_conflict_with_their_family_and_dual_stack() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(conflicts(a("0.0.0.0:80"), a("127.0.0.1:80")));
        assert!(conflicts(a("127.0.0.1:80"), a("0.0.0.0:80")));
        assert!(conflicts(a("[::]:80"), a("127.0.0.1:80")));
        assert!(!conflicts(a("127.0.0.1:80"), a("127.0.0.2:80")));
        assert!(!conflicts(a("127.0.0.1:80"), a("127.0.0.1:81")));
        assert!(!conflicts(a("0.0.0.0:80"), a("[::1]:80")));
    }

    #[test]
    fn a_hidden_holder_is_another_users_when_the_socket_is_not_ours() {
        let socket = |uid| Listening {
            addr: "127.0.0.1:80".parse().unwrap(),
            uid,
            inode: 1,
        };
        assert_eq!(
            unseen(&[socket(0)], Some(1000)),
            "held by another user's process (uid 0)"
        );
        assert!(unseen(&[socket(1000)], Some(1000)).contains("/proc does not show"));
    }

    #[test]
    fn only_a_port_held_by_securesock_alone_is_its_own() {
        let p = |comm: &str| (7, comm.to_string());
        assert!(!all_securesock(&[]), "nobody found is not securesock");
        assert!(all_securesock(&[p("securesock"), p("securesock")]));
        assert!(!all_securesock(&[p("securesock"), p("nginx")]));
    }

    #[test]
    fn this_process_is_named_as_the_holder_of_its_port() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let found = holder(held.local_addr().unwrap());
        assert!(
            found
                .said
                .contains(&format!("pid {} (", std::process::id())),
            "{}",
            found.said
        );
        assert!(!found.securesock);
    }
}
