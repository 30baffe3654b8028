// Signing in with an OpenID Connect provider in a real browser: the real
// `oidc-provider` package on loopback (tests/oidc-provider.mjs), the real
// service configured to trust it. Users in mapped groups land on the
// dashboard with the mapped role; a user whose groups map to nothing gets
// the refusal page and no session; with password sign-in turned off only
// the provider's button is offered.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, test } from 'node:test';
import { launchBrowser, newPage, screenshot, sessionCall, startServer } from './support.mjs';

const here = dirname(fileURLToPath(import.meta.url));

/** The provider script on a free port: {issuer, stop()}. */
async function startProvider() {
  const child = spawn(process.execPath, [join(here, 'oidc-provider.mjs')], { stdio: ['pipe', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d) => { stderr += d; });
  const issuer = await new Promise((resolveIssuer, reject) => {
    const timer = setTimeout(() => reject(new Error(`the OIDC provider did not start:\n${stderr}`)), 30000);
    child.on('exit', (code) => reject(new Error(`the OIDC provider exited (${code}):\n${stderr}`)));
    let out = '';
    child.stdout.on('data', (d) => {
      out += d;
      const line = out.split('\n')[0];
      if (out.includes('\n')) {
        clearTimeout(timer);
        try { resolveIssuer(JSON.parse(line).issuer); } catch (err) { reject(err); }
      }
    });
  });
  return { issuer, stop: () => child.kill('SIGTERM') };
}

/** The service's configuration trusting the provider (shared with the Rust tests). */
function config(issuer, extra = '') {
  return `${extra}\n${readFileSync(join(here, 'oidc-overvisor.toml'), 'utf8').replaceAll('@ISSUER@', issuer)}`;
}

let provider;
let browser;
let server;
let locked;
let dir;

before(async () => {
  provider = await startProvider();
  dir = mkdtempSync(join(tmpdir(), 'overvisor-oidc-'));
  writeFileSync(join(dir, 'open.toml'), config(provider.issuer));
  writeFileSync(join(dir, 'locked.toml'), config(provider.issuer, 'password_login = false'));
  server = await startServer({ env: { OVERVISOR_CONFIG: join(dir, 'open.toml') } });
  locked = await startServer({ env: { OVERVISOR_CONFIG: join(dir, 'locked.toml') } });
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await server?.stop();
  await locked?.stop();
  provider?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** A page that may reach loopback only (the provider's own pages link web fonts). */
async function loopbackPage() {
  const page = await newPage(browser);
  await page.context().route(/^https?:\/\/(?!127\.0\.0\.1[:/])/, (route) => route.abort());
  return page;
}

/** Clicks "Sign in with Test IdP" and signs in as `user` at the provider. */
async function signInWithProvider(page, target, user) {
  await page.goto(`${target.ui}/login`);
  await page.getByRole('button', { name: 'Sign in with Test IdP' }).click();
  await page.waitForURL(`${provider.issuer}/**`);
  await page.locator('input[name=login]').fill(user);
  await page.locator('input[name=password]').fill('any password');
  await page.getByRole('button', { name: 'Sign-in' }).click();
}

describe('sign-in with an OpenID Connect provider', () => {
  test('a user in a mapped group lands on the dashboard with the mapped role', async () => {
    const page = await loopbackPage();
    await page.goto(`${server.ui}/login`);
    await screenshot(page, 'login-oidc');
    await signInWithProvider(page, server, 'alice');
    await page.waitForURL(`${server.ui}/`);
    assert.equal(await page.locator('#who-name').innerText(), 'alice');
    await page.getByRole('link', { name: 'Users', exact: true }).waitFor();
    const me = await sessionCall(page, '/api/v1/users/me');
    assert.equal(me.status, 200);
    assert.equal(me.json.role, 'admin');
    assert.equal(me.json.email, 'alice@example.test');
    await screenshot(page, 'dashboard-oidc');
    await page.context().close();

    // Another user, another group: operator, and no administration — after
    // the provider rotated its signing key, so her ID token names a key the
    // service has not seen and it fetches the provider's keys again.
    const rotated = await fetch(`${provider.issuer}/test/rotate`, { method: 'POST' });
    assert.equal(rotated.status, 200);
    const olga = await loopbackPage();
    await signInWithProvider(olga, server, 'olga');
    await olga.waitForURL(`${server.ui}/`);
    const hers = await sessionCall(olga, '/api/v1/users/me');
    assert.equal(hers.json.role, 'operator');
    assert.equal(await olga.getByRole('link', { name: 'Users', exact: true }).count(), 0);
    await olga.context().close();
  });

  test('a user whose groups map to no role is refused with a clear page and no session', async () => {
    const page = await loopbackPage();
    await signInWithProvider(page, server, 'nora');
    const refusal = page.locator('#oidc-refused');
    await refusal.waitFor();
    assert.match(await refusal.innerText(), /no role in Overvisor/);
    assert.match(await page.locator('h1').innerText(), /No access/);
    await screenshot(page, 'oidc-refused');
    const cookies = await page.context().cookies(server.ui);
    assert.ok(!cookies.some((c) => c.name === 'ov_session' && c.value), 'no session cookie');
    await page.goto(`${server.ui}/`);
    assert.match(page.url(), /\/login/, 'still signed out');
    await page.context().close();
  });

  test('with password sign-in off, only the provider is offered and the password path is refused', async () => {
    const page = await loopbackPage();
    await page.goto(`${locked.ui}/login`);
    assert.equal(await page.getByLabel('Password').count(), 0);
    await page.getByRole('button', { name: 'Sign in with Test IdP' }).waitFor();
    const res = await fetch(`${locked.api}/api/v1/auth/login`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ name: 'admin', password: locked.admin.password }),
    });
    assert.equal(res.status, 403);
    assert.match((await res.json()).error.message, /identity provider/);
    await page.context().close();
  });
});
