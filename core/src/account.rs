//! The userAccount: the one identity every login method resolves to.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{AccountName, Error, GroupName, LabelKey, Namespace, Principal, UnixTime};

/// idbridge's own identifier for an account: a UUID assigned at creation and never reused. It is
/// the `sub` of every token and the `uid` Kubernetes sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AccountUid(uuid::Uuid);

impl AccountUid {
    /// Wraps a UUID chosen by the caller (the store assigns new ones with [`AccountUid::random`]).
    #[must_use]
    pub fn from_uuid(u: uuid::Uuid) -> Self {
        Self(u)
    }

    /// A fresh random (version 4) UID.
    #[must_use]
    pub fn random() -> Self {
        Self(uuid::Uuid::new_v4())
    }
}

impl FromStr for AccountUid {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        uuid::Uuid::parse_str(s)
            .map(Self)
            .map_err(|_| Error::Invalid {
                what: "account UID",
                value: s.to_owned(),
                why: "must be a UUID",
            })
    }
}

impl TryFrom<String> for AccountUid {
    type Error = Error;
    fn try_from(s: String) -> Result<Self, Error> {
        s.parse()
    }
}

impl From<AccountUid> for String {
    fn from(u: AccountUid) -> String {
        u.to_string()
    }
}

impl fmt::Display for AccountUid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(
            self.0
                .hyphenated()
                .encode_lower(&mut uuid::Uuid::encode_buffer()),
        )
    }
}

/// Labels on an account, as on Kubernetes objects.
pub type Labels = BTreeMap<LabelKey, String>;

/// An identity outside idbridge linked to exactly one account.
/// Whether a login method's first login creates the account, or admits only users who have one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Provisioning {
    /// A first login creates the account ("just in time").
    Jit,
    /// Only users whose account already exists (and is linked) may log in.
    Existing,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ExternalIdentity {
    /// A directory entry's stable id (`objectGUID` or `entryUUID`).
    Directory {
        /// The id as text.
        id: String,
    },
    /// A Kerberos principal.
    Kerberos {
        /// The principal.
        principal: Principal,
    },
    /// An upstream OpenID provider's subject.
    Oidc {
        /// The provider's issuer URL.
        iss: String,
        /// The subject at that issuer.
        sub: String,
    },
    /// A user the trusted authenticating proxy names (its user header).
    Proxy {
        /// The name the proxy asserted.
        name: AccountName,
    },
}

impl ExternalIdentity {
    /// A stable text key, unique per identity, used by stores to enforce one account per identity.
    #[must_use]
    pub fn key(&self) -> String {
        match self {
            Self::Directory { id } => format!("directory:{id}"),
            Self::Kerberos { principal } => format!("kerberos:{principal}"),
            Self::Oidc { iss, sub } => format!("oidc:{}:{iss}:{sub}", iss.len()),
            Self::Proxy { name } => format!("proxy:{name}"),
        }
    }
}

/// A stored userAccount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserAccount {
    /// idbridge's own immutable id.
    pub uid: AccountUid,
    /// The unique name; the Kubernetes username.
    pub name: AccountName,
    /// Groups the account belongs to, as they appear in tokens.
    pub groups: BTreeSet<GroupName>,
    /// Labels (the sync worker writes directory facts here).
    pub labels: Labels,
    /// The namespace clients should default to.
    pub default_namespace: Option<Namespace>,
    /// A disabled account is refused everywhere at once.
    pub disabled: bool,
    /// External identities linked to this account.
    pub identities: BTreeSet<ExternalIdentity>,
    /// When the account was created.
    pub created_at: UnixTime,
}

/// What is needed to create an account; the store assigns the UID and creation time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewAccount {
    /// The unique name.
    pub name: AccountName,
    /// Groups.
    #[serde(default)]
    pub groups: BTreeSet<GroupName>,
    /// Labels.
    #[serde(default)]
    pub labels: Labels,
    /// Default namespace.
    #[serde(default)]
    pub default_namespace: Option<Namespace>,
    /// Whether the account starts disabled.
    #[serde(default)]
    pub disabled: bool,
    /// External identities to link.
    #[serde(default)]
    pub identities: BTreeSet<ExternalIdentity>,
}

impl NewAccount {
    /// An enabled account with only a name.
    #[must_use]
    pub fn named(name: AccountName) -> Self {
        Self {
            name,
            groups: BTreeSet::new(),
            labels: Labels::new(),
            default_namespace: None,
            disabled: false,
            identities: BTreeSet::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_round_trips_and_rejects_garbage() {
        let u = AccountUid::random();
        assert_eq!(u.to_string().parse::<AccountUid>().unwrap(), u);
        assert!("not-a-uuid".parse::<AccountUid>().is_err());
    }

    #[test]
    fn identity_keys_do_not_collide_across_kinds() {
        let a = ExternalIdentity::Oidc {
            iss: "https://a:b".into(),
            sub: "c".into(),
        };
        let b = ExternalIdentity::Oidc {
            iss: "https://a".into(),
            sub: "b:c".into(),
        };
        assert_ne!(a.key(), b.key());
    }

    #[test]
    fn new_account_yaml_shape_refuses_unknown_fields() {
        let ok: NewAccount =
            serde_json::from_str(r#"{"name":"alice","groups":["dev"],"default_namespace":"dev"}"#)
                .unwrap();
        assert_eq!(ok.name.as_str(), "alice");
        assert!(serde_json::from_str::<NewAccount>(r#"{"name":"a","group":["x"]}"#).is_err());
    }
}
