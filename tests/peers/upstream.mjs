// A real upstream identity provider for the test suite: oidc-provider on loopback.
//
//   node upstream.mjs <port>
//   PEER_CLIENTS='[{"client_id": "...", "client_secret": "...", "redirect_uris": ["..."]}]'
//
// It stands in for two kinds of upstream at once:
// - OpenID Connect (Google, Apple, Microsoft): discovery at /.well-known/openid-configuration,
//   ES256 ID tokens signed with a key made at start, PKCE required, nonce honoured.
// - plain OAuth 2 with a profile endpoint (Facebook, X): authorize without the "openid" scope,
//   then GET /me with the access token answers {"id": ...}, as Facebook's Graph API does.
//
// No browser is needed: the interaction page signs in whoever the authorization request's
// login_hint names (or PEER_SUBJECT) and consents at once. login_hint=deny answers
// access_denied, as a person clicking "Cancel" would.
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import http from 'node:http';

import Provider from 'oidc-provider';

const port = Number(process.argv[2] ?? process.env.PORT);
if (!Number.isInteger(port) || port <= 0) {
  console.error('usage: node upstream.mjs <port>');
  process.exit(2);
}
const issuer = `http://127.0.0.1:${port}`;
const clients = JSON.parse(process.env.PEER_CLIENTS ?? '[]').map((client) => ({
  grant_types: ['authorization_code'],
  response_types: ['code'],
  token_endpoint_auth_method: 'client_secret_basic',
  id_token_signed_response_alg: 'ES256',
  ...client,
}));
const defaultSubject = process.env.PEER_SUBJECT ?? 'upstream-subject-1';

const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
const signingKey = { ...privateKey.export({ format: 'jwk' }), alg: 'ES256', use: 'sig', kid: 'peer-es256' };

const provider = new Provider(issuer, {
  clients,
  jwks: { keys: [signingKey] },
  cookies: { keys: [randomBytes(32).toString('hex')] },
  scopes: ['openid', 'email', 'profile', 'public_profile'],
  claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name'] },
  // Every subject has the same email address: carebridge must never link by it.
  findAccount: async (ctx, id) => ({
    accountId: id,
    claims: async () => ({ sub: id, email: 'same.person@example.test', email_verified: true, name: 'Test Patient' }),
  }),
  pkce: { required: () => true },
  features: { devInteractions: { enabled: false } },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  ttl: { Interaction: 600, Session: 600, Grant: 600, AccessToken: 600, AuthorizationCode: 60 },
  renderError: async (ctx, out) => {
    ctx.type = 'text/plain';
    ctx.body = `${out.error}: ${out.error_description ?? ''}`;
  },
});

async function interaction(req, res) {
  const details = await provider.interactionDetails(req, res);
  const subject = details.params.login_hint ?? defaultSubject;
  let result;
  if (subject === 'deny') {
    result = { error: 'access_denied', error_description: 'the person declined' };
  } else if (details.prompt.name === 'login') {
    result = { login: { accountId: subject } };
  } else {
    const grant = details.grantId
      ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId: details.session.accountId, clientId: details.params.client_id });
    const missing = details.prompt.details;
    if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
    if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
    for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes ?? {})) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
    result = { consent: { grantId: await grant.save() } };
  }
  await provider.interactionFinished(req, res, result, { mergeWithLastSubmission: true });
}

// Facebook-style profile endpoint for the plain OAuth 2 flow.
async function me(req, res) {
  const [scheme, token] = (req.headers.authorization ?? '').split(' ');
  const accessToken = scheme?.toLowerCase() === 'bearer' && token ? await provider.AccessToken.find(token) : undefined;
  if (!accessToken || accessToken.isExpired) {
    res.writeHead(401, { 'content-type': 'application/json', 'www-authenticate': 'Bearer' });
    res.end(JSON.stringify({ error: 'invalid_token' }));
    return;
  }
  res.writeHead(200, { 'content-type': 'application/json' });
  res.end(JSON.stringify({ id: accessToken.accountId, name: 'Test Patient', email: 'same.person@example.test' }));
}

const handle = provider.callback();
const server = http.createServer((req, res) => {
  const path = new URL(req.url, issuer).pathname;
  let handler;
  if (req.method === 'GET' && path.startsWith('/interaction/')) handler = interaction;
  else if (req.method === 'GET' && path === '/me') handler = me;
  if (!handler) {
    handle(req, res);
    return;
  }
  handler(req, res).catch((error) => {
    console.error(error);
    if (!res.headersSent) res.writeHead(500, { 'content-type': 'text/plain' });
    res.end('peer error');
  });
});
server.listen(port, '127.0.0.1', () => console.log(`upstream peer listening on ${issuer}`));
for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => server.close(() => process.exit(0)));
