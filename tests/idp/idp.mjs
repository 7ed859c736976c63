#!/usr/bin/env node
// Minimal OpenID Connect provider for tests, built on oidc-provider (panva).
//
// Usage:  node idp.mjs [--port N] [--host 127.0.0.1] [--config users.json]
//   env:  IDP_PORT, IDP_HOST, IDP_CONFIG   (argv wins over env)
//   --port 0 (or IDP_PORT=0) picks a free port; the issuer is built *after*
//   listening, so the printed ready line always carries the real port.
//
// Prints exactly one line "ready http://127.0.0.1:PORT" on stdout when
// listening (oidc-provider may print "oidc-provider NOTICE: ..." lines on
// stdout too, so match on /^ready /). Everything else goes to stderr.
//
// Config file (JSON):
//   { "clients": [{ "client_id", "client_secret", "redirect_uris": [...],
//                   "post_logout_redirect_uris"?: [...], "grant_types"?: [...] }],
//     "users":   [{ "sub", "username", "password", "email", "name"?,
//                   "groups": [...], "realm_access": { "roles": [...] } }],
//     "ttl"?:    { "AccessToken": s, "IdToken": s, "RefreshToken": s, ... },
//     "clockTolerance"?: s (default 15) }
// Users are re-read from the file on every login / token / userinfo call, so
// a test can rewrite the file between logins. Alternatively:
//   POST /test/users   body: JSON list of users (or {"users": [...]}) ->
//                      replaces the users in memory (the file is then ignored)
//   DELETE /test/users -> go back to reading the file
//   GET  /test/users   -> current users
// Clients are read once at startup.
//
// Routes of interest (oidc-provider defaults):
//   /.well-known/openid-configuration, /auth, /token, /me (userinfo), /jwks,
//   /session/end, /device/auth + /device (RFC 8628), /token/introspection,
//   /token/revocation; ours: /interaction/:uid (login form),
//   POST /interaction/:uid/login, GET /interaction/:uid/abort, /test/users.

import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import { parseArgs } from 'node:util';

import Provider from 'oidc-provider';

const { values: args } = parseArgs({
  options: {
    port: { type: 'string' },
    host: { type: 'string' },
    config: { type: 'string' },
  },
});
const HOST = args.host ?? process.env.IDP_HOST ?? '127.0.0.1';
const PORT = Number(args.port ?? process.env.IDP_PORT ?? 0);
const CONFIG = args.config ?? process.env.IDP_CONFIG ?? new URL('./users.json', import.meta.url).pathname;

const log = (...a) => console.error('[idp]', ...a);

function readConfig() {
  return JSON.parse(fs.readFileSync(CONFIG, 'utf8'));
}

let usersOverride = null; // set by POST /test/users
function users() {
  return usersOverride ?? readConfig().users ?? [];
}
const userBySub = (sub) => users().find((u) => u.sub === sub);
const userByName = (name) => users().find((u) => u.username === name);

// ---------------------------------------------------------------- config
const initial = readConfig();
const FIRST_PARTY_SCOPES = ['openid', 'offline_access', 'profile', 'email', 'groups'];

const clients = (initial.clients ?? []).map((c) => ({
  grant_types: ['authorization_code', 'refresh_token', 'urn:ietf:params:oauth:grant-type:device_code'],
  response_types: ['code'],
  // oauthenticator uses client_secret_post by default, client_secret_basic with basic_auth=True.
  // A client has exactly one method; default post, override per client.
  token_endpoint_auth_method: 'client_secret_post',
  ...c,
}));

const jwk = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'jwk' });

const configuration = {
  clients,
  jwks: { keys: [{ ...jwk, kid: 'test-key', use: 'sig', alg: 'RS256' }] },
  cookies: { keys: [crypto.randomBytes(32).toString('hex')] },
  claims: {
    openid: ['sub'],
    profile: ['preferred_username', 'name'],
    email: ['email', 'email_verified'],
    groups: ['groups', 'realm_access'],
  },
  scopes: ['openid', 'offline_access'],
  responseTypes: ['code'], // no implicit/hybrid
  // Put scope-requested claims into the ID token too (default true = only in userinfo
  // when an access token is issued, as OIDC Core 5.4 says).
  conformIdTokenClaims: false,
  // seconds of leeway; NOTE it also extends access-token validity at /me (exp + tolerance)
  clockTolerance: initial.clockTolerance ?? 15,
  // Issue refresh tokens whenever the client may use them; the default requires the
  // offline_access scope, which oidc-provider drops unless prompt=consent.
  issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
  features: {
    devInteractions: { enabled: false }, // we have our own login form
    deviceFlow: {
      enabled: true,
      // plain pages (the defaults @import Google Fonts, which an offline browser tries to fetch)
      async userCodeInputSource(ctx, form, out, err) {
        const msg = err ? `<p class="error" id="error">${esc(err.name === 'NoCodeError' || err.userCode ? 'The code you entered is incorrect.' : err.message)}</p>` : '';
        ctx.body = page('Device sign-in', `${msg}<p>Enter the code displayed on your device</p>${form}
<button id="submit" type="submit" form="op.deviceInputForm">Continue</button>`);
      },
      async userCodeConfirmSource(ctx, form, client, deviceInfo, userCode) {
        ctx.body = page('Confirm device', `<p><b id="client">${esc(client.clientId)}</b> asks to sign in; code <code id="user_code">${esc(userCode)}</code></p>${form}
<button id="confirm" autofocus type="submit" form="op.deviceConfirmForm">Continue</button>
<button id="abort" type="submit" form="op.deviceConfirmForm" value="yes" name="abort">Abort</button>`);
      },
      async successSource(ctx) {
        ctx.body = page('Sign-in Success', '<p id="success">Your device is signed in. You can close this page.</p>');
      },
    },
    introspection: { enabled: true },
    revocation: { enabled: true },
    rpInitiatedLogout: {
      enabled: true,
      async logoutSource(ctx, form) {
        ctx.body = page('Sign out', `${form}<button id="logout" autofocus type="submit" form="op.logoutForm" value="yes" name="logout">Yes, sign me out</button>
<button id="stay" type="submit" form="op.logoutForm">No, stay signed in</button>`);
      },
      async postLogoutSuccessSource(ctx) {
        ctx.body = page('Sign-out Success', '<p id="success">You are signed out.</p>');
      },
    },
  },
  // PKCE: required only for public clients by default; S256 only. oauthenticator sends S256.
  ttl: {
    AccessToken: 3600, IdToken: 3600, RefreshToken: 86400, Interaction: 600,
    Session: 86400, Grant: 86400, DeviceCode: 600, AuthorizationCode: 60,
    ...(initial.ttl ?? {}),
  },
  async findAccount(ctx, sub) {
    const u = userBySub(sub);
    if (!u) return undefined; // deleted user -> token/userinfo fail
    return {
      accountId: sub,
      async claims() {
        const cur = userBySub(sub) ?? u; // re-read at claim time
        const claims = {
          sub,
          preferred_username: cur.username,
          name: cur.name ?? cur.username,
          email: cur.email,
          email_verified: true,
          realm_access: cur.realm_access ?? { roles: [] },
        };
        // A user with no "groups" key gets no groups claim: a provider without a groups mapper.
        if (cur.groups !== undefined) claims.groups = cur.groups;
        return claims;
      },
    };
  },
  // First-party clients: grant whatever OIDC scopes/claims are asked, no consent screen.
  async loadExistingGrant(ctx) {
    const { oidc } = ctx;
    const grantId = oidc.result?.consent?.grantId || oidc.session.grantIdFor(oidc.client.clientId);
    let grant = grantId ? await oidc.provider.Grant.find(grantId) : undefined;
    if (!grant) {
      grant = new oidc.provider.Grant({ clientId: oidc.client.clientId, accountId: oidc.session.accountId });
    }
    const wanted = [...oidc.requestParamOIDCScopes].filter((s) => FIRST_PARTY_SCOPES.includes(s));
    grant.addOIDCScope(wanted.join(' '));
    if (oidc.requestParamClaims?.size) grant.addOIDCClaims([...oidc.requestParamClaims]);
    await grant.save();
    return grant;
  },
  renderError(ctx, out, error) {
    log('error page', out.error, out.error_description, error?.message);
    ctx.type = 'html';
    ctx.body = page('Error', `<p class="error" id="error">${esc(out.error)}: ${esc(out.error_description ?? '')}</p>`);
  },
};

// ---------------------------------------------------------------- html
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
function page(title, body) {
  return `<!DOCTYPE html><html><head><meta charset="utf-8"><title>${esc(title)}</title></head>
<body><h1>${esc(title)}</h1>${body}</body></html>`;
}
function loginForm(uid, clientId, { error, username = '' } = {}) {
  return page('Sign in', `
${error ? `<p class="error" id="error">${esc(error)}</p>` : ''}
<p>to <span id="client">${esc(clientId)}</span></p>
<form id="login" method="post" action="/interaction/${esc(uid)}/login" autocomplete="off">
  <label>Username <input id="username" name="username" value="${esc(username)}" autofocus required></label>
  <label>Password <input id="password" name="password" type="password" required></label>
  <button id="submit" type="submit">Sign in</button>
</form>
<a id="abort" href="/interaction/${esc(uid)}/abort">Cancel</a>`);
}

async function readBody(req) {
  const chunks = [];
  for await (const c of req) chunks.push(c);
  return Buffer.concat(chunks).toString('utf8');
}
function send(res, status, body, type = 'text/html; charset=utf-8') {
  res.writeHead(status, { 'Content-Type': type, 'Cache-Control': 'no-store' });
  res.end(body);
}

// ---------------------------------------------------------------- server
let provider;
let providerCallback;

async function interaction(req, res, url) {
  const m = url.pathname.match(/^\/interaction\/([^/]+)(\/login|\/abort)?$/);
  if (!m) return send(res, 404, 'not found');
  const [, uid, action] = m;
  let details;
  try {
    details = await provider.interactionDetails(req, res);
  } catch (err) {
    // SessionNotFound: interaction cookie missing/expired (e.g. cookie dropped, TTL)
    log('interaction lookup failed', err.message);
    return send(res, 400, page('Error', `<p class="error" id="error">${esc(err.message)}</p>`));
  }
  if (details.uid !== uid) return send(res, 400, 'interaction mismatch');
  const { prompt, params } = details;

  if (req.method === 'GET' && !action) {
    if (prompt.name === 'login') return send(res, 200, loginForm(uid, params.client_id));
    if (prompt.name === 'consent') {
      // normally unreachable (loadExistingGrant grants everything); auto-approve anyway
      const grant = details.grantId
        ? await provider.Grant.find(details.grantId)
        : new provider.Grant({ accountId: details.session.accountId, clientId: params.client_id });
      const d = prompt.details;
      if (d.missingOIDCScope) grant.addOIDCScope(d.missingOIDCScope.join(' '));
      if (d.missingOIDCClaims) grant.addOIDCClaims(d.missingOIDCClaims);
      for (const [ind, sc] of Object.entries(d.missingResourceScopes ?? {})) grant.addResourceScope(ind, sc.join(' '));
      const grantId = await grant.save();
      return provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
    }
    return send(res, 400, `unsupported prompt ${esc(prompt.name)}`);
  }
  if (req.method === 'GET' && action === '/abort') {
    return provider.interactionFinished(req, res, {
      error: 'access_denied', error_description: 'End-User aborted interaction',
    }, { mergeWithLastSubmission: false });
  }
  if (req.method === 'POST' && action === '/login') {
    const form = new URLSearchParams(await readBody(req));
    const username = form.get('username') ?? '';
    const user = userByName(username);
    if (!user || user.password !== (form.get('password') ?? '')) {
      log(`login failed for ${JSON.stringify(username)}`);
      return send(res, 401, loginForm(uid, params.client_id, { error: 'Invalid username or password.', username }));
    }
    log(`login ok: ${username} (${user.sub})`);
    return provider.interactionFinished(req, res, {
      login: { accountId: user.sub, remember: false }, // session cookie, not persistent
    }, { mergeWithLastSubmission: false });
  }
  return send(res, 405, 'method not allowed');
}

async function testApi(req, res, url) {
  if (url.pathname !== '/test/users') return send(res, 404, 'not found');
  if (req.method === 'GET') return send(res, 200, JSON.stringify(users()), 'application/json');
  if (req.method === 'DELETE') { usersOverride = null; return send(res, 204, ''); }
  if (req.method === 'POST' || req.method === 'PUT') {
    try {
      const body = JSON.parse(await readBody(req));
      const list = Array.isArray(body) ? body : body.users;
      if (!Array.isArray(list)) throw new Error('expected a list of users');
      usersOverride = list;
      log(`users replaced via /test/users: ${list.map((u) => u.username).join(', ')}`);
      return send(res, 200, JSON.stringify(list), 'application/json');
    } catch (err) {
      return send(res, 400, JSON.stringify({ error: err.message }), 'application/json');
    }
  }
  return send(res, 405, 'method not allowed');
}

const server = http.createServer(async (req, res) => {
  const url = new URL(req.url, 'http://x');
  try {
    if (url.pathname.startsWith('/interaction/')) return await interaction(req, res, url);
    if (url.pathname.startsWith('/test/')) return await testApi(req, res, url);
    return providerCallback(req, res);
  } catch (err) {
    log('handler error', err);
    if (!res.headersSent) send(res, 500, esc(err.message));
  }
});

server.listen(PORT, HOST, () => {
  const { port } = server.address();
  const hostForUrl = HOST.includes(':') ? `[${HOST}]` : HOST;
  const issuer = `http://${hostForUrl}:${port}`;
  provider = new Provider(issuer, configuration);
  // no reverse proxy in tests; ctx.secure stays false, so cookies are not "Secure"
  provider.proxy = false;
  for (const ev of ['server_error', 'authorization.error', 'grant.error', 'userinfo.error',
    'end_session.error', 'introspection.error', 'revocation.error']) {
    provider.on(ev, (ctx, err) => log(ev, err?.message, err?.error_description ?? ''));
  }
  provider.on('grant.success', (ctx) => log('grant.success', ctx.oidc.params?.grant_type ?? ''));
  providerCallback = provider.callback();
  process.stdout.write(`ready ${issuer}\n`);
});

for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => { server.close(); server.closeAllConnections?.(); process.exit(0); });
}
