//! `idbridge`: one binary for the bridge service and its administration.
//!
//! The binary owns what only a process has: the configuration file (parsed into typed sections,
//! every error naming its field), the data directory and its secret files, logging, signals, and
//! the command line. `serve` builds the token service (`idbridge-tokens`) over the store and the
//! bridge (`idbridge-bridge`) over the service, then runs the HTTP server and the key
//! maintenance timer; a reload builds new settings and swaps them in whole. The admin commands
//! (`user`, `token`, `session`, `revoke`, `keys`) talk to a running server through the admin API,
//! or with `--offline` call the same admin operations on the store directly. `login` is the
//! client side: it gets tokens from an idbridge for `kubectl`.

/// `println!` for the commands: a line on standard output, the command ending quietly when its
/// reader has gone (see [`out`]).
macro_rules! outln {
    () => {
        $crate::out::line(format_args!(""))?
    };
    ($($arg:tt)*) => {
        $crate::out::line(format_args!($($arg)*))?
    };
}

mod admin_cmd;
mod agent;
mod config;
mod files;
mod kubeconfig;
mod login;
mod out;
mod profile;
mod serve;
mod sync_cmd;
mod workload_cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Bring an enterprise's identity into Kubernetes.
///
/// Start with `idbridge serve`: with no config it creates ./idbridge-data holding a store, a
/// signing key, a TLS certificate, an `admin` account with its token (admin.token), and the two
/// files kube-apiserver needs (webhook.kubeconfig, authentication-config.yaml).
#[derive(Debug, Parser)]
#[command(
    name = "idbridge",
    version,
    about,
    long_about,
    after_help = "Examples:\n  \
        idbridge serve                                   # simple profile in ./idbridge-data\n  \
        idbridge serve --config idbridge.yaml --check    # validate a configuration\n  \
        idbridge user add alice --group dev --namespace team-a\n  \
        idbridge token create --user alice --ttl 30d     # prints the token once\n  \
        idbridge user disable alice                      # her tokens fail at the next review\n  \
        idbridge session list --user alice\n  \
        idbridge revoke --user alice                     # every session and access token\n  \
        idbridge revoke --serviceaccount payments/api    # its pods get no more Kerberos credentials\n  \
        idbridge keys rotate                             # next key signs after its publish lead\n  \
        idbridge kubeconfig --server https://k8s.example.com:6443 --issuer https://idbridge.example.com\n  \
        idbridge login --issuer https://idbridge.example.com   # Kerberos, else the browser\n  \
        idbridge whoami                                  # the cached session's user and groups"
)]
struct Cli {
    /// Log format on standard error.
    #[arg(
        long,
        value_enum,
        default_value = "text",
        global = true,
        env = "IDBRIDGE_LOG_FORMAT"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the bridge: TokenReview webhook, OIDC discovery and JWKS, token endpoint, admin API.
    ///
    /// SIGTERM drains open requests and stops; SIGHUP re-reads the config and accounts file.
    Serve(serve::ServeArgs),
    /// Manage user accounts (through the running server, or --offline).
    User {
        #[command(subcommand)]
        cmd: admin_cmd::UserCmd,
        #[command(flatten)]
        target: admin_cmd::Target,
    },
    /// Manage static tokens (through the running server, or --offline).
    Token {
        #[command(subcommand)]
        cmd: admin_cmd::TokenCmd,
        #[command(flatten)]
        target: admin_cmd::Target,
    },
    /// List and revoke sessions (through the running server, or --offline).
    Session {
        #[command(subcommand)]
        cmd: admin_cmd::SessionCmd,
        #[command(flatten)]
        target: admin_cmd::Target,
    },
    /// Revoke every session and access token of a user, or one access token by jti (the next
    /// TokenReview refuses them); or a workload's Kerberos credentials: a pod, a serviceaccount
    /// or a principal (further issuance refused at once; `--rotate` also gives the principal
    /// new keys).
    Revoke {
        #[command(flatten)]
        what: admin_cmd::RevokeArgs,
        #[command(flatten)]
        target: admin_cmd::Target,
    },
    /// List and rotate signing keys (through the running server, or --offline).
    Keys {
        #[command(subcommand)]
        cmd: admin_cmd::KeysCmd,
        #[command(flatten)]
        target: admin_cmd::Target,
    },
    /// Log in (with your Kerberos ticket, in a browser, with a device code or your directory
    /// password) and print or cache the session's access token; kubectl runs it as its exec
    /// credential plugin.
    ///
    /// The session is cached per issuer, audience and identity: a fresh access token is reused,
    /// a stale one refreshed, and only an ended session logs in again. Parallel runs share one
    /// refresh and one login. Under kubectl without a terminal it never prompts, and says what
    /// to run instead.
    #[command(after_help = "Examples:\n  \
        # Kerberos if you hold a ticket, else the browser:\n  \
        idbridge login --issuer https://idbridge.example.com\n  \
        # a code to enter on any device:\n  \
        idbridge login --issuer https://idbridge.example.com --method device\n  \
        # your directory password, asked on the terminal:\n  \
        idbridge login --issuer https://idbridge.example.com --method password --username alice\n  \
        # the access token alone, for curl or a script:\n  \
        idbridge login --issuer https://idbridge.example.com --output token\n  \
        # the simple profile's server, and its Kerberos name:\n  \
        idbridge login --issuer https://127.0.0.1:8443 --ca-file idbridge-data/ca.crt \\\n      \
        --service HTTP@idbridge.example.com\n\n\
        See docs/kubectl.md for every message and how to reset.")]
    Login(login::LoginArgs),
    /// Show the cached sessions: user, UID, groups, namespace and when the token expires.
    Whoami(login::WhoamiArgs),
    /// Revoke the cached session at the server and remove it from the cache; the next kubectl
    /// run logs in again.
    Logout(login::LogoutArgs),
    /// Keep accounts in step with the directory: run a sync now, plan one, or see how the last
    /// went.
    ///
    /// Through the running server (which also runs sync every `sync.interval`), or with
    /// --offline against its store when no server holds it. Exit codes: 0 applied (or planned),
    /// 1 failed, 3 refused by the guards (nothing applied; see --dry-run, then --force), 4
    /// another runner holds the sync lease.
    #[command(after_help = "Examples:\n  \
        idbridge sync                       # how the last runs went\n  \
        idbridge sync --dry-run             # what a run would change, as a table\n  \
        idbridge sync --dry-run --json      # the same as JSON\n  \
        idbridge sync --once                # run now\n  \
        idbridge sync --once --force        # apply a plan the guards refused\n  \
        idbridge sync --offline --config idbridge.yaml --once   # no server running\n\n\
        See docs/sync.md for the rules and the guards.")]
    Sync(sync_cmd::SyncArgs),
    /// Add (or update) a cluster, a user that runs `idbridge login` and a context to your
    /// kubeconfig; every other entry is kept byte for byte.
    #[command(after_help = "Examples:\n  \
        idbridge kubeconfig --server https://k8s.example.com:6443 \\\n      \
        --issuer https://idbridge.example.com\n  \
        idbridge kubeconfig --server https://k8s.example.com:6443 --issuer https://idbridge.example.com \\\n      \
        --method device --cluster-ca-file k8s-ca.crt --context prod\n  \
        kubectl get pods                                 # logs in on first use")]
    Kubeconfig(kubeconfig::KubeconfigArgs),
    /// List or lift workload revocations (`idbridge revoke --pod|--serviceaccount|--principal`
    /// makes them).
    Workload {
        #[command(subcommand)]
        cmd: workload_cmd::WorkloadCmd,
        #[command(flatten)]
        target: admin_cmd::Target,
    },
    /// The pod side of workload credentials: fetch the pod's Kerberos credential cache or
    /// keytab with its ServiceAccount token, keep it renewed, drop it when revoked.
    WorkloadAgent(agent::AgentArgs),
}

fn init_logging(format: LogFormat, client: bool) {
    // A client command reports a TLS failure in its own error, with what to do about it; the
    // TLS library's log line would only say the same thing less clearly first.
    let default = if client { "info,rustls=off" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("IDBRIDGE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colour only on a terminal: a log file or pipe gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => b.init(),
        LogFormat::Json => b.json().init(),
    }
}

/// Whether this binary runs as the kubectl plugin `kubectl-idbridge`.
fn as_plugin() -> bool {
    static PLUGIN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PLUGIN.get_or_init(|| {
        std::env::args_os()
            .next()
            .map(std::path::PathBuf::from)
            .and_then(|p| p.file_name().map(|n| n.to_owned()))
            .is_some_and(|n| n == "kubectl-idbridge")
    })
}

/// How a person runs this binary, for commands shown in help and messages: `kubectl idbridge`
/// when run as the kubectl plugin, else `idbridge`.
pub(crate) fn program() -> &'static str {
    if as_plugin() {
        "kubectl idbridge"
    } else {
        "idbridge"
    }
}

/// The command line, parsed; run as `kubectl-idbridge`, help and usage say `kubectl idbridge`.
fn parse_command_line() -> Cli {
    use clap::{CommandFactory, FromArgMatches};
    let mut cmd = Cli::command();
    if as_plugin() {
        cmd = plugin_help(cmd.bin_name("kubectl idbridge").name("kubectl idbridge"));
    }
    Cli::from_arg_matches(&cmd.get_matches()).unwrap_or_else(|e| e.exit())
}

/// The examples of `cmd` and its subcommands as a kubectl plugin runs them.
fn plugin_help(mut cmd: clap::Command) -> clap::Command {
    if let Some(text) = cmd.get_after_help().map(|h| h.to_string()) {
        let text = text
            .lines()
            .map(|l| match l.strip_prefix("  idbridge ") {
                Some(rest) => format!("  kubectl idbridge {rest}"),
                None => l.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("\n");
        cmd = cmd.after_help(text);
    }
    let names: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_owned())
        .collect();
    for name in names {
        cmd = cmd.mut_subcommand(name, plugin_help);
    }
    cmd
}

fn main() -> ExitCode {
    let cli = parse_command_line();
    init_logging(cli.log_format, !matches!(cli.command, Command::Serve(_)));
    // The server uses every core; a client command (kubectl runs `login` on every command) needs
    // one thread, and starts faster without a pool.
    let mut builder = if matches!(cli.command, Command::Serve(_)) {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve::run(args).await,
            Command::User { cmd, target } => admin_cmd::user(cmd, &target).await,
            Command::Token { cmd, target } => admin_cmd::token(cmd, &target).await,
            Command::Session { cmd, target } => admin_cmd::session(cmd, &target).await,
            Command::Revoke { what, target } => admin_cmd::revoke(what, &target).await,
            Command::Keys { cmd, target } => admin_cmd::keys(cmd, &target).await,
            Command::Login(args) => login::run(args).await,
            Command::Whoami(args) => login::whoami(args).await,
            Command::Logout(args) => login::logout(args).await,
            Command::Kubeconfig(args) => kubeconfig::run(&args),
            Command::Sync(args) => sync_cmd::run(args).await,
            Command::Workload { cmd, target } => workload_cmd::run(cmd, &target).await,
            Command::WorkloadAgent(args) => agent::run(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // `idbridge whoami | head -1`: the reader has what it wanted.
        Err(e) if e.downcast_ref::<out::Closed>().is_some() => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<sync_cmd::NotApplied>().is_some() => {
            match e.downcast_ref::<sync_cmd::NotApplied>().map(|n| n.0) {
                Some(idbridge_sync::Outcome::Refused) => ExitCode::from(sync_cmd::EXIT_REFUSED),
                Some(idbridge_sync::Outcome::Busy) => ExitCode::from(sync_cmd::EXIT_BUSY),
                _ => ExitCode::FAILURE,
            }
        }
        Err(e) if e.downcast_ref::<serve::ConfigErrorMarker>().is_some() => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
