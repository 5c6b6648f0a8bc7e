//! The login page, and how a refused login is shown on it.

use axum::http::{StatusCode, header};
use axum::response::Response;

use crate::http::error::ApiError;
use crate::http::page;
use crate::http::page::escape;
use crate::login::records::{LOGIN_COOKIE, LOGIN_TTL, LoginRequest, Then};
use crate::login::upstream::UpstreamError;
use crate::settings::Settings;

/// The login page: one button per upstream, the password form with a directory, the Kerberos
/// link with a keytab. With `set_cookie`, it starts the login in this browser.
pub(crate) fn login_page(
    settings: &Settings,
    login: &LoginRequest,
    error: Option<&str>,
    status: StatusCode,
    set_cookie: Option<&str>,
) -> Response {
    let csrf = escape(&login.csrf);
    let mut body = format!("<p>to <b>{}</b></p>", escape(login.client_id.as_str()));
    if let Then::Device { user_code, .. } = &login.then {
        body.push_str(&format!(
            "<p>Check that your device shows this code: <span class=\"code\">{}</span></p>",
            escape(user_code)
        ));
    }
    if let Some(e) = error {
        body.push_str(&format!("<p class=\"error\">{}</p>", escape(e)));
    }
    for u in &settings.upstreams {
        body.push_str(&format!(
            "<form method=\"post\" action=\"/login/oidc/{name}\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
             <button type=\"submit\">Sign in with {display}</button></form>",
            name = escape(&u.config.name),
            display = escape(&u.config.display_name),
        ));
    }
    if settings.kerberos.is_some() {
        body.push_str(&format!(
            "<p><a href=\"/login/kerberos?csrf={csrf}\">Sign in with Kerberos (your computer's login)</a></p>"
        ));
    }
    if settings.directory.is_some() {
        body.push_str(&format!(
            "<form method=\"post\" action=\"/login/password\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
             <label>Username <input name=\"username\" autocomplete=\"username\" required></label>\
             <label>Password <input name=\"password\" type=\"password\" autocomplete=\"current-password\" required></label>\
             <button type=\"submit\">Sign in</button></form>"
        ));
    }
    if !settings.has_sign_in() {
        body.push_str(&format!(
            "<p class=\"error\">{}.</p>",
            escape(crate::settings::NO_SIGN_IN)
        ));
    }
    let mut r = page::html(status, "Sign in", &body);
    if let Some(id) = set_cookie {
        r.headers_mut().append(
            header::SET_COOKIE,
            page::cookie(LOGIN_COOKIE, id, LOGIN_TTL),
        );
    }
    r
}

pub(crate) enum LoginFailure {
    Upstream(UpstreamError),
    Api(ApiError),
}

impl From<ApiError> for LoginFailure {
    fn from(e: ApiError) -> Self {
        Self::Api(e)
    }
}

impl From<idbridge_tokens::TokenError> for LoginFailure {
    fn from(e: idbridge_tokens::TokenError) -> Self {
        Self::Api(e.into())
    }
}

/// A refused login shown on the login page, with its reason.
pub(crate) fn login_failed(settings: &Settings, login: &LoginRequest, e: ApiError) -> Response {
    e.into_page(|message| login_page(settings, login, Some(message), StatusCode::OK, None))
}

impl From<LoginFailure> for ApiError {
    fn from(f: LoginFailure) -> Self {
        match f {
            LoginFailure::Api(e) => e,
            LoginFailure::Upstream(e @ UpstreamError::Unavailable { .. }) => {
                ApiError::Unavailable(format!("{e}; no token was issued"))
            }
            LoginFailure::Upstream(e) => ApiError::invalid_grant(e.to_string()),
        }
    }
}
