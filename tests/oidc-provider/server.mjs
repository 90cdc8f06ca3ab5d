// TEST-ONLY OAuth 2.0 / OpenID Connect server for tokensync's interop tests
// (tests/interop_oidc_provider.rs). It runs panva's oidc-provider, an independently written,
// certified implementation, with fixed test clients. Never expose it: the client secrets are
// public, an account is logged in without a password and /test/code hands out authorization
// codes to anyone who asks.
//
// Usage: node server.mjs [--port N] [--exit-on-stdin-eof] [--tls-dir DIR]
//   (or PORT=N; default 0 = any free port)
//
// It listens on 127.0.0.1 only. The FIRST and ONLY line on stdout is a JSON object, printed once
// the server accepts connections:
//   {"issuer":"http://127.0.0.1:PORT","token_endpoint":"...","introspection_endpoint":"...","port":PORT}
// Everything else (oidc-provider's notices, errors) goes to stderr, and no secret or token is
// logged. The process exits on SIGTERM/SIGINT and, with --exit-on-stdin-eof, when its stdin is
// closed (so a test harness that dies does not leave it behind).
//
// Clients (see README.md next to this file for the full table):
//   interop-basic        client_secret_basic   client_credentials
//   interop-post         client_secret_post    client_credentials
//   interop-secret-jwt   client_secret_jwt     client_credentials   (HS256)
//   interop-rs256        private_key_jwt       client_credentials   (RS256, keys/rs256.pem)
//   interop-es256        private_key_jwt       client_credentials   (ES256, keys/es256.pem)
//   interop-rotation     client_secret_post    authorization_code + refresh_token (rotating)
//
// With --tls-dir DIR the server speaks HTTPS (DIR/server.crt, DIR/server.key) and adds mutual
// TLS (RFC 8705, features.mTLS): a second HTTPS listener that requests client certificates
// (DIR/ca.crt is the CA it trusts for tls_client_auth; any certificate is let through to
// oidc-provider, which decides), published as mtls_endpoint_aliases in discovery. The plain
// token_endpoint never sees a client certificate, so a client that ignores the alias fails.
// The ready line adds "mtls_token_endpoint". Two more clients, both with certificate-bound
// access tokens (cnf x5t#S256):
//   interop-mtls         tls_client_auth              subject DN CN=interop-mtls (issued by ca.crt)
//   interop-self-signed  self_signed_tls_client_auth  the certificate DIR/self-signed.crt
// Resource urn:tokensync:interop-jwt-api issues JWT access tokens (the cnf claim is visible).
//
// Test-only helper: GET /test/code runs a complete authorization code flow for
// interop-rotation inside this process (GET /auth -> /interaction/:uid auto-login ->
// /interaction/:uid auto-consent incl. offline_access -> redirect to
// http://127.0.0.1/callback?code=...) and answers {"code": "...", "redirect_uri": "..."}.

import { createPrivateKey, createPublicKey } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { X509Certificate } from 'node:crypto';
import http from 'node:http';
import https from 'node:https';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

// oidc-provider prints its notices with console.info (stdout); stdout belongs to the ready line.
console.log = console.error;
console.info = console.error;

const { default: Provider, errors } = await import('oidc-provider');

const here = dirname(fileURLToPath(import.meta.url));

const RESOURCE = 'urn:tokensync:interop-api';
const REDIRECT_URI = 'http://127.0.0.1/callback';
const ACCOUNT_ID = 'interop-user';
const API_SCOPES = 'api:read api:write';

function parsePort() {
  const i = process.argv.indexOf('--port');
  const raw = i >= 0 ? process.argv[i + 1] : (process.env.PORT ?? '0');
  const port = Number.parseInt(raw, 10);
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    console.error(`invalid port: ${raw}`);
    process.exit(2);
  }
  return port;
}

function tlsDir() {
  const i = process.argv.indexOf('--tls-dir');
  return i >= 0 ? process.argv[i + 1] : undefined;
}
const TLS_DIR = tlsDir();
const JWT_RESOURCE = 'urn:tokensync:interop-jwt-api';

function publicJwk(file, kid, alg) {
  const jwk = createPublicKey(readFileSync(join(here, 'keys', file))).export({ format: 'jwk' });
  return { ...jwk, kid, alg, use: 'sig' };
}

// Client secrets: test-only values, also written in tests/interop_oidc_provider.rs.
// client_secret_jwt needs a secret of at least 32 bytes for HS256.
const ccClient = { grant_types: ['client_credentials'], response_types: [], redirect_uris: [], scope: API_SCOPES };
const clients = [
  {
    ...ccClient,
    client_id: 'interop-basic',
    client_secret: 'basic-secret-0123456789abcdef0123456789abcdef',
    token_endpoint_auth_method: 'client_secret_basic',
  },
  {
    ...ccClient,
    client_id: 'interop-post',
    client_secret: 'post-secret-0123456789abcdef0123456789abcdef',
    token_endpoint_auth_method: 'client_secret_post',
  },
  {
    ...ccClient,
    client_id: 'interop-secret-jwt',
    client_secret: 'jwt-secret-0123456789abcdef0123456789abcdef',
    token_endpoint_auth_method: 'client_secret_jwt',
    token_endpoint_auth_signing_alg: 'HS256',
  },
  {
    ...ccClient,
    client_id: 'interop-rs256',
    token_endpoint_auth_method: 'private_key_jwt',
    token_endpoint_auth_signing_alg: 'RS256',
    jwks: { keys: [publicJwk('rs256.pem', 'interop-rs256', 'RS256')] },
  },
  {
    ...ccClient,
    client_id: 'interop-es256',
    token_endpoint_auth_method: 'private_key_jwt',
    token_endpoint_auth_signing_alg: 'ES256',
    jwks: { keys: [publicJwk('es256.pem', 'interop-es256', 'ES256')] },
  },
  {
    client_id: 'interop-rotation',
    client_secret: 'rotation-secret-0123456789abcdef0123456789abcdef',
    token_endpoint_auth_method: 'client_secret_post',
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    redirect_uris: [REDIRECT_URI],
    scope: `openid offline_access ${API_SCOPES}`,
  },
];

if (TLS_DIR) {
  const mtls = { ...ccClient, tls_client_certificate_bound_access_tokens: true };
  clients.push({
    ...mtls,
    client_id: 'interop-mtls',
    token_endpoint_auth_method: 'tls_client_auth',
    tls_client_auth_subject_dn: 'CN=interop-mtls',
  });
  const selfSigned = new X509Certificate(readFileSync(join(TLS_DIR, 'self-signed.crt')));
  clients.push({
    ...mtls,
    client_id: 'interop-self-signed',
    token_endpoint_auth_method: 'self_signed_tls_client_auth',
    jwks: { keys: [{ ...selfSigned.publicKey.export({ format: 'jwk' }), x5c: [selfSigned.raw.toString('base64')] }] },
  });
}

// The provider's own signing key (ID tokens and JWT access tokens), keys/provider-rs256.pem.
// Read from a file, not made with generateKeyPairSync: on Node 20 a garbage collection during
// the JWK export below can run the finished key generation job's destructor, which waits for
// the lock the export holds on the same key, and the process hangs before it is ready (seen
// as an occasional "printed no ready line" in the tests; gdb shows ~KeyGenJob in
// uv_mutex_lock under ExportJWKRsaKey).
const idTokenKey = createPrivateKey(readFileSync(join(here, 'keys', 'provider-rs256.pem')));

const configuration = {
  clients,
  clientAuthMethods: [
    'client_secret_basic',
    'client_secret_jwt',
    'client_secret_post',
    'private_key_jwt',
    'none',
    ...(TLS_DIR ? ['tls_client_auth', 'self_signed_tls_client_auth'] : []),
  ],
  jwks: { keys: [{ ...idTokenKey.export({ format: 'jwk' }), kid: 'provider-rs256', alg: 'RS256', use: 'sig' }] },
  cookies: { keys: ['tokensync-interop-test-only-cookie-key'] },
  scopes: ['openid', 'offline_access', 'api:read', 'api:write'],
  claims: { openid: ['sub'] },
  findAccount: async (_ctx, sub) => ({ accountId: sub, claims: async () => ({ sub }) }),
  interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
  // Every refresh returns a new refresh token; presenting a used one is invalid_grant (and,
  // as RFC 9700 4.14.2 recommends, revokes the whole grant).
  rotateRefreshToken: true,
  issueRefreshToken: async (_ctx, client, code) =>
    client.grantTypeAllowed('refresh_token') && code.scopes.has('offline_access'),
  ttl: {
    // Every access token (client_credentials, code, refresh) lives 600 s.
    AuthorizationCode: 300,
    Interaction: 300,
    Session: 3600,
    Grant: 3600,
    IdToken: 300,
    RefreshToken: 3600,
    ClientCredentials: 600,
    AccessToken: 600,
  },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: {
      enabled: true,
      // Test-only: any authenticated client may introspect any token.
      allowedPolicy: async () => true,
    },
    revocation: { enabled: true },
    // Access tokens are for the API only (no userinfo endpoint), so the authorization code and
    // refresh grants also yield tokens for the resource below.
    userinfo: { enabled: false },
    resourceIndicators: {
      enabled: true,
      defaultResource: async (_ctx, _client, oneOf) => oneOf ?? RESOURCE,
      useGrantedResource: async () => true,
      getResourceServerInfo: async (_ctx, resourceIndicator) => {
        if (TLS_DIR && resourceIndicator === JWT_RESOURCE) {
          return { scope: API_SCOPES, audience: JWT_RESOURCE, accessTokenFormat: 'jwt', jwt: { sign: { alg: 'RS256' } } };
        }
        if (resourceIndicator !== RESOURCE) throw new errors.InvalidTarget();
        return { scope: API_SCOPES, audience: RESOURCE, accessTokenFormat: 'opaque' };
      },
    },
    mTLS: {
      enabled: Boolean(TLS_DIR),
      certificateBoundAccessTokens: true,
      tlsClientAuth: true,
      selfSignedTlsClientAuth: true,
      // The certificate the client presented on this connection, if any.
      getCertificate: (ctx) => ctx.socket.getPeerX509Certificate?.() ?? undefined,
      // Verified against DIR/ca.crt by the TLS layer.
      certificateAuthorized: (ctx) => ctx.socket.authorized === true,
      certificateSubjectMatches: (ctx, property, expected) =>
        property === 'tls_client_auth_subject_dn' && ctx.socket.getPeerX509Certificate()?.subject === expected,
    },
  },
  pkce: { required: () => false },
  // Error bodies for the tests, never secrets: oidc-provider's errors carry no credentials.
  renderError: async (ctx, out) => {
    ctx.type = 'application/json';
    ctx.body = out;
  },
};

// --- test-only interactions: auto-login and auto-consent ---------------------------------

async function finishInteraction(provider, ctx) {
  const details = await provider.interactionDetails(ctx.req, ctx.res);
  const { prompt, params, session } = details;
  let result;
  if (prompt.name === 'login') {
    result = { login: { accountId: ACCOUNT_ID } };
  } else if (prompt.name === 'consent') {
    const grant = details.grantId
      ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
    const d = prompt.details;
    if (d.missingOIDCScope) grant.addOIDCScope(d.missingOIDCScope.join(' '));
    if (d.missingOIDCClaims) grant.addOIDCClaims(d.missingOIDCClaims);
    if (d.missingResourceScopes) {
      for (const [indicator, scopes] of Object.entries(d.missingResourceScopes)) {
        grant.addResourceScope(indicator, scopes.join(' '));
      }
    }
    result = { consent: { grantId: await grant.save() } };
  } else {
    result = { error: 'access_denied', error_description: `unexpected prompt ${prompt.name}` };
  }
  const returnTo = await provider.interactionResult(ctx.req, ctx.res, result, { mergeWithLastSubmission: true });
  ctx.status = 303;
  ctx.redirect(returnTo);
}

// A minimal cookie jar: name -> value, every cookie sent on every request to this server.
function updateJar(jar, response) {
  for (const line of response.headers.getSetCookie()) {
    const [pair] = line.split(';');
    const eq = pair.indexOf('=');
    const name = pair.slice(0, eq).trim();
    const value = pair.slice(eq + 1).trim();
    if (/expires=Thu, 01 Jan 1970/i.test(line) || value === '') jar.delete(name);
    else jar.set(name, value);
  }
}

// Drives /auth through the interactions with fetch, like a browser would, and returns the code.
async function obtainCode(issuer) {
  const auth = new URL(`${issuer}/auth`);
  auth.search = new URLSearchParams({
    client_id: 'interop-rotation',
    response_type: 'code',
    redirect_uri: REDIRECT_URI,
    scope: 'openid offline_access api:read',
    resource: RESOURCE,
    prompt: 'consent',
    state: `s${Date.now()}`,
  }).toString();
  const jar = new Map();
  let url = auth.href;
  for (let hop = 0; hop < 10; hop++) {
    const response = await fetch(url, {
      redirect: 'manual',
      headers: { cookie: [...jar].map(([k, v]) => `${k}=${v}`).join('; ') },
    });
    updateJar(jar, response);
    const location = response.headers.get('location');
    if (response.status < 300 || response.status >= 400 || !location) {
      throw new Error(`authorization flow stopped at ${new URL(url).pathname} with HTTP ${response.status}`);
    }
    const next = new URL(location, url);
    if (next.href.startsWith(REDIRECT_URI)) {
      const error = next.searchParams.get('error');
      if (error) throw new Error(`authorization failed: ${error}: ${next.searchParams.get('error_description')}`);
      const code = next.searchParams.get('code');
      if (!code) throw new Error('redirect without code');
      return code;
    }
    url = next.href;
  }
  throw new Error('too many redirects in the authorization flow');
}

// oidc-provider accepts client_secret_basic and client_secret_post interchangeably for a client
// registered with either. The tests want to prove that tokensync puts the secret where the
// ClientCredential says, so this server is strict: a client registered for client_secret_basic
// must send an Authorization: Basic header, one registered for client_secret_post must not.
function enforceSecretPlacement(ctx) {
  const method = ctx.oidc?.client?.clientAuthMethod;
  if (ctx.method !== 'POST' || (method !== 'client_secret_basic' && method !== 'client_secret_post')) return;
  const basic = /^basic /i.test(ctx.headers.authorization ?? '');
  if ((method === 'client_secret_basic') === basic) return;
  ctx.status = 401;
  ctx.type = 'application/json';
  ctx.body = {
    error: 'invalid_client',
    error_description: `client authentication failed: this client is registered for ${method}`,
  };
}

// --- start ----------------------------------------------------------------------------------

const tlsFile = (name) => readFileSync(join(TLS_DIR, name));
const server = TLS_DIR
  ? https.createServer({ key: tlsFile('server.key'), cert: tlsFile('server.crt') })
  : http.createServer();
// The mutual TLS listener: asks for a certificate, lets every one through to oidc-provider.
const mtlsServer = TLS_DIR
  ? https.createServer({
      key: tlsFile('server.key'),
      cert: tlsFile('server.crt'),
      ca: tlsFile('ca.crt'),
      requestCert: true,
      rejectUnauthorized: false,
    })
  : undefined;
// Both listeners are up before the provider is made: discovery names the mTLS one.
server.listen(parsePort(), '127.0.0.1', () => {
  if (mtlsServer) mtlsServer.listen(0, '127.0.0.1', start);
  else start();
});

function start() {
  const { port } = server.address();
  const issuer = `${TLS_DIR ? 'https' : 'http'}://127.0.0.1:${port}`;
  let mtlsTokenEndpoint;
  if (mtlsServer) {
    mtlsTokenEndpoint = `https://127.0.0.1:${mtlsServer.address().port}/token`;
    configuration.discovery = { mtls_endpoint_aliases: { token_endpoint: mtlsTokenEndpoint } };
  }
  const provider = new Provider(issuer, configuration);

  provider.use(async (ctx, next) => {
    if (ctx.method === 'GET' && ctx.path.startsWith('/interaction/')) {
      await finishInteraction(provider, ctx);
      return;
    }
    if (ctx.method === 'GET' && ctx.path === '/test/code') {
      try {
        ctx.body = { code: await obtainCode(issuer), redirect_uri: REDIRECT_URI, client_id: 'interop-rotation' };
      } catch (err) {
        ctx.status = 500;
        ctx.body = { error: 'test_helper_failed', error_description: String(err.message) };
      }
      return;
    }
    await next();
    enforceSecretPlacement(ctx);
  });
  provider.on('server_error', (_ctx, err) => console.error('server_error:', err));

  server.on('request', provider.callback());
  mtlsServer?.on('request', provider.callback());
  process.stdout.write(
    `${JSON.stringify({
      issuer,
      port,
      token_endpoint: provider.urlFor('token'),
      introspection_endpoint: provider.urlFor('introspection'),
      mtls_token_endpoint: mtlsTokenEndpoint,
    })}\n`,
  );
}

function shutdown() {
  for (const s of [server, mtlsServer]) {
    s?.close();
    s?.closeAllConnections();
  }
  process.exit(0);
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
// The test harness passes --exit-on-stdin-eof and keeps our stdin open: EOF means it is gone.
if (process.argv.includes('--exit-on-stdin-eof')) {
  process.stdin.on('end', shutdown);
  process.stdin.on('error', shutdown);
  process.stdin.resume();
}
