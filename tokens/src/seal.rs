//! Sealing secrets at rest: AES-256-GCM with a random nonce, keys from HKDF-SHA256 or a
//! key-encryption key file.

use std::path::Path;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::digest;
use aws_lc_rs::hkdf::{HKDF_SHA256, Salt};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// A 256-bit symmetric key.
#[derive(Clone)]
pub struct SealKey([u8; 32]);

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealKey(<redacted>)")
    }
}

struct Len32;

impl aws_lc_rs::hkdf::KeyType for Len32 {
    fn len(&self) -> usize {
        32
    }
}

impl SealKey {
    /// Derives a key from high-entropy input (a token) with HKDF-SHA256; `info` separates uses.
    #[must_use]
    pub fn derive(ikm: &[u8], info: &[u8]) -> Self {
        let mut out = [0u8; 32];
        let prk = Salt::new(HKDF_SHA256, b"idbridge").extract(ikm);
        // Expanding 32 bytes from SHA-256 cannot fail: the length is far below 255 * 32.
        if let Ok(okm) = prk.expand(&[info], Len32) {
            let _ = okm.fill(&mut out);
        }
        Self(out)
    }

    /// Seals `plaintext`, binding `aad`; returns nonce || ciphertext || tag.
    ///
    /// # Errors
    /// Only if the crypto library fails.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let key = self.aead()?;
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| CryptoError::Library)?;
        let mut buf = plaintext.to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut buf,
        )
        .map_err(|_| CryptoError::Library)?;
        let mut out = Vec::with_capacity(NONCE_LEN + buf.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&buf);
        Ok(out)
    }

    /// Opens what [`seal`](Self::seal) made with the same key and `aad`.
    ///
    /// # Errors
    /// `CryptoError::Open` if the key or `aad` differ or the data was altered.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if sealed.len() < NONCE_LEN {
            return Err(CryptoError::Open);
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| CryptoError::Open)?;
        let mut buf = ct.to_vec();
        let plain = self
            .aead()?
            .open_in_place(nonce, Aad::from(aad), &mut buf)
            .map_err(|_| CryptoError::Open)?;
        Ok(plain.to_vec())
    }

    fn aead(&self) -> Result<LessSafeKey, CryptoError> {
        UnboundKey::new(&AES_256_GCM, &self.0)
            .map(LessSafeKey::new)
            .map_err(|_| CryptoError::Library)
    }
}

/// Errors sealing or opening.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    /// The crypto library failed.
    #[error("the crypto library failed")]
    Library,
    /// Wrong key, wrong context, or altered data.
    #[error("cannot decrypt: wrong key or altered data")]
    Open,
    /// The key-encryption key file is unusable.
    #[error("{0}")]
    KeyFile(String),
}

/// The key-encryption key that seals signing keys at rest.
#[derive(Debug, Clone)]
pub struct Kek {
    /// A short public id (a hash of the key), stored beside what it sealed.
    pub id: String,
    /// The key.
    pub key: SealKey,
}

impl Kek {
    /// Reads a key file: 32 random bytes, base64 encoded (`openssl rand -base64 32`, or
    /// `head -c 32 /dev/urandom | base64`).
    ///
    /// # Errors
    /// When the file cannot be read or does not hold exactly 32 bytes of base64.
    pub fn from_file(path: &Path) -> Result<Self, CryptoError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| CryptoError::KeyFile(format!("cannot read {}: {e}", path.display())))?;
        Self::from_base64(text.trim()).map_err(|why| {
            CryptoError::KeyFile(format!(
                "{}: {why} (make one with `head -c 32 /dev/urandom | base64`)",
                path.display()
            ))
        })
    }

    /// Generates a new key into `path`, which must not exist yet (mode 0600, synced). When two
    /// starts race, the one that finds the file made reads it instead: a key is never replaced.
    ///
    /// # Errors
    /// When the random source fails or the file cannot be written.
    pub fn create_file(path: &Path) -> Result<Self, CryptoError> {
        use std::io::Write;
        let mut key = [0u8; 32];
        SystemRandom::new()
            .fill(&mut key)
            .map_err(|_| CryptoError::KeyFile("the random source failed".into()))?;
        let text = format!("{}\n", STANDARD.encode(key));
        let mut o = std::fs::OpenOptions::new();
        o.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
        let fail = |e: std::io::Error| {
            CryptoError::KeyFile(format!("cannot write {}: {e}", path.display()))
        };
        match o.open(path) {
            Ok(mut f) => {
                f.write_all(text.as_bytes()).map_err(fail)?;
                f.sync_all().map_err(fail)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Self::from_file(path);
            }
            Err(e) => return Err(fail(e)),
        }
        if let Some(dir) = path.parent()
            && let Ok(d) = std::fs::File::open(dir)
        {
            let _ = d.sync_all();
        }
        Self::from_base64(text.trim()).map_err(CryptoError::KeyFile)
    }

    fn from_base64(text: &str) -> Result<Self, String> {
        let bytes = STANDARD.decode(text).map_err(|_| "not base64".to_owned())?;
        let key: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| format!("holds {} bytes, need exactly 32", bytes.len()))?;
        let d = digest::digest(&digest::SHA256, &key);
        let id = d.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect();
        Ok(Self {
            id,
            key: SealKey(key),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_data_opens_only_with_the_same_key_and_context() {
        let k = SealKey::derive(b"idb_rt_secret", b"grace");
        let sealed = k.seal(b"ctx", b"hello").unwrap();
        assert_eq!(k.open(b"ctx", &sealed).unwrap(), b"hello");
        assert!(k.open(b"other", &sealed).is_err());
        assert!(
            SealKey::derive(b"idb_rt_other", b"grace")
                .open(b"ctx", &sealed)
                .is_err()
        );
        let mut bad = sealed.clone();
        bad[NONCE_LEN] ^= 1;
        assert!(k.open(b"ctx", &bad).is_err());
        assert!(k.open(b"ctx", &sealed[..3]).is_err());
        assert_ne!(k.seal(b"ctx", b"hello").unwrap(), sealed, "fresh nonce");
    }

    #[test]
    fn key_files_must_hold_32_bytes() {
        let kek = Kek::from_base64(&STANDARD.encode([1u8; 32])).unwrap();
        assert_eq!(kek.id.len(), 16);
        assert!(Kek::from_base64(&STANDARD.encode([1u8; 16])).is_err());
        assert!(Kek::from_base64("***").is_err());
    }
}
