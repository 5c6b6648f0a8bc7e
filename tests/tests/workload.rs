//! Workload credentials against a real MIT KDC and kadmind, the real kube-apiserver and the real
//! idbridge binary: a pod's projected ServiceAccount token (from the TokenRequest API, bound to
//! the pod) becomes a ticket cache (`klist` shows the TGT, `kvno` gets a service ticket) or a
//! keytab (`kinit -k` takes it); wrong audience, unbound, unmapped, expired and deleted-pod
//! tokens are refused; revoke + rotate kills a leaked keytab at the KDC; the API server calls
//! the admission webhook on a real pod create and stores the patch, and a second admission
//! changes nothing; scheduled rotation keeps the previous key version for its overlap; the agent
//! renews and replaces its file atomically.

#![allow(clippy::unwrap_used, clippy::expect_used)] // end-to-end tests fail loudly by design

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use idbridge_kerberos::keytab;
use idbridge_tests::Idbridge;
use idbridge_tests::kdc::Kdc;
use idbridge_tests::kube::{ApiServer, Authn};
use serde_json::Value;
use tokio::process::Command;

const REALM: &str = "WORKLOAD.TEST";

struct Stack {
    dir: tempfile::TempDir,
    kdc: Kdc,
    api: ApiServer,
    admin_kc: PathBuf,
    i: Idbridge,
}

/// Runs kubectl as the API server's admin; its standard output, or the test fails.
async fn k(api: &ApiServer, kc: &Path, args: &[&str]) -> String {
    let (code, out, err) = api.kubectl(kc, args, &[]).await.unwrap();
    assert_eq!(code, 0, "kubectl {args:?}: {err}");
    out
}

/// A KDC with kadmind, a kube-apiserver that authenticates to admission webhooks with a token,
/// idbridge's ServiceAccount (the RBAC example) and idbridge with `workloads` (`extra` YAML
/// lines under it, indented by 2).
async fn stack(extra: &str) -> Stack {
    let dir = idbridge_tests::scratch();
    let mut kdc = Kdc::start(REALM).await.unwrap();
    let kadmin = kdc.start_admin().await.unwrap();
    // kube-apiserver presents this token to every admission webhook ("*").
    let hook_token = format!("hook-{}", uuid_like());
    let hook_file = dir.path().join("webhook.token");
    std::fs::write(&hook_file, &hook_token).unwrap();
    let hook_kc = dir.path().join("admission.kubeconfig");
    std::fs::write(
        &hook_kc,
        format!(
            "apiVersion: v1\nkind: Config\nusers:\n- name: '*'\n  user:\n    token: {hook_token}\n"
        ),
    )
    .unwrap();
    let admission = dir.path().join("admission.yaml");
    std::fs::write(
        &admission,
        format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: AdmissionConfiguration\nplugins:\n- name: MutatingAdmissionWebhook\n  configuration:\n    apiVersion: apiserver.config.k8s.io/v1\n    kind: WebhookAdmissionConfiguration\n    kubeConfigFile: {}\n",
            hook_kc.display()
        ),
    )
    .unwrap();
    let api = ApiServer::start(
        dir.path(),
        Authn::default().arg(&format!(
            "--admission-control-config-file={}",
            admission.display()
        )),
    )
    .await
    .unwrap();
    let admin_kc = api.token_kubeconfig(&api.admin_token).unwrap();
    let idb_kc = api.workload_identity_kubeconfig().await.unwrap();
    let yaml = format!(
        "bootstrap_admin: true\ndata_dir: {data:?}\nwebhooks:\n  bearer_token_file: {hook:?}\nkubernetes:\n  api:\n    kubeconfig: {kc:?}\nworkloads:\n  krb5_conf: {krb5:?}\n  mit_kadmin:\n    principal: {admin}\n    keytab: {keytab:?}\n    server: {server}\n  agent:\n    image: idbridge:test\n  mappings:\n    - {{namespace: pay, serviceaccount: api, principal: 'api.pay@{REALM}'}}\n    - {{namespace: pay, serviceaccount: web, principal: 'HTTP/web.pay.svc@{REALM}', form: keytab}}\n    - {{namespace: '*', serviceaccount: batch, principal: '{{sa}}.{{namespace}}@{REALM}'}}\n{extra}",
        data = dir.path().join("data").display().to_string(),
        hook = hook_file.display().to_string(),
        kc = idb_kc.display().to_string(),
        krb5 = kdc.krb5_conf().display().to_string(),
        admin = kadmin.principal,
        keytab = kadmin.keytab.display().to_string(),
        server = kadmin.server,
    );
    let i = Idbridge::start_config(dir.path(), yaml).await.unwrap();
    for ns in ["pay", "shop"] {
        k(&api, &admin_kc, &["create", "namespace", ns]).await;
    }
    for (ns, sa) in [
        ("pay", "api"),
        ("pay", "web"),
        ("pay", "other"),
        ("shop", "batch"),
    ] {
        k(&api, &admin_kc, &["create", "serviceaccount", sa, "-n", ns]).await;
    }
    Stack {
        dir,
        kdc,
        api,
        admin_kc,
        i,
    }
}

fn uuid_like() -> String {
    let mut b = [0u8; 12];
    aws_lc_rs::rand::fill(&mut b).unwrap();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Stack {
    async fn kubectl(&self, args: &[&str]) -> String {
        k(&self.api, &self.admin_kc, args).await
    }

    /// Creates pod `name` of serviceaccount `sa` in `ns` with `annotations` (YAML lines
    /// indented by 4); its UID.
    async fn pod(&self, ns: &str, name: &str, sa: &str, annotations: &str) -> String {
        let file = self.dir.path().join(format!("pod-{ns}-{name}.yaml"));
        let meta = if annotations.is_empty() {
            String::new()
        } else {
            format!("  annotations:\n{annotations}")
        };
        std::fs::write(
            &file,
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\n{meta}spec:\n  serviceAccountName: {sa}\n  containers:\n  - name: app\n    image: registry.invalid/app:1\n"
            ),
        )
        .unwrap();
        self.kubectl(&["create", "-f", file.to_str().unwrap()])
            .await;
        self.kubectl(&[
            "get",
            "pod",
            name,
            "-n",
            ns,
            "-o",
            "jsonpath={.metadata.uid}",
        ])
        .await
    }

    /// A token from the TokenRequest API for `sa`, bound to pod `name` (`uid`), for `audience`.
    async fn pod_token(&self, ns: &str, sa: &str, name: &str, uid: &str, audience: &str) -> String {
        self.kubectl(&[
            "create",
            "token",
            sa,
            "-n",
            ns,
            "--audience",
            audience,
            "--bound-object-kind",
            "Pod",
            "--bound-object-name",
            name,
            "--bound-object-uid",
            uid,
            "--duration=1h",
        ])
        .await
        .trim()
        .to_owned()
    }

    /// `idbridge workload-agent` against this idbridge, with `token_file` and `dir`.
    fn agent(&self, token_file: &Path, dir: &Path, once: bool) -> Command {
        let mut c = Command::new(idbridge_tests::idbridge_bin());
        c.args(["workload-agent", "--server", &self.i.base])
            .arg("--token-file")
            .arg(token_file)
            .arg("--dir")
            .arg(dir)
            .arg("--ca-file")
            .arg(self.i.data_dir.join("ca.crt"));
        if once {
            c.arg("--once");
        }
        c
    }

    async fn fetch(&self, token: &str) -> (u16, Value) {
        let r = self
            .i
            .http
            .post(format!("{}/v1/workload/credentials", self.i.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Writes the credential of a 200 answer to `name` in the scratch dir.
    fn save(&self, answer: &Value, name: &str) -> PathBuf {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(answer["credential"].as_str().unwrap())
            .unwrap();
        let p = self.dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    async fn krb(&self, tool: &str, args: &[&str]) -> (bool, String) {
        self.kdc.client(tool, args).await
    }

    /// `kinit -k -t keytab principal` into a fresh cache: whether the KDC took the keys.
    async fn kinit_keytab(&self, keytab: &Path, principal: &str) -> (bool, String) {
        let cc = self.dir.path().join(format!("kt-{}.cc", uuid_like()));
        self.krb(
            "kinit",
            &[
                "-k",
                "-t",
                keytab.to_str().unwrap(),
                "-c",
                &format!("FILE:{}", cc.display()),
                principal,
            ],
        )
        .await
    }
}

/// A ServiceAccount token like the API server's, signed with its key, already expired.
fn expired_token(api: &ApiServer, ns: &str, sa: &str, pod: &str, uid: &str) -> String {
    let pem = std::fs::read_to_string(api.service_account_key()).unwrap();
    let der: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(der)
        .unwrap();
    let key = jsonwebtoken::EncodingKey::from_ec_der(&der);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({
        "iss": ApiServer::SERVICE_ACCOUNT_ISSUER,
        "sub": format!("system:serviceaccount:{ns}:{sa}"),
        "aud": ["idbridge"],
        "iat": now - 7200,
        "nbf": now - 7200,
        "exp": now - 3600,
        "kubernetes.io": {
            "namespace": ns,
            "pod": {"name": pod, "uid": uid},
            "serviceaccount": {"name": sa, "uid": "00000000-0000-0000-0000-000000000000"},
        },
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
        &claims,
        &key,
    )
    .unwrap()
}

#[tokio::test]
async fn pods_get_attested_credentials_that_are_refused_and_revoked_as_they_should() {
    let s = stack("").await;
    let principal = format!("api.pay@{REALM}");
    let svc = s.kdc.add_service("HTTP/db.workload.test").await.unwrap();

    // ccache: the pod's token → a TGT; kvno gets a service ticket with it.
    let uid = s.pod("pay", "api-1", "api", "").await;
    let token = s.pod_token("pay", "api", "api-1", &uid, "idbridge").await;
    let (status, answer) = s.fetch(&token).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["principal"], principal.as_str());
    assert_eq!(answer["form"], "ccache");
    let lifetime = answer["expires_at"].as_i64().unwrap() - answer["issued_at"].as_i64().unwrap();
    assert!(
        (3000..=3600).contains(&lifetime),
        "capped at 1h and the token: {answer}"
    );
    assert!(answer["krb5_conf"].as_str().unwrap().contains(REALM));
    let cc = s.save(&answer, "api.cc");
    let ccname = format!("FILE:{}", cc.display());
    let (ok, out) = s.krb("klist", &["-c", &ccname]).await;
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!("Default principal: {principal}")),
        "{out}"
    );
    assert!(out.contains(&format!("krbtgt/{REALM}@{REALM}")), "{out}");
    let (ok, out) = s.krb("kvno", &["-c", &ccname, &svc]).await;
    assert!(ok, "kvno with the handed-out cache: {out}");

    // The agent, as an init container would run it: fetch once, write 0440, exit 0.
    let token_file = s.dir.path().join("api-1.token");
    std::fs::write(&token_file, &token).unwrap();
    let agent_dir = s.dir.path().join("agent-api");
    let out = s
        .agent(&token_file, &agent_dir, true)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let written = agent_dir.join("krb5cc");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&written).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o440);
    let (ok, out) = s
        .krb("klist", &["-c", &format!("FILE:{}", written.display())])
        .await;
    assert!(ok && out.contains(&principal), "{out}");
    assert!(
        std::fs::read_to_string(agent_dir.join("krb5.conf"))
            .unwrap()
            .contains(REALM)
    );

    // keytab: the KDC takes the handed-out keys.
    let web_uid = s.pod("pay", "web-1", "web", "").await;
    let web_token = s
        .pod_token("pay", "web", "web-1", &web_uid, "idbridge")
        .await;
    let (status, answer) = s.fetch(&web_token).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["form"], "keytab");
    let web = format!("HTTP/web.pay.svc@{REALM}");
    let kt = s.save(&answer, "web.keytab");
    let entries = keytab::parse(&std::fs::read(&kt).unwrap()).unwrap();
    assert!(entries.iter().all(|e| e.principal() == web), "{entries:?}");
    let (ok, out) = s.kinit_keytab(&kt, &web).await;
    assert!(ok, "kinit -k with the handed-out keytab: {out}");
    // A second fetch makes no kadmin call: same keys, however many pods ask.
    let (_, again) = s.fetch(&web_token).await;
    assert_eq!(again["credential"], answer["credential"]);

    // Refusals, each with its reason.
    let other_aud = s
        .pod_token("pay", "api", "api-1", &uid, "someone-else")
        .await;
    let (status, body) = s.fetch(&other_aud).await;
    assert_eq!(status, 401, "wrong audience: {body}");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("`audience: idbridge`"),
        "the refusal says which audience to use: {body}"
    );
    let unbound = s
        .kubectl(&[
            "create",
            "token",
            "api",
            "-n",
            "pay",
            "--audience",
            "idbridge",
        ])
        .await;
    let (status, body) = s.fetch(unbound.trim()).await;
    assert_eq!(status, 401, "not bound to a pod: {body}");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("not bound to a pod"),
        "{body}"
    );
    let other_uid = s.pod("pay", "other-1", "other", "").await;
    let other = s
        .pod_token("pay", "other", "other-1", &other_uid, "idbridge")
        .await;
    let (status, body) = s.fetch(&other).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("unmapped")),
        "{body}"
    );
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("pay/other"),
        "{body}"
    );
    let expired = expired_token(&s.api, "pay", "api", "api-1", &uid);
    let (status, body) = s.fetch(&expired).await;
    assert_eq!(status, 401, "expired: {body}");
    let (status, _) = s.fetch("not-a-token").await;
    assert_eq!(status, 401);

    // A deleted pod's token stops working (the API server checks the bound pod).
    s.kubectl(&["delete", "pod", "api-1", "-n", "pay", "--wait=false"])
        .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = s.fetch(&token).await;
        if status == 401 {
            break;
        }
        assert_eq!(status, 200, "{body}");
        assert!(
            std::time::Instant::now() < deadline,
            "still issued 30 s after the pod went"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Revoke + rotate: the leaked keytab fails at the KDC, and the pod is refused.
    let out =
        s.i.cli_ok(&[
            "revoke",
            "--principal",
            &web,
            "--rotate",
            "--reason",
            "keytab leaked",
            "--json",
        ])
        .await
        .unwrap();
    let done: Value = serde_json::from_str(&out).unwrap();
    let new_kvno = done["rotated_kvno"].as_u64().unwrap();
    assert!(new_kvno > u64::from(entries[0].kvno), "{done}");
    let (ok, out) = s.kinit_keytab(&kt, &web).await;
    assert!(!ok, "the old keytab still works after --rotate: {out}");
    let (status, body) = s.fetch(&web_token).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("revoked")),
        "{body}"
    );
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("keytab leaked"),
        "{body}"
    );
    // Listed, then lifted: the new keys come out.
    let list =
        s.i.cli_ok(&["workload", "revocations", "--json"])
            .await
            .unwrap();
    assert!(list.contains(&web), "{list}");
    s.i.cli_ok(&["workload", "lift", "--principal", &web])
        .await
        .unwrap();
    let (status, answer) = s.fetch(&web_token).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["kvnos"][0].as_u64(), Some(new_kvno), "{answer}");
    let kt2 = s.save(&answer, "web2.keytab");
    let (ok, out) = s.kinit_keytab(&kt2, &web).await;
    assert!(ok, "{out}");

    // A principal not in the database has no keys to rotate, and says so; a serviceaccount no
    // mapping names is revoked with a note.
    let (code, _, err) =
        s.i.cli(&[
            "revoke",
            "--principal",
            &format!("nobody.pay@{REALM}"),
            "--rotate",
        ])
        .await
        .unwrap();
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("not in the Kerberos database"), "{err}");
    assert!(!err.contains("run the same command again"), "{err}");
    let (code, _, err) =
        s.i.cli(&["revoke", "--serviceaccount", "pay/nobody"])
            .await
            .unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("note: no mapping gives serviceaccount pay/nobody"),
        "{err}"
    );
    let (code, _, err) =
        s.i.cli(&["revoke", "--principal", "api.pay@OTHER.REALM"])
            .await
            .unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("note: no mapping can give out the principal api.pay@OTHER.REALM"),
        "{err}"
    );

    // A pod revoked by UID: refused, its serviceaccount's other pods go on.
    let batch_uid = s.pod("shop", "batch-1", "batch", "").await;
    let batch2_uid = s.pod("shop", "batch-2", "batch", "").await;
    let b1 = s
        .pod_token("shop", "batch", "batch-1", &batch_uid, "idbridge")
        .await;
    let b2 = s
        .pod_token("shop", "batch", "batch-2", &batch2_uid, "idbridge")
        .await;
    assert_eq!(s.fetch(&b1).await.0, 200);
    s.i.cli_ok(&["revoke", "--pod", &batch_uid]).await.unwrap();
    let (status, body) = s.fetch(&b1).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("revoked")),
        "{body}"
    );
    let (status, answer) = s.fetch(&b2).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["principal"], format!("batch.shop@{REALM}"));
    // The agent of a revoked pod removes its credential and says why.
    let b1_file = s.dir.path().join("b1.token");
    std::fs::write(&b1_file, &b1).unwrap();
    let b1_dir = s.dir.path().join("agent-b1");
    std::fs::create_dir_all(&b1_dir).unwrap();
    std::fs::write(b1_dir.join("krb5cc"), b"stale").unwrap();
    let out = s.agent(&b1_file, &b1_dir, true).output().await.unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("revoked"), "{err}");
    assert!(!b1_dir.join("krb5cc").exists());

    // Every issuance and refusal is in the audit log, naming pod and principal.
    let audit = std::fs::read_to_string(s.i.data_dir.join("audit.log")).unwrap();
    assert!(
        audit.lines().any(|l| l.contains("workload.issue")
            && l.contains("system:serviceaccount:pay:web")
            && l.contains("web-1")
            && l.contains(&web)),
        "{audit}"
    );
    // A revocation with rotation keeps the administrator's reason beside the new key version.
    assert!(
        audit.lines().any(|l| l.contains("workload.revoke")
            && l.contains(&web)
            && l.contains("keytab leaked; rotated to key version")),
        "{audit}"
    );
    // A rotation that could not happen leaves the revocation in force, and audited.
    assert!(
        audit.lines().any(|l| l.contains("workload.revoke")
            && l.contains(&format!("nobody.pay@{REALM}"))
            && l.contains("not rotated")),
        "{audit}"
    );
    assert!(!audit.contains(&token), "the token is never logged");

    // A stream of refused tokens from one address is cut off before it costs the API server
    // more reviews: then even a good token from there waits (429 with Retry-After).
    let mut throttled_after = None;
    for i in 0..40 {
        let (status, _) = s.fetch(&format!("not-a-token-{i}")).await;
        if status == 429 {
            throttled_after = Some(i);
            break;
        }
        assert_eq!(status, 401);
    }
    assert!(
        throttled_after.is_some_and(|i| i <= 30),
        "{throttled_after:?}"
    );
    let (status, body) = s.fetch(&web_token).await;
    assert_eq!(status, 429, "{body}");
    // Refusals are written in batches, a moment later.
    let mut audited = false;
    for _ in 0..50 {
        let audit = std::fs::read_to_string(s.i.data_dir.join("audit.log")).unwrap();
        audited = audit.contains("too many refused tokens from this address");
        if audited {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(audited, "the throttled request is audited");
}

#[tokio::test]
async fn the_api_server_calls_the_admission_webhook_and_stores_the_patch() {
    let s = stack("").await;
    let ca = std::fs::read(s.i.data_dir.join("ca.crt")).unwrap();
    let hook =
        std::fs::read_to_string(idbridge_tests::repo_root().join("deploy/mutating-webhook.yaml"))
            .unwrap()
            .replace("https://idbridge.example.com:8443", &s.i.base)
            .replace(
                "CA_BUNDLE",
                &base64::engine::general_purpose::STANDARD.encode(ca),
            );
    let hook_file = s.dir.path().join("hook.yaml");
    std::fs::write(&hook_file, hook).unwrap();
    s.kubectl(&["apply", "-f", hook_file.to_str().unwrap()])
        .await;
    s.kubectl(&["label", "namespace", "pay", "idbridge.io/workloads=enabled"])
        .await;

    // An explicit mapping: injected without asking. The webhook configuration takes a moment
    // to reach the admission plugin.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut n = 0;
    let pod = loop {
        n += 1;
        let name = format!("api-{n}");
        s.pod("pay", &name, "api", "").await;
        let pod: Value = serde_json::from_str(
            &s.kubectl(&["get", "pod", &name, "-n", "pay", "-o", "json"])
                .await,
        )
        .unwrap();
        if pod["spec"]["initContainers"].is_array() {
            break pod;
        }
        assert!(std::time::Instant::now() < deadline, "never mutated: {pod}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let agent = &pod["spec"]["initContainers"][0];
    assert_eq!(agent["name"], "idbridge-agent");
    assert_eq!(agent["restartPolicy"], "Always", "a native sidecar");
    assert_eq!(agent["image"], "idbridge:test");
    assert!(agent["command"].to_string().contains(&s.i.base), "{agent}");
    let app = &pod["spec"]["containers"][0];
    let env: Vec<(String, String)> = app["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_owned(),
                e["value"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        env.contains(&("KRB5CCNAME".into(), "FILE:/var/run/idbridge/krb5cc".into())),
        "{env:?}"
    );
    assert!(
        env.contains(&("KRB5_CONFIG".into(), "/var/run/idbridge/krb5.conf".into())),
        "{env:?}"
    );
    assert_eq!(app["volumeMounts"][0]["mountPath"], "/var/run/idbridge");
    let volumes = pod["spec"]["volumes"].to_string();
    assert!(volumes.contains("\"medium\":\"Memory\""), "{volumes}");
    assert!(volumes.contains("\"audience\":\"idbridge\""), "{volumes}");
    assert_eq!(
        pod["metadata"]["annotations"]["idbridge.io/injected"],
        format!("api.pay@{REALM}")
    );

    // The stored pod admitted again (as a copy): nothing added twice.
    let mut copy = pod.clone();
    copy["metadata"] = serde_json::json!({
        "name": "api-copy",
        "namespace": "pay",
        "annotations": pod["metadata"]["annotations"],
    });
    copy.as_object_mut().unwrap().remove("status");
    let copy_file = s.dir.path().join("copy.json");
    std::fs::write(&copy_file, copy.to_string()).unwrap();
    s.kubectl(&["create", "-f", copy_file.to_str().unwrap()])
        .await;
    let again: Value = serde_json::from_str(
        &s.kubectl(&["get", "pod", "api-copy", "-n", "pay", "-o", "json"])
            .await,
    )
    .unwrap();
    assert_eq!(again["spec"]["initContainers"].as_array().unwrap().len(), 1);
    assert_eq!(again["spec"]["containers"], pod["spec"]["containers"]);
    assert_eq!(again["spec"]["volumes"], pod["spec"]["volumes"]);

    // A pod asking for a principal its serviceaccount may not use is refused, with the reason.
    let file = s.dir.path().join("greedy.yaml");
    std::fs::write(
        &file,
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: greedy\n  namespace: pay\n  annotations:\n    idbridge.io/kerberos-principal: 'HTTP/web.pay.svc@{REALM}'\nspec:\n  serviceAccountName: api\n  containers:\n  - name: app\n    image: registry.invalid/app:1\n"
        ),
    )
    .unwrap();
    let (code, _, err) = s
        .api
        .kubectl(&s.admin_kc, &["create", "-f", file.to_str().unwrap()], &[])
        .await
        .unwrap();
    assert_ne!(code, 0);
    assert!(err.contains("may use the Kerberos principal"), "{err}");
    // A pod of an unmapped serviceaccount that asks for nothing is left alone.
    s.pod("pay", "plain", "other", "").await;
    let plain: Value = serde_json::from_str(
        &s.kubectl(&["get", "pod", "plain", "-n", "pay", "-o", "json"])
            .await,
    )
    .unwrap();
    assert!(plain["spec"]["initContainers"].is_null(), "{plain}");
    // The init-container mode by annotation.
    s.pod("pay", "once", "api", "    idbridge.io/agent: init\n")
        .await;
    let once: Value = serde_json::from_str(
        &s.kubectl(&["get", "pod", "once", "-n", "pay", "-o", "json"])
            .await,
    )
    .unwrap();
    let agent = &once["spec"]["initContainers"][0];
    assert!(agent["restartPolicy"].is_null(), "{agent}");
    assert!(agent["command"].to_string().contains("--once"), "{agent}");
}

#[tokio::test]
async fn rotation_keeps_the_previous_key_for_its_overlap_and_the_agent_replaces_its_file_atomically()
 {
    let s = stack("  keytab:\n    rotate_every: 6s\n    overlap: 4s\n").await;
    let web = format!("HTTP/web.pay.svc@{REALM}");
    let uid = s.pod("pay", "web-1", "web", "").await;
    let token = s.pod_token("pay", "web", "web-1", &uid, "idbridge").await;
    let (status, first) = s.fetch(&token).await;
    assert_eq!(status, 200, "{first}");
    let v1 = first["kvnos"][0].as_u64().unwrap();
    let kt1 = s.save(&first, "v1.keytab");

    // A client's service ticket made with version v1, before the rotation.
    let client = s.kdc.add_user("client", "client-pw-1").await.unwrap();
    let cc = s.dir.path().join("client.cc");
    s.kdc
        .kinit(&client, "client-pw-1", &cc, None)
        .await
        .unwrap();
    let ccname = format!("FILE:{}", cc.display());
    let (ok, out) = s.krb("kvno", &["-c", &ccname, &web]).await;
    assert!(ok && out.contains(&format!("kvno = {v1}")), "{out}");

    // The agent renews on its own across rotations; a reader never sees a partial keytab.
    let token_file = s.dir.path().join("web.token");
    std::fs::write(&token_file, &token).unwrap();
    let agent_dir = s.dir.path().join("agent-web");
    let mut agent = s
        .agent(&token_file, &agent_dir, false)
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let file = agent_dir.join("krb5.keytab");
    let mut seen = std::collections::BTreeSet::new();
    let mut reads = 0u64;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let (with_overlap, after_overlap) = loop {
        assert!(std::time::Instant::now() < deadline, "kvnos seen: {seen:?}");
        if let Ok(bytes) = std::fs::read(&file) {
            reads += 1;
            let entries = keytab::parse(&bytes).unwrap_or_else(|e| {
                panic!("a reader saw a partial keytab ({} bytes): {e}", bytes.len())
            });
            let newest = entries.iter().map(|e| e.kvno).max().unwrap();
            seen.insert(newest);
        }
        // The server's answers, beside the agent's file.
        let (_, now) = s.fetch(&token).await;
        let kvnos: Vec<u64> = now["kvnos"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        if kvnos.len() == 2 && kvnos[1] == v1 {
            // Rotated, inside the overlap: the previous version still comes out.
            let kt = s.save(&now, "overlap.keytab");
            let (ok, out) = s
                .krb("kvno", &["-c", &ccname, "-k", kt.to_str().unwrap(), &web])
                .await;
            assert!(
                ok,
                "the v{v1} ticket is accepted with the overlap keytab: {out}"
            );
            // Wait for the overlap to end: the new keytab holds the new version only.
            let end = std::time::Instant::now() + Duration::from_secs(30);
            let after = loop {
                let (_, later) = s.fetch(&token).await;
                if later["kvnos"].as_array().unwrap().len() == 1
                    && later["kvnos"][0] != now["kvnos"][1]
                {
                    break later;
                }
                assert!(
                    std::time::Instant::now() < end,
                    "the overlap never ended: {later}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            };
            break (now, after);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(with_overlap["kvnos"][0].as_u64().unwrap() > v1);
    // The KDC dropped the old keys once the overlap ended.
    s.i.wait_for_log("keys before version", 1).await.unwrap();
    assert!(
        !after_overlap["kvnos"]
            .as_array()
            .unwrap()
            .contains(&Value::from(v1))
    );
    // The agent has followed: its file holds a newer version than the first, read whole.
    let end = std::time::Instant::now() + Duration::from_secs(30);
    while seen.iter().all(|v| u64::from(*v) == v1) {
        assert!(
            std::time::Instant::now() < end,
            "the agent never renewed: {seen:?}"
        );
        if let Ok(bytes) = std::fs::read(&file) {
            reads += 1;
            let entries = keytab::parse(&bytes).expect("a whole keytab");
            seen.insert(entries.iter().map(|e| e.kvno).max().unwrap());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(reads > 10, "{reads}");
    // The first keytab no longer gets a TGT once its version is replaced.
    let (ok, _) = s.kinit_keytab(&kt1, &web).await;
    assert!(!ok, "the v{v1} keytab still gets a TGT after rotations");
    agent.start_kill().unwrap();
}

/// `serve --check` reads what a `workloads` section names and refuses, by field, what could
/// never work: a kubeconfig without the context, a krb5.conf that does not parse, a kadmin
/// keytab without the admin's key, a principal of another realm, an entry that never matches.
#[tokio::test]
async fn a_workloads_section_that_cannot_work_is_refused_by_field() {
    let dir = idbridge_tests::scratch();
    let p = |name: &str| dir.path().join(name);
    std::fs::write(
        p("kubeconfig"),
        "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'https://127.0.0.1:1'}}]\nusers: [{name: u, user: {token: t}}]\ncontexts: [{name: ctx, context: {cluster: c, user: u}}]\ncurrent-context: ctx\n",
    )
    .unwrap();
    std::fs::write(
        p("krb5.conf"),
        format!("[libdefaults]\n default_realm = {REALM}\n[realms]\n {REALM} = {{\n  kdc = 127.0.0.1:1\n }}\n"),
    )
    .unwrap();
    std::fs::write(p("broken.conf"), "[libdefaults\n default_realm = X\n").unwrap();
    let entry =
        |name: &str| keytab::KeytabEntry::new(REALM, &["idbridge", name], 1, 1, 18, vec![7; 32], 0);
    std::fs::write(
        p("kadmin.keytab"),
        keytab::to_bytes(&[entry("admin")]).unwrap(),
    )
    .unwrap();
    std::fs::write(
        p("other.keytab"),
        keytab::to_bytes(&[entry("other")]).unwrap(),
    )
    .unwrap();
    let config = |kubeconfig: &str, krb5: &str, keytab: &str, mappings: &str| {
        format!(
            "kubernetes:\n  api: {{kubeconfig: {:?}}}\nworkloads:\n  krb5_conf: {:?}\n  mit_kadmin: {{principal: idbridge/admin@{REALM}, keytab: {:?}}}\n  mappings:\n{mappings}",
            p(kubeconfig),
            p(krb5),
            p(keytab)
        )
    };
    let good =
        format!("    - {{namespace: pay, serviceaccount: api, principal: 'api.pay@{REALM}'}}\n");
    let check = |yaml: String| {
        let path = p("config.yaml");
        let data = p("data");
        async move {
            std::fs::write(&path, yaml).unwrap();
            idbridge_tests::run_idbridge(&[
                "serve",
                "--config",
                path.to_str().unwrap(),
                "--data-dir",
                data.to_str().unwrap(),
                "--check",
            ])
            .await
            .unwrap()
        }
    };

    let (code, out, err) = check(config("kubeconfig", "krb5.conf", "kadmin.keytab", &good)).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("configuration OK"), "{out}");
    assert!(
        err.contains("workloads.agent.image"),
        "the default agent image is not warned about: {err}"
    );

    std::fs::write(
        p("nocontext"),
        "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'https://127.0.0.1:1'}}]\ncontexts: [{name: ctx, context: {cluster: c}}]\ncurrent-context: elsewhere\n",
    )
    .unwrap();
    for (yaml, field, says) in [
        (
            config("nocontext", "krb5.conf", "kadmin.keytab", &good),
            "kubernetes.api.kubeconfig",
            "no context \"elsewhere\"",
        ),
        (
            config("kubeconfig", "broken.conf", "kadmin.keytab", &good),
            "workloads.krb5_conf",
            "broken.conf",
        ),
        (
            config("kubeconfig", "krb5.conf", "other.keytab", &good),
            "workloads.mit_kadmin.keytab",
            &format!("holds no key of idbridge/admin@{REALM} (it holds: idbridge/other@{REALM})"),
        ),
        (
            config(
                "kubeconfig",
                "krb5.conf",
                "kadmin.keytab",
                "    - {namespace: pay, serviceaccount: api, principal: 'api.pay@workload.test'}\n",
            ),
            "workloads.mappings[0].principal",
            "case-sensitive",
        ),
        (
            config(
                "kubeconfig",
                "krb5.conf",
                "kadmin.keytab",
                &format!(
                    "    - {{namespace: pay, serviceaccount: '*', principal: '{{sa}}@{REALM}'}}\n{good}"
                ),
            ),
            "workloads.mappings[1]",
            "never used",
        ),
    ] {
        let (code, out, err) = check(yaml.clone()).await;
        assert_eq!(code, 2, "{yaml}\n{out}{err}");
        assert!(
            err.contains(field),
            "{yaml}\nmessage does not name {field}: {err}"
        );
        assert!(
            err.contains(says),
            "{yaml}\nmessage does not say {says:?}: {err}"
        );
    }
}
