//! LDAP / AD logins: the `password` grant for first-party clients and the login page's
//! password form (the re-check at every refresh of such a session is in `recheck.rs`).
//!
//! A wrong password, an unknown user and an empty password get one answer. Failures are
//! throttled per source, per user and source, and per user across sources (429 with
//! `Retry-After`), each attempt reserved before the password reaches the directory. A user whose password was right but whose account may not log in is
//! told why. A directory that does not answer is a 503 and never a token.

use idbridge_core::Audience;

use axum::Form;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use idbridge_core::{DirectoryError, DirectoryUser, ExternalIdentity, UserAccount};
use idbridge_tokens::provision::Provision;
use idbridge_tokens::{Client, Login, TokenPair};
use serde::Deserialize;

use crate::http::error::ApiError;
use crate::http::extract::RequestCtx;
use crate::login::finish::complete_login;
use crate::login::page::login_failed;
use crate::login::records::{Verified, checked_login};
use crate::login::throttle::Outcome;
use crate::settings::DirectoryLogin;
use crate::state::AppState;

#[derive(Deserialize)]
pub(crate) struct PasswordForm {
    csrf: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

/// `POST /login/password`: the directory password from the login page's form.
pub(crate) async fn login_password(
    State(state): State<AppState>,
    ctx: RequestCtx,
    headers: HeaderMap,
    Form(form): Form<PasswordForm>,
) -> Response {
    let (id, login) = match checked_login(&state, &headers, form.csrf.as_deref()).await {
        Ok(l) => l,
        Err(r) => return r,
    };
    let settings = state.settings();
    let username = form.username.unwrap_or_default();
    let password = form.password.unwrap_or_default();
    match crate::login::password::password_account(
        &state,
        &username,
        &password,
        &login.audience,
        &ctx,
    )
    .await
    {
        Ok((account, groups)) => {
            let v = Verified {
                account,
                amr: idbridge_core::Amr::Ldap,
                login_groups: groups,
                upstream: None,
            };
            complete_login(&state, &id, login, v, &ctx).await
        }
        Err(e) => login_failed(&settings, &login, e),
    }
}

/// The answer to every failed password check.
const INVALID: &str = "invalid username or password";

pub(crate) fn unavailable(e: &DirectoryError) -> ApiError {
    match e {
        // The details (server URLs, TLS errors) are for the operator's log, not for whoever
        // asked.
        DirectoryError::Unavailable(m) | DirectoryError::NoAnswer(m) => {
            tracing::warn!(error = %m, "directory unavailable");
            ApiError::Unavailable(
                "the directory is unavailable; no token was issued, retry shortly (details in the server log)"
                    .into(),
            )
        }
        other => {
            tracing::error!(error = %other, "directory error");
            ApiError::Unavailable(
                "the directory answered unexpectedly (details in the server log); no token was issued"
                    .into(),
            )
        }
    }
}

/// A password login, as the token endpoint received it. No `Debug`: it holds the password.
pub(crate) struct PasswordLogin<'a> {
    pub client: &'a Client,
    pub username: &'a str,
    pub password: &'a str,
    pub audience: Audience,
    pub scope: String,
}

/// The `password` grant: check the password with the directory, find or create the linked
/// account, start a session with `amr=ldap` and the user's shaped groups.
pub(crate) async fn password_login(
    state: &AppState,
    login: PasswordLogin<'_>,
    ctx: &RequestCtx,
) -> Result<TokenPair, ApiError> {
    let (account, groups) =
        password_account(state, login.username, login.password, &login.audience, ctx).await?;
    state
        .service()
        .start_session(
            Login {
                account: &account,
                client_id: &login.client.id,
                amr: idbridge_core::Amr::Ldap,
                audience: login.audience,
                scope: login.scope,
                login_groups: groups,
                upstream: None,
            },
            ctx.origin(),
        )
        .await
        .map_err(ApiError::from)
}

/// Checks a directory password and returns the linked account and the user's groups shaped
/// for `audience`; throttled, and audited when refused.
pub(crate) async fn password_account(
    state: &AppState,
    username: &str,
    password: &str,
    audience: &Audience,
    ctx: &RequestCtx,
) -> Result<(UserAccount, Vec<String>), ApiError> {
    let settings = state.settings();
    let Some(dir) = settings.directory.as_ref() else {
        return Err(ApiError::OAuth {
            status: axum::http::StatusCode::BAD_REQUEST,
            error: "unsupported_grant_type",
            description: "password logins need a directory (config section `directory`)".into(),
        });
    };
    let source = ctx.source.map(|s| s.ip());
    let deny = |reason: &str| {
        state
            .service()
            .login_denied(ctx.origin(), "login.ldap", Some(username), reason)
    };
    let started = std::time::Instant::now();
    let throttled = |wait: u64| {
        deny("throttled");
        ApiError::Throttled(wait)
    };
    state
        .throttle()
        .check_source(&dir.throttle, source, started)
        .map_err(throttled)?;
    let candidate = match dir.directory.find_login(username).await {
        Ok(c) => c,
        Err(e) => {
            deny("directory unavailable");
            return Err(unavailable(&e));
        }
    };
    // Counted before the bind, against the entry the name found: parallel attempts and
    // other spellings of the name share one budget.
    let reservation = state
        .throttle()
        .reserve(&dir.throttle, source, &candidate.key)
        .await
        .map_err(throttled)?;
    let user = match dir.directory.check_password(candidate, password).await {
        Ok(u) => u,
        Err(DirectoryError::InvalidCredentials) => {
            reservation.settle(Outcome::Failed);
            deny(INVALID);
            return Err(ApiError::invalid_grant(INVALID));
        }
        Err(DirectoryError::Refused(problem)) => {
            // The password was right.
            reservation.settle(Outcome::Succeeded);
            let why = problem.to_string();
            deny(&why);
            return Err(ApiError::invalid_grant(why));
        }
        Err(e) => {
            // A bind that got no answer may have counted at the directory: so it does
            // here. Nothing reached it otherwise.
            let counted = matches!(e, DirectoryError::NoAnswer(_));
            reservation.settle(if counted {
                Outcome::Failed
            } else {
                Outcome::Undecided
            });
            deny("directory unavailable");
            return Err(unavailable(&e));
        }
    };
    reservation.settle(Outcome::Succeeded);
    let account =
        directory_account(state, &user, (dir.jit, dir.link_by_name), "login.ldap", ctx).await?;
    if account.disabled {
        deny("account is disabled in idbridge");
        return Err(ApiError::invalid_grant("your idbridge account is disabled"));
    }
    let groups = shaped_groups(state, dir, &user, audience, &account, ctx);
    Ok((account, groups))
}

pub(crate) fn shaped_groups(
    state: &AppState,
    dir: &DirectoryLogin,
    user: &DirectoryUser,
    audience: &Audience,
    account: &UserAccount,
    ctx: &RequestCtx,
) -> Vec<String> {
    let (groups, dropped) = dir.directory.token_groups(user, audience.as_str());
    if dropped > 0 {
        let note = format!(
            "{dropped} of {} groups left out of tokens for {audience:?} by the group cap",
            groups.len() + dropped
        );
        tracing::warn!(account = %account.name, "{note}");
        let mut ev = ctx.event("login.groups", "capped");
        ev.account = Some(account.name.as_str());
        ev.uid = Some(account.uid.to_string());
        ev.reason = Some(&note);
        state.audit().record(&ev);
    }
    groups
}

/// The account linked to a directory user: found by the entry's stable id, else created
/// (`jit`) or, with `link_by_name`, an unlinked account of the same name is linked.
/// `policy` is `(jit, link_by_name)` of the login method; `event` its audit action.
pub(crate) async fn directory_account(
    state: &AppState,
    user: &DirectoryUser,
    policy: (bool, bool),
    event: &'static str,
    ctx: &RequestCtx,
) -> Result<UserAccount, ApiError> {
    let identity = ExternalIdentity::Directory {
        id: user.id.clone(),
    };
    if let Some(a) = state.store().account_by_identity(&identity).await? {
        return Ok(a);
    }
    let Ok(name) = user.name.parse::<idbridge_core::AccountName>() else {
        let reason = "the directory name is not a valid account name; ask your administrator";
        state
            .service()
            .login_denied(ctx.origin(), event, Some(user.name.as_str()), reason);
        return Err(ApiError::invalid_grant(reason));
    };
    state
        .service()
        .provisioned_account(
            Provision {
                identity,
                name: &name,
                jit: policy.0,
                link_by_name: policy.1,
                name_is_identity: false,
                first_login: None,
                event,
                what: "directory entry",
                section: "directory",
            },
            ctx.origin(),
        )
        .await
        .map_err(ApiError::from)
}
