//! Kerberos logins: the `urn:idbridge:params:oauth:grant-type:kerberos` grant (a base64 SPNEGO
//! token in `kerberos_token`; the server's mutual-authentication token back in
//! `kerberos_mutual_token`), and HTTP Negotiate (RFC 4559) on `/login` for browsers and
//! `curl --negotiate`.
//!
//! A SPNEGO token is only ever exchanged for idbridge's own session, never passed on as a bearer
//! credential. NTLM is refused with a message saying Kerberos is required; a replayed
//! authenticator is refused by the acceptor's replay cache.

use idbridge_core::Audience;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use idbridge_core::{DirectoryStatus, ExternalIdentity, Principal, UserAccount};
use idbridge_kerberos::{AcceptError, MapError};
use idbridge_tokens::provision::Provision;
use idbridge_tokens::{Client, Login, TokenPair};
use serde::Deserialize;

use crate::http::error::ApiError;
use crate::http::extract::RequestCtx;
use crate::login::finish::complete_login;
use crate::login::page::{login_failed, login_page};
use crate::login::records::{Verified, checked_login};
use crate::settings::{KerberosLogin, Settings};
use crate::state::AppState;

#[derive(Deserialize)]
pub(crate) struct CsrfQuery {
    csrf: Option<String>,
}

/// `GET /login/kerberos`: HTTP Negotiate for the login in progress.
pub(crate) async fn login_kerberos(
    State(state): State<AppState>,
    ctx: RequestCtx,
    headers: HeaderMap,
    Query(q): Query<CsrfQuery>,
) -> Response {
    let (id, login) = match checked_login(&state, &headers, q.csrf.as_deref()).await {
        Ok(l) => l,
        Err(r) => return r,
    };
    let settings = state.settings();
    let Some(token) = crate::login::kerberos::offered(&headers) else {
        return ApiError::Negotiate(
            "Your browser did not offer a Kerberos ticket: sign in to your computer's domain (kinit), or allow this site for Negotiate, or use another method."
                .into(),
        )
        .into_page(|m| login_page(&settings, &login, Some(m), StatusCode::OK, None));
    };
    match crate::login::kerberos::kerberos_account(&state, token, &login.audience, &ctx).await {
        Ok((account, groups, _mutual)) => {
            let v = Verified {
                account,
                amr: idbridge_core::Amr::Krb5,
                login_groups: groups,
                upstream: None,
            };
            complete_login(&state, &id, login, v, &ctx).await
        }
        Err(e) => login_failed(&settings, &login, e),
    }
}

/// A Kerberos login as the token endpoint or `/login` received it.
pub(crate) struct KerberosRequest<'a> {
    pub client: &'a Client,
    /// The SPNEGO token, base64.
    pub token: &'a str,
    pub audience: Audience,
    pub scope: String,
}

/// Checks the SPNEGO token, maps the principal to its account, and starts a session with
/// `amr=krb5`. Returns the tokens and the mutual-authentication token for the client.
pub(crate) async fn kerberos_login(
    state: &AppState,
    req: KerberosRequest<'_>,
    ctx: &RequestCtx,
) -> Result<(TokenPair, Option<Vec<u8>>), ApiError> {
    let (account, login_groups, mutual) =
        kerberos_account(state, req.token, &req.audience, ctx).await?;
    let pair = state
        .service()
        .start_session(
            Login {
                account: &account,
                client_id: &req.client.id,
                amr: idbridge_core::Amr::Krb5,
                audience: req.audience,
                scope: req.scope,
                login_groups,
                upstream: None,
            },
            ctx.origin(),
        )
        .await?;
    Ok((pair, mutual))
}

/// Checks the SPNEGO token (base64) and returns the principal's account, the groups for
/// `audience`, and the mutual-authentication token.
pub(crate) async fn kerberos_account(
    state: &AppState,
    token: &str,
    audience: &Audience,
    ctx: &RequestCtx,
) -> Result<(UserAccount, Vec<String>, Option<Vec<u8>>), ApiError> {
    let settings = state.settings();
    let Some(krb) = settings.kerberos.as_ref() else {
        return Err(ApiError::OAuth {
            status: StatusCode::BAD_REQUEST,
            error: "unsupported_grant_type",
            description: "Kerberos logins need a keytab (config section `kerberos`)".into(),
        });
    };
    let deny = |reason: &str, who: Option<&str>| {
        state
            .service()
            .login_denied(ctx.origin(), "login.krb5", who, reason)
    };
    let Ok(bytes) = STANDARD.decode(token.trim()) else {
        deny("kerberos_token is not base64", None);
        return Err(ApiError::invalid_request(
            "kerberos_token must be the base64 SPNEGO token",
        ));
    };
    let accepted = match krb.acceptor.accept(bytes).await {
        Ok(a) => a,
        Err(AcceptError::Internal(detail)) => {
            return Err(ApiError::internal("accept a Kerberos token", &detail));
        }
        Err(e) => {
            tracing::info!(reason = %e, detail = %e.detail(), "Kerberos login refused");
            deny(&e.to_string(), None);
            return Err(ApiError::invalid_grant(e.to_string()));
        }
    };
    let principal = accepted.principal;
    if !krb.mapper.allows_realm(principal.realm()) {
        let why = MapError::RealmNotAllowed(principal.realm().to_owned()).to_string();
        deny(&why, Some(principal.as_str()));
        return Err(ApiError::invalid_grant(why));
    }
    let (account, login_groups) = if krb.groups_from_directory {
        kerberos_directory_account(state, &settings, krb, &principal, audience, ctx).await?
    } else {
        let name = krb.mapper.account_name(&principal).map_err(|e| {
            deny(&e.to_string(), Some(principal.as_str()));
            ApiError::invalid_grant(e.to_string())
        })?;
        let account = state
            .service()
            .provisioned_account(
                Provision {
                    identity: ExternalIdentity::Kerberos {
                        principal: principal.clone(),
                    },
                    name: &name,
                    jit: krb.jit,
                    link_by_name: krb.link_by_name,
                    name_is_identity: false,
                    first_login: None,
                    event: "login.krb5",
                    what: "Kerberos principal",
                    section: "kerberos",
                },
                ctx.origin(),
            )
            .await?;
        (account, Vec::new())
    };
    if account.disabled {
        deny(
            "account is disabled in idbridge",
            Some(account.name.as_str()),
        );
        return Err(ApiError::invalid_grant("your idbridge account is disabled"));
    }
    Ok((account, login_groups, accepted.mutual_token))
}

/// With `kerberos.groups: directory`: the directory entry holding the principal is the user
/// (one account whichever way they log in), and its groups are the session's.
async fn kerberos_directory_account(
    state: &AppState,
    settings: &Settings,
    krb: &KerberosLogin,
    principal: &Principal,
    audience: &Audience,
    ctx: &RequestCtx,
) -> Result<(UserAccount, Vec<String>), ApiError> {
    let refuse = |why: String| {
        state
            .service()
            .login_denied(ctx.origin(), "login.krb5", Some(principal.as_str()), &why);
        ApiError::invalid_grant(why)
    };
    let Some(dir) = settings.directory.as_ref() else {
        return Err(refuse(
            "Kerberos groups come from the directory, and no directory is configured".into(),
        ));
    };
    let user = match dir.directory.user_by_principal(principal.as_str()).await {
        Ok(Some(u)) => u,
        Ok(None) => {
            return Err(refuse(format!(
                "no directory entry holds the principal {principal}; ask your administrator"
            )));
        }
        Err(e) => return Err(crate::login::password::unavailable(&e)),
    };
    if user.status != DirectoryStatus::Active {
        return Err(refuse(format!("the directory account is {}", user.status)));
    }
    let mut account = crate::login::password::directory_account(
        state,
        &user,
        (krb.jit, krb.link_by_name),
        "login.krb5",
        ctx,
    )
    .await?;
    let identity = ExternalIdentity::Kerberos {
        principal: principal.clone(),
    };
    if !account.identities.contains(&identity) {
        account = state
            .service()
            .link(
                account,
                identity,
                "linked to its Kerberos principal through the directory",
                ctx.origin(),
            )
            .await?;
    }
    let groups = crate::login::password::shaped_groups(state, dir, &user, audience, &account, ctx);
    Ok((account, groups))
}

/// `GET /login`: HTTP Negotiate. Without a token, a 401 challenge; with a good one, the token
/// response of a session for `idbridge-cli` and the mutual-authentication token in
/// `WWW-Authenticate`; with a bad one, 401 and a fresh challenge with the reason.
pub(crate) async fn login(
    State(state): State<AppState>,
    ctx: RequestCtx,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let settings = state.settings();
    if settings.kerberos.is_none() {
        return Err(ApiError::NotFound(
            "Kerberos logins are not configured (config section `kerberos`)".into(),
        ));
    }
    let Some(token) = offered(&headers) else {
        return Ok(challenge(
            "this page logs you in with Kerberos: your client should answer with a Negotiate token (curl --negotiate -u : URL)",
        ));
    };
    let client = crate::http::client::client(
        &settings,
        &HeaderMap::new(),
        Some(idbridge_tokens::CLI_CLIENT),
        None,
    )?;
    if !client.grants.contains(&idbridge_core::GrantType::Kerberos) {
        return Ok(challenge(
            "Kerberos logins are not enabled for the idbridge-cli client (its `grants` leave out the Kerberos grant)",
        ));
    }
    let audience = idbridge_tokens::exchange::target(&settings.tokens, client, None)?;
    let result = kerberos_login(
        &state,
        KerberosRequest {
            client,
            token,
            audience,
            scope: String::new(),
        },
        &ctx,
    )
    .await;
    match result {
        Ok((pair, mutual)) => {
            let mut r = crate::http::reply::token_response(&pair, true);
            if let Some(m) = mutual
                && let Ok(v) = HeaderValue::from_str(&format!("Negotiate {}", STANDARD.encode(m)))
            {
                r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
            }
            Ok(r)
        }
        Err(ApiError::OAuth { description, .. }) => Ok(challenge(&description)),
        Err(e) => Err(e),
    }
}

/// The token of an `Authorization: Negotiate` header.
pub(crate) fn offered(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("negotiate")
                .then(|| token.trim())
        })
}

/// A 401 asking for Negotiate, saying why.
fn challenge(why: &str) -> Response {
    ApiError::Negotiate(why.to_owned()).into_response()
}
