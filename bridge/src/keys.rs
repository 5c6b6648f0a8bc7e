//! Signing keys: ES256 key pairs parsed once, their JWKS, and the matching verification keys.
//!
//! Signing goes straight to aws-lc-rs with the parsed key pair: jsonwebtoken's `encode` re-parses
//! the PKCS#8 key on every call, which halves the minting rate. Verification uses jsonwebtoken
//! with the algorithm pinned to ES256 for every key, so `none` and algorithm confusion (an HS256
//! token "signed" with our public key) are refused before any signature check.

use std::collections::HashMap;

use aws_lc_rs::digest;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::DecodingKey;
use serde::Serialize;

/// Errors handling signing keys.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// A stored key could not be parsed as a P-256 PKCS#8 key.
    #[error("signing key {kid} is not a valid P-256 PKCS#8 key")]
    Parse {
        /// The key id.
        kid: String,
    },
    /// There is no key to sign with.
    #[error("no signing key is configured")]
    Empty,
    /// Key generation or signing failed in the crypto library.
    #[error("the crypto library failed to {0}")]
    Crypto(&'static str),
    /// Claims could not be serialized.
    #[error("cannot serialize claims")]
    Serialize(#[source] serde_json::Error),
}

struct SigningKey {
    pair: EcdsaKeyPair,
    header_b64: String,
}

/// The verification keys and the current signing key.
pub struct KeySet {
    signer: SigningKey,
    verifiers: HashMap<String, DecodingKey>,
    jwks: Vec<u8>,
    rng: SystemRandom,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySet")
            .field("kids", &self.verifiers.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

#[derive(Serialize)]
struct Jwk<'a> {
    kty: &'static str,
    crv: &'static str,
    x: &'a str,
    y: &'a str,
    kid: &'a str,
    #[serde(rename = "use")]
    use_: &'static str,
    alg: &'static str,
}

fn coordinates(pair: &EcdsaKeyPair) -> (String, String) {
    // An uncompressed P-256 point: 0x04 || x (32 bytes) || y (32 bytes).
    let point = pair.public_key().as_ref();
    let (x, y) = point[1..].split_at(32);
    (URL_SAFE_NO_PAD.encode(x), URL_SAFE_NO_PAD.encode(y))
}

impl KeySet {
    /// Generates a new P-256 key and returns its key id (RFC 7638 thumbprint) and PKCS#8 DER.
    ///
    /// # Errors
    /// If the crypto library fails.
    pub fn generate() -> Result<(String, Vec<u8>), KeyError> {
        let rng = SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| KeyError::Crypto("generate a key"))?;
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, doc.as_ref())
            .map_err(|_| KeyError::Crypto("parse a generated key"))?;
        Ok((thumbprint(&pair), doc.as_ref().to_vec()))
    }

    /// Builds the set from stored keys, oldest first; the newest signs, all verify.
    ///
    /// # Errors
    /// If a key does not parse, or there is none.
    pub fn from_pkcs8(keys: &[(String, Vec<u8>)]) -> Result<Self, KeyError> {
        let mut verifiers = HashMap::new();
        let mut jwks = Vec::new();
        let mut signer = None;
        for (kid, der) in keys {
            let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der)
                .map_err(|_| KeyError::Parse { kid: kid.clone() })?;
            let (x, y) = coordinates(&pair);
            let dk = DecodingKey::from_ec_components(&x, &y)
                .map_err(|_| KeyError::Parse { kid: kid.clone() })?;
            verifiers.insert(kid.clone(), dk);
            jwks.push(
                serde_json::to_value(Jwk {
                    kty: "EC",
                    crv: "P-256",
                    x: &x,
                    y: &y,
                    kid,
                    use_: "sig",
                    alg: "ES256",
                })
                .map_err(KeyError::Serialize)?,
            );
            let header = serde_json::json!({"alg": "ES256", "typ": "JWT", "kid": kid});
            signer = Some(SigningKey {
                pair,
                header_b64: URL_SAFE_NO_PAD.encode(header.to_string()),
            });
        }
        let signer = signer.ok_or(KeyError::Empty)?;
        let jwks = serde_json::to_vec(&serde_json::json!({ "keys": jwks }))
            .map_err(KeyError::Serialize)?;
        Ok(Self {
            signer,
            verifiers,
            jwks,
            rng: SystemRandom::new(),
        })
    }

    /// Signs claims as a compact ES256 JWT.
    ///
    /// # Errors
    /// If serialization or signing fails.
    pub fn sign<T: Serialize>(&self, claims: &T) -> Result<String, KeyError> {
        let payload = serde_json::to_vec(claims).map_err(KeyError::Serialize)?;
        let mut token = String::with_capacity(self.signer.header_b64.len() + payload.len() * 2);
        token.push_str(&self.signer.header_b64);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(&payload, &mut token);
        let sig = self
            .signer
            .pair
            .sign(&self.rng, token.as_bytes())
            .map_err(|_| KeyError::Crypto("sign"))?;
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(sig.as_ref(), &mut token);
        Ok(token)
    }

    /// The verification key with this id.
    #[must_use]
    pub fn verifier(&self, kid: &str) -> Option<&DecodingKey> {
        self.verifiers.get(kid)
    }

    /// The JWKS document (RFC 7517) as JSON bytes.
    #[must_use]
    pub fn jwks(&self) -> &[u8] {
        &self.jwks
    }
}

/// RFC 7638 JWK thumbprint of a P-256 public key.
fn thumbprint(pair: &EcdsaKeyPair) -> String {
    let (x, y) = coordinates(pair);
    // Members in lexicographic order, no white space, as RFC 7638 requires.
    let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
    URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, canonical.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{Algorithm, Validation};

    #[test]
    fn signed_tokens_verify_with_jsonwebtoken_and_the_jwks() {
        let (kid, der) = KeySet::generate().unwrap();
        let keys = KeySet::from_pkcs8(&[(kid.clone(), der)]).unwrap();
        let claims = serde_json::json!({"sub": "x", "exp": 4_000_000_000_i64, "aud": "k"});
        let jwt = keys.sign(&claims).unwrap();
        let header = jsonwebtoken::decode_header(&jwt).unwrap();
        assert_eq!(header.kid.as_deref(), Some(kid.as_str()));
        let mut v = Validation::new(Algorithm::ES256);
        v.set_audience(&["k"]);
        let got = jsonwebtoken::decode::<serde_json::Value>(&jwt, keys.verifier(&kid).unwrap(), &v)
            .unwrap();
        assert_eq!(got.claims, claims);
        let jwks: serde_json::Value = serde_json::from_slice(keys.jwks()).unwrap();
        assert_eq!(jwks["keys"][0]["kid"], kid.as_str());
        assert_eq!(jwks["keys"][0]["alg"], "ES256");
    }

    #[test]
    fn a_bad_stored_key_names_its_kid() {
        let err = KeySet::from_pkcs8(&[("k9".into(), b"junk".to_vec())]).unwrap_err();
        assert!(err.to_string().contains("k9"));
        assert!(matches!(KeySet::from_pkcs8(&[]), Err(KeyError::Empty)));
    }
}
