//! Protocol values as types: parsed once at the edge, matched exhaustively inside.
//!
//! OAuth grant types and token types (RFC 6749, RFC 8693, RFC 8628, and idbridge's own URNs),
//! authentication methods (`amr`), and the kinds of single-use pending login records. Each has
//! one spelling on the wire, [`as_str`](GrantType::as_str), and parses from exactly that.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

macro_rules! wire_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $wire:literal,)+ }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $($(#[$vdoc])* $variant,)+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [Self] = &[$(Self::$variant,)+];

            /// The value's one spelling on the wire.
            #[must_use]
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $wire,)+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownValue;
            fn from_str(s: &str) -> Result<Self, UnknownValue> {
                match s {
                    $($wire => Ok(Self::$variant),)+
                    _ => Err(UnknownValue {
                        what: stringify!($name),
                        value: s.to_owned(),
                    }),
                }
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

/// A value that is not one of a protocol enum's spellings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not a known {what}")]
pub struct UnknownValue {
    /// Which enum.
    pub what: &'static str,
    /// What was given.
    pub value: String,
}

wire_enum! {
    /// An OAuth grant type the token endpoint knows.
    GrantType {
        /// RFC 6749 section 6.
        RefreshToken = "refresh_token",
        /// RFC 8693 token exchange.
        TokenExchange = "urn:ietf:params:oauth:grant-type:token-exchange",
        /// RFC 6749 section 4.3: a directory password, for first-party clients.
        Password = "password",
        /// A Kerberos (SPNEGO) token in the form field `kerberos_token`.
        Kerberos = "urn:idbridge:params:oauth:grant-type:kerberos",
        /// RFC 6749 section 4.1, with PKCE.
        AuthorizationCode = "authorization_code",
        /// RFC 8628 device authorization grant.
        DeviceCode = "urn:ietf:params:oauth:grant-type:device_code",
    }
}

wire_enum! {
    /// A token type of RFC 8693 (`subject_token_type`, `requested_token_type`, ...).
    TokenType {
        /// An idbridge access token (a JWT).
        AccessToken = "urn:ietf:params:oauth:token-type:access_token",
        /// An idbridge static token.
        Static = "urn:idbridge:params:oauth:token-type:static",
        /// An upstream provider's OpenID Connect ID token.
        IdToken = "urn:ietf:params:oauth:token-type:id_token",
    }
}

wire_enum! {
    /// How a session's login proved who the user is (the `amr` claim).
    Amr {
        /// Kerberos (SPNEGO or the Kerberos grant).
        Krb5 = "krb5",
        /// A directory (LDAP / AD) password.
        Ldap = "ldap",
        /// An upstream OpenID Connect provider.
        Oidc = "oidc",
        /// A Kubernetes ServiceAccount token.
        Sa = "sa",
        /// An idbridge static token.
        Static = "static",
        /// An authenticating proxy vouched for the user.
        Proxy = "proxy",
    }
}

wire_enum! {
    /// What a single-use pending record holds.
    PendingKind {
        /// A login page in progress (its CSRF value and where it goes next).
        Login = "login",
        /// A redirect to an upstream provider, waiting for its callback.
        Upstream = "upstream",
        /// An authorization code, waiting to be redeemed.
        Code = "code",
        /// A device code, waiting for approval and polling.
        Device = "device",
        /// An exchanged ID token: each may start one session.
        IdToken = "id_token",
    }
}

/// The prefix Kubernetes reserves for itself: no idbridge account, group or prefix may start
/// with it, and no group with it ever reaches a token.
pub const RESERVED_PREFIX: &str = "system:";

/// Whether a user or group name is in Kubernetes' reserved `system:` space.
#[must_use]
pub fn is_reserved(name: &str) -> bool {
    name.starts_with(RESERVED_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_parses_from_its_own_spelling_only() {
        for g in GrantType::ALL {
            assert_eq!(g.as_str().parse::<GrantType>(), Ok(*g));
            assert!(g.as_str().to_uppercase().parse::<GrantType>().is_err());
        }
        for a in Amr::ALL {
            assert_eq!(a.as_str().parse::<Amr>(), Ok(*a));
        }
        for k in PendingKind::ALL {
            assert_eq!(k.as_str().parse::<PendingKind>(), Ok(*k));
        }
        for t in TokenType::ALL {
            assert_eq!(t.as_str().parse::<TokenType>(), Ok(*t));
        }
        let e = "implicit".parse::<GrantType>().unwrap_err();
        assert_eq!(e.to_string(), "\"implicit\" is not a known GrantType");
    }

    #[test]
    fn amr_travels_as_its_wire_string() {
        let v = serde_json::to_string(&[Amr::Krb5, Amr::Sa]).unwrap();
        assert_eq!(v, r#"["krb5","sa"]"#);
        assert_eq!(
            serde_json::from_str::<Vec<Amr>>(&v).unwrap(),
            vec![Amr::Krb5, Amr::Sa]
        );
        assert!(serde_json::from_str::<Amr>("\"pwd\"").is_err());
    }

    #[test]
    fn the_reserved_space_is_system_colon() {
        assert!(is_reserved("system:masters"));
        assert!(!is_reserved("systems"));
    }
}
