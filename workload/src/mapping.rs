//! Which (namespace, serviceaccount) may obtain which principal, checked when the
//! configuration loads so a bad entry is refused by its field rather than at a pod's first
//! request.

use crate::config::{Form, MappingConfig, WorkloadsConfig};

/// A mapping's answer for one serviceaccount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapped {
    /// The principal, templates expanded.
    pub principal: String,
    /// Its form.
    pub form: Form,
    /// The ticket cache lifetime cap, in seconds.
    pub lifetime_secs: u64,
    /// Whether the entry names the namespace and serviceaccount literally (a pod of it is
    /// injected without asking by annotation).
    pub explicit: bool,
    /// The entry's index, for messages.
    pub index: usize,
}

/// The checked mappings.
#[derive(Debug, Clone)]
pub struct Mappings {
    entries: Vec<MappingConfig>,
    default_lifetime: u64,
}

/// A configuration problem, naming the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field `{field}`: {message}")]
pub struct ConfigError {
    /// The field, `workloads.mappings[2].principal`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

fn err(field: String, message: impl Into<String>) -> ConfigError {
    ConfigError {
        field,
        message: message.into(),
    }
}

/// Whether `s` is a name Kubernetes gives a namespace or serviceaccount (a DNS label or, for
/// serviceaccounts, a DNS subdomain): what templates may put into a principal.
fn k8s_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && !s.starts_with(['-', '.'])
        && !s.ends_with(['-', '.'])
}

fn expand(template: &str, namespace: &str, sa: &str) -> String {
    template
        .replace("{namespace}", namespace)
        .replace("{sa}", sa)
}

/// Whether `s` is `template` with each placeholder replaced by a Kubernetes name.
fn template_matches(template: &str, s: &str) -> bool {
    let next = ["{sa}", "{namespace}"]
        .iter()
        .filter_map(|p| template.find(p).map(|i| (i, p.len())))
        .min();
    let Some((i, len)) = next else {
        return template == s;
    };
    let Some(tail) = s.strip_prefix(&template[..i]) else {
        return false;
    };
    let rest = &template[i + len..];
    (1..=tail.len()).any(|n| {
        tail.is_char_boundary(n) && k8s_name(&tail[..n]) && template_matches(rest, &tail[n..])
    })
}

impl Mappings {
    /// Checks `config`'s mappings and lifetimes.
    ///
    /// # Errors
    /// The first problem, by field.
    pub fn new(config: &WorkloadsConfig) -> Result<Self, ConfigError> {
        let cap = config.ccache_lifetime.as_secs();
        if cap < 60 {
            return Err(err(
                "workloads.ccache_lifetime".into(),
                "must be at least 1m (tickets are renewed at half their lifetime)",
            ));
        }
        if config.audience.is_empty() {
            return Err(err("workloads.audience".into(), "must not be empty"));
        }
        if config.mappings.is_empty() {
            return Err(err(
                "workloads.mappings".into(),
                "must name at least one (namespace, serviceaccount) and its principal",
            ));
        }
        if config.keytab.overlap >= config.keytab.rotate_every {
            return Err(err(
                "workloads.keytab.overlap".into(),
                "must be shorter than `rotate_every`",
            ));
        }
        // kadmin manages one realm's database: its admin principal's. A principal of another
        // realm would be created there as junk, never one the realm's KDC serves.
        let admin = &config.mit_kadmin.principal;
        let realm = match admin.rsplit_once('@') {
            Some((name, realm))
                if !name.is_empty()
                    && !realm.is_empty()
                    && idbridge_kerberos::kadmin::plain_principal(admin) =>
            {
                realm
            }
            _ => {
                return Err(err(
                    "workloads.mit_kadmin.principal".into(),
                    format!("{admin:?} is not a principal `name[/instance]@REALM` with its realm"),
                ));
            }
        };
        for (i, m) in config.mappings.iter().enumerate() {
            let field = |f: &str| format!("workloads.mappings[{i}].{f}");
            if let Some(earlier) = config.mappings[..i].iter().position(|e| {
                (e.namespace == "*" || e.namespace == m.namespace)
                    && (e.serviceaccount == "*" || e.serviceaccount == m.serviceaccount)
            }) {
                return Err(err(
                    format!("workloads.mappings[{i}]"),
                    format!(
                        "never used: workloads.mappings[{earlier}] before it matches every serviceaccount it names (the first match decides: put the narrower entry first)"
                    ),
                ));
            }
            for (name, v) in [
                ("namespace", &m.namespace),
                ("serviceaccount", &m.serviceaccount),
            ] {
                if v != "*" && !k8s_name(v) {
                    return Err(err(
                        field(name),
                        format!("{v:?} is neither `*` nor a Kubernetes name"),
                    ));
                }
            }
            let rest = expand(&m.principal, "", "");
            if rest.contains(['{', '}']) {
                return Err(err(
                    field("principal"),
                    format!(
                        "{:?}: the only placeholders are {{sa}} and {{namespace}}",
                        m.principal
                    ),
                ));
            }
            // A sample expansion must be a principal idbridge hands to kadmin.
            let sample = expand(&m.principal, "ns", "sa");
            if !idbridge_kerberos::kadmin::plain_principal(&sample)
                || sample.matches('@').count() != 1
                || sample.ends_with('@')
            {
                return Err(err(
                    field("principal"),
                    format!(
                        "{:?} is not a principal `name[/instance]@REALM` (letters, digits, '.', '_', '-', '/', one '@' before the realm)",
                        m.principal
                    ),
                ));
            }
            let (_, mapped_realm) = sample.rsplit_once('@').unwrap_or_default();
            if mapped_realm != realm {
                return Err(err(
                    field("principal"),
                    format!(
                        "{:?} is in the realm {mapped_realm:?}, but kadmin manages {realm:?} (the realm of `workloads.mit_kadmin.principal`; realms are case-sensitive)",
                        m.principal
                    ),
                ));
            }
            if let Some(l) = m.lifetime
                && (l.as_secs() < 60 || l.as_secs() > cap)
            {
                return Err(err(
                    field("lifetime"),
                    format!("must be between 1m and `workloads.ccache_lifetime` ({cap}s)"),
                ));
            }
        }
        Ok(Self {
            entries: config.mappings.clone(),
            default_lifetime: cap,
        })
    }

    /// The principal `namespace`/`sa` may obtain: the first entry that matches.
    #[must_use]
    pub fn lookup(&self, namespace: &str, sa: &str) -> Option<Mapped> {
        if !k8s_name(namespace) || !k8s_name(sa) {
            return None;
        }
        self.entries.iter().enumerate().find_map(|(index, m)| {
            let ns_ok = m.namespace == "*" || m.namespace == namespace;
            let sa_ok = m.serviceaccount == "*" || m.serviceaccount == sa;
            (ns_ok && sa_ok).then(|| Mapped {
                principal: expand(&m.principal, namespace, sa),
                form: m.form,
                lifetime_secs: m.lifetime.map_or(self.default_lifetime, |l| l.as_secs()),
                explicit: m.namespace != "*" && m.serviceaccount != "*",
                index,
            })
        })
    }

    /// Whether some entry could give out `principal` (to a serviceaccount that exists or not):
    /// a revocation of a principal no entry can give is most likely a typing error.
    #[must_use]
    pub fn could_give(&self, principal: &str) -> bool {
        self.entries.iter().any(|m| {
            let mut t = m.principal.clone();
            if m.namespace != "*" {
                t = t.replace("{namespace}", &m.namespace);
            }
            if m.serviceaccount != "*" {
                t = t.replace("{sa}", &m.serviceaccount);
            }
            template_matches(&t, principal)
        })
    }

    /// How many entries there are.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none (never, once checked).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn config(yaml: &str) -> WorkloadsConfig {
        serde_yaml_ng::from_str(&format!(
            "krb5_conf: /etc/krb5.conf\nmit_kadmin: {{principal: a/admin@R, keytab: /k}}\n{yaml}"
        ))
        .unwrap()
    }

    #[test]
    fn the_first_matching_entry_decides_and_templates_expand() {
        let m = Mappings::new(&config(
            "mappings:\n\
             - {namespace: pay, serviceaccount: api, principal: api-svc@R, form: keytab}\n\
             - {namespace: pay, serviceaccount: '*', principal: '{sa}.{namespace}@R', lifetime: 10m}\n\
             - {namespace: '*', serviceaccount: web, principal: 'HTTP/{sa}.{namespace}.svc@R'}\n",
        ))
        .unwrap();
        let api = m.lookup("pay", "api").unwrap();
        assert_eq!(
            (api.principal.as_str(), api.form, api.explicit),
            ("api-svc@R", Form::Keytab, true)
        );
        let job = m.lookup("pay", "job").unwrap();
        assert_eq!(job.principal, "job.pay@R");
        assert_eq!((job.lifetime_secs, job.explicit), (600, false));
        let web = m.lookup("shop", "web").unwrap();
        assert_eq!(web.principal, "HTTP/web.shop.svc@R");
        assert_eq!((web.form, web.lifetime_secs), (Form::Ccache, 3600));
        assert_eq!(m.lookup("shop", "db"), None);
        // Names Kubernetes would not give never expand into a principal.
        assert_eq!(m.lookup("pay", "a b"), None);
        assert_eq!(m.lookup("pay", "x@EVIL"), None);

        // What a revocation by principal can name.
        for p in [
            "api-svc@R",
            "job.pay@R",
            "a.b-c.pay@R",
            "HTTP/web.shop.svc@R",
        ] {
            assert!(m.could_give(p), "{p}");
        }
        for p in [
            "api-svc@OTHER",
            "job.shop@R",
            ".pay@R",
            "HTTP/db.shop.svc@R",
            "HTTP/web.Shop.svc@R",
            "nobody@R",
        ] {
            assert!(!m.could_give(p), "{p}");
        }
    }

    #[test]
    fn bad_entries_are_refused_by_field() {
        for (yaml, field) in [
            ("mappings: []", "workloads.mappings"),
            (
                "mappings: [{namespace: 'Pay', serviceaccount: a, principal: a@R}]",
                "workloads.mappings[0].namespace",
            ),
            (
                "mappings: [{namespace: p, serviceaccount: a, principal: '{pod}@R'}]",
                "workloads.mappings[0].principal",
            ),
            (
                "mappings: [{namespace: p, serviceaccount: a, principal: 'no-realm'}]",
                "workloads.mappings[0].principal",
            ),
            (
                "mappings: [{namespace: p, serviceaccount: a, principal: 'a b@R'}]",
                "workloads.mappings[0].principal",
            ),
            (
                "mappings: [{namespace: p, serviceaccount: a, principal: a@R, lifetime: 2h}]",
                "workloads.mappings[0].lifetime",
            ),
            (
                "keytab: {rotate_every: 1h, overlap: 2h}\nmappings: [{namespace: p, serviceaccount: a, principal: a@R}]",
                "workloads.keytab.overlap",
            ),
            (
                "mappings: [{namespace: p, serviceaccount: a, principal: a@r}]",
                "workloads.mappings[0].principal",
            ),
            (
                "mappings: [{namespace: p, serviceaccount: a, principal: a@OTHER}]",
                "workloads.mappings[0].principal",
            ),
            (
                "mappings:\n- {namespace: p, serviceaccount: '*', principal: '{sa}@R'}\n- {namespace: p, serviceaccount: a, principal: a@R}",
                "workloads.mappings[1]",
            ),
            (
                "mappings:\n- {namespace: p, serviceaccount: a, principal: a@R}\n- {namespace: p, serviceaccount: a, principal: b@R}",
                "workloads.mappings[1]",
            ),
        ] {
            let e = Mappings::new(&config(yaml)).unwrap_err();
            assert_eq!(e.field, field, "{yaml}: {e}");
        }
        // The admin principal must say its realm.
        let mut no_realm = config("mappings: [{namespace: p, serviceaccount: a, principal: a@R}]");
        no_realm.mit_kadmin.principal = "idbridge/admin".into();
        let e = Mappings::new(&no_realm).unwrap_err();
        assert_eq!(e.field, "workloads.mit_kadmin.principal", "{e}");
    }
}
