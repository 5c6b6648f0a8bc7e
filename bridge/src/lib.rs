//! idbridge's HTTP service: everything that speaks HTTP, grouped by concern, over the token
//! service (`idbridge-tokens`), which holds every rule about tokens.
//!
//! One axum [`Router`](axum::Router), assembled in [`app`] from each area's routes, serves every
//! contract; [`serve`] runs it behind rustls, attaching to each request who is on the other end
//! of the connection ([`PeerInfo`]). The areas:
//!
//! | folder | what |
//! | --- | --- |
//! | `kube/` | the webhooks kube-apiserver calls: TokenReview (SubjectAccessReview and AdmissionReview later) |
//! | `oauth/` | discovery and JWKS, the token endpoint (a typed grant per request), authorize, device, revoke, introspect |
//! | `login/` | the ways a person proves who they are (password, Kerberos, upstream OIDC, proxy), the login page and its records, throttling, re-checks at refresh |
//! | `admin/` | the admin API |
//! | `observe/` | the request span, metrics, health |
//! | `http/` | errors on the wire, extractors, the body limit, pages and token responses, client authentication, TLS, the server |
//!
//! Handlers are thin: check the caller, parse into the service's types, call one operation,
//! map the result. Errors become HTTP responses in one place, [`ApiError`]. Imports go one way:
//! `app` imports the areas, the areas import `http`, `state` and `settings`, and `oauth` may use
//! `login` but not the other way round; `bridge/tests/imports.rs` reads every path in the code
//! (`crate::`, `super::`, modules brought in by `use`) and fails on a cycle or a rule broken.
//! [`AppState`] holds state, not operations.

mod admin;
mod app;
mod http;
mod kube;
mod login;
mod oauth;
mod observe;
mod settings;
mod state;

pub use app::app;
pub use http::error::ApiError;
pub use http::server::{ConnectionLimits, ConnectionStats, PeerInfo, serve, serve_with};
pub use http::tls::{
    ServerTls, TlsError, client_verifier, ensure_self_signed, server_config, verify_chain,
    write_private,
};
pub use kube::tokenreview::{TokenReviewRequest, TokenReviewSpec, TokenReviewStatus, UserInfo};
pub use login::throttle::ThrottlePolicy;
pub use login::upstream::{Upstream, UpstreamConfig, UpstreamError};
pub use observe::metrics::Metrics;
pub use settings::{DirectoryLogin, KerberosLogin, ProxySettings, Settings, SyncControl};
pub use state::AppState;
