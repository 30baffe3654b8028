// Consoles in a real browser against the real service and a running lab
// guest: the serial console (xterm.js) runs what is typed and shows its
// output, tells the guest its size, is shared with a second viewer who can
// take control; the graphical console (noVNC) draws the VM's screen; a
// ticket works once; a reader gets no console.

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import {
  api, createUser, launchBrowser, newPage, screenshot, sessionCall, signIn, startServer,
} from './support.mjs';
import { addOwnHost, authorizeKey, defineGuest, lab, labHost, uniqueName, virsh } from './lab.mjs';

let server;
let browser;
let ovh1;
let guest;
let hostId;
let vmPage;
let reader;

const PATIENCE = 30000;

// Waits until the guest's shell is up (its init prints LAB-READY).
async function waitReady(host, name) {
  const file = join(host.serial_dir, `${name}.log`);
  const deadline = Date.now() + 120000;
  while (Date.now() < deadline) {
    let log = '';
    try { log = readFileSync(file, 'utf8'); } catch { /* not yet */ }
    if (log.includes('LAB-READY')) return;
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new Error(`${name} did not boot in 120 s`);
}

// What the terminal shows, as text.
const screenText = (page) => page.locator('#console-screen .xterm-rows').innerText();

async function waitForText(page, want) {
  await page.waitForFunction(
    (w) => document.querySelector('#console-screen .xterm-rows')?.innerText.includes(w),
    want,
    { timeout: PATIENCE },
  );
}

// Waits for the guest's shell prompt on the last line (busybox's line
// editor may swallow keys typed while it asks the terminal where it is).
// Without a prompt for a while, presses Enter for a fresh one, as a person
// would; the error names what the screen showed.
async function waitPrompt(page) {
  const prompted = () => {
    const lines = (document.querySelector('#console-screen .xterm-rows')?.innerText || '')
      .split('\n').map((l) => l.trimEnd()).filter((l) => l !== '');
    return lines.length > 0 && lines[lines.length - 1].endsWith('#');
  };
  for (let attempt = 0; ; attempt += 1) {
    try {
      await page.waitForFunction(prompted, null, { timeout: PATIENCE / 3 });
      break;
    } catch (error) {
      if (attempt === 2) {
        const shown = (await screenText(page)).split('\n').filter((l) => l.trim()).slice(-4);
        throw new Error(`no shell prompt; the screen ends with ${JSON.stringify(shown)}`, { cause: error });
      }
      await page.locator('#console-screen').click();
      await page.keyboard.press('Enter');
    }
  }
  await page.waitForTimeout(200);
}

// Types into the terminal as a user would (focus, then keys), once the
// shell is ready for it.
async function typeLine(page, line) {
  await waitPrompt(page);
  await page.locator('#console-screen').click();
  await page.keyboard.type(line);
  await page.keyboard.press('Enter');
}

async function openConsole(page) {
  await page.goto(vmPage);
  await page.locator('#vm-console').click();
  await page.waitForURL(/\/console$/);
  await consoleConnected(page);
}

/** Waits for the page's console to connect; if it does not, says what the
 * page shows and what the service logged last. */
async function consoleConnected(page) {
  try {
    await page.locator('#console-status[data-state="connected"]').waitFor({ timeout: PATIENCE });
  } catch (error) {
    const said = await page.locator('#console-status').innerText().catch(() => '?');
    const logged = server.logs().split('\n').slice(-30).join('\n');
    throw new Error(`the console did not connect; it says "${said}" (${error.message})\n` +
      `the service's last lines:\n${logged}`);
  }
}

before(async () => {
  const labInfo = lab();
  ovh1 = labHost(labInfo, 'ovh1');
  server = await startServer();
  browser = await launchBrowser();
  const admin = server.admin.apiKey;
  const key = await api(server, '/api/v1/users/me/ssh-key', { token: admin });
  assert.equal(key.status, 200);
  authorizeKey(ovh1, key.json.public_key);
  const host = await api(server, '/api/v1/hosts', {
    token: admin,
    method: 'POST',
    body: {
      name: 'console-ovh1',
      address: ovh1.address,
      port: ovh1.port,
      ssh_user: ovh1.user,
      host_key_fingerprint: ovh1.host_key_fingerprint,
    },
  });
  assert.equal(host.status, 201, host.text);
  hostId = host.json.id;
  guest = defineGuest(labInfo, ovh1, uniqueName('ovconsole'));
  virsh(ovh1, 'start', guest.name);
  await waitReady(ovh1, guest.name);
  vmPage = `${server.ui}/vms/${hostId}/${guest.uuid}`;
  reader = await createUser(server, 'rita', 'operator');
});

after(async () => {
  guest?.remove();
  await browser?.close();
  await server?.stop();
});

describe('consoles', () => {
  test('the serial console runs what is typed, tells the guest its size, and is shared', async () => {
    const page = await newPage(browser);
    await signIn(page, server, 'admin', server.admin.password);
    await openConsole(page);
    assert.match(await page.locator('#console-control').innerText(), /You are typing/);
    // A fresh prompt: what the guest printed before may not end with one.
    await page.locator('#console-screen').click();
    await page.keyboard.press('Enter');
    const marker = uniqueName('mark');
    // The shell echoes the line as typed (`MARK-""…`); only echo's output
    // has the marker whole.
    await typeLine(page, `echo MARK-""${marker}`);
    await waitForText(page, `MARK-${marker}`);

    // A serial line cannot carry a window size: the button types it in,
    // and the guest's stty follows the browser window.
    const size = async (tag) => {
      await waitPrompt(page);
      await page.locator('#console-stty').click();
      // Only echo's output has the tag, a size and -END together.
      await typeLine(page, `echo ${tag}-""$(stty size | tr ' ' x)-END`);
      const pattern = `${tag}-(\\d+)x(\\d+)-END`;
      await page.waitForFunction(
        (p) => new RegExp(p).test(document.querySelector('#console-screen .xterm-rows')?.innerText || ''),
        pattern,
        { timeout: PATIENCE },
      ).catch(async () => { throw new Error(`no ${tag} size shown; the screen says:\n${await screenText(page)}`); });
      const text = await screenText(page);
      const found = new RegExp(pattern).exec(text);
      assert.ok(found, `no size in ${text}`);
      return [Number(found[1]), Number(found[2])];
    };
    const [rows, cols] = await size('BIG');
    assert.ok(rows > 10 && cols > 40, `${rows}x${cols}`);
    const rowsShown = () => page.locator('#console-screen .xterm-rows > div').count();
    const before = await rowsShown();
    await page.setViewportSize({ width: 900, height: 640 });
    await page.waitForFunction((n) => document.querySelectorAll('#console-screen .xterm-rows > div').length < n, before, { timeout: PATIENCE })
      .catch(async () => { throw new Error(`the terminal kept ${await rowsShown()} rows (had ${before}): ${page.problems}`); });
    const [rows2, cols2] = await size('SMALL');
    assert.ok(rows2 < rows && cols2 < cols, `${rows}x${cols} then ${rows2}x${cols2}: ${await screenText(page)}`);
    await screenshot(page, 'console-serial');

    // A second viewer sees the same console, may not type, and may take control.
    const second = await newPage(browser);
    await signIn(second, server, 'admin', server.admin.password);
    await openConsole(second);
    await second.locator('#console-control', { hasText: /admin is typing; you are watching/ }).waitFor({ timeout: PATIENCE });
    await page.locator('#console-control', { hasText: /1 other viewer/ }).waitFor({ timeout: PATIENCE });
    const seen = uniqueName('seen');
    await typeLine(page, `echo SEEN-""${seen}`);
    await waitForText(second, `SEEN-${seen}`);
    await second.getByRole('button', { name: 'Take control' }).click();
    await second.locator('#console-control', { hasText: /You are typing/ }).waitFor({ timeout: PATIENCE });
    await page.locator('#console-control', { hasText: /admin is typing; you are watching/ }).waitFor({ timeout: PATIENCE });
    const taken = uniqueName('taken');
    await typeLine(second, `echo TAKEN-""${taken}`);
    await waitForText(page, `TAKEN-${taken}`);
    await screenshot(second, 'console-serial-second-viewer');
    assert.deepEqual(page.problems, []);
    assert.deepEqual(second.problems, []);
    await second.context().close();
    await page.context().close();
  });

  test('the graphical console draws the VM\'s screen', async () => {
    const page = await newPage(browser);
    await signIn(page, server, 'admin', server.admin.password);
    await page.goto(vmPage);
    await page.locator('#vm-display').click();
    await consoleConnected(page);
    // noVNC paints into a canvas: some of its pixels are lit.
    await page.waitForFunction(() => {
      const canvas = document.querySelector('#console-screen canvas');
      if (!canvas || !canvas.width || !canvas.height) return false;
      const pixels = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
      for (let i = 0; i < pixels.length; i += 4) {
        if (pixels[i] || pixels[i + 1] || pixels[i + 2]) return true;
      }
      return false;
    }, null, { timeout: PATIENCE });
    assert.equal(await page.getByRole('button', { name: 'Send Ctrl-Alt-Del' }).isEnabled(), true);
    await screenshot(page, 'console-vnc');
    assert.deepEqual(page.problems, []);
    await page.context().close();
  });

  test('a console ticket works once', async () => {
    const page = await newPage(browser);
    await signIn(page, server, 'admin', server.admin.password);
    await page.goto(vmPage);
    const opened = await page.evaluate(async ({ host, vm }) => {
      const csrf = document.querySelector('meta[name="csrf-token"]').content;
      const response = await fetch(`/api/v1/hosts/${host}/vms/${vm}/console`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', 'X-CSRF-Token': csrf },
        body: JSON.stringify({ kind: 'serial' }),
      });
      const { url } = await response.json();
      const ws = `${location.origin.replace('http', 'ws')}${url}`;
      const attempt = () => new Promise((resolve) => {
        const socket = new WebSocket(ws);
        socket.onopen = () => { socket.close(); resolve(true); };
        socket.onerror = () => resolve(false);
      });
      return [await attempt(), await attempt()];
    }, { host: hostId, vm: guest.uuid });
    assert.deepEqual(opened, [true, false]);
    await page.context().close();
  });

  test('a reader gets no console button, and the API refuses one', async () => {
    // Rita adds the host as an operator, then is made a reader: she still
    // sees her VM, but may not open its console.
    const page = await newPage(browser);
    await signIn(page, server, reader.name, reader.password);
    await page.goto(`${server.ui}/`);
    const context = page.context();
    const call = sessionCall;
    const host = await addOwnHost(page, ovh1, 'rita-ovh1');
    assert.equal(host.status, 201, JSON.stringify(host.json));
    const demoted = await api(server, `/api/v1/users/${reader.id}`, {
      token: server.admin.apiKey, method: 'PATCH', body: { role: 'reader' },
    });
    assert.equal(demoted.status, 200, demoted.text);
    // The open page reloads itself for the new role; look in a fresh one.
    await page.close();
    const view = await context.newPage();
    await view.goto(`${server.ui}/vms/${host.json.id}/${guest.uuid}`);
    await view.locator('#vm-state').waitFor({ timeout: PATIENCE });
    assert.equal(await view.locator('#vm-console').count(), 0);
    assert.equal(await view.locator('#vm-display').count(), 0);
    const refused = await call(view, `/api/v1/hosts/${host.json.id}/vms/${guest.uuid}/console`, 'POST', { kind: 'serial' });
    assert.equal(refused.status, 403, JSON.stringify(refused.json));
    await context.close();
  });
});
