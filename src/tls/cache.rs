//! Contexts shared between services: a server context is built once per distinct TLS settings
//! and file contents, and every service with the same settings and files gets that one context,
//! read-only (an `SslAcceptor` is immutable once built; cloning it only bumps a reference count).
//! Certificate chains and keys are parsed once per path and contents, so services that share a
//! certificate but differ in anything else (client CA, rules, SNI, ALPN) still parse it once.
//!
//! What may be shared: contexts whose [`TlsSettings`] are equal field by field (certificate, key,
//! profile, client authentication with its CA and CRL, access rules, SNI certificates, strict SNI,
//! ALPN, ticket keys, OCSP response) and whose files hold the same bytes. Such services accept
//! exactly the same clients with exactly the same certificates, so their session ID context (the
//! digest of the client-verification settings) is the same with or without sharing, and a session
//! one of them made resuming on another grants nothing a full handshake there would not: that is
//! already so today between replicas given the same `--ticket-key-file`. Services that differ in
//! any TLS setting, access rules included, never share a context, a session cache, ticket keys or a
//! session ID context. Client mode's connector is not shared: it holds the upstream's sessions.
//!
//! A cache never trusts that a file is unchanged: every lookup reads the file again (a bounded read
//! of a few KiB, checked as start-up checks it) and reuses what was parsed or built only when the
//! bytes are the same, so a cache that outlives one pass (a service added later) never serves a
//! stale certificate. What is saved is the parsing and the building: decoding the PEM key (OpenSSL
//! 3's decoder is most of a context's cost), the chain, the key check, `SSL_CTX_new` and the
//! profile. It never touches a socket and never reads the configuration's arguments.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Result;
use openssl::pkey::{PKey, Private};
use openssl::sha::{Sha256, sha256};
use openssl::x509::X509;

use super::files::{FileKind, parse_chain, parse_key, read_bounded};
use super::{Side, Tls, client, server};
use crate::config::TlsSettings;

/// The contexts and parsed files of one process's services (or of one pass over them).
#[derive(Default)]
pub struct Cache {
    parsed: Parsed,
    /// One entry per distinct server-side settings: a changed file replaces its entry.
    built: Vec<Built>,
}

/// A server context and what it was built from.
struct Built {
    settings: TlsSettings,
    /// The digest of every file's bytes ([`files_digest`]).
    files: [u8; 32],
    tls: Tls,
}

impl Cache {
    pub fn new() -> Cache {
        Cache::default()
    }

    /// [`super::build`], sharing: a server context already built here from equal settings and
    /// the same file contents is handed out again; otherwise one is built (with the chains and
    /// keys already parsed here) and kept for the next service.
    pub fn build(&mut self, settings: &TlsSettings) -> Result<Tls> {
        if let Some(up) = &settings.upstream {
            return client::build_connector(settings, up, &mut self.parsed);
        }
        // A file that cannot be read is no match: the build below names it.
        let files = files_digest(settings).ok();
        let found = self
            .built
            .iter()
            .find(|b| Some(b.files) == files && b.settings == *settings)
            .and_then(|b| b.tls.share());
        if let Some(shared) = found {
            return Ok(shared);
        }
        let tls = server::build_acceptor(settings, &mut self.parsed)?;
        if let (Some(files), Some(kept)) = (files, tls.share()) {
            self.built.retain(|b| b.settings != *settings);
            self.built.push(Built {
                settings: settings.clone(),
                files,
                tls: kept,
            });
        }
        Ok(tls)
    }

    /// How many distinct server contexts were built (for the start-up line and the tests).
    pub fn contexts(&self) -> usize {
        self.built.len()
    }
}

impl Tls {
    /// Another handle on the same server context: every connection of every service holding it
    /// starts from the one `SSL_CTX`. `None` for client mode's connector, which is never shared.
    fn share(&self) -> Option<Tls> {
        match &self.side {
            Side::Server(acceptor) => Some(Tls {
                side: Side::Server(acceptor.clone()),
                info: self.info.clone(),
                groups: self.groups,
                ocsp: self.ocsp.clone(),
            }),
            Side::Client(_) => None,
        }
    }
}

/// A digest of the bytes of every file a server context is built from, each read as its loader
/// reads it (bounds and modes), in a fixed order with its path.
fn files_digest(settings: &TlsSettings) -> Result<[u8; 32]> {
    let mut files = vec![
        (&settings.cert, FileKind::Certificate),
        (&settings.key, FileKind::Key),
    ];
    if let Some(auth) = &settings.client_auth {
        files.push((&auth.ca, FileKind::ClientCa));
        files.extend(auth.crl.iter().map(|c| (c, FileKind::Crl)));
    }
    for sni in &settings.sni {
        files.push((&sni.cert, FileKind::Certificate));
        files.push((&sni.key, FileKind::Key));
    }
    for route in &settings.routes {
        files.push((&route.cert, FileKind::Certificate));
        files.push((&route.key, FileKind::Key));
    }
    files.extend(
        settings
            .ticket_keys
            .iter()
            .map(|t| (t, FileKind::TicketKeys)),
    );
    files.extend(settings.ocsp_response.iter().map(|o| (o, FileKind::Ocsp)));
    let mut h = Sha256::new();
    for (path, kind) in files {
        let bytes = read_bounded(path, kind)?;
        let name = path.as_os_str().as_encoded_bytes();
        h.update(&(name.len() as u64).to_be_bytes());
        h.update(name);
        h.update(&sha256(&bytes));
    }
    Ok(h.finish())
}

/// Certificate chains and keys parsed in one pass, by path, with the digest of the bytes parsed.
#[derive(Default)]
pub(super) struct Parsed {
    chains: HashMap<PathBuf, ([u8; 32], Vec<X509>)>,
    keys: HashMap<PathBuf, ([u8; 32], PKey<Private>)>,
}

impl Parsed {
    /// The chain in `path`: read, and parsed unless these bytes were parsed before.
    pub(super) fn chain(&mut self, path: &Path) -> Result<Vec<X509>> {
        let pem = read_bounded(path, FileKind::Certificate)?;
        let digest = sha256(&pem);
        if let Some((seen, chain)) = self.chains.get(path)
            && *seen == digest
        {
            return Ok(chain.clone());
        }
        let chain = parse_chain(path, &pem)?;
        self.chains
            .insert(path.to_path_buf(), (digest, chain.clone()));
        Ok(chain)
    }

    /// The key in `path`: read, and parsed unless these bytes were parsed before.
    pub(super) fn key(&mut self, path: &Path) -> Result<PKey<Private>> {
        let pem = read_bounded(path, FileKind::Key)?;
        let digest = sha256(&pem);
        if let Some((seen, key)) = self.keys.get(path)
            && *seen == digest
        {
            return Ok(key.clone());
        }
        let key = parse_key(path, &pem)?;
        self.keys.insert(path.to_path_buf(), (digest, key.clone()));
        Ok(key)
    }
}
