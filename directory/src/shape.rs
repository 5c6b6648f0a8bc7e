//! Group shaping for tokens: include and exclude patterns, a prefix, and a cap per audience, so
//! a user in hundreds of groups still gets a token that fits in an HTTP header.

use std::collections::BTreeMap;

/// How directory groups become token groups.
#[derive(Debug, Clone, Default)]
pub(crate) struct Shaping {
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    pub prefix: String,
    pub max: usize,
    pub max_per_audience: BTreeMap<String, usize>,
}

/// `*` matches any run of characters, `?` one character; case-insensitive, as directories
/// compare names.
pub(crate) fn glob(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.to_lowercase().chars().collect();
    let n: Vec<char> = name.to_lowercase().chars().collect();
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

impl Shaping {
    /// The groups a token may carry, sorted: included, not excluded, prefixed, never a
    /// reserved name; no cap.
    pub(crate) fn names(&self, groups: &[String]) -> Vec<String> {
        let mut out: Vec<String> = groups
            .iter()
            .filter(|g| self.include.is_empty() || self.include.iter().any(|p| glob(p, g)))
            .filter(|g| !self.exclude.iter().any(|p| glob(p, g)))
            .map(|g| format!("{}{g}", self.prefix))
            .filter(|g| !idbridge_core::is_reserved(g) && !g.is_empty())
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// The groups a token for `audience` carries, sorted, and how many the cap dropped.
    pub(crate) fn apply(&self, groups: &[String], audience: &str) -> (Vec<String>, usize) {
        let mut out = self.names(groups);
        let cap = self
            .max_per_audience
            .get(audience)
            .copied()
            .unwrap_or(self.max);
        let dropped = out.len().saturating_sub(cap);
        out.truncate(cap);
        (out, dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matches_like_a_shell() {
        assert!(glob("k8s-*", "K8S-Admins"));
        assert!(glob("*admins", "Domain Admins"));
        assert!(glob("a?c", "abc"));
        assert!(!glob("a?c", "abbc"));
        assert!(glob("*", ""));
        assert!(glob("a*b*c", "aXXbYYc"));
        assert!(!glob("a*b*c", "aXXbYY"));
    }

    #[test]
    fn shaping_filters_prefixes_and_caps_per_audience() {
        let s = Shaping {
            include: vec!["k8s-*".into(), "ops".into()],
            exclude: vec!["*-legacy".into()],
            prefix: "ad:".into(),
            max: 2,
            max_per_audience: [("big".to_owned(), 10)].into(),
        };
        let groups: Vec<String> = [
            "k8s-dev",
            "k8s-old-legacy",
            "ops",
            "Domain Users",
            "k8s-admin",
        ]
        .map(String::from)
        .into();
        let (small, dropped) = s.apply(&groups, "kubernetes");
        assert_eq!(small, ["ad:k8s-admin", "ad:k8s-dev"]);
        assert_eq!(dropped, 1);
        let (big, dropped) = s.apply(&groups, "big");
        assert_eq!(big, ["ad:k8s-admin", "ad:k8s-dev", "ad:ops"]);
        assert_eq!(dropped, 0);
    }

    #[test]
    fn system_groups_never_pass() {
        let s = Shaping {
            max: 10,
            ..Shaping::default()
        };
        let (g, _) = s.apply(&["system:masters".into(), "dev".into()], "k");
        assert_eq!(g, ["dev"]);
    }
}
