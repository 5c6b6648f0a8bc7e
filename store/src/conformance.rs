//! The store conformance suite: the behaviour every [`Store`] owes, written once.
//!
//! Each public `async fn` here checks one behaviour against fresh stores from a
//! [`StoreFactory`], and panics when the store falls short. Between them they cover every method
//! of [`AccountStore`], [`SessionStore`], [`PendingStore`], [`KeyStore`] and [`SyncStateStore`], as their
//! documentation promises it; nothing here knows which implementation it holds, and the checks
//! go through `Arc<dyn Store>`, the way idbridge itself calls a store.
//!
//! A store's own test file runs the whole suite with [`conformance_tests!`](crate::conformance_tests),
//! one `#[tokio::test]` per behaviour so a failure is named:
//!
//! ```ignore
//! struct Fresh(/* a scratch directory, a test database server... */);
//!
//! #[async_trait::async_trait]
//! impl idbridge_store::conformance::StoreFactory for Fresh {
//!     async fn fresh(&self) -> std::sync::Arc<dyn idbridge_core::Store> {
//!         // a new, empty store
//!     }
//! }
//!
//! idbridge_store::conformance_tests!(Fresh::new());
//! ```
//!
//! The SQLite store runs it in `store/tests/conformance.rs`; a later store (PostgreSQL) passes
//! it unchanged. What only one implementation can show (durability across a reopen, schema
//! upgrades, file permissions) stays in that implementation's own tests.
//!
//! [`AccountStore`]: idbridge_core::AccountStore
//! [`SessionStore`]: idbridge_core::SessionStore
//! [`PendingStore`]: idbridge_core::PendingStore
//! [`KeyStore`]: idbridge_core::KeyStore
//! [`SyncStateStore`]: idbridge_core::SyncStateStore

// Conformance checks fail loudly by design.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use async_trait::async_trait;
use idbridge_core::{
    AccountChange, AccountChangeOutcome, AccountName, AccountUid, Amr, ExternalIdentity, KeyState,
    NewAccount, Pending, PendingKind, RefreshRecord, Session, SessionId, Spend, SpendOutcome,
    StaticToken, Store, StoreError, StoredKey, SyncState, TokenHash, TokenId, UnixTime,
    UserAccount, WorkloadKeyState, WorkloadRevocation, WorkloadTarget,
};

/// Makes the stores the suite runs against.
#[async_trait]
pub trait StoreFactory: Send + Sync {
    /// A new, empty store that shares nothing with any other this factory made. It must stay
    /// usable for as long as the factory lives.
    async fn fresh(&self) -> Arc<dyn Store>;
}

/// Runs every case of the suite against the stores `$factory` makes, each case as its own
/// `#[tokio::test]` named after it; `$factory` is evaluated once per case. Use it at the top level
/// of a test file of a crate that depends on `tokio` (with its `macros` and `rt` features).
#[macro_export]
macro_rules! conformance_tests {
    (@run $factory:expr; $($case:ident)*) => {
        $(
            #[tokio::test]
            async fn $case() {
                let factory = $factory;
                $crate::conformance::$case(&factory).await;
            }
        )*
    };
    ($factory:expr) => {
        $crate::conformance_cases!(conformance_tests; @run $factory);
    };
}

/// Calls `$crate::$then!($($args)*; case case ...)` with the name of every case of the suite:
/// the one list of them.
#[doc(hidden)]
#[macro_export]
macro_rules! conformance_cases {
    ($then:ident; $($args:tt)*) => {
        $crate::$then! { $($args)*;
            accounts_round_trip_and_names_are_unique
            accounts_keep_every_field_and_are_found_by_each_identity
            accounts_are_listed_by_name
            updating_an_account_replaces_its_mutable_fields
            a_refused_update_changes_nothing
            a_failing_write_does_not_undo_the_writes_beside_it
            static_tokens_are_found_by_hash_and_revoked_once
            static_tokens_are_listed_newest_first_and_need_their_account
            sessions_are_stored_and_listed_newest_first
            a_refused_session_leaves_nothing_behind
            a_refresh_context_is_the_token_its_session_and_its_account
            a_refresh_token_is_spent_once_however_many_try_at_once
            spending_stores_the_next_token_and_refuses_a_reuse
            the_sealed_next_pair_lasts_until_its_grace_window_is_purged
            revoked_sessions_cannot_be_refreshed_and_are_listed_until_they_end
            revoking_a_missing_session_is_not_found
            revoking_a_user_revokes_only_their_live_sessions
            pending_records_are_used_once_and_expire
            a_pending_record_is_used_once_however_many_try_at_once
            pending_keys_and_aliases_are_unique_and_expiry_hides_records
            signing_keys_are_replaced_as_a_whole_set
            revoked_jtis_are_listed_until_the_latest_expiry
            purge_deletes_only_what_has_ended
            a_batch_applies_every_change_in_order
            a_failing_change_applies_none_of_the_batch
            disabling_in_a_batch_revokes_only_the_accounts_live_sessions
            sync_state_starts_empty_and_is_replaced_whole
            one_runner_holds_the_sync_lease_until_it_ends_or_is_given_up
            workload_revocations_name_a_pod_a_serviceaccount_or_a_principal
            workload_key_states_change_only_from_the_state_expected
        }
    };
}

/// Names the cases (a `;` then identifiers) as strings.
#[doc(hidden)]
#[macro_export]
macro_rules! conformance_case_names {
    (; $($case:ident)*) => {
        &[$(stringify!($case)),*]
    };
}

/// The name of every case of the suite, as [`conformance_tests!`](crate::conformance_tests) names
/// its tests.
pub const CASES: &[&str] = conformance_cases!(conformance_case_names;);

fn name(s: &str) -> AccountName {
    s.parse().unwrap()
}

fn directory(id: &str) -> ExternalIdentity {
    ExternalIdentity::Directory { id: id.into() }
}

async fn named(s: &Arc<dyn Store>, n: &str) -> UserAccount {
    s.create_account(NewAccount::named(name(n)), UnixTime(1))
        .await
        .unwrap()
}

fn record(session: SessionId, byte: u8) -> RefreshRecord {
    RefreshRecord::fresh(TokenHash([byte; 32]), session, UnixTime(10))
}

/// A live session of `account` from `created_at` to `expires_at`, not yet stored.
fn session_of(account: AccountUid, created_at: i64, expires_at: i64) -> Session {
    Session {
        id: SessionId::random(),
        account,
        client_id: "idbridge-cli".parse().unwrap(),
        amr: vec![Amr::Static],
        audience: "kubernetes".parse().unwrap(),
        scope: String::new(),
        login_groups: vec!["proxied".into()],
        created_at: UnixTime(created_at),
        last_used_at: UnixTime(created_at),
        expires_at: UnixTime(expires_at),
        revoked_at: None,
        revoked_reason: None,
    }
}

/// A session of a new account "alice", alive from 10 to 1000, its first refresh token `[1; 32]`.
async fn session_fixture(s: &Arc<dyn Store>) -> Session {
    let a = named(s, "alice").await;
    let session = session_of(a.uid, 10, 1000);
    s.create_session(&session, &record(session.id, 1))
        .await
        .unwrap();
    session
}

/// Stores a session of `account` with the refresh token `[byte; 32]`.
async fn stored_session(
    s: &Arc<dyn Store>,
    account: AccountUid,
    expires_at: i64,
    byte: u8,
) -> Session {
    let session = session_of(account, 10, expires_at);
    s.create_session(&session, &record(session.id, byte))
        .await
        .unwrap();
    session
}

fn spend(session: SessionId, old: u8, next: u8) -> Spend {
    Spend {
        old: TokenHash([old; 32]),
        at: UnixTime(20),
        grace_until: UnixTime(25),
        sealed: vec![next],
        login_groups: None,
        next: record(session, next),
    }
}

fn pending(key: u8, alias: Option<&str>, expires_at: i64) -> Pending {
    Pending {
        key: TokenHash([key; 32]),
        alias: alias.map(str::to_owned),
        kind: PendingKind::Device,
        data: "{}".into(),
        expires_at: UnixTime(expires_at),
        used_at: None,
        session: None,
    }
}

fn token(account: AccountUid, created_at: i64) -> StaticToken {
    StaticToken {
        id: TokenId::random(),
        account,
        description: "ci".into(),
        created_at: UnixTime(created_at),
        expires_at: None,
        revoked_at: None,
    }
}

fn key(kid: &str, created_at: i64, state: KeyState) -> StoredKey {
    StoredKey {
        kid: kid.into(),
        private: kid.as_bytes().to_vec(),
        sealed_by: None,
        state,
        created_at: UnixTime(created_at),
        activated_at: None,
        retire_after: None,
    }
}

/// The change index and the error of a failed batch.
fn batch_failure<T: std::fmt::Debug>(r: Result<T, StoreError>) -> (usize, StoreError) {
    match r {
        Err(StoreError::InBatch { index, error }) => (index, *error),
        other => panic!("expected a failed batch, got {other:?}"),
    }
}

// Accounts and identities.

/// Created accounts are found by UID and name; a taken name or identity is a `Conflict` that
/// leaves nothing behind; an update renames and disables.
pub async fn accounts_round_trip_and_names_are_unique(f: &dyn StoreFactory) {
    let s = f.fresh().await;
    let mut new = NewAccount::named("alice".parse().unwrap());
    new.groups.insert("dev".parse().unwrap());
    new.identities
        .insert(ExternalIdentity::Directory { id: "g1".into() });
    let a = s.create_account(new.clone(), UnixTime(10)).await.unwrap();
    assert_eq!(s.account(a.uid).await.unwrap().unwrap(), a);
    assert!(matches!(
        s.create_account(NewAccount::named("alice".parse().unwrap()), UnixTime(11))
            .await,
        Err(StoreError::Conflict(_))
    ));
    let mut other = NewAccount::named("bob".parse().unwrap());
    other.identities = new.identities.clone();
    assert!(matches!(
        s.create_account(other, UnixTime(11)).await,
        Err(StoreError::Conflict(_))
    ));
    // the failed insert left nothing behind
    assert_eq!(s.accounts().await.unwrap().len(), 1);
    let mut renamed = a.clone();
    renamed.name = "alice2".parse().unwrap();
    renamed.disabled = true;
    s.update_account(&renamed).await.unwrap();
    let got = s
        .account_by_name(&"alice2".parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.uid, a.uid);
    assert!(got.disabled);
}

/// Every field of a new account is kept; it is found by each of its identities, and lookups of
/// what does not exist find nothing.
pub async fn accounts_keep_every_field_and_are_found_by_each_identity(f: &dyn StoreFactory) {
    let s = f.fresh().await;
    let mut new = NewAccount::named(name("alice"));
    new.groups.insert("dev".parse().unwrap());
    new.groups.insert("ops".parse().unwrap());
    new.labels
        .insert("example.com/team".parse().unwrap(), "blue".into());
    new.default_namespace = Some("dev".parse().unwrap());
    new.disabled = true;
    let ids = [
        directory("d1"),
        ExternalIdentity::Kerberos {
            principal: "alice@EXAMPLE.COM".parse().unwrap(),
        },
        ExternalIdentity::Oidc {
            iss: "https://idp.example.com".into(),
            sub: "42".into(),
        },
    ];
    new.identities.extend(ids.iter().cloned());
    let a = s.create_account(new.clone(), UnixTime(10)).await.unwrap();
    let other = named(&s, "bob").await;
    assert_ne!(a.uid, other.uid, "every account gets a fresh UID");
    assert_eq!(
        (
            &a.name,
            &a.groups,
            &a.labels,
            &a.default_namespace,
            a.disabled,
            &a.identities,
            a.created_at
        ),
        (
            &new.name,
            &new.groups,
            &new.labels,
            &new.default_namespace,
            true,
            &new.identities,
            UnixTime(10)
        )
    );
    assert_eq!(s.account(a.uid).await.unwrap(), Some(a.clone()));
    assert_eq!(
        s.account_by_name(&name("alice")).await.unwrap(),
        Some(a.clone())
    );
    for id in &ids {
        assert_eq!(
            s.account_by_identity(id).await.unwrap(),
            Some(a.clone()),
            "{id:?}"
        );
    }
    assert_eq!(s.account(AccountUid::random()).await.unwrap(), None);
    assert_eq!(s.account_by_name(&name("nobody")).await.unwrap(), None);
    assert_eq!(s.account_by_identity(&directory("d2")).await.unwrap(), None);
}

/// `accounts` lists every account, ordered by name.
pub async fn accounts_are_listed_by_name(f: &dyn StoreFactory) {
    let s = f.fresh().await;
    assert!(s.accounts().await.unwrap().is_empty());
    for n in ["carol", "alice", "bob"] {
        named(&s, n).await;
    }
    let names: Vec<String> = s
        .accounts()
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.name.as_str().to_owned())
        .collect();
    assert_eq!(names, ["alice", "bob", "carol"]);
}

/// An update replaces name, groups, labels, namespace, disabled and identities (an identity
/// dropped no longer finds the account); the UID and creation time stay.
pub async fn updating_an_account_replaces_its_mutable_fields(f: &dyn StoreFactory) {
    let s = f.fresh().await;
    let mut new = NewAccount::named(name("alice"));
    new.groups.insert("dev".parse().unwrap());
    new.identities.insert(directory("d1"));
    let a = s.create_account(new, UnixTime(10)).await.unwrap();
    let mut changed = a.clone();
    changed.name = name("alice2");
    changed.groups = ["ops".parse().unwrap()].into();
    changed.labels.insert("team".parse().unwrap(), "red".into());
    changed.default_namespace = Some("ops".parse().unwrap());
    changed.disabled = true;
    changed.identities = [directory("d2")].into();
    changed.created_at = UnixTime(99);
    s.update_account(&changed).await.unwrap();
    let got = s.account(a.uid).await.unwrap().unwrap();
    assert_eq!(
        got,
        UserAccount {
            created_at: UnixTime(10),
            ..changed.clone()
        }
    );
    assert_eq!(s.account_by_name(&name("alice")).await.unwrap(), None);
    assert_eq!(s.account_by_identity(&directory("d1")).await.unwrap(), None);
    assert_eq!(
        s.account_by_identity(&directory("d2")).await.unwrap(),
        Some(got)
    );
}

/// Updating a missing account is `NotFound`; taking another account's name or identity is a
/// `Conflict`; either way nothing changes.
pub async fn a_refused_update_changes_nothing(f: &dyn StoreFactory) {
    let s = f.fresh().await;
    let mut new = NewAccount::named(name("alice"));
    new.identities.insert(directory("d1"));
    let alice = s.create_account(new, UnixTime(1)).await.unwrap();
    let mut new = NewAccount::named(name("bob"));
    new.identities.insert(directory("d2"));
    let bob = s.create_account(new, UnixTime(1)).await.unwrap();

    let ghost = UserAccount {
        uid: AccountUid::random(),
        name: name("ghost"),
        identities: [directory("d-ghost")].into(),
        ..alice.clone()
    };
    assert!(matches!(
        s.update_account(&ghost).await,
        Err(StoreError::NotFound(_))
    ));
    let mut taken_name = bob.clone();
    taken_name.name = name("alice");
    assert!(matches!(
        s.update_account(&taken_name).await,
        Err(StoreError::Conflict(_))
    ));
    // The account row could be written before its identities collide: it must not stay.
    let mut taken_identity = bob.clone();
    taken_identity.name = name("bobby");
    taken_identity.groups.insert("dev".parse().unwrap());
    taken_identity.identities.insert(directory("d1"));
    assert!(matches!(
        s.update_account(&taken_identity).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(s.account(bob.uid).await.unwrap(), Some(bob.clone()));
    assert_eq!(s.account(alice.uid).await.unwrap(), Some(alice.clone()));
    assert_eq!(s.account_by_name(&name("bobby")).await.unwrap(), None);
    assert_eq!(
        s.account_by_identity(&directory("d1")).await.unwrap(),
        Some(alice)
    );
    assert_eq!(s.accounts().await.unwrap().len(), 2);
}

/// Writes issued together succeed or fail each on its own: one refused write neither undoes the
/// others nor leaves any of itself behind.
pub async fn a_failing_write_does_not_undo_the_writes_beside_it(f: &dyn StoreFactory) {
    let s = f.fresh().await;
    // Queued together, these may share one transaction; the duplicate fails inside it.
    let mut dup = NewAccount::named("dup".parse().unwrap());
    dup.identities
        .insert(ExternalIdentity::Directory { id: "d1".into() });
    s.create_account(dup.clone(), UnixTime(1)).await.unwrap();
    // A new name, so its account row is written, then its identity collides.
    let mut again = dup.clone();
    again.name = "dup2".parse().unwrap();
    let tries: Vec<_> = (0..10)
        .map(|i| {
            let s = s.clone();
            let new = if i == 5 {
                again.clone()
            } else {
                NewAccount::named(format!("user{i}").parse().unwrap())
            };
            tokio::spawn(async move { s.create_account(new, UnixTime(2)).await })
        })
        .collect();
    let mut conflicts = 0;
    for t in tries {
        match t.await.unwrap() {
            Ok(_) => {}
            Err(StoreError::Conflict(_)) => conflicts += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(conflicts, 1);
    assert_eq!(s.accounts().await.unwrap().len(), 10);
    // The refused account's row was rolled back with its identity.
    let dup2 = "dup2".parse().unwrap();
    assert_eq!(s.account_by_name(&dup2).await.unwrap(), None);
    let d1 = ExternalIdentity::Directory { id: "d1".into() };
    let found = s.account_by_identity(&d1).await.unwrap().unwrap();
    assert_eq!(found.name.as_str(), "dup");
}

// Static tokens.

/// A static token is found by the hash of its secret; revoking keeps the first time; revoking a
/// missing token is `NotFound`.
pub async fn static_tokens_are_found_by_hash_and_revoked_once(f: &dyn StoreFactory) {
    let s = f.fresh().await;
    let a = s
        .create_account(NewAccount::named("robot".parse().unwrap()), UnixTime(1))
        .await
        .unwrap();
    let t = StaticToken {
        id: TokenId::random(),
        account: a.uid,
        description: "ci".into(),
        created_at: UnixTime(1),
        expires_at: None,
        revoked_at: None,
    };
    s.create_static_token(&t, TokenHash([7; 32])).await.unwrap();
    assert_eq!(
        s.static_token_by_hash(TokenHash([7; 32])).await.unwrap(),
        Some(t.clone())
    );
    assert_eq!(
        s.static_token_by_hash(TokenHash([8; 32])).await.unwrap(),
        None
    );
    let r = s.revoke_static_token(t.id, UnixTime(5)).await.unwrap();
    assert_eq!(r.revoked_at, Some(UnixTime(5)));
    let r = s.revoke_static_token(t.id, UnixTime(9)).await.unwrap();
    assert_eq!(r.revoked_at, Some(UnixTime(5)));
    assert!(matches!(
        s.revoke_static_token(TokenId::random(), UnixTime(9)).await,
        Err(StoreError::NotFound(_))
    ));
}

/// Static tokens are listed newest first, all or one account's; a token needs its account
/// (`NotFound`), and its id and hash are unique (`Conflict`).
pub async fn static_tokens_are_listed_newest_first_and_need_their_account(f: &dyn StoreFactory) {
    let s = f.fresh().await;
    let a = named(&s, "robot").await;
    let b = named(&s, "other").await;
    let (t1, t2, t3) = (token(a.uid, 1), token(b.uid, 2), token(a.uid, 3));
    for (t, h) in [(&t1, 1), (&t2, 2), (&t3, 3)] {
        s.create_static_token(t, TokenHash([h; 32])).await.unwrap();
    }
    assert_eq!(
        s.static_tokens(None).await.unwrap(),
        [t3.clone(), t2.clone(), t1.clone()]
    );
    assert_eq!(
        s.static_tokens(Some(a.uid)).await.unwrap(),
        [t3.clone(), t1.clone()]
    );
    assert!(
        s.static_tokens(Some(AccountUid::random()))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(matches!(
        s.create_static_token(&token(AccountUid::random(), 4), TokenHash([4; 32]))
            .await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        s.create_static_token(&token(a.uid, 5), TokenHash([1; 32]))
            .await,
        Err(StoreError::Conflict(_))
    ));
    let same_id = StaticToken {
        created_at: UnixTime(6),
        ..t1.clone()
    };
    assert!(matches!(
        s.create_static_token(&same_id, TokenHash([6; 32])).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(s.static_tokens(None).await.unwrap().len(), 3);
    let revoked = s.revoke_static_token(t1.id, UnixTime(7)).await.unwrap();
    assert_eq!(s.static_tokens(Some(a.uid)).await.unwrap(), [t3, revoked]);
}

// Sessions and refresh tokens.

/// Sessions are found by id and listed newest first, all or one account's; the first refresh
/// token is stored with its session.
pub async fn sessions_are_stored_and_listed_newest_first(f: &dyn StoreFactory) {
    let s = f.fresh().await;
    let a = named(&s, "alice").await;
    let b = named(&s, "bob").await;
    let mut made = Vec::new();
    for (account, at, byte) in [(a.uid, 10, 1), (a.uid, 20, 2), (b.uid, 30, 3)] {
        let mut session = session_of(account, at, 1000);
        session.scope = "openid groups".into();
        session.amr = vec![Amr::Krb5, Amr::Ldap];
        s.create_session(&session, &record(session.id, byte))
            .await
            .unwrap();
        made.push(session);
    }
    for session in &made {
        assert_eq!(s.session(session.id).await.unwrap().as_ref(), Some(session));
    }
    assert_eq!(s.session(SessionId::random()).await.unwrap(), None);
    assert_eq!(
        s.sessions(None).await.unwrap(),
        [made[2].clone(), made[1].clone(), made[0].clone()]
    );
    assert_eq!(
        s.sessions(Some(a.uid)).await.unwrap(),
        [made[1].clone(), made[0].clone()]
    );
    assert!(
        s.sessions(Some(AccountUid::random()))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        s.refresh_token(TokenHash([2; 32])).await.unwrap(),
        Some(record(made[1].id, 2))
    );
    assert_eq!(s.refresh_token(TokenHash([9; 32])).await.unwrap(), None);
}

/// A session of a missing account is `NotFound`; a taken session id or refresh token is a
/// `Conflict`; neither leaves anything behind.
pub async fn a_refused_session_leaves_nothing_behind(f: &dyn StoreFactory) {
    let s = f.fresh().await;
    let first = session_fixture(&s).await;
    let orphan = session_of(AccountUid::random(), 10, 1000);
    assert!(matches!(
        s.create_session(&orphan, &record(orphan.id, 2)).await,
        Err(StoreError::NotFound(_))
    ));
    let same_id = session_of(first.account, 11, 1000);
    let same_id = Session {
        id: first.id,
        ..same_id
    };
    assert!(matches!(
        s.create_session(&same_id, &record(first.id, 3)).await,
        Err(StoreError::Conflict(_))
    ));
    // The session row could be written before its token collides: it must not stay.
    let taken_token = session_of(first.account, 12, 1000);
    assert!(matches!(
        s.create_session(&taken_token, &record(taken_token.id, 1))
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        s.sessions(None).await.unwrap(),
        std::slice::from_ref(&first)
    );
    assert_eq!(s.session(taken_token.id).await.unwrap(), None);
    for byte in [2, 3] {
        assert_eq!(s.refresh_token(TokenHash([byte; 32])).await.unwrap(), None);
    }
    assert_eq!(
        s.refresh_token(TokenHash([1; 32])).await.unwrap(),
        Some(record(first.id, 1))
    );
}

/// `refresh_context` finds a refresh token with its session and the session's account.
pub async fn a_refresh_context_is_the_token_its_session_and_its_account(f: &dyn StoreFactory) {
    let s = f.fresh().await;
    let session = session_fixture(&s).await;
    let account = s.account(session.account).await.unwrap();
    let ctx = s
        .refresh_context(TokenHash([1; 32]))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ctx.record, record(session.id, 1));
    assert_eq!(ctx.session, Some(session));
    assert_eq!(ctx.account, account);
    assert_eq!(s.refresh_context(TokenHash([2; 32])).await.unwrap(), None);
}

/// Of many spends of one refresh token at once, exactly one wins; the spend is recorded with
/// its grace window and sealed next pair, and the session marked used.
pub async fn a_refresh_token_is_spent_once_however_many_try_at_once(f: &dyn StoreFactory) {
    let s = f.fresh().await;
    let session = session_fixture(&s).await;
    assert_eq!(s.session(session.id).await.unwrap(), Some(session.clone()));
    let tries: Vec<_> = (0..20u8)
        .map(|i| {
            let s = s.clone();
            let sp = spend(session.id, 1, 100 + i);
            tokio::spawn(async move { s.spend_refresh(&sp).await.unwrap() })
        })
        .collect();
    let mut won = 0;
    for t in tries {
        if t.await.unwrap() == SpendOutcome::Spent {
            won += 1;
        }
    }
    assert_eq!(won, 1);
    let old = s.refresh_token(TokenHash([1; 32])).await.unwrap().unwrap();
    assert_eq!(old.spent_at, Some(UnixTime(20)));
    assert_eq!(old.grace_until, Some(UnixTime(25)));
    let winner = old.grace_sealed.unwrap()[0];
    assert!(
        s.refresh_token(TokenHash([winner; 32]))
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(
        s.session(session.id).await.unwrap().unwrap().last_used_at,
        UnixTime(20)
    );
    // The grace pair is purged once the window is over; the spend itself is remembered.
    s.purge(UnixTime(25)).await.unwrap();
    let old = s.refresh_token(TokenHash([1; 32])).await.unwrap().unwrap();
    assert!(old.grace_sealed.is_none() && old.spent_at.is_some());
}

/// A spend stores the next token (unspent, spendable in turn) and the new login groups; a
/// second spend of the same token, or of an unknown one, is `Lost` and changes nothing.
pub async fn spending_stores_the_next_token_and_refuses_a_reuse(f: &dyn StoreFactory) {
    let s = f.fresh().await;
    let session = session_fixture(&s).await;
    let mut first = spend(session.id, 1, 2);
    first.next.upstream_sealed = Some(b"upstream".to_vec());
    assert_eq!(s.spend_refresh(&first).await.unwrap(), SpendOutcome::Spent);
    assert_eq!(
        s.refresh_token(TokenHash([2; 32])).await.unwrap(),
        Some(first.next.clone())
    );
    let old = s.refresh_token(TokenHash([1; 32])).await.unwrap().unwrap();
    assert_eq!(
        (old.spent_at, old.grace_until, old.grace_sealed.as_deref()),
        (Some(UnixTime(20)), Some(UnixTime(25)), Some(&[2u8][..]))
    );
    let used = s.session(session.id).await.unwrap().unwrap();
    assert_eq!(
        used,
        Session {
            last_used_at: UnixTime(20),
            ..session.clone()
        },
        "no new login groups: the old ones stay"
    );

    // A reuse of the spent token loses, and stores nothing.
    let reuse = Spend {
        at: UnixTime(21),
        ..spend(session.id, 1, 3)
    };
    assert_eq!(s.spend_refresh(&reuse).await.unwrap(), SpendOutcome::Lost);
    assert_eq!(s.refresh_token(TokenHash([3; 32])).await.unwrap(), None);
    assert_eq!(
        s.refresh_token(TokenHash([1; 32])).await.unwrap(),
        Some(old)
    );
    assert_eq!(s.session(session.id).await.unwrap(), Some(used));
    assert_eq!(
        s.spend_refresh(&spend(session.id, 9, 4)).await.unwrap(),
        SpendOutcome::Lost,
        "an unknown token"
    );
    assert_eq!(s.refresh_token(TokenHash([4; 32])).await.unwrap(), None);

    // The next token is spent in turn, here with the login's groups read again.
    let mut second = Spend {
        at: UnixTime(30),
        grace_until: UnixTime(35),
        ..spend(session.id, 2, 5)
    };
    second.login_groups = Some(vec!["re-read".into()]);
    assert_eq!(s.spend_refresh(&second).await.unwrap(), SpendOutcome::Spent);
    let again = s.session(session.id).await.unwrap().unwrap();
    assert_eq!(again.last_used_at, UnixTime(30));
    assert_eq!(again.login_groups, ["re-read"]);
}

/// The sealed next pair of a spent token is kept through its grace window (a repeat of the
/// spend can be answered with it) and forgotten by the first purge after it.
pub async fn the_sealed_next_pair_lasts_until_its_grace_window_is_purged(f: &dyn StoreFactory) {
    let s = f.fresh().await;
    let session = session_fixture(&s).await;
    assert_eq!(
        s.spend_refresh(&spend(session.id, 1, 2)).await.unwrap(),
        SpendOutcome::Spent
    );
    s.purge(UnixTime(24)).await.unwrap();
    let old = s.refresh_token(TokenHash([1; 32])).await.unwrap().unwrap();
    assert_eq!(old.grace_sealed.as_deref(), Some(&[2u8][..]));
    s.purge(UnixTime(25)).await.unwrap();
    let old = s.refresh_token(TokenHash([1; 32])).await.unwrap().unwrap();
    assert_eq!(
        (old.spent_at, old.grace_until, old.grace_sealed),
        (Some(UnixTime(20)), Some(UnixTime(25)), None)
    );
    assert!(s.refresh_token(TokenHash([2; 32])).await.unwrap().is_some());
}

/// A revoked session keeps its first revocation, cannot be refreshed, and is listed among the
/// revocations until it would have ended; then it is purged with its refresh tokens.
pub async fn revoked_sessions_cannot_be_refreshed_and_are_listed_until_they_end(
    f: &dyn StoreFactory,
) {
    let s = f.fresh().await;
    let session = session_fixture(&s).await;
    let r = s
        .revoke_session(session.id, "test", UnixTime(15))
        .await
        .unwrap();
    assert_eq!(r.revoked_at, Some(UnixTime(15)));
    let again = s
        .revoke_session(session.id, "later", UnixTime(16))
        .await
        .unwrap();
    assert_eq!(again.revoked_reason.as_deref(), Some("test"));
    assert_eq!(
        s.spend_refresh(&spend(session.id, 1, 2)).await.unwrap(),
        SpendOutcome::Lost
    );
    s.revoke_jti("j1", UnixTime(500), UnixTime(15))
        .await
        .unwrap();
    let list = s.revocations(UnixTime(100)).await.unwrap();
    assert_eq!(list.sessions, vec![session.id]);
    assert_eq!(list.jtis, vec!["j1".to_owned()]);
    let later = s.revocations(UnixTime(1000)).await.unwrap();
    assert!(later.sessions.is_empty() && later.jtis.is_empty());
    assert!(s.purge(UnixTime(1000)).await.unwrap() >= 2);
    assert_eq!(s.session(session.id).await.unwrap(), None);
    assert!(s.refresh_token(TokenHash([1; 32])).await.unwrap().is_none());
}

/// Revoking a session that does not exist is `NotFound`.
pub async fn revoking_a_missing_session_is_not_found(f: &dyn StoreFactory) {
    let s = f.fresh().await;
    assert!(matches!(
        s.revoke_session(SessionId::random(), "r", UnixTime(1))
            .await,
        Err(StoreError::NotFound(_))
    ));
}

/// Revoking an account's sessions revokes its live ones only: not another account's, not one
/// already ended or revoked (which keeps its reason).
pub async fn revoking_a_user_revokes_only_their_live_sessions(f: &dyn StoreFactory) {
    let s = f.fresh().await;
    let session = session_fixture(&s).await;
    assert_eq!(
        s.revoke_account_sessions(session.account, "r", UnixTime(30))
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        s.revoke_account_sessions(session.account, "r", UnixTime(31))
            .await
            .unwrap(),
        0
    );
    assert_eq!(s.sessions(Some(session.account)).await.unwrap().len(), 1);

    let bob = named(&s, "bob").await;
    let carol = named(&s, "carol").await;
    let sessions = MixedSessions::store(&s, bob.uid, carol.uid, 10).await;
    assert_eq!(
        s.revoke_account_sessions(bob.uid, "offboarded", UnixTime(50))
            .await
            .unwrap(),
        1
    );
    sessions.only_the_live_one_was_revoked_at_50(&s).await;
}

/// bob's sessions at time 50, of every kind a revocation of his sessions must tell apart: one
/// live, one ended at 40, one already revoked at 35 ("earlier"); and carol's live one.
struct MixedSessions {
    live: Session,
    ended: Session,
    earlier: Session,
    others: Session,
}

impl MixedSessions {
    async fn store(s: &Arc<dyn Store>, bob: AccountUid, carol: AccountUid, byte: u8) -> Self {
        let live = stored_session(s, bob, 1000, byte).await;
        let ended = stored_session(s, bob, 40, byte + 1).await;
        let earlier = stored_session(s, bob, 1000, byte + 2).await;
        s.revoke_session(earlier.id, "earlier", UnixTime(35))
            .await
            .unwrap();
        let others = stored_session(s, carol, 1000, byte + 3).await;
        Self {
            live,
            ended,
            earlier,
            others,
        }
    }

    /// After bob was offboarded at 50: the live session revoked then, the others as they were.
    async fn only_the_live_one_was_revoked_at_50(self, s: &Arc<dyn Store>) {
        let live = s.session(self.live.id).await.unwrap().unwrap();
        assert_eq!(
            (live.revoked_at, live.revoked_reason.as_deref()),
            (Some(UnixTime(50)), Some("offboarded"))
        );
        assert_eq!(s.session(self.ended.id).await.unwrap(), Some(self.ended));
        let earlier = s.session(self.earlier.id).await.unwrap().unwrap();
        assert_eq!(
            (earlier.revoked_at, earlier.revoked_reason.as_deref()),
            (Some(UnixTime(35)), Some("earlier"))
        );
        assert_eq!(s.session(self.others.id).await.unwrap(), Some(self.others));
    }
}

// Logins in progress.

/// A pending record is found by key and alias, updated while unused, used once (a second use is
/// told apart and shows the session the first started), and gone once expired.
pub async fn pending_records_are_used_once_and_expire(f: &dyn StoreFactory) {
    let s = f.fresh().await;
    let p = Pending {
        key: TokenHash([7; 32]),
        alias: Some("ABCD-EFGH".into()),
        kind: PendingKind::Device,
        data: "{}".into(),
        expires_at: UnixTime(200),
        used_at: None,
        session: None,
    };
    s.put_pending(&p).await.unwrap();
    assert!(s.put_pending(&p).await.is_err(), "keys are unique");
    assert_eq!(
        s.pending_by_alias("ABCD-EFGH", UnixTime(100))
            .await
            .unwrap(),
        Some(p.clone())
    );
    assert!(
        s.update_pending(p.key, r#"{"ok":1}"#, UnixTime(100))
            .await
            .unwrap()
    );
    let (used, first) = s.use_pending(p.key, UnixTime(101)).await.unwrap().unwrap();
    assert!(first);
    assert_eq!(used.used_at, Some(UnixTime(101)));
    assert_eq!(used.data, r#"{"ok":1}"#);
    assert!(
        !s.update_pending(p.key, "{}", UnixTime(102)).await.unwrap(),
        "used: frozen"
    );
    let sid = SessionId::random();
    s.set_pending_session(p.key, sid).await.unwrap();
    let (again, first) = s.use_pending(p.key, UnixTime(102)).await.unwrap().unwrap();
    assert!(!first, "a second use is told apart");
    assert_eq!(again.session, Some(sid));
    // Expired: gone for every reader, and purged.
    assert_eq!(s.pending(p.key, UnixTime(200)).await.unwrap(), None);
    let q = Pending {
        key: TokenHash([8; 32]),
        alias: None,
        ..p.clone()
    };
    s.put_pending(&q).await.unwrap();
    assert_eq!(s.use_pending(q.key, UnixTime(300)).await.unwrap(), None);
    assert!(s.purge(UnixTime(300)).await.unwrap() >= 2);
    assert_eq!(
        s.use_pending(TokenHash([9; 32]), UnixTime(1))
            .await
            .unwrap(),
        None
    );
}

/// Of many uses of one pending record at once, exactly one is the first.
pub async fn a_pending_record_is_used_once_however_many_try_at_once(f: &dyn StoreFactory) {
    let s = f.fresh().await;
    let p = pending(7, None, 200);
    s.put_pending(&p).await.unwrap();
    let tries: Vec<_> = (0..20)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move { s.use_pending(TokenHash([7; 32]), UnixTime(100)).await })
        })
        .collect();
    let mut firsts = 0;
    for t in tries {
        let (used, first) = t.await.unwrap().unwrap().unwrap();
        assert_eq!(used.used_at, Some(UnixTime(100)));
        firsts += usize::from(first);
    }
    assert_eq!(firsts, 1);
    let stored = s.pending(p.key, UnixTime(150)).await.unwrap().unwrap();
    assert_eq!(
        stored.used_at,
        Some(UnixTime(100)),
        "used or not, it is found"
    );
}

/// Keys and aliases are unique (`Conflict`); an expired record is found by neither, can be
/// neither updated nor used; unknown keys and aliases find nothing.
pub async fn pending_keys_and_aliases_are_unique_and_expiry_hides_records(f: &dyn StoreFactory) {
    let s = f.fresh().await;
    let p = pending(1, Some("BCDF-GHJK"), 200);
    s.put_pending(&p).await.unwrap();
    assert!(matches!(
        s.put_pending(&pending(1, None, 300)).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        s.put_pending(&pending(2, Some("BCDF-GHJK"), 300)).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        s.pending(TokenHash([2; 32]), UnixTime(1)).await.unwrap(),
        None
    );
    // Records without an alias do not collide with one another.
    s.put_pending(&pending(3, None, 300)).await.unwrap();
    s.put_pending(&pending(4, None, 300)).await.unwrap();

    assert_eq!(
        s.pending(p.key, UnixTime(199)).await.unwrap(),
        Some(p.clone())
    );
    assert_eq!(s.pending(p.key, UnixTime(200)).await.unwrap(), None);
    assert_eq!(
        s.pending_by_alias("BCDF-GHJK", UnixTime(200))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        s.pending_by_alias("XXXX-XXXX", UnixTime(1)).await.unwrap(),
        None
    );
    assert!(!s.update_pending(p.key, "{}", UnixTime(200)).await.unwrap());
    assert!(
        !s.update_pending(TokenHash([9; 32]), "{}", UnixTime(1))
            .await
            .unwrap()
    );
    assert_eq!(s.use_pending(p.key, UnixTime(200)).await.unwrap(), None);
    assert_eq!(
        s.pending(p.key, UnixTime(150)).await.unwrap(),
        Some(p),
        "neither the late update nor the late use changed it"
    );
}

// Signing keys and revocations.

/// The key set is replaced as a whole and listed oldest first with every field; a set with a
/// duplicate key id is a `Conflict` that leaves the previous set.
pub async fn signing_keys_are_replaced_as_a_whole_set(f: &dyn StoreFactory) {
    let s = f.fresh().await;
    assert!(s.signing_keys().await.unwrap().is_empty());
    let next = key("k2", 5, KeyState::Next);
    let current = StoredKey {
        sealed_by: Some("kek-1".into()),
        activated_at: Some(UnixTime(3)),
        ..key("k1", 3, KeyState::Current)
    };
    let retired = StoredKey {
        activated_at: Some(UnixTime(1)),
        retire_after: Some(UnixTime(90)),
        ..key("k0", 1, KeyState::Retired)
    };
    s.replace_signing_keys(&[next.clone(), current.clone(), retired.clone()])
        .await
        .unwrap();
    assert_eq!(
        s.signing_keys().await.unwrap(),
        [retired, current.clone(), next.clone()]
    );
    let newer = key("k3", 7, KeyState::Next);
    s.replace_signing_keys(&[current.clone(), next.clone(), newer.clone()])
        .await
        .unwrap();
    assert_eq!(
        s.signing_keys().await.unwrap(),
        [current.clone(), next.clone(), newer.clone()]
    );
    let dup = key("k3", 8, KeyState::Next);
    assert!(matches!(
        s.replace_signing_keys(&[key("k9", 9, KeyState::Current), newer.clone(), dup])
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(s.signing_keys().await.unwrap(), [current, next, newer]);
    s.replace_signing_keys(&[]).await.unwrap();
    assert!(s.signing_keys().await.unwrap().is_empty());
}

/// A revoked `jti` is listed while it could still be presented; revoking it again keeps the
/// later expiry.
pub async fn revoked_jtis_are_listed_until_the_latest_expiry(f: &dyn StoreFactory) {
    let s = f.fresh().await;
    assert_eq!(
        s.revocations(UnixTime(1)).await.unwrap(),
        idbridge_core::Revocations::default()
    );
    s.revoke_jti("j1", UnixTime(500), UnixTime(10))
        .await
        .unwrap();
    s.revoke_jti("j2", UnixTime(100), UnixTime(10))
        .await
        .unwrap();
    s.revoke_jti("j1", UnixTime(300), UnixTime(20))
        .await
        .unwrap();
    let mut jtis = s.revocations(UnixTime(99)).await.unwrap().jtis;
    jtis.sort();
    assert_eq!(jtis, ["j1", "j2"]);
    assert_eq!(s.revocations(UnixTime(100)).await.unwrap().jtis, ["j1"]);
    assert_eq!(
        s.revocations(UnixTime(499)).await.unwrap().jtis,
        ["j1"],
        "an earlier expiry does not shorten a revocation"
    );
    s.revoke_jti("j1", UnixTime(800), UnixTime(30))
        .await
        .unwrap();
    assert_eq!(s.revocations(UnixTime(700)).await.unwrap().jtis, ["j1"]);
    assert!(s.revocations(UnixTime(800)).await.unwrap().jtis.is_empty());
    // Unrevoked sessions are not revocations.
    session_fixture(&s).await;
    assert!(
        s.revocations(UnixTime(1))
            .await
            .unwrap()
            .sessions
            .is_empty()
    );
}

/// A purge deletes sessions (with their refresh tokens), revoked `jti`s and pending records that
/// ended by then, forgets sealed next pairs whose grace window is over, and keeps the rest.
pub async fn purge_deletes_only_what_has_ended(f: &dyn StoreFactory) {
    let s = f.fresh().await;
    let a = named(&s, "alice").await;
    let ended = stored_session(&s, a.uid, 100, 1).await;
    let revoked_ended = stored_session(&s, a.uid, 100, 2).await;
    s.revoke_session(revoked_ended.id, "r", UnixTime(50))
        .await
        .unwrap();
    let live = stored_session(&s, a.uid, 101, 3).await;
    s.revoke_jti("gone", UnixTime(100), UnixTime(1))
        .await
        .unwrap();
    s.revoke_jti("kept", UnixTime(101), UnixTime(1))
        .await
        .unwrap();
    s.put_pending(&pending(1, Some("GONE"), 100)).await.unwrap();
    s.put_pending(&pending(2, Some("KEPT"), 101)).await.unwrap();

    assert!(s.purge(UnixTime(100)).await.unwrap() >= 4);
    assert_eq!(s.session(ended.id).await.unwrap(), None);
    assert_eq!(s.session(revoked_ended.id).await.unwrap(), None);
    for byte in [1, 2] {
        assert_eq!(s.refresh_token(TokenHash([byte; 32])).await.unwrap(), None);
    }
    assert_eq!(s.session(live.id).await.unwrap(), Some(live.clone()));
    assert!(s.refresh_token(TokenHash([3; 32])).await.unwrap().is_some());
    assert_eq!(s.revocations(UnixTime(0)).await.unwrap().jtis, ["kept"]);
    assert_eq!(
        s.pending(TokenHash([1; 32]), UnixTime(0)).await.unwrap(),
        None
    );
    assert!(
        s.pending(TokenHash([2; 32]), UnixTime(0))
            .await
            .unwrap()
            .is_some()
    );
    // The freed alias may be given again.
    s.put_pending(&pending(5, Some("GONE"), 200)).await.unwrap();
    assert_eq!(
        s.accounts().await.unwrap(),
        [a],
        "accounts are never purged"
    );
}

// The batch of account changes.

/// A batch applies its changes in order, each seeing the ones before it, and returns one outcome
/// per change; an empty batch changes nothing.
pub async fn a_batch_applies_every_change_in_order(f: &dyn StoreFactory) {
    let s = f.fresh().await;
    assert!(
        s.apply_account_changes(&[], UnixTime(5))
            .await
            .unwrap()
            .is_empty()
    );
    let bob = named(&s, "bob").await;
    let session = stored_session(&s, bob.uid, 1000, 1).await;
    let carol = named(&s, "carol").await;
    let mut alice = NewAccount::named(name("alice"));
    alice.groups.insert("dev".parse().unwrap());
    alice.identities.insert(directory("d-alice"));
    let mut caroline = carol.clone();
    caroline.name = name("caroline");
    caroline.identities.insert(directory("d-carol"));
    let out = s
        .apply_account_changes(
            &[
                AccountChange::Create(alice.clone()),
                AccountChange::Update(caroline.clone()),
                // The name the update freed.
                AccountChange::Create(NewAccount::named(name("carol"))),
                AccountChange::Disable {
                    uid: bob.uid,
                    reason: "left".into(),
                },
            ],
            UnixTime(50),
        )
        .await
        .unwrap();
    let [
        AccountChangeOutcome::Created(created),
        AccountChangeOutcome::Updated,
        AccountChangeOutcome::Created(new_carol),
        AccountChangeOutcome::Disabled {
            revoked_sessions: 1,
        },
    ] = &out[..]
    else {
        panic!("outcomes: {out:?}");
    };
    assert_eq!(
        (
            &created.name,
            &created.groups,
            &created.identities,
            created.created_at
        ),
        (&alice.name, &alice.groups, &alice.identities, UnixTime(50))
    );
    assert_eq!(
        s.account(created.uid).await.unwrap().as_ref(),
        Some(created)
    );
    assert_eq!(
        s.account_by_identity(&directory("d-alice"))
            .await
            .unwrap()
            .as_ref(),
        Some(created)
    );
    assert_eq!(s.account(carol.uid).await.unwrap(), Some(caroline));
    assert_eq!(
        s.account_by_name(&name("carol")).await.unwrap().as_ref(),
        Some(new_carol)
    );
    assert_ne!(new_carol.uid, carol.uid);
    assert_eq!(
        s.account(bob.uid).await.unwrap(),
        Some(UserAccount {
            disabled: true,
            ..bob
        })
    );
    let revoked = s.session(session.id).await.unwrap().unwrap();
    assert_eq!(
        (revoked.revoked_at, revoked.revoked_reason.as_deref()),
        (Some(UnixTime(50)), Some("left"))
    );
    assert_eq!(s.accounts().await.unwrap().len(), 4);
}

/// When a change fails (a taken name or identity, a missing account), the error names it by its
/// index and nothing of the batch is applied: no account created, updated or disabled, no
/// session revoked.
pub async fn a_failing_change_applies_none_of_the_batch(f: &dyn StoreFactory) {
    let s = f.fresh().await;
    let bob = named(&s, "bob").await;
    let session = stored_session(&s, bob.uid, 1000, 1).await;
    let carol = named(&s, "carol").await;
    let mut renamed = carol.clone();
    renamed.name = name("caroline");
    let before = s.accounts().await.unwrap();

    let taken_name = s
        .apply_account_changes(
            &[
                AccountChange::Create(NewAccount::named(name("dave"))),
                AccountChange::Update(renamed.clone()),
                AccountChange::Disable {
                    uid: bob.uid,
                    reason: "left".into(),
                },
                AccountChange::Create(NewAccount::named(name("bob"))),
                AccountChange::Create(NewAccount::named(name("erin"))),
            ],
            UnixTime(50),
        )
        .await;
    let (index, error) = batch_failure(taken_name);
    assert_eq!(index, 3);
    assert!(matches!(error, StoreError::Conflict(_)), "{error:?}");

    let mut first = NewAccount::named(name("frank"));
    first.identities.insert(directory("shared"));
    let mut second = NewAccount::named(name("grace"));
    second.identities.insert(directory("shared"));
    let (index, error) = batch_failure(
        s.apply_account_changes(
            &[AccountChange::Create(first), AccountChange::Create(second)],
            UnixTime(50),
        )
        .await,
    );
    assert_eq!(index, 1);
    assert!(matches!(error, StoreError::Conflict(_)), "{error:?}");

    let ghost = UserAccount {
        uid: AccountUid::random(),
        name: name("ghost"),
        ..bob.clone()
    };
    let (index, error) = batch_failure(
        s.apply_account_changes(&[AccountChange::Update(ghost.clone())], UnixTime(50))
            .await,
    );
    assert_eq!(index, 0);
    assert!(matches!(error, StoreError::NotFound(_)), "{error:?}");

    let missing = s
        .apply_account_changes(
            &[
                AccountChange::Disable {
                    uid: bob.uid,
                    reason: "left".into(),
                },
                AccountChange::Disable {
                    uid: ghost.uid,
                    reason: "left".into(),
                },
            ],
            UnixTime(50),
        )
        .await;
    let err = missing.unwrap_err();
    assert!(
        matches!(err.innermost(), StoreError::NotFound(_)),
        "{err:?}"
    );
    let (index, _) = batch_failure::<()>(Err(err));
    assert_eq!(index, 1);

    assert_eq!(s.accounts().await.unwrap(), before);
    for n in ["dave", "erin", "frank", "grace", "caroline"] {
        assert_eq!(s.account_by_name(&name(n)).await.unwrap(), None, "{n}");
    }
    assert_eq!(
        s.account_by_identity(&directory("shared")).await.unwrap(),
        None
    );
    assert_eq!(s.session(session.id).await.unwrap(), Some(session));
}

/// Disabling in a batch keeps the account's other fields and revokes its live sessions only,
/// as `revoke_account_sessions` would; disabling a disabled account is no error.
pub async fn disabling_in_a_batch_revokes_only_the_accounts_live_sessions(f: &dyn StoreFactory) {
    let s = f.fresh().await;
    let mut new = NewAccount::named(name("bob"));
    new.groups.insert("dev".parse().unwrap());
    new.identities.insert(directory("d-bob"));
    let bob = s.create_account(new, UnixTime(1)).await.unwrap();
    let carol = named(&s, "carol").await;
    let sessions = MixedSessions::store(&s, bob.uid, carol.uid, 1).await;
    let disable = AccountChange::Disable {
        uid: bob.uid,
        reason: "offboarded".into(),
    };
    assert_eq!(
        s.apply_account_changes(std::slice::from_ref(&disable), UnixTime(50))
            .await
            .unwrap(),
        [AccountChangeOutcome::Disabled {
            revoked_sessions: 1
        }]
    );
    let disabled = UserAccount {
        disabled: true,
        ..bob.clone()
    };
    assert_eq!(s.account(bob.uid).await.unwrap(), Some(disabled.clone()));
    sessions.only_the_live_one_was_revoked_at_50(&s).await;
    assert_eq!(s.account(carol.uid).await.unwrap(), Some(carol));
    assert_eq!(
        s.apply_account_changes(&[disable], UnixTime(60))
            .await
            .unwrap(),
        [AccountChangeOutcome::Disabled {
            revoked_sessions: 0
        }]
    );
    assert_eq!(s.account(bob.uid).await.unwrap(), Some(disabled));
    assert_eq!(
        s.revocations(UnixTime(60)).await.unwrap().sessions.len(),
        2,
        "the session the batch revoked and the one revoked before"
    );
}

/// The sync state is the default before it is written, then what was written last.
pub async fn sync_state_starts_empty_and_is_replaced_whole(f: &dyn StoreFactory) {
    let s = f.fresh().await;
    assert_eq!(s.sync_state().await.unwrap(), SyncState::default());
    let first = SyncState {
        identity: Some(r#"{"base_id":"x"}"#.into()),
        last_success: Some(UnixTime(10)),
        last_run: Some(UnixTime(10)),
        last_error: None,
    };
    s.put_sync_state(&first).await.unwrap();
    assert_eq!(s.sync_state().await.unwrap(), first);
    let failed = SyncState {
        last_run: Some(UnixTime(20)),
        last_error: Some("the directory is unavailable".into()),
        ..first
    };
    s.put_sync_state(&failed).await.unwrap();
    assert_eq!(s.sync_state().await.unwrap(), failed);
}

/// One holder at a time: a second runner is told who holds the lease until it ends or is
/// released; the holder renews its own; many takers at once make one holder.
pub async fn one_runner_holds_the_sync_lease_until_it_ends_or_is_given_up(f: &dyn StoreFactory) {
    let s = f.fresh().await;
    let a = s
        .take_sync_lease("a", UnixTime(0), UnixTime(60))
        .await
        .unwrap();
    assert_eq!((a.holder.as_str(), a.expires_at), ("a", UnixTime(60)));
    let b = s
        .take_sync_lease("b", UnixTime(30), UnixTime(90))
        .await
        .unwrap();
    assert_eq!(
        (b.holder.as_str(), b.expires_at),
        ("a", UnixTime(60)),
        "a still holds it"
    );
    let renewed = s
        .take_sync_lease("a", UnixTime(40), UnixTime(100))
        .await
        .unwrap();
    assert_eq!(
        (renewed.holder.as_str(), renewed.expires_at),
        ("a", UnixTime(100))
    );
    // Ended: the next taker gets it.
    let b = s
        .take_sync_lease("b", UnixTime(100), UnixTime(160))
        .await
        .unwrap();
    assert_eq!(b.holder, "b");
    // Released only by its holder.
    s.release_sync_lease("a").await.unwrap();
    assert_eq!(
        s.take_sync_lease("c", UnixTime(101), UnixTime(161))
            .await
            .unwrap()
            .holder,
        "b"
    );
    s.release_sync_lease("b").await.unwrap();
    assert_eq!(
        s.take_sync_lease("c", UnixTime(102), UnixTime(162))
            .await
            .unwrap()
            .holder,
        "c"
    );
    s.release_sync_lease("c").await.unwrap();
    let takers: Vec<_> = (0..8)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                s.take_sync_lease(&format!("r{i}"), UnixTime(200), UnixTime(260))
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut holders = std::collections::BTreeSet::new();
    for t in takers {
        holders.insert(t.await.unwrap().holder);
    }
    assert_eq!(holders.len(), 1, "{holders:?}");
}

/// A revocation is found by whichever of its pod, serviceaccount or principal it names, is
/// replaced by a second of the same target, listed oldest first, and lifted once.
pub async fn workload_revocations_name_a_pod_a_serviceaccount_or_a_principal(f: &dyn StoreFactory) {
    let s = f.fresh().await;
    let revoked = |target, value: &str, at| WorkloadRevocation {
        target,
        value: value.into(),
        reason: "leaked".into(),
        by: "admin".into(),
        at: UnixTime(at),
    };
    assert_eq!(
        s.workload_revoked("u1", "ns/sa", "p@R").await.unwrap(),
        None
    );
    s.revoke_workload(&revoked(WorkloadTarget::ServiceAccount, "ns/sa", 20))
        .await
        .unwrap();
    s.revoke_workload(&revoked(WorkloadTarget::Pod, "u1", 10))
        .await
        .unwrap();
    s.revoke_workload(&revoked(WorkloadTarget::Principal, "p@R", 30))
        .await
        .unwrap();
    // The earliest that applies.
    let hit = s.workload_revoked("u1", "ns/sa", "p@R").await.unwrap();
    assert_eq!(hit.map(|r| r.target), Some(WorkloadTarget::Pod));
    let hit = s.workload_revoked("u2", "ns/sa", "q@R").await.unwrap();
    assert_eq!(hit.map(|r| r.target), Some(WorkloadTarget::ServiceAccount));
    let hit = s.workload_revoked("u2", "ns/other", "p@R").await.unwrap();
    assert_eq!(hit.map(|r| r.target), Some(WorkloadTarget::Principal));
    // A value of one target does not match another target.
    assert_eq!(s.workload_revoked("ns/sa", "u1", "x").await.unwrap(), None);
    // The same target and value again replaces it.
    let mut again = revoked(WorkloadTarget::Pod, "u1", 40);
    again.reason = "still leaked".into();
    s.revoke_workload(&again).await.unwrap();
    let all = s.workload_revocations().await.unwrap();
    assert_eq!(all.len(), 3, "{all:?}");
    assert_eq!(all.last(), Some(&again));
    assert!(
        s.lift_workload_revocation(WorkloadTarget::Pod, "u1")
            .await
            .unwrap()
    );
    assert!(
        !s.lift_workload_revocation(WorkloadTarget::Pod, "u1")
            .await
            .unwrap()
    );
    assert_eq!(s.workload_revocations().await.unwrap().len(), 2);
}

/// A key state is written first only when there is none, then only over the `rotated_at` the
/// writer read: of two replicas rotating at once, one wins.
pub async fn workload_key_states_change_only_from_the_state_expected(f: &dyn StoreFactory) {
    let s = f.fresh().await;
    assert_eq!(s.workload_key_state("p@R").await.unwrap(), None);
    let first = WorkloadKeyState {
        principal: "p@R".into(),
        kvno: 1,
        rotated_at: UnixTime(100),
        previous_kvno: None,
        previous_until: None,
    };
    assert!(s.put_workload_key_state(&first, None).await.unwrap());
    assert!(
        !s.put_workload_key_state(&first, None).await.unwrap(),
        "a first state only once"
    );
    let rotated = WorkloadKeyState {
        kvno: 2,
        rotated_at: UnixTime(200),
        previous_kvno: Some(1),
        previous_until: Some(UnixTime(260)),
        ..first.clone()
    };
    assert!(
        s.put_workload_key_state(&rotated, Some(UnixTime(100)))
            .await
            .unwrap()
    );
    let late = WorkloadKeyState {
        kvno: 3,
        ..rotated.clone()
    };
    assert!(
        !s.put_workload_key_state(&late, Some(UnixTime(100)))
            .await
            .unwrap(),
        "the second rotator read a state that is gone"
    );
    assert_eq!(
        s.workload_key_state("p@R").await.unwrap(),
        Some(rotated.clone())
    );
    assert_eq!(s.workload_key_states().await.unwrap(), vec![rotated]);
}

#[cfg(test)]
mod tests {
    /// Every case is in the one list the macro runs, so none is left out of a store's tests.
    #[test]
    fn every_case_is_run() {
        let source = include_str!("conformance.rs");
        let defined: Vec<&str> = source
            .lines()
            .filter_map(|l| l.strip_prefix("pub async fn "))
            .filter_map(|l| l.split('(').next())
            .collect();
        assert_eq!(defined, super::CASES);
    }
}
