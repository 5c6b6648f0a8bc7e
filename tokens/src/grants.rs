//! Logins that finish on another request: authorization codes (RFC 6749 section 4.1, with PKCE)
//! and device codes (RFC 8628); and the single use of an exchanged upstream ID token. A browser login ends by issuing a code, or by approving a
//! device's code; the client then redeems it at the token endpoint, once, for a session.
//!
//! Both are single-use pending records named by the hash of their secret. A code presented a
//! second time revokes the session its first use started; a device code is polled until its
//! login is approved, no faster than its interval.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use idbridge_core::{
    AccountUid, Amr, Audience, ClientId, Pending, PendingKind, TokenHash, UnixTime,
};
use serde::{Deserialize, Serialize};

use crate::audit::Origin;
use crate::error::TokenError;
use crate::policy::{Client, Secret};
use crate::secret::hash_token;
use crate::service::TokenService;
use crate::sessions::{Login, TokenPair, UpstreamGrant};

/// How long an authorization code lives, in seconds.
pub const CODE_TTL: u64 = 60;

/// How long a device code lives, in seconds.
pub const DEVICE_TTL: u64 = 600;

/// The polling interval asked of devices, in seconds; `slow_down` adds five.
pub const INTERVAL: u64 = 5;

/// Who logged in, as a code or an approved device carries it. `Debug` hides the upstream grant.
#[derive(Clone, Serialize, Deserialize)]
pub struct Approved {
    /// The account's UID.
    pub uid: String,
    /// How the user logged in.
    pub amr: Amr,
    /// Groups the login source vouched for.
    pub login_groups: Vec<String>,
    /// The upstream grant: sealed under the code for a code.
    #[serde(default)]
    pub upstream_sealed: Option<Vec<u8>>,
    /// The upstream grant as is, for a device.
    #[serde(default)]
    pub upstream: Option<UpstreamGrant>,
}

impl std::fmt::Debug for Approved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Approved")
            .field("uid", &self.uid)
            .field("amr", &self.amr)
            .field("login_groups", &self.login_groups)
            .finish_non_exhaustive()
    }
}

/// An authorization code's record.
#[derive(Debug, Serialize, Deserialize)]
pub struct CodeGrant {
    /// The client it was issued to.
    pub client_id: ClientId,
    /// The redirect URI the authorization request named.
    pub redirect_uri: String,
    /// Its PKCE challenge (S256).
    pub code_challenge: String,
    /// The session's audience.
    pub audience: Audience,
    /// Its scope.
    pub scope: String,
    /// Who logged in.
    pub approved: Approved,
}

/// A device code's record. `Debug` hides the user code.
#[derive(Serialize, Deserialize)]
pub struct DeviceGrant {
    /// The client it was issued to.
    pub client_id: ClientId,
    /// The session's audience.
    pub audience: Audience,
    /// Its scope.
    pub scope: String,
    /// The code the user types.
    pub user_code: String,
    /// Seconds between polls.
    pub interval: u64,
    /// When the device last polled.
    pub last_poll: i64,
    /// Who logged in, once someone has.
    #[serde(default)]
    pub approved: Option<Approved>,
}

impl std::fmt::Debug for DeviceGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceGrant")
            .field("client_id", &self.client_id)
            .field("audience", &self.audience)
            .field("interval", &self.interval)
            .field("approved", &self.approved)
            .finish_non_exhaustive()
    }
}

/// Whether `verifier` is a well-formed PKCE verifier whose S256 is `challenge` (compared in
/// constant time).
#[must_use]
pub fn pkce_matches(verifier: &str, challenge: &str) -> bool {
    let shape = (43..=128).contains(&verifier.len())
        && verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b));
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes());
    let computed = URL_SAFE_NO_PAD.encode(d.as_ref());
    shape && Secret::new(computed).matches(challenge)
}

/// A record hash as text (a device's key travels in a login record this way).
#[must_use]
pub fn hex(h: &TokenHash) -> String {
    h.0.iter().map(|b| format!("{b:02x}")).collect()
}

/// What [`hex`] wrote, or `None`.
#[must_use]
pub fn unhex(s: &str) -> Option<TokenHash> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(TokenHash(out))
}

impl TokenService {
    /// Stores an unused single-use record of `kind`, named by the hash of `secret` (and by
    /// `alias`), holding `data`, for `ttl` seconds.
    ///
    /// # Errors
    /// A store failure.
    pub async fn put_pending(
        &self,
        secret: &str,
        alias: Option<String>,
        kind: PendingKind,
        data: &impl Serialize,
        ttl: u64,
    ) -> Result<(), TokenError> {
        let record = Pending {
            key: hash_token(secret),
            alias,
            kind,
            data: serde_json::to_string(data)
                .map_err(|e| TokenError::internal("serialize a pending record", e))?,
            expires_at: self.clock().now().plus_secs(ttl),
            used_at: None,
            session: None,
        };
        Ok(self.store().put_pending(&record).await?)
    }

    /// Marks an upstream ID token exchanged (RFC 8693 with an ID token as the subject): each
    /// may start one session, and the record of it lasts until the token has expired. Returns
    /// false when it was exchanged already.
    ///
    /// # Errors
    /// A store failure.
    pub async fn spend_id_token(&self, raw: &str, exp: UnixTime) -> Result<bool, TokenError> {
        let once = Pending {
            key: hash_token(&format!("id_token\0{raw}")),
            alias: None,
            kind: PendingKind::IdToken,
            data: String::new(),
            expires_at: exp.plus_secs(self.policy().clock_skew.as_secs()),
            used_at: Some(self.clock().now()),
            session: None,
        };
        match self.store().put_pending(&once).await {
            Ok(()) => Ok(true),
            Err(idbridge_core::StoreError::Conflict(_)) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// A session for an approved login.
    ///
    /// # Errors
    /// `InvalidGrant` when the account is disabled or gone; a store failure.
    pub async fn start_approved(
        &self,
        client_id: &ClientId,
        audience: Audience,
        scope: String,
        approved: Approved,
        upstream: Option<UpstreamGrant>,
        ctx: Origin<'_>,
    ) -> Result<TokenPair, TokenError> {
        let uid: AccountUid = approved
            .uid
            .parse()
            .map_err(|e| TokenError::internal("read an approved login's account", e))?;
        let account = self
            .store()
            .account(uid)
            .await?
            .filter(|a| !a.disabled)
            .ok_or_else(|| TokenError::invalid_grant("the account is disabled"))?;
        self.start_session(
            Login {
                account: &account,
                client_id,
                amr: approved.amr,
                audience,
                scope,
                login_groups: approved.login_groups,
                upstream,
            },
            ctx,
        )
        .await
    }

    /// The `authorization_code` grant: the code used once, its client, redirect URI and PKCE
    /// verifier checked, then a session. A code presented again revokes that session.
    ///
    /// # Errors
    /// `InvalidGrant` saying why, `InvalidRequest` without a verifier; a store failure.
    pub async fn redeem_code(
        &self,
        client: &Client,
        code: &str,
        redirect_uri: Option<&str>,
        verifier: Option<&str>,
        ctx: Origin<'_>,
    ) -> Result<TokenPair, TokenError> {
        let now = self.clock().now();
        let key = hash_token(code);
        let deny = |reason: &str| {
            self.login_denied(ctx, "token.code", None, reason);
            TokenError::invalid_grant(reason)
        };
        let (record, first) = match self.store().use_pending(key, now).await? {
            Some((p, first)) if p.kind == PendingKind::Code => (p, first),
            _ => return Err(deny("the code is invalid or has expired")),
        };
        if !first {
            if let Some(sid) = record.session {
                self.store()
                    .revoke_session(sid, "authorization code presented twice", now)
                    .await?;
                self.invalidate();
            }
            let mut ev = ctx.event("token.reuse", "revoked");
            ev.object = record.session.map(|s| format!("session={s}"));
            ev.reason =
                Some("an authorization code was presented twice; what it produced is revoked");
            self.audit().record_durable(&ev).await;
            return Err(TokenError::invalid_grant(
                "the code was already used; the tokens it produced are revoked",
            ));
        }
        let grant: CodeGrant = serde_json::from_str(&record.data)
            .map_err(|e| TokenError::internal("read an authorization code record", e))?;
        if grant.client_id != client.id {
            return Err(deny("the code was issued to another client"));
        }
        if redirect_uri != Some(grant.redirect_uri.as_str()) {
            return Err(deny(
                "redirect_uri differs from the authorization request's",
            ));
        }
        let Some(verifier) = verifier else {
            return Err(TokenError::invalid_request(
                "code_verifier is required (PKCE)",
            ));
        };
        if !pkce_matches(verifier, &grant.code_challenge) {
            return Err(deny(
                "code_verifier does not match the code_challenge (PKCE)",
            ));
        }
        let upstream = grant
            .approved
            .upstream_sealed
            .as_deref()
            .map(|s| {
                UpstreamGrant::open(code, &key, s).ok_or_else(|| {
                    TokenError::internal("open the upstream grant of a code", "it does not open")
                })
            })
            .transpose()?;
        let pair = self
            .start_approved(
                &client.id,
                grant.audience,
                grant.scope,
                grant.approved,
                upstream,
                ctx,
            )
            .await?;
        if let Some(sid) = pair.session {
            self.store().set_pending_session(key, sid).await?;
        }
        Ok(pair)
    }

    /// The unexpired device-code record named by `key`, with its grant; `None` when there is
    /// none, or the record is of another kind.
    ///
    /// # Errors
    /// A store failure, or a record that cannot be read.
    pub async fn device_record(
        &self,
        key: TokenHash,
        now: UnixTime,
    ) -> Result<Option<(Pending, DeviceGrant)>, TokenError> {
        let Some(p) = self
            .store()
            .pending(key, now)
            .await?
            .filter(|p| p.kind == PendingKind::Device)
        else {
            return Ok(None);
        };
        let grant = serde_json::from_str(&p.data)
            .map_err(|e| TokenError::internal("read a device-code record", e))?;
        Ok(Some((p, grant)))
    }

    /// Marks the device's code (its key as [`hex`] wrote it) approved by this login; false
    /// when it is gone or used.
    ///
    /// # Errors
    /// A store failure.
    pub async fn approve_device(
        &self,
        device_key: &str,
        approved: Approved,
        now: UnixTime,
    ) -> Result<bool, TokenError> {
        let Some(key) = unhex(device_key) else {
            return Ok(false);
        };
        let Some((p, mut grant)) = self.device_record(key, now).await? else {
            return Ok(false);
        };
        if p.used_at.is_some() || grant.approved.is_some() {
            return Ok(false);
        }
        grant.approved = Some(approved);
        let data = serde_json::to_string(&grant)
            .map_err(|e| TokenError::internal("write a device-code record", e))?;
        Ok(self.store().update_pending(key, &data, now).await?)
    }

    /// The device grant's poll: pending, too fast, or the tokens once the user logged in.
    ///
    /// # Errors
    /// `AuthorizationPending`, `SlowDown` or `ExpiredToken` (RFC 8628 section 3.5),
    /// `InvalidGrant`; a store failure.
    pub async fn poll_device(
        &self,
        client: &Client,
        device_code: &str,
        ctx: Origin<'_>,
    ) -> Result<TokenPair, TokenError> {
        let now = self.clock().now();
        let key = hash_token(device_code);
        let Some((p, mut grant)) = self.device_record(key, now).await? else {
            return Err(TokenError::ExpiredToken(
                "the device code is unknown or has expired; start again".into(),
            ));
        };
        if grant.client_id != client.id {
            return Err(TokenError::invalid_grant(
                "the device code was issued to another client",
            ));
        }
        if p.used_at.is_some() {
            return Err(TokenError::invalid_grant(
                "the device code was already used",
            ));
        }
        let Some(approved) = grant.approved.take() else {
            let too_fast = now.0 - grant.last_poll < i64::try_from(grant.interval).unwrap_or(5);
            if too_fast {
                grant.interval += 5;
            }
            grant.last_poll = now.0;
            let data = serde_json::to_string(&grant)
                .map_err(|e| TokenError::internal("write a device-code record", e))?;
            self.store().update_pending(key, &data, now).await?;
            return Err(if too_fast {
                TokenError::SlowDown(format!("poll at most every {} s", grant.interval))
            } else {
                TokenError::AuthorizationPending("the user has not finished logging in yet".into())
            });
        };
        match self.store().use_pending(key, now).await? {
            Some((_, true)) => {}
            _ => {
                return Err(TokenError::invalid_grant(
                    "the device code was already used",
                ));
            }
        }
        let upstream = approved.upstream.clone();
        let pair = self
            .start_approved(
                &client.id,
                grant.audience,
                grant.scope,
                approved,
                upstream,
                ctx,
            )
            .await?;
        if let Some(sid) = pair.session {
            self.store().set_pending_session(key, sid).await?;
        }
        Ok(pair)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_s256_matches_rfc7636_appendix_b() {
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
        assert!(pkce_matches(verifier, challenge));
        assert!(!pkce_matches(
            "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXl",
            challenge
        ));
        assert!(!pkce_matches("short", challenge));
    }

    #[test]
    fn hashes_round_trip_through_hex() {
        let h = hash_token("x");
        assert_eq!(unhex(&hex(&h)), Some(h));
        assert_eq!(unhex("zz"), None);
    }
}
