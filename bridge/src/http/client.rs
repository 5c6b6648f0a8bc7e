//! OAuth client authentication: HTTP Basic (`client_secret_basic`), form fields
//! (`client_secret_post`), or a public client naming itself.

use axum::http::{HeaderMap, StatusCode, header};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use idbridge_tokens::{CLI_CLIENT, Client};

use crate::http::error::ApiError;
use crate::settings::Settings;

pub(crate) fn oauth(
    status: StatusCode,
    error: &'static str,
    description: impl Into<String>,
) -> ApiError {
    ApiError::OAuth {
        status,
        error,
        description: description.into(),
    }
}

pub(crate) fn invalid_client(description: &str) -> ApiError {
    oauth(StatusCode::UNAUTHORIZED, "invalid_client", description)
}

fn form_decode(s: &str) -> String {
    // client_secret_basic encodes id and secret with application/x-www-form-urlencoded first.
    let plus = s.replace('+', " ");
    let bytes = plus.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Some(b) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Authenticates the OAuth client: HTTP Basic (`client_secret_basic`), form fields
/// (`client_secret_post`), or a public client naming itself; the built-in `idbridge-cli` when
/// nothing is said. Secrets are compared in constant time.
pub(crate) fn client<'a>(
    settings: &'a Settings,
    headers: &HeaderMap,
    form_id: Option<&str>,
    form_secret: Option<&str>,
) -> Result<&'a Client, ApiError> {
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .map(|b| {
            let raw = STANDARD
                .decode(b.trim())
                .ok()
                .and_then(|d| String::from_utf8(d).ok())
                .ok_or_else(|| invalid_client("malformed Basic credentials"))?;
            let (id, secret) = raw
                .split_once(':')
                .ok_or_else(|| invalid_client("malformed Basic credentials"))?;
            Ok::<_, ApiError>((form_decode(id), form_decode(secret)))
        })
        .transpose()?;
    let (id, secret) = match (&basic, form_id) {
        (Some((id, _)), Some(f)) if f != id => {
            return Err(invalid_client(
                "client_id differs from the Basic credentials",
            ));
        }
        (Some((id, secret)), _) => (id.as_str(), Some(secret.as_str())),
        (None, id) => (id.unwrap_or(CLI_CLIENT), form_secret),
    };
    let client = settings
        .tokens
        .client(id)
        .ok_or_else(|| invalid_client("unknown client_id"))?;
    match (&client.secret, secret) {
        (Some(expected), Some(given)) if expected.matches(given) => Ok(client),
        (Some(_), _) => Err(invalid_client("client authentication failed")),
        (None, None) => Ok(client),
        (None, Some(_)) => Err(invalid_client("this public client has no secret")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_form_decoded() {
        assert_eq!(form_decode("a%3Ab+c"), "a:b c");
        assert_eq!(form_decode("100%"), "100%");
    }
}
