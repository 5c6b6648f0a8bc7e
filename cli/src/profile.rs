//! Start-up: everything `serve` needs on disk, created on first start and reused afterwards.
//!
//! The simple profile (no `--config`) also creates the `admin` account and its token. Both
//! profiles write `webhook.kubeconfig` and `authentication-config.yaml` for kube-apiserver.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use base64::Engine;
use idbridge_bridge::{ServerTls, ensure_self_signed};
use idbridge_core::{AccountName, Clock, NewAccount, Store, UserAccount};
use idbridge_store::SqliteStore;
use idbridge_tokens::{
    AdminOps, Kek, KeyPolicy, KeySet, Rotate, WEBHOOK_TOKEN_PREFIX, maintain, new_secret,
};

use crate::config::{Config, admin_group, parse_yaml};

/// What start-up produced.
pub struct Boot {
    pub store: Arc<dyn Store>,
    pub keys: KeySet,
    pub kek: Option<Kek>,
    pub tls: ServerTls,
    /// The CA clients should trust, when idbridge made its own certificates.
    pub ca_file: Option<PathBuf>,
    pub webhook_token: String,
}

/// Creates the data directory readable only by its owner. An existing one that group or
/// others may read was not made by idbridge (which makes it 0700): refused unless
/// `insecure_store_permissions`, then warned about.
pub fn ensure_data_dir(dir: &Path, insecure: bool) -> anyhow::Result<()> {
    if !dir.exists() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create data dir {} (--data-dir)", dir.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
        return Ok(());
    }
    std::fs::metadata(dir)
        .with_context(|| format!("cannot read data dir {} (--data-dir)", dir.display()))?;
    if let Some(mode) = open_to_others(dir) {
        if !insecure {
            bail!(
                "data dir {} is open to group or others (mode {mode:o}); it holds keys and \
                 tokens: run `chmod 700 {}`, or set `insecure_store_permissions: true`",
                dir.display(),
                dir.display()
            );
        }
        tracing::warn!(
            data_dir = %dir.display(),
            mode = format!("{mode:o}"),
            "insecure_store_permissions: the data dir is open to group or others"
        );
    }
    Ok(())
}

/// The mode of `p` when group or others may use it; `None` when only its owner may (or it
/// cannot be read, or permissions are not Unix ones).
fn open_to_others(p: &Path) -> Option<u32> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p)
            .ok()
            .map(|m| m.permissions().mode() & 0o777)
            .filter(|m| m & 0o077 != 0)
    }
    #[cfg(not(unix))]
    {
        let _ = p;
        None
    }
}

/// Secret files idbridge generates in the data dir, and the configured files holding secrets.
fn secret_files(cfg: &Config) -> (Vec<PathBuf>, Vec<(&'static str, PathBuf)>) {
    let d = &cfg.data_dir;
    let generated = ["kek", "admin.token", "webhook.token", "tls.key", "ca.key"]
        .iter()
        .map(|f| d.join(f))
        .collect();
    let mut configured: Vec<(&'static str, PathBuf)> = Vec::new();
    let mut add = |field: &'static str, p: Option<&PathBuf>| {
        if let Some(p) = p {
            configured.push((field, p.clone()));
        }
    };
    add(
        "keys.encryption_key_file",
        cfg.keys.encryption_key_file.as_ref(),
    );
    add("tls.key_file", cfg.tls.key_file.as_ref());
    add(
        "webhooks.bearer_token_file",
        cfg.webhooks.bearer_token_file.as_ref(),
    );
    add(
        "directory.bind_password_file",
        cfg.directory.as_ref().map(|d| &d.bind_password_file),
    );
    add("kerberos.keytab", cfg.kerberos.as_ref().map(|k| &k.keytab));
    for c in &cfg.clients {
        add("clients[].secret_file", c.secret_file.as_ref());
    }
    for u in &cfg.upstreams {
        add(
            "upstreams[].client_secret_file",
            u.client_secret_file.as_ref(),
        );
    }
    (generated, configured)
}

/// Makes the secret files idbridge generated private again if something loosened them, with a
/// warning; warns about configured secret files that group or others can read (idbridge does
/// not change files it did not make).
pub fn secure_secret_files(cfg: &Config) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let (generated, configured) = secret_files(cfg);
        for p in generated {
            if let Some(mode) = open_to_others(&p) {
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))
                    .with_context(|| format!("cannot make {} private", p.display()))?;
                tracing::warn!(
                    file = %p.display(),
                    mode = format!("{mode:o}"),
                    "a secret file was readable by others: made it 0600"
                );
            }
        }
        for (field, p) in configured {
            if let Some(mode) = open_to_others(&p) {
                tracing::warn!(
                    field,
                    file = %p.display(),
                    mode = format!("{mode:o}"),
                    "a secret file is readable by group or others: chmod 600 it"
                );
            }
        }
    }
    Ok(())
}

pub async fn open_store(cfg: &Config) -> anyhow::Result<Arc<SqliteStore>> {
    let insecure = cfg.insecure_store_permissions;
    if insecure {
        tracing::warn!(
            "insecure_store_permissions is set: a store or data dir readable by others is accepted"
        );
    }
    // Permissions refused are a configuration matter (exit code 2): the fix is a chmod or
    // `insecure_store_permissions`.
    let refused = |e: anyhow::Error| {
        anyhow::Error::new(crate::serve::ConfigErrorMarker).context(format!("{e:#}"))
    };
    ensure_data_dir(&cfg.data_dir, insecure).map_err(refused)?;
    let path = cfg.sqlite_path();
    match SqliteStore::open_with(&path, insecure).await {
        Ok(s) => Ok(Arc::new(s)),
        Err(e @ idbridge_store::OpenError::Permissions(_)) => Err(refused(e.into())),
        Err(e) => Err(anyhow::Error::new(e).context(format!(
            "field `store.sqlite`: cannot open {}",
            path.display()
        ))),
    }
}

fn read_secret_file(path: &Path, field: &str) -> anyhow::Result<String> {
    let s = std::fs::read_to_string(path)
        .with_context(|| format!("field `{field}`: cannot read {}", path.display()))?;
    let s = s.trim().to_owned();
    if s.is_empty() {
        bail!("field `{field}`: {} is empty", path.display());
    }
    Ok(s)
}

fn sans_for(cfg: &Config, issuer: &str, bound: SocketAddr) -> Vec<String> {
    let mut sans = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    if !bound.ip().is_unspecified() {
        sans.push(bound.ip().to_string());
    }
    if let Some(host) = issuer
        .strip_prefix("https://")
        .and_then(|r| r.split('/').next())
    {
        let host = if host.starts_with('[') {
            host.split(']')
                .next()
                .unwrap_or(host)
                .trim_start_matches('[')
        } else {
            host.rsplit_once(':').map_or(host, |(h, _)| h)
        };
        sans.push(host.to_owned());
    }
    sans.extend(cfg.tls.sans.iter().cloned());
    sans
}

pub async fn bootstrap(
    cfg: &Config,
    issuer: &str,
    bound: SocketAddr,
    bootstrap_admin: bool,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<Boot> {
    let store: Arc<dyn Store> = open_store(cfg).await?;
    let now = clock.now();

    let kek = ensure_kek(cfg)?;
    let policy = KeyPolicy {
        rotate_every: cfg.keys.rotate_every.as_secs(),
        publish_lead: cfg.keys.publish_lead.as_secs(),
        retain: cfg.tokens.access_token_ttl.as_secs() + cfg.tokens.clock_skew.as_secs(),
    };
    let stored = store.signing_keys().await?;
    let stored = match maintain(&stored, now, &policy, Rotate::Policy, kek.as_ref())? {
        Some(ring) => {
            store.replace_signing_keys(&ring).await?;
            tracing::info!(
                keys = ring.len(),
                encrypted = kek.is_some(),
                "signing keys updated"
            );
            ring
        }
        None => stored,
    };
    let keys = KeySet::from_stored(&stored, kek.as_ref())
        .map_err(|e| anyhow::Error::new(crate::serve::ConfigErrorMarker).context(e.to_string()))?;

    let (tls, ca_file) = match (&cfg.tls.cert_file, &cfg.tls.key_file) {
        (Some(cert), Some(key)) => (
            ServerTls {
                cert_file: cert.clone(),
                key_file: key.clone(),
                client_ca_file: None,
                proxy_ca_file: None,
            },
            None,
        ),
        _ => {
            let (tls, ca) = ensure_self_signed(&cfg.data_dir, &sans_for(cfg, issuer, bound))
                .context("cannot create the TLS certificate in the data dir")?;
            (tls, Some(ca))
        }
    };
    let tls = ServerTls {
        client_ca_file: cfg.tls.client_ca_file.clone(),
        proxy_ca_file: cfg
            .proxy
            .enabled
            .then(|| cfg.proxy.client_ca_file.clone())
            .flatten(),
        ..tls
    };

    let webhook_token = webhook_token(cfg)?;

    if bootstrap_admin {
        ensure_admin(cfg, store.clone(), clock.clone()).await?;
    }
    if let Some(file) = &cfg.accounts_file {
        sync_accounts_file(file, &AdminOps::new(store.clone(), clock.clone()), &*store).await?;
    }
    write_kube_files(cfg, issuer, ca_file.as_deref(), &webhook_token)?;
    secure_secret_files(cfg)?;
    Ok(Boot {
        store,
        keys,
        kek,
        tls,
        ca_file,
        webhook_token,
    })
}

/// The Kerberos login settings: the acceptor over the keytab, and the principal mapping.
pub fn kerberos_login(
    cfg: &Config,
    k: &idbridge_kerberos::KerberosConfig,
) -> anyhow::Result<idbridge_bridge::KerberosLogin> {
    let mapper = idbridge_kerberos::Mapper::new(k)?;
    let groups_from_directory = k.groups == idbridge_kerberos::GroupSource::Directory;
    if groups_from_directory && cfg.directory.is_none() {
        anyhow::bail!(
            "field `kerberos.groups`: `directory` needs a `directory` section to look users up in"
        );
    }
    let replay_cache = k
        .replay_cache
        .clone()
        .unwrap_or_else(|| cfg.data_dir.join("krb5.rcache"));
    let acceptor =
        idbridge_kerberos::Acceptor::new(&k.keytab, Some(&replay_cache), "kerberos.keytab")?;
    Ok(idbridge_bridge::KerberosLogin {
        acceptor: std::sync::Arc::new(acceptor),
        mapper,
        jit: k.provisioning == idbridge_core::Provisioning::Jit,
        link_by_name: k.link_by_name,
        groups_from_directory,
    })
}

/// The upstream OpenID providers, each with an HTTP client trusting its CA. Nothing is fetched
/// here: discovery happens at the first login, so a provider that is down does not stop the
/// server.
pub fn upstreams(cfg: &Config) -> anyhow::Result<Vec<std::sync::Arc<idbridge_bridge::Upstream>>> {
    let mut out = Vec::new();
    for (i, u) in cfg.upstreams.iter().enumerate() {
        let at = format!("upstreams[{i}]");
        let secret = u
            .client_secret_file
            .as_deref()
            .map(|p| client_secret(p, &format!("{at}.client_secret_file")))
            .transpose()?
            .map(idbridge_tokens::Secret::new);
        let mut b = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .connect_timeout(std::time::Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("idbridge/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &u.ca_file {
            let pem = std::fs::read(ca)
                .with_context(|| format!("field `{at}.ca_file`: cannot read {}", ca.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).with_context(|| {
                format!(
                    "field `{at}.ca_file`: {} is not a PEM certificate bundle",
                    ca.display()
                )
            })?;
            b = b.tls_certs_only(certs);
        }
        let http = b
            .build()
            .with_context(|| format!("field `{at}`: HTTP client"))?;
        let config = idbridge_bridge::UpstreamConfig {
            name: u.name.clone(),
            display_name: u.display_name.clone().unwrap_or_else(|| u.name.clone()),
            issuer: u.issuer.clone(),
            client_id: u.client_id.clone(),
            client_secret: secret,
            scopes: u.scopes.clone(),
            username_claim: u.username_claim.clone(),
            groups_claim: u.groups_claim.clone(),
            username_prefix: u.username_prefix.clone(),
            groups_prefix: u.groups_prefix.clone(),
            require_email_verified: u
                .require_email_verified
                .unwrap_or(u.username_claim == "email"),
            refresh: u.refresh,
            jit: u.provisioning == idbridge_core::Provisioning::Jit,
            link_by_name: u.link_by_name,
        };
        out.push(std::sync::Arc::new(idbridge_bridge::Upstream::new(
            config, http,
        )));
    }
    Ok(out)
}

/// Checks that every file the configuration names can be read and parsed, without writing.
pub fn check_files(cfg: &Config) -> anyhow::Result<()> {
    if let Some(d) = &cfg.directory {
        // Checks every field and reads the password and CA files; connects to nothing.
        idbridge_directory::LdapDirectory::new(d)?;
    }
    // The sync rules, checked field by field.
    crate::sync_cmd::check(cfg)?;
    // The workload mappings, and the files they need.
    crate::workload_cmd::check(cfg)?;
    crate::workload_cmd::warn(cfg);
    if let Some(k) = &cfg.kerberos {
        // Reads the keytab; writes nothing (the replay cache is created at the first login).
        kerberos_login(cfg, k)?;
    }
    // Reads the secret and CA files; asks no provider anything.
    upstreams(cfg)?;
    for (field, path) in [
        ("tls.cert_file", &cfg.tls.cert_file),
        ("tls.key_file", &cfg.tls.key_file),
        ("tls.client_ca_file", &cfg.tls.client_ca_file),
        ("proxy.client_ca_file", &cfg.proxy.client_ca_file),
    ] {
        if let Some(p) = path {
            std::fs::metadata(p)
                .with_context(|| format!("field `{field}`: cannot read {}", p.display()))?;
        }
    }
    if let Some(p) = &cfg.webhooks.bearer_token_file {
        read_secret_file(p, "webhooks.bearer_token_file")?;
    }
    kek(cfg)?;
    for (i, c) in cfg.clients.iter().enumerate() {
        if let Some(p) = &c.secret_file {
            read_secret_file(p, &format!("clients[{i}].secret_file"))?;
        }
    }
    if let Some(file) = &cfg.accounts_file {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("field `accounts_file`: cannot read {}", file.display()))?;
        let _: Vec<NewAccount> = parse_yaml(&text, &file.display().to_string())?;
    }
    Ok(())
}

/// The key-encryption key file: the configured one, else `<data_dir>/kek`.
fn kek_path(cfg: &Config) -> (PathBuf, bool) {
    match &cfg.keys.encryption_key_file {
        Some(p) => (p.clone(), true),
        None => (cfg.data_dir.join("kek"), false),
    }
}

/// The key-encryption key: the configured file, or `<data_dir>/kek` when it exists. Reads
/// only; see [`ensure_kek`].
pub fn kek(cfg: &Config) -> anyhow::Result<Option<Kek>> {
    let (path, configured) = kek_path(cfg);
    if !configured && !path.exists() {
        return Ok(None);
    }
    Kek::from_file(&path)
        .map(Some)
        .map_err(|e| anyhow::anyhow!("field `keys.encryption_key_file`: {e}"))
}

/// The key-encryption key, generated into `<data_dir>/kek` (mode 0600) on first start when
/// none is configured, so signing keys are never stored in the clear.
pub fn ensure_kek(cfg: &Config) -> anyhow::Result<Option<Kek>> {
    let (path, configured) = kek_path(cfg);
    if !configured && !path.exists() {
        Kek::create_file(&path).map_err(|e| anyhow::anyhow!("{e}"))?;
        tracing::info!(
            kek = %path.display(),
            "generated a key-encryption key for the signing keys; back it up apart from the store"
        );
    }
    kek(cfg)
}

/// Reads a client's secret file.
pub fn client_secret(path: &Path, field: &str) -> anyhow::Result<String> {
    read_secret_file(path, field)
}

/// The webhook bearer token: from the configured file, or generated into the data dir.
pub fn webhook_token(cfg: &Config) -> anyhow::Result<String> {
    match &cfg.webhooks.bearer_token_file {
        Some(p) => read_secret_file(p, "webhooks.bearer_token_file"),
        None => {
            let p = cfg.data_dir.join("webhook.token");
            if !p.exists() {
                let secret = new_secret(WEBHOOK_TOKEN_PREFIX);
                write_file(&p, secret.as_bytes())?;
            }
            read_secret_file(&p, "webhooks.bearer_token_file")
        }
    }
}

fn write_file(p: &Path, data: &[u8]) -> anyhow::Result<()> {
    idbridge_bridge::write_private(p, data).with_context(|| format!("cannot write {}", p.display()))
}

async fn ensure_admin(
    cfg: &Config,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<()> {
    let (store_ref, clock_ref) = (store.clone(), clock.clone());
    let ops = AdminOps::new(store, clock);
    let name: AccountName = "admin".parse()?;
    let token_file = cfg.data_dir.join("admin.token");
    let account = match ops.account(&name).await {
        Ok(a) => a,
        Err(idbridge_tokens::OpsError::NoSuchAccount(_)) => {
            let mut new = NewAccount::named(name.clone());
            new.groups.insert(admin_group());
            let a = ops.add_account(new).await?;
            tracing::info!(account = %a.name, uid = %a.uid, "created the admin account");
            a
        }
        Err(e) => return Err(e.into()),
    };
    if let Ok(existing) = std::fs::read_to_string(&token_file) {
        // Reuse the token on disk if the store still knows it (the store may have been reset).
        let hash = idbridge_tokens::hash_token(existing.trim());
        if let Some(t) = store_ref.static_token_by_hash(hash).await?
            && t.account == account.uid
            && t.is_usable(clock_ref.now())
        {
            return Ok(());
        }
        tracing::warn!(file = %token_file.display(), "admin.token is not valid in this store; creating a new one");
    }
    let created = ops
        .create_token(&account.name, None, "simple profile admin token".into())
        .await?;
    write_file(&token_file, format!("{}\n", created.secret).as_bytes())?;
    tracing::info!(token_id = %created.token.id, file = %token_file.display(), "created the admin token");
    // The one place the admin token is shown: to a person at a terminal, once, when it is made.
    // Redirected output (a service manager, a log collector) gets only the file's path.
    if std::io::stdout().is_terminal() {
        println!(
            "admin token (also in {}): {}",
            token_file.display(),
            created.secret
        );
    } else {
        println!("admin token written to {}", token_file.display());
    }
    Ok(())
}

/// Creates or updates the accounts listed in a YAML file, matched by name; the UID of an existing
/// account never changes. Accounts not in the file are left alone.
pub async fn sync_accounts_file(
    file: &Path,
    ops: &AdminOps,
    store: &dyn Store,
) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("field `accounts_file`: cannot read {}", file.display()))?;
    let wanted: Vec<NewAccount> = parse_yaml(&text, &file.display().to_string())?;
    let mut seen = std::collections::BTreeSet::new();
    for (i, a) in wanted.iter().enumerate() {
        if !seen.insert(&a.name) {
            bail!(
                "{}: entry [{i}]: account {} is listed twice",
                file.display(),
                a.name
            );
        }
    }
    let (mut created, mut updated) = (0, 0);
    for new in wanted {
        match ops.account(&new.name).await {
            Ok(existing) => {
                let merged = UserAccount {
                    groups: new.groups,
                    labels: new.labels,
                    default_namespace: new.default_namespace,
                    disabled: new.disabled,
                    identities: new.identities,
                    ..existing.clone()
                };
                if merged != existing {
                    store.update_account(&merged).await?;
                    updated += 1;
                }
            }
            Err(idbridge_tokens::OpsError::NoSuchAccount(_)) => {
                ops.add_account(new).await?;
                created += 1;
            }
            Err(e) => return Err(e.into()),
        }
    }
    tracing::info!(file = %file.display(), created, updated, "accounts file applied");
    Ok(())
}

fn write_kube_files(
    cfg: &Config,
    issuer: &str,
    ca_file: Option<&Path>,
    webhook_token: &str,
) -> anyhow::Result<()> {
    let (kubeconfig, authn) = kube_files(cfg, issuer, ca_file, webhook_token)?;
    write_file(
        &cfg.data_dir.join("webhook.kubeconfig"),
        kubeconfig.as_bytes(),
    )?;
    write_file(
        &cfg.data_dir.join("authentication-config.yaml"),
        authn.as_bytes(),
    )
}

/// The webhook kubeconfig and the JWT authenticator configuration, as YAML text.
fn kube_files(
    cfg: &Config,
    issuer: &str,
    ca_file: Option<&Path>,
    webhook_token: &str,
) -> anyhow::Result<(String, String)> {
    use serde_json::json;
    let ca_pem = ca_file.map(std::fs::read_to_string).transpose()?;
    let mut cluster = json!({ "server": format!("{issuer}/webhooks/tokenreview") });
    if let Some(pem) = &ca_pem {
        cluster["certificate-authority-data"] =
            json!(base64::engine::general_purpose::STANDARD.encode(pem));
    }
    let kubeconfig = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{ "name": "idbridge", "cluster": cluster }],
        "users": [{ "name": "kube-apiserver", "user": { "token": webhook_token } }],
        "contexts": [{ "name": "webhook", "context": { "cluster": "idbridge", "user": "kube-apiserver" } }],
        "current-context": "webhook",
    });
    let mut jwt_issuer = json!({ "url": issuer, "audiences": cfg.kubernetes.audiences });
    if cfg.kubernetes.audiences.len() > 1 {
        jwt_issuer["audienceMatchPolicy"] = json!("MatchAny");
    }
    if let Some(pem) = &ca_pem {
        jwt_issuer["certificateAuthority"] = json!(pem);
    }
    let authn = json!({
        "apiVersion": "apiserver.config.k8s.io/v1beta1",
        "kind": "AuthenticationConfiguration",
        "jwt": [{
            "issuer": jwt_issuer,
            "claimValidationRules": [{
                "expression": "!claims.name.startsWith('system:')",
                "message": "usernames starting with system: are refused",
            }],
            "claimMappings": {
                "username": { "claim": "name", "prefix": cfg.kubernetes.username_prefix },
                "groups": { "claim": "groups", "prefix": cfg.kubernetes.groups_prefix },
                "uid": { "claim": "sub" },
                "extra": [
                    { "key": "idbridge.io/amr", "valueExpression": "has(claims.amr) ? claims.amr : []" },
                    { "key": "idbridge.io/namespace", "valueExpression": "has(claims.namespace) ? [claims.namespace] : []" },
                    { "key": "idbridge.io/actor", "valueExpression": "has(claims.act) ? [claims.act.name] : []" },
                ],
            },
        }],
    });
    Ok((
        format!(
            "# kube-apiserver --authentication-token-webhook-config-file=<this file> \\\n\
             #   --authentication-token-webhook-version=v1 --authentication-token-webhook-cache-ttl=10s\n\
             # Webhook only: revocation and disabling take effect once kube-apiserver's caches of\n\
             # an answer expire, within the TTL plus 10 s. docs/kubernetes.md has both wirings.\n{}",
            serde_yaml_ng::to_string(&kubeconfig)?
        ),
        format!(
            "# kube-apiserver --authentication-config=<this file>, beside the webhook's flags\n\
             # Maps idbridge access tokens to the same user TokenReview returns.\n\
             # JWT + webhook: kube-apiserver verifies access tokens itself and tries this first,\n\
             # so a revoked session's or a disabled user's access token keeps working until it\n\
             # expires (tokens.access_token_ttl). Leave this out where revocation must bite.\n{}",
            serde_yaml_ng::to_string(&authn)?
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_kube_files_parse_and_carry_the_mapping() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.crt");
        std::fs::write(
            &ca,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let mut cfg = Config::default();
        cfg.kubernetes.username_prefix = "idb:".into();
        cfg.kubernetes.audiences = vec!["kubernetes".into(), "other".into()];
        let (kubeconfig, authn) =
            kube_files(&cfg, "https://idbridge.example:8443", Some(&ca), "idb_wh_x").unwrap();
        let k: serde_json::Value = serde_yaml_ng::from_str(&kubeconfig).unwrap();
        assert_eq!(
            k["clusters"][0]["cluster"]["server"],
            "https://idbridge.example:8443/webhooks/tokenreview"
        );
        assert_eq!(k["users"][0]["user"]["token"], "idb_wh_x");
        assert!(k["clusters"][0]["cluster"]["certificate-authority-data"].is_string());
        let a: serde_json::Value = serde_yaml_ng::from_str(&authn).unwrap();
        let jwt = &a["jwt"][0];
        assert_eq!(jwt["issuer"]["url"], "https://idbridge.example:8443");
        assert_eq!(jwt["issuer"]["audienceMatchPolicy"], "MatchAny");
        assert!(
            jwt["issuer"]["certificateAuthority"]
                .as_str()
                .unwrap()
                .contains("BEGIN CERTIFICATE")
        );
        assert_eq!(jwt["claimMappings"]["username"]["prefix"], "idb:");
        assert_eq!(jwt["claimMappings"]["uid"]["claim"], "sub");
        assert_eq!(
            jwt["claimValidationRules"][0]["message"],
            "usernames starting with system: are refused"
        );
    }
}
