//! Partner credentials: bearer tokens, each mapped to exactly one tenant.
//!
//! Tokens are configured and held only as SHA-256 hashes; the plain token
//! exists in the partner's hands and in the request. A token is 256 random
//! bits, so a fast hash is enough: there is nothing to brute-force.
//!
//! This crate authenticates; it does not authorise beyond the tenant. The
//! tenant of a call comes from its token, never from the request body.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tend_event_store::TenantId;
use tonic::{Request, Status};

/// The prefix of every token Tend issues, so a leaked one is recognisable.
pub const TOKEN_PREFIX: &str = "tend_";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "token entry {0:?} is not `<tenant>=sha256:<64 hex digits>` (generate one with `tend token new --tenant <tenant>`)"
    )]
    BadEntry(String),
    #[error("tenant in token entry {entry:?}: {reason}")]
    BadTenant { entry: String, reason: String },
    #[error("certificate binding {0:?} is not `<tenant>=<dns name>[|<dns name>...]`")]
    BadBinding(String),
    #[error("the same token hash is configured twice")]
    DuplicateHash,
    #[error("the system's random number generator failed: {0}")]
    Random(String),
}

/// A SHA-256 hash of a token.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    pub fn of(token: &str) -> Self {
        Self(Sha256::digest(token.as_bytes()).into())
    }
}

impl fmt::Display for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenHash(..)")
    }
}

/// Issues a new random token.
pub fn generate_token() -> Result<String, Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| Error::Random(e.to_string()))?;
    Ok(format!("{TOKEN_PREFIX}{}", hex::encode(bytes)))
}

/// The configured tokens: hash to tenant.
#[derive(Clone, Default)]
pub struct Tokens {
    by_hash: HashMap<TokenHash, TenantId>,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokens")
            .field("count", &self.by_hash.len())
            .finish()
    }
}

impl Tokens {
    /// Parses `<tenant>=sha256:<hex>` entries separated by commas,
    /// whitespace or newlines. A tenant may have several tokens (rotation).
    pub fn parse(spec: &str) -> Result<Self, Error> {
        let mut tokens = Self::default();
        for entry in spec
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|e| !e.is_empty())
        {
            let bad = || Error::BadEntry(redact(entry));
            let (tenant, hash) = entry.split_once('=').ok_or_else(bad)?;
            let hex_digits = hash.strip_prefix("sha256:").ok_or_else(bad)?;
            let mut bytes = [0u8; 32];
            hex::decode_to_slice(hex_digits, &mut bytes).map_err(|_| bad())?;
            let tenant = TenantId::new(tenant).map_err(|e| Error::BadTenant {
                entry: redact(entry),
                reason: e.to_string(),
            })?;
            tokens.insert(TokenHash(bytes), tenant)?;
        }
        Ok(tokens)
    }

    pub fn insert(&mut self, hash: TokenHash, tenant: TenantId) -> Result<(), Error> {
        if self.by_hash.insert(hash, tenant).is_some() {
            return Err(Error::DuplicateHash);
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    /// The tenant a presented token belongs to.
    pub fn tenant_of(&self, token: &str) -> Option<&TenantId> {
        self.by_hash.get(&TokenHash::of(token))
    }
}

/// Keeps a mistyped secret out of error messages: only the tenant part.
fn redact(entry: &str) -> String {
    match entry.split_once('=') {
        Some((tenant, _)) => format!("{tenant}=…"),
        None => "…".to_string(),
    }
}

/// Who is calling: attached to every authenticated request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub tenant: TenantId,
}

/// The gRPC interceptor: checks the bearer token and attaches the
/// [`Caller`]. Install it on every Tend service, and on nothing that must
/// answer without a token (health, reflection).
/// Tenants bound to client certificates (mutual TLS): a bound tenant's
/// tokens are accepted only on a connection whose client certificate is
/// valid for one of its DNS names, so that a leaked token alone does not
/// open its data.
#[derive(Debug, Clone, Default)]
pub struct CertificateBindings {
    names: HashMap<TenantId, Vec<String>>,
}

impl CertificateBindings {
    /// `<tenant>=<dns name>[|<dns name>...]`, comma separated.
    pub fn parse(spec: &str) -> Result<Self, Error> {
        let mut bindings = Self::default();
        for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let bad = || Error::BadBinding(entry.to_owned());
            let (tenant, names) = entry.split_once('=').ok_or_else(bad)?;
            let tenant = TenantId::new(tenant.trim()).map_err(|e| Error::BadTenant {
                entry: entry.to_owned(),
                reason: e.to_string(),
            })?;
            let names: Vec<String> = names.split('|').map(|n| n.trim().to_owned()).collect();
            for name in &names {
                if rustls::pki_types::DnsName::try_from(name.as_str()).is_err() {
                    return Err(bad());
                }
            }
            bindings.names.entry(tenant).or_default().extend(names);
        }
        Ok(bindings)
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Whether `tenant` may call with this connection's client certificate.
    fn allows(&self, tenant: &TenantId, certificate: Option<&[u8]>) -> bool {
        let Some(names) = self.names.get(tenant) else {
            return true;
        };
        let Some(der) = certificate else {
            return false;
        };
        let der = rustls::pki_types::CertificateDer::from(der);
        let Ok(cert) = webpki::EndEntityCert::try_from(&der) else {
            return false;
        };
        names.iter().any(|name| {
            rustls::pki_types::ServerName::try_from(name.as_str())
                .is_ok_and(|n| cert.verify_is_valid_for_subject_name(&n).is_ok())
        })
    }
}

#[derive(Debug, Clone)]
pub struct Authenticator {
    tokens: Arc<Tokens>,
    bindings: Arc<CertificateBindings>,
}

impl Authenticator {
    pub fn new(tokens: Tokens) -> Self {
        Self::with_bindings(tokens, CertificateBindings::default())
    }

    pub fn with_bindings(tokens: Tokens, bindings: CertificateBindings) -> Self {
        Self {
            tokens: Arc::new(tokens),
            bindings: Arc::new(bindings),
        }
    }
}

impl Authenticator {
    /// The tenant of a bearer token presented on a connection with this
    /// verified client certificate (if any): what every port checks, gRPC
    /// and HTTP alike. The error is the reason, for the caller.
    pub fn tenant(
        &self,
        token: &str,
        certificate: Option<&[u8]>,
    ) -> Result<TenantId, &'static str> {
        let tenant = self
            .tokens
            .tenant_of(token)
            .ok_or("the bearer token is not valid")?
            .clone();
        if !self.bindings.is_empty() && !self.bindings.allows(&tenant, certificate) {
            return Err(
                "this tenant's tokens are bound to its client certificates: call with one of them",
            );
        }
        Ok(tenant)
    }
}

/// The token of an `authorization: Bearer <token>` value.
pub fn bearer(value: &str) -> Option<&str> {
    value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
}

impl tonic::service::Interceptor for Authenticator {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let token = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(bearer)
            .ok_or_else(|| {
                Status::unauthenticated(
                    "missing credentials: send `authorization: Bearer <token>` metadata",
                )
            })?;
        // The client certificate the TLS handshake verified, if any.
        let certificates = request.peer_certs();
        let leaf = certificates.as_ref().and_then(|c| c.first());
        let tenant = self
            .tenant(token, leaf.map(|c| c.as_ref()))
            .map_err(Status::unauthenticated)?;
        request.extensions_mut().insert(Caller { tenant });
        Ok(request)
    }
}

/// The tenant of an authenticated call. A request that did not pass the
/// [`Authenticator`] is refused, so a wiring mistake fails closed.
pub fn tenant_of<T>(request: &Request<T>) -> Result<TenantId, Status> {
    request
        .extensions()
        .get::<Caller>()
        .map(|c| c.tenant.clone())
        .ok_or_else(|| Status::unauthenticated("the call is not authenticated"))
}

#[cfg(test)]
mod tests {
    use tonic::service::Interceptor;

    use super::*;

    fn request(authorization: Option<&str>) -> Request<()> {
        let mut request = Request::new(());
        if let Some(value) = authorization {
            request
                .metadata_mut()
                .insert("authorization", value.parse().expect("ascii"));
        }
        request
    }

    #[test]
    fn a_configured_token_authenticates_as_its_tenant() {
        let token = generate_token().expect("token");
        let spec = format!("clinic-a={}", TokenHash::of(&token));
        let mut auth = Authenticator::new(Tokens::parse(&spec).expect("parse"));
        let request = auth
            .call(request(Some(&format!("Bearer {token}"))))
            .expect("authenticated");
        assert_eq!(
            tenant_of(&request).expect("caller"),
            TenantId::new("clinic-a").expect("tenant")
        );
    }

    #[test]
    fn refuses_missing_wrong_and_malformed_credentials() {
        let token = generate_token().expect("token");
        let tokens = Tokens::parse(&format!("clinic-a={}", TokenHash::of(&token))).expect("parse");
        let mut auth = Authenticator::new(tokens);
        for header in [
            None,
            Some("Bearer tend_0000".to_string()),
            Some(token.clone()),
            Some(format!("Basic {token}")),
        ] {
            let status = auth.call(request(header.as_deref())).expect_err("refused");
            assert_eq!(status.code(), tonic::Code::Unauthenticated, "{header:?}");
        }
        assert!(tenant_of(&request(None)).is_err());
    }

    #[test]
    fn parses_several_entries_and_rejects_bad_ones_without_echoing_secrets() {
        let (a, b) = (TokenHash::of("one"), TokenHash::of("two"));
        let tokens = Tokens::parse(&format!("clinic-a={a},\nclinic-b={b}")).expect("parse");
        assert_eq!(
            tokens.tenant_of("two").map(TenantId::as_str),
            Some("clinic-b")
        );
        assert!(tokens.tenant_of("three").is_none());

        let err = Tokens::parse("clinic-a=tend_plaintextsecret").expect_err("not a hash");
        assert!(!err.to_string().contains("plaintextsecret"), "{err}");
        assert!(Tokens::parse(&format!("Bad Tenant={a}")).is_err());
        assert!(Tokens::parse(&format!("x={a},y={a}")).is_err());
    }

    #[test]
    fn generated_tokens_are_distinct_and_prefixed() {
        let (a, b) = (generate_token().expect("a"), generate_token().expect("b"));
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX));
        assert_eq!(a.len(), TOKEN_PREFIX.len() + 64);
    }
}
