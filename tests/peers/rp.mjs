// A relying party no one here wrote: openid-client 6 against carebridge on loopback.
//
//   RP_ISSUER=http://127.0.0.1:PORT RP_CLIENT_ID=... RP_CLIENT_SECRET=... \
//   RP_REDIRECT_URI=https://app.example.org/callback RP_SESSION_COOKIE='carebridge_session=...' \
//   node rp.mjs
//
// It discovers the provider, builds an authorization request with PKCE (S256), state and
// nonce, walks the authorization page as the signed-in browser would (the session cookie
// is given; the consent form is posted with its CSRF field and cookie), then lets
// openid-client check the response (state, iss), exchange the code, validate the ID
// token, call userinfo, refresh and revoke. It prints one JSON line of what it saw.
import * as client from 'openid-client';

const env = (name) => {
  const value = process.env[name];
  if (!value) {
    console.error(`missing ${name}`);
    process.exit(2);
  }
  return value;
};

const issuer = new URL(env('RP_ISSUER'));
const redirectUri = env('RP_REDIRECT_URI');
const config = await client.discovery(
  issuer,
  env('RP_CLIENT_ID'),
  { id_token_signed_response_alg: 'ES256' },
  client.ClientSecretBasic(env('RP_CLIENT_SECRET')),
  { execute: [client.allowInsecureRequests] }, // loopback tests only
);

const verifier = client.randomPKCECodeVerifier();
const state = client.randomState();
const nonce = client.randomNonce();
const url = client.buildAuthorizationUrl(config, {
  redirect_uri: redirectUri,
  scope: process.env.RP_SCOPE ?? 'openid offline_access email',
  code_challenge: await client.calculatePKCECodeChallenge(verifier),
  code_challenge_method: 'S256',
  state,
  nonce,
});

// The browser's part: the session cookie, plus whatever cookies the pages set (CSRF).
const cookies = new Map(
  env('RP_SESSION_COOKIE')
    .split(';')
    .map((pair) => pair.trim().split('='))
    .map(([k, ...v]) => [k, v.join('=')]),
);
const cookieHeader = () => [...cookies].map(([k, v]) => `${k}=${v}`).join('; ');
const remember = (response) => {
  for (const line of response.headers.getSetCookie()) {
    const [pair] = line.split(';');
    const [k, ...v] = pair.split('=');
    cookies.set(k.trim(), v.join('='));
  }
};
const decode = (text) =>
  text.replaceAll('&#34;', '"').replaceAll('&#39;', "'").replaceAll('&lt;', '<')
    .replaceAll('&gt;', '>').replaceAll('&amp;', '&');

let response = await fetch(url, { redirect: 'manual', headers: { cookie: cookieHeader() } });
remember(response);
let consentShown = false;
if (response.status === 200) {
  consentShown = true;
  const html = await response.text();
  const fields = [...html.matchAll(/<input type="hidden" name="([^"]+)" value="([^"]*)">/g)].map(
    ([, name, value]) => [name, decode(value)],
  );
  const body = new URLSearchParams([...fields, ['decision', 'allow']]);
  response = await fetch(new URL('/authorize', issuer), {
    method: 'POST',
    redirect: 'manual',
    headers: { cookie: cookieHeader(), 'content-type': 'application/x-www-form-urlencoded' },
    body,
  });
}
const location = response.headers.get('location');
if (![302, 303].includes(response.status) || !location?.startsWith(redirectUri)) {
  console.error(`authorization did not redirect back: ${response.status} ${location}`);
  process.exit(1);
}

const tokens = await client.authorizationCodeGrant(config, new URL(location), {
  pkceCodeVerifier: verifier,
  expectedState: state,
  expectedNonce: nonce,
  idTokenExpected: true,
});
const claims = tokens.claims();
const userinfo = await client.fetchUserInfo(config, tokens.access_token, claims.sub);
const refreshed = await client.refreshTokenGrant(config, tokens.refresh_token);
let reuseError = null;
try {
  await client.refreshTokenGrant(config, tokens.refresh_token);
} catch (error) {
  reuseError = error.error ?? error.code ?? String(error);
}
await client.tokenRevocation(config, refreshed.access_token, { token_type_hint: 'access_token' });
const introspected = await client.tokenIntrospection(config, refreshed.access_token);
const endSession = client.buildEndSessionUrl(config, {
  id_token_hint: tokens.id_token,
  post_logout_redirect_uri: process.env.RP_LOGOUT_URI ?? redirectUri,
});

console.log(
  JSON.stringify({
    consent_shown: consentShown,
    sub: claims.sub,
    id_token_claims: claims,
    scope: tokens.scope,
    userinfo,
    refreshed: Boolean(refreshed.access_token && refreshed.refresh_token),
    rotated: refreshed.refresh_token !== tokens.refresh_token,
    reuse_error: reuseError,
    introspected_after_revocation: introspected,
    end_session_url: endSession.href,
    access_token: refreshed.access_token,
  }),
);
