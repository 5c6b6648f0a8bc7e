//! `POST /login/proxy`: a trusted authenticating proxy in front of idbridge vouches for a user
//! with `X-Remote-User` and `X-Remote-Group`. The headers are believed only on a connection whose
//! client certificate was issued by the proxy's configured CA (and, when names are configured,
//! is valid for one of them); anything else is 401, so a client cannot name itself.

use axum::Form;
use axum::extract::State;
use axum::extract::rejection::FormRejection;
use axum::http::HeaderMap;
use axum::response::Response;
use idbridge_core::ExternalIdentity;
use idbridge_core::{AccountName, GroupName};
use idbridge_tokens::Login;
use idbridge_tokens::provision::Provision;
use serde::Deserialize;

use crate::http::error::ApiError;
use crate::http::extract::RequestCtx;
use crate::state::AppState;

#[derive(Debug, Deserialize)]
pub(crate) struct ProxyLogin {
    client_id: Option<String>,
    audience: Option<String>,
    scope: Option<String>,
}

fn names_match(chain: &[rustls::pki_types::CertificateDer<'static>], names: &[String]) -> bool {
    if names.is_empty() {
        return true;
    }
    let Some(end) = chain.first() else {
        return false;
    };
    let Ok(cert) = webpki::EndEntityCert::try_from(end) else {
        return false;
    };
    names.iter().any(|n| {
        rustls::pki_types::ServerName::try_from(n.as_str())
            .is_ok_and(|sn| cert.verify_is_valid_for_subject_name(&sn).is_ok())
    })
}

pub(crate) async fn login(
    State(state): State<AppState>,
    ctx: RequestCtx,
    headers: HeaderMap,
    form: Result<Form<ProxyLogin>, FormRejection>,
) -> Result<Response, ApiError> {
    let settings = state.settings();
    let Some(proxy) = settings.proxy.as_ref() else {
        return Err(ApiError::NotFound(
            "the trusted authenticating proxy is not enabled (field `proxy.enabled`)".to_owned(),
        ));
    };
    let deny = |reason: &str| {
        let mut ev = ctx.event("login.proxy", "denied");
        ev.reason = Some(reason);
        state.audit().record(&ev);
    };
    let trusted = crate::http::tls::verify_chain(&*proxy.verifier, ctx.chain.as_deref())
        && ctx
            .chain
            .as_deref()
            .is_some_and(|c| names_match(c, &proxy.allowed_names));
    if !trusted {
        deny("no client certificate from the trusted proxy CA");
        return Err(ApiError::Unauthorized(
            "proxy headers are honoured only with a client certificate from the trusted proxy CA",
        ));
    }
    let Form(req) = form?;
    let user = headers
        .get(proxy.user_header.as_str())
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .ok_or_else(|| ApiError::BadRequest(format!("header {} is required", proxy.user_header)))?;
    let name: AccountName = user.parse().map_err(|e| {
        deny("bad user header");
        ApiError::BadRequest(format!("header {}: {e}", proxy.user_header))
    })?;
    let mut groups = Vec::new();
    for v in headers.get_all(proxy.group_header.as_str()) {
        let v = v.to_str().map_err(|_| {
            ApiError::BadRequest(format!("header {}: not text", proxy.group_header))
        })?;
        for g in v.split(',').map(str::trim).filter(|g| !g.is_empty()) {
            // `system:` names (and anything else that is no valid group) are never honoured.
            if let Ok(g) = g.parse::<GroupName>() {
                groups.push(g.to_string());
            }
        }
    }
    let client = crate::http::client::client(&settings, &headers, req.client_id.as_deref(), None)?;
    let audience = idbridge_tokens::exchange::target(&settings.tokens, client, req.audience)?;
    // The proxy names accounts: its user is linked to the account of that name (created at a
    // first login with `jit`), by the provisioning every login method shares.
    if !proxy.jit && state.store().account_by_name(&name).await?.is_none() {
        deny("no such account");
        return Err(ApiError::Forbidden(
            "no account for this user (proxy provisioning is `existing`)",
        ));
    }
    let account = state
        .service()
        .provisioned_account(
            Provision {
                identity: ExternalIdentity::Proxy { name: name.clone() },
                name: &name,
                jit: proxy.jit,
                link_by_name: true,
                name_is_identity: true,
                first_login: Some("first login through the trusted proxy"),
                event: "login.proxy",
                what: "proxy's user",
                section: "proxy",
            },
            ctx.origin(),
        )
        .await?;
    if account.disabled {
        deny("account is disabled");
        // As every other login method answers a disabled account.
        return Err(ApiError::invalid_grant("account is disabled"));
    }
    let pair = state
        .service()
        .start_session(
            Login {
                account: &account,
                client_id: &client.id,
                amr: idbridge_core::Amr::Proxy,
                audience,
                scope: req.scope.unwrap_or_default(),
                login_groups: groups,
                upstream: None,
            },
            ctx.origin(),
        )
        .await?;
    Ok(crate::http::reply::token_response(&pair, true))
}
