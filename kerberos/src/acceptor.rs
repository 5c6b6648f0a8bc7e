//! The server side: a GSS-API acceptor over the configured keytab.
//!
//! A login is one round trip, so a security context lives only inside one call on a blocking
//! thread and never crosses an `await`: [`Acceptor::accept`] is the `Send` interface.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use idbridge_core::Principal;
use libgssapi::context::{SecurityContext, ServerCtx};
use libgssapi::credential::Cred;
use libgssapi::error::{Error as GssError, MajorFlags};

use crate::spnego::{TokenKind, classify};
use crate::{ConfigError, Krb5Error, routine, routine_error};

/// The largest initial token accepted; a ticket with a large PAC stays well below.
pub const MAX_TOKEN_BYTES: usize = 64 * 1024;

/// A completed login.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// The client's principal, as the KDC named it.
    pub principal: Principal,
    /// The token proving the server's identity back to the client (mutual authentication).
    pub mutual_token: Option<Vec<u8>>,
}

/// Why a token was refused. The messages are for the client; [`AcceptError::detail`] is for
/// the server's log.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum AcceptError {
    /// An NTLM token: only Kerberos is accepted.
    #[error(
        "NTLM is not accepted, Kerberos is required: get a ticket with kinit (or log in to the domain) and make sure the client asks for the HTTP service of this host"
    )]
    Ntlm,
    /// SPNEGO offering Kerberos without a Kerberos token.
    #[error("the Negotiate token carries no Kerberos ticket; get one with kinit and retry")]
    NoKerberosToken,
    /// Not a Kerberos or SPNEGO token, truncated or garbled.
    #[error("the token is not a Kerberos (SPNEGO) token, or it is damaged")]
    Malformed(String),
    /// The token is larger than [`MAX_TOKEN_BYTES`].
    #[error("the Kerberos token is larger than {MAX_TOKEN_BYTES} bytes")]
    TooLarge,
    /// The authenticator was accepted before.
    #[error("this Kerberos token was already used (replay); the client must make a new one")]
    Replay(String),
    /// The keytab holds no key for the ticket (another principal, or an older key version).
    #[error(
        "this server has no key for the service ticket presented (its keytab lacks that principal or key version); ask the administrator to update the keytab"
    )]
    NoKey(String),
    /// The ticket expired, or the clocks differ too much.
    #[error("the Kerberos ticket has expired or the clocks disagree; run kinit and retry")]
    Expired(String),
    /// The client wanted a second round trip.
    #[error("the Kerberos exchange needs more than one round trip, which is not supported")]
    ContinueNeeded,
    /// Any other refusal.
    #[error("the Kerberos token was refused")]
    Refused(String),
    /// The blocking thread did not finish.
    #[error("the Kerberos check failed unexpectedly")]
    Internal(String),
}

impl AcceptError {
    /// What GSS-API said, for the server's log.
    #[must_use]
    pub fn detail(&self) -> String {
        match self {
            Self::Malformed(d)
            | Self::Replay(d)
            | Self::NoKey(d)
            | Self::Expired(d)
            | Self::Refused(d)
            | Self::Internal(d) => d.clone(),
            other => other.to_string(),
        }
    }

    fn from_gss(e: GssError) -> Self {
        let detail = e.to_string();
        // Supplementary bits are flags; the routine error is a number.
        if e.major.contains(MajorFlags::GSS_S_DUPLICATE_TOKEN) {
            return Self::Replay(detail);
        }
        match Krb5Error::of(&e, &detail) {
            Krb5Error::Replay => Self::Replay(detail),
            Krb5Error::NoKey => Self::NoKey(detail),
            Krb5Error::Expired => Self::Expired(detail),
            _ => match routine_error(&e) {
                routine::CREDENTIALS_EXPIRED => Self::Expired(detail),
                routine::DEFECTIVE_TOKEN | routine::BAD_MECH => Self::Malformed(detail),
                _ => Self::Refused(detail),
            },
        }
    }
}

/// Accepts Kerberos logins for every service principal in a keytab.
#[derive(Debug)]
pub struct Acceptor {
    keytab: PathBuf,
    /// One credential per core: MIT serializes the accepts that share a credential.
    creds: Arc<Vec<Cred>>,
    next: AtomicUsize,
}

impl Acceptor {
    /// An acceptor for the principals of `keytab`, recording authenticators in
    /// `replay_cache`.
    ///
    /// # Errors
    /// If the keytab cannot be read or holds no key, naming `field`.
    pub fn new(
        keytab: &Path,
        replay_cache: Option<&Path>,
        field: &str,
    ) -> Result<Self, ConfigError> {
        if let Err(e) = std::fs::File::open(keytab) {
            return Err(ConfigError::new(
                field,
                &format!("cannot read the keytab {}: {e}", keytab.display()),
            ));
        }
        let n = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
        let creds = (0..n)
            .map(|_| crate::ffi::acceptor_credential(keytab, replay_cache))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                ConfigError::new(
                    field,
                    &format!("no usable key in the keytab {}: {e}", keytab.display()),
                )
            })?;
        Ok(Self {
            keytab: keytab.to_owned(),
            creds: Arc::new(creds),
            next: AtomicUsize::new(0),
        })
    }

    /// The keytab in use.
    #[must_use]
    pub fn keytab(&self) -> &Path {
        &self.keytab
    }

    /// Checks an initial token (raw Kerberos or SPNEGO) on a blocking thread.
    ///
    /// # Errors
    /// See [`AcceptError`]; a refused token is never a panic, whatever its bytes.
    pub async fn accept(&self, token: Vec<u8>) -> Result<Accepted, AcceptError> {
        precheck(&token)?;
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.creds.len();
        let creds = Arc::clone(&self.creds);
        tokio::task::spawn_blocking(move || accept_on(&creds[i], &token))
            .await
            .map_err(|e| AcceptError::Internal(e.to_string()))?
    }
}

fn precheck(token: &[u8]) -> Result<(), AcceptError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(AcceptError::TooLarge);
    }
    match classify(token) {
        TokenKind::Kerberos => Ok(()),
        TokenKind::Ntlm => Err(AcceptError::Ntlm),
        TokenKind::NoKerberosToken => Err(AcceptError::NoKerberosToken),
        TokenKind::Unsupported => Err(AcceptError::Malformed(
            "not a Kerberos or SPNEGO initial token".into(),
        )),
    }
}

/// One whole accept; the context is created and dropped on this thread.
fn accept_on(cred: &Cred, token: &[u8]) -> Result<Accepted, AcceptError> {
    let mut ctx = ServerCtx::new(Some(cred.clone()));
    let out = ctx.step(token, None).map_err(AcceptError::from_gss)?;
    if !ctx.is_complete() {
        return Err(AcceptError::ContinueNeeded);
    }
    let name = ctx.source_name().map_err(AcceptError::from_gss)?;
    let text = name.to_string();
    let principal = text
        .parse()
        .map_err(|e| AcceptError::Refused(format!("client principal {text:?}: {e}")))?;
    Ok(Accepted {
        principal,
        mutual_token: out.map(|b| b.to_vec()),
    })
}
