//! Single-use records of a browser login in progress: the login page's own record (its CSRF value
//! and where it goes next) and a redirect to an upstream provider, each stored under the hash of
//! a secret only its holder has. Codes and device codes are the token service's
//! (`idbridge_tokens::grants`).

use idbridge_core::{Audience, ClientId};

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use idbridge_core::{Amr, PendingKind, UserAccount};
use idbridge_tokens::{Secret, UpstreamGrant, hash_token, new_secret};
use serde::{Deserialize, Serialize};

use crate::http::error::ApiError;
use crate::http::page;
use crate::state::AppState;

/// The cookie naming the login in progress.
pub(crate) const LOGIN_COOKIE: &str = "__Host-idbridge-login";

/// How long a login may take, from the login page to its end.
pub(crate) const LOGIN_TTL: u64 = 600;

/// A login in progress, from `/oauth2/authorize` or the device page. `Debug` hides the CSRF
/// token and the device's codes.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct LoginRequest {
    pub csrf: String,
    pub client_id: ClientId,
    pub audience: Audience,
    pub scope: String,
    pub then: Then,
}

impl std::fmt::Debug for LoginRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginRequest")
            .field("csrf", &"<redacted>")
            .field("client_id", &self.client_id)
            .field("audience", &self.audience)
            .field("scope", &self.scope)
            .field("then", &self.then)
            .finish()
    }
}

impl std::fmt::Debug for Then {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Code {
                redirect_uri,
                code_challenge,
                ..
            } => f
                .debug_struct("Code")
                .field("redirect_uri", redirect_uri)
                .field("state", &"<redacted>")
                .field("code_challenge", code_challenge)
                .finish(),
            Self::Device { .. } => f
                .debug_struct("Device")
                .field("device_key", &"<redacted>")
                .field("user_code", &"<redacted>")
                .finish(),
        }
    }
}

/// Where a finished login goes.
#[derive(Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum Then {
    /// Back to the client with a code.
    Code {
        redirect_uri: String,
        state: String,
        code_challenge: String,
    },
    /// To the waiting device (the hex hash of its device code).
    Device {
        device_key: String,
        user_code: String,
    },
}

/// An upstream login waiting for its callback.
#[derive(Serialize, Deserialize)]
pub(crate) struct UpstreamState {
    pub login_key: String,
    pub upstream: String,
    pub nonce: String,
    pub verifier: String,
}

/// A login that succeeded, before it becomes a code or a device approval.
pub(crate) struct Verified {
    pub account: UserAccount,
    pub amr: Amr,
    pub login_groups: Vec<String>,
    pub upstream: Option<UpstreamGrant>,
}

/// Stores a login in progress; returns the secret its cookie carries.
pub(crate) async fn begin_login(
    state: &AppState,
    login: &LoginRequest,
) -> Result<String, ApiError> {
    let id = new_secret("");
    state
        .service()
        .put_pending(&id, None, PendingKind::Login, login, LOGIN_TTL)
        .await?;
    Ok(id)
}

/// The login in progress this browser holds, if its cookie names a live one.
pub(crate) async fn current_login(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<(String, LoginRequest), Response> {
    let expired = || {
        page::error(
            StatusCode::BAD_REQUEST,
            "Sign-in expired",
            "this sign-in has expired, was finished, or was started in another browser or window: start again from your application",
        )
    };
    let Some(id) = page::read_cookie(headers, LOGIN_COOKIE) else {
        return Err(expired());
    };
    let now = state.clock().now();
    match state.store().pending(hash_token(id), now).await {
        Ok(Some(p)) if p.kind == PendingKind::Login && p.used_at.is_none() => {
            match serde_json::from_str(&p.data) {
                Ok(l) => Ok((id.to_owned(), l)),
                Err(_) => Err(expired()),
            }
        }
        Ok(_) => Err(expired()),
        Err(e) => Err(ApiError::from(e).into_response()),
    }
}

#[derive(Deserialize)]
pub(crate) struct CsrfForm {
    pub csrf: Option<String>,
}

/// The browser's login in progress, if the form (or link) carries its CSRF token.
pub(crate) async fn checked_login(
    state: &AppState,
    headers: &HeaderMap,
    csrf: Option<&str>,
) -> Result<(String, LoginRequest), Response> {
    let (id, login) = current_login(state, headers).await?;
    if !csrf.is_some_and(|g| Secret::new(login.csrf.clone()).matches(g)) {
        return Err(page::error(
            StatusCode::FORBIDDEN,
            "Sign-in refused",
            "the form did not come from this sign-in page (CSRF check failed): start again from your application",
        ));
    }
    Ok((id, login))
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn debug_output_of_a_login_in_progress_shows_no_secret() {
        let login = LoginRequest {
            csrf: "csrf-secret-1".into(),
            client_id: ClientId::cli(),
            audience: Audience::kubernetes(),
            scope: String::new(),
            then: Then::Device {
                device_key: "device-key-2".into(),
                user_code: "BCDF-GHJK".into(),
            },
        };
        let shown = format!("{login:?}");
        for secret in ["csrf-secret-1", "device-key-2", "BCDF-GHJK"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(shown.contains("idbridge-cli"), "{shown}");
        let code = Then::Code {
            redirect_uri: "http://127.0.0.1/cb".into(),
            state: "state-secret-3".into(),
            code_challenge: "c".into(),
        };
        assert!(!format!("{code:?}").contains("state-secret-3"));
    }
}
