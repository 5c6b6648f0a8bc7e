//! Every error becomes an HTTP response here, and only here.

use axum::Json;
use axum::extract::rejection::{FormRejection, JsonRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use idbridge_core::StoreError;
use idbridge_tokens::TokenError;
use serde_json::json;

/// An error answered to an HTTP client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// The request is malformed; the message says what is wrong.
    #[error("{0}")]
    BadRequest(String),
    /// The body is not of the required content type.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The body exceeds the configured limit.
    #[error("request body is too large")]
    PayloadTooLarge,
    /// The body did not arrive in time.
    #[error("the request body did not arrive in time")]
    RequestTimeout,
    /// No or bad credentials; answered with `WWW-Authenticate`.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// Kerberos is needed (or what was offered did not do): a 401 asking for `Negotiate`.
    #[error("{0}")]
    Negotiate(String),
    /// Authenticated, but not allowed.
    #[error("{0}")]
    Forbidden(&'static str),
    /// The named object does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The object already exists.
    #[error("{0}")]
    Conflict(String),
    /// An OAuth 2.0 error response (RFC 6749 section 5.2).
    #[error("{error}: {description}")]
    OAuth {
        /// HTTP status.
        status: StatusCode,
        /// The `error` code.
        error: &'static str,
        /// `error_description`.
        description: String,
    },
    /// A dependency (the store) is unavailable; retry later.
    #[error("{0}")]
    Unavailable(String),
    /// A refusal with its own status and code (a workload credential refused).
    #[error("{description}")]
    Refused {
        /// The HTTP status.
        status: StatusCode,
        /// The `error` code.
        error: &'static str,
        /// What the caller is told.
        description: String,
    },
    /// Too many attempts (failed logins, revocations); retry after this many seconds.
    #[error("too many attempts; retry in {0} s")]
    Throttled(u64),
    /// A bug or an unexpected failure; details are logged, not returned.
    #[error("internal error")]
    Internal,
}

impl ApiError {
    /// An OAuth `invalid_grant`.
    #[must_use]
    pub fn invalid_grant(description: impl Into<String>) -> Self {
        Self::OAuth {
            status: StatusCode::BAD_REQUEST,
            error: "invalid_grant",
            description: description.into(),
        }
    }

    /// An OAuth `invalid_request`.
    #[must_use]
    pub fn invalid_request(description: impl Into<String>) -> Self {
        Self::OAuth {
            status: StatusCode::BAD_REQUEST,
            error: "invalid_request",
            description: description.into(),
        }
    }
}

impl ApiError {
    /// The status either rendering answers with.
    #[must_use]
    pub fn status(&self) -> StatusCode {
        match self {
            Self::OAuth { status, .. } | Self::Refused { status, .. } => *status,
            Self::Throttled(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::Unauthorized(_) | Self::Negotiate(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The `error` code of the JSON body.
    fn code(&self) -> &'static str {
        match self {
            Self::OAuth { error, .. } | Self::Refused { error, .. } => error,
            Self::Throttled(_) => "too_many_requests",
            Self::BadRequest(_) => "bad_request",
            Self::UnsupportedMediaType(_) => "unsupported_media_type",
            Self::PayloadTooLarge => "payload_too_large",
            Self::RequestTimeout => "request_timeout",
            Self::Unauthorized(_) | Self::Negotiate(_) => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::NotFound(_) => "not_found",
            Self::Conflict(_) => "conflict",
            Self::Unavailable(_) => "unavailable",
            Self::Internal => "internal",
        }
    }

    /// What the caller is told: the OAuth description, or the error's text.
    fn message(&self) -> String {
        match self {
            Self::OAuth { description, .. } => description.clone(),
            other => other.to_string(),
        }
    }

    /// The headers every error answer carries: never cached, a challenge with a 401, when to
    /// retry with a 429.
    fn headers(&self, r: &mut Response) {
        let h = r.headers_mut();
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        let challenge = match self {
            Self::Negotiate(_) => Some("Negotiate"),
            // RFC 6749 section 5.2: a client that failed to authenticate is asked for Basic.
            Self::OAuth { status, .. } if *status == StatusCode::UNAUTHORIZED => {
                Some("Basic realm=\"idbridge\"")
            }
            Self::OAuth { .. } => None,
            _ if self.status() == StatusCode::UNAUTHORIZED => Some("Bearer realm=\"idbridge\""),
            _ => None,
        };
        if let Some(c) = challenge {
            h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(c));
        }
        if let Self::Throttled(secs) = self
            && let Ok(v) = HeaderValue::from_str(&secs.to_string())
        {
            h.insert(header::RETRY_AFTER, v);
        }
    }

    /// The answer for a browser: `render` draws the page around the message (a login page
    /// shows it beside the form); the status and headers are the JSON answer's, except that a
    /// refused grant is a 401 (the person is not signed in).
    pub fn into_page(self, render: impl FnOnce(&str) -> Response) -> Response {
        let status = match &self {
            Self::OAuth { .. } => StatusCode::UNAUTHORIZED,
            other => other.status(),
        };
        let mut r = render(&self.message());
        *r.status_mut() = status;
        // A refused grant on a page asks for no credentials: the page is the way to sign in.
        let headers = match self {
            Self::OAuth { description, .. } => Self::BadRequest(description),
            other => other,
        };
        headers.headers(&mut r);
        r
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = self.message();
        // `error` and `error_description` are RFC 6749's fields, which every OAuth client shows;
        // `message` stays for the admin CLI and existing callers (not on OAuth answers, which
        // RFC 6749 defines field by field, nor on a Negotiate challenge).
        let body = match &self {
            Self::OAuth { .. } | Self::Throttled(_) | Self::Negotiate(_) => {
                json!({"error": self.code(), "error_description": message})
            }
            _ => json!({"error": self.code(), "error_description": message, "message": message}),
        };
        let mut r = (status, Json(body)).into_response();
        self.headers(&mut r);
        r
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        match r {
            JsonRejection::MissingJsonContentType(_) => {
                Self::UnsupportedMediaType("Content-Type must be application/json".into())
            }
            JsonRejection::BytesRejection(b) if b.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Self::PayloadTooLarge
            }
            other => Self::BadRequest(format!("invalid JSON body: {}", other.body_text())),
        }
    }
}

impl From<FormRejection> for ApiError {
    fn from(r: FormRejection) -> Self {
        match r {
            FormRejection::InvalidFormContentType(_) => {
                ApiError::invalid_request("Content-Type must be application/x-www-form-urlencoded")
            }
            FormRejection::BytesRejection(b) if b.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Self::PayloadTooLarge
            }
            other => ApiError::invalid_request(other.body_text()),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(what) => Self::Conflict(format!("{what} already exists")),
            StoreError::NotFound(what) => Self::NotFound(format!("{what} not found")),
            // A refused change of a batch is that change's error, with its place in the batch.
            StoreError::InBatch { index, error } => match Self::from(*error) {
                Self::Conflict(m) => Self::Conflict(format!("change {index} of the batch: {m}")),
                Self::NotFound(m) => Self::NotFound(format!("change {index} of the batch: {m}")),
                other => other,
            },
            other => {
                tracing::error!(error = %chain(&other), "store failure");
                Self::Unavailable("the store is unavailable; retry shortly".into())
            }
        }
    }
}

impl From<TokenError> for ApiError {
    fn from(e: TokenError) -> Self {
        let oauth = |status, error, description| Self::OAuth {
            status,
            error,
            description,
        };
        match e {
            TokenError::InvalidGrant(d) => Self::invalid_grant(d),
            TokenError::InvalidTarget(d) => oauth(StatusCode::BAD_REQUEST, "invalid_target", d),
            TokenError::InvalidScope(d) => oauth(StatusCode::BAD_REQUEST, "invalid_scope", d),
            TokenError::InvalidRequest(d) => Self::invalid_request(d),
            TokenError::InvalidClient(d) => oauth(StatusCode::UNAUTHORIZED, "invalid_client", d),
            TokenError::AuthorizationPending(d) => {
                oauth(StatusCode::BAD_REQUEST, "authorization_pending", d)
            }
            TokenError::SlowDown(d) => oauth(StatusCode::BAD_REQUEST, "slow_down", d),
            TokenError::ExpiredToken(d) => oauth(StatusCode::BAD_REQUEST, "expired_token", d),
            TokenError::Unavailable(m) => Self::Unavailable(m),
            TokenError::Throttled(secs) => Self::Throttled(secs),
            TokenError::NoSuchAccount(_)
            | TokenError::NoSuchToken(_)
            | TokenError::NoSuchSession(_) => Self::NotFound(e.to_string()),
            TokenError::Store(s) => s.into(),
            TokenError::Key(_) | TokenError::Internal(_) => Self::internal("token service", &e),
            other => Self::internal("token service", &other),
        }
    }
}

/// An error with every cause behind it, for the log.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        out.push_str(": ");
        out.push_str(&s.to_string());
        next = s.source();
    }
    out
}

impl ApiError {
    /// An internal failure: the cause is logged here, once, inside the request's span (so with
    /// its request id), and the caller is told only that something failed inside.
    pub fn internal(what: &str, cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error: {what}");
        Self::Internal
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(message: &str) -> Response {
        (StatusCode::OK, format!("<p>{message}</p>")).into_response()
    }

    #[test]
    fn json_and_page_answers_carry_the_same_status_and_headers() {
        for (e, status, challenge) in [
            (ApiError::Throttled(7), 429, None),
            (ApiError::Negotiate("kinit".into()), 401, Some("Negotiate")),
            (
                ApiError::Unauthorized("no"),
                401,
                Some("Bearer realm=\"idbridge\""),
            ),
            (ApiError::Unavailable("later".into()), 503, None),
            (ApiError::Internal, 500, None),
        ] {
            let json = ApiError::from_ref(&e).into_response();
            let html = e.into_page(page);
            for r in [&json, &html] {
                assert_eq!(r.status().as_u16(), status);
                assert_eq!(r.headers()[header::CACHE_CONTROL], "no-store");
                assert_eq!(
                    r.headers()
                        .get(header::WWW_AUTHENTICATE)
                        .and_then(|v| v.to_str().ok()),
                    challenge
                );
            }
            if status == 429 {
                assert_eq!(json.headers()[header::RETRY_AFTER], "7");
                assert_eq!(html.headers()[header::RETRY_AFTER], "7");
            }
        }
    }

    #[test]
    fn a_failed_client_is_asked_for_basic_and_a_refused_login_page_is_a_401() {
        let client = oauth_401();
        assert_eq!(client.status(), StatusCode::UNAUTHORIZED);
        let json = client.into_response();
        assert_eq!(
            json.headers()[header::WWW_AUTHENTICATE],
            "Basic realm=\"idbridge\""
        );
        let html = ApiError::invalid_grant("wrong password").into_page(page);
        assert_eq!(html.status(), StatusCode::UNAUTHORIZED);
        assert!(html.headers().get(header::WWW_AUTHENTICATE).is_none());
        assert_eq!(
            ApiError::invalid_grant("x").into_response().status(),
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn an_internal_error_tells_the_caller_nothing_of_its_cause() {
        let e = ApiError::from(TokenError::internal("sign", "key 3 is corrupt"));
        assert!(matches!(e, ApiError::Internal));
        assert!(!e.to_string().contains("corrupt"));
    }

    fn oauth_401() -> ApiError {
        ApiError::OAuth {
            status: StatusCode::UNAUTHORIZED,
            error: "invalid_client",
            description: "unknown client_id".into(),
        }
    }

    impl ApiError {
        /// A copy, for rendering one error both ways.
        fn from_ref(e: &Self) -> Self {
            match e {
                Self::Throttled(s) => Self::Throttled(*s),
                Self::Negotiate(m) => Self::Negotiate(m.clone()),
                Self::Unauthorized(m) => Self::Unauthorized(m),
                Self::Unavailable(m) => Self::Unavailable(m.clone()),
                _ => Self::Internal,
            }
        }
    }
}
