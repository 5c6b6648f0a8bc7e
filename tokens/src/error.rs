//! The token service's one error type. It says what went wrong in the service's terms; the
//! bridge turns it into an HTTP answer in one place, and the binary into a message and an exit
//! code.

use idbridge_core::{SessionId, StoreError, TokenId};

/// Why a token-service operation failed. Every message except [`TokenError::Internal`]'s is
/// safe to show to whoever asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The grant or credential presented is not (or no longer) good: RFC 6749 `invalid_grant`.
    #[error("{0}")]
    InvalidGrant(String),
    /// The audience asked for may not be had: RFC 8693 `invalid_target`.
    #[error("{0}")]
    InvalidTarget(String),
    /// The scope asked for is more than the subject has: RFC 6749 `invalid_scope`.
    #[error("{0}")]
    InvalidScope(String),
    /// The request is incomplete or contradicts itself: RFC 6749 `invalid_request`.
    #[error("{0}")]
    InvalidRequest(String),
    /// The client may not do this with this token: RFC 6749 `invalid_client`.
    #[error("{0}")]
    InvalidClient(String),
    /// A source the answer depends on (the store, the directory, an upstream provider) did not
    /// answer; nothing was changed, retry later.
    #[error("{0}")]
    Unavailable(String),
    /// RFC 8628: the user has not finished logging in yet; poll again.
    #[error("{0}")]
    AuthorizationPending(String),
    /// RFC 8628: polled too fast; the message says the new interval.
    #[error("{0}")]
    SlowDown(String),
    /// RFC 8628: the device code is unknown or expired.
    #[error("{0}")]
    ExpiredToken(String),
    /// Too many attempts; retry after this many seconds.
    #[error("too many attempts; retry in {0} s")]
    Throttled(u64),
    /// No account has that name.
    #[error("no account named {0:?}")]
    NoSuchAccount(String),
    /// No token has that id.
    #[error("no token with id {0}")]
    NoSuchToken(TokenId),
    /// No session has that id.
    #[error("no session with id {0}")]
    NoSuchSession(SessionId),
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The signing keys could not be handled.
    #[error(transparent)]
    Key(#[from] crate::keys::KeyError),
    /// A bug or an unexpected failure. The text is the cause, for the log; callers are told
    /// only that something failed inside.
    #[error("internal error: {0}")]
    Internal(String),
}

impl TokenError {
    /// An internal failure with its cause, which goes to the log and never to the caller.
    pub fn internal(what: &str, cause: impl std::fmt::Display) -> Self {
        Self::Internal(format!("{what}: {cause}"))
    }

    /// An `InvalidGrant`.
    pub fn invalid_grant(why: impl Into<String>) -> Self {
        Self::InvalidGrant(why.into())
    }

    /// An `InvalidRequest`.
    pub fn invalid_request(why: impl Into<String>) -> Self {
        Self::InvalidRequest(why.into())
    }

    /// The error's code: RFC 6749's for the OAuth ones (`invalid_grant`, ...), a short name for
    /// the rest. The audit log records it beside the message.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidGrant(_) => "invalid_grant",
            Self::InvalidTarget(_) => "invalid_target",
            Self::InvalidScope(_) => "invalid_scope",
            Self::InvalidRequest(_) => "invalid_request",
            Self::InvalidClient(_) => "invalid_client",
            Self::AuthorizationPending(_) => "authorization_pending",
            Self::SlowDown(_) => "slow_down",
            Self::ExpiredToken(_) => "expired_token",
            Self::Unavailable(_) => "unavailable",
            Self::Throttled(_) => "too_many_requests",
            Self::NoSuchAccount(_) | Self::NoSuchToken(_) | Self::NoSuchSession(_) => "not_found",
            Self::Store(StoreError::Conflict(_)) => "conflict",
            Self::Store(StoreError::NotFound(_)) => "not_found",
            Self::Store(_) => "unavailable",
            Self::Key(_) | Self::Internal(_) => "internal",
        }
    }
}

/// The admin operations' name for the service's error, kept for their callers.
pub type OpsError = TokenError;
