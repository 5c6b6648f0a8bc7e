//! From an authenticated principal to an account name: allowed realms, then `auth_to_local`-
//! style rules, then the default (strip the realm of a one-component principal). Pure logic.

use idbridge_core::{AccountName, Principal};
use regex::Regex;

use crate::ConfigError;
use crate::config::{KerberosConfig, MappingRule};

/// Why a principal has no account name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MapError {
    /// The principal's realm is not in `kerberos.realms`.
    #[error("principals of realm {0:?} may not log in here")]
    RealmNotAllowed(String),
    /// A principal of several components (`user/admin@R`) that no rule maps.
    #[error("no mapping rule in `kerberos.rules` names an account for {0}")]
    NoRule(String),
    /// The mapped name is not a valid account name.
    #[error("{principal} maps to {name:?}, which is not a valid account name: {why}")]
    BadName {
        /// The principal.
        principal: String,
        /// What it mapped to.
        name: String,
        /// Why that name is refused.
        why: String,
    },
}

/// Maps principals to account names.
#[derive(Debug, Clone)]
pub struct Mapper {
    realms: Vec<String>,
    strip_realm: bool,
    rules: Vec<(Regex, String)>,
}

impl Mapper {
    /// The mapping `cfg` describes.
    ///
    /// # Errors
    /// A rule whose pattern does not compile, or no realm, naming the field.
    pub fn new(cfg: &KerberosConfig) -> Result<Self, ConfigError> {
        if cfg.realms.is_empty() || cfg.realms.iter().any(String::is_empty) {
            return Err(ConfigError::new(
                "kerberos.realms",
                "list at least one realm whose users may log in, e.g. [EXAMPLE.COM]",
            ));
        }
        let rules = cfg
            .rules
            .iter()
            .enumerate()
            .map(|(i, MappingRule { pattern, name })| {
                // The pattern must match the whole principal, as auth_to_local rules do.
                Regex::new(&format!("^(?:{pattern})$"))
                    .map(|r| (r, name.clone()))
                    .map_err(|e| {
                        ConfigError::new(&format!("kerberos.rules[{i}].match"), &e.to_string())
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            realms: cfg.realms.clone(),
            strip_realm: cfg.strip_realm,
            rules,
        })
    }

    /// Whether users of `realm` may log in.
    #[must_use]
    pub fn allows_realm(&self, realm: &str) -> bool {
        self.realms.iter().any(|r| r == realm)
    }

    /// The account name for `principal`.
    ///
    /// # Errors
    /// An unlisted realm, a multi-component principal no rule maps, or a name that is not a
    /// valid account name.
    pub fn account_name(&self, principal: &Principal) -> Result<AccountName, MapError> {
        let realm = principal.realm();
        if !self.allows_realm(realm) {
            return Err(MapError::RealmNotAllowed(realm.to_owned()));
        }
        let text = principal.as_str();
        let name = match self.rules.iter().find(|(re, _)| re.is_match(text)) {
            Some((re, replacement)) => re.replace(text, replacement.as_str()).into_owned(),
            None => {
                let local = &text[..text.len() - realm.len() - 1];
                if local.contains('/') {
                    return Err(MapError::NoRule(text.to_owned()));
                }
                if self.strip_realm {
                    local.to_owned()
                } else {
                    text.to_owned()
                }
            }
        };
        name.parse()
            .map_err(|e: idbridge_core::Error| MapError::BadName {
                principal: text.to_owned(),
                name,
                why: e.to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapper(yaml: &str) -> Mapper {
        let cfg: KerberosConfig = serde_yaml_ng::from_str(yaml).unwrap();
        Mapper::new(&cfg).unwrap()
    }

    fn map(m: &Mapper, p: &str) -> Result<String, MapError> {
        m.account_name(&p.parse().unwrap())
            .map(|n| n.as_str().to_owned())
    }

    #[test]
    fn default_strips_the_realm_of_listed_realms_only() {
        let m = mapper("keytab: /k\nrealms: [EXAMPLE.COM, CORP.EXAMPLE.COM]\n");
        assert_eq!(map(&m, "alice@EXAMPLE.COM").unwrap(), "alice");
        assert_eq!(map(&m, "bob@CORP.EXAMPLE.COM").unwrap(), "bob");
        assert_eq!(
            map(&m, "alice@EVIL.COM"),
            Err(MapError::RealmNotAllowed("EVIL.COM".into()))
        );
        // Realms are case-sensitive.
        assert!(map(&m, "alice@example.com").is_err());
        assert_eq!(
            map(&m, "alice/admin@EXAMPLE.COM"),
            Err(MapError::NoRule("alice/admin@EXAMPLE.COM".into()))
        );
    }

    #[test]
    fn whole_principal_when_the_realm_is_kept() {
        let m = mapper("keytab: /k\nrealms: [EXAMPLE.COM]\nstrip_realm: false\n");
        assert_eq!(map(&m, "alice@EXAMPLE.COM").unwrap(), "alice@EXAMPLE.COM");
    }

    #[test]
    fn rules_match_the_whole_principal_in_order() {
        let m = mapper(
            r"keytab: /k
realms: [EXAMPLE.COM]
rules:
  - match: '([^/@]+)/admin@EXAMPLE\.COM'
    name: '$1-admin'
  - match: 'svc-(.+)@EXAMPLE\.COM'
    name: 'robot-$1'
  - match: 'root@EXAMPLE\.COM'
    name: 'system:masters'
",
        );
        assert_eq!(map(&m, "alice/admin@EXAMPLE.COM").unwrap(), "alice-admin");
        assert_eq!(map(&m, "svc-build@EXAMPLE.COM").unwrap(), "robot-build");
        // Not anchored by the author, anchored anyway: "xsvc-a@…" is no match for rule 2.
        assert_eq!(map(&m, "xsvc-a@EXAMPLE.COM").unwrap(), "xsvc-a");
        assert!(matches!(
            map(&m, "root@EXAMPLE.COM"),
            Err(MapError::BadName { .. })
        ));
    }

    #[test]
    fn config_errors_name_the_field() {
        let cfg: KerberosConfig =
            serde_yaml_ng::from_str("keytab: /k\nrealms: [A]\nrules: [{match: '(', name: x}]\n")
                .unwrap();
        assert!(
            Mapper::new(&cfg)
                .unwrap_err()
                .to_string()
                .contains("kerberos.rules[0].match")
        );
        let cfg: KerberosConfig = serde_yaml_ng::from_str("keytab: /k\nrealms: []\n").unwrap();
        assert!(
            Mapper::new(&cfg)
                .unwrap_err()
                .to_string()
                .contains("kerberos.realms")
        );
    }
}
