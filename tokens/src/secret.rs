//! Token formats: opaque secrets (static, refresh and webhook tokens), their hashes, and the
//! claims of JWT access tokens.

use aws_lc_rs::digest;
use aws_lc_rs::rand::SecureRandom;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use idbridge_core::Random;
use idbridge_core::TokenHash;
use serde::{Deserialize, Serialize};

/// Every static token starts with this, so it is recognisable in a leak scan and never mistaken
/// for a JWT.
pub const STATIC_TOKEN_PREFIX: &str = "idb_st_";

/// Every webhook caller token idbridge generates starts with this.
pub const WEBHOOK_TOKEN_PREFIX: &str = "idb_wh_";

/// Every refresh token starts with this.
pub const REFRESH_TOKEN_PREFIX: &str = "idb_rt_";

/// The operating system's random generator, through aws-lc-rs.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemRandom;

impl Random for SystemRandom {
    fn fill(&self, dest: &mut [u8]) {
        #[allow(clippy::expect_used)]
        // invariant: a failing OS RNG must stop secret creation outright
        aws_lc_rs::rand::SystemRandom::new()
            .fill(dest)
            .expect("operating system random source failed");
    }
}

/// A fresh secret from `random`: `prefix` and 256 random bits, base64url.
#[must_use]
pub fn secret_from(random: &dyn Random, prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    random.fill(&mut bytes);
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// A fresh secret from the operating system's generator.
///
/// # Panics
/// If the operating system's random source fails, which leaves no safe way to continue.
#[must_use]
pub fn new_secret(prefix: &str) -> String {
    secret_from(&SystemRandom, prefix)
}

/// A fresh static token secret.
#[must_use]
pub fn new_static_secret() -> String {
    new_secret(STATIC_TOKEN_PREFIX)
}

/// SHA-256 of a token; tokens carry 256 random bits, so a fast hash is enough at rest.
#[must_use]
pub fn hash_token(token: &str) -> TokenHash {
    let d = digest::digest(&digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    TokenHash(out)
}

/// The claims of an idbridge access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    /// Issuer.
    pub iss: String,
    /// The account UID.
    pub sub: String,
    /// Audiences.
    pub aud: Vec<idbridge_core::Audience>,
    /// Expiry (seconds since the epoch).
    pub exp: i64,
    /// Issued at.
    pub iat: i64,
    /// Not before.
    pub nbf: i64,
    /// Unique token id.
    pub jti: String,
    /// The account name.
    pub name: String,
    /// Group names.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Default namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Authentication methods behind this token (`static`, `krb5`, `ldap`, `oidc`, `sa`).
    #[serde(default)]
    pub amr: Vec<idbridge_core::Amr>,
    /// Space-separated scopes.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub scope: String,
    /// The session the token belongs to; revoking the session revokes the token.
    pub sid: String,
    /// The OAuth client it was issued to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<idbridge_core::ClientId>,
    /// Who acts on the subject's behalf (RFC 8693 delegation), outermost first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Actor>,
}

/// The `act` claim of RFC 8693: the party acting for the subject, and whoever acted for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// The actor's account UID.
    pub sub: String,
    /// The actor's account name.
    pub name: String,
    /// A prior actor in the chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Box<Actor>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_secrets_are_unique_and_prefixed() {
        let a = new_static_secret();
        let b = new_static_secret();
        assert_ne!(a, b);
        assert!(a.starts_with(STATIC_TOKEN_PREFIX));
        assert_eq!(a.len(), STATIC_TOKEN_PREFIX.len() + 43);
        assert_ne!(hash_token(&a), hash_token(&b));
    }
}
