#!/usr/bin/env node
// A real OpenID Connect provider for tests: the `oidc-provider` package on
// a loopback port. Started by the Rust integration tests (crates/cli/tests/
// oidc.rs) and the browser test (oidc.test.mjs); also handy by hand:
//
//   node ui/tests/oidc-provider.mjs          # prints {"issuer": "http://127.0.0.1:<port>"}
//
// What it offers:
// - client `overvisor` (secret `overvisor-secret`): authorization code +
//   PKCE, redirect URIs of any loopback Overvisor (`/login/oidc/<id>/callback`);
// - users (any password; the development login form): `alice` in group
//   `overvisor-admins`, `olga` in `overvisor-operators`, `nora` only in
//   `marketing` (no Overvisor role); groups are in the ID token;
// - service principals (client credentials, JWT access tokens whose
//   audience is the `resource` asked for, `urn:overvisor` by default):
//   `automation` with roles [Overvisor.Operator], `auditor` with
//   [Overvisor.Reader], `stranger` with none (secret: `<id>-secret`);
// - test-only endpoints: `POST /test/rotate` puts a new signing key first
//   (the old one stays published), `POST /test/mint` signs the JSON claims
//   posted with the current key (for expired or foreign-issuer tokens).
//
// Never expose this beyond loopback: it signs whatever it is asked to.

import http from 'node:http';
import { randomUUID } from 'node:crypto';
import Provider from 'oidc-provider';
import { SignJWT, exportJWK, generateKeyPair, importJWK } from 'jose';

const USERS = {
  alice: ['overvisor-admins', 'staff'],
  olga: ['overvisor-operators', 'staff'],
  nora: ['marketing'],
};

const SERVICES = {
  automation: ['Overvisor.Operator'],
  auditor: ['Overvisor.Reader'],
  stranger: [],
};

const SCOPES = ['openid', 'profile', 'email', 'groups'];

async function newKey() {
  const { privateKey } = await generateKeyPair('RS256', { extractable: true });
  const jwk = await exportJWK(privateKey);
  return { ...jwk, kid: randomUUID(), alg: 'RS256', use: 'sig' };
}

function loopbackCallback(uri) {
  try {
    const url = new URL(uri);
    return url.protocol === 'http:' && url.hostname === '127.0.0.1'
      && /^\/login\/oidc\/[a-z0-9-]+\/callback$/.test(url.pathname) && !url.search && !url.hash;
  } catch {
    return false;
  }
}

function build(issuer, keys) {
  const provider = new Provider(issuer, {
    clients: [
      {
        client_id: 'overvisor',
        client_secret: 'overvisor-secret',
        redirect_uris: ['http://127.0.0.1/login/oidc/test/callback'],
        grant_types: ['authorization_code'],
        response_types: ['code'],
      },
      ...Object.keys(SERVICES).map((id) => ({
        client_id: id,
        client_secret: `${id}-secret`,
        grant_types: ['client_credentials'],
        response_types: [],
        redirect_uris: [],
      })),
    ],
    jwks: { keys },
    async findAccount(ctx, id) {
      if (!USERS[id]) return undefined;
      return {
        accountId: id,
        async claims() {
          return {
            sub: id,
            preferred_username: id,
            name: id[0].toUpperCase() + id.slice(1),
            email: `${id}@example.test`,
            email_verified: true,
            groups: USERS[id],
          };
        },
      };
    },
    claims: {
      openid: ['sub'],
      profile: ['preferred_username', 'name'],
      email: ['email', 'email_verified'],
      groups: ['groups'],
    },
    scopes: SCOPES,
    // Scope claims go into the ID token, as Entra ID, Keycloak and Okta
    // can be set up to do.
    conformIdTokenClaims: false,
    pkce: { required: () => true },
    features: {
      devInteractions: { enabled: true },
      clientCredentials: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: (ctx, client) =>
          (client.grantTypes.includes('client_credentials') ? 'urn:overvisor' : undefined),
        useGrantedResource: () => true,
        getResourceServerInfo: (ctx, resource) => ({
          scope: 'api',
          audience: resource,
          accessTokenTTL: 600,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'RS256' } },
        }),
      },
    },
    extraTokenClaims(ctx, token) {
      if (token.kind === 'ClientCredentials') return { roles: SERVICES[token.clientId] ?? [] };
      return undefined;
    },
    // First-party client: no consent screen.
    async loadExistingGrant(ctx) {
      const grantId = ctx.oidc.result?.consent?.grantId
        || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
      if (grantId) return ctx.oidc.provider.Grant.find(grantId);
      const grant = new ctx.oidc.provider.Grant({
        clientId: ctx.oidc.client.clientId,
        accountId: ctx.oidc.session.accountId,
      });
      grant.addOIDCScope(SCOPES.join(' '));
      await grant.save();
      return grant;
    },
  });
  // Overvisor listens on a port chosen at start: allow any loopback one.
  provider.Client.prototype.redirectUriAllowed = loopbackCallback;
  return provider;
}

async function readJson(req) {
  let body = '';
  for await (const chunk of req) body += chunk;
  return body ? JSON.parse(body) : {};
}

function reply(res, status, value) {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(value));
}

const keys = [await newKey()];
let current;
let issuer;

const server = http.createServer(async (req, res) => {
  try {
    if (req.method === 'POST' && req.url === '/test/rotate') {
      keys.unshift(await newKey());
      current = build(issuer, keys);
      return reply(res, 200, { kid: keys[0].kid });
    }
    if (req.method === 'POST' && req.url === '/test/mint') {
      const claims = await readJson(req);
      const key = await importJWK(keys[0], 'RS256');
      const token = await new SignJWT(claims)
        .setProtectedHeader({ alg: 'RS256', kid: keys[0].kid, typ: 'at+jwt' })
        .sign(key);
      return reply(res, 200, { token });
    }
    return current.callback()(req, res);
  } catch (err) {
    return reply(res, 500, { error: String(err) });
  }
});

server.listen(Number(process.env.OIDC_PORT || 0), '127.0.0.1', () => {
  issuer = `http://127.0.0.1:${server.address().port}`;
  current = build(issuer, keys);
  process.stdout.write(`${JSON.stringify({ issuer })}\n`);
});

for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => server.close(() => process.exit(0)));
// Dies with its parent: a test that panics must not leave it running.
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
