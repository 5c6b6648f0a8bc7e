//! The Kubernetes objects the namespace rules ask for, and what to prune: pure, like the
//! account plan.
//!
//! For every directory group a `sync.namespaces` rule matches: a `RoleBinding` in the rule's
//! namespace binding the rule's ClusterRole to the group, by the name kube-apiserver sees for
//! it (the token's group name, after `kubernetes.groups_prefix`); and per namespace, when the
//! rule says so, the `Namespace` itself, a `ResourceQuota` named `idbridge-quota` and a
//! `LimitRange` named `idbridge-limits`. Every object carries `app.kubernetes.io/managed-by:
//! idbridge` and `app.kubernetes.io/instance: <instance>`; pruning considers only objects that
//! carry both, and never a namespace.
//!
//! A RoleBinding's name is `idbridge-<readable group>-<hash>`: the hash (of the group and the
//! role) keeps names apart that read alike, and a renamed group gets a new binding while the
//! old one is pruned.

use std::collections::{BTreeMap, BTreeSet};

use idbridge_core::Namespace;
use serde::Serialize;
use serde_json::{Value, json};

use crate::config::{Rules, valid_role_name};

/// The label every object sync owns carries.
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Its value.
pub const MANAGER: &str = "idbridge";
/// The label naming the installation.
pub const INSTANCE: &str = "app.kubernetes.io/instance";
/// The name of the quota sync writes in a namespace.
pub const QUOTA_NAME: &str = "idbridge-quota";
/// The name of the limit range sync writes in a namespace.
pub const LIMITS_NAME: &str = "idbridge-limits";

/// The kinds sync writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum ObjectKind {
    /// A namespace (created, never pruned).
    Namespace,
    /// A RoleBinding of a group.
    RoleBinding,
    /// The namespace's quota.
    ResourceQuota,
    /// The namespace's default limits.
    LimitRange,
}

impl ObjectKind {
    /// The kind's name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Namespace => "Namespace",
            Self::RoleBinding => "RoleBinding",
            Self::ResourceQuota => "ResourceQuota",
            Self::LimitRange => "LimitRange",
        }
    }

    /// The kinds pruning considers.
    pub const PRUNABLE: [Self; 3] = [Self::RoleBinding, Self::ResourceQuota, Self::LimitRange];
}

/// One object sync wants to exist.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Object {
    /// Its kind.
    pub kind: ObjectKind,
    /// Its namespace (none for a Namespace).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Its name.
    pub name: String,
    /// Why it exists.
    pub reason: String,
    /// Whether it exists already (known once the cluster was read).
    pub exists: bool,
    /// The whole object, as applied (server-side apply).
    #[serde(skip)]
    pub body: Value,
}

impl Object {
    /// `Kind namespace/name`.
    #[must_use]
    pub fn key(&self) -> (ObjectKind, Option<String>, String) {
        (self.kind, self.namespace.clone(), self.name.clone())
    }
}

/// An object that exists, as far as pruning needs to know it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Existing {
    /// Its kind.
    pub kind: ObjectKind,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

/// The objects the rules ask for, and rules that could not be followed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Desired {
    /// Namespaces first, then what goes in them.
    pub objects: Vec<Object>,
    /// What was left out, and why.
    pub skipped: Vec<String>,
    /// How many rule results could not be followed (a namespace or ClusterRole name that is
    /// not one, a ClusterRole that does not exist): while there are any, nothing is pruned.
    pub broken: usize,
}

/// Drops the RoleBindings to ClusterRoles not in `roles` (those that exist), reporting each;
/// returns how many.
pub fn drop_missing_roles(d: &mut Desired, roles: &BTreeSet<String>) -> usize {
    let mut dropped = Vec::new();
    d.objects.retain(|o| {
        let Some(role) = o.body.pointer("/roleRef/name").and_then(Value::as_str) else {
            return true;
        };
        if roles.contains(role) {
            return true;
        }
        dropped.push(format!(
            "{} is not made: the ClusterRole {role:?} does not exist ({})",
            o.name, o.reason
        ));
        false
    });
    let n = dropped.len();
    d.skipped.extend(dropped);
    n
}

/// A readable, DNS-safe piece of `s`: lower case, other characters `-` (one for a run of
/// them), at most `max`, trimmed of `-`.
pub(crate) fn readable(s: &str, max: usize) -> String {
    let mapped: String = s
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .collect();
    let mut out = String::new();
    for c in mapped.chars() {
        if !(c == '-' && out.ends_with('-')) {
            out.push(c);
        }
    }
    let cut: String = out.trim_matches('-').chars().take(max).collect();
    cut.trim_matches('-').to_owned()
}

/// The RoleBinding name for `group` bound to `role`.
#[must_use]
pub fn binding_name(group: &str, role: &str) -> String {
    let r = readable(group, 40);
    let h = crate::labels::hash12(&[group, role]);
    if r.is_empty() {
        format!("idbridge-{h}")
    } else {
        format!("idbridge-{r}-{h}")
    }
}

fn labels(instance: &str, extra: &BTreeMap<String, String>) -> Value {
    let mut l = serde_json::Map::new();
    for (k, v) in extra {
        l.insert(k.clone(), v.clone().into());
    }
    l.insert(MANAGED_BY.into(), MANAGER.into());
    l.insert(INSTANCE.into(), instance.into());
    Value::Object(l)
}

/// The objects `rules` ask for, given every group name the directory holds (as tokens carry
/// it). `groups_prefix` is `kubernetes.groups_prefix`, which kube-apiserver sees in front of
/// each group.
#[must_use]
pub fn desired(
    rules: &Rules,
    groups: &BTreeSet<String>,
    instance: &str,
    groups_prefix: &str,
) -> Desired {
    let mut out = Desired::default();
    let mut namespaces: BTreeMap<String, (Object, bool)> = BTreeMap::new();
    let mut quotas: BTreeMap<String, (String, Value)> = BTreeMap::new();
    let mut limits: BTreeMap<String, (String, Value)> = BTreeMap::new();
    let mut bindings: BTreeMap<(String, String), Object> = BTreeMap::new();
    for r in &rules.namespaces {
        for g in groups {
            // Namespace names are lower case; group names often are not.
            let Some(ns) = r
                .matcher
                .expand(g, &r.rule.namespace)
                .map(|n| n.to_lowercase())
            else {
                continue;
            };
            let role = r.matcher.expand(g, &r.rule.role).unwrap_or_default();
            if ns.parse::<Namespace>().is_err() {
                out.skipped.push(format!(
                    "{}: group {g:?} gives the namespace {ns:?}, which is not a namespace name",
                    r.field
                ));
                out.broken += 1;
                continue;
            }
            if !valid_role_name(&role) {
                out.skipped.push(format!(
                    "{}: group {g:?} gives the role {role:?}, which is not a ClusterRole name",
                    r.field
                ));
                out.broken += 1;
                continue;
            }
            if r.rule.create {
                let entry = namespaces.entry(ns.clone()).or_insert_with(|| {
                    (
                        Object {
                            kind: ObjectKind::Namespace,
                            namespace: None,
                            name: ns.clone(),
                            reason: format!("{} (group {g})", r.field),
                            exists: false,
                            body: json!({
                                "apiVersion": "v1",
                                "kind": "Namespace",
                                "metadata": {"name": ns, "labels": labels(instance, &r.rule.labels)},
                            }),
                        },
                        true,
                    )
                });
                entry.1 = true;
            }
            let subject = format!("{groups_prefix}{g}");
            let name = binding_name(g, &role);
            bindings
                .entry((ns.clone(), name.clone()))
                .or_insert_with(|| Object {
                    kind: ObjectKind::RoleBinding,
                    namespace: Some(ns.clone()),
                    name: name.clone(),
                    reason: format!("{}: group {g} may {role} in {ns}", r.field),
                    exists: false,
                    body: json!({
                        "apiVersion": "rbac.authorization.k8s.io/v1",
                        "kind": "RoleBinding",
                        "metadata": {
                            "name": name,
                            "namespace": ns,
                            "labels": labels(instance, &BTreeMap::new()),
                            "annotations": {"idbridge.io/group": g},
                        },
                        "roleRef": {
                            "apiGroup": "rbac.authorization.k8s.io",
                            "kind": "ClusterRole",
                            "name": role,
                        },
                        "subjects": [{
                            "apiGroup": "rbac.authorization.k8s.io",
                            "kind": "Group",
                            "name": subject,
                        }],
                    }),
                });
            for (what, spec, into) in [
                ("quota", &r.rule.quota, &mut quotas),
                ("limits", &r.rule.limits, &mut limits),
            ] {
                let Some(spec) = spec else { continue };
                match into.get(&ns) {
                    Some((field, other)) if other != spec && field != &r.field => {
                        out.skipped.push(format!(
                            "{}: namespace {ns} already has its {what} from {field}; this rule's is left out",
                            r.field
                        ));
                    }
                    Some(_) => {}
                    None => {
                        into.insert(ns.clone(), (r.field.clone(), spec.clone()));
                    }
                }
            }
        }
    }
    out.objects.extend(namespaces.into_values().map(|(o, _)| o));
    out.objects.extend(bindings.into_values());
    for (ns, (field, spec)) in quotas {
        out.objects.push(Object {
            kind: ObjectKind::ResourceQuota,
            namespace: Some(ns.clone()),
            name: QUOTA_NAME.into(),
            reason: format!("{field}: the quota of {ns}"),
            exists: false,
            body: json!({
                "apiVersion": "v1",
                "kind": "ResourceQuota",
                "metadata": {"name": QUOTA_NAME, "namespace": ns, "labels": labels(instance, &BTreeMap::new())},
                "spec": spec,
            }),
        });
    }
    for (ns, (field, spec)) in limits {
        out.objects.push(Object {
            kind: ObjectKind::LimitRange,
            namespace: Some(ns.clone()),
            name: LIMITS_NAME.into(),
            reason: format!("{field}: the default limits of {ns}"),
            exists: false,
            body: json!({
                "apiVersion": "v1",
                "kind": "LimitRange",
                "metadata": {"name": LIMITS_NAME, "namespace": ns, "labels": labels(instance, &BTreeMap::new())},
                "spec": spec,
            }),
        });
    }
    out
}

/// The owned objects that are no longer wanted (never a namespace).
#[must_use]
pub fn prune(desired: &Desired, existing: &[Existing]) -> Vec<Existing> {
    let want: BTreeSet<(ObjectKind, Option<String>, String)> =
        desired.objects.iter().map(Object::key).collect();
    existing
        .iter()
        .filter(|e| e.kind != ObjectKind::Namespace)
        .filter(|e| !want.contains(&(e.kind, Some(e.namespace.clone()), e.name.clone())))
        .cloned()
        .collect()
}

/// The objects as YAML documents, for `--manifests`.
#[must_use]
pub fn manifests(desired: &Desired) -> Vec<(String, String)> {
    desired
        .objects
        .iter()
        .map(|o| {
            let file = match &o.namespace {
                Some(ns) => format!("{ns}.{}.{}.yaml", o.kind.as_str().to_lowercase(), o.name),
                None => format!("{}.{}.yaml", o.kind.as_str().to_lowercase(), o.name),
            };
            let text = serde_json::to_string_pretty(&o.body).unwrap_or_default();
            (file, text)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_rules as rules;

    fn groups(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|g| (*g).to_owned()).collect()
    }

    const RULES: &str = "namespaces:
  - regex: 'k8s-(?P<team>[a-z]+)-(?P<role>admin|edit|view)'
    namespace: 'team-${team}'
    role: '${role}'
    create: true
    labels: {tier: apps}
    quota: {hard: {pods: '10'}}
    limits: {limits: [{type: Container, default: {cpu: 500m}}]}
  - group: 'Platform Team'
    namespace: platform
    role: platform-operator
";

    #[test]
    fn rules_give_bindings_namespaces_and_quotas_with_owner_labels() {
        let d = desired(
            &rules(RULES),
            &groups(&[
                "k8s-pay-edit",
                "k8s-pay-view",
                "k8s-web-admin",
                "Platform Team",
                "other",
            ]),
            "prod",
            "ad:",
        );
        assert!(d.skipped.is_empty(), "{:?}", d.skipped);
        let kinds: Vec<(ObjectKind, Option<&str>)> = d
            .objects
            .iter()
            .map(|o| (o.kind, o.namespace.as_deref()))
            .collect();
        assert_eq!(
            kinds,
            [
                (ObjectKind::Namespace, None),
                (ObjectKind::Namespace, None),
                (ObjectKind::RoleBinding, Some("platform")),
                (ObjectKind::RoleBinding, Some("team-pay")),
                (ObjectKind::RoleBinding, Some("team-pay")),
                (ObjectKind::RoleBinding, Some("team-web")),
                (ObjectKind::ResourceQuota, Some("team-pay")),
                (ObjectKind::ResourceQuota, Some("team-web")),
                (ObjectKind::LimitRange, Some("team-pay")),
                (ObjectKind::LimitRange, Some("team-web")),
            ]
        );
        let platform = &d.objects[2].body;
        assert_eq!(platform["subjects"][0]["name"], "ad:Platform Team");
        assert_eq!(platform["roleRef"]["name"], "platform-operator");
        assert!(d.objects[2].name.starts_with("idbridge-platform-team-"));
        let ns = &d.objects[0].body["metadata"]["labels"];
        assert_eq!(ns[MANAGED_BY], "idbridge");
        assert_eq!(ns[INSTANCE], "prod");
        assert_eq!(ns["tier"], "apps");
    }

    #[test]
    fn binding_names_are_stable_distinct_and_valid() {
        let a = binding_name("Domain Admins", "admin");
        assert_eq!(a, binding_name("Domain Admins", "admin"));
        assert_ne!(a, binding_name("domain-admins", "admin"));
        assert_ne!(a, binding_name("Domain Admins", "view"));
        for n in [
            a,
            binding_name("日本", "x"),
            binding_name(&"a".repeat(300), "x"),
        ] {
            assert!(n.len() <= 63 && n.starts_with("idbridge-"), "{n}");
            assert!(
                n.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
                "{n}"
            );
        }
    }

    #[test]
    fn pruning_keeps_what_is_wanted_and_every_namespace() {
        let d = desired(&rules(RULES), &groups(&["k8s-pay-edit"]), "prod", "");
        let keep = d
            .objects
            .iter()
            .find(|o| o.kind == ObjectKind::RoleBinding)
            .unwrap();
        let existing = vec![
            Existing {
                kind: ObjectKind::RoleBinding,
                namespace: "team-pay".into(),
                name: keep.name.clone(),
            },
            Existing {
                kind: ObjectKind::RoleBinding,
                namespace: "team-pay".into(),
                name: binding_name("k8s-pay-view", "view"),
            },
            Existing {
                kind: ObjectKind::Namespace,
                namespace: String::new(),
                name: "team-old".into(),
            },
        ];
        let gone = prune(&d, &existing);
        assert_eq!(gone, [existing[1].clone()]);
    }

    #[test]
    fn bindings_to_missing_cluster_roles_are_reported_and_not_made() {
        let mut d = desired(
            &rules(RULES),
            &groups(&["k8s-pay-edit", "Platform Team"]),
            "i",
            "",
        );
        let roles: BTreeSet<String> = ["edit".to_owned()].into();
        assert_eq!(drop_missing_roles(&mut d, &roles), 1);
        assert!(
            d.skipped[0].contains("\"platform-operator\" does not exist"),
            "{:?}",
            d.skipped
        );
        assert!(
            d.objects
                .iter()
                .all(|o| o.body.pointer("/roleRef/name").is_none_or(|r| r == "edit"))
        );
    }

    #[test]
    fn bad_expansions_and_conflicting_quotas_are_reported() {
        let r = rules(
            "namespaces:
  - regex: 'ns-(.+)'
    namespace: '$1'
    role: edit
    quota: {hard: {pods: '1'}}
  - group: ns-a
    namespace: a
    role: view
    quota: {hard: {pods: '2'}}
",
        );
        let d = desired(&r, &groups(&["ns-bad_name", "ns-a"]), "i", "");
        assert_eq!(d.skipped.len(), 2, "{:?}", d.skipped);
        assert_eq!(d.broken, 1, "a quota conflict is not a broken rule");
        assert!(d.skipped[0].contains("not a namespace name"));
        assert!(d.skipped[1].contains("already has its quota"));
    }
}
