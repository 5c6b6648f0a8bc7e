//! Kerberos for idbridge.
//!
//! The server side is an [`Acceptor`]: it checks a client's initial token, raw Kerberos or
//! SPNEGO (RFC 4178) as HTTP Negotiate (RFC 4559) sends it, against the keys of a keytab named
//! in the configuration, and returns the client's principal with the token that proves the
//! server's identity back. Every principal in the keytab is accepted, so several service names
//! behind one load balancer share one keytab; the keytab is read at every accept, so a keytab
//! replaced on disk (a new key version) takes effect without a restart; authenticators are
//! recorded in a replay cache so none is accepted twice. NTLM is refused before GSS-API sees it.
//!
//! The client side is an [`Initiator`]: a SPNEGO token from the user's ticket cache for
//! `HTTP@host`, then the check of the server's answer (mutual authentication).
//!
//! GSS-API security contexts must not be used from two threads at once and a login is one round
//! trip, so each context lives on one blocking thread for its whole life; the async API is the
//! `Send` interface in front of it. The one piece of `unsafe` FFI, acquiring the acceptor's
//! credential from a named keytab, is in the `ffi` module with its invariant.
//!
//! A [`Mapper`] turns a principal into an account name: allowed realms, `auth_to_local`-style
//! rules, then the default of stripping the realm.

mod acceptor;
mod ccache;
mod config;
mod ffi;
mod initiator;
pub mod kadmin;
pub mod keytab;
mod mapping;
pub mod spnego;
mod wire;

pub use acceptor::{AcceptError, Accepted, Acceptor, MAX_TOKEN_BYTES};
pub use config::{GroupSource, KerberosConfig, MappingRule};
pub use initiator::{CachedTicket, InitError, Initiator, cached_ticket, http_service};
pub use mapping::{MapError, Mapper};

/// A ticket-granting ticket for `principal` obtained with `keys` (held in memory only, never in
/// a file), valid for `lifetime_secs`, written as an MIT FILE credential cache at `cache`; the
/// realm's KDCs come from `krb5_conf` (the environment is not read). Blocking: it talks to the
/// KDC.
///
/// # Errors
/// The Kerberos library's message for the step that failed (a KDC that cannot be reached, keys
/// it does not take, ...).
pub fn initial_ticket(
    krb5_conf: &std::path::Path,
    principal: &str,
    keys: &[keytab::KeytabEntry],
    lifetime_secs: u32,
    cache: &std::path::Path,
) -> Result<(), String> {
    ffi::initial_ticket(krb5_conf, principal, keys, lifetime_secs, cache)
}

/// Whether the Kerberos library reads `krb5_conf`: it exists and parses.
///
/// # Errors
/// The library's message (the line at fault, for a syntax error).
pub fn check_krb5_conf(krb5_conf: &std::path::Path) -> Result<(), String> {
    ffi::check_krb5_conf(krb5_conf)
}

/// A configuration problem, naming the field at fault.
#[derive(Debug, Clone, thiserror::Error)]
#[error("field `{field}`: {message}")]
pub struct ConfigError {
    field: String,
    message: String,
}

impl ConfigError {
    pub(crate) fn new(field: &str, message: &str) -> Self {
        Self {
            field: field.to_owned(),
            message: message.to_owned(),
        }
    }
}

/// How a GSS-API failure reads: its routine error, and the krb5 error it carries.
///
/// MIT's mechanism glue re-numbers minor codes that pass through SPNEGO, so a krb5 error code
/// is recognised by its number when it arrives unchanged and by its standard message otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Krb5Error {
    Replay,
    NoKey,
    Expired,
    UnknownServer,
    NoCache,
    KdcUnreachable,
    Other,
}

impl Krb5Error {
    pub(crate) fn of(e: &libgssapi::error::Error, detail: &str) -> Self {
        #[allow(clippy::cast_possible_wrap)]
        let minor = e.minor as i32;
        let has = |needles: &[&str]| needles.iter().any(|n| detail.contains(n));
        match minor {
            codes::AP_ERR_REPEAT => return Self::Replay,
            codes::AP_ERR_NOKEY
            | codes::AP_ERR_BADKEYVER
            | codes::KT_NOTFOUND
            | codes::KT_KVNONOTFOUND
            | codes::AP_ERR_BAD_INTEGRITY => return Self::NoKey,
            codes::AP_ERR_TKT_EXPIRED | codes::AP_ERR_SKEW | codes::AP_ERR_TKT_NYV => {
                return Self::Expired;
            }
            codes::KDC_ERR_S_PRINCIPAL_UNKNOWN => return Self::UnknownServer,
            codes::FCC_NOFILE | codes::CC_NOTFOUND | codes::CC_END => return Self::NoCache,
            codes::KDC_UNREACH | codes::REALM_UNKNOWN => return Self::KdcUnreachable,
            _ => {}
        }
        if has(&["replay"]) {
            Self::Replay
        } else if has(&[
            "key table",
            "keytab",
            "Key version",
            "Cannot find key",
            "integrity check failed",
        ]) {
            Self::NoKey
        } else if has(&["expired", "Clock skew", "not yet valid"]) {
            Self::Expired
        } else if has(&["not found in Kerberos database"]) {
            Self::UnknownServer
        } else if has(&["credentials cache", "No Kerberos credentials"]) {
            Self::NoCache
        } else if has(&[
            "Cannot contact any KDC",
            "Cannot find KDC",
            "Cannot resolve",
        ]) {
            Self::KdcUnreachable
        } else {
            Self::Other
        }
    }
}

/// The routine error of a GSS-API major status (RFC 2744 section 3.9.1): a number, not flags.
pub(crate) fn routine_error(e: &libgssapi::error::Error) -> u32 {
    (e.major.bits() >> 16) & 0xff
}

/// Routine error numbers used here.
pub(crate) mod routine {
    pub const BAD_MECH: u32 = 1;
    pub const NO_CRED: u32 = 7;
    pub const DEFECTIVE_TOKEN: u32 = 9;
    pub const CREDENTIALS_EXPIRED: u32 = 11;
}

/// MIT krb5 error codes, as GSS-API reports them in the minor status.
mod codes {
    pub const KDC_ERR_S_PRINCIPAL_UNKNOWN: i32 = -1_765_328_377;
    pub const AP_ERR_BAD_INTEGRITY: i32 = -1_765_328_353;
    pub const AP_ERR_TKT_EXPIRED: i32 = -1_765_328_352;
    pub const AP_ERR_TKT_NYV: i32 = -1_765_328_351;
    pub const AP_ERR_REPEAT: i32 = -1_765_328_350;
    pub const AP_ERR_SKEW: i32 = -1_765_328_347;
    pub const AP_ERR_BADKEYVER: i32 = -1_765_328_340;
    pub const AP_ERR_NOKEY: i32 = -1_765_328_339;
    pub const CC_NOTFOUND: i32 = -1_765_328_243;
    pub const CC_END: i32 = -1_765_328_242;
    pub const REALM_UNKNOWN: i32 = -1_765_328_230;
    pub const KDC_UNREACH: i32 = -1_765_328_228;
    pub const KT_NOTFOUND: i32 = -1_765_328_203;
    pub const FCC_NOFILE: i32 = -1_765_328_189;
    pub const KT_KVNONOTFOUND: i32 = -1_765_328_154;
}
