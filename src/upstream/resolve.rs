//! Each `--upstream` entry and the addresses it stands for now: a `HOST:PORT` resolved at start,
//! on reload and every `--upstream-resolve`, each of its addresses a member of the set; or a
//! `unix:/path`, looked at only when connecting (the service behind it may start later).
//!
//! A name that stops resolving keeps its last addresses, with a warning: a DNS outage must not
//! take a working backend out of the set. Failing at start is an error, as before.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Result, anyhow, bail};
use arc_swap::ArcSwap;
use log::{info, warn};

use super::Addr;
use crate::config::UNIX_PREFIX;

/// One `--upstream` entry and its current addresses.
pub(super) struct Target {
    /// As given: `HOST:PORT` or `unix:/path`.
    pub(super) spec: String,
    addrs: ArcSwap<Vec<Addr>>,
    /// False for a socket path and an IP literal: nothing to resolve again.
    named: bool,
}

/// What a new lookup means for the addresses in use.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Next {
    /// The name resolves to what it did.
    Same,
    /// The name resolves to other addresses: use these.
    Changed(Vec<Addr>),
    /// The name no longer resolves: keep the last addresses; the text says why.
    Kept(String),
}

/// The keep-last rule: a lookup that fails or finds nothing keeps `old`.
pub(super) fn next(old: &[Addr], looked: Result<Vec<SocketAddr>>) -> Next {
    match looked {
        Ok(found) if !found.is_empty() => {
            let found: Vec<Addr> = found.into_iter().map(Addr::Tcp).collect();
            if found == old {
                Next::Same
            } else {
                Next::Changed(found)
            }
        }
        Ok(_) => Next::Kept("resolves to no address".into()),
        Err(e) => Next::Kept(format!("{e:#}")),
    }
}

fn lookup(spec: &str) -> Result<Vec<SocketAddr>> {
    let mut addrs: Vec<SocketAddr> = Vec::new();
    let found = spec
        .to_socket_addrs()
        .map_err(|e| anyhow!("cannot resolve upstream {spec}: {e}"))?;
    // The resolver may list one address once per socket type; each is one member.
    for addr in found {
        if !addrs.contains(&addr) {
            addrs.push(addr);
        }
    }
    Ok(addrs)
}

impl Target {
    /// Resolves `spec`; failing here is a start-up error.
    pub(super) fn resolve(spec: &str) -> Result<Target> {
        if let Some(path) = spec.strip_prefix(UNIX_PREFIX) {
            return Ok(Target {
                spec: spec.to_string(),
                addrs: ArcSwap::from_pointee(vec![Addr::Unix(PathBuf::from(path))]),
                named: false,
            });
        }
        let addrs = lookup(spec)?;
        if addrs.is_empty() {
            bail!("upstream {spec} resolves to no address");
        }
        Ok(Target {
            spec: spec.to_string(),
            addrs: ArcSwap::from_pointee(addrs.into_iter().map(Addr::Tcp).collect()),
            named: spec.parse::<SocketAddr>().is_err(),
        })
    }

    /// Whether the entry is a name, worth resolving again.
    pub(super) fn named(&self) -> bool {
        self.named
    }

    /// Resolves the name again; keeps the old addresses when it no longer resolves.
    pub(super) fn refresh(&self) {
        if !self.named {
            return;
        }
        let old = self.addrs.load_full();
        match next(&old, lookup(&self.spec)) {
            Next::Same => {}
            Next::Changed(addrs) => {
                info!(
                    "upstream {} now resolves to {}",
                    self.spec,
                    super::list(&addrs)
                );
                self.addrs.store(Arc::new(addrs));
            }
            Next::Kept(why) => warn!(
                "upstream {}: {why}; keeping {}",
                self.spec,
                super::list(&old)
            ),
        }
    }

    pub(super) fn addrs(&self) -> Arc<Vec<Addr>> {
        self.addrs.load_full()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(s: &str) -> Addr {
        Addr::Tcp(s.parse().unwrap())
    }

    #[test]
    fn a_name_that_stops_resolving_keeps_its_last_addresses() {
        let old = [tcp("10.0.0.1:80"), tcp("10.0.0.2:80")];
        assert_eq!(
            next(&old, Err(anyhow!("cannot resolve upstream db:80: timeout"))),
            Next::Kept("cannot resolve upstream db:80: timeout".into())
        );
        assert_eq!(
            next(&old, Ok(Vec::new())),
            Next::Kept("resolves to no address".into())
        );
        let same = vec![
            "10.0.0.1:80".parse().unwrap(),
            "10.0.0.2:80".parse().unwrap(),
        ];
        assert_eq!(next(&old, Ok(same)), Next::Same);
        let moved = vec!["10.0.0.3:80".parse().unwrap()];
        assert_eq!(
            next(&old, Ok(moved)),
            Next::Changed(vec![tcp("10.0.0.3:80")])
        );
    }

    #[test]
    fn a_name_contributes_every_address_and_literals_are_not_names() {
        let t = Target::resolve("localhost:80").unwrap();
        assert!(t.named());
        assert!(!t.addrs().is_empty());
        let lit = Target::resolve("127.0.0.1:80").unwrap();
        assert!(!lit.named());
        assert_eq!(*lit.addrs(), [tcp("127.0.0.1:80")]);
        let unix = Target::resolve("unix:/run/x.sock").unwrap();
        assert!(!unix.named());
        assert_eq!(unix.addrs()[0].to_string(), "unix:/run/x.sock");
    }

    #[test]
    fn unresolvable_names_fail_at_start() {
        let err = Target::resolve("no-such-host.invalid:80").err().unwrap();
        assert!(format!("{err:#}").contains("no-such-host.invalid"));
    }
}
