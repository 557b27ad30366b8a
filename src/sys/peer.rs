//! Who is at the other end of a local socket, beyond SO_PEERCRED's one uid and gid: the peer's
//! supplementary groups (SO_PEERGROUPS), and who this process itself runs as. What a control
//! socket needs to let in only its owner, root, or one group's members.
//!
//! Owns the raw calls; it must never decide who may do what (the control room does).

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

/// The most groups read for a peer: Linux's NGROUPS_MAX is 65536; a peer in more is refused by
/// the caller as if in none of the others.
const MAX_GROUPS: usize = 65_536;

/// The supplementary groups the peer had when it connected (SO_PEERGROUPS, Linux 4.13 and later).
/// The primary group is [`super::peer_cred`]'s `gid`.
pub fn peer_groups(stream: &UnixStream) -> io::Result<Vec<u32>> {
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut len = libc::socklen_t::try_from(groups.len() * size_of::<libc::gid_t>())
            .map_err(|_| io::Error::other("group buffer too large"))?;
        // SAFETY: the fd is the caller's open socket; `groups` is a live buffer of `len` bytes for
        // the call, and the kernel writes at most `len` bytes into it (and sets `len` to the size
        // it has, or needs when it returns ERANGE).
        let rc = unsafe {
            libc::getsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let needed = usize::try_from(len).unwrap_or(usize::MAX) / size_of::<libc::gid_t>();
        if rc != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ERANGE) && needed > groups.len() {
                groups.resize(needed.min(MAX_GROUPS), 0);
                if needed <= MAX_GROUPS {
                    continue;
                }
            }
            return Err(e);
        }
        groups.truncate(needed);
        return Ok(groups);
    }
}

/// The effective uid this process runs as.
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid cannot fail and has no side effects.
    unsafe { libc::geteuid() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_pair_shows_this_process_s_own_groups() {
        let (a, _b) = UnixStream::pair().unwrap();
        let groups = peer_groups(&a).unwrap();
        // SAFETY: getgroups with a zero size only counts.
        let count = unsafe { libc::getgroups(0, std::ptr::null_mut()) };
        assert_eq!(groups.len(), usize::try_from(count).unwrap(), "{groups:?}");
        assert_eq!(super::super::peer_cred(&a).unwrap().uid, effective_uid());
    }
}
