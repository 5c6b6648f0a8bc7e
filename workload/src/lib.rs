//! The keytab injector: pods get imported Kerberos identity, attested by their ServiceAccount
//! token, short-lived, rotated and revocable.
//!
//! - **Attestation** ([`review`]): the pod's projected ServiceAccount token (audience
//!   `idbridge`, bound to the pod), checked by a TokenReview against the cluster's API server;
//!   namespace and serviceaccount come from its answer alone.
//! - **Mapping** ([`mapping`]): which (namespace, serviceaccount) may obtain which principal, in
//!   which form.
//! - **Issuance** ([`issue`]): a credential cache (the default: idbridge obtains a TGT with the
//!   principal's key, which never leaves it) or a keytab (for services that accept Kerberos),
//!   after the revocations are checked.
//! - **Keys** ([`keys`]): a [`KeySource`] (MIT kadmin) behind a cache, so an issuance makes no
//!   kadmin call; keytab principals' keys are rotated on a schedule with an overlap window, and
//!   at once on revocation.
//! - **Admission** ([`admission`]): the mutating webhook that puts the agent into pods.

pub mod admission;
pub mod ccache;
pub mod config;
pub mod issue;
pub mod keys;
pub mod mapping;
pub mod review;

pub use admission::AgentSettings;
pub use config::{AgentMode, Form, WorkloadsConfig};
pub use issue::{Issued, Issuer, IssuerParts, Refusal, RevokeError};
pub use keys::KeySource;
pub use mapping::Mappings;
