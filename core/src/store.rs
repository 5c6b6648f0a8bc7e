//! The storage seam. Implementations live in the `idbridge-store` crate.

use async_trait::async_trait;

use crate::{
    AccountName, AccountUid, NewAccount, StaticToken, StoreError, TokenHash, TokenId, UnixTime,
    UserAccount,
};

/// Durable state: accounts, static tokens and signing keys.
///
/// Every write is durable when the call returns: a caller that saw `Ok` may rely on the change
/// surviving a crash of the process.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Creates an account with a fresh UID; `Conflict` if the name or an identity is taken.
    async fn create_account(
        &self,
        new: NewAccount,
        now: UnixTime,
    ) -> Result<UserAccount, StoreError>;
    /// The account with this UID.
    async fn account(&self, uid: AccountUid) -> Result<Option<UserAccount>, StoreError>;
    /// The account with this name.
    async fn account_by_name(&self, name: &AccountName) -> Result<Option<UserAccount>, StoreError>;
    /// Every account, ordered by name.
    async fn accounts(&self) -> Result<Vec<UserAccount>, StoreError>;
    /// Replaces an account's mutable fields (name, groups, labels, namespace, disabled,
    /// identities); the UID and creation time never change.
    async fn update_account(&self, account: &UserAccount) -> Result<(), StoreError>;

    /// Stores a new static token under the hash of its secret.
    async fn create_static_token(
        &self,
        token: &StaticToken,
        hash: TokenHash,
    ) -> Result<(), StoreError>;
    /// The static token whose secret hashes to `hash`.
    async fn static_token_by_hash(
        &self,
        hash: TokenHash,
    ) -> Result<Option<StaticToken>, StoreError>;
    /// Static tokens, optionally of one account, newest first.
    async fn static_tokens(
        &self,
        account: Option<AccountUid>,
    ) -> Result<Vec<StaticToken>, StoreError>;
    /// Marks a static token revoked; `NotFound` if there is none with this id. Revoking twice
    /// keeps the first time.
    async fn revoke_static_token(
        &self,
        id: TokenId,
        now: UnixTime,
    ) -> Result<StaticToken, StoreError>;

    /// The signing keys, as (key id, PKCS#8 DER of the private key, creation time), oldest first.
    async fn signing_keys(&self) -> Result<Vec<(String, Vec<u8>, UnixTime)>, StoreError>;
    /// Adds a signing key.
    async fn add_signing_key(
        &self,
        kid: &str,
        pkcs8_der: &[u8],
        now: UnixTime,
    ) -> Result<(), StoreError>;
}
