//! Issuance: a reviewed ServiceAccount token → the mapping → the revocations → a credential
//! cache or a keytab; and the keys' lifecycle (scheduled rotation with an overlap window,
//! rotation on revocation).

use std::sync::Arc;

use idbridge_core::{Clock, Store, UnixTime, WorkloadKeyState, WorkloadRevocation, WorkloadTarget};
use idbridge_kerberos::keytab::{self, KeytabEntry};
use serde::Serialize;

use crate::ccache::Tickets;
use crate::config::{Form, KeytabPolicy};
use crate::keys::{KeyCache, KeySource, newest};
use crate::mapping::{Mapped, Mappings};
use crate::review::{ReviewError, Workload, review};

/// Shortest ticket cache handed out: a token closer to its expiry is refused (the kubelet
/// refreshes a projected token well before it expires).
const MIN_LIFETIME_SECS: i64 = 30;

/// What a workload gets.
#[derive(Serialize)]
pub struct Issued {
    /// The principal.
    pub principal: String,
    /// `ccache` or `keytab`.
    pub form: Form,
    /// The credential cache or keytab file, base64.
    #[serde(serialize_with = "base64_bytes")]
    pub credential: zeroize::Zeroizing<Vec<u8>>,
    /// The `krb5.conf` to use it with.
    pub krb5_conf: String,
    /// Unix seconds.
    pub issued_at: i64,
    /// When the credential stops working: the ticket's end, or for a keytab when its newest
    /// key version leaves the KDC at the latest (a rotation plus the overlap).
    pub expires_at: i64,
    /// When the agent should fetch again.
    pub renew_after: i64,
    /// The key versions a keytab holds (empty for a ccache).
    pub kvnos: Vec<u32>,
    /// Who asked.
    #[serde(skip)]
    pub workload: Workload,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("principal", &self.principal)
            .field("form", &self.form)
            .field(
                "credential",
                &format_args!("<{} bytes>", self.credential.len()),
            )
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

fn base64_bytes<S: serde::Serializer>(
    b: &zeroize::Zeroizing<Vec<u8>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    use base64::Engine;
    s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(b.as_slice()))
}

/// Why a workload gets nothing.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Refusal {
    /// The token attests no pod (HTTP 401).
    #[error("{0}")]
    Unauthenticated(String),
    /// The workload may not have a credential: unmapped or revoked (HTTP 403).
    #[error("{message}")]
    Forbidden {
        /// Why.
        message: String,
        /// Who.
        workload: Box<Workload>,
        /// `unmapped` or `revoked`.
        reason: &'static str,
    },
    /// The API server, the key source or the KDC failed (HTTP 503).
    #[error("{message}")]
    Unavailable {
        /// Why.
        message: String,
        /// Who, when known.
        workload: Option<Box<Workload>>,
    },
}

impl Refusal {
    /// The workload it concerns, when known.
    #[must_use]
    pub fn workload(&self) -> Option<&Workload> {
        match self {
            Self::Unauthenticated(_) => None,
            Self::Forbidden { workload, .. } => Some(workload),
            Self::Unavailable { workload, .. } => workload.as_deref(),
        }
    }
}

/// Everything the issuer needs.
#[allow(missing_debug_implementations)] // kube::Client and the store say nothing useful
pub struct IssuerParts {
    /// The Kubernetes API (TokenReview).
    pub client: kube::Client,
    /// The audience tokens must carry.
    pub audience: String,
    /// The checked mappings.
    pub mappings: Mappings,
    /// Where keys come from.
    pub keys: Arc<dyn KeySource>,
    /// How tickets are obtained.
    pub tickets: Tickets,
    /// The `krb5.conf` handed out.
    pub krb5_conf: String,
    /// Keytab rotation.
    pub keytab: KeytabPolicy,
    /// Revocations and key versions.
    pub store: Arc<dyn Store>,
    /// The clock.
    pub clock: Arc<dyn Clock>,
    /// What the admission webhook injects.
    pub agent: crate::admission::AgentSettings,
}

/// Issues workload credentials.
pub struct Issuer {
    parts: IssuerParts,
    cache: KeyCache,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer")
            .field("audience", &self.parts.audience)
            .field("mappings", &self.parts.mappings.len())
            .finish_non_exhaustive()
    }
}

fn unavailable(message: String, workload: Option<&Workload>) -> Refusal {
    Refusal::Unavailable {
        message,
        workload: workload.map(|w| Box::new(w.clone())),
    }
}

impl Issuer {
    /// An issuer over `parts`.
    #[must_use]
    pub fn new(parts: IssuerParts) -> Self {
        Self {
            parts,
            cache: KeyCache::default(),
        }
    }

    /// The mappings.
    #[must_use]
    pub fn mappings(&self) -> &Mappings {
        &self.parts.mappings
    }

    /// The audience pods' tokens carry.
    #[must_use]
    pub fn audience(&self) -> &str {
        &self.parts.audience
    }

    /// The AdmissionReview answering `review` (see [`crate::admission`]), and the decision.
    ///
    /// # Errors
    /// When `review` is not an AdmissionReview.
    pub fn admit(
        &self,
        review: &serde_json::Value,
    ) -> Result<(serde_json::Value, crate::admission::Decision), String> {
        crate::admission::respond(review, &self.parts.mappings, &self.parts.agent)
    }

    fn now(&self) -> UnixTime {
        self.parts.clock.now()
    }

    /// Checks `token` and hands its pod the credential its mapping names.
    ///
    /// # Errors
    /// A [`Refusal`] that says why.
    pub async fn issue(&self, token: &str) -> Result<Issued, Refusal> {
        let workload = review(&self.parts.client, token, &self.parts.audience)
            .await
            .map_err(|e| match e {
                e @ ReviewError::Unavailable(_) => unavailable(e.to_string(), None),
                e => Refusal::Unauthenticated(e.to_string()),
            })?;
        let sa = workload.service_account();
        let Some(mapped) = self
            .parts
            .mappings
            .lookup(&workload.namespace, &workload.serviceaccount)
        else {
            return Err(Refusal::Forbidden {
                message: format!(
                    "serviceaccount {sa} is not mapped to a Kerberos principal (workloads.mappings)"
                ),
                workload: Box::new(workload),
                reason: "unmapped",
            });
        };
        let revoked = self
            .parts
            .store
            .workload_revoked(&workload.pod_uid, &sa, &mapped.principal)
            .await
            .map_err(|e| unavailable(format!("cannot read revocations: {e}"), Some(&workload)))?;
        if let Some(r) = revoked {
            return Err(Refusal::Forbidden {
                message: format!("{} is revoked: {}", describe(&r), r.reason),
                workload: Box::new(workload),
                reason: "revoked",
            });
        }
        match mapped.form {
            Form::Ccache => self.ccache(workload, &mapped).await,
            Form::Keytab => self.keytab(workload, &mapped).await,
        }
    }

    async fn ccache(&self, workload: Workload, mapped: &Mapped) -> Result<Issued, Refusal> {
        let now = self.now().0;
        let left = workload.expires_at - now;
        if left < MIN_LIFETIME_SECS {
            return Err(Refusal::Unauthenticated(format!(
                "the ServiceAccount token expires in {left}s: too soon for a ticket"
            )));
        }
        let lifetime = i64::try_from(mapped.lifetime_secs)
            .unwrap_or(i64::MAX)
            .min(left);
        let p = &mapped.principal;
        let mut keys = self.keys(p, None, &workload).await?;
        let mut attempt = 0;
        let cache = loop {
            attempt += 1;
            let newest_only = Arc::new(only_version(&keys, newest(&keys)));
            match self
                .parts
                .tickets
                .obtain(p, newest_only, lifetime.unsigned_abs())
                .await
            {
                Ok(c) => break c,
                // The keys may have changed outside idbridge: read them again, once.
                Err(crate::ccache::CcacheError::Kdc { .. }) if attempt == 1 => {
                    self.cache.forget(p);
                    keys = self.keys(p, None, &workload).await?;
                }
                Err(e) => return Err(unavailable(e.to_string(), Some(&workload))),
            }
        };
        Ok(Issued {
            principal: p.clone(),
            form: Form::Ccache,
            credential: zeroize::Zeroizing::new(cache),
            krb5_conf: self.parts.krb5_conf.clone(),
            issued_at: now,
            expires_at: now + lifetime,
            renew_after: now + lifetime / 2,
            kvnos: Vec::new(),
            workload,
        })
    }

    async fn keys(
        &self,
        principal: &str,
        at_least: Option<u32>,
        workload: &Workload,
    ) -> Result<Arc<Vec<KeytabEntry>>, Refusal> {
        self.cache
            .get(&*self.parts.keys, principal, at_least)
            .await
            .map_err(|e| {
                unavailable(
                    format!("cannot read the keys of {principal}: {e}"),
                    Some(workload),
                )
            })
    }

    /// The key state of a keytab principal, made at its first issuance.
    async fn key_state(
        &self,
        principal: &str,
        workload: &Workload,
    ) -> Result<WorkloadKeyState, Refusal> {
        let store_err = |e: idbridge_core::StoreError| {
            unavailable(format!("cannot read the key state: {e}"), Some(workload))
        };
        if let Some(s) = self
            .parts
            .store
            .workload_key_state(principal)
            .await
            .map_err(store_err)?
        {
            return Ok(s);
        }
        let keys = self.keys(principal, None, workload).await?;
        let first = WorkloadKeyState {
            principal: principal.to_owned(),
            kvno: newest(&keys).unwrap_or(1),
            rotated_at: self.now(),
            previous_kvno: None,
            previous_until: None,
        };
        self.parts
            .store
            .put_workload_key_state(&first, None)
            .await
            .map_err(store_err)?;
        // Another replica may have written it first: theirs is the one.
        self.parts
            .store
            .workload_key_state(principal)
            .await
            .map_err(store_err)?
            .ok_or_else(|| unavailable("the key state vanished".into(), Some(workload)))
    }

    async fn keytab(&self, workload: Workload, mapped: &Mapped) -> Result<Issued, Refusal> {
        let now = self.now();
        let p = &mapped.principal;
        let state = self.key_state(p, &workload).await?;
        let keys = self.keys(p, Some(state.kvno), &workload).await?;
        let mut kvnos = vec![state.kvno];
        if let (Some(prev), Some(until)) = (state.previous_kvno, state.previous_until)
            && now < until
        {
            kvnos.push(prev);
        }
        let entries: Vec<KeytabEntry> = keys
            .iter()
            .filter(|k| kvnos.contains(&k.kvno))
            .cloned()
            .collect();
        if !entries.iter().any(|k| k.kvno == state.kvno) {
            return Err(unavailable(
                format!(
                    "the key source has no keys of version {} for {p}",
                    state.kvno
                ),
                Some(&workload),
            ));
        }
        let bytes =
            keytab::to_bytes(&entries).map_err(|e| unavailable(e.to_string(), Some(&workload)))?;
        let policy = self.parts.keytab;
        let next_rotation = state.rotated_at.0 + secs(policy.rotate_every.as_secs());
        let cap = secs(mapped.lifetime_secs);
        // Back just after the next rotation is due and done (for the new version), at least
        // every half lifetime (so a revocation is seen), and never in a busy loop: a rotation
        // already due is done by the next maintenance round, so not before that.
        let round = secs(self.maintain_every().as_secs()) + 1;
        let after_rotation = next_rotation + round;
        let soonest = now.0 + if next_rotation <= now.0 { round } else { 5 };
        let renew_after = after_rotation.min(now.0 + cap / 2).max(soonest);
        Ok(Issued {
            principal: p.clone(),
            form: Form::Keytab,
            credential: zeroize::Zeroizing::new(bytes),
            krb5_conf: self.parts.krb5_conf.clone(),
            issued_at: now.0,
            expires_at: next_rotation.max(now.0) + secs(policy.overlap.as_secs()),
            renew_after,
            kvnos,
            workload,
        })
    }

    /// How often [`maintain`](Self::maintain) should run: often enough that a rotation or a
    /// purge is late by a small part of the overlap, at most a minute.
    #[must_use]
    pub fn maintain_every(&self) -> std::time::Duration {
        (self.parts.keytab.overlap.get() / 10).clamp(
            std::time::Duration::from_secs(1),
            std::time::Duration::from_secs(60),
        )
    }

    /// Scheduled key work: rotates each keytab principal whose keys are older than
    /// `rotate_every` (keeping the old keys for the overlap), and purges old keys whose overlap
    /// has ended. What it did, one line each; errors are lines too (it tries again next time).
    pub async fn maintain(&self) -> Vec<String> {
        let mut done = Vec::new();
        let states = match self.parts.store.workload_key_states().await {
            Ok(s) => s,
            Err(e) => return vec![format!("cannot read the key states: {e}")],
        };
        let policy = self.parts.keytab;
        for s in states {
            let now = self.now();
            if let (Some(_), Some(until)) = (s.previous_kvno, s.previous_until)
                && now >= until
            {
                match self.purge(&s).await {
                    Ok(()) => {
                        done.push(format!(
                            "{}: keys before version {} purged",
                            s.principal, s.kvno
                        ));
                        continue;
                    }
                    // The old keys stay in the KDC; keytabs no longer hold them, and rotation
                    // goes on.
                    Err(e) => done.push(format!("{}: cannot purge old keys: {e}", s.principal)),
                }
            }
            if now.0 >= s.rotated_at.0 + secs(policy.rotate_every.as_secs()) {
                done.push(match self.rotate_state(&s, true).await {
                    Ok(Some(v)) => format!("{}: rotated to key version {v}", s.principal),
                    Ok(None) => format!("{}: rotated by another replica", s.principal),
                    Err(e) => format!("{}: cannot rotate: {e}", s.principal),
                });
            }
        }
        done
    }

    async fn purge(&self, s: &WorkloadKeyState) -> Result<(), String> {
        self.parts
            .keys
            .purge_before(&s.principal, s.kvno)
            .await
            .map_err(|e| e.to_string())?;
        let next = WorkloadKeyState {
            previous_kvno: None,
            previous_until: None,
            ..s.clone()
        };
        self.parts
            .store
            .put_workload_key_state(&next, Some(s.rotated_at))
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Rotates `s.principal` after claiming the rotation in the store (so two replicas never
    /// both rotate): the new version, or `None` when another replica claimed it first.
    async fn rotate_state(
        &self,
        s: &WorkloadKeyState,
        keep_old: bool,
    ) -> Result<Option<u32>, String> {
        let now = self.now();
        let store = &self.parts.store;
        // Claimed: rotated_at moves to now, nothing else yet.
        let claim = WorkloadKeyState {
            rotated_at: now,
            ..s.clone()
        };
        if claim.rotated_at == s.rotated_at {
            // The same second as the last change: the claim would not be told apart from it.
            return Ok(None);
        }
        if !store
            .put_workload_key_state(&claim, Some(s.rotated_at))
            .await
            .map_err(|e| e.to_string())?
        {
            return Ok(None);
        }
        match self.parts.keys.rotate(&s.principal, keep_old).await {
            Ok(kvno) => {
                self.cache.forget(&s.principal);
                let overlap = secs(self.parts.keytab.overlap.as_secs());
                let rotated = WorkloadKeyState {
                    principal: s.principal.clone(),
                    kvno,
                    rotated_at: now,
                    previous_kvno: keep_old.then_some(s.kvno),
                    previous_until: keep_old.then_some(UnixTime(now.0 + overlap)),
                };
                store
                    .put_workload_key_state(&rotated, Some(now))
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(Some(kvno))
            }
            Err(e) => {
                // Unclaimed, so the next round tries again.
                let _ = store.put_workload_key_state(s, Some(now)).await;
                Err(e.to_string())
            }
        }
    }

    /// New random keys for `principal` now, the old ones dropped (a leaked keytab stops working
    /// at the KDC at once); the new version.
    ///
    /// # Errors
    /// The key source's or the store's error.
    async fn rotate_now(&self, principal: &str) -> Result<u32, RotateError> {
        let store = &self.parts.store;
        for _ in 0..20 {
            let current = store
                .workload_key_state(principal)
                .await
                .map_err(|e| RotateError::Failed(e.to_string()))?;
            let Some(s) = current else {
                // Never handed out as a keytab: rotated all the same (a ccache principal's key
                // may be what leaked), if it exists at all.
                if !self
                    .parts
                    .keys
                    .exists(principal)
                    .await
                    .map_err(|e| RotateError::Failed(e.to_string()))?
                {
                    return Err(RotateError::Missing);
                }
                let v = self
                    .parts
                    .keys
                    .rotate(principal, false)
                    .await
                    .map_err(|e| RotateError::Failed(e.to_string()))?;
                self.cache.forget(principal);
                return Ok(v);
            };
            if let Some(v) = self
                .rotate_state(&s, false)
                .await
                .map_err(RotateError::Failed)?
            {
                return Ok(v);
            }
            // Changed this very second, or claimed by another replica: read it again.
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        }
        Err(RotateError::Failed(format!(
            "the key state of {principal} kept changing under this rotation"
        )))
    }

    /// Records a revocation; with `rotate`, also new keys for the principal it concerns
    /// (`--principal`, or the one a `--serviceaccount` maps to). The new key version, when
    /// rotated.
    ///
    /// # Errors
    /// The store's or key source's error; a rotation asked of a pod (name its principal).
    pub async fn revoke(
        &self,
        revocation: &WorkloadRevocation,
        rotate: bool,
    ) -> Result<Option<u32>, RevokeError> {
        let principal = match revocation.target {
            WorkloadTarget::Principal => Some(revocation.value.clone()),
            WorkloadTarget::ServiceAccount => revocation
                .value
                .split_once('/')
                .and_then(|(ns, sa)| self.parts.mappings.lookup(ns, sa))
                .map(|m| m.principal),
            WorkloadTarget::Pod => None,
        };
        if rotate && principal.is_none() {
            return Err(RevokeError::Invalid(match revocation.target {
                WorkloadTarget::Pod => {
                    "--rotate needs the principal: revoke the pod, then `--principal P --rotate`"
                        .into()
                }
                _ => format!("{} maps to no principal to rotate", revocation.value),
            }));
        }
        self.parts
            .store
            .revoke_workload(revocation)
            .await
            .map_err(|e| RevokeError::Store(e.to_string()))?;
        match principal {
            Some(p) if rotate => self.rotate_now(&p).await.map(Some).map_err(|e| match e {
                RotateError::Missing => RevokeError::Unrotated {
                    missing: true,
                    message: format!(
                        "the revocation is recorded (no credential is issued for it), but {p} is not in the Kerberos database, so it has no keys to rotate: check the name (`kadmin -q listprincs`)"
                    ),
                },
                RotateError::Failed(e) => RevokeError::Unrotated {
                    missing: false,
                    message: format!(
                        "the revocation is recorded (further issuance is refused), but {p}'s keys were not rotated: {e}; once that is mended, run the same command again to rotate"
                    ),
                },
            }),
            _ => Ok(None),
        }
    }

    /// What an administrator should know of a revocation of `target`/`value` beyond its
    /// effect: a serviceaccount or principal no mapping hands out (recorded all the same; it
    /// applies should a mapping name it later).
    #[must_use]
    pub fn revocation_note(&self, target: WorkloadTarget, value: &str) -> Option<String> {
        match target {
            WorkloadTarget::ServiceAccount => {
                let (ns, sa) = value.split_once('/')?;
                self.parts.mappings.lookup(ns, sa).is_none().then(|| {
                    format!(
                        "no mapping gives serviceaccount {value} a principal today: nothing was being issued to it (check the namespace and name)"
                    )
                })
            }
            WorkloadTarget::Principal => (!self.parts.mappings.could_give(value)).then(|| {
                format!(
                    "no mapping can give out the principal {value}: nothing was being issued under it (check the spelling and the realm)"
                )
            }),
            WorkloadTarget::Pod => None,
        }
    }
}

/// Why a revocation did not do all it was asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevokeError {
    /// Nothing done: the request cannot be carried out (`--rotate` of a pod).
    Invalid(String),
    /// Nothing done: the store failed.
    Store(String),
    /// The revocation is recorded and in force, but the keys were not rotated: the principal
    /// is not in the key source (`missing`), or the key source failed.
    Unrotated {
        /// The principal is not in the Kerberos database.
        missing: bool,
        /// What happened, for the administrator.
        message: String,
    },
}

/// Why a rotation asked for did not happen.
enum RotateError {
    /// The principal is not in the key source.
    Missing,
    /// The key source or the store failed.
    Failed(String),
}

fn secs(s: u64) -> i64 {
    i64::try_from(s).unwrap_or(i64::MAX)
}

fn only_version(keys: &[KeytabEntry], kvno: Option<u32>) -> Vec<KeytabEntry> {
    keys.iter()
        .filter(|k| Some(k.kvno) == kvno)
        .cloned()
        .collect()
}

/// A revocation in words: `pod 1234-…`, `serviceaccount ns/sa`, `principal p@R`.
#[must_use]
pub fn describe(r: &WorkloadRevocation) -> String {
    format!("{} {}", r.target.noun(), r.value)
}
