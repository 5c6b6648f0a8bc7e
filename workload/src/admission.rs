//! `POST /webhooks/mutate-pod`: pods that ask for a principal (the
//! `idbridge.io/kerberos-principal` annotation), or whose serviceaccount an explicit mapping
//! names, get the agent, a memory-backed volume for the credential, a projected token with
//! audience `idbridge`, the environment that points Kerberos libraries at the credential, and
//! the `krb5.conf` mount. A pod whose serviceaccount may not use the principal it asks for is
//! denied with the reason. The patch is idempotent: a pod that already has the agent is
//! admitted unchanged.

use base64::Engine;
use serde_json::{Value, json};

use crate::config::{AgentMode, Form};
use crate::mapping::{Mapped, Mappings};

/// The annotation a pod asks for a principal by.
pub const PRINCIPAL_ANNOTATION: &str = "idbridge.io/kerberos-principal";
/// The annotation that picks the agent's mode (`sidecar`, `init`, `classic`).
pub const AGENT_ANNOTATION: &str = "idbridge.io/agent";
/// The annotation the patch adds: the principal injected.
pub const INJECTED_ANNOTATION: &str = "idbridge.io/injected";
/// The agent container's name.
pub const AGENT_CONTAINER: &str = "idbridge-agent";
/// The credential volume and where it is mounted.
pub const CREDENTIAL_VOLUME: &str = "idbridge-credentials";
/// Where the credential volume is mounted in every container.
pub const CREDENTIAL_DIR: &str = "/var/run/idbridge";
/// The projected token volume.
pub const TOKEN_VOLUME: &str = "idbridge-token";
/// Where the projected token is mounted in the agent.
pub const TOKEN_DIR: &str = "/var/run/secrets/idbridge";
/// The ticket cache's file name in [`CREDENTIAL_DIR`].
pub const CCACHE_FILE: &str = "krb5cc";
/// The keytab's file name in [`CREDENTIAL_DIR`].
pub const KEYTAB_FILE: &str = "krb5.keytab";
/// The `krb5.conf` file name in [`CREDENTIAL_DIR`].
pub const KRB5_CONF_FILE: &str = "krb5.conf";

/// What the webhook puts in a pod besides the mapping's answer.
#[derive(Debug, Clone)]
pub struct AgentSettings {
    /// The agent's image.
    pub image: String,
    /// The URL the agent reaches idbridge at.
    pub server: String,
    /// The CA (PEM) of idbridge's serving certificate, if the agent must be told.
    pub ca_pem: Option<String>,
    /// The mode when the pod does not pick one.
    pub mode: AgentMode,
    /// The projected token's lifetime, in seconds (at least 600: the API server's minimum).
    pub token_lifetime_secs: u64,
    /// The projected token's audience.
    pub audience: String,
}

fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn has_agent(spec: &Value) -> bool {
    ["initContainers", "containers"].iter().any(|list| {
        spec[list]
            .as_array()
            .is_some_and(|cs| cs.iter().any(|c| c["name"] == AGENT_CONTAINER))
    })
}

/// The environment every container of the pod gets.
fn environment(form: Form) -> Vec<(&'static str, String)> {
    let mut env = vec![("KRB5_CONFIG", format!("{CREDENTIAL_DIR}/{KRB5_CONF_FILE}"))];
    match form {
        Form::Ccache => env.push(("KRB5CCNAME", format!("FILE:{CREDENTIAL_DIR}/{CCACHE_FILE}"))),
        Form::Keytab => {
            let kt = format!("FILE:{CREDENTIAL_DIR}/{KEYTAB_FILE}");
            env.push(("KRB5_CLIENT_KTNAME", kt.clone()));
            env.push(("KRB5_KTNAME", kt));
        }
    }
    env
}

fn agent_container(agent: &AgentSettings, mode: AgentMode) -> Value {
    let mut command = vec![
        "idbridge".to_owned(),
        "workload-agent".to_owned(),
        "--server".to_owned(),
        agent.server.clone(),
        "--token-file".to_owned(),
        format!("{TOKEN_DIR}/token"),
        "--dir".to_owned(),
        CREDENTIAL_DIR.to_owned(),
    ];
    if mode == AgentMode::Init {
        command.push("--once".to_owned());
    }
    let mut c = json!({
        "name": AGENT_CONTAINER,
        "image": agent.image,
        "command": command,
        "volumeMounts": [
            {"name": CREDENTIAL_VOLUME, "mountPath": CREDENTIAL_DIR},
            {"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": true},
        ],
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]},
        },
        "resources": {
            "requests": {"cpu": "10m", "memory": "16Mi"},
            "limits": {"memory": "64Mi"},
        },
    });
    if let Some(pem) = &agent.ca_pem {
        c["env"] = json!([{"name": "IDBRIDGE_CA", "value": pem}]);
    }
    if mode == AgentMode::Sidecar {
        c["restartPolicy"] = json!("Always");
        // The pod's own containers start once the first credential is in place.
        c["startupProbe"] = json!({
            "exec": {"command": ["idbridge", "workload-agent", "--check", "--dir", CREDENTIAL_DIR]},
            "periodSeconds": 1,
            "failureThreshold": 120,
        });
    }
    c
}

/// The JSON Patch operations that inject `mapped` into `pod`.
fn patch(pod: &Value, mapped: &Mapped, agent: &AgentSettings, mode: AgentMode) -> Vec<Value> {
    let spec = &pod["spec"];
    let mut ops = Vec::new();
    if pod["metadata"]["annotations"].is_object() {
        ops.push(json!({"op": "add", "path": format!("/metadata/annotations/{}", escape(INJECTED_ANNOTATION)), "value": mapped.principal}));
    } else {
        ops.push(json!({"op": "add", "path": "/metadata/annotations", "value": {INJECTED_ANNOTATION: mapped.principal}}));
    }
    let volumes = [
        json!({"name": CREDENTIAL_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}),
        json!({"name": TOKEN_VOLUME, "projected": {"sources": [{"serviceAccountToken": {
            "audience": agent.audience,
            "expirationSeconds": agent.token_lifetime_secs,
            "path": "token",
        }}]}}),
    ];
    if spec["volumes"].is_array() {
        for v in volumes {
            ops.push(json!({"op": "add", "path": "/spec/volumes/-", "value": v}));
        }
    } else {
        ops.push(json!({"op": "add", "path": "/spec/volumes", "value": volumes}));
    }
    // The pod's own containers (and init containers) before the agent goes in, so indices
    // are those of the pod as it came. A classic sidecar starts with the main containers, after
    // every init container: those get nothing that would point at a file not there yet.
    let env = environment(mapped.form);
    let mount = json!({"name": CREDENTIAL_VOLUME, "mountPath": CREDENTIAL_DIR, "readOnly": true});
    let lists: &[&str] = if mode == AgentMode::Classic {
        &["containers"]
    } else {
        &["initContainers", "containers"]
    };
    for &list in lists {
        for (i, c) in spec[list].as_array().into_iter().flatten().enumerate() {
            let base = format!("/spec/{list}/{i}");
            // A variable the container sets itself is left to it.
            let set: Vec<&str> = c["env"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| e["name"].as_str())
                .collect();
            let ours: Vec<Value> = env
                .iter()
                .filter(|(k, _)| !set.contains(k))
                .map(|(k, v)| json!({"name": k, "value": v}))
                .collect();
            if c["env"].is_array() {
                for e in ours {
                    ops.push(json!({"op": "add", "path": format!("{base}/env/-"), "value": e}));
                }
            } else if !ours.is_empty() {
                ops.push(json!({"op": "add", "path": format!("{base}/env"), "value": ours}));
            }
            if c["volumeMounts"].is_array() {
                ops.push(
                    json!({"op": "add", "path": format!("{base}/volumeMounts/-"), "value": mount}),
                );
            } else {
                ops.push(
                    json!({"op": "add", "path": format!("{base}/volumeMounts"), "value": [mount]}),
                );
            }
        }
    }
    let container = agent_container(agent, mode);
    match mode {
        AgentMode::Sidecar | AgentMode::Init => {
            if spec["initContainers"].is_array() {
                // First, so the pod's other init containers have the credential too.
                ops.push(
                    json!({"op": "add", "path": "/spec/initContainers/0", "value": container}),
                );
            } else {
                ops.push(
                    json!({"op": "add", "path": "/spec/initContainers", "value": [container]}),
                );
            }
        }
        AgentMode::Classic => {
            ops.push(json!({"op": "add", "path": "/spec/containers/-", "value": container}));
        }
    }
    ops
}

/// What admission decided for one pod.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Admitted as it is.
    Unchanged,
    /// Admitted with these JSON Patch operations.
    Patch(Vec<Value>),
    /// Refused, for this reason.
    Deny(String),
}

/// Decides for the pod of an AdmissionReview request.
#[must_use]
pub fn decide(request: &Value, mappings: &Mappings, agent: &AgentSettings) -> Decision {
    if request["kind"]["kind"] != "Pod" || request["operation"] != "CREATE" {
        return Decision::Unchanged;
    }
    let pod = &request["object"];
    if has_agent(&pod["spec"]) {
        return Decision::Unchanged;
    }
    let namespace = request["namespace"]
        .as_str()
        .or_else(|| pod["metadata"]["namespace"].as_str())
        .unwrap_or("default");
    let sa = pod["spec"]["serviceAccountName"]
        .as_str()
        .filter(|s| !s.is_empty())
        .unwrap_or("default");
    let annotations = &pod["metadata"]["annotations"];
    let wanted = annotations[PRINCIPAL_ANNOTATION].as_str();
    let mapped = mappings.lookup(namespace, sa);
    let mapped = match (wanted, mapped) {
        (None, None) => return Decision::Unchanged,
        // A wildcard mapping injects only pods that ask.
        (None, Some(m)) if !m.explicit => return Decision::Unchanged,
        (Some(p), None) => {
            return Decision::Deny(format!(
                "serviceaccount {namespace}/{sa} may not use the Kerberos principal {p}: no entry of idbridge's workloads.mappings names it"
            ));
        }
        (Some(p), Some(m)) if p != m.principal => {
            return Decision::Deny(format!(
                "serviceaccount {namespace}/{sa} may use the Kerberos principal {}, not {p}",
                m.principal
            ));
        }
        (_, Some(m)) => m,
    };
    let mode = match annotations[AGENT_ANNOTATION].as_str() {
        None => agent.mode,
        Some("sidecar") => AgentMode::Sidecar,
        Some("init") => AgentMode::Init,
        Some("classic") => AgentMode::Classic,
        Some(other) => {
            return Decision::Deny(format!(
                "annotation {AGENT_ANNOTATION}: {other:?} is not `sidecar`, `init` or `classic`"
            ));
        }
    };
    Decision::Patch(patch(pod, &mapped, agent, mode))
}

/// The AdmissionReview (`admission.k8s.io/v1`) answering `review`.
///
/// # Errors
/// When `review` is not an AdmissionReview with a request and its uid.
pub fn respond(
    review: &Value,
    mappings: &Mappings,
    agent: &AgentSettings,
) -> Result<(Value, Decision), String> {
    if review["apiVersion"] != "admission.k8s.io/v1" || review["kind"] != "AdmissionReview" {
        return Err("the body is not an admission.k8s.io/v1 AdmissionReview".into());
    }
    let request = &review["request"];
    let Some(uid) = request["uid"].as_str() else {
        return Err("the AdmissionReview has no request.uid".into());
    };
    let decision = decide(request, mappings, agent);
    let response = match &decision {
        Decision::Unchanged => json!({"uid": uid, "allowed": true}),
        Decision::Patch(ops) => {
            let patch = serde_json::to_vec(ops).unwrap_or_default();
            json!({
                "uid": uid,
                "allowed": true,
                "patchType": "JSONPatch",
                "patch": base64::engine::general_purpose::STANDARD.encode(patch),
            })
        }
        Decision::Deny(message) => json!({
            "uid": uid,
            "allowed": false,
            "status": {"code": 403, "reason": "Forbidden", "message": message},
        }),
    };
    Ok((
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}),
        decision,
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Applies JSON Patch `add` operations (the only ones the webhook makes), as the API server
    /// would.
    fn apply(mut doc: Value, ops: &[Value]) -> Value {
        for op in ops {
            assert_eq!(op["op"], "add", "{op}");
            let path = op["path"].as_str().unwrap();
            let parts: Vec<String> = path
                .split('/')
                .skip(1)
                .map(|p| p.replace("~1", "/").replace("~0", "~"))
                .collect();
            let (last, parents) = parts.split_last().unwrap();
            let mut at = &mut doc;
            for p in parents {
                at = match at {
                    Value::Array(a) => &mut a[p.parse::<usize>().unwrap()],
                    other => &mut other[p.as_str()],
                };
            }
            let value = op["value"].clone();
            match at {
                Value::Array(a) if last == "-" => a.push(value),
                Value::Array(a) => a.insert(last.parse().unwrap(), value),
                Value::Object(o) => {
                    assert!(!o.contains_key(last), "{path} exists already");
                    o.insert(last.clone(), value);
                }
                other => panic!("{path}: cannot add to {other}"),
            }
        }
        doc
    }

    fn mappings() -> Mappings {
        let c: crate::config::WorkloadsConfig = serde_yaml_ng::from_str(
            "krb5_conf: /k\nmit_kadmin: {principal: a/admin@R, keytab: /k}\nmappings:\n\
             - {namespace: pay, serviceaccount: api, principal: api@R}\n\
             - {namespace: pay, serviceaccount: web, principal: 'HTTP/web.pay.svc@R', form: keytab}\n\
             - {namespace: '*', serviceaccount: '*', principal: '{sa}.{namespace}@R'}\n",
        )
        .unwrap();
        Mappings::new(&c).unwrap()
    }

    fn agent() -> AgentSettings {
        AgentSettings {
            image: "idbridge:1".into(),
            server: "https://idbridge.test".into(),
            ca_pem: Some("PEM".into()),
            mode: AgentMode::Sidecar,
            token_lifetime_secs: 3600,
            audience: "idbridge".into(),
        }
    }

    fn request(pod: &Value) -> Value {
        json!({"uid": "u", "kind": {"kind": "Pod"}, "operation": "CREATE", "namespace": "pay", "object": pod})
    }

    #[test]
    fn the_patch_applies_and_a_second_admission_changes_nothing() {
        let pod = json!({
            "metadata": {"name": "p", "annotations": {"team": "a"}},
            "spec": {
                "serviceAccountName": "web",
                "initContainers": [{"name": "migrate", "image": "m"}],
                "containers": [
                    {"name": "app", "image": "a", "env": [{"name": "KRB5_CONFIG", "value": "/mine"}]},
                    {"name": "side", "image": "s", "volumeMounts": [{"name": "x", "mountPath": "/x"}]},
                ],
                "volumes": [{"name": "x", "emptyDir": {}}],
            },
        });
        let Decision::Patch(ops) = decide(&request(&pod), &mappings(), &agent()) else {
            panic!("not patched");
        };
        let out = apply(pod, &ops);
        let init = out["spec"]["initContainers"].as_array().unwrap();
        assert_eq!(init[0]["name"], AGENT_CONTAINER, "the agent goes first");
        assert_eq!(init[0]["restartPolicy"], "Always");
        assert_eq!(init[0]["env"][0]["value"], "PEM");
        assert_eq!(init[1]["name"], "migrate");
        assert_eq!(
            init[1]["volumeMounts"][0]["mountPath"], CREDENTIAL_DIR,
            "the pod's own init containers get it too"
        );
        let app = &out["spec"]["containers"][0];
        let env: Vec<&str> = app["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            env,
            ["KRB5_CONFIG", "KRB5_CLIENT_KTNAME", "KRB5_KTNAME"],
            "its own KRB5_CONFIG kept"
        );
        assert_eq!(app["env"][0]["value"], "/mine");
        assert_eq!(
            out["spec"]["containers"][1]["volumeMounts"][1]["readOnly"],
            true
        );
        assert_eq!(out["spec"]["volumes"].as_array().unwrap().len(), 3);
        assert_eq!(
            out["metadata"]["annotations"][INJECTED_ANNOTATION],
            "HTTP/web.pay.svc@R"
        );
        assert_eq!(out["metadata"]["annotations"]["team"], "a");
        // Admitted again, as the API server would on a copy: unchanged.
        assert_eq!(
            decide(&request(&out), &mappings(), &agent()),
            Decision::Unchanged
        );
    }

    #[test]
    fn who_is_injected_denied_or_left_alone() {
        let pod = |sa: &str, annotations: Value| json!({"metadata": {"name": "p", "annotations": annotations}, "spec": {"serviceAccountName": sa, "containers": [{"name": "app", "image": "a"}]}});
        let (m, a) = (mappings(), agent());
        // A wildcard mapping injects only a pod that asks.
        assert_eq!(
            decide(&request(&pod("job", json!({}))), &m, &a),
            Decision::Unchanged
        );
        let asks = pod("job", json!({PRINCIPAL_ANNOTATION: "job.pay@R"}));
        assert!(matches!(
            decide(&request(&asks), &m, &a),
            Decision::Patch(_)
        ));
        // Asking for another serviceaccount's principal is refused with the reason.
        let greedy = pod("api", json!({PRINCIPAL_ANNOTATION: "HTTP/web.pay.svc@R"}));
        let Decision::Deny(why) = decide(&request(&greedy), &m, &a) else {
            panic!("not denied");
        };
        assert!(
            why.contains("pay/api may use the Kerberos principal api@R, not HTTP/web.pay.svc@R"),
            "{why}"
        );
        let bad_mode = pod("api", json!({AGENT_ANNOTATION: "daemon"}));
        assert!(matches!(
            decide(&request(&bad_mode), &m, &a),
            Decision::Deny(_)
        ));
        // Not a pod create: left alone.
        let mut update = request(&pod("api", json!({})));
        update["operation"] = json!("UPDATE");
        assert_eq!(decide(&update, &m, &a), Decision::Unchanged);
        // A pod with no spec.volumes, no annotations, default serviceaccount in a classic
        // sidecar: the lists are made.
        let plain = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "app", "image": "a"}]}});
        let classic_pod = || json!({"metadata": {"name": "p", "annotations": {AGENT_ANNOTATION: "classic", PRINCIPAL_ANNOTATION: "default.pay@R"}}, "spec": {"containers": [{"name": "app", "image": "a"}]}});
        let classic = classic_pod();
        assert_eq!(decide(&request(&plain), &m, &a), Decision::Unchanged);
        let Decision::Patch(ops) = decide(&request(&classic), &m, &a) else {
            panic!("not patched");
        };
        let out = apply(classic, &ops);
        assert_eq!(out["spec"]["containers"][1]["name"], AGENT_CONTAINER);
        assert!(out["spec"]["containers"][1]["restartPolicy"].is_null());
        assert!(out["spec"]["initContainers"].is_null());
        assert_eq!(out["spec"]["containers"][0]["env"][1]["name"], "KRB5CCNAME");
        // The pod's own init containers run before a classic sidecar: they get nothing.
        let mut with_init = classic_pod();
        with_init["spec"]["initContainers"] = json!([{"name": "migrate", "image": "m"}]);
        let Decision::Patch(ops) = decide(&request(&with_init), &m, &a) else {
            panic!("not patched");
        };
        let out = apply(with_init, &ops);
        assert_eq!(
            out["spec"]["initContainers"],
            json!([{"name": "migrate", "image": "m"}])
        );
        assert_eq!(out["spec"]["containers"][0]["env"][1]["name"], "KRB5CCNAME");
    }
}
