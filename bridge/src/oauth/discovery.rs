//! OIDC discovery (`/.well-known/openid-configuration`) and the JWKS it names.

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use idbridge_core::GrantType;
use serde_json::json;

use crate::state::AppState;

pub(crate) async fn openid_configuration(State(state): State<AppState>) -> Response {
    let s = state.settings();
    let iss = s.tokens.issuer.trim_end_matches('/');
    // Every grant the token endpoint knows; `password` only with a directory, Kerberos only
    // with a keytab, the browser and device flows only where a person can sign in.
    let people = s.has_sign_in();
    let grants: Vec<&str> = GrantType::ALL
        .iter()
        .filter(|g| **g != GrantType::Password || s.directory.is_some())
        .filter(|g| **g != GrantType::Kerberos || s.kerberos.is_some())
        .filter(|g| people || !matches!(**g, GrantType::AuthorizationCode | GrantType::DeviceCode))
        .map(|g| g.as_str())
        .collect();
    (
        [(header::CACHE_CONTROL, "public, max-age=60")],
        Json(json!({
            "issuer": s.tokens.issuer,
            "jwks_uri": format!("{iss}/oauth2/jwks"),
            "token_endpoint": format!("{iss}/oauth2/token"),
            "authorization_endpoint": format!("{iss}/oauth2/authorize"),
            "device_authorization_endpoint": format!("{iss}/oauth2/device_authorization"),
            "revocation_endpoint": format!("{iss}/oauth2/revoke"),
            "introspection_endpoint": format!("{iss}/oauth2/introspect"),
            "grant_types_supported": grants,
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "code_challenge_methods_supported": ["S256"],
            "authorization_response_iss_parameter_supported": true,
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
            "token_endpoint_auth_methods_supported": ["none", "client_secret_basic", "client_secret_post"],
            "revocation_endpoint_auth_methods_supported": ["none", "client_secret_basic", "client_secret_post"],
            "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "bearer"],
            "claims_supported": [
                "iss", "sub", "aud", "exp", "iat", "nbf", "jti",
                "name", "groups", "namespace", "amr", "scope", "sid", "client_id", "act"
            ],
        })),
    )
        .into_response()
}

pub(crate) async fn jwks(State(state): State<AppState>) -> Response {
    let keys = state.keys();
    (
        [
            (header::CONTENT_TYPE, "application/jwk-set+json"),
            (header::CACHE_CONTROL, "public, max-age=60"),
        ],
        keys.jwks().to_vec(),
    )
        .into_response()
}
