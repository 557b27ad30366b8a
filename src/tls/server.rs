//! The server's context (greet, echo, forward): the profile, the default certificate and each
//! `--sni` one, client authentication with its CA, CRL and access rules, ALPN, session tickets
//! and OCSP stapling, assembled into one validated [`SslAcceptor`].
//!
//! It builds from settings already validated by config and never touches a socket; the loaders,
//! the SNI choice and the access hooks it installs live in their own rooms beside it.

use std::sync::Arc;

use anyhow::{Context, Result, anyhow};
use openssl::ssl::{
    AlpnError, SslAcceptor, SslAcceptorBuilder, SslMethod, SslMode, SslOptions, SslVerifyMode,
    select_next_proto,
};
use openssl::x509::verify::X509VerifyFlags;

use super::access::{restrict_clients, set_rules};
use super::cache::Parsed;
use super::files::{ClientCa, Crls, load_ocsp, load_ticket_keys};
use super::identity::{Identity, describe};
use super::profile::{apply_profile, interned_wire};
use super::resume::{recheck_tickets, verification_digest};
use super::sni::{Named, Names, default_session_id_context, select_by_name, tag_route};
use super::stapling::Stapler;
use super::{Side, Tls};
use crate::config::{AccessRules, TlsSettings};
use crate::sys::{self, TicketKey};

/// Builds and validates the server's context: Mozilla profile, certificate chain, matching key,
/// and the client authentication, SNI certificates and ALPN asked for. Chains and keys come
/// through `parsed`, so a file used twice (an SNI certificate that is also the default) is
/// parsed once.
pub(super) fn build_acceptor(settings: &TlsSettings, parsed: &mut Parsed) -> Result<Tls> {
    // The client CA and CRL files are read once, for every context's trust store and for the
    // digest that binds sessions to the verification settings they were made under.
    let verify = match &settings.client_auth {
        Some(auth) => Some(Verify {
            ca: ClientCa::load(&auth.ca)?,
            crls: auth.crl.as_deref().map(Crls::load).transpose()?,
        }),
        None => None,
    };
    let digest_for = |rules: &AccessRules| {
        verification_digest(
            settings,
            rules,
            verify.as_ref().map(|v| &v.ca),
            verify.as_ref().and_then(|v| v.crls.as_ref()),
        )
    };
    let digest = digest_for(&settings.allow)?;
    let identity = Identity::load(&settings.cert, &settings.key, parsed)?;
    let ticket_keys = settings
        .ticket_keys
        .as_deref()
        .map(load_ticket_keys)
        .transpose()?
        .map(Arc::new);
    let build = Build {
        settings,
        ticket_keys: ticket_keys.as_ref(),
        verify: verify.as_ref(),
        any_rules: !settings.allow.is_empty()
            || settings
                .routes
                .iter()
                .any(|r| r.allow.as_ref().is_some_and(|a| !a.is_empty())),
    };
    let (mut b, groups) = build.profile_builder(&settings.allow, &digest)?;
    identity.install(&mut b)?;
    // Every ticket that decrypts has its certificate verified again before it resumes. OpenSSL
    // asks the context a connection started on, which is this one whatever SNI picks.
    if verify.is_some() {
        recheck_tickets(&mut b).context("installing the session ticket check")?;
    }
    let info = describe(&identity.chain)?;
    let mut ocsp = None;
    if let Some(path) = &settings.ocsp_response {
        let stapler = Arc::new(Stapler::new(load_ocsp(path, &identity.chain)?, path));
        let stapling = Arc::clone(&stapler);
        // Called only for clients that ask (status_request), and only on this, the default
        // certificate's context: an SNI certificate is not the one the response is about.
        b.set_status_callback(move |ssl| stapling.staple(ssl))
            .context("installing the OCSP response")?;
        ocsp = Some(stapler);
    }

    let mut by_name: Vec<Named> = Vec::new();
    for spec in &settings.sni {
        let identity = Identity::load(&spec.cert, &spec.key, parsed)?;
        let (mut sb, _) = build.profile_builder(&settings.allow, &digest)?;
        identity.install(&mut sb)?;
        by_name.push(Named {
            pattern: spec.name.clone(),
            context: sb.build().into_context(),
            verification: digest,
        });
    }
    // Each route: its certificate, its rules (else the service's), the digest of those in its
    // sessions' context, and its tag, by which the connection knows its route after the handshake.
    for (index, route) in settings.routes.iter().enumerate() {
        let identity = Identity::load(&route.cert, &route.key, parsed)
            .with_context(|| format!("route {}", route.name))?;
        let rules = route.allow.as_ref().unwrap_or(&settings.allow);
        let verification = digest_for(rules)?;
        let (mut sb, _) = build.profile_builder(rules, &verification)?;
        identity.install(&mut sb)?;
        tag_route(&mut sb, index, &route.name);
        by_name.push(Named {
            pattern: route.sni.clone(),
            context: sb.build().into_context(),
            verification,
        });
    }
    let names = Names {
        by_name,
        // The default certificate answers for its own DNS names too, which matters to
        // --strict-sni.
        default_names: info
            .sans
            .iter()
            .filter_map(|s| s.strip_prefix("DNS:"))
            .map(str::to_ascii_lowercase)
            .collect(),
        strict: settings.strict_sni,
        verification: digest,
    };
    select_by_name(&mut b, names);
    Ok(Tls {
        side: Side::Server(b.build()),
        info: Some(info),
        groups,
        ocsp,
    })
}

/// The client CA and CRL, read once for every context of one build.
struct Verify {
    ca: ClientCa,
    crls: Option<Crls>,
}

/// What every context of one build starts from.
struct Build<'a> {
    settings: &'a TlsSettings,
    ticket_keys: Option<&'a Arc<Vec<TicketKey>>>,
    verify: Option<&'a Verify>,
    /// Whether any context of the service (its own, a route's) has access rules: then every one
    /// gets the hooks that apply them (see `access::restrict_clients`).
    any_rules: bool,
}

impl Build<'_> {
    /// A context builder with the profile, client authentication and ALPN applied; every context
    /// (the default one and each SNI one) starts from this, since OpenSSL reads some of these
    /// settings from whichever context the connection ends up on.
    ///
    /// `rules` are the context's access rules and `digest` the digest of its client-verification
    /// settings with them: the service's, or a route's own.
    fn profile_builder(
        &self,
        rules: &AccessRules,
        digest: &[u8; 32],
    ) -> Result<(SslAcceptorBuilder, &'static str)> {
        let settings = self.settings;
        // The modern v5 builder is the cleanest base: it sets only TLS 1.3 and its suites (the
        // intermediate v5 one also loads DHE parameters that v6.0 dropped). The profile is applied on top.
        let mut b = SslAcceptor::mozilla_modern_v5(SslMethod::tls_server())?;
        let groups = apply_profile(&mut b, settings.profile)?;
        // v6.0: the client's cipher order wins (every suite offered is strong).
        b.clear_options(SslOptions::CIPHER_SERVER_PREFERENCE);
        // Sessions are only resumed in the context that made them; with client certificates OpenSSL
        // refuses resumption without one. The context is a digest of the client-verification
        // settings, so a session made under another client CA set, CRL or rules never resumes (the
        // SNI choice binds each name's sessions the same way, digest included).
        b.set_session_id_context(&default_session_id_context(digest))?;
        // One TLS 1.3 session ticket per full handshake instead of OpenSSL's two: a client resumes with
        // one, and each ticket costs an encryption, a MAC and bytes on the wire. Resumed handshakes
        // still get a fresh ticket each, so a client can keep resuming.
        b.set_num_tickets(1)?;
        if let Some(keys) = self.ticket_keys {
            sys::set_ticket_keys(&mut b, Arc::clone(keys)).context("installing the ticket keys")?;
        }
        // The chain sent is the certificate file's, as nginx does. Without this OpenSSL builds a chain
        // from the context's trust store on every handshake: an X509_verify_cert per connection.
        b.set_mode(SslMode::NO_AUTO_CHAIN);
        // An idle connection gives its record buffers (about 34 KiB with read-ahead) back to the heap
        // whenever they are empty: held, silent echo and forward connections otherwise keep them for
        // their whole life. A busy connection takes them again from the allocator's cache.
        b.set_mode(SslMode::RELEASE_BUFFERS);
        if let Some(verify) = self.verify {
            client_auth(&mut b, settings, verify, rules, self.any_rules)?;
        }
        if !settings.alpn.is_empty() {
            let server = interned_wire(&settings.alpn);
            let optional = settings.alpn_optional;
            // The server's order wins: the first of its protocols that the client offers.
            b.set_alpn_select_callback(move |_, client| match select_next_proto(server, client) {
                Some(chosen) => Ok(chosen),
                None if optional => Err(AlpnError::NOACK),
                None => Err(AlpnError::ALERT_FATAL),
            });
        }
        Ok((b, groups))
    }
}

/// Client certificates, when `--client-ca` asks for them: the CA file as trust store and as the
/// list of CAs sent to clients, required or optional, the access rules, and the CRL check.
/// `rules` are this context's; `any_rules` says whether any context of the service has some.
fn client_auth(
    b: &mut SslAcceptorBuilder,
    settings: &TlsSettings,
    verify: &Verify,
    rules: &AccessRules,
    any_rules: bool,
) -> Result<()> {
    let Some(auth) = &settings.client_auth else {
        return Ok(());
    };
    verify
        .ca
        .add_to(b.cert_store_mut())
        .map_err(|_| anyhow!("cannot load client CA {}", auth.ca.display()))?;
    b.set_client_ca_list(verify.ca.names()?);
    let mut mode = SslVerifyMode::PEER;
    // A client without a certificate matches no access rule, so rules imply requiring one.
    if auth.require || !rules.is_empty() {
        mode |= SslVerifyMode::FAIL_IF_NO_PEER_CERT;
    }
    b.set_verify(mode);
    set_rules(b, rules);
    if any_rules {
        restrict_clients(b, mode)?;
    }
    if let (Some(crls), Some(path)) = (&verify.crls, &auth.crl) {
        crls.add_to(b.cert_store_mut())
            .map_err(|_| anyhow!("cannot load CRL {}", path.display()))?;
        b.verify_param_mut().set_flags(X509VerifyFlags::CRL_CHECK)?;
        // The store's own flags too: the re-check of a resumed session verifies against the
        // store alone, without the handshake's parameters.
        b.cert_store_mut().set_flags(X509VerifyFlags::CRL_CHECK)?;
    }
    Ok(())
}
