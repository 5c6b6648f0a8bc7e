//! idbridge's sync worker: the directory's users and groups kept in step with idbridge's
//! accounts between logins.
//!
//! A run reads the whole directory at once (`idbridge_directory::Snapshot`: every user and
//! group, paged, nesting resolved once), makes a [`plan`](plan::plan) against the store's
//! accounts (pure: the same input gives the same plan, and the unit tests need no server),
//! checks the plan's guards, and applies it in one store transaction. Logins and refreshes
//! still read the directory live for a token's groups; sync keeps the *stored* account in step
//! (name, labels, default namespace, disabled), so that a user disabled or deleted in the
//! directory loses every session at once, not at their next refresh.
//!
//! - [`config`]: the `sync` config section, checked field by field.
//! - [`labels`]: the label keys sync owns, and the rule that makes any group name a label key.
//! - [`plan`]: the diff, the reasons and the guards.
//! - [`objects`]: the Kubernetes objects the namespace rules ask for, and what to prune (pure).
//! - [`kube`]: the cluster: list what sync owns, server-side apply, delete.
//! - [`run`]: one run: the lease, the read, the identity check, the plan, the apply.

pub mod config;
pub mod kube;
pub mod labels;
pub mod objects;
pub mod plan;
pub mod run;

pub use config::{Rules, SyncConfig};
pub use plan::{Entry, Input, Kind, Plan, Planned, plan};
pub use run::{Options, Outcome, Report, Runner};
