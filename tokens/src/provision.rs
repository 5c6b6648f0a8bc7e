//! The account behind an external identity, shared by the login methods: found by its link,
//! created at a first login (`jit`), or, when allowed, an unlinked account of the same name
//! linked to it.

use idbridge_core::{AccountName, ExternalIdentity, NewAccount, UserAccount};

use crate::audit::Origin;
use crate::error::TokenError;
use crate::service::TokenService;

/// How one login method provisions accounts.
#[derive(Debug)]
pub struct Provision<'a> {
    /// The identity that logged in.
    pub identity: ExternalIdentity,
    /// The account name it maps to.
    pub name: &'a AccountName,
    /// Whether a first login creates the account.
    pub jit: bool,
    /// Whether an account of the same name, not yet linked to an identity of this kind, may be
    /// linked (only without `jit`, unless `name_is_identity`).
    pub link_by_name: bool,
    /// The identity is the name itself (an authenticating proxy asserts account names): an
    /// account of that name is the identity's, so with `link_by_name` it is linked whether or
    /// not `jit` is on.
    pub name_is_identity: bool,
    /// What the audit log says when a first login creates the account; by default "first login
    /// of a {what}".
    pub first_login: Option<&'static str>,
    /// The audit action of a refused login (`login.ldap`, `login.krb5`).
    pub event: &'static str,
    /// What the identity is, for messages ("directory entry", "Kerberos principal").
    pub what: &'static str,
    /// The config section that sets the policy.
    pub section: &'static str,
}

impl TokenService {
    /// Records a refused login as `event`/`denied`, naming who tried when known.
    pub fn login_denied(&self, ctx: Origin<'_>, event: &str, account: Option<&str>, reason: &str) {
        let mut ev = ctx.event(event, "denied");
        ev.account = account;
        ev.reason = Some(reason);
        self.audit().record(&ev);
    }

    /// The account linked to `p.identity`, per the method's policy.
    ///
    /// # Errors
    /// `InvalidGrant` saying why the identity has no account; a store failure.
    pub async fn provisioned_account(
        &self,
        p: Provision<'_>,
        ctx: Origin<'_>,
    ) -> Result<UserAccount, TokenError> {
        let refuse = |reason: String| {
            self.login_denied(ctx, p.event, Some(p.name.as_str()), &reason);
            TokenError::InvalidGrant(reason)
        };
        if let Some(a) = self.store().account_by_identity(&p.identity).await? {
            return Ok(a);
        }
        let same_kind = |a: &UserAccount| {
            a.identities
                .iter()
                .any(|i| std::mem::discriminant(i) == std::mem::discriminant(&p.identity))
        };
        match self.store().account_by_name(p.name).await? {
            // A concurrent first login of the same user created it meanwhile.
            Some(a) if a.identities.contains(&p.identity) => Ok(a),
            Some(a) if (!p.jit || p.name_is_identity) && p.link_by_name && !same_kind(&a) => {
                let reason = format!("linked to its {} by name at first login", p.what);
                self.link(a, p.identity, &reason, ctx).await
            }
            Some(_) => Err(refuse(format!(
                "an idbridge account of this name exists but is not linked to this {}; ask your administrator",
                p.what
            ))),
            None if p.jit => {
                let mut new = NewAccount::named(p.name.clone());
                new.identities.insert(p.identity.clone());
                let a = match self.ops().add_account(new).await {
                    Ok(a) => a,
                    Err(e) => {
                        // Lost a race with a concurrent first login: use the account it made.
                        return match self.store().account_by_identity(&p.identity).await? {
                            Some(a) => Ok(a),
                            None => Err(e),
                        };
                    }
                };
                let mut ev = ctx.event("account.add", "ok");
                ev.account = Some(a.name.as_str());
                ev.uid = Some(a.uid.to_string());
                let reason = p
                    .first_login
                    .map_or_else(|| format!("first login of a {}", p.what), str::to_owned);
                ev.reason = Some(&reason);
                self.audit().record_durable(&ev).await;
                Ok(a)
            }
            None => Err(refuse(format!(
                "no idbridge account is linked to this {} (`{}.provisioning` is `existing`)",
                p.what, p.section
            ))),
        }
    }

    /// Adds `identity` to the account's links.
    ///
    /// # Errors
    /// A store failure.
    pub async fn link(
        &self,
        mut account: UserAccount,
        identity: ExternalIdentity,
        reason: &str,
        ctx: Origin<'_>,
    ) -> Result<UserAccount, TokenError> {
        account.identities.insert(identity);
        self.store().update_account(&account).await?;
        self.invalidate();
        let mut ev = ctx.event("account.link", "ok");
        ev.account = Some(account.name.as_str());
        ev.uid = Some(account.uid.to_string());
        ev.reason = Some(reason);
        self.audit().record_durable(&ev).await;
        Ok(account)
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    fn proxy<'a>(name: &'a AccountName, jit: bool) -> Provision<'a> {
        Provision {
            identity: ExternalIdentity::Proxy { name: name.clone() },
            name,
            jit,
            link_by_name: true,
            name_is_identity: true,
            first_login: None,
            event: "login.proxy",
            what: "proxy's user",
            section: "proxy",
        }
    }

    #[tokio::test]
    async fn a_proxy_user_is_linked_to_the_account_of_its_name_or_created_once() {
        let dir = tempfile::tempdir().unwrap();
        let s = crate::service::test_service(dir.path()).await;
        let alice: AccountName = "alice".parse().unwrap();
        let made = s
            .store()
            .create_account(NewAccount::named(alice.clone()), s.clock().now())
            .await
            .unwrap();
        // An account of that name, not yet linked: linked, with or without `jit`.
        let got = s
            .provisioned_account(proxy(&alice, true), Origin::local())
            .await
            .unwrap();
        assert_eq!(got.uid, made.uid);
        assert!(got.identities.contains(&ExternalIdentity::Proxy {
            name: alice.clone()
        }));
        // No account: refused with `existing`, created once with `jit`.
        let bob: AccountName = "bob".parse().unwrap();
        let err = s
            .provisioned_account(proxy(&bob, false), Origin::local())
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("`proxy.provisioning` is `existing`"),
            "{err}"
        );
        let (a, b) = tokio::join!(
            s.provisioned_account(proxy(&bob, true), Origin::local()),
            s.provisioned_account(proxy(&bob, true), Origin::local()),
        );
        assert_eq!(
            a.unwrap().uid,
            b.unwrap().uid,
            "two first logins make one account"
        );
    }

    #[tokio::test]
    async fn other_methods_do_not_take_over_an_unlinked_account_with_jit() {
        let dir = tempfile::tempdir().unwrap();
        let s = crate::service::test_service(dir.path()).await;
        let alice: AccountName = "alice".parse().unwrap();
        s.store()
            .create_account(NewAccount::named(alice.clone()), s.clock().now())
            .await
            .unwrap();
        let mut p = proxy(&alice, true);
        p.identity = ExternalIdentity::Directory { id: "g-1".into() };
        p.name_is_identity = false;
        p.first_login = None;
        let err = s.provisioned_account(p, Origin::local()).await.unwrap_err();
        assert!(err.to_string().contains("not linked"), "{err}");
    }
}
