//! The admin API under `/admin/v1`, used by `idbridge user|token` against a running server so
//! caches see every change at once.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::routing::{get, post};
use axum::{Json, Router};
use idbridge_core::{
    AccountName, AccountUid, HumanDuration, NewAccount, StaticToken, TokenId, UserAccount,
};
use idbridge_tokens::{CreatedToken, KeyInfo, Rotate, SessionInfo, UserRevocation};
use idbridge_workload::RevokeError;
use serde::Deserialize;

use crate::http::error::ApiError;
use crate::http::extract::RequestCtx;
use crate::state::AppState;

/// An authenticated caller in an admin group.
pub(crate) struct Admin {
    name: String,
    uid: AccountUid,
    ctx: RequestCtx,
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Ok(ctx) = RequestCtx::from_request_parts(parts, state).await;
        let token = crate::http::extract::bearer(&parts.headers)
            .ok_or(ApiError::Unauthorized("an admin bearer token is required"))?;
        let settings = state.settings();
        let deny = |reason: &str, who: Option<(&str, AccountUid)>| {
            let mut ev = ctx.event("admin.auth", "denied");
            ev.reason = Some(reason);
            ev.account = who.map(|w| w.0);
            ev.uid = who.map(|w| w.1.to_string());
            state.audit().record(&ev);
        };
        let who = match state.authenticate_here(token).await {
            Ok(w) => w,
            Err(r) => {
                deny(&r.denial.to_string(), None);
                return Err(ApiError::Unauthorized("the admin token is invalid"));
            }
        };
        if !settings.tokens.is_admin(&who.groups) {
            deny("not in an admin group", Some((&who.name, who.uid)));
            return Err(ApiError::Forbidden(
                "this account may not use the admin API",
            ));
        }
        Ok(Self {
            name: who.name.clone(),
            uid: who.uid,
            ctx,
        })
    }
}

impl Admin {
    async fn record(
        &self,
        state: &AppState,
        event: &str,
        (name, uid): (&AccountName, AccountUid),
        object: Option<String>,
    ) {
        let mut ev = self.ctx.event(event, "ok");
        ev.actor = Some(&self.name);
        ev.actor_uid = Some(self.uid.to_string());
        ev.account = Some(name.as_str());
        ev.uid = Some(uid.to_string());
        ev.object = object;
        state.audit().record_durable(&ev).await;
    }
}

/// This area's routes, as axum's `MatchedPath` names them (under `/admin/v1`).
pub(crate) const ROUTES: &[&str] = &[
    "/admin/v1/accounts",
    "/admin/v1/accounts/{name}",
    "/admin/v1/accounts/{name}/disable",
    "/admin/v1/accounts/{name}/enable",
    "/admin/v1/accounts/{name}/rename",
    "/admin/v1/tokens",
    "/admin/v1/tokens/{id}/revoke",
    "/admin/v1/sessions",
    "/admin/v1/sessions/{id}/revoke",
    "/admin/v1/revoke",
    "/admin/v1/keys",
    "/admin/v1/keys/rotate",
    "/admin/v1/sync",
    "/admin/v1/workloads/revocations",
    "/admin/v1/workloads/revocations/lift",
];

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/accounts", get(list_accounts).post(add_account))
        .route("/accounts/{name}", get(get_account))
        .route("/accounts/{name}/disable", post(disable))
        .route("/accounts/{name}/enable", post(enable))
        .route("/accounts/{name}/rename", post(rename))
        .route("/tokens", get(list_tokens).post(create_token))
        .route("/tokens/{id}/revoke", post(revoke_token))
        .route("/sessions", get(list_sessions))
        .route("/sessions/{id}/revoke", post(revoke_session))
        .route("/revoke", post(revoke))
        .route("/keys", get(list_keys))
        .route("/keys/rotate", post(rotate_keys))
        .route("/sync", get(sync_status).post(sync_now))
        .route(
            "/workloads/revocations",
            get(workload_revocations).post(revoke_workload),
        )
        .route("/workloads/revocations/lift", post(lift_workload))
}

/// What `POST /admin/v1/workloads/revocations` asks for.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkloadRevokeRequest {
    /// `pod`, `service_account` or `principal`.
    target: idbridge_core::WorkloadTarget,
    /// The pod UID, `namespace/name` or principal.
    value: String,
    /// Why (recorded, and told to the refused workload).
    #[serde(default)]
    reason: Option<String>,
    /// Also give the principal new keys.
    #[serde(default)]
    rotate: bool,
}

/// What `POST /admin/v1/workloads/revocations/lift` asks for.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkloadLiftRequest {
    target: idbridge_core::WorkloadTarget,
    value: String,
}

fn check_workload_value(
    target: idbridge_core::WorkloadTarget,
    value: &str,
) -> Result<(), ApiError> {
    use idbridge_core::WorkloadTarget as T;
    let ok = match target {
        T::Pod => {
            !value.is_empty()
                && value.len() <= 64
                && value.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
        }
        T::ServiceAccount => value
            .split_once('/')
            .is_some_and(|(ns, sa)| !ns.is_empty() && !sa.is_empty() && !sa.contains('/')),
        T::Principal => idbridge_kerberos::kadmin::plain_principal(value) && value.contains('@'),
    };
    if ok {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!(
            "{value:?} is not a {}",
            match target {
                T::Pod => "pod UID",
                T::ServiceAccount => "serviceaccount NAMESPACE/NAME",
                T::Principal => "principal NAME@REALM",
            }
        )))
    }
}

async fn workload_revocations(
    State(state): State<AppState>,
    _admin: Admin,
) -> Result<Json<Vec<idbridge_core::WorkloadRevocation>>, ApiError> {
    Ok(Json(state.store().workload_revocations().await?))
}

async fn revoke_workload(
    State(state): State<AppState>,
    admin: Admin,
    body: Result<Json<WorkloadRevokeRequest>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Json(req) = body?;
    check_workload_value(req.target, &req.value)?;
    let revocation = idbridge_core::WorkloadRevocation {
        target: req.target,
        value: req.value.clone(),
        reason: req
            .reason
            .unwrap_or_else(|| "revoked by an administrator".into()),
        by: admin.name.clone(),
        at: state.clock().now(),
    };
    let mut note = None;
    let rotated = match state.settings().workloads.clone() {
        Some(issuer) => {
            note = issuer.revocation_note(req.target, &req.value);
            match issuer.revoke(&revocation, req.rotate).await {
                Ok(rotated) => rotated,
                Err(RevokeError::Invalid(e)) => return Err(ApiError::BadRequest(e)),
                Err(RevokeError::Store(e)) => return Err(ApiError::Unavailable(e)),
                // In force all the same: audited before the error is answered.
                Err(RevokeError::Unrotated { missing, message }) => {
                    let reason = format!("{}; not rotated: {message}", revocation.reason);
                    audit_revocation(&state, &admin, &revocation, &reason).await;
                    return Err(if missing {
                        ApiError::NotFound(message)
                    } else {
                        ApiError::Unavailable(message)
                    });
                }
            }
        }
        None if req.rotate => {
            return Err(ApiError::NotFound(
                "--rotate needs the key source: this server has no `workloads` section".into(),
            ));
        }
        None => {
            state.store().revoke_workload(&revocation).await?;
            None
        }
    };
    let reason = match rotated {
        Some(v) => format!("{}; rotated to key version {v}", revocation.reason),
        None => revocation.reason.clone(),
    };
    audit_revocation(&state, &admin, &revocation, &reason).await;
    Ok(Json(serde_json::json!({
        "revocation": revocation,
        "rotated_kvno": rotated,
        "note": note,
    })))
}

async fn audit_revocation(
    state: &AppState,
    admin: &Admin,
    revocation: &idbridge_core::WorkloadRevocation,
    reason: &str,
) {
    let mut ev = admin.ctx.event("workload.revoke", "ok");
    ev.actor = Some(&admin.name);
    ev.actor_uid = Some(admin.uid.to_string());
    ev.object = Some(idbridge_workload::issue::describe(revocation));
    ev.reason = Some(reason);
    state.audit().record_durable(&ev).await;
}

async fn lift_workload(
    State(state): State<AppState>,
    admin: Admin,
    body: Result<Json<WorkloadLiftRequest>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Json(req) = body?;
    let lifted = state
        .store()
        .lift_workload_revocation(req.target, &req.value)
        .await?;
    if !lifted {
        return Err(ApiError::NotFound(format!(
            "no revocation of {} {}",
            req.target.noun(),
            req.value
        )));
    }
    let mut ev = admin.ctx.event("workload.lift", "ok");
    ev.actor = Some(&admin.name);
    ev.actor_uid = Some(admin.uid.to_string());
    ev.object = Some(format!("{} {}", req.target.noun(), req.value));
    state.audit().record_durable(&ev).await;
    Ok(Json(serde_json::json!({"lifted": true})))
}

/// What `POST /admin/v1/sync` asks for.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SyncRequest {
    /// Plan only.
    #[serde(default)]
    dry_run: bool,
    /// Apply a plan that trips the guards.
    #[serde(default)]
    force: bool,
    /// Put the Kubernetes objects whole in the report.
    #[serde(default)]
    manifests: bool,
}

fn sync_control(
    state: &AppState,
) -> Result<std::sync::Arc<dyn crate::settings::SyncControl>, ApiError> {
    state.settings().sync.clone().ok_or_else(|| {
        ApiError::NotFound(
            "sync is not configured on this server: add a `sync` section (and a `directory`) to its config".into(),
        )
    })
}

async fn sync_status(
    State(state): State<AppState>,
    _admin: Admin,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(sync_control(&state)?.status().await))
}

async fn sync_now(
    State(state): State<AppState>,
    admin: Admin,
    body: Result<Json<SyncRequest>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Json(req) = body?;
    let control = sync_control(&state)?;
    let mut ev = admin.ctx.event("sync.request", "ok");
    ev.actor = Some(&admin.name);
    ev.actor_uid = Some(admin.uid.to_string());
    let what = format!("dry_run={} force={}", req.dry_run, req.force);
    ev.reason = Some(&what);
    state.audit().record_durable(&ev).await;
    Ok(Json(
        control.run(req.dry_run, req.force, req.manifests).await,
    ))
}

fn account_name(raw: &str) -> Result<AccountName, ApiError> {
    raw.parse()
        .map_err(|e| ApiError::BadRequest(format!("account name: {e}")))
}

async fn list_accounts(
    State(state): State<AppState>,
    _admin: Admin,
) -> Result<Json<Vec<UserAccount>>, ApiError> {
    Ok(Json(state.ops().accounts().await?))
}

async fn get_account(
    State(state): State<AppState>,
    _admin: Admin,
    Path(name): Path<String>,
) -> Result<Json<UserAccount>, ApiError> {
    Ok(Json(state.ops().account(&account_name(&name)?).await?))
}

async fn add_account(
    State(state): State<AppState>,
    admin: Admin,
    body: Result<Json<NewAccount>, JsonRejection>,
) -> Result<(StatusCode, Json<UserAccount>), ApiError> {
    let Json(new) = body?;
    let account = state.ops().add_account(new).await?;
    admin
        .record(&state, "account.add", (&account.name, account.uid), None)
        .await;
    Ok((StatusCode::CREATED, Json(account)))
}

async fn set_disabled(
    state: &AppState,
    admin: &Admin,
    name: &str,
    disabled: bool,
) -> Result<Json<UserAccount>, ApiError> {
    let account = state
        .ops()
        .set_disabled(&account_name(name)?, disabled)
        .await?;
    state.invalidate();
    let event = if disabled {
        "account.disable"
    } else {
        "account.enable"
    };
    admin
        .record(state, event, (&account.name, account.uid), None)
        .await;
    Ok(Json(account))
}

async fn disable(
    State(state): State<AppState>,
    admin: Admin,
    Path(name): Path<String>,
) -> Result<Json<UserAccount>, ApiError> {
    set_disabled(&state, &admin, &name, true).await
}

async fn enable(
    State(state): State<AppState>,
    admin: Admin,
    Path(name): Path<String>,
) -> Result<Json<UserAccount>, ApiError> {
    set_disabled(&state, &admin, &name, false).await
}

/// What `POST /admin/v1/accounts/{name}/rename` asks for.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rename {
    /// The new name.
    name: String,
}

async fn rename(
    State(state): State<AppState>,
    admin: Admin,
    Path(name): Path<String>,
    body: Result<Json<Rename>, JsonRejection>,
) -> Result<Json<UserAccount>, ApiError> {
    let Json(req) = body?;
    let account = state
        .ops()
        .rename(&account_name(&name)?, account_name(&req.name)?)
        .await?;
    state.invalidate();
    admin
        .record(
            &state,
            "account.rename",
            (&account.name, account.uid),
            Some(format!("from {name}")),
        )
        .await;
    Ok(Json(account))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensQuery {
    user: Option<String>,
}

async fn list_tokens(
    State(state): State<AppState>,
    _admin: Admin,
    Query(q): Query<TokensQuery>,
) -> Result<Json<Vec<StaticToken>>, ApiError> {
    let name = q.user.as_deref().map(account_name).transpose()?;
    Ok(Json(state.ops().tokens(name.as_ref()).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateToken {
    user: AccountName,
    #[serde(default)]
    ttl: Option<HumanDuration>,
    #[serde(default)]
    description: String,
}

async fn create_token(
    State(state): State<AppState>,
    admin: Admin,
    body: Result<Json<CreateToken>, JsonRejection>,
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    let Json(req) = body?;
    let created = state
        .ops()
        .create_token(&req.user, req.ttl, req.description)
        .await?;
    // The account was just read by the operation; its name and UID are in the answer.
    admin
        .record(
            &state,
            "token.create",
            (&created.account_name, created.token.account),
            Some(format!("token={}", created.token.id)),
        )
        .await;
    Ok((StatusCode::CREATED, Json(created)))
}

async fn revoke_token(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
) -> Result<Json<StaticToken>, ApiError> {
    let id: TokenId = id
        .parse()
        .map_err(|e| ApiError::BadRequest(format!("token id: {e}")))?;
    let token = state.ops().revoke_token(id).await?;
    state.invalidate();
    if let Some(account) = state.store().account(token.account).await? {
        admin
            .record(
                &state,
                "token.revoke",
                (&account.name, account.uid),
                Some(format!("token={id}")),
            )
            .await;
    }
    Ok(Json(token))
}

async fn list_sessions(
    State(state): State<AppState>,
    _admin: Admin,
    Query(q): Query<TokensQuery>,
) -> Result<Json<Vec<SessionInfo>>, ApiError> {
    let name = q.user.as_deref().map(account_name).transpose()?;
    let idle = state.settings().tokens.session_idle_timeout.as_secs();
    Ok(Json(state.ops().sessions(name.as_ref(), idle).await?))
}

async fn revoke_session(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
) -> Result<Json<idbridge_core::Session>, ApiError> {
    let id: idbridge_core::SessionId = id
        .parse()
        .map_err(|e| ApiError::BadRequest(format!("session id: {e}")))?;
    let session = state.ops().revoke_session(id).await?;
    state.invalidate();
    if let Some(account) = state.store().account(session.account).await? {
        admin
            .record(
                &state,
                "session.revoke",
                (&account.name, account.uid),
                Some(format!("session={id}")),
            )
            .await;
    }
    Ok(Json(session))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeRequest {
    #[serde(default)]
    user: Option<AccountName>,
    #[serde(default)]
    static_tokens: bool,
    #[serde(default)]
    jti: Option<String>,
}

async fn revoke(
    State(state): State<AppState>,
    admin: Admin,
    body: Result<Json<RevokeRequest>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Json(req) = body?;
    match (req.user, req.jti) {
        (Some(user), None) => {
            let done: UserRevocation = state.ops().revoke_user(&user, req.static_tokens).await?;
            state.invalidate();
            admin
                .record(
                    &state,
                    "user.revoke",
                    (&done.account, done.uid),
                    Some(format!(
                        "sessions={} static_tokens={}",
                        done.sessions, done.static_tokens
                    )),
                )
                .await;
            Ok(Json(serde_json::to_value(done).map_err(|e| {
                ApiError::internal("describe a revocation", &e)
            })?))
        }
        (None, Some(jti)) if !jti.is_empty() && jti.len() <= 128 => {
            let s = state.settings();
            let max = s.tokens.access_token_ttl.as_secs() + s.tokens.clock_skew.as_secs();
            state.ops().revoke_jti(&jti, max).await?;
            state.invalidate();
            let mut ev = admin.ctx.event("token.revoke", "ok");
            ev.actor = Some(&admin.name);
            ev.actor_uid = Some(admin.uid.to_string());
            ev.object = Some(format!("jti={jti}"));
            state.audit().record_durable(&ev).await;
            Ok(Json(serde_json::json!({ "jti": jti })))
        }
        _ => Err(ApiError::BadRequest(
            "give exactly one of `user` or `jti` (at most 128 characters)".to_owned(),
        )),
    }
}

async fn list_keys(
    State(state): State<AppState>,
    _admin: Admin,
) -> Result<Json<Vec<KeyInfo>>, ApiError> {
    Ok(Json(state.ops().keys().await?))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateRequest {
    #[serde(default)]
    now: bool,
}

async fn rotate_keys(
    State(state): State<AppState>,
    admin: Admin,
    body: Option<Json<RotateRequest>>,
) -> Result<Json<Vec<KeyInfo>>, ApiError> {
    let now = body.is_some_and(|Json(b)| b.now);
    state
        .maintain_keys(if now { Rotate::Now } else { Rotate::Soon })
        .await?;
    let mut ev = admin.ctx.event("keys.rotate", "ok");
    ev.actor = Some(&admin.name);
    ev.actor_uid = Some(admin.uid.to_string());
    ev.object = Some(format!("now={now} signing={}", state.keys().signing_kid()));
    state.audit().record_durable(&ev).await;
    Ok(Json(state.ops().keys().await?))
}
