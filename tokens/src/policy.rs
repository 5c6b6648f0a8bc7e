//! The token service's policy: who issues, for whom, for how long, and who may exchange what.
//! Replaced as a whole on reload; the binary builds it from configuration, already validated.

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use idbridge_core::{Audience, ClientId, GrantType, GroupName};

/// The built-in first-party public client.
pub const CLI_CLIENT: &str = "idbridge-cli";

/// A secret value that never prints.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    #[must_use]
    pub fn new(s: String) -> Self {
        Self(s)
    }

    /// The secret itself; call only where it is used.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Compares in constant time.
    #[must_use]
    pub fn matches(&self, other: &str) -> bool {
        aws_lc_rs::constant_time::verify_slices_are_equal(self.0.as_bytes(), other.as_bytes())
            .is_ok()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Client {
    /// The built-in first-party public client, allowed every grant, for `audiences`.
    #[must_use]
    pub fn cli(audiences: Vec<Audience>) -> Self {
        Self {
            id: ClientId::cli(),
            secret: None,
            grants: GrantType::ALL.to_vec(),
            audiences,
            redirect_uris: Vec::new(),
            audience_changes: Vec::new(),
        }
    }
}

/// A token-exchange rule that lets an access token for `from` be exchanged for one of `to`:
/// the one way an exchange may change a token's audience.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudienceChange {
    /// The subject token's audience.
    pub from: Audience,
    /// Audiences it may be re-targeted to.
    pub to: Vec<Audience>,
}

impl AudienceChange {
    /// Whether a token for `from` may become one for `to` under any of `rules`.
    #[must_use]
    pub fn allows(rules: &[Self], from: &[Audience], to: &Audience) -> bool {
        rules
            .iter()
            .any(|r| from.contains(&r.from) && r.to.contains(to))
    }
}

/// What tokens say and how long they live.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Issuer URL (`iss`), also the base of every advertised endpoint.
    pub issuer: String,
    /// Audiences Kubernetes uses; the first is the default when a TokenReview names none.
    pub audiences: Vec<Audience>,
    /// Prefix added to usernames in Kubernetes responses.
    pub username_prefix: String,
    /// Prefix added to group names in Kubernetes responses.
    pub groups_prefix: String,
    /// Lifetime of minted access tokens.
    pub access_token_ttl: Duration,
    /// Allowed clock skew when checking `exp`, `nbf` and `iat`.
    pub clock_skew: Duration,
    /// How long a TokenReview result is cached; zero turns the cache off.
    pub review_cache_ttl: Duration,
    /// Maximum number of cached reviews.
    pub review_cache_size: usize,
    /// Accounts in any of these groups may call the admin API.
    pub admin_groups: BTreeSet<GroupName>,
    /// A session ends this long after its last refresh.
    pub session_idle_timeout: Duration,
    /// A session ends this long after it started, however active.
    pub session_max_lifetime: Duration,
    /// How long concurrent refreshes with one token get the same new pair.
    pub refresh_grace: Duration,
    /// OAuth clients, the built-in `idbridge-cli` first.
    pub clients: Vec<Client>,
    /// Who may act for whom (RFC 8693 delegation); nobody when empty.
    pub may_act: Vec<MayAct>,
    /// Audience changes an access-token exchange may make, for every client.
    pub audience_changes: Vec<AudienceChange>,
    /// A signing key signs this long before the next takes over.
    pub key_rotate_every: Duration,
    /// A new signing key is published this long before it signs.
    pub key_publish_lead: Duration,
}

/// An OAuth client.
#[derive(Debug, Clone)]
pub struct Client {
    /// `client_id`.
    pub id: ClientId,
    /// The secret of a confidential client; `None` for a public one.
    pub secret: Option<Secret>,
    /// Grant types it may use.
    pub grants: Vec<GrantType>,
    /// Audiences it may obtain tokens for.
    pub audiences: Vec<Audience>,
    /// Where `/oauth2/authorize` may send its answer: exact URIs, except that an `http` URI on
    /// a loopback address matches any port (RFC 8252). The built-in `idbridge-cli` may use any
    /// loopback URI.
    pub redirect_uris: Vec<String>,
    /// Audience changes an access-token exchange by this client may make, besides the global
    /// ones.
    pub audience_changes: Vec<AudienceChange>,
}

/// Names accounts by name or group.
#[derive(Debug, Clone, Default)]
pub struct Who {
    /// Account names.
    pub users: Vec<String>,
    /// Group names.
    pub groups: Vec<String>,
}

impl Who {
    /// Whether the account `name` with `groups` is named.
    #[must_use]
    pub fn matches(&self, name: &str, groups: &[String]) -> bool {
        self.users.iter().any(|u| u == name) || groups.iter().any(|g| self.groups.contains(g))
    }
}

/// One delegation rule: these actors may act for these subjects, towards these audiences.
#[derive(Debug, Clone)]
pub struct MayAct {
    /// Who may act.
    pub actors: Who,
    /// For whom.
    pub subjects: Who,
    /// Audiences the delegated token may carry.
    pub audiences: Vec<Audience>,
}

impl Policy {
    /// Defaults for an issuer; the binary overrides from config.
    #[must_use]
    pub fn new(issuer: String) -> Self {
        Self {
            issuer,
            audiences: vec![Audience::kubernetes()],
            username_prefix: String::new(),
            groups_prefix: String::new(),
            access_token_ttl: Duration::from_secs(15 * 60),
            clock_skew: Duration::from_secs(30),
            review_cache_ttl: Duration::from_secs(10),
            review_cache_size: 10_000,
            admin_groups: BTreeSet::new(),
            session_idle_timeout: Duration::from_secs(8 * 3600),
            session_max_lifetime: Duration::from_secs(7 * 86_400),
            refresh_grace: Duration::from_secs(5),
            clients: vec![Client::cli(vec![Audience::kubernetes()])],
            may_act: Vec::new(),
            audience_changes: Vec::new(),
            key_rotate_every: Duration::from_secs(30 * 86_400),
            key_publish_lead: Duration::from_secs(86_400),
        }
    }

    /// The key-ring policy these settings imply.
    #[must_use]
    pub fn key_policy(&self) -> crate::keys::KeyPolicy {
        crate::keys::KeyPolicy {
            rotate_every: self.key_rotate_every.as_secs(),
            publish_lead: self.key_publish_lead.as_secs(),
            // A retired key stays until the longest-lived token it signed has expired.
            retain: self.access_token_ttl.as_secs() + self.clock_skew.as_secs(),
        }
    }

    /// Whether any of `groups` is an admin group.
    #[must_use]
    pub fn is_admin(&self, groups: &[String]) -> bool {
        groups
            .iter()
            .any(|g| self.admin_groups.iter().any(|a| a.as_str() == g))
    }

    /// The client with this id.
    #[must_use]
    pub fn client(&self, id: &str) -> Option<&Client> {
        self.clients.iter().find(|c| c.id == id)
    }

    /// The audience assumed when a TokenReview names none.
    #[must_use]
    pub fn default_audience(&self) -> Audience {
        self.audiences
            .first()
            .cloned()
            .unwrap_or_else(Audience::kubernetes)
    }
}
