//! Administrative operations, shared by the admin API and the binary's `--offline` mode so both
//! apply the same rules.

use std::sync::Arc;

use idbridge_core::{
    AccountChange, AccountChangeOutcome, AccountName, Clock, HumanDuration, KeyState, NewAccount,
    Random, Session, SessionId, SessionState, StaticToken, Store, StoreError, TokenId, UnixTime,
    UserAccount,
};
use serde::{Deserialize, Serialize};

use crate::secret::{STATIC_TOKEN_PREFIX, hash_token, secret_from};

pub use crate::error::OpsError;

/// The label the sync worker puts on an account it disabled (its own rule: it re-enables only
/// accounts that carry it).
pub const SYNC_DISABLED_LABEL: &str = "sync.idbridge.io/disabled";

/// A session as listed: the stored record, its state now, and its account's name.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionInfo {
    /// The stored session.
    #[serde(flatten)]
    pub session: Session,
    /// Its state at the time of listing.
    pub state: SessionState,
    /// The account's name.
    pub account_name: String,
}

/// What `revoke --user` did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserRevocation {
    /// The account.
    pub account: AccountName,
    /// Its UID.
    pub uid: idbridge_core::AccountUid,
    /// Sessions revoked (with every access token minted for them).
    pub sessions: u64,
    /// Static tokens revoked, when asked for.
    pub static_tokens: u64,
}

/// A signing key as listed (never its private part).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyInfo {
    /// Key id.
    pub kid: String,
    /// `next`, `current` or `retired`.
    pub state: KeyState,
    /// Created and published.
    pub created_at: UnixTime,
    /// Started signing, or (for the next key) is scheduled to.
    pub activated_at: Option<UnixTime>,
    /// A retired key leaves the JWKS after this.
    pub retire_after: Option<UnixTime>,
    /// Whether it is encrypted at rest.
    pub encrypted: bool,
}

/// A static token just created: the only time its secret exists outside the caller's hands.
/// `Debug` hides the secret.
#[derive(Clone, Serialize, Deserialize)]
pub struct CreatedToken {
    /// The stored record.
    pub token: StaticToken,
    /// The account's name.
    pub account_name: AccountName,
    /// The secret.
    pub secret: String,
}

impl std::fmt::Debug for CreatedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedToken")
            .field("token", &self.token)
            .field("account_name", &self.account_name)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// Administrative operations over a store. Inside the token service, every change that can
/// take access away empties the verification caches before it returns, whoever called it (the
/// admin API, the sync worker); over a bare store (`--offline`) there is no cache to empty.
#[derive(Debug, Clone)]
pub struct AdminOps {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    random: Arc<dyn Random>,
    caches: Option<Arc<crate::verify::Authenticator>>,
}

impl AdminOps {
    /// Operations over `store`, timestamped by `clock`.
    #[must_use]
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Self {
        Self::with_random(store, clock, Arc::new(crate::secret::SystemRandom))
    }

    /// [`AdminOps::new`] drawing secrets and ids from `random`.
    #[must_use]
    pub fn with_random(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        random: Arc<dyn Random>,
    ) -> Self {
        Self {
            store,
            clock,
            random,
            caches: None,
        }
    }

    /// These operations, emptying `caches` after every change that can take access away.
    #[must_use]
    pub fn emptying(mut self, caches: Arc<crate::verify::Authenticator>) -> Self {
        self.caches = Some(caches);
        self
    }

    fn changed(&self) {
        if let Some(c) = &self.caches {
            c.invalidate();
        }
    }

    /// The account with this name.
    ///
    /// # Errors
    /// `NoSuchAccount`, or a store failure.
    pub async fn account(&self, name: &AccountName) -> Result<UserAccount, OpsError> {
        self.store
            .account_by_name(name)
            .await?
            .ok_or_else(|| OpsError::NoSuchAccount(name.to_string()))
    }

    /// Creates an account.
    ///
    /// # Errors
    /// A store conflict when the name or an identity is taken.
    pub async fn add_account(&self, new: NewAccount) -> Result<UserAccount, OpsError> {
        Ok(self.store.create_account(new, self.clock.now()).await?)
    }

    /// Every account.
    ///
    /// # Errors
    /// A store failure.
    pub async fn accounts(&self) -> Result<Vec<UserAccount>, OpsError> {
        Ok(self.store.accounts().await?)
    }

    /// Applies a batch of account changes in one store transaction, all or none (see
    /// [`idbridge_core::AccountStore::apply_account_changes`]), then empties the caches: the
    /// sync worker's way in.
    ///
    /// # Errors
    /// The store's error; nothing of the batch is applied then.
    pub async fn apply_account_changes(
        &self,
        changes: &[AccountChange],
    ) -> Result<Vec<AccountChangeOutcome>, OpsError> {
        if changes.is_empty() {
            return Ok(Vec::new());
        }
        let out = self
            .store
            .apply_account_changes(changes, self.clock.now())
            .await?;
        self.changed();
        Ok(out)
    }

    /// The store, for what the sync worker keeps in it (its state and lease).
    #[must_use]
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Renames an account; its UID, and so everything bound to it, stays. Tokens already
    /// issued keep the old name until they are refreshed, so the caches are emptied.
    ///
    /// # Errors
    /// `NoSuchAccount`, or a store conflict when the new name is taken.
    pub async fn rename(
        &self,
        name: &AccountName,
        to: AccountName,
    ) -> Result<UserAccount, OpsError> {
        let mut account = self.account(name).await?;
        if account.name != to {
            account.name = to;
            self.store.update_account(&account).await?;
            self.changed();
        }
        Ok(account)
    }

    /// Disables or re-enables an account; returns it as stored.
    ///
    /// # Errors
    /// `NoSuchAccount`, or a store failure.
    pub async fn set_disabled(
        &self,
        name: &AccountName,
        disabled: bool,
    ) -> Result<UserAccount, OpsError> {
        let mut account = self.account(name).await?;
        // An administrator's decision is the administrator's: the sync worker's mark (which
        // lets it re-enable what it disabled itself) goes, whichever way the decision goes.
        let before = account.labels.len();
        account
            .labels
            .retain(|k, _| k.as_str() != SYNC_DISABLED_LABEL);
        if account.disabled != disabled || account.labels.len() != before {
            account.disabled = disabled;
            self.store.update_account(&account).await?;
            self.changed();
        }
        Ok(account)
    }

    /// Creates a static token for an account.
    ///
    /// # Errors
    /// `NoSuchAccount`, or a store failure.
    pub async fn create_token(
        &self,
        name: &AccountName,
        ttl: Option<HumanDuration>,
        description: String,
    ) -> Result<CreatedToken, OpsError> {
        let account = self.account(name).await?;
        let now = self.clock.now();
        let secret = secret_from(&*self.random, STATIC_TOKEN_PREFIX);
        let token = StaticToken {
            id: TokenId::from_random(&*self.random),
            account: account.uid,
            description,
            created_at: now,
            expires_at: ttl.map(|t| now.plus_secs(t.as_secs())),
            revoked_at: None,
        };
        self.store
            .create_static_token(&token, hash_token(&secret))
            .await?;
        Ok(CreatedToken {
            token,
            account_name: account.name,
            secret,
        })
    }

    /// Static tokens, of one account or all.
    ///
    /// # Errors
    /// `NoSuchAccount`, or a store failure.
    pub async fn tokens(&self, name: Option<&AccountName>) -> Result<Vec<StaticToken>, OpsError> {
        let uid = match name {
            Some(n) => Some(self.account(n).await?.uid),
            None => None,
        };
        Ok(self.store.static_tokens(uid).await?)
    }

    /// Revokes a static token.
    ///
    /// # Errors
    /// `NoSuchToken`, or a store failure.
    pub async fn revoke_token(&self, id: TokenId) -> Result<StaticToken, OpsError> {
        let revoked = match self.store.revoke_static_token(id, self.clock.now()).await {
            Err(StoreError::NotFound(_)) => return Err(OpsError::NoSuchToken(id)),
            other => other?,
        };
        self.changed();
        Ok(revoked)
    }

    /// Sessions, of one account or all, with their state under `idle_timeout`.
    ///
    /// # Errors
    /// `NoSuchAccount`, or a store failure.
    pub async fn sessions(
        &self,
        name: Option<&AccountName>,
        idle_timeout: u64,
    ) -> Result<Vec<SessionInfo>, OpsError> {
        let uid = match name {
            Some(n) => Some(self.account(n).await?.uid),
            None => None,
        };
        let now = self.clock.now();
        let mut names: std::collections::HashMap<_, String> = std::collections::HashMap::new();
        let mut out = Vec::new();
        for session in self.store.sessions(uid).await? {
            let account_name = match names.entry(session.account) {
                std::collections::hash_map::Entry::Occupied(e) => e.get().clone(),
                std::collections::hash_map::Entry::Vacant(e) => e
                    .insert(
                        self.store
                            .account(session.account)
                            .await?
                            .map_or_else(|| "-".to_owned(), |a| a.name.to_string()),
                    )
                    .clone(),
            };
            out.push(SessionInfo {
                state: session.state(now, idle_timeout),
                account_name,
                session,
            });
        }
        Ok(out)
    }

    /// Revokes one session and so every token minted for it.
    ///
    /// # Errors
    /// `NoSuchSession`, or a store failure.
    pub async fn revoke_session(&self, id: SessionId) -> Result<Session, OpsError> {
        match self
            .store
            .revoke_session(id, "revoked by an administrator", self.clock.now())
            .await
        {
            Err(StoreError::NotFound(_)) => Err(OpsError::NoSuchSession(id)),
            other => {
                let session = other?;
                self.changed();
                Ok(session)
            }
        }
    }

    /// Revokes every session of an account, and so every access token minted for them; with
    /// `static_tokens`, its static tokens too.
    ///
    /// # Errors
    /// `NoSuchAccount`, or a store failure.
    pub async fn revoke_user(
        &self,
        name: &AccountName,
        static_tokens: bool,
    ) -> Result<UserRevocation, OpsError> {
        let account = self.account(name).await?;
        let now = self.clock.now();
        let sessions = self
            .store
            .revoke_account_sessions(account.uid, "user revoked by an administrator", now)
            .await?;
        let mut revoked_static = 0;
        if static_tokens {
            for t in self.store.static_tokens(Some(account.uid)).await? {
                if t.revoked_at.is_none() {
                    self.store.revoke_static_token(t.id, now).await?;
                    revoked_static += 1;
                }
            }
        }
        self.changed();
        Ok(UserRevocation {
            account: account.name,
            uid: account.uid,
            sessions,
            static_tokens: revoked_static,
        })
    }

    /// Revokes one access token by `jti`; it is refused until `max_lifetime` from now, by when
    /// it has expired whatever it said.
    ///
    /// # Errors
    /// A store failure.
    pub async fn revoke_jti(&self, jti: &str, max_lifetime: u64) -> Result<(), OpsError> {
        let now = self.clock.now();
        self.store
            .revoke_jti(jti, now.plus_secs(max_lifetime), now)
            .await?;
        self.changed();
        Ok(())
    }

    /// The signing keys, never their private parts.
    ///
    /// # Errors
    /// A store failure.
    pub async fn keys(&self) -> Result<Vec<KeyInfo>, OpsError> {
        Ok(self
            .store
            .signing_keys()
            .await?
            .into_iter()
            .map(|k| KeyInfo {
                kid: k.kid,
                state: k.state,
                created_at: k.created_at,
                activated_at: k.activated_at,
                retire_after: k.retire_after,
                encrypted: k.sealed_by.is_some(),
            })
            .collect())
    }

    /// Applies the key policy (and an operator's rotation) to the stored ring; returns whether it
    /// changed.
    ///
    /// # Errors
    /// A store or key failure.
    pub async fn maintain_keys(
        &self,
        policy: &crate::keys::KeyPolicy,
        rotate: crate::keys::Rotate,
        kek: Option<&crate::seal::Kek>,
    ) -> Result<bool, OpsError> {
        let stored = self.store.signing_keys().await?;
        match crate::keys::maintain(&stored, self.clock.now(), policy, rotate, kek)? {
            Some(ring) => {
                self.store.replace_signing_keys(&ring).await?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// The current time of this service's clock.
    #[must_use]
    pub fn now(&self) -> UnixTime {
        self.clock.now()
    }
}

#[cfg(test)]
mod tests {
    use idbridge_core::{AccountUid, StaticToken, TokenId, UnixTime};

    use super::*;

    #[tokio::test]
    async fn an_administrators_disable_or_enable_removes_the_sync_workers_mark() {
        let dir = tempfile::tempdir().unwrap();
        let s = crate::service::test_service(dir.path()).await;
        let name: AccountName = "alice".parse().unwrap();
        let mut new = NewAccount::named(name.clone());
        new.disabled = true;
        new.labels
            .insert(SYNC_DISABLED_LABEL.parse().unwrap(), "directory".into());
        new.labels.insert("team".parse().unwrap(), "blue".into());
        s.ops().add_account(new).await.unwrap();
        // Already disabled: the mark still goes, so the sync worker never enables her again.
        let a = s.ops().set_disabled(&name, true).await.unwrap();
        assert!(a.disabled);
        assert_eq!(a.labels.len(), 1, "{:?}", a.labels);
        let stored = s.ops().account(&name).await.unwrap();
        assert!(
            stored
                .labels
                .keys()
                .all(|k| k.as_str() != SYNC_DISABLED_LABEL)
        );
        assert_eq!(stored.labels.keys().next().unwrap().as_str(), "team");
    }

    #[test]
    fn debug_output_of_a_created_token_shows_no_secret() {
        let t = CreatedToken {
            token: StaticToken {
                id: TokenId::random(),
                account: AccountUid::random(),
                description: "laptop".into(),
                created_at: UnixTime(1),
                expires_at: None,
                revoked_at: None,
            },
            account_name: "alice".parse().unwrap(),
            secret: "idb_st_secret-1".into(),
        };
        let shown = format!("{t:?}");
        assert!(
            !shown.contains("secret-1") && shown.contains("alice"),
            "{shown}"
        );
    }
}
