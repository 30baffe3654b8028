// What the browser tests share: the real `overvisor serve` binary on free
// loopback ports with a fresh data directory, and Debian's chromium driven
// by playwright-core. Nothing is mocked. A missing binary, browser or lab
// fails the test with a message saying what to install.

import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
export const repoRoot = resolve(here, '../..');
export const screenshotDir = join(repoRoot, 'test-artifacts', 'screenshots');
export const CHROMIUM = process.env.OVERVISOR_CHROMIUM || '/usr/bin/chromium';

function binaryPath() {
  if (process.env.OVERVISOR_BIN) return process.env.OVERVISOR_BIN;
  const target = process.env.CARGO_TARGET_DIR || join(repoRoot, 'target');
  return join(target, 'debug', 'overvisor');
}

/**
 * A running service: its URLs, the first administrator, and stop().
 * `env` adds settings (e.g. a profiles directory).
 */
export async function startServer({ env = {} } = {}) {
  const bin = binaryPath();
  if (!existsSync(bin)) {
    throw new Error(`overvisor binary not found at ${bin}: build it (scripts/browser-test does) or set OVERVISOR_BIN`);
  }
  const dataDir = mkdtempSync(join(tmpdir(), 'overvisor-browser-'));
  const child = spawn(bin, ['serve'], {
    env: {
      ...process.env,
      OVERVISOR_DATA_DIR: join(dataDir, 'data'),
      OVERVISOR_UI_BIND: '127.0.0.1:0',
      OVERVISOR_API_BIND: '127.0.0.1:0',
      OVERVISOR_LOG_FORMAT: 'json',
      // Offers a job that only sleeps, so job pages can be watched live.
      OVERVISOR_TEST_JOBS: '1',
      OVERVISOR_LOG: 'info,sqlx=warn,tower_http=warn',
      ...env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d) => { stdout += d; });
  const ready = new Promise((resolveReady, reject) => {
    const timer = setTimeout(() => reject(new Error(`overvisor did not start in 30 s:\n${stderr}`)), 30000);
    child.on('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`overvisor exited early (${code}):\n${stderr}`));
    });
    child.stderr.on('data', (d) => {
      stderr += d;
      for (const line of stderr.split('\n')) {
        if (!line.startsWith('{')) continue;
        let entry;
        try { entry = JSON.parse(line); } catch { continue; }
        const f = entry.fields || {};
        if (f.message === 'overvisor listening' && f.ui && f.api) {
          clearTimeout(timer);
          resolveReady({ ui: f.ui, api: f.api });
        }
      }
    });
  });
  const { ui, api } = await ready;
  const password = /password:\s+(\S+)/.exec(stdout)?.[1];
  const apiKey = /API key:\s+(\S+)/.exec(stdout)?.[1];
  if (!password || !apiKey) throw new Error(`no bootstrap credentials in the output:\n${stdout}`);
  return {
    ui: `http://${ui}`,
    api: `http://${api}`,
    admin: { name: 'admin', password, apiKey },
    logs: () => stderr,
    async stop() {
      if (child.exitCode === null) {
        const exited = new Promise((r) => child.once('exit', r));
        child.kill('SIGTERM');
        await Promise.race([exited, new Promise((r) => setTimeout(r, 5000))]);
        if (child.exitCode === null) child.kill('SIGKILL');
      }
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

/** Debian's chromium, headless, with a fresh profile per context. */
export async function launchBrowser() {
  if (!existsSync(CHROMIUM)) {
    throw new Error(`${CHROMIUM} not found: install chromium (scripts/install-deps does)`);
  }
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
  });
}

/**
 * A new browser context (its own cookies) and page that records every
 * console error and CSP violation, so a test can assert there were none.
 */
export async function newPage(browser, options = {}) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 860 }, ...options });
  const page = await context.newPage();
  page.problems = [];
  page.on('console', (msg) => {
    if (msg.type() === 'error') page.problems.push(`${msg.text()} ${msg.location().url || ''}`.trim());
  });
  page.on('pageerror', (err) => page.problems.push(`page error: ${err.message}`));
  return page;
}

export async function signIn(page, server, name, password) {
  await page.goto(`${server.ui}/login`);
  await page.getByLabel('User name').fill(name);
  await page.getByLabel('Password').fill(password);
  await Promise.all([page.waitForURL(`${server.ui}/`), page.getByRole('button', { name: 'Sign in' }).click()]);
}

export async function screenshot(page, name) {
  mkdirSync(screenshotDir, { recursive: true });
  await page.screenshot({ path: join(screenshotDir, `${name}.png`), fullPage: true });
}

/** Answers the portal's confirmation dialog. */
export async function confirmDialog(page, accept) {
  const dialog = page.locator('dialog#confirm-dialog');
  await dialog.waitFor({ state: 'visible' });
  await dialog.getByRole('button', { name: accept ? 'Confirm' : 'Cancel' }).click();
}

/** Calls the API over real HTTP. */
export async function api(server, path, { token, method = 'GET', body } = {}) {
  const headers = {};
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const res = await fetch(`${server.api}${path}`, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  let json;
  try { json = JSON.parse(text); } catch { json = undefined; }
  return { status: res.status, json, text, headers: res.headers };
}

/** An API call made by the page itself, with its session cookie and CSRF token. */
export function sessionCall(page, path, method = 'GET', body) {
  return page.evaluate(async ({ path, method, body }) => {
    const csrf = document.querySelector('meta[name="csrf-token"]')?.content || '';
    const response = await fetch(path, {
      method,
      headers: { 'Content-Type': 'application/json', 'X-CSRF-Token': csrf },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    return { status: response.status, json: await response.json().catch(() => null) };
  }, { path, method, body });
}

/** Creates a user as the first administrator: {name, id, password}. */
export async function createUser(server, name, role) {
  const created = await api(server, '/api/v1/users', {
    token: server.admin.apiKey,
    method: 'POST',
    body: { name, email: `${name}@example.test`, role },
  });
  if (created.status !== 201) throw new Error(`creating ${name}: ${created.status} ${created.text}`);
  return { name, id: created.json.user?.id ?? created.json.id, password: created.json.password };
}

/** The hypervisor lab's description; a missing lab fails the test. */
export function loadLab() {
  const dir = process.env.OVERVISOR_LAB_DIR || '/tmp/overvisor-lab';
  const file = join(dir, 'lab.json');
  if (!existsSync(file)) throw new Error(`the lab is not up (${file} missing): run scripts/lab up`);
  return { dir, ...JSON.parse(readFileSync(file, 'utf8')) };
}
