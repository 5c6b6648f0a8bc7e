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
use idbridge_core::{KeyState, StoredKey, UnixTime};
use jsonwebtoken::DecodingKey;
use serde::Serialize;

use crate::seal::Kek;

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
    /// A stored key is sealed and cannot be opened with the configured key-encryption key.
    #[error(
        "signing key {kid} is encrypted with key-encryption key {sealed_by}; {have} (field `keys.encryption_key_file`)"
    )]
    Sealed {
        /// The key id.
        kid: String,
        /// Id of the key-encryption key that sealed it.
        sealed_by: String,
        /// What is configured instead.
        have: String,
    },
}

struct SigningKey {
    kid: String,
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
                kid: kid.clone(),
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

    /// Builds the set from the stored ring: the `current` key signs; every stored key verifies
    /// and is published.
    ///
    /// # Errors
    /// If a key cannot be opened or parsed, or none is current.
    pub fn from_stored(keys: &[StoredKey], kek: Option<&Kek>) -> Result<Self, KeyError> {
        let mut ordered: Vec<(String, Vec<u8>)> = Vec::with_capacity(keys.len());
        for k in keys.iter().filter(|k| k.state != KeyState::Current) {
            ordered.push((k.kid.clone(), open_key(k, kek)?));
        }
        // `from_pkcs8` signs with the last key it is given.
        let current = keys
            .iter()
            .rev()
            .find(|k| k.state == KeyState::Current)
            .ok_or(KeyError::Empty)?;
        ordered.push((current.kid.clone(), open_key(current, kek)?));
        Self::from_pkcs8(&ordered)
    }

    /// The key id that signs.
    #[must_use]
    pub fn signing_kid(&self) -> &str {
        &self.signer.kid
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

fn open_key(k: &StoredKey, kek: Option<&Kek>) -> Result<Vec<u8>, KeyError> {
    match (&k.sealed_by, kek) {
        (None, _) => Ok(k.private.clone()),
        (Some(id), Some(kek)) if *id == kek.id => kek
            .key
            .open(k.kid.as_bytes(), &k.private)
            .map_err(|_| KeyError::Sealed {
                kid: k.kid.clone(),
                sealed_by: id.clone(),
                have: "it does not open with the configured key".to_owned(),
            }),
        (Some(id), other) => Err(KeyError::Sealed {
            kid: k.kid.clone(),
            sealed_by: id.clone(),
            have: other.map_or_else(
                || "no key-encryption key is configured".to_owned(),
                |o| format!("the configured one is {}", o.id),
            ),
        }),
    }
}

/// How the key ring rotates.
#[derive(Debug, Clone, Copy)]
pub struct KeyPolicy {
    /// A current key signs this long before the next one takes over.
    pub rotate_every: u64,
    /// A new key is published this long before it may sign.
    pub publish_lead: u64,
    /// A retired key stays published this long (the longest access-token lifetime plus skew).
    pub retain: u64,
}

/// What the operator asked of the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rotate {
    /// Nothing: rotate when the policy says so.
    Policy,
    /// Rotate as soon as the next key has been published for `publish_lead`.
    Soon,
    /// Rotate now, even if the next key was published only just now (a compromised key).
    Now,
}

/// Brings a ring into shape at `now`: exactly one current and one next key, retired keys kept
/// until their last token has expired, and the current key replaced when rotation is due and
/// the next key has been published for `publish_lead`. New keys are sealed with `kek` when one
/// is configured, and so are stored keys that are not yet. Returns the new ring when anything
/// changed.
///
/// # Errors
/// If a key cannot be generated or sealed.
pub fn maintain(
    stored: &[StoredKey],
    now: UnixTime,
    policy: &KeyPolicy,
    rotate: Rotate,
    kek: Option<&Kek>,
) -> Result<Option<Vec<StoredKey>>, KeyError> {
    let mut ring: Vec<StoredKey> = stored.to_vec();
    let before = ring.clone();
    ring.retain(|k| !(k.state == KeyState::Retired && k.retire_after.is_some_and(|t| t <= now)));
    let retire = |k: &mut StoredKey| {
        k.state = KeyState::Retired;
        k.retire_after = Some(now.plus_secs(policy.retain));
    };
    // One current key: the most recently activated; any other is retired.
    let mut currents: Vec<usize> = (0..ring.len())
        .filter(|&i| ring[i].state == KeyState::Current)
        .collect();
    currents.sort_by_key(|&i| (ring[i].activated_at.unwrap_or(ring[i].created_at), i));
    if let Some((_, older)) = currents.split_last() {
        for &i in older {
            retire(&mut ring[i]);
        }
    }
    // One next key: the newest; any other is dropped (it never signed).
    let nexts: Vec<usize> = (0..ring.len())
        .filter(|&i| ring[i].state == KeyState::Next)
        .collect();
    if let Some((_, older)) = nexts.split_last() {
        let drop: Vec<String> = older.iter().map(|&i| ring[i].kid.clone()).collect();
        ring.retain(|k| !drop.contains(&k.kid));
    }
    let has = |ring: &[StoredKey], s| ring.iter().any(|k| k.state == s);
    if !has(&ring, KeyState::Current) {
        // A first start (or a ring that lost its signer): sign at once with a published next
        // key if there is one, else with a new key.
        if let Some(next) = ring.iter_mut().find(|k| k.state == KeyState::Next) {
            next.state = KeyState::Current;
            next.activated_at = Some(now);
        } else {
            ring.push(new_key(KeyState::Current, now, kek)?);
        }
    }
    if !has(&ring, KeyState::Next) {
        ring.push(new_key(KeyState::Next, now, kek)?);
    }
    if let (Some(ci), Some(ni)) = (
        ring.iter().position(|k| k.state == KeyState::Current),
        ring.iter().position(|k| k.state == KeyState::Next),
    ) {
        let (cur, next) = (&ring[ci], &ring[ni]);
        // Asked to rotate, the ring rotates now when the next key has been published long
        // enough, rather than at the next background pass.
        let due = rotate != Rotate::Policy
            || next.activated_at.is_some_and(|t| t <= now)
            || cur
                .activated_at
                .unwrap_or(cur.created_at)
                .plus_secs(policy.rotate_every)
                <= now;
        let published =
            rotate == Rotate::Now || next.created_at.plus_secs(policy.publish_lead) <= now;
        if due && published {
            retire(&mut ring[ci]);
            ring[ni].state = KeyState::Current;
            ring[ni].activated_at = Some(now);
            ring.push(new_key(KeyState::Next, now, kek)?);
        } else if rotate == Rotate::Soon {
            let at = next.created_at.plus_secs(policy.publish_lead).max(now);
            ring[ni].activated_at = Some(at);
        }
    }
    if let Some(kek) = kek {
        for k in ring.iter_mut().filter(|k| k.sealed_by.is_none()) {
            k.private = kek
                .key
                .seal(k.kid.as_bytes(), &k.private)
                .map_err(|_| KeyError::Crypto("seal a key"))?;
            k.sealed_by = Some(kek.id.clone());
        }
    }
    Ok((ring != before).then_some(ring))
}

fn new_key(state: KeyState, now: UnixTime, kek: Option<&Kek>) -> Result<StoredKey, KeyError> {
    let (kid, der) = KeySet::generate()?;
    let (private, sealed_by) = match kek {
        Some(kek) => (
            kek.key
                .seal(kid.as_bytes(), &der)
                .map_err(|_| KeyError::Crypto("seal a key"))?,
            Some(kek.id.clone()),
        ),
        None => (der, None),
    };
    Ok(StoredKey {
        kid,
        private,
        sealed_by,
        state,
        created_at: now,
        activated_at: (state == KeyState::Current).then_some(now),
        retire_after: None,
    })
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

    const LEAD: u64 = 3600;
    const POLICY: KeyPolicy = KeyPolicy {
        rotate_every: 86_400,
        publish_lead: LEAD,
        retain: 960,
    };

    fn kid_in(ring: &[StoredKey], s: KeyState) -> String {
        ring.iter().find(|k| k.state == s).unwrap().kid.clone()
    }

    #[test]
    fn the_next_key_is_published_before_it_signs_and_the_old_one_stays_until_its_tokens_expire() {
        let t0 = UnixTime(1_000_000);
        let ring = maintain(&[], t0, &POLICY, Rotate::Policy, None)
            .unwrap()
            .unwrap();
        assert_eq!(ring.len(), 2);
        let first = kid_in(&ring, KeyState::Current);
        let next = kid_in(&ring, KeyState::Next);
        // Both are published from the start; only the current one signs.
        let set = KeySet::from_stored(&ring, None).unwrap();
        assert_eq!(set.signing_kid(), first);
        assert!(set.verifier(&next).is_some());
        assert_eq!(
            maintain(&ring, t0, &POLICY, Rotate::Policy, None).unwrap(),
            None
        );

        // An operator's rotation waits until the next key has been published for the lead.
        let soon = maintain(&ring, t0.plus_secs(10), &POLICY, Rotate::Soon, None)
            .unwrap()
            .unwrap();
        assert_eq!(kid_in(&soon, KeyState::Current), first);
        let due = soon.iter().find(|k| k.kid == next).unwrap().activated_at;
        assert_eq!(due, Some(t0.plus_secs(LEAD)));
        let rotated = maintain(&soon, t0.plus_secs(LEAD), &POLICY, Rotate::Policy, None)
            .unwrap()
            .unwrap();
        assert_eq!(kid_in(&rotated, KeyState::Current), next);
        assert_eq!(kid_in(&rotated, KeyState::Retired), first);
        let newer = kid_in(&rotated, KeyState::Next);
        let set = KeySet::from_stored(&rotated, None).unwrap();
        assert_eq!(set.signing_kid(), next);
        assert!(set.verifier(&first).is_some(), "old tokens still verify");
        assert!(
            set.verifier(&newer).is_some(),
            "the next key is already published"
        );
        // Asked once the next key has been published long enough, the ring switches at once,
        // not at the next background pass.
        let asked = maintain(
            &rotated,
            t0.plus_secs(2 * LEAD),
            &POLICY,
            Rotate::Soon,
            None,
        )
        .unwrap()
        .unwrap();
        assert_eq!(kid_in(&asked, KeyState::Current), newer);

        // The retired key goes once its last token has expired.
        let kept = maintain(
            &rotated,
            t0.plus_secs(LEAD + 959),
            &POLICY,
            Rotate::Policy,
            None,
        )
        .unwrap();
        assert_eq!(kept, None);
        let gone = maintain(
            &rotated,
            t0.plus_secs(LEAD + 960),
            &POLICY,
            Rotate::Policy,
            None,
        )
        .unwrap()
        .unwrap();
        assert!(gone.iter().all(|k| k.kid != first));

        // The policy rotates by itself; `Now` does not wait for the lead.
        let later = t0.plus_secs(LEAD + 86_400);
        let auto = maintain(&gone, later, &POLICY, Rotate::Policy, None)
            .unwrap()
            .unwrap();
        assert_eq!(kid_in(&auto, KeyState::Current), newer);
        let now = maintain(&auto, later.plus_secs(1), &POLICY, Rotate::Now, None)
            .unwrap()
            .unwrap();
        assert_ne!(kid_in(&now, KeyState::Current), newer);
    }

    #[test]
    fn keys_are_sealed_with_the_kek_and_refuse_to_open_without_it() {
        use base64::engine::general_purpose::STANDARD;
        let dir = tempfile::tempdir().unwrap();
        let kek_file = dir.path().join("kek");
        std::fs::write(&kek_file, STANDARD.encode([7u8; 32])).unwrap();
        let kek = Kek::from_file(&kek_file).unwrap();
        let t0 = UnixTime(5);
        let plain = maintain(&[], t0, &POLICY, Rotate::Policy, None)
            .unwrap()
            .unwrap();
        // Configuring a KEK seals what was stored in the clear.
        let sealed = maintain(&plain, t0, &POLICY, Rotate::Policy, Some(&kek))
            .unwrap()
            .unwrap();
        for (p, s) in plain.iter().zip(&sealed) {
            assert_eq!(s.sealed_by.as_deref(), Some(kek.id.as_str()));
            assert_ne!(p.private, s.private);
        }
        let a = KeySet::from_stored(&sealed, Some(&kek)).unwrap();
        assert_eq!(a.signing_kid(), plain[0].kid);
        let err = KeySet::from_stored(&sealed, None).unwrap_err().to_string();
        assert!(err.contains("keys.encryption_key_file"), "{err}");
        std::fs::write(&kek_file, STANDARD.encode([8u8; 32])).unwrap();
        let other = Kek::from_file(&kek_file).unwrap();
        assert!(KeySet::from_stored(&sealed, Some(&other)).is_err());
    }

    #[test]
    fn a_bad_stored_key_names_its_kid() {
        let err = KeySet::from_pkcs8(&[("k9".into(), b"junk".to_vec())]).unwrap_err();
        assert!(err.to_string().contains("k9"));
        assert!(matches!(KeySet::from_pkcs8(&[]), Err(KeyError::Empty)));
    }
}
