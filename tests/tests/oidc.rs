//! OIDC against the real binary and a real OpenID provider (the npm package `oidc-provider`):
//! the browser flow through `/oauth2/authorize`, the upstream login and callback, the code
//! grant with PKCE, and TokenReview; the device flow; an upstream ID token exchanged for a
//! session; tampered state, replayed codes, a wrong verifier, tokens for another client or from
//! another issuer; the provider down; a user disabled at the provider losing access at refresh.

#![allow(clippy::unwrap_used, clippy::expect_used)] // end-to-end tests fail loudly by design

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use idbridge_tests::Idbridge;
use idbridge_tests::oidc::{Browser, OidcProvider, Page, Step, pkce_challenge, query_param};
use serde_json::{Value, json};

const SECRET: &str = "idbridge-at-the-provider";
const CALLBACK: &str = "https://127.0.0.1/login/oidc/callback";
/// Where the CLI listens for the answer (nothing listens: the test reads the redirect).
const CLIENT_REDIRECT: &str = "http://127.0.0.1:38111/callback";
const VERIFIER: &str = "a-pkce-verifier-that-is-long-enough-0123456789";

async fn provider(dir: &Path, key: Option<&Path>) -> OidcProvider {
    OidcProvider::start(
        dir,
        json!([
            {"client_id": "idbridge", "client_secret": SECRET, "redirect_uris": [CALLBACK]},
            {"client_id": "other-app", "client_secret": "other", "redirect_uris": ["https://127.0.0.1/other"]},
        ]),
        json!({
            "alice": {"password": "alice-pw", "email": "alice@example.test", "groups": ["dev", "ops"]},
            "bob": {"password": "bob-pw", "email": "bob@example.test", "email_verified": false},
        }),
        key,
    )
    .await
    .unwrap()
}

/// idbridge with the provider as upstream `corp`, and a device client `tv`.
async fn serve(dir: &Path, p: &OidcProvider, extra: &str) -> Idbridge {
    let secret = dir.join("upstream.secret");
    std::fs::write(&secret, SECRET).unwrap();
    Idbridge::start_with(
        dir,
        idbridge_tests::Options {
            config: Some(format!(
                "bootstrap_admin: true
sessions:
  refresh_grace: 0s
clients:
  - id: tv
    grants: [urn:ietf:params:oauth:grant-type:device_code, refresh_token]
  - id: web
    secret_file: {secret}
    grants: [authorization_code, refresh_token]
    redirect_uris: [https://app.example/cb]
upstreams:
  - name: corp
    display_name: Corp IdP
    issuer: {issuer}
    client_id: idbridge
    client_secret_file: {secret}
    ca_file: {ca}
    scopes: [email, profile, groups]
    refresh: true
{extra}",
                secret = secret.display(),
                issuer = p.issuer,
                ca = p.ca_file.display(),
            )),
            ..Default::default()
        },
    )
    .await
    .unwrap()
}

fn browser(i: &Idbridge, p: &OidcProvider) -> Browser {
    Browser::new(&[&i.data_dir.join("ca.crt"), &p.ca_file]).unwrap()
}

fn authorize_url(i: &Idbridge, client: &str, redirect: &str, verifier: &str) -> String {
    let mut u = reqwest::Url::parse(&i.url("/oauth2/authorize")).unwrap();
    u.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", client)
        .append_pair("redirect_uri", redirect)
        .append_pair("state", "client-state-1")
        .append_pair("code_challenge", &pkce_challenge(verifier))
        .append_pair("code_challenge_method", "S256");
    u.into()
}

/// From idbridge's login page: the upstream button, the provider's login, back through the
/// callback; stops where the browser leaves for `stop`.
async fn through_upstream(
    b: &Browser,
    login_page: &Page,
    user: &str,
    pw: &str,
    stop: &str,
) -> Step {
    let csrf = login_page.input("csrf").expect("csrf field");
    let action = login_page
        .form_action("/login/oidc/corp")
        .expect("upstream button");
    let to_provider = b.post_form(&action, &[("csrf", &csrf)]).await.unwrap();
    assert_eq!(to_provider.status, 303, "{}", to_provider.body);
    let at_provider = match b.follow(to_provider, stop).await.unwrap() {
        Step::Page(p) => p,
        Step::Left(l) => panic!("left for {l} without a login"),
    };
    let action = at_provider
        .form_action("/interaction/")
        .expect("provider login form");
    let after = b
        .post_form(&action, &[("login", user), ("password", pw)])
        .await
        .unwrap();
    b.follow(after, stop).await.unwrap()
}

/// The whole browser flow for `user`, ending at the client's redirect with a code.
async fn browser_login(i: &Idbridge, p: &OidcProvider, user: &str, pw: &str) -> String {
    let b = browser(i, p);
    let page = b
        .get(&authorize_url(i, "idbridge-cli", CLIENT_REDIRECT, VERIFIER))
        .await
        .unwrap();
    assert_eq!(page.status, 200, "{}", page.body);
    match through_upstream(&b, &page, user, pw, CLIENT_REDIRECT).await {
        Step::Left(url) => url,
        Step::Page(p) => panic!("stayed at {} ({}): {}", p.url, p.status, p.body),
    }
}

async fn redeem(i: &Idbridge, code: &str, verifier: &str) -> (u16, Value) {
    i.redeem_code(code, CLIENT_REDIRECT, verifier)
        .await
        .unwrap()
}

/// A new browser on the login page, sent off to the upstream: the answer to the button.
async fn to_upstream(i: &Idbridge, p: &OidcProvider) -> (Browser, Page) {
    let b = browser(i, p);
    let page = b
        .get(&authorize_url(i, "idbridge-cli", CLIENT_REDIRECT, VERIFIER))
        .await
        .unwrap();
    let csrf = page.input("csrf").unwrap();
    let r = b
        .post_form(&i.url("/login/oidc/corp"), &[("csrf", &csrf)])
        .await
        .unwrap();
    (b, r)
}

#[tokio::test]
async fn the_browser_flow_ends_in_tokens_that_tokenreview_accepts_until_the_provider_disables_the_user()
 {
    let dir = idbridge_tests::scratch();
    let p = provider(dir.path(), None).await;
    let i = serve(dir.path(), &p, "").await;
    let d = i
        .get_json("/.well-known/openid-configuration")
        .await
        .unwrap();
    assert_eq!(
        d["authorization_endpoint"],
        i.url("/oauth2/authorize"),
        "{d}"
    );
    assert_eq!(
        d["device_authorization_endpoint"],
        i.url("/oauth2/device_authorization")
    );
    assert_eq!(d["code_challenge_methods_supported"], json!(["S256"]));
    for g in [
        "authorization_code",
        "urn:ietf:params:oauth:grant-type:device_code",
        "refresh_token",
    ] {
        assert!(
            d["grant_types_supported"]
                .as_array()
                .unwrap()
                .contains(&g.into()),
            "{g} in {d}"
        );
    }

    // The login page sets a hardened cookie and offers the upstream.
    let b = browser(&i, &p);
    let page = b
        .get(&authorize_url(
            &i,
            "idbridge-cli",
            CLIENT_REDIRECT,
            VERIFIER,
        ))
        .await
        .unwrap();
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("Sign in with Corp IdP"), "{}", page.body);
    let cookie = page.headers["set-cookie"].to_str().unwrap();
    for attr in ["__Host-", "Secure", "HttpOnly", "SameSite=Lax"] {
        assert!(cookie.contains(attr), "{cookie}");
    }
    assert!(
        page.headers["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("frame-ancestors 'none'")
    );
    let left = match through_upstream(&b, &page, "alice", "alice-pw", CLIENT_REDIRECT).await {
        Step::Left(u) => u,
        Step::Page(p) => panic!("stayed at {}: {}", p.url, p.body),
    };
    assert_eq!(
        query_param(&left, "state").as_deref(),
        Some("client-state-1")
    );
    assert_eq!(query_param(&left, "iss"), Some(i.base.clone()));
    let code = query_param(&left, "code").unwrap();
    let (status, tokens) = redeem(&i, &code, VERIFIER).await;
    assert_eq!(status, 200, "{tokens}");
    let review = i
        .review(tokens["access_token"].as_str().unwrap(), &[])
        .await
        .unwrap();
    assert_eq!(review["authenticated"], true, "{review}");
    assert_eq!(review["user"]["username"], "alice@example.test");
    assert_eq!(review["user"]["groups"], json!(["dev", "ops"]));
    assert_eq!(review["user"]["extra"]["idbridge.io/amr"], json!(["oidc"]));

    // A second login of the same person lands in the same account (linked by iss + sub).
    let code2 = query_param(&browser_login(&i, &p, "alice", "alice-pw").await, "code").unwrap();
    let (_, again) = redeem(&i, &code2, VERIFIER).await;
    let review2 = i
        .review(again["access_token"].as_str().unwrap(), &[])
        .await
        .unwrap();
    assert_eq!(review2["user"]["uid"], review["user"]["uid"]);

    // Refresh asks the provider, which still knows alice.
    let (status, refreshed) = i
        .refresh(tokens["refresh_token"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(status, 200, "{refreshed}");
    assert!(
        !p.log().contains("Error"),
        "the provider logged an error: {}",
        p.log()
    );

    // Disabled at the provider: the next refresh is refused and the session revoked.
    p.disable("alice").await.unwrap();
    let (status, refused) = i
        .refresh(refreshed["refresh_token"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(status, 400, "{refused}");
    assert_eq!(refused["error"], "invalid_grant");
    let why = refused["error_description"].as_str().unwrap();
    assert!(why.contains("corp") && why.contains("revoked"), "{why}");
    let review = i
        .review(refreshed["access_token"].as_str().unwrap(), &[])
        .await
        .unwrap();
    assert_eq!(review["authenticated"], false, "{review}");
    // And a new login through the provider fails there.
    let (b, to) = to_upstream(&i, &p).await;
    let Step::Page(at) = b.follow(to, CLIENT_REDIRECT).await.unwrap() else {
        panic!("no provider page")
    };
    let action = at.form_action("/interaction/").unwrap();
    let denied = b
        .post_form(&action, &[("login", "alice"), ("password", "alice-pw")])
        .await
        .unwrap();
    assert_eq!(denied.status, 401);
    let audit = i.audit_log();
    assert!(
        audit.contains("\"amr=oidc") || audit.contains("amr=oidc"),
        "{audit}"
    );
    assert!(!audit.contains(SECRET));
}

#[tokio::test]
async fn tampered_state_wrong_verifiers_replayed_codes_and_foreign_redirects_are_refused() {
    let dir = idbridge_tests::scratch();
    let p = provider(dir.path(), None).await;
    let i = serve(dir.path(), &p, "").await;
    let b = browser(&i, &p);

    // A redirect URI nobody registered is shown as an error, never followed.
    let evil = b
        .get(&authorize_url(
            &i,
            "idbridge-cli",
            "https://evil.example/cb",
            VERIFIER,
        ))
        .await
        .unwrap();
    assert_eq!(evil.status, 400);
    assert!(evil.headers.get("location").is_none());
    assert!(evil.body.contains("redirect_uri"), "{}", evil.body);
    let evil = b
        .get(&authorize_url(
            &i,
            "web",
            "https://app.example/cb/../../evil",
            VERIFIER,
        ))
        .await
        .unwrap();
    assert_eq!(evil.status, 400);
    // Without PKCE the client is told so at its registered redirect.
    let mut no_pkce = reqwest::Url::parse(&i.url("/oauth2/authorize")).unwrap();
    no_pkce
        .query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", "idbridge-cli")
        .append_pair("redirect_uri", CLIENT_REDIRECT)
        .append_pair("state", "s1")
        .append_pair("code_challenge_method", "plain");
    let r = b.get(no_pkce.as_str()).await.unwrap();
    assert_eq!(r.status, 303);
    let loc = r.headers["location"].to_str().unwrap();
    assert!(loc.starts_with(CLIENT_REDIRECT), "{loc}");
    assert_eq!(
        query_param(loc, "error").as_deref(),
        Some("invalid_request")
    );
    assert_eq!(query_param(loc, "state").as_deref(), Some("s1"));

    // A form without the page's CSRF token is refused.
    let page = b
        .get(&authorize_url(
            &i,
            "idbridge-cli",
            CLIENT_REDIRECT,
            VERIFIER,
        ))
        .await
        .unwrap();
    let forged = b
        .post_form(&i.url("/login/oidc/corp"), &[("csrf", "forged")])
        .await
        .unwrap();
    assert_eq!(forged.status, 403, "{}", forged.body);

    // Tampered state at the callback: refused; the genuine one still works after.
    let at_callback = through_upstream(
        &b,
        &page,
        "alice",
        "alice-pw",
        &i.url("/login/oidc/callback"),
    )
    .await;
    let Step::Left(callback) = at_callback else {
        panic!("expected the provider to send the browser back")
    };
    let tampered = callback.replace("state=", "state=x");
    let r = b.get(&tampered).await.unwrap();
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("state"), "{}", r.body);
    // The genuine callback from another browser (no login cookie) is refused too.
    let other = browser(&i, &p);
    let r = other.get(&callback).await.unwrap();
    assert_eq!(r.status, 400, "{}", r.body);
    // That used the state up: presenting it again is refused.
    let r = b.get(&callback).await.unwrap();
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("already used"), "{}", r.body);

    // A wrong verifier burns the code.
    let code = query_param(&browser_login(&i, &p, "alice", "alice-pw").await, "code").unwrap();
    let (status, body) = redeem(&i, &code, &"w".repeat(43)).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error_description"].as_str().unwrap().contains("PKCE"),
        "{body}"
    );
    let (status, _) = redeem(&i, &code, VERIFIER).await;
    assert_eq!(status, 400);

    // Another client cannot redeem the code; a replayed code revokes what it produced.
    let code = query_param(&browser_login(&i, &p, "alice", "alice-pw").await, "code").unwrap();
    let (status, tokens) = redeem(&i, &code, VERIFIER).await;
    assert_eq!(status, 200, "{tokens}");
    let access = tokens["access_token"].as_str().unwrap();
    assert_eq!(i.review(access, &[]).await.unwrap()["authenticated"], true);
    let (status, replay) = redeem(&i, &code, VERIFIER).await;
    assert_eq!(status, 400, "{replay}");
    assert!(
        replay["error_description"]
            .as_str()
            .unwrap()
            .contains("revoked"),
        "{replay}"
    );
    assert_eq!(i.review(access, &[]).await.unwrap()["authenticated"], false);
    let (status, _) = i
        .refresh(tokens["refresh_token"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(status, 400);
    let code = query_param(&browser_login(&i, &p, "alice", "alice-pw").await, "code").unwrap();
    let (status, body) = i
        .oauth(
            "/oauth2/token",
            &[
                ("grant_type", "authorization_code"),
                ("client_id", "tv"),
                ("code", &code),
                ("redirect_uri", CLIENT_REDIRECT),
                ("code_verifier", VERIFIER),
            ],
        )
        .await
        .unwrap();
    assert_eq!(status, 400, "{body}");

    // email_verified is required when the username is the email.
    let b = browser(&i, &p);
    let page = b
        .get(&authorize_url(
            &i,
            "idbridge-cli",
            CLIENT_REDIRECT,
            VERIFIER,
        ))
        .await
        .unwrap();
    let Step::Page(refused) = through_upstream(&b, &page, "bob", "bob-pw", CLIENT_REDIRECT).await
    else {
        panic!("bob got a code")
    };
    assert_eq!(refused.status, 401, "{}", refused.body);
    assert!(refused.body.contains("email_verified"), "{}", refused.body);
}

#[tokio::test]
async fn an_id_token_with_another_nonce_is_refused_at_the_callback() {
    let dir = idbridge_tests::scratch();
    let p = provider(dir.path(), None).await;
    let i = serve(dir.path(), &p, "").await;
    // Someone changes the nonce on the way to the provider; state and PKCE stay intact, so only
    // the nonce check can catch the ID token the provider then issues.
    let (b, to_provider) = to_upstream(&i, &p).await;
    assert_eq!(to_provider.status, 303, "{}", to_provider.body);
    let loc = to_provider.headers["location"].to_str().unwrap().to_owned();
    let nonce = query_param(&loc, "nonce").expect("a nonce is sent upstream");
    assert!(nonce.len() >= 32, "{nonce}");
    let tampered = loc.replace(&format!("nonce={nonce}"), "nonce=chosen-by-someone-else");
    assert_ne!(tampered, loc);
    let at_provider = b.get(&tampered).await.unwrap();
    let callback = i.url("/login/oidc/callback");
    let Step::Page(login) = b.follow(at_provider, &callback).await.unwrap() else {
        panic!("expected the provider's login page");
    };
    let action = login
        .form_action("/interaction/")
        .expect("provider login form");
    let after = b
        .post_form(&action, &[("login", "alice"), ("password", "alice-pw")])
        .await
        .unwrap();
    let Step::Left(back) = b.follow(after, &callback).await.unwrap() else {
        panic!("expected the provider to send the browser back");
    };
    let r = b.get(&back).await.unwrap();
    assert!(
        r.status.is_client_error() || r.status.is_server_error(),
        "{}",
        r.status
    );
    assert!(r.body.contains("nonce"), "{}", r.body);
    assert!(
        r.headers.get("location").is_none(),
        "no code for the client"
    );
    assert!(
        !i.audit_log().contains("session.start"),
        "no session started"
    );
}

#[tokio::test]
async fn the_device_flow_ends_in_tokens_once_the_user_logs_in() {
    let dir = idbridge_tests::scratch();
    let p = provider(dir.path(), None).await;
    let i = serve(dir.path(), &p, "").await;
    let (status, start) = i
        .oauth("/oauth2/device_authorization", &[("client_id", "tv")])
        .await
        .unwrap();
    assert_eq!(status, 200, "{start}");
    let device_code = start["device_code"].as_str().unwrap();
    let user_code = start["user_code"].as_str().unwrap();
    assert_eq!(start["verification_uri"], i.url("/device"));
    let form = [
        ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
        ("client_id", "tv"),
        ("device_code", device_code),
    ];
    let poll = || i.oauth("/oauth2/token", &form);
    let (status, pending) = poll().await.unwrap();
    assert_eq!(
        (status, pending["error"].as_str()),
        (400, Some("authorization_pending"))
    );
    let (_, fast) = poll().await.unwrap();
    assert_eq!(fast["error"], "slow_down", "{fast}");
    // A client without the grant cannot start one.
    let (status, _) = i
        .oauth(
            "/oauth2/device_authorization",
            &[("client_id", "web"), ("client_secret", SECRET)],
        )
        .await
        .unwrap();
    assert_eq!(status, 400);

    let b = browser(&i, &p);
    let form = b
        .get(start["verification_uri_complete"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(form.input("user_code").as_deref(), Some(user_code));
    // A wrong code is refused on the page.
    let csrf = form.input("csrf").unwrap();
    let wrong = b
        .post_form(
            &i.url("/device"),
            &[("csrf", &csrf), ("user_code", "BBBB-BBBB")],
        )
        .await
        .unwrap();
    assert_eq!(wrong.status, 400);
    let csrf = wrong.input("csrf").unwrap();
    let login = b
        .post_form(
            &i.url("/device"),
            &[("csrf", &csrf), ("user_code", &user_code.to_lowercase())],
        )
        .await
        .unwrap();
    assert_eq!(login.status, 200, "{}", login.body);
    assert!(
        login.body.contains(user_code),
        "the page shows the code to confirm"
    );
    let Step::Page(done) =
        through_upstream(&b, &login, "alice", "alice-pw", "http://nowhere").await
    else {
        panic!("the device login redirected away")
    };
    assert_eq!(done.status, 200, "{}", done.body);
    assert!(done.body.contains("Return to your device"), "{}", done.body);
    let (status, tokens) = poll().await.unwrap();
    assert_eq!(status, 200, "{tokens}");
    let review = i
        .review(tokens["access_token"].as_str().unwrap(), &[])
        .await
        .unwrap();
    assert_eq!(review["user"]["username"], "alice@example.test", "{review}");
    let (status, again) = poll().await.unwrap();
    assert_eq!(status, 400, "{again}");
    // The session keeps asking the provider at refresh.
    let (status, body) = i
        .oauth(
            "/oauth2/token",
            &[
                ("grant_type", "refresh_token"),
                ("client_id", "tv"),
                ("refresh_token", tokens["refresh_token"].as_str().unwrap()),
            ],
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn upstream_id_tokens_are_exchanged_only_for_this_client_and_issuer() {
    async fn exchange_on(i: &Idbridge, t: String) -> (u16, Value) {
        i.oauth(
            "/oauth2/token",
            &[
                (
                    "grant_type",
                    "urn:ietf:params:oauth:grant-type:token-exchange",
                ),
                ("subject_token", &t),
                (
                    "subject_token_type",
                    "urn:ietf:params:oauth:token-type:id_token",
                ),
            ],
        )
        .await
        .unwrap()
    }
    let dir = idbridge_tests::scratch();
    let key = dir.path().join("shared-signing-key.json");
    let p = provider(dir.path(), Some(&key)).await;
    let i = serve(dir.path(), &p, "").await;
    let good = p
        .id_token("idbridge", SECRET, CALLBACK, "alice", "alice-pw")
        .await
        .unwrap();
    let (status, tokens) = exchange_on(&i, good.clone()).await;
    assert_eq!(status, 200, "{tokens}");
    // One ID token starts one session, and that session ends when the ID token does: the
    // provider cannot be asked again without a refresh token.
    let (status, again) = exchange_on(&i, good.clone()).await;
    assert_eq!(status, 400, "{again}");
    assert!(
        again["error_description"]
            .as_str()
            .unwrap()
            .contains("exchanged already"),
        "{again}"
    );
    let id_exp = serde_json::from_slice::<Value>(
        &URL_SAFE_NO_PAD
            .decode(good.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap()["exp"]
        .as_i64()
        .unwrap();
    let sessions: Value = serde_json::from_str(
        &i.cli_ok(&["session", "list", "--user", "alice@example.test", "--json"])
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(sessions.as_array().unwrap().len(), 1, "{sessions}");
    assert_eq!(sessions[0]["expires_at"], id_exp, "{sessions}");
    let review = i
        .review(tokens["access_token"].as_str().unwrap(), &[])
        .await
        .unwrap();
    assert_eq!(review["user"]["username"], "alice@example.test");
    assert_eq!(review["user"]["groups"], json!(["dev", "ops"]));
    assert_eq!(review["user"]["extra"]["idbridge.io/amr"], json!(["oidc"]));

    // Issued to another client of the provider.
    let other = p
        .id_token(
            "other-app",
            "other",
            "https://127.0.0.1/other",
            "alice",
            "alice-pw",
        )
        .await
        .unwrap();
    let (status, body) = exchange_on(&i, other).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error_description"].as_str().unwrap().contains("aud"),
        "{body}"
    );

    // Signed with the same key by another issuer.
    let p2 = provider(dir.path(), Some(&key)).await;
    let foreign = p2
        .id_token("idbridge", SECRET, CALLBACK, "alice", "alice-pw")
        .await
        .unwrap();
    let (status, body) = exchange_on(&i, foreign).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("issuer"),
        "{body}"
    );

    // A changed payload breaks the signature.
    let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
    let mut claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&parts[1]).unwrap()).unwrap();
    claims["email"] = json!("mallory@example.test");
    parts[1] = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap());
    let (status, body) = exchange_on(&i, parts.join(".")).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("signature"),
        "{body}"
    );
    // alg none is never accepted.
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#),
        parts[1]
    );
    let (status, _) = exchange_on(&i, none).await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn a_provider_that_is_down_is_a_clear_error_and_keeps_sessions() {
    let dir = idbridge_tests::scratch();
    let mut p = provider(dir.path(), None).await;
    let i = serve(dir.path(), &p, "").await;
    let code = query_param(&browser_login(&i, &p, "alice", "alice-pw").await, "code").unwrap();
    let (_, tokens) = redeem(&i, &code, VERIFIER).await;
    p.stop().await;
    let (status, body) = i
        .refresh(tokens["refresh_token"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(status, 503, "{body}");
    let msg = body["message"].as_str().unwrap();
    assert!(
        msg.contains("corp") && msg.contains("unavailable") && msg.contains("kept"),
        "{msg}"
    );
    // The session was kept: its access token still passes review.
    let review = i
        .review(tokens["access_token"].as_str().unwrap(), &[])
        .await
        .unwrap();
    assert_eq!(review["authenticated"], true, "{review}");
    // A server that has not yet discovered the provider says at once that it is unavailable.
    let dir2 = idbridge_tests::scratch();
    let i2 = serve(dir2.path(), &p, "").await;
    let (_, r) = to_upstream(&i2, &p).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.body.contains("unavailable"), "{}", r.body);
}

#[tokio::test]
async fn bad_upstream_settings_name_the_field() {
    let dir = idbridge_tests::scratch();
    for (yaml, field) in [
        (
            "upstreams:\n  - {name: Bad Name, issuer: https://x.example, client_id: c}\n",
            "upstreams[0].name",
        ),
        (
            "upstreams:\n  - {name: a, issuer: http://x.example, client_id: c}\n",
            "upstreams[0].issuer",
        ),
        (
            "upstreams:\n  - {name: a, issuer: https://x.example, client_id: c, ca_file: /nonexistent}\n",
            "upstreams[0].ca_file",
        ),
        (
            "upstreams:\n  - {name: a, issuer: https://x.example, client_id: c}\n  - {name: a, issuer: https://y.example, client_id: c}\n",
            "upstreams[1].name",
        ),
        (
            "clients:\n  - {id: w, redirect_uris: ['http://app.example/cb']}\n",
            "clients[0].redirect_uris[0]",
        ),
    ] {
        let p = dir.path().join("bad.yaml");
        std::fs::write(&p, yaml).unwrap();
        let (code, _, err) =
            idbridge_tests::run_idbridge(&["serve", "--check", "--config", p.to_str().unwrap()])
                .await
                .unwrap();
        assert_eq!(code, 2, "{yaml}: {err}");
        assert!(err.contains(field), "{yaml}: {err}");
    }
}

#[tokio::test]
async fn keys_rotated_at_the_provider_are_fetched_again_at_most_every_30_seconds() {
    let dir = idbridge_tests::scratch();
    let port = idbridge_tests::ldap::free_port().unwrap();
    let clients =
        json!([{"client_id": "idbridge", "client_secret": SECRET, "redirect_uris": [CALLBACK]}]);
    let users = json!({"alice": {"password": "alice-pw", "email": "alice@example.test"}});
    let start = |key: &str| {
        let key = dir.path().join(key);
        let (clients, users) = (clients.clone(), users.clone());
        let dir = dir.path().to_owned();
        async move {
            OidcProvider::start_at(&dir, clients, users, Some(&key), Some(port))
                .await
                .unwrap()
        }
    };
    let mut p = start("k1.json").await;
    let i = serve(dir.path(), &p, "").await;
    let exchange = |t: String| {
        let form = vec![
            (
                "grant_type".to_owned(),
                "urn:ietf:params:oauth:grant-type:token-exchange".to_owned(),
            ),
            ("subject_token".to_owned(), t),
            (
                "subject_token_type".to_owned(),
                "urn:ietf:params:oauth:token-type:id_token".to_owned(),
            ),
        ];
        let http = i.http.clone();
        let url = i.url("/oauth2/token");
        async move {
            let r = http.post(url).form(&form).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let token = p
        .id_token("idbridge", SECRET, CALLBACK, "alice", "alice-pw")
        .await
        .unwrap();
    assert_eq!(exchange(token).await.0, 200);

    // The provider comes back on the same issuer with a new key: fetched again once.
    p.stop().await;
    let mut p = start("k2.json").await;
    let token = p
        .id_token("idbridge", SECRET, CALLBACK, "alice", "alice-pw")
        .await
        .unwrap();
    let (status, body) = exchange(token).await;
    assert_eq!(status, 200, "{body}");
    let refetches = |log: String| {
        log.matches("fetched the provider's keys again for an unknown key id")
            .count()
    };
    assert_eq!(refetches(i.log()), 1, "{}", i.log());

    // Another new key at once: not fetched again within 30 s, so the token is refused.
    p.stop().await;
    let p = start("k3.json").await;
    let token = p
        .id_token("idbridge", SECRET, CALLBACK, "alice", "alice-pw")
        .await
        .unwrap();
    let (status, body) = exchange(token).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("signature"),
        "{body}"
    );
    assert_eq!(refetches(i.log()), 1, "rate-limited: {}", i.log());
}

/// Runs `idbridge login` with `args`; hands the URL it prints to `drive`; returns its exit
/// code, standard output and standard error.
async fn cli_login<F, Fut>(
    i: &Idbridge,
    dir: &Path,
    args: &[&str],
    drive: F,
) -> (i32, String, String)
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
    let mut child = tokio::process::Command::new(idbridge_tests::idbridge_bin())
        .args([
            "login",
            "--issuer",
            &i.base,
            "--output",
            "token",
            "--cache-dir",
        ])
        .arg(dir.join("cache"))
        .arg("--ca-file")
        .arg(i.data_dir.join("ca.crt"))
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = String::new();
    let url = loop {
        let line = err
            .next_line()
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("no URL: {seen}"));
        seen.push_str(&line);
        seen.push('\n');
        if let Some(u) = line.split_whitespace().find(|w| w.starts_with("https://")) {
            break u.to_owned();
        }
    };
    drive(url).await;
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .await
        .unwrap();
    while let Ok(Some(l)) = err.next_line().await {
        seen.push_str(&l);
    }
    let status = child.wait().await.unwrap();
    (status.code().unwrap_or(-1), out, seen)
}

#[tokio::test]
async fn idbridge_login_by_browser_and_by_device_code() {
    let dir = idbridge_tests::scratch();
    let p = provider(dir.path(), None).await;
    let i = serve(dir.path(), &p, "").await;

    // --method browser: the authorize URL printed, the answer on the CLI's loopback port.
    let (code, out, err) = cli_login(
        &i,
        dir.path(),
        &["--method", "browser", "--no-browser"],
        |url| {
            let (i, p) = (&i, &p);
            async move {
                assert!(url.contains("/oauth2/authorize?"), "{url}");
                let b = browser(i, p);
                let page = b.get(&url).await.unwrap();
                let Step::Left(back) =
                    through_upstream(&b, &page, "alice", "alice-pw", "http://127.0.0.1:").await
                else {
                    panic!("no redirect to the loopback port")
                };
                let r = reqwest::get(&back).await.unwrap();
                assert_eq!(r.status(), 200);
            }
        },
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let review = i.review(out.trim(), &[]).await.unwrap();
    assert_eq!(review["user"]["username"], "alice@example.test", "{review}");

    // --method device: the code's page printed; the CLI polls until the login is done. A browser
    // and a device login share one cache entry (whoever logs in): --fresh logs in anyway.
    let (code, out, err) = cli_login(&i, dir.path(), &["--method", "device", "--fresh"], |url| {
        let (i, p) = (&i, &p);
        async move {
            assert!(url.contains("/device?user_code="), "{url}");
            let b = browser(i, p);
            let form = b.get(&url).await.unwrap();
            let csrf = form.input("csrf").unwrap();
            let user_code = form.input("user_code").unwrap();
            let login = b
                .post_form(
                    &i.url("/device"),
                    &[("csrf", &csrf), ("user_code", &user_code)],
                )
                .await
                .unwrap();
            let Step::Page(done) =
                through_upstream(&b, &login, "alice", "alice-pw", "http://nowhere").await
            else {
                panic!("redirected away")
            };
            assert_eq!(done.status, 200, "{}", done.body);
        }
    })
    .await;
    assert_eq!(code, 0, "{err}");
    let review = i.review(out.trim(), &[]).await.unwrap();
    assert_eq!(review["user"]["username"], "alice@example.test", "{review}");
    // The session is cached: the next run prints a token without asking anyone.
    let (code, again, err) = idbridge_tests::run_idbridge(&[
        "login",
        "--issuer",
        &i.base,
        "--method",
        "device",
        "--output",
        "token",
        "--ca-file",
        i.data_dir.join("ca.crt").to_str().unwrap(),
        "--cache-dir",
        dir.path().join("cache").to_str().unwrap(),
    ])
    .await
    .unwrap();
    assert_eq!(code, 0, "{err}");
    assert_eq!(again.trim(), out.trim());
}
