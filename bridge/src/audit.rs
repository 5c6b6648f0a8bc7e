//! The audit log: one JSON object per line for every review, admin action and denial.
//!
//! Lines are handed to a writer thread so that a slow disk never holds a request; the thread
//! flushes whenever it has drained what was queued, so a line is on disk moments after the event.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

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
#[derive(Debug, Clone)]
pub struct Audit {
    tx: Option<mpsc::Sender<Vec<u8>>>,
    worker: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl Audit {
    /// Opens the sink and starts the writer.
    ///
    /// # Errors
    /// If the file cannot be opened for appending.
    pub fn open(sink: &AuditSink) -> std::io::Result<Self> {
        let out: Box<dyn Write + Send> = match sink {
            AuditSink::Discard => {
                return Ok(Self {
                    tx: None,
                    worker: Arc::default(),
                });
            }
            AuditSink::Stdout => Box::new(std::io::stdout()),
            AuditSink::File(p) => Box::new(open_append(p)?),
        };
        let (tx, rx) = mpsc::channel::<Vec<u8>>();
        let worker = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || write_loop(&rx, out))?;
        Ok(Self {
            tx: Some(tx),
            worker: Arc::new(Mutex::new(Some(worker))),
        })
    }

    /// Records an event.
    pub fn record(&self, event: &AuditEvent<'_>) {
        let Some(tx) = &self.tx else { return };
        let ts = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        match serde_json::to_vec(&Line { ts, event }) {
            Ok(mut line) => {
                line.push(b'\n');
                if tx.send(line).is_err() {
                    tracing::error!("audit writer has stopped; an audit event was lost");
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot serialize an audit event"),
        }
    }

    /// Stops the writer after it has written everything queued.
    pub fn close(mut self) {
        self.tx = None;
        let handle = self
            .worker
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(h) = handle {
            // Other clones may still hold senders; the thread ends when the last one drops.
            if Arc::strong_count(&self.worker) == 1 {
                let _ = h.join();
            }
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

fn write_loop(rx: &mpsc::Receiver<Vec<u8>>, out: Box<dyn Write + Send>) {
    let mut out = std::io::BufWriter::new(out);
    while let Ok(line) = rx.recv() {
        let mut ok = out.write_all(&line).is_ok();
        while let Ok(more) = rx.try_recv() {
            ok &= out.write_all(&more).is_ok();
        }
        ok &= out.flush().is_ok();
        if !ok {
            tracing::error!("cannot write the audit log");
        }
    }
    let _ = out.flush();
}
