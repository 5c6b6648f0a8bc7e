//! Upstream OpenID providers (Entra ID, Okta, Keycloak, …): discovery, the authorization code
//! flow with PKCE (S256), `state` and `nonce`, ID-token validation, claim mapping and the
//! provider's refresh grant.
//!
//! Discovery happens at first use and is kept; the JWKS is fetched again when a token names a
//! key it does not hold, at most once per [`JWKS_REFETCH_EVERY`]. ID tokens are checked for
//! issuer, audience, signature (asymmetric algorithms the provider announces; never `none` or
//! a shared secret), expiry and nonce by the `openidconnect` crate.

use std::time::{Duration, Instant};

use idbridge_tokens::Secret;
use openidconnect::core::{
    CoreGenderClaim, CoreJsonWebKeySet, CoreJweContentEncryptionAlgorithm, CoreJwsSigningAlgorithm,
    CoreProviderMetadata,
};
use openidconnect::{
    AdditionalClaims, ClaimsVerificationError, ClientId, IdToken, IdTokenVerifier, IssuerUrl,
    Nonce, SignatureVerificationError,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The JWKS is fetched again for an unknown `kid` at most this often.
pub(crate) const JWKS_REFETCH_EVERY: Duration = Duration::from_secs(30);

/// Every claim beyond the standard ones (`groups` and the like).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Extra(serde_json::Map<String, Value>);

impl AdditionalClaims for Extra {}

type UpstreamIdToken =
    IdToken<Extra, CoreGenderClaim, CoreJweContentEncryptionAlgorithm, CoreJwsSigningAlgorithm>;

/// Signing algorithms accepted from an upstream: asymmetric only.
const ASYMMETRIC: [CoreJwsSigningAlgorithm; 10] = [
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha384,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha512,
    CoreJwsSigningAlgorithm::RsaSsaPssSha256,
    CoreJwsSigningAlgorithm::RsaSsaPssSha384,
    CoreJwsSigningAlgorithm::RsaSsaPssSha512,
    CoreJwsSigningAlgorithm::EcdsaP256Sha256,
    CoreJwsSigningAlgorithm::EcdsaP384Sha384,
    CoreJwsSigningAlgorithm::EcdsaP521Sha512,
    CoreJwsSigningAlgorithm::EdDsa,
];

/// How one upstream is configured.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// Short name used in URLs and messages (`okta`).
    pub name: String,
    /// What the login page's button says.
    pub display_name: String,
    /// The provider's issuer URL, exactly as its discovery document states it.
    pub issuer: String,
    /// idbridge's client at the provider.
    pub client_id: String,
    /// Its secret; `None` for a public client.
    pub client_secret: Option<Secret>,
    /// Scopes asked for besides `openid`.
    pub scopes: Vec<String>,
    /// The claim naming the account.
    pub username_claim: String,
    /// The claim listing groups; none when empty.
    pub groups_claim: String,
    /// Prefix added to the account name.
    pub username_prefix: String,
    /// Prefix added to each group.
    pub groups_prefix: String,
    /// Refuse a login whose `email_verified` is not true.
    pub require_email_verified: bool,
    /// Refresh at the provider on every idbridge refresh, so a user removed there loses access.
    pub refresh: bool,
    /// Create an account at a first login.
    pub jit: bool,
    /// With `existing` provisioning, link an unlinked account of the same name.
    pub link_by_name: bool,
}

/// Why an upstream step failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The provider did not answer, or answered with something unusable.
    #[error("the identity provider {name:?} is unavailable: {why}")]
    Unavailable {
        /// Upstream name.
        name: String,
        /// What went wrong.
        why: String,
    },
    /// The provider refused (an invalid code, a revoked refresh token, a removed user).
    #[error("the identity provider {name:?} refused: {why}")]
    Refused {
        /// Upstream name.
        name: String,
        /// Its answer.
        why: String,
    },
    /// The ID token or its claims are not acceptable.
    #[error("the ID token from {name:?} is not acceptable: {why}")]
    Invalid {
        /// Upstream name.
        name: String,
        /// Why.
        why: String,
    },
}

/// What the provider's token endpoint answered.
#[derive(Deserialize)]
pub(crate) struct UpstreamTokens {
    pub id_token: Option<String>,
    pub refresh_token: Option<String>,
}

/// Who the ID token names, mapped.
#[derive(Debug, Clone)]
pub(crate) struct UpstreamUser {
    pub iss: String,
    pub sub: String,
    pub name: String,
    pub groups: Vec<String>,
}

struct Discovered {
    metadata: CoreProviderMetadata,
    jwks: CoreJsonWebKeySet,
    /// When an unknown key id last made us fetch the keys again.
    refetched_at: Option<Instant>,
}

/// One upstream OpenID provider, with what was discovered about it.
pub struct Upstream {
    /// Its configuration.
    pub config: UpstreamConfig,
    http: reqwest::Client,
    discovered: tokio::sync::RwLock<Option<Discovered>>,
    // Serializes refetches of the JWKS so a burst of unknown kids makes one request.
    refetch: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.config.name)
            .field("issuer", &self.config.issuer)
            .finish_non_exhaustive()
    }
}

impl Upstream {
    /// An upstream reached with `http` (which trusts the provider's CA).
    #[must_use]
    pub fn new(config: UpstreamConfig, http: reqwest::Client) -> Self {
        Self {
            config,
            http,
            discovered: tokio::sync::RwLock::new(None),
            refetch: tokio::sync::Mutex::new(()),
        }
    }

    fn unavailable(&self, why: impl std::fmt::Display) -> UpstreamError {
        UpstreamError::Unavailable {
            name: self.config.name.clone(),
            why: why.to_string(),
        }
    }

    fn invalid(&self, why: impl std::fmt::Display) -> UpstreamError {
        UpstreamError::Invalid {
            name: self.config.name.clone(),
            why: why.to_string(),
        }
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        url: &str,
    ) -> Result<T, UpstreamError> {
        let resp = self
            .http
            .get(url)
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| self.unavailable(format!("{url}: {}", error_chain(&e))))?;
        if !resp.status().is_success() {
            return Err(self.unavailable(format!("{url} answered {}", resp.status())));
        }
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| self.unavailable(format!("{url}: {e}")))?;
        serde_json::from_slice(&bytes).map_err(|e| self.unavailable(format!("{url}: {e}")))
    }

    async fn discover(&self) -> Result<Discovered, UpstreamError> {
        let base = self.config.issuer.trim_end_matches('/');
        let url = format!("{base}/.well-known/openid-configuration");
        let metadata: CoreProviderMetadata = self.get_json(&url).await?;
        if metadata.issuer().as_str() != self.config.issuer {
            return Err(self.unavailable(format!(
                "its discovery document names the issuer {:?}, not the configured {:?}",
                metadata.issuer().as_str(),
                self.config.issuer
            )));
        }
        let jwks = self.get_json(metadata.jwks_uri().as_str()).await?;
        Ok(Discovered {
            metadata,
            jwks,
            refetched_at: None,
        })
    }

    /// The provider's metadata, discovered at first use.
    async fn metadata(&self) -> Result<CoreProviderMetadata, UpstreamError> {
        if let Some(d) = self.discovered.read().await.as_ref() {
            return Ok(d.metadata.clone());
        }
        let mut slot = self.discovered.write().await;
        if slot.is_none() {
            *slot = Some(self.discover().await?);
        }
        slot.as_ref()
            .map(|d| d.metadata.clone())
            .ok_or_else(|| self.unavailable("discovery failed"))
    }

    /// The provider's authorization endpoint with every parameter of a code flow with PKCE.
    pub(crate) async fn authorize_url(
        &self,
        redirect_uri: &str,
        state: &str,
        nonce: &str,
        challenge: &str,
    ) -> Result<String, UpstreamError> {
        let md = self.metadata().await?;
        let mut scopes = vec!["openid".to_owned()];
        scopes.extend(
            self.config
                .scopes
                .iter()
                .filter(|s| *s != "openid")
                .cloned(),
        );
        if self.config.refresh && !scopes.iter().any(|s| s == "offline_access") {
            scopes.push("offline_access".to_owned());
        }
        let mut url = reqwest::Url::parse(md.authorization_endpoint().as_str())
            .map_err(|e| self.unavailable(e))?;
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.config.client_id)
            .append_pair("redirect_uri", redirect_uri)
            .append_pair("scope", &scopes.join(" "))
            .append_pair("state", state)
            .append_pair("nonce", nonce)
            .append_pair("code_challenge", challenge)
            .append_pair("code_challenge_method", "S256");
        if self.config.refresh {
            // Providers issue refresh tokens for offline_access only after consent was asked.
            url.query_pairs_mut().append_pair("prompt", "consent");
        }
        Ok(url.into())
    }

    async fn token_request(&self, form: &[(&str, &str)]) -> Result<UpstreamTokens, UpstreamError> {
        let md = self.metadata().await?;
        let url = md
            .token_endpoint()
            .ok_or_else(|| self.unavailable("its discovery document names no token endpoint"))?
            .as_str()
            .to_owned();
        let mut req = self.http.post(&url).header("accept", "application/json");
        let mut fields: Vec<(&str, &str)> = form.to_vec();
        match &self.config.client_secret {
            Some(secret) => {
                req = req.basic_auth(
                    form_encode(&self.config.client_id),
                    Some(form_encode(secret.expose())),
                );
            }
            None => fields.push(("client_id", &self.config.client_id)),
        }
        let resp = req
            .form(&fields)
            .send()
            .await
            .map_err(|e| self.unavailable(format!("{url}: {}", error_chain(&e))))?;
        let status = resp.status();
        let body: Value = resp
            .json()
            .await
            .map_err(|e| self.unavailable(format!("{url}: {e}")))?;
        if status.is_client_error() {
            let why = [body.get("error"), body.get("error_description")]
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(": ");
            return Err(UpstreamError::Refused {
                name: self.config.name.clone(),
                why: if why.is_empty() {
                    status.to_string()
                } else {
                    why
                },
            });
        }
        if !status.is_success() {
            return Err(self.unavailable(format!("{url} answered {status}")));
        }
        serde_json::from_value(body).map_err(|e| self.unavailable(format!("{url}: {e}")))
    }

    /// Exchanges the authorization code (with its PKCE verifier) at the provider.
    pub(crate) async fn exchange_code(
        &self,
        code: &str,
        verifier: &str,
        redirect_uri: &str,
    ) -> Result<UpstreamTokens, UpstreamError> {
        self.token_request(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("code_verifier", verifier),
            ("redirect_uri", redirect_uri),
        ])
        .await
    }

    /// The provider's refresh grant: refused when the user was removed or disabled there.
    pub(crate) async fn refresh(
        &self,
        refresh_token: &str,
    ) -> Result<UpstreamTokens, UpstreamError> {
        self.token_request(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
        ])
        .await
    }

    fn verifier(
        &self,
        d: &Discovered,
    ) -> IdTokenVerifier<'static, openidconnect::core::CoreJsonWebKey> {
        let issuer = IssuerUrl::new(self.config.issuer.clone())
            .unwrap_or_else(|_| d.metadata.issuer().clone());
        let announced = d
            .metadata
            .id_token_signing_alg_values_supported()
            .iter()
            .filter(|a| ASYMMETRIC.contains(a))
            .cloned()
            .collect::<Vec<_>>();
        IdTokenVerifier::new_public_client(
            ClientId::new(self.config.client_id.clone()),
            issuer,
            d.jwks.clone(),
        )
        .set_allowed_algs(if announced.is_empty() {
            vec![CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256]
        } else {
            announced
        })
    }

    /// Checks an ID token (signature, issuer, audience, expiry, and the nonce when one was
    /// sent) and returns its claims as JSON.
    pub(crate) async fn verify_id_token(
        &self,
        raw: &str,
        nonce: Option<&str>,
    ) -> Result<Value, UpstreamError> {
        let token: UpstreamIdToken = raw
            .parse()
            .map_err(|e| self.invalid(format!("not a signed JWT ({e})")))?;
        self.metadata().await?;
        let check = |v: &IdTokenVerifier<'_, _>| match nonce {
            Some(n) => token
                .claims(v, &Nonce::new(n.to_owned()))
                .map(|c| serde_json::to_value(c).unwrap_or(Value::Null)),
            None => token
                .claims(v, |_: Option<&Nonce>| Ok(()))
                .map(|c| serde_json::to_value(c).unwrap_or(Value::Null)),
        };
        let first = {
            let guard = self.discovered.read().await;
            let d = guard
                .as_ref()
                .ok_or_else(|| self.unavailable("discovery failed"))?;
            check(&self.verifier(d))
        };
        let result = match first {
            Err(ClaimsVerificationError::SignatureVerification(
                SignatureVerificationError::NoMatchingKey,
            )) => {
                // The provider may have rotated its keys: fetch them again, rate-limited.
                let _one = self.refetch.lock().await;
                let stale = self.discovered.read().await.as_ref().is_none_or(|d| {
                    d.refetched_at
                        .is_none_or(|t| t.elapsed() >= JWKS_REFETCH_EVERY)
                });
                if stale {
                    let jwks_uri = self.metadata().await?.jwks_uri().as_str().to_owned();
                    let jwks: CoreJsonWebKeySet = self.get_json(&jwks_uri).await?;
                    if let Some(d) = self.discovered.write().await.as_mut() {
                        d.jwks = jwks;
                        d.refetched_at = Some(Instant::now());
                    }
                    tracing::info!(upstream = %self.config.name, "fetched the provider's keys again for an unknown key id");
                } else {
                    tracing::info!(upstream = %self.config.name, "unknown key id; the provider's keys were fetched again less than 30 s ago");
                }
                let guard = self.discovered.read().await;
                let d = guard
                    .as_ref()
                    .ok_or_else(|| self.unavailable("discovery failed"))?;
                check(&self.verifier(d))
            }
            other => other,
        };
        let claims = result.map_err(|e| self.invalid(describe(&e)))?;
        if self.config.require_email_verified
            && claims.get("email_verified").and_then(Value::as_bool) != Some(true)
        {
            return Err(self.invalid("the email address is not verified (email_verified)"));
        }
        Ok(claims)
    }

    /// The account name and groups the claims map to.
    pub(crate) fn user(&self, claims: &Value) -> Result<UpstreamUser, UpstreamError> {
        let c = &self.config;
        let text = |k: &str| claims.get(k).and_then(Value::as_str).map(str::to_owned);
        let iss = text("iss").ok_or_else(|| self.invalid("no iss claim"))?;
        let sub = text("sub").ok_or_else(|| self.invalid("no sub claim"))?;
        let raw = text(&c.username_claim)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                self.invalid(format!(
                    "the ID token has no {:?} claim (upstreams[].username_claim)",
                    c.username_claim
                ))
            })?;
        let groups = if c.groups_claim.is_empty() {
            Vec::new()
        } else {
            match claims.get(&c.groups_claim) {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::String(g)) => vec![g.clone()],
                Some(Value::Array(a)) => a
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect(),
                Some(_) => {
                    return Err(self.invalid(format!(
                        "the {:?} claim is not a list of strings (upstreams[].groups_claim)",
                        c.groups_claim
                    )));
                }
            }
        };
        Ok(UpstreamUser {
            iss,
            sub,
            name: format!("{}{raw}", c.username_prefix),
            groups: groups
                .into_iter()
                .map(|g| format!("{}{g}", c.groups_prefix))
                .filter(|g| !idbridge_core::is_reserved(g))
                .collect(),
        })
    }
}

fn describe(e: &ClaimsVerificationError) -> String {
    match e {
        ClaimsVerificationError::SignatureVerification(s) => format!("bad signature ({s})"),
        ClaimsVerificationError::InvalidAudience(_) => {
            "it was issued to another client (aud)".to_owned()
        }
        ClaimsVerificationError::InvalidIssuer(_) => {
            "it was issued by another provider (iss)".to_owned()
        }
        ClaimsVerificationError::InvalidNonce(_) => {
            "its nonce does not match this login".to_owned()
        }
        ClaimsVerificationError::Expired(_) => "it has expired".to_owned(),
        other => other.to_string(),
    }
}

/// An error with its causes, for "connection refused" and the like.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// `application/x-www-form-urlencoded`, as client_secret_basic asks for the id and secret.
fn form_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.*".contains(&b) {
                (b as char).to_string()
            } else if b == b' ' {
                "+".to_owned()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
