//! Sessions (refresh-token families), their refresh tokens, revocations and signing keys as the
//! store keeps them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{AccountUid, Error, TokenHash, UnixTime};

uuid_id!(
    /// The public id of a session, safe to show and log; access tokens carry it as `sid`.
    SessionId,
    "session id",
    "must be a UUID as printed by `idbridge session list`"
);

/// A session: one login, and the family of refresh tokens descended from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// Public id.
    pub id: SessionId,
    /// The account it authenticates.
    pub account: AccountUid,
    /// The OAuth client that started it; only that client may refresh it.
    pub client_id: crate::ClientId,
    /// How the user logged in.
    pub amr: Vec<crate::Amr>,
    /// Audience of the access tokens minted on refresh.
    pub audience: crate::Audience,
    /// Space-separated scopes granted to the session.
    #[serde(default)]
    pub scope: String,
    /// Groups the login source vouched for, added to the account's own on every refresh.
    #[serde(default)]
    pub login_groups: Vec<String>,
    /// Start of the session.
    pub created_at: UnixTime,
    /// Last time it was refreshed (the idle timeout counts from here).
    pub last_used_at: UnixTime,
    /// Absolute end: no token of the session outlives it.
    pub expires_at: UnixTime,
    /// When it was revoked, if it was.
    #[serde(default)]
    pub revoked_at: Option<UnixTime>,
    /// Why it was revoked.
    #[serde(default)]
    pub revoked_reason: Option<String>,
}

impl Session {
    /// Whether the session may still be refreshed at `now`, given its idle timeout.
    #[must_use]
    pub fn state(&self, now: UnixTime, idle_timeout_secs: u64) -> SessionState {
        if self.revoked_at.is_some() {
            SessionState::Revoked
        } else if now >= self.expires_at {
            SessionState::Expired
        } else if now >= self.last_used_at.plus_secs(idle_timeout_secs) {
            SessionState::Idle
        } else {
            SessionState::Active
        }
    }
}

/// Where a session stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    /// Refreshable.
    Active,
    /// Past its idle timeout.
    Idle,
    /// Past its absolute maximum.
    Expired,
    /// Revoked.
    Revoked,
}

impl fmt::Display for SessionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Active => "active",
            Self::Idle => "idle-expired",
            Self::Expired => "expired",
            Self::Revoked => "revoked",
        })
    }
}

/// A refresh token as stored: its hash, never the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshRecord {
    /// SHA-256 of the token.
    pub hash: TokenHash,
    /// Its session.
    pub session: SessionId,
    /// When it was issued.
    pub created_at: UnixTime,
    /// When it was exchanged for the next pair; a second use after the grace window revokes
    /// the session.
    pub spent_at: Option<UnixTime>,
    /// Until when a repeat of the spend gets the same next pair.
    pub grace_until: Option<UnixTime>,
    /// The next pair, sealed under a key derived from this token (so only its holder can read
    /// it); absent once the grace window is over.
    pub grace_sealed: Option<Vec<u8>>,
    /// What the login's upstream gave to keep the session checked there (an upstream OIDC
    /// refresh token), sealed under a key derived from this token.
    pub upstream_sealed: Option<Vec<u8>>,
}

/// What a refresh needs to decide: the token, its session and the session's account, read in
/// one snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshContext {
    /// The refresh token.
    pub record: RefreshRecord,
    /// Its session, unless purged.
    pub session: Option<Session>,
    /// The session's account, unless deleted.
    pub account: Option<crate::UserAccount>,
}

impl RefreshRecord {
    /// A newly issued, unspent refresh token of `session`.
    #[must_use]
    pub fn fresh(hash: TokenHash, session: SessionId, now: UnixTime) -> Self {
        Self {
            hash,
            session,
            created_at: now,
            spent_at: None,
            grace_until: None,
            grace_sealed: None,
            upstream_sealed: None,
        }
    }
}

/// A short-lived, single-use record of a login in progress: an authorization request waiting
/// for its user, an upstream login waiting for its callback, an authorization code, a device
/// code. Found by the hash of its secret handle, or by an alias (a device's user code).
/// `Debug` shows neither the alias nor the content (which can hold an upstream grant).
#[derive(Clone, PartialEq, Eq)]
pub struct Pending {
    /// SHA-256 of the secret that names it.
    pub key: TokenHash,
    /// A second, human-typed name (a device grant's user code), normalized.
    pub alias: Option<String>,
    /// What it is.
    pub kind: crate::PendingKind,
    /// Its content, JSON.
    pub data: String,
    /// It is worthless after this.
    pub expires_at: UnixTime,
    /// When it was used; a second use is refused.
    pub used_at: Option<UnixTime>,
    /// The session its use started, revoked if it is presented again.
    pub session: Option<SessionId>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("key", &self.key)
            .field("alias", &self.alias.as_ref().map(|_| "<redacted>"))
            .field("kind", &self.kind.as_str())
            .field(
                "data",
                &format_args!("<{} bytes redacted>", self.data.len()),
            )
            .field("expires_at", &self.expires_at)
            .field("used_at", &self.used_at)
            .field("session", &self.session)
            .finish()
    }
}

/// What spending a refresh token stores with it.
#[derive(Debug, Clone)]
pub struct Spend {
    /// The token being spent.
    pub old: TokenHash,
    /// Time of the spend.
    pub at: UnixTime,
    /// End of its grace window.
    pub grace_until: UnixTime,
    /// The next pair, sealed.
    pub sealed: Vec<u8>,
    /// The next refresh token.
    pub next: RefreshRecord,
    /// New login groups for the session, when the login source was asked again (a directory
    /// user's groups re-read on refresh).
    pub login_groups: Option<Vec<String>>,
}

/// The outcome of [`crate::SessionStore::spend_refresh`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpendOutcome {
    /// The token was unspent and now is; the next one is stored.
    Spent,
    /// Someone spent it first (or the session was revoked meanwhile); nothing changed.
    Lost,
}

/// What must be refused although its signature verifies: revoked sessions and access tokens
/// that may still be unexpired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Revocations {
    /// Revoked sessions whose tokens could still be alive.
    pub sessions: Vec<SessionId>,
    /// Revoked access-token ids (`jti`) not yet expired.
    pub jtis: Vec<String>,
}

/// Lifecycle of a signing key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyState {
    /// Published in the JWKS, not yet signing.
    Next,
    /// Signing.
    Current,
    /// No longer signing; published until its last token has expired.
    Retired,
}

impl FromStr for KeyState {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "next" => Ok(Self::Next),
            "current" => Ok(Self::Current),
            "retired" => Ok(Self::Retired),
            _ => Err(Error::Invalid {
                what: "key state",
                value: s.to_owned(),
                why: "must be next, current or retired",
            }),
        }
    }
}

impl fmt::Display for KeyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Next => "next",
            Self::Current => "current",
            Self::Retired => "retired",
        })
    }
}

/// A signing key as stored.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredKey {
    /// Key id (RFC 7638 thumbprint).
    pub kid: String,
    /// PKCS#8 DER, or its sealed form when `sealed_by` is set.
    pub private: Vec<u8>,
    /// Id of the key-encryption key that sealed `private`, if any.
    pub sealed_by: Option<String>,
    /// Lifecycle state.
    pub state: KeyState,
    /// Creation (and first publication) time.
    pub created_at: UnixTime,
    /// When it started signing.
    pub activated_at: Option<UnixTime>,
    /// When a retired key may be deleted.
    pub retire_after: Option<UnixTime>,
}

impl fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredKey")
            .field("kid", &self.kid)
            .field("sealed_by", &self.sealed_by)
            .field("state", &self.state)
            .field("created_at", &self.created_at)
            .field("activated_at", &self.activated_at)
            .field("retire_after", &self.retire_after)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_of_a_pending_record_shows_neither_alias_nor_content() {
        let p = Pending {
            key: TokenHash([7; 32]),
            alias: Some("BCDFGHJK".into()),
            kind: crate::PendingKind::Device,
            data: r#"{"upstream":"refresh-secret-1"}"#.into(),
            expires_at: UnixTime(1),
            used_at: None,
            session: None,
        };
        let shown = format!("{p:?}");
        assert!(
            !shown.contains("BCDFGHJK") && !shown.contains("refresh-secret-1"),
            "{shown}"
        );
        assert!(shown.contains("device"), "{shown}");
    }

    #[test]
    fn session_state_follows_idle_and_absolute_limits() {
        let s = Session {
            id: SessionId::random(),
            account: AccountUid::random(),
            client_id: "c".parse().unwrap(),
            amr: vec![crate::Amr::Static],
            audience: "kubernetes".parse().unwrap(),
            scope: String::new(),
            login_groups: Vec::new(),
            created_at: UnixTime(100),
            last_used_at: UnixTime(200),
            expires_at: UnixTime(1000),
            revoked_at: None,
            revoked_reason: None,
        };
        assert_eq!(s.state(UnixTime(299), 100), SessionState::Active);
        assert_eq!(s.state(UnixTime(300), 100), SessionState::Idle);
        assert_eq!(s.state(UnixTime(1000), 10_000), SessionState::Expired);
        let mut r = s.clone();
        r.revoked_at = Some(UnixTime(150));
        assert_eq!(r.state(UnixTime(160), 100), SessionState::Revoked);
    }
}
