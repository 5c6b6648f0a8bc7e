//! The `sync` config section: how often, how directory entries become accounts, the rules for
//! labels and namespaces, and the guards. [`SyncConfig::rules`] checks every field and names
//! the one at fault.

use idbridge_core::{HumanDuration, Namespace};
use regex::Regex;
use serde::Deserialize;

use crate::labels;

/// The `sync` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncConfig {
    /// Time between runs inside `idbridge serve` (a run that is still going delays the next).
    #[serde(default = "default_interval")]
    pub interval: HumanDuration,
    /// How the directory's name becomes the account name: `preserve` (as the directory spells
    /// it, as a first login does) or `lower` (lower case; directories compare names without
    /// case, so this keeps one spelling).
    #[serde(default)]
    pub name_case: NameCase,
    /// Create an account for every active directory user that has none (otherwise only
    /// accounts that exist, made at a first login, are kept in step).
    #[serde(default = "yes")]
    pub create_accounts: bool,
    /// Label rules.
    #[serde(default)]
    pub labels: LabelRules,
    /// The default namespace of each account: unset (the default: left as it is), a
    /// `template` such as `u-{name}`, or `mapped`, the first namespace (by name) the
    /// `namespaces` rules give the user's groups.
    #[serde(default)]
    pub default_namespace: Option<DefaultNamespace>,
    /// Group → namespace access rules.
    #[serde(default)]
    pub namespaces: Vec<NamespaceRule>,
    /// What stops a run from applying.
    #[serde(default)]
    pub guards: Guards,
}

fn default_interval() -> HumanDuration {
    HumanDuration::from_secs(15 * 60)
}

fn yes() -> bool {
    true
}

/// How the directory's name becomes the account name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NameCase {
    /// As the directory spells it.
    #[default]
    Preserve,
    /// Lower case (Unicode lower-casing).
    Lower,
}

/// Label rules.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelRules {
    /// One `groups.idbridge.io/<group>: member` label per group (see the label key rule).
    #[serde(default = "yes")]
    pub groups: bool,
    /// Role labels: members of a matching group get `roles.idbridge.io/<role>: "true"`.
    #[serde(default)]
    pub roles: Vec<RoleRule>,
}

impl Default for LabelRules {
    fn default() -> Self {
        Self {
            groups: true,
            roles: Vec::new(),
        }
    }
}

/// Which groups a rule is about: one group by its exact name, or every group a regular
/// expression matches whole (its captures `$1`, `${name}` can be used in templates).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupMatch {
    /// A group name, exactly (as tokens carry it, prefix included).
    #[serde(default)]
    pub group: Option<String>,
    /// A regular expression the whole group name must match.
    #[serde(default)]
    pub regex: Option<String>,
}

/// A role label rule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleRule {
    /// The groups.
    #[serde(flatten)]
    pub matches: GroupMatch,
    /// The role's label name.
    pub role: String,
}

/// The default namespace rule: `mapped`, or `{template: "u-{name}"}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "DefaultNamespaceText")]
pub enum DefaultNamespace {
    /// `{name}` is the account name, made a valid namespace name (lower case, other characters
    /// `-`).
    Template(String),
    /// The first namespace the `namespaces` rules give the user's groups.
    Mapped,
}

/// How [`DefaultNamespace`] is written.
#[derive(Deserialize)]
#[serde(untagged)]
enum DefaultNamespaceText {
    Word(String),
    Template { template: String },
}

impl TryFrom<DefaultNamespaceText> for DefaultNamespace {
    type Error = String;
    fn try_from(t: DefaultNamespaceText) -> Result<Self, String> {
        match t {
            DefaultNamespaceText::Word(w) if w == "mapped" => Ok(Self::Mapped),
            DefaultNamespaceText::Word(w) => Err(format!(
                "{w:?}: expected `mapped` or `{{template: \"u-{{name}}\"}}`"
            )),
            DefaultNamespaceText::Template { template } => Ok(Self::Template(template)),
        }
    }
}

/// A group → namespace access rule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceRule {
    /// The groups.
    #[serde(flatten)]
    pub matches: GroupMatch,
    /// The namespace: a name, or a template using the regex's captures (`team-$1`); lower-cased.
    pub namespace: String,
    /// The ClusterRole bound to the group there: `view`, `edit`, `admin` or a custom one's
    /// name (a template too).
    pub role: String,
    /// Create the namespace when it does not exist (never deleted by sync).
    #[serde(default)]
    pub create: bool,
    /// Labels put on a namespace sync creates.
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// A ResourceQuota `spec` for the namespace.
    #[serde(default)]
    pub quota: Option<serde_json::Value>,
    /// A LimitRange `spec` for the namespace.
    #[serde(default)]
    pub limits: Option<serde_json::Value>,
}

/// What stops a run from applying without `--force`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Guards {
    /// The most accounts one run may disable, as a percentage of the enabled accounts linked
    /// to the directory.
    #[serde(default = "default_percent")]
    pub max_disable_percent: f64,
    /// The most accounts one run may disable.
    #[serde(default = "default_count")]
    pub max_disable_count: usize,
}

impl Default for Guards {
    fn default() -> Self {
        Self {
            max_disable_percent: default_percent(),
            max_disable_count: default_count(),
        }
    }
}

fn default_percent() -> f64 {
    10.0
}

fn default_count() -> usize {
    500
}

/// A compiled [`GroupMatch`].
#[derive(Debug, Clone)]
pub enum Matcher {
    /// One group.
    Exact(String),
    /// Groups matching the expression whole.
    Regex(Regex),
}

impl Matcher {
    fn new(m: &GroupMatch, field: &str) -> Result<Self, String> {
        match (&m.group, &m.regex) {
            (Some(g), None) if !g.is_empty() => Ok(Self::Exact(g.clone())),
            (None, Some(r)) => Regex::new(&format!("^(?:{r})$"))
                .map(Self::Regex)
                .map_err(|e| format!("field `{field}.regex`: {e}")),
            (Some(_), None) => Err(format!("field `{field}.group`: must not be empty")),
            _ => Err(format!(
                "field `{field}`: give either `group` (a name) or `regex`, not both"
            )),
        }
    }

    /// Whether the group matches.
    #[must_use]
    pub fn matches(&self, group: &str) -> bool {
        match self {
            Self::Exact(g) => g == group,
            Self::Regex(r) => r.is_match(group),
        }
    }

    /// `template` with the captures of `group` put in (`$1`, `${name}`); `None` when the group
    /// does not match.
    #[must_use]
    pub fn expand(&self, group: &str, template: &str) -> Option<String> {
        match self {
            Self::Exact(g) => (g == group).then(|| template.to_owned()),
            Self::Regex(r) => {
                let caps = r.captures(group)?;
                let mut out = String::new();
                caps.expand(template, &mut out);
                Some(out)
            }
        }
    }
}

/// A checked namespace rule.
#[derive(Debug, Clone)]
pub struct CompiledNamespaceRule {
    /// Which groups.
    pub matcher: Matcher,
    /// The rule as written.
    pub rule: NamespaceRule,
    /// Where it is in the config, for messages (`sync.namespaces[2]`).
    pub field: String,
}

/// The config, checked and compiled: what the planner works from.
#[derive(Debug, Clone)]
pub struct Rules {
    /// See [`SyncConfig::name_case`].
    pub name_case: NameCase,
    /// See [`SyncConfig::create_accounts`].
    pub create_accounts: bool,
    /// See [`LabelRules::groups`].
    pub group_labels: bool,
    /// Role label rules, compiled.
    pub roles: Vec<(Matcher, String)>,
    /// See [`SyncConfig::default_namespace`].
    pub default_namespace: Option<DefaultNamespace>,
    /// Namespace rules, compiled.
    pub namespaces: Vec<CompiledNamespaceRule>,
    /// See [`Guards`].
    pub guards: Guards,
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            name_case: NameCase::Preserve,
            create_accounts: true,
            group_labels: true,
            roles: Vec::new(),
            default_namespace: None,
            namespaces: Vec::new(),
            guards: Guards::default(),
        }
    }
}

impl SyncConfig {
    /// Checks every field and compiles the rules; the error names the field.
    ///
    /// # Errors
    /// A message naming the field at fault.
    pub fn rules(&self) -> Result<Rules, String> {
        if self.interval.get() < std::time::Duration::from_secs(10) {
            return Err("field `sync.interval`: must be at least 10s".into());
        }
        let g = &self.guards;
        if !(0.0..=100.0).contains(&g.max_disable_percent) {
            return Err("field `sync.guards.max_disable_percent`: must be 0 to 100".into());
        }
        let mut roles = Vec::new();
        for (i, r) in self.labels.roles.iter().enumerate() {
            let field = format!("sync.labels.roles[{i}]");
            if !labels::is_label_name(&r.role) {
                return Err(format!(
                    "field `{field}.role`: {:?} is not a valid label name (letters, digits, '-', '_', '.', at most 63)",
                    r.role
                ));
            }
            roles.push((Matcher::new(&r.matches, &field)?, r.role.clone()));
        }
        let mut namespaces = Vec::new();
        for (i, r) in self.namespaces.iter().enumerate() {
            let field = format!("sync.namespaces[{i}]");
            let matcher = Matcher::new(&r.matches, &field)?;
            if let Matcher::Regex(re) = &matcher {
                // A template must name captures the expression has, and can give a valid name.
                check_template(&field, "namespace", &r.namespace, re, |t| {
                    t.to_lowercase().parse::<Namespace>().is_ok()
                })?;
                check_template(&field, "role", &r.role, re, valid_role_name)?;
            }
            if let Matcher::Exact(_) = matcher {
                if r.namespace.parse::<Namespace>().is_err() {
                    return Err(format!(
                        "field `{field}.namespace`: {:?} is not a namespace name (lower-case letters, digits and '-', at most 63)",
                        r.namespace
                    ));
                }
                if !valid_role_name(&r.role) {
                    return Err(format!(
                        "field `{field}.role`: {:?} is not a ClusterRole name",
                        r.role
                    ));
                }
            }
            for (k, v) in &r.labels {
                if k.parse::<idbridge_core::LabelKey>().is_err() || !labels::is_label_value(v) {
                    return Err(format!(
                        "field `{field}.labels`: {k}: {v} is not a valid label"
                    ));
                }
            }
            for (what, spec) in [("quota", &r.quota), ("limits", &r.limits)] {
                if spec.as_ref().is_some_and(|s| !s.is_object()) {
                    return Err(format!(
                        "field `{field}.{what}`: must be the object's spec (a mapping)"
                    ));
                }
            }
            namespaces.push(CompiledNamespaceRule {
                matcher,
                rule: r.clone(),
                field,
            });
        }
        if let Some(DefaultNamespace::Template(t)) = &self.default_namespace
            && !t.contains("{name}")
            && t.parse::<Namespace>().is_err()
        {
            return Err(format!(
                "field `sync.default_namespace.template`: {t:?} is neither a namespace name nor a template with {{name}}"
            ));
        }
        if matches!(self.default_namespace, Some(DefaultNamespace::Mapped)) && namespaces.is_empty()
        {
            return Err(
                "field `sync.default_namespace`: `mapped` needs at least one `sync.namespaces` rule"
                    .into(),
            );
        }
        Ok(Rules {
            name_case: self.name_case,
            create_accounts: self.create_accounts,
            group_labels: self.labels.groups,
            roles,
            default_namespace: self.default_namespace.clone(),
            namespaces,
            guards: self.guards.clone(),
        })
    }
}

/// The rules of a `sync` section written as YAML, for tests.
#[cfg(test)]
pub(crate) fn test_rules(yaml: &str) -> Rules {
    serde_yaml_ng::from_str::<SyncConfig>(yaml)
        .unwrap_or_else(|e| panic!("{yaml}: {e}"))
        .rules()
        .unwrap_or_else(|e| panic!("{yaml}: {e}"))
}

/// Whether `s` may name a ClusterRole (a path segment name: no `/`, `%`, not `.` or `..`;
/// and no white space, which no real role name has).
#[must_use]
pub fn valid_role_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s != "."
        && s != ".."
        && !s.contains(['/', '%'])
        && !s.chars().any(|c| c.is_control() || c.is_whitespace())
}

/// Checks a template of a regex rule: every capture it names (`$1`, `${team}`) exists, and
/// with each capture standing for a plain word it passes `valid`.
fn check_template(
    field: &str,
    what: &str,
    template: &str,
    re: &Regex,
    valid: impl Fn(&str) -> bool,
) -> Result<(), String> {
    let refs = Regex::new(r"\$(\{[^}]*\}|[A-Za-z0-9_]+)").map_err(|e| e.to_string())?;
    let names: Vec<&str> = re.capture_names().flatten().collect();
    for m in refs.captures_iter(template) {
        let r = m[1].trim_start_matches('{').trim_end_matches('}');
        let known = match r.parse::<usize>() {
            Ok(n) => n < re.captures_len(),
            Err(_) => names.contains(&r),
        };
        if !known {
            return Err(format!(
                "field `{field}.{what}`: {template:?} names the capture ${r}, which the regex does not have"
            ));
        }
    }
    let sample = refs.replace_all(template, "a");
    if !valid(&sample) {
        return Err(format!(
            "field `{field}.{what}`: {template:?} cannot give a valid name (with each capture as a plain word it gives {sample:?})"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(yaml: &str) -> SyncConfig {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    #[test]
    fn defaults_are_safe_and_complete() {
        let r = cfg("{}").rules().unwrap();
        assert!(r.create_accounts && r.group_labels);
        assert_eq!(r.guards.max_disable_count, 500);
        assert!((r.guards.max_disable_percent - 10.0).abs() < f64::EPSILON);
        assert!(r.default_namespace.is_none());
    }

    #[test]
    fn errors_name_the_field() {
        for (yaml, field) in [
            ("interval: 1s", "sync.interval"),
            (
                "guards: {max_disable_percent: 150}",
                "sync.guards.max_disable_percent",
            ),
            (
                "labels: {roles: [{group: a, role: 'not ok'}]}",
                "sync.labels.roles[0].role",
            ),
            (
                "labels: {roles: [{group: a, regex: b, role: x}]}",
                "sync.labels.roles[0]",
            ),
            (
                "labels: {roles: [{regex: '(', role: x}]}",
                "sync.labels.roles[0].regex",
            ),
            (
                "namespaces: [{group: a, namespace: Team_A, role: edit}]",
                "sync.namespaces[0].namespace",
            ),
            (
                "namespaces: [{group: a, namespace: a, role: 'x/y'}]",
                "sync.namespaces[0].role",
            ),
            (
                "namespaces: [{group: a, namespace: a, role: edit, quota: 3}]",
                "sync.namespaces[0].quota",
            ),
            ("default_namespace: mapped", "sync.default_namespace"),
            (
                "namespaces: [{regex: 'k8s-(.+)', namespace: 'team-$2', role: edit}]",
                "sync.namespaces[0].namespace",
            ),
            (
                "namespaces: [{regex: 'k8s-(.+)', namespace: 'team_$1', role: edit}]",
                "sync.namespaces[0].namespace",
            ),
            (
                "namespaces: [{regex: 'k8s-(?P<t>.+)', namespace: 'team-${x}', role: edit}]",
                "sync.namespaces[0].namespace",
            ),
            (
                "namespaces: [{regex: 'k8s-(.+)', namespace: 'team-$1', role: 'Edit Role'}]",
                "sync.namespaces[0].role",
            ),
            (
                "namespaces: [{group: a, namespace: a, role: 'Edit Role'}]",
                "sync.namespaces[0].role",
            ),
            (
                "default_namespace: {template: Bad}",
                "sync.default_namespace.template",
            ),
        ] {
            let e = cfg(yaml).rules().unwrap_err();
            assert!(e.contains(&format!("`{field}")), "{yaml}: {e}");
        }
        assert!(serde_yaml_ng::from_str::<SyncConfig>("bogus: 1").is_err());
    }

    #[test]
    fn regex_rules_match_whole_names_and_expand_captures() {
        let m = Matcher::new(
            &GroupMatch {
                group: None,
                regex: Some("k8s-(?P<team>[a-z]+)-(admins|devs)".into()),
            },
            "f",
        )
        .unwrap();
        assert!(m.matches("k8s-payments-devs"));
        assert!(!m.matches("xk8s-payments-devs"));
        assert!(!m.matches("k8s-payments-devs-old"));
        assert_eq!(
            m.expand("k8s-payments-admins", "team-${team}").as_deref(),
            Some("team-payments")
        );
        assert_eq!(m.expand("other", "team-$1"), None);
    }
}
