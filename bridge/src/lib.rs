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
mod audit;
mod auth;
mod authorize;
mod crypto;
mod device;
mod discovery;
mod error;
mod keys;
mod ldap;
mod metrics;
mod negotiate;
mod oauth;
mod ops;
mod page;
mod provision;
mod proxy;
mod review;
mod server;
mod sessions;
mod settings;
mod state;
mod throttle;
mod tls;
mod tokens;
mod upstream;

pub use audit::{Audit, AuditEvent, AuditSink};
pub use auth::{Authenticated, Authenticator, Denial};
pub use crypto::{CryptoError, Kek, SealKey};
pub use error::ApiError;
pub use keys::{KeyError, KeyPolicy, KeySet, Rotate, maintain};
pub use metrics::Metrics;
pub use ops::{AdminOps, CreatedToken, KeyInfo, OpsError, SessionInfo, UserRevocation};
pub use review::{TokenReviewRequest, TokenReviewSpec, TokenReviewStatus, UserInfo};
pub use server::{ConnectionLimits, ConnectionStats, PeerInfo, serve, serve_with};
pub use settings::{
    AudienceChange, Client, DirectoryLogin, KerberosLogin, MayAct, ProxySettings, Secret, Settings,
    Who,
};
pub use state::{AppState, app};
pub use throttle::ThrottlePolicy;
pub use tls::{
    ServerTls, TlsError, client_verifier, ensure_self_signed, server_config, verify_chain,
    write_private,
};
pub use tokens::{
    AccessClaims, Actor, REFRESH_TOKEN_PREFIX, STATIC_TOKEN_PREFIX, WEBHOOK_TOKEN_PREFIX,
    hash_token, new_secret, new_static_secret,
};
pub use upstream::{Upstream, UpstreamConfig, UpstreamError};
