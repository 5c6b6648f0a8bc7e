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
    // are those of the pod as it came.
    let env = environment(mapped.form);
    let mount = json!({"name": CREDENTIAL_VOLUME, "mountPath": CREDENTIAL_DIR, "readOnly": true});
    for list in ["initContainers", "containers"] {
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
