// A real OpenID provider for idbridge's end-to-end tests: oidc-provider over HTTPS on an
// ephemeral loopback port, with the clients and users named in a JSON file.
//
//   node provider.mjs CONFIG.json
//
// CONFIG: { "port": to listen on (default: any free one), "cert": PEM file, "key": PEM file, "signing_key": JWK file (created when missing,
// so two providers can share one key), "clients": [{client_id, client_secret, redirect_uris}],
// "users": { "alice": { "password", "email", "email_verified", "groups": [...] } } }.
//
// A registered https://127.0.0.1/... redirect URI matches that URI on any port, since idbridge
// runs on an ephemeral port.
//
// Once listening it prints one JSON line, {"issuer": "https://127.0.0.1:PORT"}, to stdout.
// Users log in through a plain HTML form at /interaction/{uid} (posted to
// /interaction/{uid}/login); consent is implied. The test routes below change users at run time.
//   POST /test/users/{id}/disable   the user no longer exists for the provider (refresh fails)
import { readFileSync, writeFileSync, existsSync } from 'node:fs';
import https from 'node:https';
import Provider from 'oidc-provider';
import * as jose from 'jose';

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const users = config.users ?? {};
const disabled = new Set();

let signingKey;
if (config.signing_key && existsSync(config.signing_key)) {
  signingKey = JSON.parse(readFileSync(config.signing_key, 'utf8'));
} else {
  const { privateKey } = await jose.generateKeyPair('RS256', { extractable: true });
  signingKey = { ...(await jose.exportJWK(privateKey)), kid: `k${Date.now()}`, alg: 'RS256', use: 'sig' };
  if (config.signing_key) writeFileSync(config.signing_key, JSON.stringify(signingKey));
}

const escape = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

const server = https.createServer({
  cert: readFileSync(config.cert),
  key: readFileSync(config.key),
});
server.listen(config.port ?? 0, '127.0.0.1', () => {
  const issuer = `https://127.0.0.1:${server.address().port}`;
  const provider = new Provider(issuer, {
    clients: config.clients.map((c) => ({
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
      ...c,
    })),
    jwks: { keys: [signingKey] },
    claims: {
      openid: ['sub'],
      email: ['email', 'email_verified'],
      profile: ['preferred_username', 'name'],
      groups: ['groups'],
    },
    scopes: ['openid', 'offline_access', 'email', 'profile', 'groups'],
    // Claims go into the ID token itself, as idbridge reads them from there.
    conformIdTokenClaims: false,
    pkce: { required: () => true },
    features: { devInteractions: { enabled: false } },
    interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
    cookies: { keys: ['idbridge-test-cookie-key'] },
    ttl: { AccessToken: 600, IdToken: 600, RefreshToken: 86400, Session: 86400, Grant: 86400 },
    issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
    async findAccount(ctx, id) {
      const u = users[id];
      if (!u || disabled.has(id)) return undefined;
      return {
        accountId: id,
        async claims() {
          return {
            sub: id,
            preferred_username: u.preferred_username ?? id,
            name: u.name ?? id,
            email: u.email ?? `${id}@example.test`,
            email_verified: u.email_verified ?? true,
            groups: u.groups ?? [],
          };
        },
      };
    },
    // Consent is implied: every client gets what it asked for.
    async loadExistingGrant(ctx) {
      const id = ctx.oidc.result?.consent?.grantId
        || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
      if (id) return ctx.oidc.provider.Grant.find(id);
      const grant = new ctx.oidc.provider.Grant({
        clientId: ctx.oidc.client.clientId,
        accountId: ctx.oidc.session.accountId,
      });
      grant.addOIDCScope('openid offline_access email profile groups');
      grant.addOIDCClaims(['email', 'email_verified', 'preferred_username', 'name', 'groups']);
      await grant.save();
      return grant;
    },
  });
  provider.proxy = false;
  // idbridge runs on an ephemeral port in the tests: a registered https://127.0.0.1/...
  // redirect URI matches it on any port (as RFC 8252 does for http loopback URIs).
  const allowed = provider.Client.prototype.redirectUriAllowed;
  provider.Client.prototype.redirectUriAllowed = function redirectUriAllowed(value) {
    if (allowed.call(this, value)) return true;
    const u = URL.parse(value);
    if (!u || u.protocol !== 'https:' || u.hostname !== '127.0.0.1') return false;
    u.port = '';
    return this.redirectUris.includes(u.href);
  };
  const callback = provider.callback();

  const body = (req) => new Promise((resolve, reject) => {
    let data = '';
    req.on('data', (c) => { data += c; });
    req.on('end', () => resolve(new URLSearchParams(data)));
    req.on('error', reject);
  });

  server.on('request', async (req, res) => {
    try {
      const url = new URL(req.url, issuer);
      let m;
      if ((m = url.pathname.match(/^\/interaction\/([^/]+)$/)) && req.method === 'GET') {
        const details = await provider.interactionDetails(req, res);
        if (details.prompt.name === 'consent') {
          // Consent is implied (prompt=consent asks for it again): grant what was asked.
          const grant = details.grantId
            ? await provider.Grant.find(details.grantId)
            : new provider.Grant({ accountId: details.session.accountId, clientId: details.params.client_id });
          const missing = details.prompt.details;
          if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
          if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
          const grantId = await grant.save();
          await provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
          return;
        }
        res.setHeader('content-type', 'text/html');
        res.end(`<!doctype html><title>Sign in</title><h1>Sign in to ${escape(details.params.client_id)}</h1>
<form method="post" action="/interaction/${escape(m[1])}/login">
<input name="login"><input name="password" type="password"><button>Sign in</button></form>`);
        return;
      }
      if ((m = url.pathname.match(/^\/interaction\/([^/]+)\/login$/)) && req.method === 'POST') {
        await provider.interactionDetails(req, res);
        const form = await body(req);
        const id = form.get('login');
        const u = users[id];
        if (!u || disabled.has(id) || u.password !== form.get('password')) {
          res.statusCode = 401;
          res.setHeader('content-type', 'text/html');
          res.end('<!doctype html><p>invalid login or password</p>');
          return;
        }
        await provider.interactionFinished(req, res, { login: { accountId: id } }, { mergeWithLastSubmission: false });
        return;
      }
      if ((m = url.pathname.match(/^\/test\/users\/([^/]+)\/disable$/)) && req.method === 'POST') {
        disabled.add(decodeURIComponent(m[1]));
        res.end('ok');
        return;
      }
      callback(req, res);
    } catch (e) {
      res.statusCode = 500;
      res.end(String(e));
    }
  });
  process.stdout.write(`${JSON.stringify({ issuer })}\n`);
});
