//! Administrative operations, shared by the admin API and the binary's `--offline` mode so both
//! apply the same rules.

use std::sync::Arc;

use idbridge_core::{
    AccountName, Clock, HumanDuration, NewAccount, StaticToken, Store, StoreError, TokenId,
    UnixTime, UserAccount,
};
use serde::{Deserialize, Serialize};

use crate::tokens::{hash_token, new_static_secret};

/// Errors from an administrative operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpsError {
    /// No account has that name.
    #[error("no account named {0:?}")]
    NoSuchAccount(String),
    /// No token has that id.
    #[error("no token with id {0}")]
    NoSuchToken(TokenId),
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A static token just created: the only time its secret exists outside the caller's hands.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreatedToken {
    /// The stored record.
    pub token: StaticToken,
    /// The account's name.
    pub account_name: AccountName,
    /// The secret.
    pub secret: String,
}

/// Administrative operations over a store.
#[derive(Debug, Clone)]
pub struct AdminOps {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
}

impl AdminOps {
    /// Operations over `store`, timestamped by `clock`.
    #[must_use]
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Self {
        Self { store, clock }
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
        if account.disabled != disabled {
            account.disabled = disabled;
            self.store.update_account(&account).await?;
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
        let secret = new_static_secret();
        let token = StaticToken {
            id: TokenId::random(),
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
        match self.store.revoke_static_token(id, self.clock.now()).await {
            Err(StoreError::NotFound(_)) => Err(OpsError::NoSuchToken(id)),
            other => Ok(other?),
        }
    }

    /// The current time of this service's clock.
    #[must_use]
    pub fn now(&self) -> UnixTime {
        self.clock.now()
    }
}
