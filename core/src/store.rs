//! The storage seam, split by concern. Implementations live in the `idbridge-store` crate.
//!
//! Four small traits each cover one kind of record:
//!
//! - [`AccountStore`]: accounts, the external identities linked to them and their static tokens
//!   (long-lived credentials that belong to an account, not to a login), and the atomic batch of
//!   account changes the sync worker applies ([`AccountStore::apply_account_changes`]).
//! - [`SessionStore`]: sessions and their refresh tokens, spending a refresh token, revoking a
//!   session or all of an account's. Sessions belong to accounts (a session names its account,
//!   and a refresh reads both), so a session store is an account store too.
//! - [`PendingStore`]: short-lived single-use records of logins in progress.
//! - [`KeyStore`]: signing keys, and what must be refused although its signature verifies
//!   (revoked access tokens, the revocations snapshot), and the purge of whatever has ended.
//! - [`SyncStateStore`]: what the sync worker remembers between runs, and the lease that lets
//!   one runner at a time sync.
//! - [`WorkloadStore`]: workload revocations (pods, serviceaccounts, principals refused
//!   credentials) and the key versions of the principals whose keytabs are handed out.
//!
//! [`Store`] is their union, implemented for every type that implements all four; callers hold
//! an `Arc<dyn Store>` and call any method on it. A caller that holds a concrete store type
//! brings into scope the trait whose method it calls.
//!
//! Every write is durable when the call returns: a caller that saw `Ok` may rely on the change
//! surviving a crash of the process. The behaviour every implementation owes is written once, as
//! the conformance suite in `idbridge_store::conformance`.

use async_trait::async_trait;

use crate::{
    AccountName, AccountUid, ExternalIdentity, NewAccount, Pending, RefreshContext, RefreshRecord,
    Revocations, Session, SessionId, Spend, SpendOutcome, StaticToken, StoreError, StoredKey,
    TokenHash, TokenId, UnixTime, UserAccount,
};

/// Durable state: accounts, static tokens, sessions, logins in progress, revocations and signing
/// keys; the union of the four stores.
pub trait Store:
    AccountStore
    + SessionStore
    + PendingStore
    + KeyStore
    + SyncStateStore
    + WorkloadStore
    + Send
    + Sync
    + std::fmt::Debug
{
}

impl<T> Store for T where
    T: AccountStore
        + SessionStore
        + PendingStore
        + KeyStore
        + SyncStateStore
        + WorkloadStore
        + Send
        + Sync
        + std::fmt::Debug
{
}

/// What the sync worker remembers between runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SyncState {
    /// The identity of the directory the last applied run read, as the sync worker writes it
    /// (its own JSON).
    #[serde(default)]
    pub identity: Option<String>,
    /// When a run last applied its plan completely.
    #[serde(default)]
    pub last_success: Option<UnixTime>,
    /// When a run last ended, applied or not.
    #[serde(default)]
    pub last_run: Option<UnixTime>,
    /// Why the last run failed, if it did.
    #[serde(default)]
    pub last_error: Option<String>,
}

/// Who may run sync now, and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncLease {
    /// The runner's name (host and process).
    pub holder: String,
    /// The lease ends then unless renewed.
    pub expires_at: UnixTime,
}

/// What the sync worker remembers between runs, and its lease.
#[async_trait]
pub trait SyncStateStore: Send + Sync + std::fmt::Debug {
    /// The state the last run left (the default before the first).
    async fn sync_state(&self) -> Result<SyncState, StoreError>;
    /// Replaces the state.
    async fn put_sync_state(&self, state: &SyncState) -> Result<(), StoreError>;
    /// Takes or renews the lease for `holder` until `until`, when nobody holds it, its holder's
    /// lease has ended at `now`, or `holder` holds it already; atomically, so two runners never
    /// both get it. Returns the lease in force afterwards: `holder`'s when it was taken, the
    /// other runner's when not.
    async fn take_sync_lease(
        &self,
        holder: &str,
        now: UnixTime,
        until: UnixTime,
    ) -> Result<SyncLease, StoreError>;
    /// Gives the lease up, if `holder` holds it.
    async fn release_sync_lease(&self, holder: &str) -> Result<(), StoreError>;
}

/// What a workload revocation names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkloadTarget {
    /// One pod, by its UID: its tokens are refused, other pods of its serviceaccount go on.
    Pod,
    /// A serviceaccount, `namespace/name`: every pod of it.
    ServiceAccount,
    /// A Kerberos principal: every workload mapped to it.
    Principal,
}

impl WorkloadTarget {
    /// The name the store and the admin API use (`pod`, `service_account`, `principal`).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pod => "pod",
            Self::ServiceAccount => "service_account",
            Self::Principal => "principal",
        }
    }

    /// The word people read, as the command line's flags spell it (`pod`, `serviceaccount`,
    /// `principal`).
    #[must_use]
    pub fn noun(self) -> &'static str {
        match self {
            Self::Pod => "pod",
            Self::ServiceAccount => "serviceaccount",
            Self::Principal => "principal",
        }
    }

    /// The target named by [`as_str`](Self::as_str).
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Pod, Self::ServiceAccount, Self::Principal]
            .into_iter()
            .find(|t| t.as_str() == s)
    }
}

/// A revocation: workloads it names get no credential until it is lifted.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WorkloadRevocation {
    /// What it names.
    pub target: WorkloadTarget,
    /// The pod UID, `namespace/serviceaccount` or principal.
    pub value: String,
    /// Why, as the admin said it.
    pub reason: String,
    /// Who revoked (the admin's account name).
    pub by: String,
    /// When.
    pub at: UnixTime,
}

/// The keys of a principal whose keytab is handed out: the version in force, and the previous
/// version handed-out keytabs keep until `previous_until`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WorkloadKeyState {
    /// The principal.
    pub principal: String,
    /// The key version in force.
    pub kvno: u32,
    /// When its keys were last made (or first read).
    pub rotated_at: UnixTime,
    /// The version before, kept in keytabs for the overlap window.
    pub previous_kvno: Option<u32>,
    /// The overlap window's end.
    pub previous_until: Option<UnixTime>,
}

/// Workload revocations and the key versions of keytab principals.
#[async_trait]
pub trait WorkloadStore: Send + Sync + std::fmt::Debug {
    /// Records a revocation; replaces one of the same target and value. Durable on return.
    async fn revoke_workload(&self, revocation: &WorkloadRevocation) -> Result<(), StoreError>;
    /// Lifts the revocation of `target` and `value`; whether there was one.
    async fn lift_workload_revocation(
        &self,
        target: WorkloadTarget,
        value: &str,
    ) -> Result<bool, StoreError>;
    /// Every revocation, oldest first.
    async fn workload_revocations(&self) -> Result<Vec<WorkloadRevocation>, StoreError>;
    /// The first revocation that names this pod, serviceaccount (`namespace/name`) or principal.
    async fn workload_revoked(
        &self,
        pod_uid: &str,
        service_account: &str,
        principal: &str,
    ) -> Result<Option<WorkloadRevocation>, StoreError>;
    /// The key state of `principal`, if its keytab was ever handed out.
    async fn workload_key_state(
        &self,
        principal: &str,
    ) -> Result<Option<WorkloadKeyState>, StoreError>;
    /// Every key state, by principal.
    async fn workload_key_states(&self) -> Result<Vec<WorkloadKeyState>, StoreError>;
    /// Writes `state` if the stored state's `rotated_at` is still `expected` (`None`: there is
    /// none yet); whether it was written. Two replicas that both decide to rotate: one wins.
    async fn put_workload_key_state(
        &self,
        state: &WorkloadKeyState,
        expected: Option<UnixTime>,
    ) -> Result<bool, StoreError>;
}

/// One change in a batch for [`AccountStore::apply_account_changes`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountChange {
    /// Creates an account with a fresh UID, as [`AccountStore::create_account`].
    Create(NewAccount),
    /// Replaces an account's mutable fields, as [`AccountStore::update_account`].
    Update(UserAccount),
    /// Marks an account disabled (nothing else of it changes) and revokes every live session of
    /// it with `reason`, as [`SessionStore::revoke_account_sessions`]. Disabling a disabled
    /// account is not an error.
    Disable {
        /// The account.
        uid: AccountUid,
        /// Recorded on each session it revokes.
        reason: String,
    },
}

/// What one change of a batch did; [`AccountStore::apply_account_changes`] returns one per change,
/// in the order of the changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountChangeOutcome {
    /// The account was created, as returned here (with its new UID).
    Created(UserAccount),
    /// The account was updated.
    Updated,
    /// The account was disabled, and this many of its live sessions revoked.
    Disabled {
        /// How many sessions the change revoked.
        revoked_sessions: u64,
    },
}

/// Accounts, the external identities linked to them, and their static tokens.
#[async_trait]
pub trait AccountStore: Send + Sync + std::fmt::Debug {
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
    /// The account an external identity is linked to.
    async fn account_by_identity(
        &self,
        identity: &ExternalIdentity,
    ) -> Result<Option<UserAccount>, StoreError>;
    /// Every account, ordered by name.
    async fn accounts(&self) -> Result<Vec<UserAccount>, StoreError>;
    /// Replaces an account's mutable fields (name, groups, labels, namespace, disabled,
    /// identities); the UID and creation time never change. `NotFound` if there is no account
    /// with this UID, `Conflict` if the name or an identity is another account's; then nothing
    /// changes.
    async fn update_account(&self, account: &UserAccount) -> Result<(), StoreError>;
    /// Applies a list of account changes in order, all in one transaction: either every change
    /// is applied, or none is. Each change sees the ones before it (a name a change frees may be
    /// taken by a later one). Returns one outcome per change, in order.
    ///
    /// When a change fails as the single operation it stands for would (`Conflict`, `NotFound`,
    /// or the backend), nothing of the batch is applied and the error is
    /// [`StoreError::InBatch`], naming the change by its index and holding why it failed
    /// ([`StoreError::innermost`]). `now` is the creation time of the accounts it creates and the
    /// revocation time of the sessions it revokes. The sync worker applies what it read from the
    /// directory this way, so a run is never left half-applied.
    async fn apply_account_changes(
        &self,
        changes: &[AccountChange],
        now: UnixTime,
    ) -> Result<Vec<AccountChangeOutcome>, StoreError>;

    /// Stores a new static token under the hash of its secret; `NotFound` if its account does
    /// not exist, `Conflict` if its id or hash is taken.
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
}

/// Sessions (refresh-token families) and their refresh tokens.
#[async_trait]
pub trait SessionStore: AccountStore {
    /// Starts a session with its first refresh token; `NotFound` if its account does not exist,
    /// `Conflict` if its id or the token is taken.
    async fn create_session(
        &self,
        session: &Session,
        first: &RefreshRecord,
    ) -> Result<(), StoreError>;
    /// The session with this id.
    async fn session(&self, id: SessionId) -> Result<Option<Session>, StoreError>;
    /// Sessions, optionally of one account, newest first.
    async fn sessions(&self, account: Option<AccountUid>) -> Result<Vec<Session>, StoreError>;
    /// The refresh token whose secret hashes to `hash`.
    async fn refresh_token(&self, hash: TokenHash) -> Result<Option<RefreshRecord>, StoreError>;
    /// The refresh token whose secret hashes to `hash`, with its session and account, in one
    /// snapshot. The default reads them one after another.
    async fn refresh_context(&self, hash: TokenHash) -> Result<Option<RefreshContext>, StoreError> {
        let Some(record) = self.refresh_token(hash).await? else {
            return Ok(None);
        };
        let session = self.session(record.session).await?;
        let account = match &session {
            Some(s) => self.account(s.account).await?,
            None => None,
        };
        Ok(Some(RefreshContext {
            record,
            session,
            account,
        }))
    }
    /// Atomically spends an unspent refresh token of a live session, storing the next one and
    /// marking the session used. `Lost` when the token was already spent or the session revoked;
    /// then nothing changes.
    async fn spend_refresh(&self, spend: &Spend) -> Result<SpendOutcome, StoreError>;
    /// Revokes one session; `NotFound` if there is none. Revoking twice keeps the first time.
    async fn revoke_session(
        &self,
        id: SessionId,
        reason: &str,
        now: UnixTime,
    ) -> Result<Session, StoreError>;
    /// Revokes every live session of an account; returns how many.
    async fn revoke_account_sessions(
        &self,
        account: AccountUid,
        reason: &str,
        now: UnixTime,
    ) -> Result<u64, StoreError>;
}

/// Short-lived, single-use records of logins in progress ([`Pending`]).
#[async_trait]
pub trait PendingStore: Send + Sync + std::fmt::Debug {
    /// Stores a login in progress; `Conflict` if its key or alias is taken.
    async fn put_pending(&self, pending: &Pending) -> Result<(), StoreError>;
    /// The login in progress named by `key`, used or not, unless it has expired.
    async fn pending(&self, key: TokenHash, now: UnixTime) -> Result<Option<Pending>, StoreError>;
    /// The unexpired login in progress whose alias is `alias`.
    async fn pending_by_alias(
        &self,
        alias: &str,
        now: UnixTime,
    ) -> Result<Option<Pending>, StoreError>;
    /// Replaces the data of an unused, unexpired record; false when there is none.
    async fn update_pending(
        &self,
        key: TokenHash,
        data: &str,
        now: UnixTime,
    ) -> Result<bool, StoreError>;
    /// Marks the record used, atomically. Returns it with `used_at` set, and whether this call
    /// was the first use (false: it had been used before, and must be refused).
    async fn use_pending(
        &self,
        key: TokenHash,
        now: UnixTime,
    ) -> Result<Option<(Pending, bool)>, StoreError>;
    /// Records the session a used record started.
    async fn set_pending_session(
        &self,
        key: TokenHash,
        session: SessionId,
    ) -> Result<(), StoreError>;
}

/// Signing keys, revoked access tokens and the revocations snapshot, and the purge of what has
/// ended.
#[async_trait]
pub trait KeyStore: Send + Sync + std::fmt::Debug {
    /// The signing keys, oldest first.
    async fn signing_keys(&self) -> Result<Vec<StoredKey>, StoreError>;
    /// Replaces the whole key set in one transaction.
    async fn replace_signing_keys(&self, keys: &[StoredKey]) -> Result<(), StoreError>;

    /// Revokes one access token by its `jti` until `expires_at`.
    async fn revoke_jti(
        &self,
        jti: &str,
        expires_at: UnixTime,
        now: UnixTime,
    ) -> Result<(), StoreError>;
    /// Revoked sessions and access tokens that could still be presented at `now`.
    async fn revocations(&self, now: UnixTime) -> Result<Revocations, StoreError>;
    /// Deletes sessions ended before `before` (with their refresh tokens), revocations of
    /// tokens expired before it and logins in progress expired before it, and forgets the
    /// sealed next pair of spent refresh tokens whose grace window ended before it; returns how
    /// many rows went.
    async fn purge(&self, before: UnixTime) -> Result<u64, StoreError>;
}
