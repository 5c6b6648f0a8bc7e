//! idbridge's domain model, free of I/O.
//!
//! Every identity that reaches idbridge — a static token, a Kerberos principal, a directory entry,
//! an upstream OIDC subject — resolves to exactly one [`UserAccount`]. The account's [`AccountUid`]
//! is idbridge's own, assigned once and never reused, so renames and re-links never change who a
//! Kubernetes audit record names. Identifiers are newtypes that can only be built by parsing, so a
//! value that reaches a store or a token has already been checked.
//!
//! Protocol values are types too ([`GrantType`], [`TokenType`], [`Amr`], [`PendingKind`]), parsed
//! once at the edge and matched exhaustively inside, and Kubernetes' reserved `system:` space is
//! spelled here alone ([`is_reserved`]).
//!
//! Adapters implement the traits defined here, and nothing above this crate knows which
//! implementation it holds: the [`Directory`], the [`Clock`] and [`Random`] (injected, so tests
//! are exact), the [`LoginSource`] a refresh asks again whether a user still may log in, and the
//! store (SQLite today, PostgreSQL later). The store seam is split by concern into four small
//! traits — [`AccountStore`] (accounts, identities, static tokens, and
//! [`AccountStore::apply_account_changes`], the atomic batch the sync worker applies),
//! [`SessionStore`] (sessions and refresh tokens), [`PendingStore`] (single-use records of
//! logins in progress) and [`KeyStore`] (signing keys, revocations, the purge) — and [`Store`]
//! is their union, which callers hold as `Arc<dyn Store>`.

#[macro_use]
mod token;
mod account;
mod clock;
mod directory;
mod duration;
mod error;
mod names;
mod protocol;
mod random;
mod recheck;
mod session;
mod store;

pub use account::{AccountUid, ExternalIdentity, Labels, NewAccount, Provisioning, UserAccount};
pub use clock::{Clock, FixedClock, SystemClock, UnixTime};
pub use directory::{
    AccountProblem, Directory, DirectoryError, DirectoryStatus, DirectoryUser, LoginCandidate,
    normalised_login,
};
pub use duration::HumanDuration;
pub use error::{Error, StoreError};
pub use names::{AccountName, Audience, ClientId, GroupName, LabelKey, Namespace, Principal};
pub use protocol::{
    Amr, GrantType, PendingKind, RESERVED_PREFIX, TokenType, UnknownValue, is_reserved,
};
pub use random::{InsecureCounterRandom, Random};
pub use recheck::{LoginSource, NoRecheck, Recheck, UpstreamRefresh};
pub use session::{
    KeyState, Pending, RefreshContext, RefreshRecord, Revocations, Session, SessionId,
    SessionState, Spend, SpendOutcome, StoredKey,
};
pub use store::{
    AccountChange, AccountChangeOutcome, AccountStore, KeyStore, PendingStore, SessionStore, Store,
    SyncLease, SyncState, SyncStateStore, WorkloadKeyState, WorkloadRevocation, WorkloadStore,
    WorkloadTarget,
};
pub use token::{StaticToken, TokenHash, TokenId};
