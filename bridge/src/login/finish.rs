//! Where a finished browser login goes: an authorization code for the client's redirect URI, or
//! the approval of a device code (both kept by the token service, `idbridge_tokens::grants`).

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use idbridge_core::PendingKind;
use idbridge_tokens::{hash_token, new_secret};

use crate::http::error::ApiError;
use crate::http::extract::RequestCtx;
use crate::http::page;
use crate::http::page::{see_other, with_query};
use crate::login::records::{LOGIN_COOKIE, LoginRequest, Then, Verified};
use crate::state::AppState;
use idbridge_tokens::grants::{Approved, CODE_TTL, CodeGrant};

/// Ends a successful login: a code back to the client, or the waiting device approved.
pub(crate) async fn complete_login(
    state: &AppState,
    id: &str,
    login: LoginRequest,
    v: Verified,
    ctx: &RequestCtx,
) -> Response {
    match finish(state, id, login, v, ctx).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn finish(
    state: &AppState,
    id: &str,
    login: LoginRequest,
    v: Verified,
    ctx: &RequestCtx,
) -> Result<Response, ApiError> {
    let now = state.clock().now();
    match state.store().use_pending(hash_token(id), now).await? {
        Some((_, true)) => {}
        _ => {
            return Ok(page::error(
                StatusCode::BAD_REQUEST,
                "Sign-in already finished",
                "this sign-in was already finished: start again from your application",
            ));
        }
    }
    let settings = state.settings();
    let clear = page::cookie(LOGIN_COOKIE, "", 0);
    let mut ev = ctx.event("login.approve", "ok");
    ev.account = Some(v.account.name.as_str());
    ev.uid = Some(v.account.uid.to_string());
    let object = format!("client={} amr={}", login.client_id, v.amr);
    ev.object = Some(object);
    state.audit().record(&ev);
    match login.then {
        Then::Code {
            redirect_uri,
            state: oauth_state,
            code_challenge,
        } => {
            let code = new_secret("idb_ac_");
            let key = hash_token(&code);
            let approved = Approved {
                uid: v.account.uid.to_string(),
                amr: v.amr,
                login_groups: v.login_groups,
                upstream_sealed: v.upstream.map(|u| u.seal(&code, &key)).transpose()?,
                upstream: None,
            };
            let grant = CodeGrant {
                client_id: login.client_id,
                redirect_uri: redirect_uri.clone(),
                code_challenge,
                audience: login.audience,
                scope: login.scope,
                approved,
            };
            state
                .service()
                .put_pending(&code, None, PendingKind::Code, &grant, CODE_TTL)
                .await?;
            let mut r = see_other(&with_query(
                &redirect_uri,
                &[
                    ("code", &code),
                    ("state", &oauth_state),
                    ("iss", &settings.tokens.issuer),
                ],
            ));
            r.headers_mut().append(header::SET_COOKIE, clear);
            Ok(r)
        }
        Then::Device { device_key, .. } => {
            let approved = Approved {
                uid: v.account.uid.to_string(),
                amr: v.amr,
                login_groups: v.login_groups,
                upstream_sealed: None,
                upstream: v.upstream,
            };
            let approved_ok = state
                .service()
                .approve_device(&device_key, approved, now)
                .await?;
            let mut r = if approved_ok {
                page::html(
                    StatusCode::OK,
                    "Signed in",
                    "<p>You are signed in. Return to your device: it will continue on its own.</p>",
                )
            } else {
                page::error(
                    StatusCode::BAD_REQUEST,
                    "Code expired",
                    "the device's code has expired or was already used: start again on the device",
                )
            };
            r.headers_mut().append(header::SET_COOKIE, clear);
            Ok(r)
        }
    }
}
