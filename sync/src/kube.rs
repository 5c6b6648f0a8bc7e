//! The Kubernetes side of a run: list what sync owns, apply what the rules ask for by
//! server-side apply (field manager `idbridge`), delete what is no longer wanted.
//!
//! Reached through `kubernetes.api`: a kubeconfig file (and optionally its context), or the
//! pod's own ServiceAccount when idbridge runs in the cluster. The TLS is rustls on aws-lc-rs,
//! as everywhere in idbridge.

use std::path::PathBuf;

use k8s_openapi::api::core::v1::{LimitRange, Namespace, ResourceQuota};
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde::Deserialize;

use crate::objects::{Desired, Existing, INSTANCE, MANAGED_BY, MANAGER, Object, ObjectKind};

/// The field manager of every apply.
pub const FIELD_MANAGER: &str = "idbridge";

/// How to reach the Kubernetes API (`kubernetes.api`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// A kubeconfig file; without one, the pod's ServiceAccount (in-cluster).
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig's context [default: its current context].
    #[serde(default)]
    pub context: Option<String>,
}

/// A connection to the cluster, with this installation's name for the objects it owns.
#[derive(Clone)]
pub struct Cluster {
    client: kube::Client,
    /// The `app.kubernetes.io/instance` value.
    pub instance: String,
    /// `kubernetes.groups_prefix`: what kube-apiserver sees in front of each group.
    pub groups_prefix: String,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

/// What applying did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Applied {
    /// Objects applied.
    pub applied: usize,
    /// Of those, objects that were new or changed.
    pub changed: usize,
    /// Objects deleted.
    pub pruned: usize,
    /// The objects deleted, `Kind namespace/name`.
    pub deleted: Vec<String>,
    /// Seconds applying and deleting took.
    pub seconds: f64,
}

/// Checks `kubernetes.api` without connecting: the kubeconfig reads, and names the context
/// to use with its cluster and user.
///
/// # Errors
/// A message naming `kubernetes.api` and what is wrong.
pub fn check(api: &ApiConfig) -> Result<(), String> {
    checked_user(api).map(drop)
}

/// [`check`]'s work: the user of the context to use, when a kubeconfig is given and names one.
fn checked_user(api: &ApiConfig) -> Result<Option<kube::config::AuthInfo>, String> {
    let Some(path) = &api.kubeconfig else {
        return Ok(None);
    };
    let file = Kubeconfig::read_from(path)
        .map_err(|e| format!("field `kubernetes.api.kubeconfig`: {}: {e}", path.display()))?;
    let (field, name) = match (&api.context, &file.current_context) {
        (Some(c), _) => ("kubernetes.api.context", c),
        (None, Some(c)) => ("kubernetes.api.kubeconfig", c),
        (None, None) => {
            return Err(format!(
                "field `kubernetes.api.context`: {} has no current-context: name one of its contexts",
                path.display()
            ));
        }
    };
    let Some(context) = file
        .contexts
        .iter()
        .find(|c| &c.name == name)
        .and_then(|c| c.context.as_ref())
    else {
        let known: Vec<&str> = file.contexts.iter().map(|c| c.name.as_str()).collect();
        return Err(format!(
            "field `{field}`: {} has no context {name:?} (it has: {})",
            path.display(),
            known.join(", ")
        ));
    };
    if !file.clusters.iter().any(|c| c.name == context.cluster) {
        return Err(format!(
            "field `kubernetes.api.kubeconfig`: context {name:?} of {} names the cluster {:?}, which it does not define",
            path.display(),
            context.cluster
        ));
    }
    if let Some(user) = &context.user {
        let Some(info) = file.auth_infos.iter().find(|u| &u.name == user) else {
            return Err(format!(
                "field `kubernetes.api.kubeconfig`: context {name:?} of {} names the user {user:?}, which it does not define",
                path.display()
            ));
        };
        if let Some(token_file) = info
            .auth_info
            .as_ref()
            .filter(|a| a.token.is_none())
            .and_then(|a| a.token_file.as_deref())
        {
            let token = std::fs::read_to_string(token_file).map_err(|e| {
                format!(
                    "field `kubernetes.api.kubeconfig`: the tokenFile {token_file} of user {user:?} in {}: {e}",
                    path.display()
                )
            })?;
            if token.trim().is_empty() {
                return Err(format!(
                    "field `kubernetes.api.kubeconfig`: the tokenFile {token_file} of user {user:?} is empty"
                ));
            }
            if token.trim() != token {
                return Err(format!(
                    "field `kubernetes.api.kubeconfig`: the tokenFile {token_file} of user {user:?} ends with a newline or space, which would be sent as part of the token: write it without (`kubectl create token … | tr -d '\\n' > {token_file}`)"
                ));
            }
        }
        return Ok(info.auth_info.clone());
    }
    Ok(None)
}

/// What in `kubernetes.api` works but is likely to fail later: a token written inline in the
/// kubeconfig, which is read at start and on reload only (a `tokenFile` is read again every
/// minute, so a replaced token is used without a reload).
pub fn warnings(api: &ApiConfig) -> Vec<String> {
    let inline = checked_user(api)
        .ok()
        .flatten()
        .is_some_and(|a| a.token.is_some());
    match &api.kubeconfig {
        Some(path) if inline => vec![format!(
            "the user of {} has its token inline: idbridge reads it at start and on reload (SIGHUP) only, so a token replaced there is not used until then; name a file with `tokenFile` instead and a replaced token is used within a minute",
            path.display()
        )],
        _ => Vec::new(),
    }
}

/// A client for `kubernetes.api` (reads the kubeconfig or the in-cluster files; asks the server
/// nothing yet).
///
/// # Errors
/// A message naming `kubernetes.api` and what is wrong.
pub async fn client(api: &ApiConfig) -> Result<kube::Client, String> {
    let config = match &api.kubeconfig {
        Some(path) => {
            let file = Kubeconfig::read_from(path).map_err(|e| {
                format!("field `kubernetes.api.kubeconfig`: {}: {e}", path.display())
            })?;
            let opts = KubeConfigOptions {
                context: api.context.clone(),
                ..KubeConfigOptions::default()
            };
            kube::Config::from_custom_kubeconfig(file, &opts)
                .await
                .map_err(|e| format!("field `kubernetes.api`: {}: {e}", path.display()))?
        }
        None => kube::Config::incluster().map_err(|e| {
            format!(
                "field `kubernetes.api`: no kubeconfig given and not running in a pod ({e}); set `kubernetes.api.kubeconfig`"
            )
        })?,
    };
    kube::Client::try_from(config).map_err(|e| format!("field `kubernetes.api`: {e}"))
}

fn owned_selector(instance: &str) -> String {
    format!("{MANAGED_BY}={MANAGER},{INSTANCE}={instance}")
}

impl Cluster {
    /// Connects (reads the kubeconfig or the in-cluster files; asks the server nothing yet).
    ///
    /// # Errors
    /// A message naming `kubernetes.api` and what is wrong.
    pub async fn connect(
        api: &ApiConfig,
        instance: String,
        groups_prefix: String,
    ) -> Result<Self, String> {
        let client = client(api).await?;
        Ok(Self {
            client,
            instance,
            groups_prefix,
        })
    }

    /// Every object sync owns in the cluster (both labels), paged.
    ///
    /// # Errors
    /// The API server's error.
    pub async fn existing(&self) -> Result<Vec<(Existing, Option<String>)>, kube::Error> {
        let sel = owned_selector(&self.instance);
        let mut out = Vec::new();
        list_all(
            Api::<Namespace>::all(self.client.clone()),
            &sel,
            ObjectKind::Namespace,
            &mut out,
        )
        .await?;
        list_all(
            Api::<RoleBinding>::all(self.client.clone()),
            &sel,
            ObjectKind::RoleBinding,
            &mut out,
        )
        .await?;
        list_all(
            Api::<ResourceQuota>::all(self.client.clone()),
            &sel,
            ObjectKind::ResourceQuota,
            &mut out,
        )
        .await?;
        list_all(
            Api::<LimitRange>::all(self.client.clone()),
            &sel,
            ObjectKind::LimitRange,
            &mut out,
        )
        .await?;
        Ok(out)
    }

    /// Applies every wanted object (namespaces first), then deletes `gone`. Stops at the first
    /// failure, naming the object; what was applied stays (apply is idempotent, so the next run
    /// converges).
    ///
    /// # Errors
    /// What was done before the failure, and the failure.
    pub async fn apply(
        &self,
        desired: &Desired,
        before: &[(Existing, Option<String>)],
        gone: &[Existing],
    ) -> Result<Applied, (Applied, String)> {
        let started = std::time::Instant::now();
        let mut done = Applied::default();
        let pp = PatchParams::apply(FIELD_MANAGER).force();
        let mut failures = Vec::new();
        for o in &desired.objects {
            let version = match self.apply_one(o, &pp).await {
                Ok(v) => v,
                // The others still go ahead: one bad object does not hold the rest back.
                Err(e) => {
                    failures.push(format!("applying {} failed: {}", describe(o), explain(&e)));
                    continue;
                }
            };
            done.applied += 1;
            let was = before.iter().find(|(e, _)| {
                e.kind == o.kind
                    && e.name == o.name
                    && o.namespace.as_deref().unwrap_or("") == e.namespace
            });
            if was.and_then(|(_, v)| v.as_ref()) != version.as_ref() {
                done.changed += 1;
            }
        }
        let dp = DeleteParams::default();
        for e in gone {
            let c = self.client.clone();
            let ns = e.namespace.as_str();
            let r = match e.kind {
                ObjectKind::RoleBinding => Api::<RoleBinding>::namespaced(c, ns)
                    .delete(&e.name, &dp)
                    .await
                    .map(drop),
                ObjectKind::ResourceQuota => Api::<ResourceQuota>::namespaced(c, ns)
                    .delete(&e.name, &dp)
                    .await
                    .map(drop),
                ObjectKind::LimitRange => Api::<LimitRange>::namespaced(c, ns)
                    .delete(&e.name, &dp)
                    .await
                    .map(drop),
                // Never deleted.
                ObjectKind::Namespace => Ok(()),
            };
            match r {
                Ok(()) => {
                    done.pruned += 1;
                    done.deleted
                        .push(format!("{} {}/{}", e.kind.as_str(), e.namespace, e.name));
                }
                // Already gone: what pruning wanted.
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(err) => failures.push(format!(
                    "deleting {} {}/{} failed: {}",
                    e.kind.as_str(),
                    e.namespace,
                    e.name,
                    explain(&err)
                )),
            }
        }
        done.seconds = started.elapsed().as_secs_f64();
        if !failures.is_empty() {
            return Err((done, failures.join("; ")));
        }
        Ok(done)
    }

    /// Which of these ClusterRoles exist (a binding to one that does not grants nothing).
    ///
    /// # Errors
    /// The API server's error, other than "not found".
    pub async fn existing_roles<'n>(
        &self,
        names: impl IntoIterator<Item = &'n str>,
    ) -> Result<std::collections::BTreeSet<String>, kube::Error> {
        let api = Api::<k8s_openapi::api::rbac::v1::ClusterRole>::all(self.client.clone());
        let mut out = std::collections::BTreeSet::new();
        for n in names {
            match api.get_opt(n).await {
                Ok(Some(_)) => {
                    out.insert(n.to_owned());
                }
                Ok(None) => {}
                // Not ours to read (`get` narrowed by `resourceNames`): taken as there; binding
                // it needs `bind` on it anyway, and a refusal then is reported.
                Err(kube::Error::Api(s)) if s.code == 403 => {
                    out.insert(n.to_owned());
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Applies one object; its resourceVersion afterwards.
    async fn apply_one(&self, o: &Object, pp: &PatchParams) -> Result<Option<String>, kube::Error> {
        let c = self.client.clone();
        let ns = o.namespace.as_deref().unwrap_or_default();
        let patch = Patch::Apply(&o.body);
        Ok(match o.kind {
            ObjectKind::Namespace => {
                Api::<Namespace>::all(c)
                    .patch(&o.name, pp, &patch)
                    .await?
                    .metadata
                    .resource_version
            }
            ObjectKind::RoleBinding => {
                Api::<RoleBinding>::namespaced(c, ns)
                    .patch(&o.name, pp, &patch)
                    .await?
                    .metadata
                    .resource_version
            }
            ObjectKind::ResourceQuota => {
                Api::<ResourceQuota>::namespaced(c, ns)
                    .patch(&o.name, pp, &patch)
                    .await?
                    .metadata
                    .resource_version
            }
            ObjectKind::LimitRange => {
                Api::<LimitRange>::namespaced(c, ns)
                    .patch(&o.name, pp, &patch)
                    .await?
                    .metadata
                    .resource_version
            }
        })
    }
}

/// A Kubernetes client error in words: the API server's own reason and message, or the
/// innermost causes of a connection that failed (TLS ones included, which hide inside I/O
/// errors).
#[must_use]
pub fn explain(e: &kube::Error) -> String {
    if let kube::Error::Api(status) = e {
        return format!("{} ({}): {}", status.reason, status.code, status.message);
    }
    let mut parts = vec![e.to_string()];
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(c) = cause {
        let mut inner = c;
        while let Some(i) = inner
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            inner = i;
        }
        let text = inner.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cause = inner.source();
    }
    parts.join(": ")
}

fn describe(o: &Object) -> String {
    match &o.namespace {
        Some(ns) => format!("{} {ns}/{}", o.kind.as_str(), o.name),
        None => format!("{} {}", o.kind.as_str(), o.name),
    }
}

/// Lists every object of `api` matching `selector`, page by page.
async fn list_all<K>(
    api: Api<K>,
    selector: &str,
    kind: ObjectKind,
    out: &mut Vec<(Existing, Option<String>)>,
) -> Result<(), kube::Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut token: Option<String> = None;
    loop {
        let mut lp = ListParams::default().labels(selector).limit(500);
        if let Some(t) = &token {
            lp = lp.continue_token(t);
        }
        let page = api.list(&lp).await?;
        for item in &page.items {
            let meta = item.meta();
            out.push((
                Existing {
                    kind,
                    namespace: meta.namespace.clone().unwrap_or_default(),
                    name: meta.name.clone().unwrap_or_default(),
                },
                meta.resource_version.clone(),
            ));
        }
        token = page.metadata.continue_.filter(|t| !t.is_empty());
        if token.is_none() {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kubeconfig(dir: &std::path::Path, user: &str) -> ApiConfig {
        let path = dir.join("kubeconfig");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\ncurrent-context: c\nclusters:\n- name: k\n  cluster: {{server: 'https://127.0.0.1:6443'}}\ncontexts:\n- name: c\n  context: {{cluster: k, user: u}}\nusers:\n- name: u\n  user: {user}\n"
            ),
        )
        .unwrap();
        ApiConfig {
            kubeconfig: Some(path),
            context: None,
        }
    }

    #[test]
    fn a_token_file_is_read_and_an_inline_token_is_warned_about() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        let api = kubeconfig(dir.path(), "{tokenFile: token}");

        std::fs::write(&token, "eyJhbGciOi.x.y\n").unwrap();
        let e = check(&api).unwrap_err();
        assert!(e.contains("ends with a newline"), "{e}");
        assert!(e.contains("tokenFile"), "{e}");

        std::fs::write(&token, "").unwrap();
        assert!(check(&api).unwrap_err().contains("is empty"));

        std::fs::remove_file(&token).unwrap();
        assert!(check(&api).unwrap_err().contains("the tokenFile"));

        std::fs::write(&token, "eyJhbGciOi.x.y").unwrap();
        check(&api).unwrap();
        assert!(warnings(&api).is_empty());

        let api = kubeconfig(dir.path(), "{token: eyJhbGciOi.x.y}");
        check(&api).unwrap();
        let w = warnings(&api);
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("tokenFile"), "{w:?}");
    }
}
