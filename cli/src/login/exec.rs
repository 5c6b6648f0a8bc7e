//! kubectl's exec credential protocol: what kubectl tells the plugin (`KUBERNETES_EXEC_INFO`)
//! and the `ExecCredential` the plugin answers with, in the version kubectl asked for.

use anyhow::{Context, bail};
use serde_json::{Value, json};

/// The versions of `client.authentication.k8s.io` spoken.
const VERSIONS: [&str; 2] = [
    "client.authentication.k8s.io/v1",
    "client.authentication.k8s.io/v1beta1",
];

/// What kubectl said when it ran the plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ExecInfo {
    /// The `apiVersion` the answer must carry.
    pub api_version: String,
    /// Whether kubectl handed its terminal to the plugin (`spec.interactive`): when false, the
    /// plugin must not prompt or open a browser.
    pub interactive: bool,
}

impl ExecInfo {
    /// `KUBERNETES_EXEC_INFO`, when kubectl runs this.
    ///
    /// # Errors
    /// If it is set but not an ExecCredential of a version spoken here.
    pub(crate) fn from_env() -> anyhow::Result<Option<Self>> {
        match std::env::var("KUBERNETES_EXEC_INFO") {
            Ok(raw) if !raw.trim().is_empty() => Self::parse(&raw).map(Some),
            _ => Ok(None),
        }
    }

    fn parse(raw: &str) -> anyhow::Result<Self> {
        let v: Value = serde_json::from_str(raw).context("KUBERNETES_EXEC_INFO is not JSON")?;
        let api_version = v
            .get("apiVersion")
            .and_then(Value::as_str)
            .context("KUBERNETES_EXEC_INFO has no apiVersion")?;
        if !VERSIONS.contains(&api_version) {
            bail!(
                "KUBERNETES_EXEC_INFO asks for {api_version}; idbridge speaks {}: set the kubeconfig's exec apiVersion to one of them",
                VERSIONS.join(" and ")
            );
        }
        if v.get("kind").and_then(Value::as_str) != Some("ExecCredential") {
            bail!("KUBERNETES_EXEC_INFO is not an ExecCredential (its kind)");
        }
        Ok(Self {
            api_version: api_version.to_owned(),
            interactive: v
                .pointer("/spec/interactive")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        })
    }

    /// The answer: the token and when it expires (RFC 3339), so kubectl asks again in time.
    pub(crate) fn credential(&self, token: &str, expires: &str) -> Value {
        json!({
            "apiVersion": self.api_version,
            "kind": "ExecCredential",
            "status": {"token": token, "expirationTimestamp": expires},
        })
    }

    /// The default answer's version, for `--output exec-credential` outside kubectl.
    pub(crate) fn v1() -> Self {
        Self {
            api_version: VERSIONS[0].to_owned(),
            interactive: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_versions_are_answered_in_their_own_version() {
        for v in VERSIONS {
            let info = ExecInfo::parse(&format!(
                r#"{{"kind":"ExecCredential","apiVersion":"{v}","spec":{{"interactive":true}}}}"#
            ))
            .unwrap();
            assert_eq!(info.api_version, v);
            assert!(info.interactive);
            let c = info.credential("t", "2026-01-01T00:00:00Z");
            assert_eq!(c["apiVersion"], v);
            assert_eq!(c["status"]["token"], "t");
        }
    }

    #[test]
    fn interactive_is_false_unless_kubectl_says_true() {
        let info = ExecInfo::parse(
            r#"{"kind":"ExecCredential","apiVersion":"client.authentication.k8s.io/v1","spec":{}}"#,
        )
        .unwrap();
        assert!(!info.interactive);
        let info = ExecInfo::parse(
            r#"{"kind":"ExecCredential","apiVersion":"client.authentication.k8s.io/v1","spec":{"interactive":false}}"#,
        )
        .unwrap();
        assert!(!info.interactive);
    }

    #[test]
    fn an_unknown_version_or_kind_names_what_is_wrong() {
        let e = ExecInfo::parse(
            r#"{"kind":"ExecCredential","apiVersion":"client.authentication.k8s.io/v1alpha1"}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("v1alpha1"), "{e}");
        let e = ExecInfo::parse(r#"{"kind":"Pod","apiVersion":"client.authentication.k8s.io/v1"}"#)
            .unwrap_err();
        assert!(e.to_string().contains("kind"), "{e}");
        assert!(ExecInfo::parse("nope").is_err());
    }
}
