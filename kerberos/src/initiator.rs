//! The client side: a SPNEGO token from the user's ticket cache for the HTTP service of a host,
//! and the check of the server's answer (mutual authentication).
//!
//! The security context stays on one dedicated thread for its whole life; [`Initiator`] talks
//! to it through channels, so it is `Send` and can wait on the network in between.

use std::sync::mpsc;

use libgssapi::context::{ClientCtx, CtxFlags, SecurityContext};
use libgssapi::credential::{Cred, CredUsage};
use libgssapi::error::Error as GssError;
use libgssapi::name::Name;
use libgssapi::oid::{GSS_MECH_SPNEGO, GSS_NT_HOSTBASED_SERVICE};
use tokio::sync::oneshot;

use crate::{Krb5Error, routine, routine_error};

/// Why the client side failed; every message says what the user can do.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum InitError {
    /// No ticket cache, or no ticket in it.
    #[error("no Kerberos ticket: run kinit (or log in to the domain) first ({0})")]
    NoTicket(String),
    /// The ticket expired.
    #[error("your Kerberos ticket has expired: run kinit again ({0})")]
    Expired(String),
    /// The KDC does not know the service.
    #[error(
        "the KDC knows no service principal for {service}: ask the administrator to create it (and its keytab), or name the right one with --service ({detail})"
    )]
    UnknownService {
        /// The host-based service name asked for.
        service: String,
        /// What GSS-API said.
        detail: String,
    },
    /// No KDC answered.
    #[error("no Kerberos KDC answered: check the network and krb5.conf ({0})")]
    KdcUnreachable(String),
    /// The server's answer did not prove its identity.
    #[error("the server did not prove its identity (mutual authentication failed): {0}")]
    Mutual(String),
    /// Anything else GSS-API refused.
    #[error("Kerberos failed: {0}")]
    Other(String),
}

impl InitError {
    fn from_gss(e: GssError, service: &str) -> Self {
        let detail = e.to_string();
        match Krb5Error::of(&e, &detail) {
            Krb5Error::NoCache => Self::NoTicket(detail),
            Krb5Error::Expired => Self::Expired(detail),
            Krb5Error::UnknownServer => Self::UnknownService {
                service: service.to_owned(),
                detail,
            },
            Krb5Error::KdcUnreachable => Self::KdcUnreachable(detail),
            _ => match routine_error(&e) {
                routine::CREDENTIALS_EXPIRED => Self::Expired(detail),
                routine::NO_CRED => Self::NoTicket(detail),
                _ => Self::Other(detail),
            },
        }
    }
}

/// The host-based service name for `host`: `HTTP@host`, i.e. the principal `HTTP/host@REALM`.
#[must_use]
pub fn http_service(host: &str) -> String {
    format!("HTTP@{host}")
}

/// The ticket cache's principal, and whether a ticket in it is still valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedTicket {
    /// The default principal (`alice@EXAMPLE.COM`).
    pub principal: String,
    /// Whether every ticket in the cache has expired (the principal is still known, so a
    /// session it started can be found and refreshed; a new login needs `kinit`).
    pub expired: bool,
}

/// The principal of the default ticket cache (`KRB5CCNAME`), read without contacting a KDC:
/// from the file for a FILE cache, else through GSS-API (which names no principal for an
/// expired cache).
///
/// # Errors
/// No ticket cache, or an expired one that GSS-API will not name.
pub async fn cached_ticket() -> Result<CachedTicket, InitError> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    match crate::ccache::read(now) {
        crate::ccache::FileCache::Principal(principal) => {
            return Ok(CachedTicket {
                principal,
                expired: false,
            });
        }
        crate::ccache::FileCache::Expired(principal) => {
            return Ok(CachedTicket {
                principal,
                expired: true,
            });
        }
        crate::ccache::FileCache::NoTicket(why) => return Err(InitError::NoTicket(why)),
        crate::ccache::FileCache::Unknown => {}
    }
    tokio::task::spawn_blocking(|| {
        let cred = Cred::acquire(None, None, CredUsage::Initiate, None)
            .map_err(|e| InitError::from_gss(e, ""))?;
        let name = cred.name().map_err(|e| InitError::from_gss(e, ""))?;
        Ok(CachedTicket {
            principal: name.to_string(),
            expired: false,
        })
    })
    .await
    .map_err(|e| InitError::Other(e.to_string()))?
}

/// A client context waiting for the server's answer.
#[derive(Debug)]
pub struct Initiator {
    answer: mpsc::Sender<Vec<u8>>,
    done: oneshot::Receiver<Result<(), InitError>>,
}

impl Initiator {
    /// Starts a context with the default ticket cache for `service` (`HTTP@host`), asking for
    /// mutual authentication and nothing else (the ticket is never delegated). Returns the
    /// SPNEGO token to send.
    ///
    /// # Errors
    /// No ticket, an expired one, an unknown service, an unreachable KDC.
    pub async fn start(service: &str) -> Result<(Self, Vec<u8>), InitError> {
        let (first_tx, first_rx) = oneshot::channel();
        let (answer_tx, answer_rx) = mpsc::channel::<Vec<u8>>();
        let (done_tx, done_rx) = oneshot::channel();
        let service = service.to_owned();
        std::thread::Builder::new()
            .name("gss-initiator".into())
            .spawn(move || {
                let mut ctx = match first_token(&service) {
                    Ok((ctx, token)) => {
                        if first_tx.send(Ok(token)).is_err() {
                            return;
                        }
                        ctx
                    }
                    Err(e) => {
                        let _ = first_tx.send(Err(e));
                        return;
                    }
                };
                // The caller dropped the initiator: nothing to finish.
                let Ok(answer) = answer_rx.recv() else { return };
                let result = match ctx.step(Some(&answer), None) {
                    Ok(None) if ctx.is_complete() => Ok(()),
                    Ok(_) => Err(InitError::Mutual(
                        "the server wants another round trip".into(),
                    )),
                    Err(e) => Err(InitError::Mutual(e.to_string())),
                };
                let _ = done_tx.send(result);
            })
            .map_err(|e| InitError::Other(format!("cannot start a thread: {e}")))?;
        let token = first_rx
            .await
            .map_err(|_| InitError::Other("the Kerberos thread stopped".into()))??;
        Ok((
            Self {
                answer: answer_tx,
                done: done_rx,
            },
            token,
        ))
    }

    /// Checks the server's answer token: it must complete the context.
    ///
    /// # Errors
    /// When it does not prove the server's identity.
    pub async fn finish(self, answer: Vec<u8>) -> Result<(), InitError> {
        self.answer
            .send(answer)
            .map_err(|_| InitError::Other("the Kerberos thread stopped".into()))?;
        self.done
            .await
            .map_err(|_| InitError::Other("the Kerberos thread stopped".into()))?
    }
}

fn first_token(service: &str) -> Result<(ClientCtx, Vec<u8>), InitError> {
    let name = Name::new(service.as_bytes(), Some(GSS_NT_HOSTBASED_SERVICE))
        .map_err(|e| InitError::from_gss(e, service))?;
    let mut ctx = ClientCtx::new(
        None,
        name,
        CtxFlags::GSS_C_MUTUAL_FLAG,
        Some(GSS_MECH_SPNEGO),
    );
    match ctx.step(None, None) {
        Ok(Some(token)) => Ok((ctx, token.to_vec())),
        Ok(None) => Err(InitError::Other("GSS-API produced no token".into())),
        Err(e) => Err(InitError::from_gss(e, service)),
    }
}
