//! `idbridge kubeconfig`: adds a cluster, a user that runs `idbridge login` as kubectl's exec
//! credential plugin, and a context to a kubeconfig.
//!
//! The file is edited as text, not re-serialized: the three entries are replaced or appended in
//! their sections and every other byte is kept, comments and layout included. The result is
//! parsed again and compared with the old file, entry by entry, before it replaces it (a
//! temporary file, fsync, rename); a layout that cannot be edited so is refused and nothing is
//! written. While editing, `<file>.lock` is held the way kubectl holds it, so kubectl and idbridge
//! never write the file at once.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use clap::Args;
use serde_json::{Value, json};

use crate::login::{Fallback, Method};

/// Flags of `idbridge kubeconfig`.
#[derive(Debug, Args)]
pub struct KubeconfigArgs {
    /// The Kubernetes API server's URL.
    #[arg(long, value_name = "URL")]
    pub server: String,
    /// The idbridge server, by its issuer URL.
    #[arg(long, env = "IDBRIDGE_ISSUER", value_name = "URL")]
    pub issuer: String,
    /// How kubectl logs you in (see `idbridge login --help`).
    #[arg(long, value_enum, default_value = "auto")]
    pub method: Method,
    /// With `--method auto`: the method used when there is no Kerberos ticket [default: browser].
    #[arg(long, value_enum)]
    pub fallback: Option<Fallback>,
    /// PEM CA bundle of the API server's certificate, embedded in the kubeconfig [default: the
    /// one idbridge wrote before, else the system's roots].
    #[arg(long, value_name = "FILE")]
    pub cluster_ca_file: Option<PathBuf>,
    /// PEM CA bundle of the idbridge server's certificate, which `idbridge login` is told to
    /// trust [default: the system's roots].
    #[arg(long, value_name = "FILE")]
    pub issuer_ca_file: Option<PathBuf>,
    /// Name of the context and of its cluster; the user is `idbridge-<NAME>` [default: the API
    /// server's host].
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,
    /// Audience of the access token [default: the server's first audience].
    #[arg(long)]
    pub audience: Option<String>,
    /// With `--method password`: the directory user name [default: asked on the terminal].
    #[arg(long)]
    pub username: Option<String>,
    /// For Kerberos: the service to ask a ticket for, when the issuer's host is not the name
    /// of idbridge's service principal [default: HTTP@<issuer host>].
    #[arg(long, value_name = "SERVICE@HOST")]
    pub service: Option<String>,
    /// The kubeconfig to write [default: the first file of $KUBECONFIG that exists, else its
    /// last, else ~/.kube/config; as kubectl chooses].
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// The command kubectl runs [default: the path of this idbridge binary].
    #[arg(long)]
    pub command: Option<String>,
    /// Leave the kubeconfig's current context as it is.
    #[arg(long)]
    pub no_switch: bool,
    /// Replace a cluster, user or context of the same name that idbridge did not write.
    #[arg(long)]
    pub force: bool,
}

/// The file to edit, as kubectl picks the file it writes new entries to.
fn target(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_owned());
    }
    if let Some(list) = std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty()) {
        let files: Vec<PathBuf> = std::env::split_paths(&list)
            .filter(|p| !p.as_os_str().is_empty())
            .collect();
        if let Some(p) = files.iter().find(|p| p.exists()).or(files.last()) {
            return Ok(p.clone());
        }
    }
    Ok(std::env::var_os("HOME")
        .map(PathBuf::from)
        .context("no kubeconfig: pass --kubeconfig, or set KUBECONFIG or HOME")?
        .join(".kube")
        .join("config"))
}

fn absolute(p: &Path, flag: &str) -> anyhow::Result<PathBuf> {
    std::fs::canonicalize(p).with_context(|| format!("{flag} {}", p.display()))
}

/// The contents of the PEM certificate bundle `f`, given by `flag`.
fn pem_bundle(f: &Path, flag: &str) -> anyhow::Result<Vec<u8>> {
    let pem = std::fs::read(f).with_context(|| format!("{flag} {}", f.display()))?;
    if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
        bail!("{flag} {}: not a PEM certificate bundle", f.display());
    }
    Ok(pem)
}

/// The path this binary was run by, as the user named it: a symlink stays a symlink, so
/// that swapping the link upgrades every kubeconfig that names it. A bare name is looked up on
/// `PATH` as the shell did.
fn this_binary() -> Option<PathBuf> {
    let argv0 = PathBuf::from(std::env::args_os().next()?);
    if argv0.components().count() > 1 {
        return std::path::absolute(&argv0).ok();
    }
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join(&argv0))
            .find(|p| p.is_file())
    });
    found
        .and_then(|p| std::path::absolute(p).ok())
        .or_else(|| std::env::current_exe().ok())
}

/// A value's name on the command line.
fn value_name<T: clap::ValueEnum>(v: &T) -> String {
    v.to_possible_value()
        .map(|p| p.get_name().to_owned())
        .unwrap_or_default()
}

/// The three entries, each a YAML block sequence item.
struct Entries {
    context: String,
    user: String,
    cluster: Value,
    user_entry: Value,
    context_entry: Value,
}

fn entries(args: &KubeconfigArgs) -> anyhow::Result<Entries> {
    crate::login::check_method_flags(
        args.method,
        args.fallback,
        &[
            ("--username", args.username.is_some(), Method::Password),
            ("--service", args.service.is_some(), Method::Kerberos),
        ],
    )?;
    let server = reqwest::Url::parse(&args.server)
        .with_context(|| format!("--server {:?} is not a URL", args.server))?;
    if server.scheme() != "https" {
        bail!(
            "--server {}: kubectl sends tokens only over https",
            args.server
        );
    }
    let host = server
        .host_str()
        .with_context(|| format!("--server {:?} names no host", args.server))?;
    let issuer = reqwest::Url::parse(&args.issuer)
        .with_context(|| format!("--issuer {:?} is not a URL", args.issuer))?;
    if issuer.scheme() != "https" {
        bail!(
            "--issuer {}: idbridge is reached over https only (passwords and tokens go there)",
            args.issuer
        );
    }
    let context = match &args.context {
        Some(c) if c.trim().is_empty() => bail!("--context is empty"),
        Some(c) => c.clone(),
        None => match server.port() {
            Some(p) => format!("{host}-{p}"),
            None => host.to_owned(),
        },
    };
    let user = format!("idbridge-{context}");
    let mut cluster = json!({"server": args.server.trim_end_matches('/')});
    if let Some(f) = &args.cluster_ca_file {
        cluster["certificate-authority-data"] =
            STANDARD.encode(pem_bundle(f, "--cluster-ca-file")?).into();
    }
    let mut login = vec![
        "login".to_owned(),
        "--issuer".to_owned(),
        args.issuer.trim_end_matches('/').to_owned(),
    ];
    let mut pass = |flag: &str, value: Option<String>| {
        if let Some(v) = value {
            login.push(flag.to_owned());
            login.push(v);
        }
    };
    pass("--method", Some(value_name(&args.method)));
    pass("--fallback", args.fallback.as_ref().map(value_name));
    if let Some(f) = &args.issuer_ca_file {
        pem_bundle(f, "--issuer-ca-file")?;
        let abs = absolute(f, "--issuer-ca-file")?;
        pass("--ca-file", Some(abs.display().to_string()));
    }
    pass("--audience", args.audience.clone());
    pass("--username", args.username.clone());
    pass("--service", args.service.clone());
    let command = match &args.command {
        Some(c) => c.clone(),
        None => this_binary()
            .context("cannot tell where this idbridge binary is: pass --command")?
            .display()
            .to_string(),
    };
    Ok(Entries {
        cluster: json!({"name": context, "cluster": cluster}),
        user_entry: json!({"name": user, "user": {"exec": {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": command,
            "args": login,
            "interactiveMode": "IfAvailable",
            "provideClusterInfo": false,
            "installHint": "idbridge logs you in to this cluster, and this kubeconfig names a binary that is not there: install idbridge (see its docs/kubectl.md), then run `idbridge kubeconfig` again so that the entry names where it is",
        }}}),
        context_entry: json!({"name": context, "context": {"cluster": context, "user": user}}),
        context,
        user,
    })
}

/// A value as one YAML block sequence item, indented by `indent`.
fn item(v: &Value, indent: &str) -> anyhow::Result<String> {
    let text = serde_yaml_ng::to_string(&[v])?;
    Ok(text.lines().map(|l| format!("{indent}{l}\n")).collect())
}

fn is_blank_or_comment(line: &str) -> bool {
    let t = line.trim();
    t.is_empty() || t.starts_with('#')
}

/// Whether `line` is a top-level key (column 0, not a comment, not a sequence item).
fn top_level(line: &str) -> bool {
    !line.starts_with([' ', '\t', '-', '#', '\n', '\r']) && !line.is_empty()
}

/// A line's value after its key, and its trailing comment (`# ...`, or empty).
fn value_and_comment(after_key: &str) -> (&str, &str) {
    let t = after_key.trim_end_matches(['\n', '\r']);
    let at = t
        .char_indices()
        .find(|&(i, c)| c == '#' && (i == 0 || t[..i].ends_with([' ', '\t'])))
        .map_or(t.len(), |(i, _)| i);
    (t[..at].trim(), t[at..].trim_end())
}

/// Sets the entry named `name` of `section` to `value`: replaces the item that has that name, or
/// appends one; every other line is kept.
fn set_entry(text: &str, section: &str, name: &str, value: &Value) -> anyhow::Result<String> {
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let head = format!("{section}:");
    let Some(k) = lines
        .iter()
        .position(|l| l.starts_with(&head) && top_level(l))
    else {
        let mut out = text.to_owned();
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(&head);
        out.push('\n');
        out.push_str(&item(value, "")?);
        return Ok(out);
    };
    let (rest, comment) = value_and_comment(&lines[k][head.len()..]);
    match rest {
        "" => {}
        "[]" | "null" | "~" => {
            let mut out: String = lines[..k].concat();
            out.push_str(&head);
            if !comment.is_empty() {
                out.push_str("  ");
                out.push_str(comment);
            }
            out.push('\n');
            out.push_str(&item(value, "")?);
            out.push_str(&lines[k + 1..].concat());
            return Ok(out);
        }
        _ => bail!("its {section} are written in a layout idbridge does not edit ({rest:.20}…)"),
    }
    let end = (k + 1..lines.len())
        .find(|&j| top_level(lines[j]))
        .unwrap_or(lines.len());
    let indent: String = lines[k + 1..end]
        .iter()
        .find(|l| l.trim_start().starts_with('-'))
        .map(|l| l[..l.len() - l.trim_start().len()].to_owned())
        .unwrap_or_default();
    let dash = format!("{indent}-");
    let starts: Vec<usize> = (k + 1..end)
        .filter(|&j| lines[j].starts_with(&dash))
        .collect();
    for (n, &s) in starts.iter().enumerate() {
        let mut e = starts.get(n + 1).copied().unwrap_or(end);
        // Blank lines and comments after the item's last line are not its own.
        while e > s + 1 && is_blank_or_comment(lines[e - 1]) {
            e -= 1;
        }
        let parsed: Value = serde_yaml_ng::from_str(&lines[s..e].concat())
            .with_context(|| format!("its {section} entry at line {} cannot be read", s + 1))?;
        if parsed.pointer("/0/name").and_then(Value::as_str) == Some(name) {
            let mut out: String = lines[..s].concat();
            out.push_str(&item(value, &indent)?);
            out.push_str(&lines[e..].concat());
            return Ok(out);
        }
    }
    // Not there: after the section's last item.
    let mut at = end;
    while at > k + 1 && is_blank_or_comment(lines[at - 1]) {
        at -= 1;
    }
    let mut out: String = lines[..at].concat();
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(&item(value, &indent)?);
    out.push_str(&lines[at..].concat());
    Ok(out)
}

/// Sets `current-context`.
fn set_current(text: &str, name: &str) -> anyhow::Result<String> {
    let value = serde_yaml_ng::to_string(name)?;
    let line = format!("current-context: {}\n", value.trim_end());
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    match lines.iter().position(|l| l.starts_with("current-context:")) {
        Some(k) => {
            let (_, comment) = value_and_comment(&lines[k]["current-context:".len()..]);
            let line = if comment.is_empty() {
                line
            } else {
                format!("current-context: {}  {comment}\n", value.trim_end())
            };
            Ok(format!(
                "{}{line}{}",
                lines[..k].concat(),
                lines[k + 1..].concat()
            ))
        }
        None => {
            let mut out = text.to_owned();
            if !out.is_empty() && !out.ends_with('\n') {
                out.push('\n');
            }
            out.push_str(&line);
            Ok(out)
        }
    }
}

fn parse(text: &str) -> anyhow::Result<serde_json::Map<String, Value>> {
    if text.trim().is_empty() {
        return Ok(serde_json::Map::new());
    }
    match serde_yaml_ng::from_str::<Value>(text)? {
        Value::Object(m) => Ok(m),
        Value::Null => Ok(serde_json::Map::new()),
        _ => bail!("it is not a kubeconfig (not a mapping)"),
    }
}

/// The entry named `name` in `section` of a parsed kubeconfig.
fn find<'a>(
    config: &'a serde_json::Map<String, Value>,
    section: &str,
    name: &str,
) -> Option<&'a Value> {
    config
        .get(section)?
        .as_array()?
        .iter()
        .find(|i| i.get("name").and_then(Value::as_str) == Some(name))
}

/// The three entries to write, given what the file holds.
///
/// Entries idbridge wrote before (the context names its cluster and the `idbridge-` user, and
/// that user runs `login`) are updated: what idbridge sets is replaced and every other field a
/// person added is kept (a context's `namespace`, a cluster's `proxy-url`, the exec's `env`, the
/// cluster's CA when no new one is given). An entry of the same name that idbridge did not write
/// is refused unless `force`, which replaces all three whole.
fn settle(
    e: &Entries,
    before: &serde_json::Map<String, Value>,
    force: bool,
) -> anyhow::Result<[(&'static str, String, Value); 3]> {
    let cluster = find(before, "clusters", &e.context);
    let user = find(before, "users", &e.user);
    let context = find(before, "contexts", &e.context);
    let ours = context.is_some_and(|c| {
        c.pointer("/context/cluster").and_then(Value::as_str) == Some(&e.context)
            && c.pointer("/context/user").and_then(Value::as_str) == Some(&e.user)
    }) && user
        .is_none_or(|u| u.pointer("/user/exec/args/0").and_then(Value::as_str) == Some("login"));
    let fresh = [
        ("clusters", e.context.clone(), e.cluster.clone()),
        ("users", e.user.clone(), e.user_entry.clone()),
        ("contexts", e.context.clone(), e.context_entry.clone()),
    ];
    let found = [
        ("cluster", &e.context, cluster),
        ("user", &e.user, user),
        ("context", &e.context, context),
    ];
    if !ours
        && !force
        && let Some((kind, name, _)) = found.iter().find(|(_, _, v)| v.is_some())
    {
        bail!(
            "it has a {kind} named {name} that idbridge did not write: choose another name with --context, or replace it with --force"
        );
    }
    if !ours {
        if force
            && cluster.is_some_and(|c| {
                c.pointer("/cluster/certificate-authority-data").is_some()
                    || c.pointer("/cluster/certificate-authority").is_some()
            })
            && e.cluster
                .pointer("/cluster/certificate-authority-data")
                .is_none()
        {
            eprintln!(
                "warning: the cluster {} had a CA of its own, and the new entry trusts the system's roots: pass --cluster-ca-file to keep one",
                e.context
            );
        }
        return Ok(fresh);
    }
    // Ours: the new fields over the old entry's.
    let over = |old: Option<&Value>, new: &Value, kind: &str, keep: &dyn Fn(&mut Value, &Value)| {
        let mut inner = old
            .and_then(|o| o.get(kind))
            .filter(|v| v.is_object())
            .cloned()
            .unwrap_or_else(|| json!({}));
        keep(&mut inner, &new[kind]);
        json!({"name": new["name"], kind: inner})
    };
    let set_all = |inner: &mut Value, new: &Value| {
        for (k, v) in new.as_object().into_iter().flatten() {
            inner[k] = v.clone();
        }
    };
    let cluster_fields = |inner: &mut Value, new: &Value| {
        if new.get("certificate-authority-data").is_some()
            && let Some(m) = inner.as_object_mut()
        {
            // A new CA replaces whichever way the old one was given.
            m.remove("certificate-authority");
            m.remove("insecure-skip-tls-verify");
        }
        set_all(inner, new);
    };
    let exec_fields = |inner: &mut Value, new: &Value| {
        let env = inner.pointer("/exec/env").cloned();
        set_all(inner, new);
        if let Some(env) = env {
            inner["exec"]["env"] = env;
        }
    };
    let [c, u, x] = fresh;
    Ok([
        (c.0, c.1, over(cluster, &c.2, "cluster", &cluster_fields)),
        (u.0, u.1, over(user, &u.2, "user", &exec_fields)),
        (x.0, x.1, over(context, &x.2, "context", &set_all)),
    ])
}

/// The merged file's text, checked: every entry but ours is what it was.
fn merge(old: &str, e: &Entries, switch: bool, force: bool) -> anyhow::Result<String> {
    // A file whose every line ends in CRLF is edited as LF and written back as CRLF.
    let crlf = old.contains("\r\n") && !old.replace("\r\n", "").contains('\n');
    if crlf {
        return Ok(merge(&old.replace("\r\n", "\n"), e, switch, force)?.replace('\n', "\r\n"));
    }
    let before = parse(old)?;
    let ours = settle(e, &before, force)?;
    let mut text = if old.trim().is_empty() {
        "apiVersion: v1\nkind: Config\n".to_owned()
    } else {
        old.to_owned()
    };
    for (section, name, value) in &ours {
        text = set_entry(&text, section, name, value)?;
    }
    let current_before = before.get("current-context").cloned();
    if switch {
        text = set_current(&text, &e.context)?;
    }
    // The check: parse the result and compare it with what it must be.
    let after = parse(&text).context("the merged file does not parse")?;
    let mut expect = before.clone();
    for (section, name, value) in &ours {
        let list = expect
            .entry(*section)
            .or_insert_with(|| Value::Array(Vec::new()));
        if list.is_null() {
            *list = Value::Array(Vec::new());
        }
        let Some(items) = list.as_array_mut() else {
            bail!("its {section} is not a list");
        };
        match items
            .iter_mut()
            .find(|i| i.get("name").and_then(Value::as_str) == Some(name.as_str()))
        {
            Some(i) => *i = value.clone(),
            None => items.push(value.clone()),
        }
    }
    if switch {
        expect.insert("current-context".into(), e.context.clone().into());
    } else if let Some(c) = current_before {
        expect.insert("current-context".into(), c);
    }
    if old.trim().is_empty() {
        expect.insert("apiVersion".into(), "v1".into());
        expect.insert("kind".into(), "Config".into());
    }
    if Value::Object(after) != Value::Object(expect) {
        bail!("its layout is one idbridge cannot edit without changing other entries");
    }
    Ok(text)
}

/// Holds `<file>.lock` as kubectl does while it writes a kubeconfig.
struct FileLock(PathBuf);

impl FileLock {
    fn take(file: &Path) -> anyhow::Result<Self> {
        let mut name = file.as_os_str().to_owned();
        name.push(".lock");
        let lock = PathBuf::from(name);
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&lock)
        {
            Ok(_) => Ok(Self(lock)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => bail!(
                "{} exists: another kubectl or idbridge is writing the kubeconfig; if none is, remove that file",
                lock.display()
            ),
            Err(e) => Err(e).with_context(|| format!("cannot create {}", lock.display())),
        }
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The kubeconfig's directory, created (private) when missing.
fn parent_dir(path: &Path) -> anyhow::Result<&Path> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    crate::files::create_dir(dir)?;
    Ok(dir)
}

/// Replaces `path` with `text` atomically, keeping its mode (0600 for a new file).
fn replace(path: &Path, text: &str) -> anyhow::Result<()> {
    let dir = parent_dir(path)?;
    let file_name = path
        .file_name()
        .context("the kubeconfig path names no file")?;
    let tmp = dir.join(format!(".{}.idbridge-tmp", file_name.to_string_lossy()));
    #[cfg(unix)]
    let mode = {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).map_or(0o600, |m| m.permissions().mode() & 0o777)
    };
    #[cfg(not(unix))]
    let mode = 0o600;
    crate::files::replace(path, &tmp, text.as_bytes(), mode, "write")
}

pub fn run(args: &KubeconfigArgs) -> anyhow::Result<()> {
    let e = entries(args)?;
    let named = target(args.kubeconfig.as_deref())?;
    parent_dir(&named)?;
    // Locked by the name kubectl uses, and edited where it points when it is a symlink.
    let _lock = FileLock::take(&named)?;
    let path = match std::fs::canonicalize(&named) {
        Ok(real) => real,
        Err(_) if named.is_symlink() => bail!(
            "{} is a symbolic link to a file that does not exist: create it, or name another with --kubeconfig",
            named.display()
        ),
        Err(_) => named.clone(),
    };
    let old = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(err) => return Err(err).with_context(|| format!("cannot read {}", path.display())),
    };
    let text = merge(&old, &e, !args.no_switch, args.force).map_err(|err| {
        let why = format!("{err:#}");
        // A layout idbridge cannot edit has a way around it; a name that is taken has its own.
        let around = if why.contains("did not write") {
            ""
        } else {
            " (write to a new file with --kubeconfig, then combine them with KUBECONFIG=a:b kubectl config view --flatten)"
        };
        anyhow::anyhow!(
            "cannot merge into {}: {why}; nothing was changed{around}",
            path.display()
        )
    })?;
    if text == old {
        outln!(
            "{}: cluster, user and context {} are already as asked; nothing written",
            path.display(),
            e.context
        );
        return Ok(());
    }
    replace(&path, &text)?;
    outln!(
        "{}: cluster {c}, user {u} and context {c} written{}",
        path.display(),
        if args.no_switch {
            String::new()
        } else {
            format!("; current context is now {}", e.context)
        },
        c = e.context,
        u = e.user,
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(context: &str) -> KubeconfigArgs {
        KubeconfigArgs {
            server: "https://k8s.example.com:6443".into(),
            issuer: "https://idbridge.example.com".into(),
            method: Method::Device,
            fallback: None,
            cluster_ca_file: None,
            issuer_ca_file: None,
            context: Some(context.into()),
            audience: None,
            username: None,
            service: None,
            kubeconfig: None,
            command: Some("idbridge".into()),
            no_switch: false,
            force: false,
        }
    }

    const KUBECTL_WRITTEN: &str = "apiVersion: v1
clusters:
- cluster:
    certificate-authority-data: QUJD
    server: https://other.example.com
  name: other
# a comment kubectl would drop, kept here
- cluster:
    server: https://old.example.com
  name: prod
contexts:
- context:
    cluster: other
    user: other-admin
  name: other
- context: {cluster: prod, user: idbridge-prod}
  name: prod
current-context: other
kind: Config
preferences: {}
users:
- name: other-admin
  user:
    token: \"abc: def\"
";

    #[test]
    fn a_merge_replaces_ours_and_keeps_every_other_line() {
        let e = entries(&args("prod")).unwrap();
        let text = merge(KUBECTL_WRITTEN, &e, true, false).unwrap();
        // Every line of the other entries is still there, in order.
        for keep in [
            "    certificate-authority-data: QUJD\n    server: https://other.example.com\n  name: other\n# a comment kubectl would drop, kept here\n",
            "- context:\n    cluster: other\n    user: other-admin\n  name: other\n",
            "- name: other-admin\n  user:\n    token: \"abc: def\"\n",
            "preferences: {}\n",
        ] {
            assert!(text.contains(keep), "{keep:?} lost:\n{text}");
        }
        assert!(!text.contains("old.example.com"), "{text}");
        assert!(text.contains("current-context: prod\n"), "{text}");
        let v: Value = serde_yaml_ng::from_str(&text).unwrap();
        assert_eq!(v["clusters"].as_array().unwrap().len(), 2);
        assert_eq!(v["users"].as_array().unwrap().len(), 2);
        assert_eq!(v["contexts"][1]["context"]["user"], "idbridge-prod");
        assert_eq!(v["users"][1]["user"]["exec"]["args"][4], "device");
        // Again: nothing changes the second time.
        assert_eq!(merge(&text, &e, true, false).unwrap(), text);
    }

    #[test]
    fn a_new_file_gets_a_whole_kubeconfig() {
        let e = entries(&args("dev")).unwrap();
        let text = merge("", &e, true, false).unwrap();
        let v: Value = serde_yaml_ng::from_str(&text).unwrap();
        assert_eq!(v["kind"], "Config");
        assert_eq!(v["current-context"], "dev");
        assert_eq!(
            v["clusters"][0]["cluster"]["server"],
            "https://k8s.example.com:6443"
        );
        assert_eq!(
            v["users"][0]["user"]["exec"]["interactiveMode"],
            "IfAvailable"
        );
    }

    #[test]
    fn indented_lists_empty_lists_and_no_switch() {
        let old = "apiVersion: v1\nkind: Config\nclusters:\n  - name: a\n    cluster: {server: https://a}\nusers: []\ncontexts:\ncurrent-context: a\n";
        let e = entries(&args("b")).unwrap();
        let text = merge(old, &e, false, false).unwrap();
        assert!(text.starts_with("apiVersion: v1\nkind: Config\nclusters:\n  - name: a\n    cluster: {server: https://a}\n  - name: b\n"), "{text}");
        assert!(text.contains("current-context: a\n"), "{text}");
    }

    #[test]
    fn crlf_comments_quoted_names_and_a_document_marker_are_kept() {
        let old = "---\r\napiVersion: v1\r\nkind: Config\r\nclusters:  # mine\r\n- name: \"a\"\r\n  cluster: {server: https://a}\r\nusers: []  # none yet\r\ncontexts:\r\n- name: 'b'\r\n  context: {cluster: b, user: idbridge-b}\r\ncurrent-context: a  # the usual\r\n";
        let e = entries(&args("b")).unwrap();
        let text = merge(old, &e, true, false).unwrap();
        assert!(
            !text.replace("\r\n", "").contains('\n'),
            "CRLF kept: {text:?}"
        );
        for keep in [
            "---\r\napiVersion: v1\r\nkind: Config\r\nclusters:  # mine\r\n- name: \"a\"\r\n  cluster: {server: https://a}\r\n",
            "users:  # none yet\r\n",
            "current-context: b  # the usual\r\n",
        ] {
            assert!(text.contains(keep), "{keep:?} not in {text:?}");
        }
        // The quoted context named b is ours, replaced in place.
        let v: Value = serde_yaml_ng::from_str(&text).unwrap();
        assert_eq!(v["contexts"].as_array().unwrap().len(), 1, "{text}");
        assert_eq!(v["contexts"][0]["context"]["user"], "idbridge-b");
        assert_eq!(v["clusters"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn a_rerun_keeps_what_idbridge_does_not_set() {
        let old = "apiVersion: v1
kind: Config
clusters:
- name: prod
  cluster:
    server: https://old.example.com
    certificate-authority-data: T0xE
    proxy-url: socks5://proxy:1080
users:
- name: idbridge-prod
  user:
    exec:
      apiVersion: client.authentication.k8s.io/v1
      command: idbridge
      args: [login, --issuer, https://old.example.com]
      env: [{name: KRB5CCNAME, value: /tmp/cc}]
contexts:
- name: prod
  context: {cluster: prod, user: idbridge-prod, namespace: team-a}
current-context: prod
";
        let e = entries(&args("prod")).unwrap();
        let text = merge(old, &e, true, false).unwrap();
        let v: Value = serde_yaml_ng::from_str(&text).unwrap();
        let cluster = &v["clusters"][0]["cluster"];
        assert_eq!(cluster["server"], "https://k8s.example.com:6443");
        assert_eq!(cluster["certificate-authority-data"], "T0xE");
        assert_eq!(cluster["proxy-url"], "socks5://proxy:1080");
        let exec = &v["users"][0]["user"]["exec"];
        assert_eq!(exec["args"][2], "https://idbridge.example.com");
        assert_eq!(exec["env"][0]["name"], "KRB5CCNAME");
        let context = &v["contexts"][0]["context"];
        assert_eq!(context["namespace"], "team-a");
        assert_eq!(context["user"], "idbridge-prod");
        assert_eq!(merge(&text, &e, true, false).unwrap(), text);
    }

    #[test]
    fn an_entry_idbridge_did_not_write_is_refused_unless_forced() {
        let e = entries(&args("other")).unwrap();
        let err = merge(KUBECTL_WRITTEN, &e, true, false).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("cluster named other") && text.contains("--force"),
            "{text}"
        );
        let text = merge(KUBECTL_WRITTEN, &e, true, true).unwrap();
        let v: Value = serde_yaml_ng::from_str(&text).unwrap();
        assert_eq!(v["clusters"][0]["name"], "other");
        assert!(v["clusters"][0]["cluster"]["certificate-authority-data"].is_null());
        assert_eq!(v["contexts"][0]["context"]["user"], "idbridge-other");
        // A cluster alone of that name, with no context, is not ours either.
        let lone = "clusters:\n- name: x\n  cluster: {server: https://x}\n";
        let e = entries(&args("x")).unwrap();
        let err = merge(lone, &e, true, false).unwrap_err();
        assert!(err.to_string().contains("cluster named x"), "{err}");
        // Nor a context of that name running another user.
        let foreign = "contexts:\n- name: x\n  context: {cluster: x, user: admin}\n";
        let err = merge(foreign, &e, true, false).unwrap_err();
        assert!(err.to_string().contains("context named x"), "{err}");
    }

    #[test]
    fn flags_of_another_method_are_refused() {
        let mut a = args("x");
        a.username = Some("alice".into());
        let err = entries(&a).err().unwrap().to_string();
        assert!(
            err.contains("--username") && err.contains("--method password"),
            "{err}"
        );
        let mut a = args("x");
        a.fallback = Some(Fallback::Device);
        let err = entries(&a).err().unwrap().to_string();
        assert!(
            err.contains("--fallback") && err.contains("--method auto"),
            "{err}"
        );
        let mut a = args("x");
        a.method = Method::Auto;
        a.fallback = Some(Fallback::Password);
        a.username = Some("alice".into());
        a.service = Some("HTTP@h".into());
        entries(&a).unwrap();
    }

    #[test]
    fn a_layout_that_cannot_be_edited_is_refused() {
        let e = entries(&args("b")).unwrap();
        let json = r#"{"apiVersion": "v1", "kind": "Config", "clusters": [{"name": "a", "cluster": {"server": "https://a"}}]}"#;
        assert!(merge(json, &e, true, false).is_err());
        let flow = "clusters: [{name: a, cluster: {server: https://a}}]\n";
        let err = merge(flow, &e, true, false).unwrap_err();
        assert!(err.to_string().contains("clusters"), "{err}");
    }

    #[test]
    fn bad_flags_name_themselves() {
        let mut a = args("x");
        a.server = "http://k8s".into();
        assert!(entries(&a).err().unwrap().to_string().contains("--server"));
        let mut a = args("x");
        a.context = Some(" ".into());
        assert!(entries(&a).err().unwrap().to_string().contains("--context"));
    }
}
