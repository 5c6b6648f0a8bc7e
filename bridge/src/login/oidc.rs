//! Logins at an upstream OpenID provider: the redirect there, its callback, and RFC 8693 with
//! an upstream ID token as the subject.

use idbridge_core::Audience;

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use idbridge_core::{ExternalIdentity, PendingKind, UserAccount};
use idbridge_tokens::provision::Provision;
use idbridge_tokens::{Client, Login, Secret, TokenPair, UpstreamGrant, hash_token, new_secret};
use serde::Deserialize;

use crate::http::error::ApiError;
use crate::http::extract::RequestCtx;
use crate::http::page;
use crate::http::page::see_other;
use crate::login::finish::complete_login;
use crate::login::page::{LoginFailure, login_failed, login_page};
use crate::login::records::{
    CsrfForm, LOGIN_TTL, LoginRequest, UpstreamState, Verified, checked_login, current_login,
};
use crate::login::upstream::{Upstream, UpstreamError};
use crate::settings::Settings;
use crate::state::AppState;
use idbridge_tokens::grants::hex;

fn callback_uri(settings: &Settings) -> String {
    format!(
        "{}/login/oidc/callback",
        settings.tokens.issuer.trim_end_matches('/')
    )
}

/// `POST /login/oidc/{name}`: off to the upstream provider with `state`, `nonce` and PKCE.
pub(crate) async fn login_upstream(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Response {
    let (id, login) = match checked_login(&state, &headers, form.csrf.as_deref()).await {
        Ok(l) => l,
        Err(r) => return r,
    };
    let settings = state.settings();
    let Some(up) = settings.upstream(&name) else {
        return page::error(
            StatusCode::NOT_FOUND,
            "Sign-in failed",
            &format!("no identity provider is named {name:?}"),
        );
    };
    let (challenge, verifier) = openidconnect::PkceCodeChallenge::new_random_sha256();
    let upstream_state = new_secret("");
    let nonce = new_secret("");
    let url = match up
        .authorize_url(
            &callback_uri(&settings),
            &upstream_state,
            &nonce,
            challenge.as_str(),
        )
        .await
    {
        Ok(u) => u,
        Err(e) => return upstream_error_page(&settings, &login, &e),
    };
    let record = UpstreamState {
        login_key: hex(&hash_token(&id)),
        upstream: name,
        nonce,
        verifier: verifier.secret().clone(),
    };
    match state
        .service()
        .put_pending(
            &upstream_state,
            None,
            PendingKind::Upstream,
            &record,
            LOGIN_TTL,
        )
        .await
    {
        Ok(()) => see_other(&url),
        Err(e) => ApiError::from(e).into_response(),
    }
}

fn upstream_error_page(settings: &Settings, login: &LoginRequest, e: &UpstreamError) -> Response {
    tracing::info!(error = %e, "upstream login failed");
    let e = match e {
        UpstreamError::Unavailable { .. } => ApiError::Unavailable(e.to_string()),
        _ => ApiError::invalid_grant(e.to_string()),
    };
    crate::login::page::login_failed(settings, login, e)
}

#[derive(Deserialize)]
pub(crate) struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// `GET /login/oidc/callback`: the upstream provider's answer.
pub(crate) async fn upstream_callback(
    State(state): State<AppState>,
    ctx: RequestCtx,
    headers: HeaderMap,
    Query(q): Query<CallbackQuery>,
) -> Response {
    let refused = |m: &str| {
        state
            .service()
            .login_denied(ctx.origin(), "login.oidc", None, m);
        page::error(StatusCode::BAD_REQUEST, "Sign-in refused", m)
    };
    let Some(upstream_state) = q.state.as_deref().filter(|s| !s.is_empty()) else {
        return refused("the identity provider's answer has no state");
    };
    let now = state.clock().now();
    let record = match state
        .store()
        .use_pending(hash_token(upstream_state), now)
        .await
    {
        Ok(Some((p, true))) if p.kind == PendingKind::Upstream => p,
        Ok(Some((_, false))) => {
            return refused("this answer of the identity provider was already used");
        }
        Ok(_) => {
            return refused(
                "the state does not match a sign-in in progress (tampered with, or expired)",
            );
        }
        Err(e) => return ApiError::from(e).into_response(),
    };
    let up_state = match serde_json::from_str::<UpstreamState>(&record.data) {
        Ok(s) => s,
        Err(e) => return ApiError::internal("read an upstream login record", &e).into_response(),
    };
    // The state must come back to the browser that started the login.
    let (id, login) = match current_login(&state, &headers).await {
        Ok(l) => l,
        Err(r) => return r,
    };
    if !Secret::new(hex(&hash_token(&id))).matches(&up_state.login_key) {
        return refused("the state belongs to a sign-in started in another browser");
    }
    let settings = state.settings();
    let Some(up) = settings.upstream(&up_state.upstream) else {
        return refused("the identity provider is no longer configured");
    };
    if let Some(err) = q.error.as_deref() {
        let why = format!(
            "{} answered {err}{}",
            up.config.display_name,
            q.error_description
                .as_deref()
                .map(|d| format!(": {d}"))
                .unwrap_or_default()
        );
        state
            .service()
            .login_denied(ctx.origin(), "login.oidc", None, &why);
        return login_page(
            &settings,
            &login,
            Some(&why),
            StatusCode::UNAUTHORIZED,
            None,
        );
    }
    let Some(code) = q.code.as_deref().filter(|c| !c.is_empty()) else {
        return refused("the identity provider's answer has no code");
    };
    let verified = match upstream_login(&state, up, code, &up_state, &settings, &ctx).await {
        Ok(v) => v,
        Err(LoginFailure::Upstream(e)) => {
            state
                .service()
                .login_denied(ctx.origin(), "login.oidc", None, &e.to_string());
            return upstream_error_page(&settings, &login, &e);
        }
        Err(LoginFailure::Api(e)) => return login_failed(&settings, &login, e),
    };
    complete_login(&state, &id, login, verified, &ctx).await
}

/// The upstream's code exchanged and its ID token checked: the linked account.
async fn upstream_login(
    state: &AppState,
    up: &Upstream,
    code: &str,
    st: &UpstreamState,
    settings: &Settings,
    ctx: &RequestCtx,
) -> Result<Verified, LoginFailure> {
    let tokens = up
        .exchange_code(code, &st.verifier, &callback_uri(settings))
        .await
        .map_err(LoginFailure::Upstream)?;
    let raw = tokens.id_token.as_deref().ok_or_else(|| {
        LoginFailure::Upstream(UpstreamError::Invalid {
            name: up.config.name.clone(),
            why: "its token response has no id_token".into(),
        })
    })?;
    let claims = up
        .verify_id_token(raw, Some(&st.nonce))
        .await
        .map_err(LoginFailure::Upstream)?;
    let (account, groups) = upstream_account(state, up, &claims, ctx).await?;
    let upstream = if up.config.refresh {
        let rt = tokens.refresh_token.ok_or_else(|| {
            LoginFailure::Upstream(UpstreamError::Invalid {
                name: up.config.name.clone(),
                why: "it sent no refresh token, and `refresh` is on for it (does the client allow the refresh_token grant and offline_access?)".into(),
            })
        })?;
        Some(UpstreamGrant {
            upstream: up.config.name.clone(),
            refresh_token: rt,
        })
    } else {
        None
    };
    Ok(Verified {
        account,
        amr: idbridge_core::Amr::Oidc,
        login_groups: groups,
        upstream,
    })
}

/// The account an upstream's verified claims name, linked by `iss` + `sub`.
pub(crate) async fn upstream_account(
    state: &AppState,
    up: &Upstream,
    claims: &serde_json::Value,
    ctx: &RequestCtx,
) -> Result<(UserAccount, Vec<String>), LoginFailure> {
    let user = up.user(claims).map_err(LoginFailure::Upstream)?;
    let name = user.name.parse().map_err(|e| {
        LoginFailure::Upstream(UpstreamError::Invalid {
            name: up.config.name.clone(),
            why: format!(
                "its {} claim is not a usable account name: {e}",
                up.config.username_claim
            ),
        })
    })?;
    let account = state
        .service()
        .provisioned_account(
            Provision {
                identity: ExternalIdentity::Oidc {
                    iss: user.iss,
                    sub: user.sub,
                },
                name: &name,
                jit: up.config.jit,
                link_by_name: up.config.link_by_name,
                name_is_identity: false,
                first_login: None,
                event: "login.oidc",
                what: "identity provider's user",
                section: "upstreams[]",
            },
            ctx.origin(),
        )
        .await?;
    if account.disabled {
        state.service().login_denied(
            ctx.origin(),
            "login.oidc",
            Some(account.name.as_str()),
            "account is disabled in idbridge",
        );
        return Err(ApiError::invalid_grant("your idbridge account is disabled").into());
    }
    Ok((account, user.groups))
}

/// The `iss` a JWT claims, before anything about it is checked (to pick the upstream that
/// then checks it).
fn claimed_issuer(jwt: &str) -> Option<String> {
    let payload = jwt.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v.get("iss")?.as_str().map(str::to_owned)
}

/// RFC 8693 with an upstream ID token as the subject: the token checked by the upstream
/// whose issuer it names (audience: idbridge's client there), then a session (`amr=oidc`).
pub(crate) async fn exchange_id_token(
    state: &AppState,
    client: &Client,
    raw: &str,
    audience: Audience,
    scope: String,
    ctx: &RequestCtx,
) -> Result<TokenPair, ApiError> {
    let settings = state.settings();
    let deny = |reason: String| {
        state
            .service()
            .login_denied(ctx.origin(), "login.oidc", None, &reason);
        ApiError::invalid_grant(reason)
    };
    let Some(iss) = claimed_issuer(raw) else {
        return Err(deny("subject_token is not a JWT with an iss claim".into()));
    };
    let Some(up) = settings.upstreams.iter().find(|u| u.config.issuer == iss) else {
        return Err(deny(format!(
            "no configured identity provider has the issuer {iss:?} (upstreams[].issuer)"
        )));
    };
    let claims = match up.verify_id_token(raw, None).await {
        Ok(c) => c,
        Err(e) => {
            let err = ApiError::from(LoginFailure::Upstream(e));
            if let ApiError::OAuth { description, .. } = &err {
                state
                    .service()
                    .login_denied(ctx.origin(), "login.oidc", None, description);
            }
            return Err(err);
        }
    };
    // An exchanged ID token carries no refresh token, so the provider cannot be asked again:
    // the session ends when the ID token does, and each ID token starts one session only.
    let Some(exp) = claims.get("exp").and_then(serde_json::Value::as_i64) else {
        return Err(deny("the ID token has no exp claim".into()));
    };
    if !state
        .service()
        .spend_id_token(raw, idbridge_core::UnixTime(exp))
        .await?
    {
        return Err(deny(
            "this ID token was exchanged already; log in at the provider again for a new one"
                .into(),
        ));
    }
    let (account, groups) = upstream_account(state, up, &claims, ctx).await?;
    state
        .service()
        .start_session_until(
            Login {
                account: &account,
                client_id: &client.id,
                amr: idbridge_core::Amr::Oidc,
                audience,
                scope,
                login_groups: groups,
                upstream: None,
            },
            Some(idbridge_core::UnixTime(exp)),
            ctx.origin(),
        )
        .await
        .map_err(ApiError::from)
}
