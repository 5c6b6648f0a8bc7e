//! `/oauth2/authorize` (RFC 6749 section 4.1 with PKCE, RFC 9207 `iss`): the request checked
//! (client, redirect URI, state, PKCE, audience), then the login page. The codes it leads to are
//! issued and redeemed by the token service (`idbridge_tokens::grants`).

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use idbridge_tokens::{Client, new_secret};
use serde::Deserialize;

use crate::http::page;
use crate::http::page::{see_other, with_query};

use crate::login::page::login_page;
use crate::login::records::{LoginRequest, Then, begin_login};
use crate::state::AppState;

/// Whether `uri` is a plain-HTTP loopback redirect (RFC 8252 section 7.3).
fn loopback(uri: &reqwest::Url) -> bool {
    uri.scheme() == "http"
        && uri
            .host_str()
            .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
            .and_then(|h| h.parse::<std::net::IpAddr>().ok())
            .is_some_and(|a| a.is_loopback())
}

/// Whether `client` may be sent to `redirect_uri`: an exact registered URI, or a loopback URI
/// matching a registered one but for the port; the built-in CLI may use any loopback URI.
pub(crate) fn redirect_allowed(client: &Client, redirect_uri: &str) -> bool {
    let Ok(given) = reqwest::Url::parse(redirect_uri) else {
        return false;
    };
    if given.fragment().is_some() || given.username() != "" || given.password().is_some() {
        return false;
    }
    if client.id == idbridge_tokens::CLI_CLIENT
        && client.redirect_uris.is_empty()
        && loopback(&given)
    {
        return true;
    }
    client.redirect_uris.iter().any(|r| {
        if r == redirect_uri {
            return true;
        }
        let Ok(mut reg) = reqwest::Url::parse(r) else {
            return false;
        };
        if !loopback(&reg) || !loopback(&given) {
            return false;
        }
        let _ = reg.set_port(given.port());
        reg == given
    })
}

#[derive(Debug, Deserialize)]
pub(crate) struct AuthorizeQuery {
    response_type: Option<String>,
    client_id: Option<String>,
    redirect_uri: Option<String>,
    state: Option<String>,
    code_challenge: Option<String>,
    code_challenge_method: Option<String>,
    scope: Option<String>,
    audience: Option<String>,
}

/// `GET /oauth2/authorize`: checks the client and its redirect URI (a bad one is shown, never
/// followed), then the rest (reported to the client), then shows the login page.
pub(crate) async fn authorize(
    State(state): State<AppState>,
    Query(q): Query<AuthorizeQuery>,
) -> Response {
    let settings = state.settings();
    let bad = |m: &str| page::error(StatusCode::BAD_REQUEST, "Sign-in request refused", m);
    let Some(client) = q
        .client_id
        .as_deref()
        .and_then(|id| settings.tokens.client(id))
    else {
        return bad("unknown or missing client_id");
    };
    if !client
        .grants
        .contains(&idbridge_core::GrantType::AuthorizationCode)
    {
        return bad(&format!(
            "client {:?} may not use the authorization code flow",
            client.id
        ));
    }
    let Some(redirect_uri) = q
        .redirect_uri
        .as_deref()
        .filter(|r| redirect_allowed(client, r))
    else {
        return bad("redirect_uri is missing or not registered for this client");
    };
    let client_state = q.state.clone().unwrap_or_default();
    let refuse = |error: &str, description: &str| {
        let mut pairs = vec![("error", error), ("error_description", description)];
        if !client_state.is_empty() {
            pairs.push(("state", &client_state));
        }
        pairs.push(("iss", &settings.tokens.issuer));
        see_other(&with_query(redirect_uri, &pairs))
    };
    if q.response_type.as_deref() != Some("code") {
        return refuse("unsupported_response_type", "response_type must be code");
    }
    if client_state.is_empty() {
        return refuse("invalid_request", "state is required");
    }
    let Some(challenge) = q.code_challenge.as_deref().filter(|c| c.len() == 43) else {
        return refuse(
            "invalid_request",
            "PKCE is required: code_challenge (S256, 43 characters)",
        );
    };
    if q.code_challenge_method.as_deref() != Some("S256") {
        return refuse("invalid_request", "code_challenge_method must be S256");
    }
    let audience =
        match idbridge_tokens::exchange::target(&settings.tokens, client, q.audience.clone()) {
            Ok(a) => a,
            // As RFC 6749 reports it: the code, then why.
            Err(e) => return refuse("invalid_target", &format!("{}: {e}", e.code())),
        };
    let login = LoginRequest {
        csrf: new_secret(""),
        client_id: client.id.clone(),
        audience,
        scope: q.scope.clone().unwrap_or_default(),
        then: Then::Code {
            redirect_uri: redirect_uri.to_owned(),
            state: client_state.clone(),
            code_challenge: challenge.to_owned(),
        },
    };
    match begin_login(&state, &login).await {
        Ok(id) => login_page(&settings, &login, None, StatusCode::OK, Some(&id)),
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(id: &str, uris: &[&str]) -> Client {
        Client {
            id: id.parse().unwrap(),
            secret: None,
            grants: vec![],
            audiences: vec![],
            redirect_uris: uris.iter().map(|u| (*u).to_owned()).collect(),
            audience_changes: vec![],
        }
    }

    #[test]
    fn redirects_are_exact_except_loopback_ports() {
        let cli = client("idbridge-cli", &[]);
        assert!(redirect_allowed(&cli, "http://127.0.0.1:41234/callback"));
        assert!(redirect_allowed(&cli, "http://[::1]:5000/"));
        assert!(!redirect_allowed(&cli, "http://localhost:5000/"));
        assert!(!redirect_allowed(&cli, "https://evil.example/cb"));
        assert!(!redirect_allowed(&cli, "http://127.0.0.1:1/cb#frag"));
        let web = client("web", &["https://app.example/cb", "http://127.0.0.1/cb"]);
        assert!(redirect_allowed(&web, "https://app.example/cb"));
        assert!(!redirect_allowed(&web, "https://app.example/cb2"));
        assert!(!redirect_allowed(&web, "https://app.example/cb?x=1"));
        assert!(!redirect_allowed(&web, "https://app.example.evil/cb"));
        assert!(redirect_allowed(&web, "http://127.0.0.1:8000/cb"));
        assert!(!redirect_allowed(&web, "http://127.0.0.1:8000/other"));
        assert!(!redirect_allowed(&web, "http://127.0.0.2:8000/cb"));
        assert!(!redirect_allowed(&web, "http://user@127.0.0.1:8000/cb"));
    }
}
