//! The login sources a refresh asks again, for the token service: the directory (a session
//! that started with a directory password, or with Kerberos when groups come from the
//! directory) and the upstream OpenID providers.

use idbridge_core::{
    Amr, DirectoryStatus, ExternalIdentity, LoginSource, Recheck, Session, UpstreamRefresh,
    UserAccount,
};

use crate::http::extract::RequestCtx;
use crate::login::upstream::UpstreamError;
use crate::settings::Settings;
use crate::state::AppState;

/// The sources as the settings in force configure them.
pub(crate) struct Sources<'a> {
    state: &'a AppState,
    settings: std::sync::Arc<Settings>,
    ctx: &'a RequestCtx,
}

impl<'a> Sources<'a> {
    pub(crate) fn new(state: &'a AppState, ctx: &'a RequestCtx) -> Self {
        Self {
            state,
            settings: state.settings(),
            ctx,
        }
    }

    /// Whether the directory vouched for this session's login.
    fn vouched_by_directory(&self, session: &Session) -> bool {
        session.amr.iter().any(|amr| {
            *amr == Amr::Ldap
                || (*amr == Amr::Krb5
                    && self
                        .settings
                        .kerberos
                        .as_ref()
                        .is_some_and(|k| k.groups_from_directory))
        })
    }
}

#[async_trait::async_trait]
impl LoginSource for Sources<'_> {
    /// Gone, disabled, locked or expired → the session is revoked; a directory that does not
    /// answer refuses the refresh without revoking. Otherwise the groups as they are now.
    async fn directory_groups(
        &self,
        account: &UserAccount,
        session: &Session,
    ) -> Result<Option<Vec<String>>, Recheck> {
        if !self.vouched_by_directory(session) {
            return Ok(None);
        }
        let Some(dir) = self.settings.directory.as_ref() else {
            return Err(Recheck::Refuse(
                "this session started with a directory login, and no directory is configured now; log in again"
                    .into(),
            ));
        };
        let id = account.identities.iter().find_map(|i| match i {
            ExternalIdentity::Directory { id } => Some(id.as_str()),
            _ => None,
        });
        let found = match id {
            Some(id) => dir.directory.user_by_id(id).await.map_err(|e| {
                Recheck::Unavailable(crate::login::password::unavailable(&e).to_string())
            })?,
            None => None,
        };
        let why = match &found {
            None => "the directory entry no longer exists".to_owned(),
            Some(u) if u.status != DirectoryStatus::Active => {
                format!("the directory account is {}", u.status)
            }
            Some(u) => {
                return Ok(Some(crate::login::password::shaped_groups(
                    self.state,
                    dir,
                    u,
                    &session.audience,
                    account,
                    self.ctx,
                )));
            }
        };
        Err(Recheck::Revoke {
            message: format!("{why}; the session is revoked"),
            reason: why,
        })
    }

    /// A refusal revokes the session; an unreachable provider revokes nothing.
    async fn upstream_refresh(
        &self,
        upstream: &str,
        refresh_token: &str,
    ) -> Result<UpstreamRefresh, Recheck> {
        let Some(up) = self.settings.upstream(upstream) else {
            return Err(Recheck::Refuse(format!(
                "the identity provider {upstream:?} is no longer configured; log in again"
            )));
        };
        match up.refresh(refresh_token).await {
            Ok(tokens) => {
                let groups = match tokens.id_token.as_deref() {
                    Some(raw) => {
                        let claims = up
                            .verify_id_token(raw, None)
                            .await
                            .map_err(|e| Recheck::Refuse(e.to_string()))?;
                        Some(
                            up.user(&claims)
                                .map_err(|e| Recheck::Refuse(e.to_string()))?
                                .groups,
                        )
                    }
                    None => None,
                };
                Ok(UpstreamRefresh {
                    refresh_token: tokens.refresh_token,
                    groups,
                })
            }
            Err(e @ UpstreamError::Unavailable { .. }) => {
                tracing::warn!(error = %e, "upstream refresh failed");
                Err(Recheck::Unavailable(format!(
                    "{e}; the session was kept, retry shortly"
                )))
            }
            Err(e) => Err(Recheck::Revoke {
                reason: "refused by the upstream provider".into(),
                message: format!("{e}; the session is revoked, log in again"),
            }),
        }
    }
}
