//! The service's shared state: store, clock, randomness, key ring, policy, verifier, audit.

use std::sync::{Arc, RwLock};

use idbridge_core::{AccountUid, Clock, Random, Store};

use crate::admin::AdminOps;
use crate::audit::Audit;
use crate::error::TokenError;
use crate::keys::{KeySet, Rotate};
use crate::policy::Policy;
use crate::seal::Kek;
use crate::verify::{Authenticated, Authenticator, Refusal};

struct Inner {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    random: Arc<dyn Random>,
    keys: RwLock<Arc<KeySet>>,
    policy: RwLock<Arc<Policy>>,
    auth: Arc<Authenticator>,
    audit: Audit,
    ops: AdminOps,
    kek: RwLock<Option<Kek>>,
    // Key maintenance runs from a timer and from `keys rotate`; one at a time.
    key_lock: tokio::sync::Mutex<()>,
}

/// The token service; cheap to clone, every clone the same service.
#[derive(Clone)]
pub struct TokenService(Arc<Inner>);

impl std::fmt::Debug for TokenService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenService").finish_non_exhaustive()
    }
}

fn read<T: Clone>(l: &RwLock<T>) -> T {
    l.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
}

fn write<T>(l: &RwLock<T>, value: T) {
    *l.write().unwrap_or_else(std::sync::PoisonError::into_inner) = value;
}

impl TokenService {
    /// A service over a store, keys and policy, with the operating system's randomness.
    #[must_use]
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        keys: KeySet,
        policy: Policy,
        audit: Audit,
    ) -> Self {
        Self::with_random(
            store,
            clock,
            Arc::new(crate::secret::SystemRandom),
            keys,
            policy,
            audit,
        )
    }

    /// [`TokenService::new`] with the randomness given (tests pass a predictable one).
    #[must_use]
    pub fn with_random(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        random: Arc<dyn Random>,
        keys: KeySet,
        policy: Policy,
        audit: Audit,
    ) -> Self {
        let auth = Arc::new(Authenticator::new(&policy));
        Self(Arc::new(Inner {
            ops: AdminOps::with_random(store.clone(), clock.clone(), random.clone())
                .emptying(auth.clone()),
            auth,
            store,
            clock,
            random,
            keys: RwLock::new(Arc::new(keys)),
            policy: RwLock::new(Arc::new(policy)),
            audit,
            kek: RwLock::new(None),
            key_lock: tokio::sync::Mutex::new(()),
        }))
    }

    /// The policy in force.
    #[must_use]
    pub fn policy(&self) -> Arc<Policy> {
        read(&self.0.policy)
    }

    /// Replaces the policy (on reload); caches are emptied so new rules apply at once.
    pub fn set_policy(&self, policy: Policy) {
        let policy = Arc::new(policy);
        write(&self.0.policy, policy.clone());
        // Only after the new policy is visible: a review racing this call either sees the new
        // policy or has its result discarded by the generation bump.
        self.0.auth.resize(&policy);
        self.0.auth.invalidate();
    }

    /// Sets the key-encryption key that seals signing keys at rest.
    pub fn set_kek(&self, kek: Option<Kek>) {
        write(&self.0.kek, kek);
    }

    /// Applies the key policy (and an operator's rotation) to the stored ring, then reloads the
    /// keys in use from the store, so a change made elsewhere is picked up too.
    ///
    /// # Errors
    /// A store or key failure; the keys in use stay as they were.
    pub async fn maintain_keys(&self, rotate: Rotate) -> Result<bool, TokenError> {
        let _one = self.0.key_lock.lock().await;
        let kek = read(&self.0.kek);
        let policy = self.policy().key_policy();
        let changed = self
            .0
            .ops
            .maintain_keys(&policy, rotate, kek.as_ref())
            .await?;
        let stored = self.0.store.signing_keys().await?;
        let keys = KeySet::from_stored(&stored, kek.as_ref())?;
        let old = self.keys();
        if changed || old.jwks() != keys.jwks() || old.signing_kid() != keys.signing_kid() {
            tracing::info!(signing = %keys.signing_kid(), "signing keys updated");
            write(&self.0.keys, Arc::new(keys));
        }
        Ok(changed)
    }

    /// The keys in use.
    #[must_use]
    pub fn keys(&self) -> Arc<KeySet> {
        read(&self.0.keys)
    }

    /// The store.
    #[must_use]
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.0.store
    }

    /// The clock.
    #[must_use]
    pub fn clock(&self) -> &dyn Clock {
        &*self.0.clock
    }

    /// The randomness secrets and ids are drawn from.
    #[must_use]
    pub fn random(&self) -> &dyn Random {
        &*self.0.random
    }

    /// Administrative operations.
    #[must_use]
    pub fn ops(&self) -> &AdminOps {
        &self.0.ops
    }

    /// The audit log.
    #[must_use]
    pub fn audit(&self) -> &Audit {
        &self.0.audit
    }

    /// The verifier.
    #[must_use]
    pub fn authenticator(&self) -> &Authenticator {
        &self.0.auth
    }

    /// Empties the verification caches after a change that may revoke access.
    pub fn invalidate(&self) {
        self.0.auth.invalidate();
    }

    /// Drops what the caches hold for one account (see [`Authenticator::invalidate_account`]).
    pub fn invalidate_account(&self, uid: AccountUid) {
        self.0.auth.invalidate_account(uid);
    }

    /// Verifies a credential presented to idbridge itself (the admin API, token exchange,
    /// introspection): it must name the issuer as its audience outright.
    ///
    /// # Errors
    /// A refusal that says why.
    pub async fn authenticate_here(&self, token: &str) -> Result<Arc<Authenticated>, Refusal> {
        // The issuer's URL is idbridge's own audience (validated as one with the configuration).
        let Ok(issuer) = self.policy().issuer.parse::<idbridge_core::Audience>() else {
            return Err(crate::verify::Denial::Audience.into());
        };
        self.authenticate(token, std::slice::from_ref(&issuer))
            .await
            .and_then(|w| w.require_audience().map(|()| w))
    }

    /// Verifies a bearer credential for `audiences` (none: the policy's Kubernetes audiences).
    ///
    /// # Errors
    /// A refusal that says why.
    pub async fn authenticate(
        &self,
        token: &str,
        audiences: &[idbridge_core::Audience],
    ) -> Result<Arc<Authenticated>, Refusal> {
        let policy = self.policy();
        self.0
            .auth
            .authenticate(
                token,
                audiences,
                &policy,
                || self.keys(),
                &*self.0.store,
                &*self.0.clock,
            )
            .await
    }
}

/// A service over a fresh store in `dir`, with predictable randomness, for tests.
#[cfg(test)]
pub(crate) async fn test_service(dir: &std::path::Path) -> TokenService {
    let store = Arc::new(
        idbridge_store::SqliteStore::open(&dir.join("s.db"))
            .await
            .unwrap(),
    );
    let (kid, der) = KeySet::generate().unwrap();
    TokenService::with_random(
        store,
        Arc::new(idbridge_core::FixedClock::at(idbridge_core::UnixTime(
            1_900_000_000,
        ))),
        Arc::new(idbridge_core::InsecureCounterRandom::default()),
        KeySet::from_pkcs8(&[(kid, der)]).unwrap(),
        Policy::new("https://idbridge.test".into()),
        Audit::open(&crate::audit::AuditSink::Discard).unwrap(),
    )
}

#[cfg(test)]
mod tests {
    use idbridge_core::NewAccount;

    use super::*;

    #[tokio::test]
    async fn a_verification_future_is_small_so_a_cache_hit_moves_little() {
        // Every future is moved into the one awaiting it, up to the request handler: the large
        // work of a miss is boxed, so what a hit builds and moves stays small (it was 2.8 KB).
        let dir = tempfile::tempdir().unwrap();
        let s = test_service(dir.path()).await;
        let f = s.authenticate("x.y.z", &[]);
        let size = std::mem::size_of_val(&f);
        assert!(size <= 512, "the future of authenticate is {size} bytes");
        assert!(f.await.is_err());
    }

    #[tokio::test]
    async fn an_admin_change_takes_effect_at_the_next_verification_whoever_made_it() {
        let dir = tempfile::tempdir().unwrap();
        let s = test_service(dir.path()).await;
        let alice = "alice".parse().unwrap();
        s.ops().add_account(NewAccount::named(alice)).await.unwrap();
        let alice = "alice".parse().unwrap();
        let made = s
            .ops()
            .create_token(&alice, None, String::new())
            .await
            .unwrap();
        assert!(!s.authenticate(&made.secret, &[]).await.unwrap().cached);
        assert!(s.authenticate(&made.secret, &[]).await.unwrap().cached);
        // No call to `invalidate` here: the operation empties the cache itself.
        s.ops().set_disabled(&alice, true).await.unwrap();
        assert!(s.authenticate(&made.secret, &[]).await.is_err());
        s.ops().set_disabled(&alice, false).await.unwrap();
        assert!(s.authenticate(&made.secret, &[]).await.is_ok());
        s.ops().revoke_token(made.token.id).await.unwrap();
        assert!(s.authenticate(&made.secret, &[]).await.is_err());
    }
}
