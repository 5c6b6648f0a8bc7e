//! What the bridge needs from configuration, already validated by the binary.

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use idbridge_core::GroupName;

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

/// Runtime settings of the bridge; replaced as a whole on reload.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Issuer URL (`iss`), also the base of every advertised endpoint.
    pub issuer: String,
    /// Audiences Kubernetes uses; the first is the default when a TokenReview names none.
    pub audiences: Vec<String>,
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
    /// Bearer tokens that webhook callers (kube-apiserver) may present.
    pub webhook_tokens: Vec<Secret>,
    /// Whether a verified client certificate is enough to call the webhooks.
    pub webhook_client_cert: bool,
    /// Accounts in any of these groups may call the admin API.
    pub admin_groups: BTreeSet<GroupName>,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
}

impl Settings {
    /// Defaults for an issuer; the binary overrides from config.
    #[must_use]
    pub fn new(issuer: String) -> Self {
        Self {
            issuer,
            audiences: vec!["kubernetes".to_owned()],
            username_prefix: String::new(),
            groups_prefix: String::new(),
            access_token_ttl: Duration::from_secs(15 * 60),
            clock_skew: Duration::from_secs(30),
            review_cache_ttl: Duration::from_secs(10),
            review_cache_size: 10_000,
            webhook_tokens: Vec::new(),
            webhook_client_cert: false,
            admin_groups: BTreeSet::new(),
            max_body_bytes: 64 * 1024,
        }
    }

    /// The audience assumed when a TokenReview names none.
    #[must_use]
    pub fn default_audience(&self) -> &str {
        self.audiences.first().map_or("kubernetes", String::as_str)
    }
}
