// The portal in a real browser against the real service: sign-in, security
// headers, API keys (shown once, revoked keys stop working over real HTTP),
// administration, tenant separation, session expiry, and a phone-sized
// screen. Screenshots of each page land in test-artifacts/screenshots.

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, before, describe, test } from 'node:test';
import {
  api, confirmDialog, launchBrowser, newPage, screenshot, signIn, startServer,
} from './support.mjs';

let server;
let browser;

before(async () => {
  server = await startServer();
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

describe('sign-in', () => {
  test('a wrong password is refused with a clear message', async () => {
    const page = await newPage(browser);
    await page.goto(`${server.ui}/login`);
    await screenshot(page, 'login');
    await page.getByLabel('User name').fill('admin');
    await page.getByLabel('Password').fill('not-the-password');
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.locator('#login-error').waitFor();
    assert.match(await page.locator('#login-error').innerText(), /password|credentials|incorrect/i);
    await page.context().close();
  });

  test('signing in shows the dashboard with the API URL and enrolment snippet', async () => {
    const page = await newPage(browser);
    const res = await page.goto(`${server.ui}/`);
    assert.match(page.url(), /\/login(\?next=\/)?$/, 'signed-out visitors go to sign-in');
    assert.ok(res);
    await signIn(page, server, 'admin', server.admin.password);
    const headers = (await page.reload()).headers();
    assert.match(headers['content-security-policy'], /default-src 'self'/);
    assert.equal(headers['x-frame-options'], 'DENY');
    assert.ok(headers['referrer-policy']);
    assert.equal(await page.locator('#api-url').innerText(), `${server.api}/api/v1`);
    const snippet = await page.locator('#agent-snippet').innerText();
    assert.equal(snippet, `overvisor agent enroll --url ${server.api} --key "$OVERVISOR_KEY"`);
    await screenshot(page, 'dashboard');
    assert.deepEqual(page.problems, [], 'no console errors or CSP violations');
    await page.context().close();
  });

  test('assets are content-addressed and cached for good', async () => {
    const page = await newPage(browser);
    await page.goto(`${server.ui}/login`);
    const href = await page.locator('link[rel=stylesheet]').getAttribute('href');
    assert.match(href, /^\/assets\/app\.[0-9a-f]{16}\.css$/);
    const res = await fetch(`${server.ui}${href}`);
    assert.equal(res.status, 200);
    assert.match(res.headers.get('cache-control'), /immutable/);
    const again = await fetch(`${server.ui}${href}`, { headers: { 'If-None-Match': res.headers.get('etag') } });
    assert.equal(again.status, 304);
    await page.context().close();
  });
});

describe('guest SSH keys', () => {
  test('a key is added with its fingerprint, a bad one refused next to its field, and removed', async () => {
    const page = await newPage(browser);
    await signIn(page, server, 'admin', server.admin.password);
    await page.goto(`${server.ui}/account`);
    const section = page.locator('#guest-keys');
    assert.match(await section.innerText(), /no guest SSH keys/);

    // A private key is refused next to the key's field and never sent back.
    const privateKey = '-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmU=\n-----END OPENSSH PRIVATE KEY-----';
    await page.getByLabel('Guest key name').fill('oops');
    await page.getByLabel(/^Public key/).fill(privateKey);
    await page.getByRole('button', { name: 'Add guest key' }).click();
    await page.locator('#err-guest-key-public').waitFor();
    assert.match(await page.locator('#err-guest-key-public').innerText(), /private key/i);
    assert.equal(await page.getByLabel(/^Public key/).getAttribute('aria-invalid'), 'true');
    assert.ok(!(await page.content()).includes('b3BlbnNzaC1rZXkt'), 'the private key is not echoed');
    assert.equal(await page.getByLabel('Guest key name').inputValue(), 'oops', 'the name is kept');
    await screenshot(page, 'account-guest-key-refused');

    const publicKey = readFileSync(new URL('../../crates/deploy/tests/data/ed25519.pub', import.meta.url), 'utf8').trim();
    await page.getByLabel('Guest key name').fill('browser');
    await page.getByLabel(/^Public key/).fill(publicKey);
    await page.getByRole('button', { name: 'Add guest key' }).click();
    await page.waitForURL(/done=guest-key-added/);
    const row = page.locator('tr[data-guest-key-name="browser"]');
    assert.match(await row.innerText(), /SHA256:/);
    const listed = await api(server, '/api/v1/users/me/guest-keys', { token: server.admin.apiKey });
    assert.equal(listed.status, 200);
    assert.equal(listed.json.length, 1);
    assert.equal(listed.json[0].public_key, publicKey);
    await screenshot(page, 'account-guest-keys');

    // The same key again: refused above the form, nothing added.
    await page.getByLabel('Guest key name').fill('again');
    await page.getByLabel(/^Public key/).fill(publicKey);
    await page.getByRole('button', { name: 'Add guest key' }).click();
    await page.locator('#guest-key-error').waitFor();
    assert.match(await page.locator('#guest-key-error').innerText(), /already exists/);

    await row.getByRole('button', { name: /Remove/ }).click();
    await confirmDialog(page, true);
    await page.waitForURL(/done=guest-key-removed/);
    assert.equal(await page.locator('tr[data-guest-key-name="browser"]').count(), 0);
    const gone = await api(server, '/api/v1/users/me/guest-keys', { token: server.admin.apiKey });
    assert.deepEqual(gone.json, []);
    // The two refusals answer 400 and 409 (the browser logs them); nothing else.
    assert.deepEqual(
      page.problems.filter((p) => !/status of (400|409) .*\/account\/guest-keys$/.test(p)),
      [],
    );
    await page.context().close();
  });
});

describe('API keys', () => {
  test('a new key is shown once, works, and stops working when revoked', async () => {
    const page = await newPage(browser);
    await signIn(page, server, 'admin', server.admin.password);
    await page.getByRole('link', { name: 'Account', exact: true }).click();
    await page.getByLabel('New key name').fill('browser-test');
    await page.getByLabel(/Expires in days/).fill('30');
    await page.getByRole('button', { name: 'Create API key' }).click();
    const token = (await page.locator('#new-token').innerText()).trim();
    assert.match(token, /^ovk_/);
    await screenshot(page, 'account-new-key');

    const me = await api(server, '/api/v1/users/me', { token });
    assert.equal(me.status, 200, 'the new key authenticates');
    assert.equal(me.json.name, 'admin');

    await page.goto(`${server.ui}/account`);
    assert.equal(await page.locator('#new-token').count(), 0, 'the token is shown only once');
    assert.ok(!(await page.content()).includes(token), 'the token never appears again');

    const row = page.locator('tr[data-key-name="browser-test"]');
    assert.match(await row.innerText(), /active/);
    // Cancelling the confirmation changes nothing.
    await row.getByRole('button', { name: /Revoke/ }).click();
    await confirmDialog(page, false);
    assert.equal((await api(server, '/api/v1/users/me', { token })).status, 200);
    await row.getByRole('button', { name: /Revoke/ }).click();
    await screenshot(page, 'confirm-dialog');
    await confirmDialog(page, true);
    await page.waitForURL(/done=key-revoked/);
    assert.match(await page.locator('tr[data-key-name="browser-test"]').innerText(), /revoked/);
    const after = await api(server, '/api/v1/users/me', { token });
    assert.equal(after.status, 401, 'a revoked key no longer works');
    await screenshot(page, 'account');
    assert.deepEqual(page.problems, []);
    await page.context().close();
  });

  test('a bad expiry is refused with a clear message', async () => {
    const page = await newPage(browser);
    await signIn(page, server, 'admin', server.admin.password);
    await page.goto(`${server.ui}/account`);
    await page.getByLabel('New key name').fill('bad-expiry');
    // Bypass the browser's own pattern check to reach the server's.
    await page.locator('#key-days').evaluate((el) => el.removeAttribute('pattern'));
    await page.getByLabel(/Expires in days/).fill('soon');
    await page.getByRole('button', { name: 'Create API key' }).click();
    assert.match(await page.locator('#form-error').innerText(), /whole number of days/);
    await page.context().close();
  });
});

describe('administration and tenants', () => {
  let bob;

  test('an administrator creates a user, who signs in with the password shown once', async () => {
    const page = await newPage(browser);
    await signIn(page, server, 'admin', server.admin.password);
    await page.getByRole('link', { name: 'Users' }).click();
    await page.getByLabel(/User name/).fill('bob');
    await page.getByLabel('E-mail').fill('bob@example.com');
    await page.getByLabel('Role', { exact: true }).selectOption('operator');
    await page.getByRole('button', { name: 'Create user' }).click();
    const password = (await page.locator('#new-password').innerText()).trim();
    assert.ok(password.length >= 12);
    await screenshot(page, 'admin-users');

    bob = await newPage(browser);
    await signIn(bob, server, 'bob', password);
    assert.equal(await bob.locator('#who-name').innerText(), 'bob');
    assert.equal(await bob.getByRole('link', { name: 'Users' }).count(), 0, 'no admin menu for operators');
    const res = await bob.goto(`${server.ui}/admin/users`);
    assert.equal(res.status(), 403);
    await screenshot(bob, 'error-forbidden');

    // Bob's audit log shows his events only; the admin's show up for admins.
    await bob.goto(`${server.ui}/audit`);
    const bobAudit = await bob.locator('#audit').innerText();
    assert.match(bobAudit, /bob\tauth\.login/);
    // Events about bob (his account's creation) show; the admin's own do not.
    assert.doesNotMatch(bobAudit, /admin\tauth\.login/);
    await page.goto(`${server.ui}/audit?all=on`);
    assert.match(await page.locator('#audit').innerText(), /bob/);
    await page.getByLabel('Action starts with').fill('user.');
    await page.getByRole('button', { name: 'Filter' }).click();
    const filtered = await page.locator('#audit tbody').innerText();
    assert.match(filtered, /user\.create/);
    assert.doesNotMatch(filtered, /auth\.login/);
    await screenshot(page, 'audit');
    await page.context().close();
  });

  test('a changed role reloads the user\'s live pages as the new role sees them', async () => {
    await bob.goto(`${server.ui}/jobs`);
    await bob.waitForFunction(() => document.body.dataset.live === 'on');
    // Marks this page load; a reload forgets it.
    await bob.evaluate(() => { window.beforeRoleChange = true; });
    const users = await api(server, '/api/v1/users', { token: server.admin.apiKey });
    const id = users.json.find((u) => u.name === 'bob').id;
    const changed = await api(server, `/api/v1/users/${id}`, {
      token: server.admin.apiKey, method: 'PATCH', body: { role: 'reader' },
    });
    assert.equal(changed.status, 200, changed.text);
    await bob.waitForFunction(() => window.beforeRoleChange === undefined, null, { timeout: 10000 });
    assert.equal(new URL(bob.url()).pathname, '/jobs');
    await bob.waitForFunction(() => document.body.dataset.live === 'on');
  });

  test('a disabled user is signed out at once', async () => {
    const admin = await newPage(browser);
    await signIn(admin, server, 'admin', server.admin.password);
    await admin.goto(`${server.ui}/admin/users`);
    await admin.locator('tr[data-user="bob"]').getByRole('button', { name: 'Disable' }).click();
    await confirmDialog(admin, true);
    await admin.waitForURL(/done=disabled/);
    assert.match(await admin.locator('tr[data-user="bob"]').innerText(), /disabled/);

    // Bob's open page (the jobs list, live since the previous test) goes
    // to sign-in by itself.
    await bob.waitForURL(/\/login\?expired=1&next=\/jobs$/, { timeout: 10000 });
    assert.match(await bob.locator('.notice').innerText(), /session has ended/);
    await bob.context().close();
    await admin.context().close();
  });
});

describe('sessions', () => {
  test('after signing out everywhere, other pages send the browser to sign-in', async () => {
    const one = await newPage(browser);
    const two = await newPage(browser);
    await signIn(one, server, 'admin', server.admin.password);
    await signIn(two, server, 'admin', server.admin.password);
    // A page with a live event stream open: it follows the sign-out by itself.
    await two.goto(`${server.ui}/jobs`);
    await two.waitForFunction(() => document.body.dataset.live === 'on');
    await one.goto(`${server.ui}/account`);
    await one.getByRole('button', { name: 'Sign out everywhere' }).click();
    await confirmDialog(one, true);
    await one.waitForURL(/\/login/);
    await two.waitForURL(/\/login\?expired=1&next=\/jobs$/, { timeout: 10000 });
    assert.match(await two.locator('.notice').innerText(), /session has ended/);
    // Signing in again returns to the page that was asked for.
    await two.getByLabel('User name').fill('admin');
    await two.getByLabel('Password').fill(server.admin.password);
    await two.getByRole('button', { name: 'Sign in' }).click();
    await two.waitForURL(`${server.ui}/jobs`);
    await one.context().close();
    await two.context().close();
  });

  test('an htmx request with an expired session is redirected to sign-in', async () => {
    const page = await newPage(browser);
    await signIn(page, server, 'admin', server.admin.password);
    const cookies = await page.context().cookies();
    const session = cookies.find((c) => c.name === 'ov_session');
    const res = await fetch(`${server.ui}/account`, {
      headers: { 'HX-Request': 'true', Cookie: `ov_session=${session.value}x` },
    });
    assert.equal(res.status, 401);
    assert.match(res.headers.get('hx-redirect'), /^\/login\?expired=1/);
    await page.context().close();
  });
});

describe('small screens', () => {
  test('the main pages fit a phone', async () => {
    const page = await newPage(browser, { viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true });
    await signIn(page, server, 'admin', server.admin.password);
    for (const [path, name] of [['/', 'phone-dashboard'], ['/account', 'phone-account'], ['/audit', 'phone-audit']]) {
      await page.goto(`${server.ui}${path}`);
      const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
      assert.ok(overflow <= 1, `${path} scrolls sideways by ${overflow}px`);
      await screenshot(page, name);
    }
    await page.context().close();
  });
});

describe('jobs', () => {
  test('a job\'s page follows its status live, without reloading', async () => {
    const page = await newPage(browser);
    await signIn(page, server, 'admin', server.admin.password);
    const started = await api(server, '/api/v1/jobs/test-sleep', {
      token: server.admin.apiKey, method: 'POST', body: { seconds: 3 },
    });
    assert.equal(started.status, 202, started.text);
    const id = started.json.id;
    await page.goto(`${server.ui}/jobs/${id}`);
    await page.evaluate(() => { window.__notReloaded = true; });
    assert.match(await page.locator('#job-status').innerText(), /queued|running/);
    await screenshot(page, 'job-running');
    await page.waitForFunction(
      () => document.querySelector('#job-status')?.textContent === 'succeeded', null, { timeout: 20000 },
    );
    assert.equal(await page.evaluate(() => window.__notReloaded), true, 'the page was not reloaded');
    assert.equal(await page.locator('#live-status').getAttribute('data-state'), 'on');
    await screenshot(page, 'job');
    await page.goto(`${server.ui}/jobs`);
    assert.match(await page.locator(`tr[data-job="${id}"]`).innerText(), /succeeded/);
    await screenshot(page, 'jobs');
    assert.deepEqual(page.problems, []);
    await page.context().close();
  });

  test('a job\'s steps show live, and a failure undoes the steps before it', async () => {
    const page = await newPage(browser);
    await signIn(page, server, 'admin', server.admin.password);
    const started = await api(server, '/api/v1/jobs/test-steps', {
      token: server.admin.apiKey, method: 'POST', body: { steps: 4, step_millis: 700, fail_at: 3 },
    });
    assert.equal(started.status, 202, started.text);
    const id = started.json.id;
    await page.goto(`${server.ui}/jobs/${id}`);
    await page.evaluate(() => { window.__notReloaded = true; });
    assert.equal(await page.locator('#job-steps li').count(), 4);
    await page.waitForFunction(
      () => document.querySelector('#job-steps li[data-step="1"]')?.dataset.status === 'running', null, { timeout: 20000 },
    );
    await screenshot(page, 'job-steps-running');
    await page.waitForFunction(
      () => document.querySelector('#job-status')?.textContent === 'failed', null, { timeout: 20000 },
    );
    const statuses = await page.locator('#job-steps li').evaluateAll((items) => items.map((li) => li.dataset.status));
    assert.deepEqual(statuses, ['undone', 'undone', 'failed', 'skipped']);
    assert.match(await page.locator('#job-error').innerText(), /undone: step 2 "step 2", step 1 "step 1"/);
    assert.equal(await page.evaluate(() => window.__notReloaded), true, 'the page was not reloaded');
    await screenshot(page, 'job-steps-undone');
    assert.deepEqual(page.problems, []);
    await page.context().close();
  });
});
