//! Randomness, injected like the clock, so that tests can be exact.
//!
//! Secrets (refresh tokens, static tokens), token ids and session ids are drawn from a
//! [`Random`]. Production uses the operating system's generator (the token service provides
//! it); tests may use [`InsecureCounterRandom`], whose output is predictable by design.

use std::sync::atomic::{AtomicU64, Ordering};

/// A source of random bytes.
pub trait Random: Send + Sync + std::fmt::Debug {
    /// Fills `dest` with random bytes.
    ///
    /// # Panics
    /// An implementation may panic when its source fails, which leaves no safe way to go on.
    fn fill(&self, dest: &mut [u8]);

    /// A random version-4 UUID.
    fn uuid(&self) -> uuid::Uuid {
        let mut b = [0u8; 16];
        self.fill(&mut b);
        uuid::Builder::from_random_bytes(b).into_uuid()
    }
}

/// Bytes from a counter: every value differs, and every run repeats the last. For tests only:
/// nothing it makes is secret.
#[derive(Debug, Default)]
pub struct InsecureCounterRandom(AtomicU64);

impl Random for InsecureCounterRandom {
    fn fill(&self, dest: &mut [u8]) {
        for chunk in dest.chunks_mut(8) {
            let n = self.0.fetch_add(1, Ordering::Relaxed).to_le_bytes();
            chunk.copy_from_slice(&n[..chunk.len()]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_counter_repeats_across_runs_and_never_within_one() {
        let (a, b) = (
            InsecureCounterRandom::default(),
            InsecureCounterRandom::default(),
        );
        let (x, y) = (a.uuid(), a.uuid());
        assert_ne!(x, y);
        assert_eq!(b.uuid(), x);
        assert_eq!(x.get_version_num(), 4);
    }
}
