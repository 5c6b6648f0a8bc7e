//! The device authorization grant (RFC 8628) for devices without a browser:
//! `/oauth2/device_authorization` hands out a device code and a short user code; the user opens
//! `/device`, types the code, and logs in with any method the login page offers; the device
//! polls `/oauth2/token` until that login is done.

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Form, Json};
use idbridge_core::PendingKind;
use idbridge_tokens::{Secret, new_secret};
use serde::Deserialize;
use serde_json::json;

use crate::http::error::ApiError;
use crate::http::extract::RequestCtx;
use crate::http::page::{self, escape};
use crate::login::page::login_page;
use crate::login::records::{LoginRequest, Then};
use crate::state::AppState;
use idbridge_tokens::grants::{DEVICE_TTL, DeviceGrant, INTERVAL, hex};

/// Letters that cannot be confused with one another or spell words (RFC 8628 section 6.1).
const ALPHABET: &[u8; 20] = b"BCDFGHJKLMNPQRSTVWXZ";

const CSRF_COOKIE: &str = "__Host-idbridge-device";

/// Eight letters from [`ALPHABET`], shown as `BCDF-GHJK`.
fn user_code() -> String {
    let rng = SystemRandom::new();
    let mut out = String::with_capacity(9);
    while out.len() < 9 {
        let mut b = [0u8; 16];
        if rng.fill(&mut b).is_err() {
            continue;
        }
        // 240 is a multiple of 20: no letter is likelier than another.
        for x in b.into_iter().filter(|x| *x < 240) {
            if out.len() == 4 {
                out.push('-');
            }
            if out.len() < 9 {
                out.push(char::from(ALPHABET[usize::from(x % 20)]));
            }
        }
    }
    out
}

/// What a person typed, as stored: upper case, letters of the alphabet only.
fn normalize(typed: &str) -> String {
    typed
        .chars()
        .map(|c| c.to_ascii_uppercase())
        .filter(|c| c.is_ascii() && ALPHABET.contains(&(*c as u8)))
        .collect()
}

#[derive(Deserialize)]
pub(crate) struct DeviceRequest {
    client_id: Option<String>,
    client_secret: Option<String>,
    scope: Option<String>,
    audience: Option<String>,
}

/// `POST /oauth2/device_authorization`.
pub(crate) async fn device_authorization(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(req): Form<DeviceRequest>,
) -> Result<Response, ApiError> {
    let settings = state.settings();
    let client = crate::http::client::client(
        &settings,
        &headers,
        req.client_id.as_deref(),
        req.client_secret.as_deref(),
    )?;
    if !client
        .grants
        .contains(&idbridge_core::GrantType::DeviceCode)
    {
        return Err(ApiError::OAuth {
            status: StatusCode::BAD_REQUEST,
            error: "unauthorized_client",
            description: format!("client {:?} may not use the device grant", client.id),
        });
    }
    let audience = idbridge_tokens::exchange::target(&settings.tokens, client, req.audience)?;
    let device_code = new_secret("idb_dc_");
    let code = user_code();
    let grant = DeviceGrant {
        client_id: client.id.clone(),
        audience,
        scope: req.scope.unwrap_or_default(),
        user_code: code.clone(),
        interval: INTERVAL,
        last_poll: 0,
        approved: None,
    };
    state
        .service()
        .put_pending(
            &device_code,
            Some(normalize(&code)),
            PendingKind::Device,
            &grant,
            DEVICE_TTL,
        )
        .await?;
    let base = format!("{}/device", settings.tokens.issuer.trim_end_matches('/'));
    Ok((
        [(header::CACHE_CONTROL, "no-store")],
        Json(json!({
            "device_code": device_code,
            "user_code": code,
            "verification_uri": base,
            "verification_uri_complete": format!("{base}?user_code={code}"),
            "expires_in": DEVICE_TTL,
            "interval": INTERVAL,
        })),
    )
        .into_response())
}

#[derive(Deserialize)]
pub(crate) struct CodeQuery {
    user_code: Option<String>,
}

fn code_form(csrf: &str, code: &str, error: Option<&str>, status: StatusCode) -> Response {
    let mut body = String::new();
    if let Some(e) = error {
        body.push_str(&format!("<p class=\"error\">{}</p>", escape(e)));
    }
    body.push_str(&format!(
        "<p>Enter the code your device shows.</p><form method=\"post\" action=\"/device\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
         <input name=\"user_code\" value=\"{}\" autocomplete=\"off\" required>\
         <button type=\"submit\">Continue</button></form>",
        escape(csrf),
        escape(code)
    ));
    let mut r = page::html(status, "Connect a device", &body);
    r.headers_mut().append(
        header::SET_COOKIE,
        page::cookie(CSRF_COOKIE, csrf, crate::login::records::LOGIN_TTL),
    );
    r
}

/// `GET /device`: the form where the user types the code (pre-filled from the link).
pub(crate) async fn device_page(Query(q): Query<CodeQuery>) -> Response {
    code_form(
        &new_secret(""),
        q.user_code.as_deref().unwrap_or_default(),
        None,
        StatusCode::OK,
    )
}

#[derive(Deserialize)]
pub(crate) struct CodeForm {
    csrf: Option<String>,
    user_code: Option<String>,
}

/// Wrong user codes allowed from one address per [`CODE_GUESS_WINDOW`]: a person mistyping
/// never gets near it, a guesser gets a few tries in a space of 20^8 codes.
const CODE_GUESSES: u32 = 10;

const CODE_GUESS_WINDOW: std::time::Duration = std::time::Duration::from_secs(300);

/// `POST /device`: the code typed; on to the login page for that device.
pub(crate) async fn device_submit(
    State(state): State<AppState>,
    ctx: RequestCtx,
    headers: HeaderMap,
    Form(form): Form<CodeForm>,
) -> Response {
    // Double-submit: the form's token must equal the cookie this site set with the form.
    let cookie = page::read_cookie(&headers, CSRF_COOKIE);
    let same = matches!((cookie, form.csrf.as_deref()), (Some(c), Some(f)) if Secret::new(c.to_owned()).matches(f));
    if !same {
        return page::error(
            StatusCode::FORBIDDEN,
            "Code refused",
            "the form did not come from this site (CSRF check failed): open the device link again",
        );
    }
    let typed = form.user_code.unwrap_or_default();
    let source = ctx.source.map(|s| s.ip());
    // Counted before the look-up, atomically, so parallel guesses cannot outrun the limit; a
    // right code is given back.
    if let Err(wait) =
        state
            .throttle()
            .count_per_source("device", source, CODE_GUESSES, CODE_GUESS_WINDOW)
    {
        state
            .service()
            .login_denied(ctx.origin(), "login.device", None, "throttled");
        return ApiError::Throttled(wait).into_page(|_| {
            page::error(
                StatusCode::TOO_MANY_REQUESTS,
                "Too many wrong codes",
                &format!("Too many wrong codes from this address; try again in {wait} s."),
            )
        });
    }
    let now = state.clock().now();
    let found = match state
        .store()
        .pending_by_alias(&normalize(&typed), now)
        .await
    {
        Ok(f) => f,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let again = |m: &str| code_form(&new_secret(""), &typed, Some(m), StatusCode::BAD_REQUEST);
    let Some(p) = found.filter(|p| p.kind == PendingKind::Device && p.used_at.is_none()) else {
        state.service().login_denied(
            ctx.origin(),
            "login.device",
            None,
            "unknown or expired user code",
        );
        return again(
            "This code is unknown or has expired. Check it, or start again on the device.",
        );
    };
    let grant = match serde_json::from_str::<DeviceGrant>(&p.data) {
        Ok(g) => g,
        Err(e) => return ApiError::internal("read a device-code record", &e).into_response(),
    };
    if grant.approved.is_some() {
        return again("This code was already used.");
    }
    state.throttle().forgive_per_source("device", source);
    let login = LoginRequest {
        csrf: new_secret(""),
        client_id: grant.client_id,
        audience: grant.audience,
        scope: grant.scope,
        then: Then::Device {
            device_key: hex(&p.key),
            user_code: grant.user_code,
        },
    };
    match crate::login::records::begin_login(&state, &login).await {
        Ok(id) => login_page(&state.settings(), &login, None, StatusCode::OK, Some(&id)),
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_codes_are_eight_unambiguous_letters() {
        for _ in 0..100 {
            let c = user_code();
            assert_eq!(c.len(), 9, "{c}");
            assert_eq!(&c[4..5], "-");
            assert_eq!(normalize(&c).len(), 8);
        }
        assert_eq!(normalize("bcdf ghjk"), "BCDFGHJK");
        assert_eq!(normalize("bcdf-ghjk"), "BCDFGHJK");
        assert_eq!(normalize("a1e!"), "", "vowels and digits are not in codes");
    }
}
