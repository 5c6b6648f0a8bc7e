//! idbridge's token service: everything about tokens that is not HTTP.
//!
//! Every login method ends here: it proves who someone is, and the service turns that into a
//! session with a rotating refresh token and short-lived access tokens signed by the key ring.
//! Every bearer credential idbridge is shown, whatever route it arrives by, is verified here by
//! one [`Authenticator`], so TokenReview, the token endpoint and the admin API agree on who a
//! token names.
//!
//! The service depends on `idbridge-core` alone among idbridge's crates: the store, the clock
//! and randomness are core traits, and what a refresh must ask the login's source again (the
//! directory, an upstream provider) comes in through [`idbridge_core::LoginSource`]. It knows
//! nothing of HTTP: its operations take an [`Origin`] (request id and peer, for the audit log)
//! and return [`TokenError`], which the bridge maps to responses in one place. The bridge's
//! handlers, the binary's `--offline` admin commands, and later the sync worker and the
//! pod-credential service all call the same operations, so one rule holds for all of them.
//!
//! | module | what |
//! | --- | --- |
//! | [`secret`] | opaque secrets (static, refresh, webhook tokens), their hashes, access-token claims |
//! | [`seal`] | AES-256-GCM sealing at rest, key-encryption keys |
//! | [`keys`] | the ES256 signing key ring, its rotation policy, the JWKS |
//! | [`verify`] | bearer verification and the review cache |
//! | [`sessions`] | minting, sessions, refresh with reuse detection and grace |
//! | [`exchange`] | RFC 8693 token exchange: narrowing, re-targeting by rule, delegation |
//! | [`grants`] | logins that finish on another request: authorization codes, device codes |
//! | [`revoke`] | RFC 7009 revocation and RFC 7662 introspection |
//! | [`provision`] | accounts from external identities |
//! | [`admin`] | administrative operations |
//! | [`audit`] | the audit log |
//! | [`policy`] | the service's settings |

pub mod admin;
pub mod audit;
mod error;
pub mod exchange;
pub mod grants;
pub mod keys;
pub mod policy;
pub mod provision;
pub mod revoke;
pub mod seal;
pub mod secret;
mod service;
pub mod sessions;
pub mod verify;

pub use admin::{AdminOps, CreatedToken, KeyInfo, SessionInfo, UserRevocation};
pub use audit::{Audit, AuditEvent, AuditSink, Origin};
pub use error::{OpsError, TokenError};
pub use keys::{KeyError, KeyPolicy, KeySet, Rotate, maintain};
pub use policy::{AudienceChange, CLI_CLIENT, Client, MayAct, Policy, Secret, Who};
pub use seal::{CryptoError, Kek, SealKey};
pub use secret::{
    AccessClaims, Actor, REFRESH_TOKEN_PREFIX, STATIC_TOKEN_PREFIX, SystemRandom,
    WEBHOOK_TOKEN_PREFIX, hash_token, new_secret, new_static_secret,
};
pub use service::TokenService;
pub use sessions::{Grant, Login, TokenPair, UpstreamGrant};
pub use verify::{Authenticated, Authenticator, Denial, Refusal};
