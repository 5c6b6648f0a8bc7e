//! Static (long-lived) tokens, kept only as hashes.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{AccountUid, Error, UnixTime};

/// Defines a public UUID id type: shown and logged freely, parsed with a message naming it.
macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident, $what:literal, $hint:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(uuid::Uuid);

        impl $name {
            /// A fresh random id.
            #[must_use]
            pub fn random() -> Self {
                Self(uuid::Uuid::new_v4())
            }

            /// A fresh id drawn from `random`.
            #[must_use]
            pub fn from_random(random: &dyn crate::Random) -> Self {
                Self(random.uuid())
            }
        }

        impl FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self, Error> {
                uuid::Uuid::parse_str(s)
                    .map(Self)
                    .map_err(|_| Error::Invalid {
                        what: $what,
                        value: s.to_owned(),
                        why: $hint,
                    })
            }
        }

        impl TryFrom<String> for $name {
            type Error = Error;
            fn try_from(s: String) -> Result<Self, Error> {
                s.parse()
            }
        }

        impl From<$name> for String {
            fn from(t: $name) -> String {
                t.to_string()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(
                    self.0
                        .hyphenated()
                        .encode_lower(&mut uuid::Uuid::encode_buffer()),
                )
            }
        }
    };
}

uuid_id!(
    /// The public id of a static token, safe to show and log (it is not the secret).
    TokenId,
    "token id",
    "must be a UUID as printed by `idbridge token list`"
);

/// SHA-256 of a token's secret; what the store keeps instead of the secret.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash(pub [u8; 32]);

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A hash of a high-entropy secret is not itself a secret, but there is no reason to print it.
        f.write_str("TokenHash(..)")
    }
}

/// A stored static token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaticToken {
    /// Public id.
    pub id: TokenId,
    /// The account the token authenticates as.
    pub account: AccountUid,
    /// A free-text note from whoever created it.
    pub description: String,
    /// Creation time.
    pub created_at: UnixTime,
    /// Expiry; `None` for a token that never expires.
    pub expires_at: Option<UnixTime>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<UnixTime>,
}

impl StaticToken {
    /// Whether the token may be used at `now`.
    #[must_use]
    pub fn is_usable(&self, now: UnixTime) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|e| now < e)
    }
}
