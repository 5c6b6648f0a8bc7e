//! One authenticator for every bearer credential: static tokens and idbridge access tokens.
//!
//! A review result is cached under SHA-256 of the token and the audiences asked for. Any change
//! that can revoke access bumps a generation counter and empties the caches; a result computed
//! while such a change was in flight carries the old generation and is not cached, so a revoked
//! token can never be re-cached by a review that raced its revocation.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use aws_lc_rs::digest;
use cached::stores::LruTtlCache;
use cached::{Cached, CachedPeek};
use idbridge_core::{AccountUid, Audience, Clock, Store, UnixTime, UserAccount};
use jsonwebtoken::{Algorithm, Validation};

use crate::audit::{Audit, Origin};
use crate::keys::KeySet;
use crate::policy::Policy;
use crate::secret::{AccessClaims, STATIC_TOKEN_PREFIX, hash_token};

/// Who a credential names, shaped for Kubernetes.
#[derive(Debug, Clone)]
pub struct Authenticated {
    /// Account name, without the Kubernetes prefix.
    pub name: String,
    /// Account UID.
    pub uid: AccountUid,
    /// Group names, without the Kubernetes prefix.
    pub groups: Vec<String>,
    /// Default namespace.
    pub namespace: Option<String>,
    /// Authentication methods.
    pub amr: Vec<idbridge_core::Amr>,
    /// The account acting for the subject (delegation, the outermost `act`), if any.
    pub actor: Option<String>,
    /// The requested audiences this credential is valid for (empty: none of them).
    pub audiences: Vec<Audience>,
    /// Whether the credential is for this cluster's Kubernetes API server (one of the configured
    /// Kubernetes audiences). A TokenReview answer with no audiences means exactly that, which is
    /// how kube-apiserver, asking with its own API audiences, accepts our tokens.
    pub for_api_server: bool,
    /// When the credential expires, if it does.
    pub expires_at: Option<i64>,
    /// Whether the result came from the cache.
    pub cached: bool,
    /// The TokenReview `status` for this result, serialized once and reused while cached. Settings
    /// that shape it (prefixes) empty the cache when they change.
    pub review_status: std::sync::OnceLock<Box<serde_json::value::RawValue>>,
}

/// Why a credential was refused. The message is safe to return to the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Denial {
    /// Not a token idbridge issued, or malformed.
    #[error("token is malformed or not issued by idbridge")]
    Malformed,
    /// The token is unknown, revoked, or its signature does not verify.
    #[error("token is invalid or revoked")]
    Invalid,
    /// The token has expired or is not yet valid.
    #[error("token is expired or not yet valid")]
    Expired,
    /// The token was issued for other audiences.
    #[error("token is not valid for the requested audiences")]
    Audience,
    /// The account is disabled or gone.
    #[error("account is disabled")]
    Disabled,
    /// The store failed; the caller should retry.
    #[error("authentication is temporarily unavailable")]
    Unavailable,
}

/// A denial together with what the audit log should record about the account, if known.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// Why.
    pub denial: Denial,
    /// The account the token named, if it got that far.
    pub account: Option<(String, AccountUid)>,
}

impl Authenticated {
    /// Refuses the credential unless it names one of the requested audiences outright: the rule
    /// for idbridge's own endpoints, which have no "API server audience" to fall back on.
    ///
    /// # Errors
    /// `Denial::Audience`, with the account named.
    pub fn require_audience(&self) -> Result<(), Refusal> {
        if self.audiences.is_empty() {
            Err(Refusal {
                denial: Denial::Audience,
                account: Some((self.name.clone(), self.uid)),
            })
        } else {
            Ok(())
        }
    }
}

impl Refusal {
    /// Records the refusal in the audit log as `event`/`denied`; returns the reason for the caller.
    pub fn audit(&self, audit: &Audit, origin: Origin<'_>, event: &str) -> String {
        let reason = self.denial.to_string();
        let mut ev = origin.event(event, "denied");
        let named = self.account.as_ref();
        ev.account = named.map(|(n, _)| n.as_str());
        ev.uid = named.map(|(_, u)| u.to_string());
        ev.reason = Some(&reason);
        audit.record(&ev);
        reason
    }
}

impl From<Denial> for Refusal {
    fn from(denial: Denial) -> Self {
        Self {
            denial,
            account: None,
        }
    }
}

type CacheKey = [u8; 32];

/// Authenticates bearer credentials; shared by every route.
#[derive(Debug)]
pub struct Authenticator {
    generation: AtomicU64,
    // Hits only read (a peek does not reorder), so concurrent reviews share the lock; entries
    // leave in insertion order or when their short TTL ends.
    reviews: RwLock<Option<LruTtlCache<CacheKey, Arc<Authenticated>>>>,
    accounts: RwLock<Option<LruTtlCache<AccountUid, Arc<UserAccount>>>>,
    revocations: tokio::sync::RwLock<RevocationSnapshot>,
}

fn lru<K: std::hash::Hash + Eq + Clone, V>(
    size: usize,
    ttl: Duration,
) -> Option<LruTtlCache<K, V>> {
    if size == 0 || ttl.is_zero() {
        return None;
    }
    LruTtlCache::builder().max_size(size).ttl(ttl).build().ok()
}

impl Authenticator {
    /// A new authenticator with caches sized by `settings`.
    #[must_use]
    pub fn new(settings: &Policy) -> Self {
        Self {
            generation: AtomicU64::new(0),
            reviews: RwLock::new(lru(settings.review_cache_size, settings.review_cache_ttl)),
            // Account state is cached just long enough to spare the store on bursts; any change
            // goes through `invalidate`.
            accounts: RwLock::new(lru(
                settings.review_cache_size,
                settings.review_cache_ttl.max(Duration::from_secs(5)),
            )),
            revocations: tokio::sync::RwLock::new(RevocationSnapshot {
                generation: None,
                loaded: std::time::Instant::now(),
                sessions: std::collections::HashSet::new(),
                jtis: std::collections::HashSet::new(),
            }),
        }
    }

    /// Empties every cache; call after any change that could revoke access.
    pub fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        if let Some(c) = write(&self.reviews).as_mut() {
            c.cache_clear();
        }
        if let Some(c) = write(&self.accounts).as_mut() {
            c.cache_clear();
        }
    }

    /// Drops what is cached for one account only (its reviews and its account record), and makes
    /// the revocation list be read again: after a change that affects that account alone, such
    /// as a token revoked through `/oauth2/revoke`, so nobody empties everyone's cache.
    pub fn invalidate_account(&self, uid: AccountUid) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        if let Some(c) = write(&self.reviews).as_mut() {
            c.retain(|_, v| v.uid != uid);
        }
        if let Some(c) = write(&self.accounts).as_mut() {
            c.retain(|k, _| *k != uid);
        }
    }

    /// Replaces the caches after a settings change.
    pub fn resize(&self, settings: &Policy) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        *write(&self.reviews) = lru(settings.review_cache_size, settings.review_cache_ttl);
        *write(&self.accounts) = lru(
            settings.review_cache_size,
            settings.review_cache_ttl.max(Duration::from_secs(5)),
        );
    }

    /// Authenticates `token` for any of `audiences` (the default audience when empty).
    ///
    /// # Errors
    /// A [`Refusal`] saying why, safe to show the caller.
    pub async fn authenticate(
        &self,
        token: &str,
        audiences: &[Audience],
        settings: &Policy,
        keys: impl FnOnce() -> Arc<KeySet>,
        store: &dyn Store,
        clock: &dyn Clock,
    ) -> Result<Arc<Authenticated>, Refusal> {
        let default_aud;
        let audiences = if audiences.is_empty() {
            default_aud = [settings.default_audience()];
            &default_aud[..]
        } else {
            audiences
        };
        let now = clock.now().0;
        let key = cache_key(token, audiences);
        let generation = self.generation.load(Ordering::SeqCst);
        if let Some(c) = read(&self.reviews).as_ref()
            && let Some(hit) = c.cache_peek(&key)
            && hit.expires_at.is_none_or(|e| now < e)
        {
            return Ok(hit.clone());
        }
        // Verifying makes a large future (the signature check, the store's lookups), and a future
        // is moved by value into the one that awaits it, level by level up to the handler: boxed
        // here, only a miss carries it, and a hit's futures stay a few hundred bytes.
        let result = if token.starts_with(STATIC_TOKEN_PREFIX) {
            Box::pin(self.authenticate_static(token, audiences, settings, store, now)).await?
        } else if token.bytes().filter(|b| *b == b'.').count() == 2 {
            // Keys are fetched only here: a cache hit needs none.
            let keys = keys();
            Box::pin(self.authenticate_jwt(token, audiences, settings, &keys, store, now)).await?
        } else {
            return Err(Denial::Malformed.into());
        };
        let result = Arc::new(result);
        if let Some(c) = write(&self.reviews).as_mut()
            && self.generation.load(Ordering::SeqCst) == generation
        {
            // What is stored is marked as cached; the caller of this call gets the fresh copy.
            let mut stored = (*result).clone();
            stored.cached = true;
            c.cache_set(key, Arc::new(stored));
        }
        Ok(result)
    }

    async fn account(
        &self,
        uid: AccountUid,
        store: &dyn Store,
    ) -> Result<Arc<UserAccount>, Refusal> {
        let generation = self.generation.load(Ordering::SeqCst);
        if let Some(c) = read(&self.accounts).as_ref()
            && let Some(a) = c.cache_peek(&uid)
        {
            return Ok(a.clone());
        }
        let account = match store.account(uid).await {
            Ok(Some(a)) => Arc::new(a),
            Ok(None) => return Err(Denial::Disabled.into()),
            Err(e) => {
                tracing::error!(error = %e, "store lookup failed during authentication");
                return Err(Denial::Unavailable.into());
            }
        };
        if let Some(c) = write(&self.accounts).as_mut()
            && self.generation.load(Ordering::SeqCst) == generation
        {
            c.cache_set(uid, account.clone());
        }
        Ok(account)
    }

    async fn authenticate_static(
        &self,
        token: &str,
        audiences: &[Audience],
        settings: &Policy,
        store: &dyn Store,
        now: i64,
    ) -> Result<Authenticated, Refusal> {
        let record = match store.static_token_by_hash(hash_token(token)).await {
            Ok(Some(r)) => r,
            Ok(None) => return Err(Denial::Invalid.into()),
            Err(e) => {
                tracing::error!(error = %e, "store lookup failed during authentication");
                return Err(Denial::Unavailable.into());
            }
        };
        let account = self.account(record.account, store).await?;
        let named = Some((account.name.to_string(), account.uid));
        if !record.is_usable(UnixTime(now)) {
            let denial = if record.revoked_at.is_some() {
                Denial::Invalid
            } else {
                Denial::Expired
            };
            return Err(Refusal {
                denial,
                account: named,
            });
        }
        if account.disabled {
            return Err(Refusal {
                denial: Denial::Disabled,
                account: named,
            });
        }
        // Static tokens carry no audience of their own: they are good for the Kubernetes
        // audiences and for idbridge itself (the admin API and token exchange).
        let valid: Vec<Audience> = audiences
            .iter()
            .filter(|a| settings.audiences.contains(a) || a.as_str() == settings.issuer)
            .cloned()
            .collect();
        Ok(Authenticated {
            name: account.name.to_string(),
            uid: account.uid,
            groups: account.groups.iter().map(ToString::to_string).collect(),
            namespace: account.default_namespace.as_ref().map(ToString::to_string),
            amr: vec![idbridge_core::Amr::Static],
            actor: None,
            audiences: valid,
            for_api_server: true,
            expires_at: record.expires_at.map(|t| t.0),
            cached: false,
            review_status: std::sync::OnceLock::new(),
        })
    }

    async fn authenticate_jwt(
        &self,
        token: &str,
        audiences: &[Audience],
        settings: &Policy,
        keys: &KeySet,
        store: &dyn Store,
        now: i64,
    ) -> Result<Authenticated, Refusal> {
        let claims = self
            .access_claims(token, settings, keys, store, now)
            .await?;
        let uid: AccountUid = claims.sub.parse().map_err(|_| Denial::Invalid)?;
        let valid: Vec<Audience> = audiences
            .iter()
            .filter(|a| claims.aud.contains(a))
            .cloned()
            .collect();
        let for_api_server = claims.aud.iter().any(|a| settings.audiences.contains(a));
        if valid.is_empty() && !for_api_server {
            return Err(Refusal {
                denial: Denial::Audience,
                account: Some((claims.name, uid)),
            });
        }
        Ok(Authenticated {
            name: claims.name,
            uid,
            groups: claims.groups,
            namespace: claims.namespace,
            amr: claims.amr,
            actor: claims.act.as_ref().map(|a| a.name.clone()),
            audiences: valid,
            for_api_server,
            expires_at: Some(claims.exp),
            cached: false,
            review_status: std::sync::OnceLock::new(),
        })
    }

    /// Verifies an idbridge access token: pinned algorithm and key, issuer, time by the injected
    /// clock, session and `jti` not revoked, account enabled. Audiences are the caller's to judge.
    ///
    /// # Errors
    /// A [`Refusal`] saying why.
    pub async fn access_claims(
        &self,
        token: &str,
        settings: &Policy,
        keys: &KeySet,
        store: &dyn Store,
        now: i64,
    ) -> Result<AccessClaims, Refusal> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| Denial::Malformed)?;
        if header.alg != Algorithm::ES256 {
            return Err(Denial::Invalid.into());
        }
        let kid = header.kid.ok_or(Denial::Invalid)?;
        let key = keys.verifier(&kid).ok_or(Denial::Invalid)?;
        let mut v = Validation::new(Algorithm::ES256);
        // Time is judged below by the injected clock alone, so tests are exact and every
        // replica applies the same skew; jsonwebtoken still requires the claims to be present.
        v.validate_exp = false;
        v.validate_nbf = false;
        // Audiences are matched by the caller: a token for this cluster's API server is answered
        // even when kube-apiserver asks with its own API audiences.
        v.validate_aud = false;
        v.set_issuer(&[&settings.issuer]);
        v.set_required_spec_claims(&["exp", "nbf", "iat", "aud", "iss", "sub"]);
        let data = jsonwebtoken::decode::<AccessClaims>(token, key, &v).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            match e.kind() {
                K::ExpiredSignature | K::ImmatureSignature => Denial::Expired,
                K::InvalidAudience => Denial::Audience,
                _ => Denial::Invalid,
            }
        })?;
        let claims = data.claims;
        let skew = i64::try_from(settings.clock_skew.as_secs()).unwrap_or(0);
        if claims.exp + skew <= now || claims.nbf - skew > now {
            return Err(Denial::Expired.into());
        }
        let uid: AccountUid = claims.sub.parse().map_err(|_| Denial::Invalid)?;
        let named = || Some((claims.name.clone(), uid));
        if self
            .is_revoked(&claims.sid, &claims.jti, store, now)
            .await?
        {
            return Err(Refusal {
                denial: Denial::Invalid,
                account: named(),
            });
        }
        let account = self.account(uid, store).await?;
        if account.disabled {
            return Err(Refusal {
                denial: Denial::Disabled,
                account: named(),
            });
        }
        Ok(claims)
    }

    /// Whether the session `sid` or the token `jti` is revoked, by a snapshot of the store's
    /// revocations that is reloaded after every [`invalidate`](Self::invalidate) and at least
    /// every few seconds (so a change made by another process is seen soon).
    async fn is_revoked(
        &self,
        sid: &str,
        jti: &str,
        store: &dyn Store,
        now: i64,
    ) -> Result<bool, Refusal> {
        let generation = self.generation.load(Ordering::SeqCst);
        let fresh = |r: &RevocationSnapshot| {
            r.generation == Some(generation) && r.loaded.elapsed() < REVOCATIONS_MAX_AGE
        };
        {
            let r = self.revocations.read().await;
            if fresh(&r) {
                return Ok(r.contains(sid, jti));
            }
        }
        let mut w = self.revocations.write().await;
        if !fresh(&w) {
            let list = store.revocations(UnixTime(now)).await.map_err(|e| {
                tracing::error!(error = %e, "cannot load revocations");
                Refusal::from(Denial::Unavailable)
            })?;
            *w = RevocationSnapshot {
                generation: Some(generation),
                loaded: std::time::Instant::now(),
                sessions: list.sessions.iter().map(ToString::to_string).collect(),
                jtis: list.jtis.into_iter().collect(),
            };
        }
        Ok(w.contains(sid, jti))
    }
}

const REVOCATIONS_MAX_AGE: Duration = Duration::from_secs(5);

#[derive(Debug)]
struct RevocationSnapshot {
    generation: Option<u64>,
    loaded: std::time::Instant,
    sessions: std::collections::HashSet<String>,
    jtis: std::collections::HashSet<String>,
}

impl RevocationSnapshot {
    fn contains(&self, sid: &str, jti: &str) -> bool {
        self.sessions.contains(sid) || self.jtis.contains(jti)
    }
}

fn cache_key(token: &str, audiences: &[Audience]) -> CacheKey {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(token.as_bytes());
    for a in audiences {
        ctx.update(&[0]);
        ctx.update(a.as_str().as_bytes());
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

// A panic while holding a cache lock leaves only a cache behind; keep using it.
fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use idbridge_core::{AccountStore, FixedClock, NewAccount, StaticToken, TokenId, UnixTime};
    use idbridge_store::SqliteStore;

    const T0: i64 = 1_900_000_000;

    struct Fixture {
        _dir: tempfile::TempDir,
        store: SqliteStore,
        clock: FixedClock,
        keys: Arc<KeySet>,
        settings: Policy,
        auth: Authenticator,
        uid: AccountUid,
    }

    async fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("s.db")).await.unwrap();
        let mut new = NewAccount::named("alice".parse().unwrap());
        new.groups.insert("dev".parse().unwrap());
        let uid = store.create_account(new, UnixTime(T0)).await.unwrap().uid;
        let (kid, der) = KeySet::generate().unwrap();
        let settings = Policy::new("https://idbridge.test".into());
        Fixture {
            auth: Authenticator::new(&settings),
            _dir: dir,
            store,
            clock: FixedClock::at(UnixTime(T0)),
            keys: Arc::new(KeySet::from_pkcs8(&[(kid, der)]).unwrap()),
            settings,
            uid,
        }
    }

    impl Fixture {
        async fn check(&self, token: &str, aud: &[&str]) -> Result<Arc<Authenticated>, Denial> {
            let aud: Vec<Audience> = aud.iter().map(|a| a.parse().unwrap()).collect();
            self.auth
                .authenticate(
                    token,
                    &aud,
                    &self.settings,
                    || self.keys.clone(),
                    &self.store,
                    &self.clock,
                )
                .await
                .map_err(|r| r.denial)
        }

        async fn static_token(&self, expires_at: Option<i64>) -> String {
            let secret = crate::secret::new_static_secret();
            let t = StaticToken {
                id: TokenId::random(),
                account: self.uid,
                description: String::new(),
                created_at: UnixTime(T0),
                expires_at: expires_at.map(UnixTime),
                revoked_at: None,
            };
            self.store
                .create_static_token(&t, hash_token(&secret))
                .await
                .unwrap();
            secret
        }

        fn jwt(&self, exp: i64, aud: &str) -> String {
            self.keys
                .sign(&AccessClaims {
                    iss: self.settings.issuer.clone(),
                    sub: self.uid.to_string(),
                    aud: vec![aud.parse().unwrap()],
                    exp,
                    iat: T0,
                    nbf: T0,
                    jti: "j".into(),
                    name: "alice".into(),
                    groups: vec!["dev".into()],
                    namespace: None,
                    amr: vec![idbridge_core::Amr::Static],
                    scope: String::new(),
                    sid: idbridge_core::SessionId::random().to_string(),
                    client_id: None,
                    act: None,
                })
                .unwrap()
        }
    }

    #[tokio::test]
    async fn static_tokens_expire_by_the_injected_clock_even_when_cached() {
        let f = fixture().await;
        let t = f.static_token(Some(T0 + 60)).await;
        assert!(!f.check(&t, &[]).await.unwrap().cached);
        assert!(f.check(&t, &[]).await.unwrap().cached);
        f.clock.advance(60);
        assert_eq!(f.check(&t, &[]).await.unwrap_err(), Denial::Expired);
    }

    #[tokio::test]
    async fn jwts_expire_by_the_injected_clock_with_the_configured_skew() {
        let f = fixture().await;
        let exp = T0 + 600;
        let t = f.jwt(exp, "kubernetes");
        assert_eq!(f.check(&t, &[]).await.unwrap().groups, vec!["dev"]);
        f.clock.advance(600 + 29);
        assert!(f.check(&t, &[]).await.is_ok(), "within the 30 s skew");
        f.clock.advance(2);
        assert_eq!(f.check(&t, &[]).await.unwrap_err(), Denial::Expired);
    }

    #[tokio::test]
    async fn audiences_are_enforced_for_both_kinds() {
        let f = fixture().await;
        let st = f.static_token(None).await;
        // kube-apiserver asks with its own API audiences: the answer names none, which means
        // "valid for the Kubernetes API server".
        let api = f
            .check(&st, &["https://kubernetes.default.svc"])
            .await
            .unwrap();
        assert!(api.audiences.is_empty() && api.for_api_server);
        assert!(
            api.require_audience().is_err(),
            "idbridge's own endpoints stay strict"
        );
        let both = f.check(&st, &["vault", "kubernetes"]).await.unwrap();
        assert_eq!(both.audiences, vec!["kubernetes"]);
        let k8s = f.jwt(T0 + 600, "kubernetes");
        let api = f
            .check(&k8s, &["https://kubernetes.default.svc"])
            .await
            .unwrap();
        assert!(api.audiences.is_empty() && api.for_api_server);
        // A token for another service is refused by the API server's reviews...
        let jwt = f.jwt(T0 + 600, "vault");
        assert_eq!(f.check(&jwt, &[]).await.unwrap_err(), Denial::Audience);
        let asked = ["https://kubernetes.default.svc"];
        assert_eq!(f.check(&jwt, &asked).await.unwrap_err(), Denial::Audience);
        // ...and answered, with its audience, to that service.
        let v = f.check(&jwt, &["vault"]).await.unwrap();
        assert_eq!(v.audiences, vec!["vault"]);
        assert!(!v.for_api_server);
    }

    #[tokio::test]
    async fn invalidate_forgets_cached_answers() {
        let f = fixture().await;
        let st = f.static_token(None).await;
        f.check(&st, &[]).await.unwrap();
        let mut a = f.store.account(f.uid).await.unwrap().unwrap();
        a.disabled = true;
        f.store.update_account(&a).await.unwrap();
        // A change made behind the authenticator's back is seen once the cache is emptied,
        // which every admin path does before it answers.
        assert!(f.check(&st, &[]).await.unwrap().cached);
        f.auth.invalidate();
        assert_eq!(f.check(&st, &[]).await.unwrap_err(), Denial::Disabled);
    }

    #[tokio::test]
    async fn garbage_is_malformed_not_a_panic() {
        let f = fixture().await;
        for t in [
            "",
            "x",
            "a.b",
            "a.b.c",
            "..",
            "idb_st_",
            "\u{0}.\u{0}.\u{0}",
        ] {
            assert!(f.check(t, &[]).await.is_err(), "{t:?}");
        }
    }
}
