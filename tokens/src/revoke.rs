//! RFC 7009 revocation and RFC 7662 introspection.
//!
//! A refresh token revokes its whole session, an access token its `jti` (until it would have
//! expired), a static token itself. Unknown tokens revoke nothing and are no error, as RFC 7009
//! asks. Introspection answers `active: false` for anything not live.

use idbridge_core::{SessionState, UnixTime};
use serde_json::{Value, json};

use crate::audit::Origin;
use crate::error::TokenError;
use crate::policy::Client;
use crate::secret::{REFRESH_TOKEN_PREFIX, STATIC_TOKEN_PREFIX, hash_token};
use crate::service::TokenService;
use crate::verify::Denial;

impl TokenService {
    /// Revokes `token` for `client`, which must be the client it was issued to.
    ///
    /// # Errors
    /// `InvalidClient` when the token is another client's; a store failure.
    pub async fn revoke(
        &self,
        client: &Client,
        token: &str,
        ctx: Origin<'_>,
    ) -> Result<(), TokenError> {
        let now = self.clock().now();
        let mut what = None;
        if token.starts_with(REFRESH_TOKEN_PREFIX) {
            if let Some(r) = self.store().refresh_token(hash_token(token)).await?
                && let Some(s) = self.store().session(r.session).await?
            {
                if s.client_id != client.id {
                    return Err(TokenError::InvalidClient(
                        "the token was issued to another client".into(),
                    ));
                }
                self.store()
                    .revoke_session(s.id, "revoked by its client", now)
                    .await?;
                what = Some((s.account, format!("session={}", s.id)));
            }
        } else if token.starts_with(STATIC_TOKEN_PREFIX) {
            if let Some(t) = self.store().static_token_by_hash(hash_token(token)).await? {
                self.store().revoke_static_token(t.id, now).await?;
                what = Some((t.account, format!("token={}", t.id)));
            }
        } else if let Ok(claims) = self.verified_access(token).await {
            if claims.client_id.as_ref().is_some_and(|c| *c != client.id) {
                return Err(TokenError::InvalidClient(
                    "the token was issued to another client".into(),
                ));
            }
            self.store()
                .revoke_jti(&claims.jti, UnixTime(claims.exp), now)
                .await?;
            if let Ok(uid) = claims.sub.parse() {
                what = Some((uid, format!("jti={}", claims.jti)));
            }
        }
        if let Some((uid, object)) = what {
            self.invalidate_account(uid);
            let account = self.store().account(uid).await?;
            let mut ev = ctx.event("token.revoke", "ok");
            ev.account = account.as_ref().map(|a| a.name.as_str());
            ev.uid = Some(uid.to_string());
            ev.actor = Some(client.id.as_str());
            ev.object = Some(object);
            self.audit().record_durable(&ev).await;
        }
        Ok(())
    }

    /// What RFC 7662 says about `token`: its claims when it is live, `active: false` else.
    ///
    /// # Errors
    /// `Unavailable` when the store does not answer.
    pub async fn describe(&self, token: &str) -> Result<Value, TokenError> {
        let inactive = json!({"active": false});
        let now = self.clock().now();
        let settings = self.policy();
        if token.starts_with(REFRESH_TOKEN_PREFIX) {
            let Some(r) = self.store().refresh_token(hash_token(token)).await? else {
                return Ok(inactive);
            };
            let Some(s) = self.store().session(r.session).await? else {
                return Ok(inactive);
            };
            let account = self.store().account(s.account).await?;
            let live = r.spent_at.is_none()
                && s.state(now, settings.session_idle_timeout.as_secs()) == SessionState::Active
                && account.as_ref().is_some_and(|a| !a.disabled);
            return Ok(match (live, account) {
                (true, Some(a)) => json!({
                    "active": true,
                    "token_type": "refresh_token",
                    "sub": a.uid.to_string(),
                    "username": a.name.to_string(),
                    "client_id": s.client_id,
                    "sid": s.id.to_string(),
                    "iat": r.created_at.0,
                    "exp": s.expires_at.0,
                    "iss": settings.issuer,
                }),
                _ => inactive,
            });
        }
        if token.starts_with(STATIC_TOKEN_PREFIX) {
            return Ok(match self.authenticate(token, &[]).await {
                Ok(w) => json!({
                    "active": true,
                    "token_type": "static",
                    "sub": w.uid.to_string(),
                    "username": w.name,
                    "groups": w.groups,
                    "exp": w.expires_at,
                    "iss": settings.issuer,
                }),
                Err(_) => inactive,
            });
        }
        Ok(match self.verified_access(token).await {
            Ok(c) => {
                let mut v = serde_json::to_value(&c)
                    .map_err(|e| TokenError::internal("describe the claims", e))?;
                v["active"] = json!(true);
                v["token_type"] = json!("Bearer");
                v["username"] = json!(c.name);
                v
            }
            Err(Denial::Unavailable) => {
                return Err(TokenError::Unavailable(Denial::Unavailable.to_string()));
            }
            Err(_) => inactive,
        })
    }
}
