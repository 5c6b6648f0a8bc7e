//! Sessions: every login ends in one. Rotating refresh tokens with reuse detection, and
//! access-token minting.
//!
//! A refresh token is spent exactly once, atomically in the store. Concurrent refreshes with one
//! token all get the pair the winner minted: the winner stores it sealed under a key derived
//! from the old token (HKDF), which only holders of that token can derive, for a short grace
//! window. A spend seen after the window is reuse, and revokes the whole session.

use idbridge_core::{
    Amr, Audience, ClientId, LoginSource, Recheck, RefreshContext, RefreshRecord, Session,
    SessionId, SessionState, Spend, SpendOutcome, TokenHash, UnixTime, UserAccount, is_reserved,
};
use serde::{Deserialize, Serialize};

use crate::audit::Origin;
use crate::error::TokenError;
use crate::seal::SealKey;
use crate::secret::{AccessClaims, Actor, REFRESH_TOKEN_PREFIX, hash_token, secret_from};
use crate::service::TokenService;

const GRACE_INFO: &[u8] = b"idbridge refresh grace pair v1";

/// What the token endpoint returns. `Debug` hides both tokens.
#[derive(Clone, Serialize, Deserialize)]
pub struct TokenPair {
    /// The access token (a JWT).
    pub access_token: String,
    /// The refresh token, when the grant gives one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// Seconds until the access token expires.
    pub expires_in: i64,
    /// Its scope.
    #[serde(skip_serializing_if = "String::is_empty", default)]
    pub scope: String,
    /// Its `jti`.
    #[serde(skip)]
    pub jti: String,
    /// The session the pair belongs to, when it was just started.
    #[serde(skip)]
    pub session: Option<SessionId>,
}

impl std::fmt::Debug for TokenPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenPair")
            .field("access_token", &"<redacted>")
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "<redacted>"),
            )
            .field("expires_in", &self.expires_in)
            .field("scope", &self.scope)
            .field("jti", &self.jti)
            .field("session", &self.session)
            .finish()
    }
}

/// Which login source a refresh asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Asked {
    Directory,
    Upstream,
}

/// What a new access token says beyond its session.
#[derive(Debug, Clone)]
pub struct Grant {
    /// The one audience.
    pub audience: Audience,
    /// Groups, without the Kubernetes prefix.
    pub groups: Vec<String>,
    /// Scope.
    pub scope: String,
    /// Who acts for the subject (delegation).
    pub act: Option<Actor>,
    /// No later than this (the subject token's expiry, for exchanges).
    pub not_after: Option<i64>,
}

impl Grant {
    /// What a session's own tokens carry: its audience and scope, the account's groups and the
    /// login's.
    #[must_use]
    pub fn session(account: &UserAccount, session: &Session) -> Self {
        Self {
            audience: session.audience.clone(),
            groups: session_groups(account, session),
            scope: session.scope.clone(),
            act: None,
            not_after: None,
        }
    }
}

/// How a login starts a session.
#[derive(Debug, Clone)]
pub struct Login<'a> {
    /// The account that logged in.
    pub account: &'a UserAccount,
    /// The OAuth client.
    pub client_id: &'a ClientId,
    /// How.
    pub amr: Amr,
    /// The session's audience.
    pub audience: Audience,
    /// Its scope.
    pub scope: String,
    /// Groups the login source vouched for, beyond the account's own.
    pub login_groups: Vec<String>,
    /// What the upstream provider gave to keep the session checked there.
    pub upstream: Option<UpstreamGrant>,
}

/// An upstream provider's refresh token, kept (sealed under idbridge's own refresh token) to ask
/// the provider at every refresh whether the user still may log in. No `Debug`: it is a secret.
#[derive(Clone, Serialize, Deserialize)]
pub struct UpstreamGrant {
    /// The provider's name.
    pub upstream: String,
    /// Its refresh token.
    pub refresh_token: String,
}

impl std::fmt::Debug for UpstreamGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamGrant")
            .field("upstream", &self.upstream)
            .finish_non_exhaustive()
    }
}

const UPSTREAM_INFO: &[u8] = b"idbridge upstream grant v1";

impl UpstreamGrant {
    /// Sealed under a key only the holder of `refresh_token` (idbridge's) can derive.
    ///
    /// # Errors
    /// `Internal` when sealing fails.
    pub fn seal(&self, refresh_token: &str, hash: &TokenHash) -> Result<Vec<u8>, TokenError> {
        let plain = serde_json::to_vec(self)
            .map_err(|e| TokenError::internal("serialize an upstream grant", e))?;
        SealKey::derive(refresh_token.as_bytes(), UPSTREAM_INFO)
            .seal(&hash.0, &plain)
            .map_err(|e| TokenError::internal("seal an upstream grant", e))
    }

    /// Opens what [`UpstreamGrant::seal`] sealed.
    #[must_use]
    pub fn open(refresh_token: &str, hash: &TokenHash, sealed: &[u8]) -> Option<Self> {
        let plain = SealKey::derive(refresh_token.as_bytes(), UPSTREAM_INFO)
            .open(&hash.0, sealed)
            .ok()?;
        serde_json::from_slice(&plain).ok()
    }
}

/// The account's groups and the session's login groups, without `system:` names.
#[must_use]
pub fn session_groups(account: &UserAccount, session: &Session) -> Vec<String> {
    let mut groups: Vec<String> = account.groups.iter().map(ToString::to_string).collect();
    for g in &session.login_groups {
        if !groups.contains(g) {
            groups.push(g.clone());
        }
    }
    groups.retain(|g| !is_reserved(g));
    groups
}

impl TokenService {
    /// Mints an access token for a session.
    ///
    /// # Errors
    /// `Internal` when signing fails.
    pub fn mint(
        &self,
        account: &UserAccount,
        session: &Session,
        grant: Grant,
        now: i64,
    ) -> Result<TokenPair, TokenError> {
        let settings = self.policy();
        let ttl = i64::try_from(settings.access_token_ttl.as_secs()).unwrap_or(900);
        let exp = (now + ttl)
            .min(session.expires_at.0)
            .min(grant.not_after.unwrap_or(i64::MAX));
        let claims = AccessClaims {
            iss: settings.issuer.clone(),
            sub: account.uid.to_string(),
            aud: vec![grant.audience],
            exp,
            iat: now,
            nbf: now,
            jti: self.random().uuid().to_string(),
            name: account.name.to_string(),
            groups: grant.groups,
            namespace: account.default_namespace.as_ref().map(ToString::to_string),
            amr: session.amr.clone(),
            scope: grant.scope.clone(),
            sid: session.id.to_string(),
            client_id: Some(session.client_id.clone()),
            act: grant.act,
        };
        let jwt = self
            .keys()
            .sign(&claims)
            .map_err(|e| TokenError::internal("sign an access token", e))?;
        Ok(TokenPair {
            access_token: jwt,
            refresh_token: None,
            expires_in: exp - now,
            scope: grant.scope,
            jti: claims.jti,
            session: None,
        })
    }

    /// Starts a session for a login and returns its first pair.
    ///
    /// # Errors
    /// The store failed, or signing did.
    pub async fn start_session(
        &self,
        login: Login<'_>,
        ctx: Origin<'_>,
    ) -> Result<TokenPair, TokenError> {
        self.start_session_until(login, None, ctx).await
    }

    /// [`TokenService::start_session`] for a session that must end by `ends_by` at the latest
    /// (a login whose source cannot be asked again, such as an exchanged ID token).
    ///
    /// # Errors
    /// The store failed, or signing did.
    pub async fn start_session_until(
        &self,
        login: Login<'_>,
        ends_by: Option<UnixTime>,
        ctx: Origin<'_>,
    ) -> Result<TokenPair, TokenError> {
        let settings = self.policy();
        let now = self.clock().now();
        let longest = now.plus_secs(settings.session_max_lifetime.as_secs());
        let session = Session {
            id: SessionId::from_random(self.random()),
            account: login.account.uid,
            client_id: login.client_id.clone(),
            amr: vec![login.amr],
            audience: login.audience,
            scope: login.scope,
            login_groups: login.login_groups,
            created_at: now,
            last_used_at: now,
            expires_at: ends_by.map_or(longest, |e| e.min(longest)),
            revoked_at: None,
            revoked_reason: None,
        };
        let refresh = secret_from(self.random(), REFRESH_TOKEN_PREFIX);
        let mut first = RefreshRecord::fresh(hash_token(&refresh), session.id, now);
        if let Some(up) = &login.upstream {
            first.upstream_sealed = Some(up.seal(&refresh, &first.hash)?);
        }
        let grant = Grant::session(login.account, &session);
        let mut pair = self.mint(login.account, &session, grant, now.0)?;
        self.store().create_session(&session, &first).await?;
        pair.refresh_token = Some(refresh);
        pair.session = Some(session.id);
        let mut ev = ctx.event("session.start", "ok");
        ev.account = Some(login.account.name.as_str());
        ev.uid = Some(login.account.uid.to_string());
        ev.object = Some(format!(
            "session={} amr={} client={} jti={}",
            session.id, login.amr, session.client_id, pair.jti
        ));
        self.audit().record_durable(&ev).await;
        Ok(pair)
    }

    /// The `refresh_token` grant: spends `token` once and returns the next pair, after asking
    /// the login's `source` again whether the user still may log in.
    ///
    /// # Errors
    /// `InvalidGrant` with the reason (reuse revokes the session), `Unavailable` when a source
    /// or the store did not answer.
    pub async fn refresh(
        &self,
        client_id: &ClientId,
        token: &str,
        ctx: Origin<'_>,
        source: &dyn LoginSource,
    ) -> Result<TokenPair, TokenError> {
        let hash = hash_token(token);
        let deny = |reason: &str, who: Option<&UserAccount>| {
            let mut ev = ctx.event("token.refresh", "denied");
            ev.reason = Some(reason);
            ev.account = who.map(|a| a.name.as_str());
            ev.uid = who.map(|a| a.uid.to_string());
            self.audit().record(&ev);
            TokenError::InvalidGrant(reason.to_owned())
        };
        if !token.starts_with(REFRESH_TOKEN_PREFIX) {
            return Err(deny("refresh_token is not an idbridge refresh token", None));
        }
        let Some(RefreshContext {
            record,
            session: Some(session),
            account,
        }) = self.store().refresh_context(hash).await?
        else {
            return Err(deny("refresh_token is invalid", None));
        };
        let who = account.as_ref();
        if session.client_id != *client_id {
            return Err(deny("refresh_token was issued to another client", who));
        }
        let now = self.clock().now();
        if record.spent_at.is_some() {
            return self.respent(&record, &session, token, now, ctx, who).await;
        }
        let settings = self.policy();
        let state = session.state(now, settings.session_idle_timeout.as_secs());
        if state != SessionState::Active {
            return Err(deny(&format!("the session is {state}; log in again"), who));
        }
        let account = match account {
            Some(a) if !a.disabled => a,
            _ => return Err(deny("the account is disabled", who)),
        };
        // A directory login is only as good as the directory says it still is.
        let mut session = session;
        let answer = match source.directory_groups(&account, &session).await {
            // A directory password login is re-checked whatever the source: one that does not
            // ask the directory cannot refresh it.
            Ok(None) if session.amr.contains(&Amr::Ldap) => Err(Recheck::Refuse(
                "this session started with a directory login, and no directory is configured now; log in again"
                    .into(),
            )),
            other => other,
        };
        let login_groups = match answer {
            Ok(Some(groups)) => {
                session.login_groups.clone_from(&groups);
                Some(groups)
            }
            Ok(None) => None,
            Err(r) => {
                return Err(self
                    .rechecked(Asked::Directory, r, &account, &session, now, ctx)
                    .await);
            }
        };
        let mut login_groups = login_groups;
        let upstream = match record.upstream_sealed.as_deref() {
            Some(sealed) => {
                let kept = UpstreamGrant::open(token, &hash, sealed).ok_or_else(|| {
                    deny(
                        "the upstream login cannot be read; log in again",
                        Some(&account),
                    )
                })?;
                let (grant, groups) = match source
                    .upstream_refresh(&kept.upstream, &kept.refresh_token)
                    .await
                {
                    Ok(r) => (
                        UpstreamGrant {
                            upstream: kept.upstream,
                            refresh_token: r.refresh_token.unwrap_or(kept.refresh_token),
                        },
                        r.groups,
                    ),
                    Err(r) => {
                        return Err(self
                            .rechecked(Asked::Upstream, r, &account, &session, now, ctx)
                            .await);
                    }
                };
                if let Some(g) = groups {
                    session.login_groups.clone_from(&g);
                    login_groups = Some(g);
                }
                Some(grant)
            }
            None => None,
        };
        let next_secret = secret_from(self.random(), REFRESH_TOKEN_PREFIX);
        let grant = Grant::session(&account, &session);
        let mut pair = self.mint(&account, &session, grant, now.0)?;
        pair.refresh_token = Some(next_secret.clone());
        let sealed = SealKey::derive(token.as_bytes(), GRACE_INFO)
            .seal(
                &hash.0,
                &serde_json::to_vec(&pair)
                    .map_err(|e| TokenError::internal("serialize the grace pair", e))?,
            )
            .map_err(|e| TokenError::internal("seal the grace pair", e))?;
        let mut next = RefreshRecord::fresh(hash_token(&next_secret), session.id, now);
        if let Some(u) = &upstream {
            next.upstream_sealed = Some(u.seal(&next_secret, &next.hash)?);
        }
        let spend = Spend {
            old: hash,
            at: now,
            grace_until: now.plus_secs(settings.refresh_grace.as_secs()),
            sealed,
            next,
            login_groups,
        };
        match self.store().spend_refresh(&spend).await? {
            SpendOutcome::Spent => {
                let mut ev = ctx.event("token.refresh", "ok");
                ev.account = Some(account.name.as_str());
                ev.uid = Some(account.uid.to_string());
                ev.object = Some(format!("session={} jti={}", session.id, pair.jti));
                self.audit().record_durable(&ev).await;
                Ok(pair)
            }
            SpendOutcome::Lost => {
                // Another refresh with the same token won the race (or the session was revoked
                // meanwhile): answer as a repeat of that spend.
                let record = self.store().refresh_token(hash).await?;
                let session = self.store().session(spend.next.session).await?;
                match (record, session) {
                    (Some(r), Some(s)) if r.spent_at.is_some() && s.revoked_at.is_none() => {
                        self.respent(&r, &s, token, now, ctx, Some(&account)).await
                    }
                    _ => Err(deny("the session is revoked; log in again", Some(&account))),
                }
            }
        }
    }

    /// What a source's refusal does: revokes the session when the source says no, and says
    /// why in the audit log and to the caller.
    ///
    /// The audit log records each as it always has: a directory that revokes is a
    /// `session.revoke`, a directory that does not answer a refused refresh; a provider's
    /// refusal (revoking or not) is a refused refresh, a provider that does not answer is only
    /// logged.
    async fn rechecked(
        &self,
        asked: Asked,
        answer: Recheck,
        account: &UserAccount,
        session: &Session,
        now: UnixTime,
        ctx: Origin<'_>,
    ) -> TokenError {
        let refused = |reason: &str, uid: bool| {
            let mut ev = ctx.event("token.refresh", "denied");
            ev.account = Some(account.name.as_str());
            ev.uid = uid.then(|| account.uid.to_string());
            ev.reason = Some(reason);
            self.audit().record(&ev);
        };
        match (asked, answer) {
            (Asked::Directory, Recheck::Refuse(message)) => TokenError::InvalidGrant(message),
            (Asked::Upstream, Recheck::Refuse(message)) => {
                refused(&message, true);
                TokenError::InvalidGrant(message)
            }
            (Asked::Directory, Recheck::Unavailable(message)) => {
                refused("directory unavailable", false);
                TokenError::Unavailable(message)
            }
            (Asked::Upstream, Recheck::Unavailable(message)) => TokenError::Unavailable(message),
            (asked, Recheck::Revoke { reason, message }) => {
                if let Err(e) = self.store().revoke_session(session.id, &reason, now).await {
                    return e.into();
                }
                self.invalidate();
                if asked == Asked::Directory {
                    let mut ev = ctx.event("session.revoke", "ok");
                    ev.account = Some(account.name.as_str());
                    ev.uid = Some(account.uid.to_string());
                    ev.object = Some(format!("session={}", session.id));
                    ev.reason = Some(&reason);
                    self.audit().record_durable(&ev).await;
                } else {
                    refused(&message, true);
                }
                TokenError::InvalidGrant(message)
            }
        }
    }

    /// A refresh token presented again: the same pair within the grace window, else reuse.
    async fn respent(
        &self,
        record: &RefreshRecord,
        session: &Session,
        token: &str,
        now: UnixTime,
        ctx: Origin<'_>,
        who: Option<&UserAccount>,
    ) -> Result<TokenPair, TokenError> {
        let name = who.map(|a| a.name.as_str());
        let uid = who.map(|a| a.uid.to_string());
        if session.revoked_at.is_none()
            && let (Some(until), Some(sealed)) = (record.grace_until, &record.grace_sealed)
            && now < until
            && let Ok(plain) =
                SealKey::derive(token.as_bytes(), GRACE_INFO).open(&record.hash.0, sealed)
            && let Ok(pair) = serde_json::from_slice::<TokenPair>(&plain)
        {
            let mut ev = ctx.event("token.refresh", "ok");
            ev.account = name;
            ev.uid = uid;
            ev.object = Some(format!("session={} repeat=grace", session.id));
            self.audit().record(&ev);
            return Ok(pair);
        }
        if session.revoked_at.is_some() {
            let mut ev = ctx.event("token.refresh", "denied");
            ev.account = name;
            ev.uid = uid;
            ev.reason = Some("the session is revoked");
            self.audit().record(&ev);
            return Err(TokenError::InvalidGrant(
                "the session is revoked; log in again".into(),
            ));
        }
        self.store()
            .revoke_session(session.id, "refresh token reused", now)
            .await?;
        self.invalidate();
        let mut ev = ctx.event("token.reuse", "revoked");
        ev.account = name;
        ev.uid = uid;
        ev.object = Some(format!("session={}", session.id));
        ev.reason = Some("a spent refresh token was presented again; the session is revoked");
        self.audit().record_durable(&ev).await;
        Err(TokenError::InvalidGrant(
            "refresh_token was already used; the session is revoked".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use idbridge_core::{AccountStore, FixedClock, InsecureCounterRandom, NewAccount, NoRecheck};
    use idbridge_store::SqliteStore;

    use super::*;
    use crate::audit::{Audit, AuditSink};
    use crate::keys::{KeySet, Rotate};
    use crate::policy::Policy;

    const T0: i64 = 1_900_000_000;

    #[test]
    fn debug_output_of_a_token_pair_shows_no_token() {
        let pair = TokenPair {
            access_token: "eyJ.access-secret.sig".into(),
            refresh_token: Some("idb_rt_refresh-secret".into()),
            expires_in: 900,
            scope: String::new(),
            jti: "j1".into(),
            session: None,
        };
        let shown = format!("{pair:?}");
        assert!(
            !shown.contains("access-secret") && !shown.contains("refresh-secret"),
            "{shown}"
        );
        assert!(shown.contains("j1"), "{shown}");
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        state: TokenService,
        clock: Arc<FixedClock>,
        account: UserAccount,
    }

    async fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("s.db")).await.unwrap());
        let mut new = NewAccount::named("alice".parse().unwrap());
        new.groups.insert("dev".parse().unwrap());
        let account = store.create_account(new, UnixTime(T0)).await.unwrap();
        let clock = Arc::new(FixedClock::at(UnixTime(T0)));
        let mut settings = Policy::new("https://idbridge.test".into());
        settings.session_idle_timeout = Duration::from_secs(3600);
        settings.session_max_lifetime = Duration::from_secs(4 * 3600);
        let (kid, der) = KeySet::generate().unwrap();
        let state = TokenService::with_random(
            store,
            clock.clone(),
            Arc::new(InsecureCounterRandom::default()),
            KeySet::from_pkcs8(&[(kid, der)]).unwrap(),
            settings,
            Audit::open(&AuditSink::Discard).unwrap(),
        );
        state.maintain_keys(Rotate::Policy).await.unwrap();
        Fixture {
            _dir: dir,
            state,
            clock,
            account,
        }
    }

    impl Fixture {
        async fn login(&self) -> TokenPair {
            self.state
                .start_session(
                    Login {
                        account: &self.account,
                        client_id: &ClientId::cli(),
                        amr: Amr::Static,
                        audience: Audience::kubernetes(),
                        scope: String::new(),
                        login_groups: vec!["proxied".into(), "system:masters".into()],
                        upstream: None,
                    },
                    Origin::local(),
                )
                .await
                .unwrap()
        }

        async fn refresh(&self, pair: &TokenPair) -> Result<TokenPair, String> {
            self.state
                .refresh(
                    &ClientId::cli(),
                    pair.refresh_token.as_deref().unwrap(),
                    Origin::local(),
                    &NoRecheck,
                )
                .await
                .map_err(|e| e.to_string())
        }

        async fn valid(&self, pair: &TokenPair) -> bool {
            self.state
                .authenticate(&pair.access_token, &[])
                .await
                .is_ok()
        }
    }

    #[tokio::test]
    async fn refresh_rotates_and_a_spent_token_revokes_the_family_after_the_grace_window() {
        let f = fixture().await;
        let first = f.login().await;
        let who = f
            .state
            .authenticate(&first.access_token, &[])
            .await
            .unwrap();
        assert_eq!(
            who.groups,
            vec!["dev", "proxied"],
            "system: groups never pass"
        );
        assert_eq!(who.amr, vec![Amr::Static]);
        f.clock.advance(10);
        let second = f.refresh(&first).await.unwrap();
        assert_ne!(second.refresh_token, first.refresh_token);
        // Within the grace window a repeat gets the same pair.
        f.clock.advance(4);
        let again = f.refresh(&first).await.unwrap();
        assert_eq!(again.access_token, second.access_token);
        assert_eq!(again.refresh_token, second.refresh_token);
        let third = f.refresh(&second).await.unwrap();
        assert!(f.valid(&third).await);
        // After it, the spent token is reuse: the whole family goes, access tokens too.
        f.clock.advance(1);
        let err = f.refresh(&first).await.unwrap_err();
        assert!(err.contains("already used"), "{err}");
        assert!(f.refresh(&third).await.unwrap_err().contains("revoked"));
        assert!(!f.valid(&third).await);
        assert!(!f.valid(&first).await);
        // The grace pair was kept only sealed: the stored bytes do not contain the tokens.
        let rec = f
            .state
            .store()
            .refresh_token(hash_token(first.refresh_token.as_deref().unwrap()))
            .await
            .unwrap()
            .unwrap();
        let sealed = rec.grace_sealed.unwrap();
        let needle = second.refresh_token.as_deref().unwrap().as_bytes();
        assert!(!sealed.windows(needle.len()).any(|w| w == needle));
    }

    #[tokio::test]
    async fn sessions_end_at_the_idle_timeout() {
        let f = fixture().await;
        let pair = f.login().await;
        f.clock.advance(3599);
        let pair = f.refresh(&pair).await.unwrap();
        f.clock.advance(3600);
        let err = f.refresh(&pair).await.unwrap_err();
        assert!(err.contains("idle-expired"), "{err}");
    }

    #[tokio::test]
    async fn sessions_end_at_their_absolute_maximum_and_no_token_outlives_them() {
        let f = fixture().await;
        let mut pair = f.login().await;
        for _ in 0..7 {
            f.clock.advance(1800);
            pair = f.refresh(&pair).await.unwrap();
        }
        // 3.5 h in, 30 min are left: the access token keeps its full 15 min.
        assert_eq!(pair.expires_in, 900);
        // 5 min before the end, it is cut to the session's end.
        f.clock.advance(1500);
        let last = f.refresh(&pair).await.unwrap();
        assert_eq!(last.expires_in, 4 * 3600 - (7 * 1800 + 1500));
        f.clock.advance(300);
        let err = f.refresh(&last).await.unwrap_err();
        assert!(err.contains("expired"), "{err}");
    }

    #[tokio::test]
    async fn a_disabled_account_cannot_refresh() {
        let f = fixture().await;
        let pair = f.login().await;
        let mut a = f.account.clone();
        a.disabled = true;
        f.state.store().update_account(&a).await.unwrap();
        f.state.invalidate();
        assert!(f.refresh(&pair).await.unwrap_err().contains("disabled"));
    }
}
