//! The state every handler shares: the token service, the settings in force, metrics,
//! readiness and the login throttle. State only: the operations live in the token service and
//! in the areas.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use idbridge_core::{Clock, Store};
use idbridge_tokens::{
    AdminOps, Audit, Authenticated, Authenticator, Kek, KeySet, Refusal, Rotate, TokenError,
    TokenService,
};

use crate::observe::metrics::Metrics;
use crate::settings::Settings;

struct Inner {
    service: TokenService,
    settings: RwLock<Arc<Settings>>,
    metrics: Metrics,
    ready: AtomicBool,
    // Failed password logins; kept across reloads.
    throttle: crate::login::throttle::Throttle,
}

/// The service's shared state; cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").finish_non_exhaustive()
    }
}

fn read<T: Clone>(l: &RwLock<T>) -> T {
    l.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
}

impl AppState {
    /// Whether the service takes requests (not shutting down).
    #[must_use]
    pub fn is_ready(&self) -> bool {
        self.0.ready.load(Ordering::SeqCst)
    }

    /// State over a store, keys and settings.
    #[must_use]
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        keys: KeySet,
        settings: Settings,
        audit: Audit,
    ) -> Self {
        Self::over(
            TokenService::new(store, clock, keys, settings.tokens.clone(), audit),
            settings,
        )
    }

    /// State over a token service (whose policy `settings.tokens` replaces).
    #[must_use]
    pub fn over(service: TokenService, settings: Settings) -> Self {
        service.set_policy(settings.tokens.clone());
        Self(Arc::new(Inner {
            service,
            settings: RwLock::new(Arc::new(settings)),
            // Routes are registered when the router is built (`app`).
            metrics: Metrics::new(&[]),
            ready: AtomicBool::new(true),
            throttle: crate::login::throttle::Throttle::default(),
        }))
    }

    pub(crate) fn throttle(&self) -> &crate::login::throttle::Throttle {
        &self.0.throttle
    }

    /// The token service.
    #[must_use]
    pub fn service(&self) -> &TokenService {
        &self.0.service
    }

    /// Current settings.
    #[must_use]
    pub fn settings(&self) -> Arc<Settings> {
        read(&self.0.settings)
    }

    /// Replaces the settings (on reload); caches are emptied so new mappings apply at once.
    pub fn set_settings(&self, settings: Settings) {
        let policy = settings.tokens.clone();
        *self
            .0
            .settings
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(settings);
        self.0.service.set_policy(policy);
    }

    /// Sets the key-encryption key that seals signing keys at rest.
    pub fn set_kek(&self, kek: Option<Kek>) {
        self.0.service.set_kek(kek);
    }

    /// See [`TokenService::maintain_keys`].
    ///
    /// # Errors
    /// A store or key failure; the keys in use stay as they were.
    pub async fn maintain_keys(&self, rotate: Rotate) -> Result<bool, TokenError> {
        self.0.service.maintain_keys(rotate).await
    }

    /// Current keys.
    #[must_use]
    pub fn keys(&self) -> Arc<KeySet> {
        self.0.service.keys()
    }

    /// The store.
    #[must_use]
    pub fn store(&self) -> &Arc<dyn Store> {
        self.0.service.store()
    }

    /// The clock.
    #[must_use]
    pub fn clock(&self) -> &dyn Clock {
        self.0.service.clock()
    }

    /// Administrative operations.
    #[must_use]
    pub fn ops(&self) -> &AdminOps {
        self.0.service.ops()
    }

    /// The audit log.
    #[must_use]
    pub fn audit(&self) -> &Audit {
        self.0.service.audit()
    }

    /// Metrics.
    #[must_use]
    pub fn metrics(&self) -> &Metrics {
        &self.0.metrics
    }

    /// The authenticator.
    #[must_use]
    pub fn authenticator(&self) -> &Authenticator {
        self.0.service.authenticator()
    }

    /// Empties authentication caches after a change that may revoke access.
    pub fn invalidate(&self) {
        self.0.service.invalidate();
    }

    /// Drops what the caches hold for one account (see [`Authenticator::invalidate_account`]).
    pub fn invalidate_account(&self, uid: idbridge_core::AccountUid) {
        self.0.service.invalidate_account(uid);
    }

    /// Marks the service as not ready (shutting down).
    pub fn set_not_ready(&self) {
        self.0.ready.store(false, Ordering::SeqCst);
    }

    /// See [`TokenService::authenticate_here`].
    ///
    /// # Errors
    /// A refusal that says why.
    pub async fn authenticate_here(&self, token: &str) -> Result<Arc<Authenticated>, Refusal> {
        self.0.service.authenticate_here(token).await
    }

    /// See [`TokenService::authenticate`].
    ///
    /// # Errors
    /// A refusal that says why.
    pub async fn authenticate(
        &self,
        token: &str,
        audiences: &[idbridge_core::Audience],
    ) -> Result<Arc<Authenticated>, Refusal> {
        self.0.service.authenticate(token, audiences).await
    }
}

/// A state over a fresh store in `dir`, for tests.
#[cfg(test)]
pub(crate) async fn test_state(dir: &std::path::Path) -> AppState {
    let store = Arc::new(
        idbridge_store::SqliteStore::open(&dir.join("s.db"))
            .await
            .unwrap(),
    );
    let (kid, der) = KeySet::generate().unwrap();
    AppState::new(
        store,
        Arc::new(idbridge_core::FixedClock::at(idbridge_core::UnixTime(
            1_900_000_000,
        ))),
        KeySet::from_pkcs8(&[(kid, der)]).unwrap(),
        Settings::new("https://idbridge.test".into()),
        Audit::open(&idbridge_tokens::AuditSink::Discard).unwrap(),
    )
}
