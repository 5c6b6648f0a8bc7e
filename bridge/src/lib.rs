//! idbridge's HTTP service.
//!
//! One axum [`Router`](axum::Router) built by [`app`] serves every contract: the Kubernetes
//! TokenReview webhook, OIDC discovery and JWKS for kube-apiserver's JWT authenticator, the OAuth
//! token endpoint, the admin API, health and metrics. [`serve`] runs it behind rustls, attaching
//! to each request who is on the other end of the connection ([`PeerInfo`]).
//!
//! Every credential, whatever its kind, goes through one [`Authenticator`], so TokenReview, the
//! token endpoint and the admin API agree on who a token names. Reviews are cached by the hash of
//! the token for a short time; any revocation or account change empties the cache before the
//! admin call returns, so "revoked" takes effect at the next review.
//!
//! Handlers are thin: check the caller, parse, call one operation, map the result. Errors become
//! HTTP responses in one place, [`ApiError`].

mod admin;
mod authorize;
mod device;
mod discovery;
mod error;
mod ldap;
mod metrics;
mod negotiate;
mod oauth;
mod page;
mod proxy;
mod recheck;
mod review;
mod server;
mod settings;
mod state;
mod throttle;
mod tls;
mod upstream;

pub use error::ApiError;
pub use metrics::Metrics;
pub use review::{TokenReviewRequest, TokenReviewSpec, TokenReviewStatus, UserInfo};
pub use server::{ConnectionLimits, ConnectionStats, PeerInfo, serve, serve_with};
pub use settings::{DirectoryLogin, KerberosLogin, ProxySettings, Settings};
pub use state::{AppState, app};
pub use throttle::ThrottlePolicy;
pub use tls::{
    ServerTls, TlsError, client_verifier, ensure_self_signed, server_config, verify_chain,
    write_private,
};
pub use upstream::{Upstream, UpstreamConfig, UpstreamError};
