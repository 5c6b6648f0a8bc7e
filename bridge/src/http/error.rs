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

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = match &self {
            Self::OAuth {
                status,
                error,
                description,
            } => {
                let mut r = (
                    *status,
                    Json(json!({"error": error, "error_description": description})),
                )
                    .into_response();
                r.headers_mut()
                    .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                if *status == StatusCode::UNAUTHORIZED {
                    r.headers_mut().insert(
                        header::WWW_AUTHENTICATE,
                        HeaderValue::from_static("Basic realm=\"idbridge\""),
                    );
                }
                return r;
            }
            Self::Throttled(secs) => {
                let mut r = (
                    StatusCode::TOO_MANY_REQUESTS,
                    Json(json!({"error": "too_many_requests", "error_description": self.to_string()})),
                )
                    .into_response();
                if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                    r.headers_mut().insert(header::RETRY_AFTER, v);
                }
                r.headers_mut()
                    .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                return r;
            }
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            Self::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            Self::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Self::RequestTimeout => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            Self::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            Self::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Self::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        // `error` and `error_description` are RFC 6749's fields, which every OAuth client shows;
        // `message` stays for the admin CLI and existing callers.
        let message = self.to_string();
        let mut r = (
            status,
            Json(json!({"error": body, "error_description": message, "message": message})),
        )
            .into_response();
        r.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"idbridge\""),
            );
        }
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
            other => {
                tracing::error!(error = %other, "store failure");
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

impl ApiError {
    /// An internal failure: the cause is logged here, once, inside the request's span (so with
    /// its request id), and the caller is told only that something failed inside.
    pub fn internal(what: &str, cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error: {what}");
        Self::Internal
    }
}
