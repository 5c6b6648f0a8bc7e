//! The audit log: one JSON object per line for every review, admin action and denial.
//!
//! Requests append their line to a shared buffer (a short lock, no system call); one writer
//! thread writes the buffer out every 20 ms, or at once when it grows large or when an event that
//! changes state (an admin action, a token issued) waits for its line: a change the caller saw
//! acknowledged is already in the log. Review lines reach the disk within 20 ms, and a graceful
//! shutdown writes everything. Waking a writer for every review would cost more than the review.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

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

/// An event with its time first. Written field by field: `#[serde(flatten)]` would buffer every
/// event through a map first, which cost more than the rest of the line.
struct Line<'a> {
    ts: &'a str,
    event: &'a AuditEvent<'a>,
}

impl Serialize for Line<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let e = self.event;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("ts", self.ts)?;
        m.serialize_entry("event", e.event)?;
        m.serialize_entry("outcome", e.outcome)?;
        if let Some(v) = e.account {
            m.serialize_entry("account", v)?;
        }
        if let Some(v) = &e.uid {
            m.serialize_entry("uid", v)?;
        }
        if let Some(v) = e.actor {
            m.serialize_entry("actor", v)?;
        }
        if let Some(v) = &e.actor_uid {
            m.serialize_entry("actor_uid", v)?;
        }
        if let Some(v) = &e.source {
            m.serialize_entry("source", v)?;
        }
        m.serialize_entry("correlation_id", e.correlation_id)?;
        if let Some(v) = e.reason {
            m.serialize_entry("reason", v)?;
        }
        if let Some(v) = &e.object {
            m.serialize_entry("object", v)?;
        }
        m.end()
    }
}

thread_local! {
    static LINE: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

const FLUSH_EVERY: Duration = Duration::from_millis(20);
const FLUSH_AT_BYTES: usize = 256 * 1024;

#[derive(Default)]
struct Pending {
    buf: Vec<u8>,
    acks: Vec<tokio::sync::oneshot::Sender<()>>,
    urgent: bool,
    stop: bool,
}

#[derive(Default)]
struct Shared {
    pending: Mutex<Pending>,
    wake: Condvar,
}

/// Where a call came from, as the audit log records it: the request's correlation id and the
/// peer's address. Not a credential: it names, it does not authorise.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    /// The correlation id (`X-Request-Id`, or generated); empty when there is none.
    pub request_id: &'a str,
    /// The peer address, when the call came over the network.
    pub source: Option<SocketAddr>,
}

impl<'a> Origin<'a> {
    /// A call with no request behind it (the binary's `--offline` commands, timers).
    #[must_use]
    pub fn local() -> Self {
        Self {
            request_id: "",
            source: None,
        }
    }

    /// An audit event pre-filled with this origin.
    #[must_use]
    pub fn event(self, event: &'a str, outcome: &'a str) -> AuditEvent<'a> {
        AuditEvent {
            event,
            outcome,
            account: None,
            uid: None,
            actor: None,
            actor_uid: None,
            source: self.source,
            correlation_id: self.request_id,
            reason: None,
            object: None,
        }
    }
}

/// A handle to the audit log; cheap to clone.
#[derive(Clone)]
pub struct Audit {
    shared: Option<Arc<Shared>>,
    worker: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Audit")
            .field("enabled", &self.shared.is_some())
            .finish()
    }
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
                    shared: None,
                    worker: Arc::default(),
                });
            }
            AuditSink::Stdout => Box::new(std::io::stdout()),
            AuditSink::File(p) => Box::new(open_append(p)?),
        };
        let shared = Arc::new(Shared::default());
        let for_writer = shared.clone();
        let worker = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || write_loop(&for_writer, out))?;
        Ok(Self {
            shared: Some(shared),
            worker: Arc::new(Mutex::new(Some(worker))),
        })
    }

    fn append(&self, event: &AuditEvent<'_>, ack: Option<tokio::sync::oneshot::Sender<()>>) {
        let Some(shared) = &self.shared else { return };
        // The line is made outside the lock, in this thread's own buffer (no allocation per
        // line), with the time formatted on the stack.
        let mut ts = [0u8; 40];
        let ts_len = {
            let mut out = &mut ts[..];
            let room = out.len();
            match time::OffsetDateTime::now_utc()
                .format_into(&mut out, &time::format_description::well_known::Rfc3339)
            {
                Ok(_) => room - out.len(),
                Err(_) => 0,
            }
        };
        let ts = std::str::from_utf8(&ts[..ts_len]).unwrap_or_default();
        LINE.with_borrow_mut(|line| {
            line.clear();
            if let Err(e) = serde_json::to_writer(&mut *line, &Line { ts, event }) {
                tracing::error!(error = %e, "cannot serialize an audit event");
                return;
            }
            line.push(b'\n');
            Self::push(shared, line, event, ack);
            if line.capacity() > 16 * 1024 {
                // An unusually long line: do not keep its buffer.
                *line = Vec::new();
            }
        });
    }

    fn push(
        shared: &Shared,
        line: &[u8],
        event: &AuditEvent<'_>,
        ack: Option<tokio::sync::oneshot::Sender<()>>,
    ) {
        let mut p = shared
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if p.stop {
            tracing::error!(
                event = event.event,
                "the audit log is closed; an event was lost"
            );
            return;
        }
        p.buf.extend_from_slice(line);
        let urgent = ack.is_some() || p.buf.len() >= FLUSH_AT_BYTES;
        if let Some(a) = ack {
            p.acks.push(a);
        }
        if urgent && !p.urgent {
            p.urgent = true;
            shared.wake.notify_one();
        }
    }

    /// Records an event; it reaches the log within moments.
    pub fn record(&self, event: &AuditEvent<'_>) {
        self.append(event, None);
    }

    /// Records an event and waits until it is written.
    pub async fn record_durable(&self, event: &AuditEvent<'_>) {
        if self.shared.is_none() {
            return;
        }
        let (ack, done) = tokio::sync::oneshot::channel();
        self.append(event, Some(ack));
        let _ = done.await;
    }

    /// Writes everything recorded and stops the writer.
    pub fn close(self) {
        if let Some(shared) = &self.shared {
            let mut p = shared
                .pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            p.stop = true;
            shared.wake.notify_one();
        }
        let handle = self
            .worker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(h) = handle {
            let _ = h.join();
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

fn write_loop(shared: &Shared, mut out: Box<dyn Write + Send>) {
    let mut spare = Vec::new();
    loop {
        let (mut buf, acks, stop) = {
            let mut p = shared
                .pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            while !p.urgent && !p.stop {
                let (g, timeout) = shared
                    .wake
                    .wait_timeout(p, FLUSH_EVERY)
                    .unwrap_or_else(PoisonError::into_inner);
                p = g;
                if timeout.timed_out() && !p.buf.is_empty() {
                    break;
                }
            }
            p.urgent = false;
            let buf = std::mem::replace(&mut p.buf, std::mem::take(&mut spare));
            (buf, std::mem::take(&mut p.acks), p.stop)
        };
        if !buf.is_empty()
            && let Err(e) = out.write_all(&buf).and_then(|()| out.flush())
        {
            tracing::error!(error = %e, "cannot write the audit log");
        }
        for a in acks {
            let _ = a.send(());
        }
        if stop {
            break;
        }
        buf.clear();
        spare = buf;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event<'a>(name: &'a str, id: &'a str) -> AuditEvent<'a> {
        AuditEvent {
            event: name,
            outcome: "ok",
            account: Some("alice"),
            uid: None,
            actor: None,
            actor_uid: None,
            source: None,
            correlation_id: id,
            reason: None,
            object: None,
        }
    }

    #[test]
    fn a_line_is_the_event_with_its_time_first() {
        let full = AuditEvent {
            event: "token.refresh",
            outcome: "ok",
            account: Some("alice"),
            uid: Some("u1".into()),
            actor: Some("admin"),
            actor_uid: Some("u0".into()),
            source: Some("127.0.0.1:5".parse().unwrap()),
            correlation_id: "c\"1",
            reason: Some("why"),
            object: Some("session=s".into()),
        };
        for e in [full, event("tokenreview", "x")] {
            let text = serde_json::to_string(&Line { ts: "T", event: &e }).unwrap();
            assert!(text.starts_with(r#"{"ts":"T","#), "{text}");
            let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
            v.as_object_mut().unwrap().remove("ts");
            assert_eq!(
                v,
                serde_json::to_value(&e).unwrap(),
                "every field, none added"
            );
        }
    }

    #[tokio::test]
    async fn durable_events_are_on_disk_when_acknowledged_and_close_drains_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let audit = Audit::open(&AuditSink::File(path.clone())).unwrap();
        for i in 0..100 {
            audit.record(&event("tokenreview", &i.to_string()));
        }
        audit.record_durable(&event("token.create", "x")).await;
        let text = std::fs::read_to_string(&path).unwrap();
        // Everything recorded before the durable event is written with it, in order.
        assert_eq!(text.lines().count(), 101);
        assert!(
            text.lines()
                .last()
                .unwrap()
                .contains("\"event\":\"token.create\"")
        );
        audit.record(&event("tokenreview", "last"));
        audit.close();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 102);
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert!(v["ts"].is_string() && v["account"] == "alice");
        }
    }
}
