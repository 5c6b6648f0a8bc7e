//! Validating newtypes for names that end up in tokens, Kubernetes objects and LDAP queries.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::Error;

use crate::protocol::RESERVED_PREFIX;

fn check_text(what: &'static str, s: &str, max: usize) -> Result<(), Error> {
    check_plain(what, s, max)?;
    if s.trim() != s {
        return Err(Error::Invalid {
            what,
            value: s.to_owned(),
            why: "leading or trailing white space is not allowed",
        });
    }
    if s.starts_with(RESERVED_PREFIX) {
        return Err(Error::Reserved {
            what,
            value: s.to_owned(),
            prefix: RESERVED_PREFIX,
        });
    }
    Ok(())
}

macro_rules! string_newtype {
    // A value that reads as its text in messages (`{:?}` shows `"x"`, as a string would).
    (transparent $(#[$doc:meta])* $name:ident, $what:literal, $check:expr) => {
        string_newtype!(@define $(#[$doc])* $name, $what, $check);

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }
    };
    ($(#[$doc:meta])* $name:ident, $what:literal, $check:expr) => {
        string_newtype!(@define #[derive(Debug)] $(#[$doc])* $name, $what, $check);
    };
    (@define $(#[$doc:meta])* $name:ident, $what:literal, $check:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// The name as text.
            #[must_use]
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = Error;
            fn try_from(s: String) -> Result<Self, Error> {
                let check: fn(&str) -> Result<(), Error> = $check;
                check(&s)?;
                Ok(Self(s))
            }
        }

        impl FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self, Error> {
                Self::try_from(s.to_owned())
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                // `pad` so that width and alignment (`{:<24}`) work in tables.
                f.pad(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

string_newtype!(
    /// A userAccount's unique, human-readable name; the Kubernetes username (before any prefix).
    AccountName,
    "account name",
    |s| check_text("account name", s, 253)
);

string_newtype!(
    /// A group name as it appears in tokens and TokenReview responses (before any prefix).
    GroupName,
    "group name",
    |s| check_text("group name", s, 256)
);

string_newtype!(
    /// A Kubernetes namespace name (an RFC 1123 DNS label).
    Namespace,
    "namespace",
    check_namespace
);

string_newtype!(
    /// A label key on a userAccount: an optional DNS-subdomain prefix and `/`, then a name.
    LabelKey,
    "label key",
    check_label_key
);

string_newtype!(
    /// A Kerberos principal (RFC 4120) in its text form `primary[/instance]@REALM`.
    Principal,
    "Kerberos principal",
    check_principal
);

string_newtype!(
    transparent
    /// An OAuth client's `client_id`: 1 to 128 printable characters.
    ClientId,
    "client id",
    |s| check_plain("client id", s, 128)
);

string_newtype!(
    transparent
    /// An audience a token is for (`aud`): a Kubernetes API audience, a service that accepts
    /// idbridge tokens, or idbridge's own issuer URL (RFC 7519's StringOrURI). 1 to 512
    /// characters, without control characters.
    Audience,
    "audience",
    |s| check_plain("audience", s, 512)
);

/// Text that travels as is (protocol identifiers): not empty, at most `max` characters, no
/// control characters.
fn check_plain(what: &'static str, s: &str, max: usize) -> Result<(), Error> {
    if s.is_empty() {
        return Err(Error::Empty { what });
    }
    if s.chars().count() > max {
        return Err(Error::TooLong { what, max });
    }
    if s.chars().any(char::is_control) {
        return Err(Error::Invalid {
            what,
            value: s.escape_debug().to_string(),
            why: "control characters are not allowed",
        });
    }
    Ok(())
}

macro_rules! str_eq {
    ($($name:ident),*) => {$(
        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
    )*};
}

str_eq!(ClientId, Audience);

impl ClientId {
    /// `idbridge-cli`, the built-in first-party public client.
    #[must_use]
    pub fn cli() -> Self {
        Self("idbridge-cli".to_owned())
    }
}

impl Audience {
    /// `kubernetes`, the default audience of a cluster's API server.
    #[must_use]
    pub fn kubernetes() -> Self {
        Self("kubernetes".to_owned())
    }
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn check_namespace(s: &str) -> Result<(), Error> {
    if s.is_empty() {
        return Err(Error::Empty { what: "namespace" });
    }
    if !is_dns_label(s) {
        return Err(Error::Invalid {
            what: "namespace",
            value: s.to_owned(),
            why: "must be at most 63 lower-case letters, digits or '-', starting and ending with a letter or digit",
        });
    }
    Ok(())
}

fn check_label_key(s: &str) -> Result<(), Error> {
    const WHAT: &str = "label key";
    if s.is_empty() {
        return Err(Error::Empty { what: WHAT });
    }
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric();
    let prefix_ok = prefix.is_none_or(|p| p.len() <= 253 && p.split('.').all(is_dns_label));
    if name_ok && prefix_ok {
        Ok(())
    } else {
        Err(Error::Invalid {
            what: WHAT,
            value: s.to_owned(),
            why: "must be [prefix/]name as for Kubernetes labels",
        })
    }
}

fn check_principal(s: &str) -> Result<(), Error> {
    const WHAT: &str = "Kerberos principal";
    check_text(WHAT, s, 1024)?;
    let Some((name, realm)) = s.rsplit_once('@') else {
        return Err(Error::Invalid {
            what: WHAT,
            value: s.to_owned(),
            why: "must name a realm: primary[/instance]@REALM",
        });
    };
    if name.is_empty() || realm.is_empty() || name.split('/').any(str::is_empty) {
        return Err(Error::Invalid {
            what: WHAT,
            value: s.to_owned(),
            why: "must be primary[/instance]@REALM with no empty component",
        });
    }
    Ok(())
}

impl Principal {
    /// The realm, the part after the last `@`.
    #[must_use]
    pub fn realm(&self) -> &str {
        self.0.rsplit_once('@').map_or("", |(_, r)| r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_names_refuse_reserved_and_control_characters() {
        assert!("alice".parse::<AccountName>().is_ok());
        assert!("alice@EXAMPLE.COM".parse::<AccountName>().is_ok());
        assert!(matches!(
            "system:admin".parse::<AccountName>(),
            Err(Error::Reserved { .. })
        ));
        assert!(matches!(
            "".parse::<AccountName>(),
            Err(Error::Empty { .. })
        ));
        assert!(matches!(
            "a\nb".parse::<AccountName>(),
            Err(Error::Invalid { .. })
        ));
        assert!(matches!(
            " alice".parse::<AccountName>(),
            Err(Error::Invalid { .. })
        ));
        assert!("system:masters".parse::<GroupName>().is_err());
    }

    #[test]
    fn namespaces_are_dns_labels() {
        assert!("team-a".parse::<Namespace>().is_ok());
        assert!("Team".parse::<Namespace>().is_err());
        assert!("-a".parse::<Namespace>().is_err());
        assert!("a".repeat(64).parse::<Namespace>().is_err());
    }

    #[test]
    fn label_keys_follow_kubernetes_rules() {
        assert!("team".parse::<LabelKey>().is_ok());
        assert!("idbridge.io/department".parse::<LabelKey>().is_ok());
        assert!("bad key".parse::<LabelKey>().is_err());
        assert!("/x".parse::<LabelKey>().is_err());
    }

    #[test]
    fn client_ids_and_audiences_are_checked_and_read_as_their_text() {
        let c: ClientId = "idbridge-cli".parse().unwrap();
        assert_eq!(c, ClientId::cli());
        assert_eq!(
            format!("{c:?}"),
            "\"idbridge-cli\"",
            "messages show the text"
        );
        assert!("".parse::<ClientId>().is_err());
        assert!("a\u{7}b".parse::<ClientId>().is_err());
        assert!("x".repeat(129).parse::<ClientId>().is_err());
        let a: Audience = "https://kubernetes.default.svc".parse().unwrap();
        assert_eq!(a, "https://kubernetes.default.svc");
        assert_eq!(Audience::kubernetes(), "kubernetes");
        let e = "a\nb".parse::<Audience>().unwrap_err().to_string();
        assert!(e.contains("control characters"), "{e}");
        assert!("".parse::<Audience>().is_err());
        assert!("x".repeat(513).parse::<Audience>().is_err());
        assert!(serde_json::from_str::<Audience>("\"\"").is_err());
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            "\"https://kubernetes.default.svc\""
        );
    }

    #[test]
    fn principals_need_a_realm() {
        let p: Principal = "HTTP/host.example.com@EXAMPLE.COM".parse().unwrap();
        assert_eq!(p.realm(), "EXAMPLE.COM");
        assert!("alice".parse::<Principal>().is_err());
        assert!("@EXAMPLE.COM".parse::<Principal>().is_err());
        assert!("alice@".parse::<Principal>().is_err());
    }

    #[test]
    fn display_honours_width() {
        let n: AccountName = "bob".parse().unwrap();
        assert_eq!(format!("[{n:<5}]"), "[bob  ]");
    }

    #[test]
    fn serde_round_trip_validates() {
        let n: AccountName = serde_json::from_str("\"bob\"").unwrap();
        assert_eq!(serde_json::to_string(&n).unwrap(), "\"bob\"");
        assert!(serde_json::from_str::<AccountName>("\"system:x\"").is_err());
    }
}
