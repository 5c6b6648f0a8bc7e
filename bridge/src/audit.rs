//! The audit log: one JSON object per line for every review, admin action and denial.
//!
//! Each line is written with a single unbuffered `write` before the response leaves, so an
//! acknowledged action is already in the log, and a crash cannot lose or tear a line that was
//! reported done (files are opened in append mode, so concurrent writers never interleave).

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde::Serialize;

/// Where audit lines go.
#[derive(Debug, Clone)]
pub enum AuditSink {
    /// Standard output.
    Stdout,
    /// Appended to a file (created with mode 0600).
    File(std::path::PathBuf),
    /// Nowhere (tests and benchmarks of the bare path).
    Discard,
}

/// One audit record. Never put a secret in any field.
#[derive(Debug, Serialize)]
pub struct AuditEvent<'a> {
    /// What happened, e.g. `tokenreview`, `token.create`, `account.disable`.
    pub event: &'a str,
    /// `allowed`, `denied`, `ok` or `error`.
    pub outcome: &'a str,
    /// The account acted upon or authenticated, by name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account: Option<&'a str>,
    /// Its UID.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// Who asked (the admin account), for admin actions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<&'a str>,
    /// The actor's UID.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor_uid: Option<String>,
    /// The peer address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<SocketAddr>,
    /// The request's correlation id (`X-Request-Id`).
    pub correlation_id: &'a str,
    /// Why it was denied, or what was done.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'a str>,
    /// A non-secret identifier of the object (token id, audience).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
}

#[derive(Serialize)]
struct Line<'a> {
    ts: String,
    #[serde(flatten)]
    event: &'a AuditEvent<'a>,
}

/// A handle to the audit log; cheap to clone.
#[derive(Clone)]
pub struct Audit {
    out: Option<Arc<Mutex<Box<dyn Write + Send>>>>,
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Audit")
            .field("enabled", &self.out.is_some())
            .finish()
    }
}

impl Audit {
    /// Opens the sink.
    ///
    /// # Errors
    /// If the file cannot be opened for appending.
    pub fn open(sink: &AuditSink) -> std::io::Result<Self> {
        let out: Box<dyn Write + Send> = match sink {
            AuditSink::Discard => return Ok(Self { out: None }),
            AuditSink::Stdout => Box::new(std::io::stdout()),
            AuditSink::File(p) => Box::new(open_append(p)?),
        };
        Ok(Self {
            out: Some(Arc::new(Mutex::new(out))),
        })
    }

    /// Records an event.
    pub fn record(&self, event: &AuditEvent<'_>) {
        let Some(out) = &self.out else { return };
        let ts = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        match serde_json::to_vec(&Line { ts, event }) {
            Ok(mut line) => {
                line.push(b'\n');
                let mut w = out
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if let Err(e) = w.write_all(&line).and_then(|()| w.flush()) {
                    tracing::error!(error = %e, event = event.event, "cannot write the audit log");
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot serialize an audit event"),
        }
    }

    /// Flushes and releases the sink.
    pub fn close(self) {
        if let Some(out) = self.out {
            let mut w = out
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let _ = w.flush();
        }
    }
}

fn open_append(p: &Path) -> std::io::Result<std::fs::File> {
    let mut o = std::fs::OpenOptions::new();
    o.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o.open(p)
}
