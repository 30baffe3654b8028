// Usage charts in a real browser: a lab guest runs, the service samples
// its host every second, and the VM page, the host page and the dashboard
// draw CPU, memory, disk and network with uPlot — and keep drawing as new
// samples arrive on the event stream, without a reload.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import {
  api, launchBrowser, newPage, screenshot, signIn, startServer,
} from './support.mjs';
import { authorizeKey, defineGuest, lab, labHost, uniqueName, virsh } from './lab.mjs';

let server;
let browser;
let ovh1;
let guest;
let hostId;

// How many points a chart section has drawn (charts.js writes it).
const points = async (page) => Number(await page.locator('#usage').getAttribute('data-points') || 0);

async function waitPoints(page, atLeast) {
  await page.waitForFunction(
    (n) => Number(document.querySelector('#usage')?.dataset.points || 0) >= n,
    atLeast,
    { timeout: 60000 },
  );
}

before(async () => {
  const labInfo = lab();
  ovh1 = labHost(labInfo, 'ovh1');
  server = await startServer({ env: { OVERVISOR_METRICS_STEP_SECS: '1' } });
  browser = await launchBrowser();
  const token = server.admin.apiKey;
  const key = await api(server, '/api/v1/users/me/ssh-key', { token });
  assert.equal(key.status, 200);
  authorizeKey(ovh1, key.json.public_key);
  guest = defineGuest(labInfo, ovh1, uniqueName('ovcharts'));
  const host = await api(server, '/api/v1/hosts', {
    token,
    method: 'POST',
    body: {
      name: 'charts-ovh1', address: ovh1.address, port: ovh1.port, ssh_user: ovh1.user,
      host_key_fingerprint: ovh1.host_key_fingerprint,
    },
  });
  assert.equal(host.status, 201, JSON.stringify(host.json));
  hostId = host.json.id;
  virsh(ovh1, 'start', guest.name);
});

after(async () => {
  guest?.remove();
  await browser?.close();
  await server?.stop();
});

describe('usage charts', () => {
  test('a running VM\'s page draws its usage and keeps it current', async () => {
    const page = await newPage(browser);
    await signIn(page, server, 'admin', server.admin.password);
    await page.goto(`${server.ui}/vms/${hostId}/${guest.uuid}`);
    await waitPoints(page, 3);
    for (const kind of ['cpu', 'memory', 'disk', 'network']) {
      assert.equal(await page.locator(`[data-chart="${kind}"] canvas`).count(), 1, `${kind} chart drawn`);
    }
    assert.equal(await page.locator('.chart-empty').isHidden(), true);
    // New samples arrive over the event stream: more points, same page.
    const before = await points(page);
    await waitPoints(page, before + 2);
    // The legend shows the CPU figure with its unit.
    assert.match(await page.locator('[data-chart="cpu"] .u-legend').innerText(), /busy[\s\S]*%|–/);
    await screenshot(page, 'vm-usage');
    // The day's view: ten-minute averages (one point so far).
    await page.getByRole('button', { name: 'Last day' }).click();
    await page.waitForFunction(() => document.querySelector('[data-range="24h"]').getAttribute('aria-pressed') === 'true');
    await waitPoints(page, 1);
    await page.close();
  });

  test('the host page and the dashboard draw the host\'s and the fleet\'s usage', async () => {
    const page = await newPage(browser);
    await signIn(page, server, 'admin', server.admin.password);
    await page.goto(`${server.ui}/hosts/${hostId}`);
    await waitPoints(page, 3);
    assert.equal(await page.locator('#usage canvas').count(), 4);
    await screenshot(page, 'host-usage');
    await page.goto(`${server.ui}/`);
    await waitPoints(page, 3);
    // The fleet: CPU and memory only.
    assert.equal(await page.locator('#usage canvas').count(), 2);
    await screenshot(page, 'dashboard-usage');
    await page.setViewportSize({ width: 390, height: 844 });
    await screenshot(page, 'dashboard-usage-phone');
    await page.close();
  });
});
