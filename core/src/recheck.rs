//! What a refresh asks a login's source again.
//!
//! A session that started with a directory password (or a Kerberos ticket whose groups come
//! from the directory), or with an upstream provider that granted a refresh token, is only as
//! good as that source still says it is. At every refresh the token service asks through
//! [`LoginSource`]; the bridge implements it over the directory and the upstream providers it
//! is configured with.

use async_trait::async_trait;

use crate::{Session, UserAccount};

/// The source's answer when it does not vouch for the user any more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recheck {
    /// The source says no (entry gone, disabled, locked; the provider refused): the session is
    /// revoked with `reason`, and the refresh refused with `message`.
    Revoke {
        /// What the session's record keeps.
        reason: String,
        /// What the caller is told.
        message: String,
    },
    /// The refresh is refused and the session kept (the source is no longer configured, or
    /// its answer could not be read).
    Refuse(String),
    /// The source did not answer: the refresh is refused as unavailable, nothing is revoked.
    Unavailable(String),
}

/// An upstream provider's answer to a refresh.
#[derive(Clone, Default)]
pub struct UpstreamRefresh {
    /// The provider's new refresh token, when it rotated it.
    pub refresh_token: Option<String>,
    /// The groups its new ID token names, when it sent one.
    pub groups: Option<Vec<String>>,
}

impl std::fmt::Debug for UpstreamRefresh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamRefresh")
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "<redacted>"),
            )
            .field("groups", &self.groups)
            .finish()
    }
}

/// The sources a refresh re-checks.
#[async_trait]
pub trait LoginSource: Send + Sync {
    /// For a session whose login the directory vouched for: the groups it gives the user now,
    /// shaped for the session's audience. `Ok(None)` when this session is not checked with the
    /// directory.
    async fn directory_groups(
        &self,
        account: &UserAccount,
        session: &Session,
    ) -> Result<Option<Vec<String>>, Recheck>;

    /// Asks the upstream provider `upstream` whether the user still may log in, with the
    /// refresh token it granted.
    async fn upstream_refresh(
        &self,
        upstream: &str,
        refresh_token: &str,
    ) -> Result<UpstreamRefresh, Recheck>;
}

/// A source that re-checks nothing, for sessions of static tokens and for tests. A session that
/// started with a directory password cannot be refreshed through it: the service refuses a
/// directory login that no directory was asked about.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoRecheck;

#[async_trait]
impl LoginSource for NoRecheck {
    async fn directory_groups(
        &self,
        _: &UserAccount,
        _: &Session,
    ) -> Result<Option<Vec<String>>, Recheck> {
        Ok(None)
    }

    async fn upstream_refresh(&self, upstream: &str, _: &str) -> Result<UpstreamRefresh, Recheck> {
        Err(Recheck::Refuse(format!(
            "the identity provider {upstream:?} is no longer configured; log in again"
        )))
    }
}
