// The baseline for bench/token_endpoint.py: node oidc-provider, one process, on loopback.
//
//   node bench-provider.mjs <port> <count> <out-dir>
//
// One confidential client (bench-client / bench-secret-..., client_secret_basic), ES256
// keys, PKCE required, refresh tokens rotated on every use (as carebridge does). Before it
// listens it mints <count> authorization codes and <count> refresh tokens through its own
// models and writes their values, one a line, to <out-dir>/node-codes.txt and
// <out-dir>/node-refresh.txt. Prints "ready" when listening.
//
// Where it keeps them: in memory (the default), or with BENCH_POSTGRES=<libpq URL> in
// PostgreSQL through the adapter below (npm `pg`, pinned in package.json): one JSONB table
// keyed (model, id), created here if missing, every adapter call one autocommitted
// statement on a pool of 10 connections, as an oidc-provider deployment on PostgreSQL runs.
import { createHash, generateKeyPairSync, randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';

import Provider from 'oidc-provider';
import pg from 'pg';

const [port, count, outDir] = [Number(process.argv[2]), Number(process.argv[3]), process.argv[4]];
const issuer = `http://127.0.0.1:${port}`;
const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
const signingKey = { ...privateKey.export({ format: 'jwk' }), alg: 'ES256', use: 'sig', kid: 'bench' };
const verifier = process.env.BENCH_VERIFIER;
const challenge = createHash('sha256').update(verifier).digest('base64url');
const redirectUri = 'https://app.example.org/callback';
const API = 'https://api.example';

// The quick-start adapter is an LRU of 1,000 entries: the minted tokens would be evicted.
// This one is the same idea (memory), unbounded.
const stores = new Map();
class MemoryAdapter {
  constructor(name) {
    this.name = name;
    if (!stores.has(name)) stores.set(name, new Map());
    this.store = stores.get(name);
  }
  async upsert(id, payload) { this.store.set(id, payload); }
  async find(id) { return this.store.get(id); }
  async findByUid(uid) { for (const p of this.store.values()) if (p.uid === uid) return p; return undefined; }
  async findByUserCode(code) { for (const p of this.store.values()) if (p.userCode === code) return p; return undefined; }
  async consume(id) { const p = this.store.get(id); if (p) p.consumed = Math.floor(Date.now() / 1000); }
  async destroy(id) { this.store.delete(id); }
  async revokeByGrantId(grantId) {
    for (const store of stores.values()) for (const [id, p] of store) if (p.grantId === grantId) store.delete(id);
  }
}

// PostgreSQL: every model in one table, keyed (model, id); expired rows are never returned.
// Named queries: pg prepares each once per connection (as carebridge's statements are
// built once).
const TABLE = 'oidc_provider_payload';
const pool = process.env.BENCH_POSTGRES
  ? new pg.Pool({ connectionString: process.env.BENCH_POSTGRES, max: 10 })
  : null;
let executor = pool; // a single client inside a transaction while minting
const run = (name, text, values) => executor.query({ name, text, values });
const LIVE = '(expires_at IS NULL OR expires_at > now())';
class PostgresAdapter {
  constructor(name) { this.name = name; }
  async upsert(id, payload, expiresIn) {
    await run(
      'upsert',
      `INSERT INTO ${TABLE} (model, id, payload, grant_id, user_code, uid, expires_at)
       VALUES ($1, $2, $3, $4, $5, $6, now() + make_interval(secs => $7::int))
       ON CONFLICT (model, id) DO UPDATE SET payload = excluded.payload,
         grant_id = excluded.grant_id, user_code = excluded.user_code, uid = excluded.uid,
         expires_at = excluded.expires_at, consumed = NULL`,
      [this.name, id, payload, payload.grantId ?? null, payload.userCode ?? null,
        payload.uid ?? null, typeof expiresIn === 'number' ? expiresIn : null],
    );
  }
  async #findBy(column, value) {
    const { rows } = await run(
      `find_${column}`,
      `SELECT payload, consumed FROM ${TABLE} WHERE model = $1 AND ${column} = $2 AND ${LIVE}`,
      [this.name, value],
    );
    if (!rows.length) return undefined;
    const [{ payload, consumed }] = rows;
    return consumed === null ? payload : { ...payload, consumed };
  }
  async find(id) { return this.#findBy('id', id); }
  async findByUid(uid) { return this.#findBy('uid', uid); }
  async findByUserCode(code) { return this.#findBy('user_code', code); }
  async consume(id) {
    await run(
      'consume',
      `UPDATE ${TABLE} SET consumed = extract(epoch FROM now())::int WHERE model = $1 AND id = $2`,
      [this.name, id],
    );
  }
  async destroy(id) {
    await run('destroy', `DELETE FROM ${TABLE} WHERE model = $1 AND id = $2`, [this.name, id]);
  }
  async revokeByGrantId(grantId) {
    await run('revoke', `DELETE FROM ${TABLE} WHERE grant_id = $1`, [grantId]);
  }
}
if (pool) {
  await pool.query(`CREATE TABLE IF NOT EXISTS ${TABLE} (
    model text NOT NULL, id text NOT NULL, payload jsonb NOT NULL, grant_id text,
    user_code text, uid text, expires_at timestamptz, consumed integer,
    PRIMARY KEY (model, id))`);
  await pool.query(`CREATE INDEX IF NOT EXISTS ${TABLE}_grant_id ON ${TABLE} (grant_id)`);
  await pool.query(`CREATE INDEX IF NOT EXISTS ${TABLE}_uid ON ${TABLE} (uid)`);
  await pool.query(`CREATE INDEX IF NOT EXISTS ${TABLE}_user_code ON ${TABLE} (user_code)`);
}

const provider = new Provider(issuer, {
  adapter: pool ? PostgresAdapter : MemoryAdapter,
  clients: [
    {
      client_id: 'bench-client',
      client_secret: process.env.BENCH_SECRET,
      grant_types: ['authorization_code', 'refresh_token', 'client_credentials'],
      response_types: ['code'],
      redirect_uris: [redirectUri],
      token_endpoint_auth_method: 'client_secret_basic',
      id_token_signed_response_alg: 'ES256',
      scope: 'openid offline_access messaging.read',
    },
  ],
  jwks: { keys: [signingKey] },
  cookies: { keys: [randomBytes(32).toString('hex')] },
  scopes: ['openid', 'offline_access', 'messaging.read'],
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    // BENCH_JWT=1: ES256 JWT access tokens (RFC 9068) for a resource server, as carebridge
    // issues, instead of the default opaque ones, which the adapter stores.
    ...(process.env.BENCH_JWT
      ? {
          resourceIndicators: {
            enabled: true,
            defaultResource: () => API,
            useGrantedResource: () => true,
            getResourceServerInfo: () => ({
              scope: 'messaging.read',
              audience: API,
              accessTokenFormat: 'jwt',
              jwt: { sign: { alg: 'ES256' } },
            }),
          },
        }
      : {}),
  },
  findAccount: async (ctx, id) => ({ accountId: id, claims: async () => ({ sub: id }) }),
  pkce: { required: () => true },
  rotateRefreshToken: true,
  ttl: { AccessToken: 600, ClientCredentials: 600, AuthorizationCode: 3600, RefreshToken: 86400, Grant: 86400, IdToken: 600 },
});

const client = await provider.Client.find('bench-client');
const codes = [];
const refresh = [];
if (pool) {
  // Minting only: one connection, a transaction per 1,000 grants (the bench measures the
  // serving, where every adapter call is its own statement on the pool).
  executor = await pool.connect();
  await executor.query('BEGIN');
}
for (let i = 0; i < count; i += 1) {
  if (pool && i && i % 1000 === 0) await executor.query('COMMIT; BEGIN');
  const accountId = `account-${i}`;
  const grant = new provider.Grant({ accountId, clientId: 'bench-client' });
  grant.addOIDCScope('openid offline_access');
  // JWT access tokens are issued for a resource server: the grant, its code and its
  // refresh token name it (as an app asking for the messaging API would).
  const resource = process.env.BENCH_JWT ? { resource: API } : {};
  if (process.env.BENCH_JWT) grant.addResourceScope(API, 'messaging.read');
  const grantId = await grant.save();
  codes.push(
    await new provider.AuthorizationCode({
      accountId,
      grantId,
      client,
      redirectUri,
      scope: 'openid offline_access',
      codeChallenge: challenge,
      codeChallengeMethod: 'S256',
      nonce: 'n',
      ...resource,
    }).save(),
  );
  refresh.push(
    await new provider.RefreshToken({
      accountId,
      grantId,
      client,
      scope: 'openid offline_access',
      gty: 'authorization_code',
      ...resource,
    }).save(),
  );
}
if (pool) {
  await executor.query('COMMIT');
  executor.release();
  executor = pool;
}
writeFileSync(path.join(outDir, 'node-codes.txt'), `${codes.join('\n')}\n`);
writeFileSync(path.join(outDir, 'node-refresh.txt'), `${refresh.join('\n')}\n`);

const server = http.createServer(provider.callback());
server.listen(port, '127.0.0.1', () => console.log('ready'));
for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => server.close(() => process.exit(0)));
