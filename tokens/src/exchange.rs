//! RFC 8693 token exchange: a token becomes a narrower one.
//!
//! A static token starts a session (`amr=static`). An access token becomes one with fewer
//! groups or scopes (`group:NAME` scope values select groups), for the same audience unless an
//! `audience_changes` rule (global or the client's) re-targets it, and never past the subject
//! token's expiry. With an actor token it becomes a delegated token carrying `act`, where a
//! `may_act` rule allows it.

use idbridge_core::{Amr, Audience, TokenType};

use crate::audit::Origin;
use crate::error::TokenError;
use crate::policy::{AudienceChange, Client, Policy};
use crate::secret::{AccessClaims, Actor, STATIC_TOKEN_PREFIX};
use crate::service::TokenService;
use crate::sessions::{Grant, Login, TokenPair};
use crate::verify::Denial;

impl std::fmt::Debug for Exchange<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exchange")
            .field("client", &self.client.id)
            .field("audience", &self.audience)
            .field("scope", &self.scope)
            .field("actor_token_type", &self.actor_token_type)
            .finish_non_exhaustive()
    }
}

/// Audiences as messages show them, space-separated.
fn joined(audiences: &[Audience]) -> String {
    audiences
        .iter()
        .map(Audience::as_str)
        .collect::<Vec<_>>()
        .join(" ")
}

/// A scope value selecting one group for an exchanged token.
const GROUP_SCOPE: &str = "group:";

/// An access-token exchange, as the token endpoint received it. `Debug` hides the tokens.
pub struct Exchange<'a> {
    /// The authenticated client.
    pub client: &'a Client,
    /// The subject token.
    pub subject: &'a str,
    /// The audience asked for, if any.
    pub audience: Option<&'a str>,
    /// The scope asked for, if any.
    pub scope: Option<&'a str>,
    /// The actor token, for delegation.
    pub actor_token: Option<&'a str>,
    /// Its type, as sent.
    pub actor_token_type: Option<&'a str>,
}

/// The audience a client asks for (the default one when it names none), if its allow-list has it.
///
/// # Errors
/// `InvalidTarget` when the audience is not a valid one or not the client's.
pub fn target(
    settings: &Policy,
    client: &Client,
    requested: Option<String>,
) -> Result<Audience, TokenError> {
    let not_allowed = |a: &str| {
        TokenError::InvalidTarget(format!(
            "audience {a:?} is not allowed for client {:?}",
            client.id
        ))
    };
    let audience = match requested {
        // A value that is no audience at all is, like any other, not one the client may have.
        Some(a) => a.parse::<Audience>().map_err(|_| not_allowed(&a))?,
        None => settings.default_audience(),
    };
    if client.audiences.contains(&audience) {
        Ok(audience)
    } else {
        Err(not_allowed(audience.as_str()))
    }
}

/// Narrows the subject's groups and scopes to what `scope` asks for: `group:NAME` values select
/// groups (all of the subject's when none is named); other values must be among the subject's
/// scopes.
pub fn narrow(
    subject: &AccessClaims,
    scope: Option<&str>,
) -> Result<(Vec<String>, String), TokenError> {
    let Some(scope) = scope.filter(|s| !s.trim().is_empty()) else {
        return Ok((subject.groups.clone(), subject.scope.clone()));
    };
    let have: Vec<&str> = subject.scope.split_whitespace().collect();
    let mut groups = Vec::new();
    let mut scopes = Vec::new();
    for s in scope.split_whitespace() {
        if let Some(g) = s.strip_prefix(GROUP_SCOPE) {
            if !subject.groups.iter().any(|h| h == g) {
                return Err(TokenError::InvalidScope(format!(
                    "the subject token does not carry group {g:?}"
                )));
            }
            if !groups.iter().any(|h: &String| h == g) {
                groups.push(g.to_owned());
            }
        } else if have.contains(&s) {
            if !scopes.contains(&s) {
                scopes.push(s);
            }
        } else {
            return Err(TokenError::InvalidScope(format!(
                "the subject token does not carry scope {s:?}"
            )));
        }
    }
    if groups.is_empty() {
        groups.clone_from(&subject.groups);
    }
    Ok((groups, scopes.join(" ")))
}

/// The audience an access-token exchange yields: the subject token's own (the requested one,
/// or the subject's when none is asked for), or another only where an `audience_changes` rule
/// (global or the client's) allows the change from the subject's audience; the client's
/// allow-list applies on top.
///
/// # Errors
/// `invalid_target` naming the audiences at fault.
pub fn exchange_target(
    settings: &Policy,
    client: &Client,
    subject: &AccessClaims,
    requested: Option<&str>,
) -> Result<Audience, TokenError> {
    let default = settings.default_audience();
    let audience = match requested.filter(|a| !a.is_empty()) {
        Some(a) => a.parse::<Audience>().map_err(|_| {
            TokenError::InvalidTarget(format!(
                "the subject token is for {:?}; no token_exchange.audience_changes rule allows \
                 re-targeting it to {a:?}",
                joined(&subject.aud)
            ))
        })?,
        None => subject
            .aud
            .iter()
            .find(|a| **a == default)
            .or_else(|| subject.aud.first())
            .cloned()
            .unwrap_or(default),
    };
    if !subject.aud.contains(&audience)
        && !AudienceChange::allows(&settings.audience_changes, &subject.aud, &audience)
        && !AudienceChange::allows(&client.audience_changes, &subject.aud, &audience)
    {
        return Err(TokenError::InvalidTarget(format!(
            "the subject token is for {:?}; no token_exchange.audience_changes rule allows \
                 re-targeting it to {audience:?}",
            joined(&subject.aud)
        )));
    }
    target(settings, client, Some(audience.into()))
}

impl TokenService {
    /// A static token starts a session (`amr=static`).
    pub async fn exchange_static(
        &self,
        ctx: Origin<'_>,
        client: &Client,
        subject: &str,
        audience: Audience,
        scope: Option<String>,
    ) -> Result<TokenPair, TokenError> {
        if !subject.starts_with(STATIC_TOKEN_PREFIX) {
            return Err(TokenError::invalid_grant(
                "subject_token is not a static token",
            ));
        }
        let who = match self.authenticate_here(subject).await {
            Ok(w) => w,
            Err(refusal) => {
                let reason = refusal.audit(self.audit(), ctx, "token.exchange");
                if refusal.denial == Denial::Unavailable {
                    return Err(TokenError::Unavailable(reason));
                }
                return Err(TokenError::invalid_grant(reason));
            }
        };
        let account = self
            .store()
            .account(who.uid)
            .await?
            .ok_or_else(|| TokenError::invalid_grant("account is disabled"))?;
        self.start_session(
            Login {
                account: &account,
                client_id: &client.id,
                amr: Amr::Static,
                audience,
                scope: scope.unwrap_or_default(),
                login_groups: Vec::new(),
                upstream: None,
            },
            ctx,
        )
        .await
    }

    pub async fn verified_access(&self, token: &str) -> Result<AccessClaims, Denial> {
        let settings = self.policy();
        self.authenticator()
            .access_claims(
                token,
                &settings,
                &self.keys(),
                &**self.store(),
                self.clock().now().0,
            )
            .await
            .map_err(|r| r.denial)
    }

    /// An access token becomes a narrower one; with an actor token, a delegated one carrying `act`.
    pub async fn exchange_access(
        &self,
        req: &Exchange<'_>,
        ctx: Origin<'_>,
    ) -> Result<TokenPair, TokenError> {
        let deny = |reason: &str, who: Option<&AccessClaims>| {
            let mut ev = ctx.event("token.exchange", "denied");
            ev.reason = Some(reason);
            ev.account = who.map(|c| c.name.as_str());
            ev.uid = who.map(|c| c.sub.clone());
            self.audit().record(&ev);
        };
        let claims = match self.verified_access(req.subject).await {
            Ok(c) => c,
            Err(Denial::Unavailable) => {
                return Err(TokenError::Unavailable(Denial::Unavailable.to_string()));
            }
            Err(d) => {
                deny(&d.to_string(), None);
                return Err(TokenError::invalid_grant(format!("subject_token: {d}")));
            }
        };
        // The audience first: a refused re-target answers invalid_target whatever the scope says.
        let audience = match exchange_target(&self.policy(), req.client, &claims, req.audience) {
            Ok(a) => a,
            Err(e) => {
                deny(&format!("{}: {e}", e.code()), Some(&claims));
                return Err(e);
            }
        };
        let (groups, scope) = match narrow(&claims, req.scope) {
            Ok(n) => n,
            Err(e) => {
                deny(&format!("{}: {e}", e.code()), Some(&claims));
                return Err(e);
            }
        };
        let act = match (
            req.actor_token,
            req.actor_token_type.map(str::parse::<TokenType>),
        ) {
            (None, None) => None,
            (Some(actor), Some(Ok(TokenType::Static | TokenType::AccessToken))) => {
                let (name, uid, groups) = if actor.starts_with(STATIC_TOKEN_PREFIX) {
                    match self.authenticate_here(actor).await {
                        Ok(a) => (a.name.clone(), a.uid.to_string(), a.groups.clone()),
                        Err(_) => {
                            deny("actor_token is invalid", Some(&claims));
                            return Err(TokenError::invalid_grant("actor_token is invalid"));
                        }
                    }
                } else {
                    match self.verified_access(actor).await {
                        // An actor's access token must be meant for idbridge itself or for the
                        // subject token's audience: a token for some other service proves nothing
                        // here.
                        Ok(a)
                            if !a.aud.iter().any(|x| {
                                x.as_str() == self.policy().issuer || claims.aud.contains(x)
                            }) =>
                        {
                            deny("actor_token is for another audience", Some(&claims));
                            return Err(TokenError::invalid_grant(format!(
                                "actor_token: the token is for {:?}, neither idbridge nor the \
                                 subject token's audience",
                                joined(&a.aud)
                            )));
                        }
                        Ok(a) => (a.name, a.sub, a.groups),
                        Err(d) => {
                            deny("actor_token is invalid", Some(&claims));
                            return Err(TokenError::invalid_grant(format!("actor_token: {d}")));
                        }
                    }
                };
                let settings = self.policy();
                let allowed = settings.may_act.iter().any(|rule| {
                    rule.actors.matches(&name, &groups)
                        && rule.subjects.matches(&claims.name, &claims.groups)
                        && rule.audiences.contains(&audience)
                });
                if !allowed {
                    let reason = format!(
                        "{name:?} may not act for {:?} towards audience {audience:?}",
                        claims.name
                    );
                    deny(&reason, Some(&claims));
                    return Err(TokenError::invalid_grant(format!(
                        "{reason} (no delegation rule allows it)"
                    )));
                }
                Some(Actor {
                    sub: uid,
                    name,
                    act: claims.act.clone().map(Box::new),
                })
            }
            (Some(_), Some(_)) => {
                return Err(TokenError::invalid_request(format!(
                    "actor_token_type {:?} is not supported",
                    req.actor_token_type.unwrap_or_default()
                )));
            }
            (Some(_), None) => {
                return Err(TokenError::invalid_request("actor_token_type is required"));
            }
            (None, Some(_)) => {
                return Err(TokenError::invalid_request(
                    "actor_token_type without actor_token",
                ));
            }
        };
        let act = act.or_else(|| claims.act.clone());
        let sid = claims
            .sid
            .parse()
            .map_err(|_| TokenError::invalid_grant("subject_token has no session"))?;
        let session = self.store().session(sid).await?.ok_or_else(|| {
            TokenError::invalid_grant("subject_token: token is invalid or revoked")
        })?;
        let account = self
            .store()
            .account(session.account)
            .await?
            .ok_or_else(|| TokenError::invalid_grant("subject_token: account is disabled"))?;
        let actor_name = act.as_ref().map(|a| a.name.clone());
        let now = self.clock().now().0;
        let pair = self.mint(
            &account,
            &session,
            Grant {
                audience: audience.clone(),
                groups,
                scope,
                act,
                not_after: Some(claims.exp),
            },
            now,
        )?;
        let mut ev = ctx.event("token.exchange", "ok");
        ev.account = Some(account.name.as_str());
        ev.uid = Some(account.uid.to_string());
        ev.actor = actor_name.as_deref();
        ev.object = Some(format!(
            "session={} from_jti={} jti={} aud={audience}",
            session.id, claims.jti, pair.jti
        ));
        self.audit().record_durable(&ev).await;
        Ok(pair)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(groups: &[&str], scope: &str) -> AccessClaims {
        AccessClaims {
            iss: "i".into(),
            sub: "s".into(),
            aud: vec!["kubernetes".parse().unwrap()],
            exp: 2,
            iat: 1,
            nbf: 1,
            jti: "j".into(),
            name: "alice".into(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            namespace: None,
            amr: vec![],
            scope: scope.into(),
            sid: "x".into(),
            client_id: None,
            act: None,
        }
    }

    #[test]
    fn narrowing_keeps_only_what_the_subject_has() {
        let c = claims(&["dev", "ops"], "read write");
        assert_eq!(
            narrow(&c, None).unwrap(),
            (vec!["dev".into(), "ops".into()], "read write".into())
        );
        assert_eq!(
            narrow(&c, Some("group:dev read")).unwrap(),
            (vec!["dev".into()], "read".into())
        );
        assert!(narrow(&c, Some("group:admins")).is_err());
        assert!(narrow(&c, Some("delete")).is_err());
    }

    #[test]
    fn an_exchange_keeps_the_audience_unless_a_rule_retargets_it() {
        let mut settings = Policy::new("https://idb".into());
        let mut client = Client::cli(vec![
            "kubernetes".parse().unwrap(),
            "vault".parse().unwrap(),
        ]);
        let mut c = claims(&["dev"], "");
        let err = |r: Result<Audience, TokenError>| match r {
            Err(e @ TokenError::InvalidTarget(_)) => e.code(),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            exchange_target(&settings, &client, &c, None).unwrap(),
            "kubernetes"
        );
        assert_eq!(
            err(exchange_target(&settings, &client, &c, Some("vault"))),
            "invalid_target"
        );
        // A rule on the client, then globally; it goes one way only.
        client.audience_changes = vec![AudienceChange {
            from: "kubernetes".parse().unwrap(),
            to: vec!["vault".parse().unwrap()],
        }];
        assert_eq!(
            exchange_target(&settings, &client, &c, Some("vault")).unwrap(),
            "vault"
        );
        settings.audience_changes = std::mem::take(&mut client.audience_changes);
        assert_eq!(
            exchange_target(&settings, &client, &c, Some("vault")).unwrap(),
            "vault"
        );
        c.aud = vec!["vault".parse().unwrap()];
        assert_eq!(
            exchange_target(&settings, &client, &c, None).unwrap(),
            "vault"
        );
        assert_eq!(
            err(exchange_target(&settings, &client, &c, Some("kubernetes"))),
            "invalid_target"
        );
        // The client's allow-list still applies on top of a rule.
        settings.audience_changes = vec![AudienceChange {
            from: "vault".parse().unwrap(),
            to: vec!["prod-db".parse().unwrap()],
        }];
        assert_eq!(
            err(exchange_target(&settings, &client, &c, Some("prod-db"))),
            "invalid_target"
        );
    }
}
