// Hosts and VMs in a real browser against the real service and the real
// lab: add a lab host after checking the fingerprint the server shows,
// see its facts and VMs, start a VM and watch its state change — also when
// the change happens behind Overvisor's back — and check that another user
// sees none of it. A Hyper-V host (the lab's scripted one: Windows cannot
// run here) sits beside the KVM one in the same lists, told apart by a badge.

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, before, describe, test } from 'node:test';
import {
  api, createUser, launchBrowser, newPage, screenshot, signIn, startServer,
} from './support.mjs';
import { authorizeKey, defineGuest, lab, labHost, uniqueName, virsh } from './lab.mjs';

let server;
let browser;
let labInfo;
let ovh1;
let guest;
let hostId;

before(async () => {
  labInfo = lab();
  ovh1 = labHost(labInfo, 'ovh1');
  server = await startServer();
  browser = await launchBrowser();
  const key = await api(server, '/api/v1/users/me/ssh-key', { token: server.admin.apiKey });
  assert.equal(key.status, 200);
  authorizeKey(ovh1, key.json.public_key);
  guest = defineGuest(labInfo, ovh1, uniqueName('ovbrowser'));
});

after(async () => {
  guest?.remove();
  await browser?.close();
  await server?.stop();
});

describe('hosts and VMs', () => {
  test('adding a host shows its fingerprint and pins it once confirmed', async () => {
    const page = await newPage(browser);
    await signIn(page, server, 'admin', server.admin.password);
    await page.getByRole('link', { name: 'Hosts', exact: true }).click();
    await screenshot(page, 'hosts-empty');
    await page.getByRole('link', { name: 'Add a host' }).click();
    await page.getByLabel(/^Address/).fill(ovh1.address);
    await page.getByLabel('SSH port').fill(String(ovh1.port));
    await page.getByLabel('SSH user').fill(ovh1.user);
    await page.getByLabel(/Display name/).fill('lab-ovh1');
    await page.getByRole('button', { name: 'Fetch the host key' }).click();
    const shown = (await page.locator('#probed-fingerprint').innerText()).trim();
    assert.equal(shown, ovh1.host_key_fingerprint, 'the fingerprint shown is the host\'s real key');
    await screenshot(page, 'host-confirm-fingerprint');
    await page.getByRole('button', { name: /fingerprint matches/ }).click();
    await page.waitForURL(/\/hosts\/[0-9a-f-]{36}\?done=created/);
    hostId = /\/hosts\/([0-9a-f-]{36})/.exec(page.url())[1];
    assert.equal(await page.locator('#host-fingerprint').innerText(), ovh1.host_key_fingerprint);
    // Facts and VMs come from the host itself.
    await page.locator('#host-facts table').waitFor({ timeout: 20000 });
    await page.locator(`#host-vm-table tr[data-vm="${guest.name}"]`).waitFor({ timeout: 20000 });
    // The connection status follows the host live.
    await page.locator('#host-status .badge.connected').waitFor({ timeout: 20000 });
    await screenshot(page, 'host');
    // "Resync now" re-reads the host as a job and says so.
    await page.getByRole('button', { name: 'Resync now' }).click();
    await page.waitForURL(/\/hosts\/[0-9a-f-]{36}\?done=resynced/);
    assert.match(await page.locator('#notice').innerText(), /re-read just now/);
    await page.locator(`#host-vm-table tr[data-vm="${guest.name}"]`).waitFor({ timeout: 20000 });
    const resyncs = await api(server, '/api/v1/jobs?kind=inventory.resync', { token: server.admin.apiKey });
    assert.equal(resyncs.json[0]?.status, 'succeeded', JSON.stringify(resyncs.json));
    // The list and the dashboard show the host connected, from the live inventory.
    await page.goto(`${server.ui}/hosts`);
    await page.locator('tr[data-host="lab-ovh1"] .badge.connected').waitFor({ timeout: 20000 });
    await screenshot(page, 'hosts');
    await page.goto(`${server.ui}/`);
    await page.waitForFunction(() => Number(document.querySelector('#tile-vms')?.textContent) >= 1, null, { timeout: 20000 });
    assert.match(await page.locator('#fleet').innerText(), /1 connected/);
    await screenshot(page, 'dashboard-fleet');
    assert.deepEqual(page.problems, []);
    await page.context().close();
  });

  test('the VM list searches across hosts', async () => {
    const page = await newPage(browser);
    await signIn(page, server, 'admin', server.admin.password);
    await page.goto(`${server.ui}/vms`);
    await page.locator('#vms').waitFor();
    await page.getByLabel(/^Search/).fill(guest.name);
    await page.waitForFunction(
      (name) => [...document.querySelectorAll('#vms tbody tr')].every((tr) => tr.dataset.vm === name)
        && document.querySelectorAll('#vms tbody tr').length === 1,
      guest.name,
    );
    // The address bar follows the search, so it can be bookmarked.
    await page.waitForURL(new RegExp(`/vms\\?q=${guest.name}&`));
    await screenshot(page, 'vms');
    await page.setViewportSize({ width: 390, height: 844 });
    await screenshot(page, 'phone-vms');
    await page.setViewportSize({ width: 1280, height: 860 });
    await page.getByLabel(/^Search/).fill('no-such-vm-anywhere');
    await page.locator('#vm-table .empty').waitFor();
    await page.context().close();
  });

  test('starting a VM from its page, and a stop behind our back, show live', async () => {
    const page = await newPage(browser);
    await signIn(page, server, 'admin', server.admin.password);
    await page.goto(`${server.ui}/vms/${hostId}/${guest.uuid}`);
    const state = page.locator('#vm-state');
    assert.equal(await state.getAttribute('data-state'), 'shut_off');
    await page.getByRole('button', { name: 'Start', exact: true }).click();
    await page.waitForFunction(() => document.querySelector('#vm-state')?.dataset.state === 'running', null, { timeout: 30000 });
    await screenshot(page, 'vm-running');
    await page.setViewportSize({ width: 390, height: 844 });
    await screenshot(page, 'phone-vm');
    await page.setViewportSize({ width: 1280, height: 860 });
    assert.equal(virsh(ovh1, 'domstate', guest.name), 'running');

    // Out-of-band: root destroys the VM on the host; the page follows
    // through the event stream, without a reload.
    await page.evaluate(() => { window.__notReloaded = true; });
    virsh(ovh1, 'destroy', guest.name);
    await page.waitForFunction(() => document.querySelector('#vm-state')?.dataset.state === 'shut_off', null, { timeout: 30000 });
    assert.equal(await page.evaluate(() => window.__notReloaded), true, 'the page was not reloaded');
    await screenshot(page, 'vm-stopped-live');
    // The button's work was a job, listed with the others.
    await page.goto(`${server.ui}/jobs`);
    assert.match(await page.locator('#jobs').innerText(), /vm\.start[\s\S]*succeeded/);
    assert.deepEqual(page.problems, []);
    await page.context().close();
  });

  test('another user sees none of the first user\'s hosts or VMs', async () => {
    const carol = await createUser(server, 'carol', 'operator');
    const page = await newPage(browser);
    await signIn(page, server, carol.name, carol.password);
    await page.goto(`${server.ui}/hosts`);
    assert.equal(await page.locator('#hosts').count(), 0, 'no host table for carol');
    assert.doesNotMatch(await page.locator('main').innerText(), /lab-ovh1/);
    const res = await page.goto(`${server.ui}/hosts/${hostId}`);
    assert.equal(res.status(), 404, 'another tenant\'s host is not found');
    const vm = await page.goto(`${server.ui}/vms/${hostId}/${guest.uuid}`);
    assert.equal(vm.status(), 404);
    await page.goto(`${server.ui}/vms`);
    assert.doesNotMatch(await page.locator('main').innerText(), new RegExp(guest.name));
    await screenshot(page, 'other-tenant-hosts');
    await page.context().close();
  });

  test('a Hyper-V host sits beside the KVM one: kind badges, one VM list, a kind filter', async () => {
    const ovw = labInfo.hyperv_hosts?.[1];
    assert.ok(ovw, 'the lab has a second scripted Hyper-V host (scripts/lab up --hyperv 2)');
    const page = await newPage(browser);
    await signIn(page, server, 'admin', server.admin.password);
    await page.goto(`${server.ui}/hosts/new`);
    await page.getByLabel('Kind').selectOption('hyperv');
    await page.getByLabel(/^Address/).fill(ovw.address);
    await page.getByLabel('SSH port').fill(String(ovw.port));
    await page.getByLabel('SSH user').fill(ovw.user);
    await page.getByLabel(/Display name/).fill('lab-ovw2');
    await page.getByRole('button', { name: 'Fetch the host key' }).click();
    assert.equal((await page.locator('#probed-fingerprint').innerText()).trim(), ovw.host_key_fingerprint);
    await page.getByRole('button', { name: /fingerprint matches/ }).click();
    await page.waitForURL(/\/hosts\/[0-9a-f-]{36}\?done=created/);
    const hvId = /\/hosts\/([0-9a-f-]{36})/.exec(page.url())[1];
    assert.equal(await page.locator('h1 .badge.kind').innerText(), 'Hyper-V');
    // The scripted host lets the lab's key in, not this account's: the host
    // gets that key as its own credential.
    const patched = await api(server, `/api/v1/hosts/${hvId}`, {
      token: server.admin.apiKey,
      method: 'PATCH',
      body: { credential: { private_key: readFileSync(labInfo.client_key, 'utf8') } },
    });
    assert.equal(patched.status, 202, patched.text);
    await page.goto(`${server.ui}/hosts`);
    await page.locator('tr[data-host="lab-ovw2"] .badge.connected').waitFor({ timeout: 20000 });
    assert.equal(await page.locator('tr[data-host="lab-ovw2"] .badge.kind').innerText(), 'Hyper-V');
    assert.equal(await page.locator('tr[data-host="lab-ovh1"] .badge.kind').innerText(), 'KVM');
    await screenshot(page, 'hosts-both-kinds');

    // One list of both kinds; the kind filter narrows it to one.
    await page.goto(`${server.ui}/vms`);
    await page.locator('#vms tr[data-vm="win-01"]').waitFor({ timeout: 20000 });
    assert.equal(await page.locator('#vms tr[data-vm="win-01"] .badge.kind').innerText(), 'Hyper-V');
    assert.equal(await page.locator(`#vms tr[data-vm="${guest.name}"] .badge.kind`).innerText(), 'KVM');
    await screenshot(page, 'vms-both-kinds');
    await page.getByLabel('Kind').selectOption('hyperv');
    await page.waitForFunction(
      () => [...document.querySelectorAll('#vms tbody tr .badge.kind')].every((b) => b.dataset.kind === 'hyperv')
        && document.querySelector('#vms tr[data-vm="win-01"]') !== null,
    );
    await page.waitForURL(/kind=hyperv/);
    assert.equal(await page.locator(`#vms tr[data-vm="${guest.name}"]`).count(), 0);

    // A running guest's addresses (Hyper-V's integration services report
    // them) reach the list live, after the host is re-read.
    const admin = { token: server.admin.apiKey, method: 'POST', body: {} };
    const act = async (path) => {
      const accepted = await api(server, path, admin);
      assert.equal(accepted.status, 202, accepted.text);
      const done = await api(server, `/api/v1/jobs/${accepted.json.id}?wait=30`, { token: server.admin.apiKey });
      assert.equal(done.json.status, 'succeeded', done.text);
    };
    await act(`/api/v1/hosts/${hvId}/vms/win-01/start`);
    await act(`/api/v1/hosts/${hvId}/resync`);
    await page.locator('#vms tr[data-vm="win-01"] td.ips', { hasText: '172.20.0.2' }).waitFor({ timeout: 20000 });
    assert.equal(await page.locator('#vms tr[data-vm="win-01"] td.ips').getAttribute('data-ips'), '172.20.0.2');
    await screenshot(page, 'vms-addresses');
    await act(`/api/v1/hosts/${hvId}/vms/win-01/force-stop`);
    await page.locator('#vms tr[data-vm="win-01"] td.ips[data-ips=""]').waitFor({ timeout: 20000 });
    assert.deepEqual(page.problems, []);
    await page.context().close();
  });
});
