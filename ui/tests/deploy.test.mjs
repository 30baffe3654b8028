// The deploy wizard in a real browser against the real service and a real
// lab host: an operator walks profile → host → size and network → name →
// confirm, sees the guest's credentials once (with a copy button and
// "shown only now"), watches the job succeed live, finds the VM, and a
// reload shows no password. A bad name is refused next to its field; a
// reader is offered no wizard.
//
// The image is a small random raw disk (a domain with no OS still runs),
// served by this test on the lab bridge under a profile pinned to its
// real SHA-256, so the deployment takes seconds, not a guest's boot.

import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import {
  createUser, launchBrowser, newPage, screenshot, sessionCall as call, signIn, startServer,
} from './support.mjs';
import { addOwnHost, asRoot, lab, labHost, uniqueName, virsh } from './lab.mjs';

const PATIENCE = 60000;
/** Where deployments keep a VM's files on a host. */
const DEPLOY_DIR = '/var/lib/libvirt/overvisor';

let server;
let browser;
let files;
let dir;
let host;
let operator;
let hostId;
let deployed; // { name, uuid } once created, for the clean-up
let imageSha; // the test image, cached on the host by the deployment

/** Serves `image` at http://<lab bridge>:<port>/img.raw; answers Range too. */
function serveImage(bridge, image) {
  const httpServer = createServer((req, res) => {
    if (req.url !== '/img.raw') {
      res.writeHead(404).end();
      return;
    }
    const from = Number(/bytes=(\d+)-/.exec(req.headers.range || '')?.[1] || 0);
    const body = image.subarray(Math.min(from, image.length));
    res.writeHead(from > 0 ? 206 : 200, {
      'Content-Length': body.length,
      'Accept-Ranges': 'bytes',
      ...(from > 0 ? { 'Content-Range': `bytes ${from}-${image.length - 1}/${image.length}` } : {}),
    });
    res.end(req.method === 'HEAD' ? undefined : body);
  });
  return new Promise((resolve) => {
    httpServer.listen(0, bridge, () => resolve({
      url: `http://${bridge}:${httpServer.address().port}/img.raw`,
      close: () => httpServer.close(),
    }));
  });
}

before(async () => {
  const labInfo = lab();
  host = labHost(labInfo, 'ovh2');
  // 4 MiB of random bytes: its checksum is its own, never in a host's cache.
  const image = randomBytes(4 << 20);
  const sha256 = createHash('sha256').update(image).digest('hex');
  imageSha = sha256;
  const bridge = host.address.replace(/\.\d+$/, '.1');
  files = await serveImage(bridge, image);
  dir = mkdtempSync(join(tmpdir(), 'overvisor-profiles-'));
  writeFileSync(join(dir, 'lab-img.toml'), `
title = "Lab blank disk"
os = "linux"
firmware = "bios"
disk_bus = "virtio"
nic_model = "virtio"
seed = "nocloud"

[image]
format = "raw"
url = "${files.url}"
sha256 = "${sha256}"

[defaults]
vcpus = 1
memory_mib = 128
disk_gib = 1

[minimum]
vcpus = 1
memory_mib = 64
disk_gib = 1
`);
  server = await startServer({
    // Lab hosts offer /dev/kvm but run guests under TCG only.
    env: { OVERVISOR_PROFILES_DIR: dir, OVERVISOR_DEPLOY_EMULATED: '1' },
  });
  browser = await launchBrowser();
  operator = await createUser(server, 'olga', 'operator');
});

after(async () => {
  if (deployed) {
    // Whatever the test left: the domain and its files, as root.
    try { virsh(host, 'destroy', deployed.name); } catch { /* not running */ }
    try { virsh(host, 'undefine', deployed.name); } catch { /* already gone */ }
    if (deployed.uuid) asRoot(host, 'rm', ['-rf', `${DEPLOY_DIR}/vms/${deployed.uuid}`]);
    // This run's image is no other run's: it need not stay cached.
    asRoot(host, 'rm', ['-f', `${DEPLOY_DIR}/images/${imageSha}.img`, `${DEPLOY_DIR}/images/${imageSha}.lock`]);
  }
  files?.close();
  await browser?.close();
  await server?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('deploy wizard', () => {
  test('an operator deploys a VM step by step and sees its password once', async () => {
    const page = await newPage(browser);
    await signIn(page, server, operator.name, operator.password);
    // Olga's own host, reached with her own SSH key.
    const registered = await addOwnHost(page, host, 'olga-ovh2');
    assert.equal(registered.status, 201, JSON.stringify(registered.json));
    hostId = registered.json.id;

    // The entry: on the VM list.
    await page.goto(`${server.ui}/vms`);
    await page.getByRole('link', { name: 'Deploy a VM' }).click();
    await page.waitForURL(`${server.ui}/deploy`);

    // 1. Profile.
    assert.equal(await page.locator('.wizard-steps [aria-current="step"] .label').innerText(), 'Profile');
    // UEFI and Windows profiles can be chosen (the host step checks the
    // host has their firmware, swtpm and installer ISO).
    assert.equal(await page.getByRole('radio', { name: /Windows Server 2022/ }).isEnabled(), true);
    await page.getByRole('radio', { name: /Lab blank disk/ }).check();
    await screenshot(page, 'deploy-1-profile');
    await page.getByRole('button', { name: 'Next: host' }).click();

    // 2. Host, with what it has free.
    const choice = page.locator('label.choice[data-host="olga-ovh2"]');
    await choice.waitFor();
    assert.match(await choice.locator('[data-free-memory]').innerText(), /^\d+(\.\d)? [MG]iB$/);
    assert.match(await choice.locator('[data-free-cpus]').innerText(), /^\d+$/);
    assert.match(await choice.innerText(), /of \d+ CPUs free/);
    await choice.locator('input').check();
    await screenshot(page, 'deploy-2-host');
    await page.getByRole('button', { name: 'Next: size and network' }).click();

    // 3. Size and network: the profile's defaults, the host's networks.
    await page.getByLabel(/^vCPUs/).waitFor();
    assert.equal(await page.getByLabel(/^vCPUs/).inputValue(), '1');
    assert.equal(await page.getByLabel(/^Memory/).inputValue(), '128');
    assert.equal(await page.getByLabel(/^Disk/).inputValue(), '1');
    await page.getByLabel(/^Network/).selectOption('bridge:br0');
    // More vCPUs than the host has (within the profile's limits): refused
    // by the host's check, next to the field.
    await page.getByLabel(/^vCPUs/).fill('64');
    await page.getByRole('button', { name: 'Next: name and account' }).click();
    await page.locator('#err-vcpus').waitFor();
    assert.match(await page.locator('#err-vcpus').innerText(), /^Must be at most \d+, the host's CPUs$/);
    assert.equal(await page.getByLabel(/^vCPUs/).getAttribute('aria-invalid'), 'true');
    assert.equal(await page.getByLabel(/^Network/).inputValue(), 'bridge:br0', 'the other fields come back as chosen');
    await screenshot(page, 'deploy-3-size-error');
    await page.getByLabel(/^vCPUs/).fill('1');
    await page.getByRole('button', { name: 'Next: name and account' }).click();

    // 4. Name: a bad one is refused next to the field, as the API would.
    await page.getByLabel(/^VM name/).fill('Bad name!');
    await page.getByLabel(/^User name/).fill('olga');
    await page.getByRole('button', { name: 'Next: confirm' }).click();
    const nameError = page.locator('#err-name');
    await nameError.waitFor();
    assert.match(await nameError.innerText(), /^VM name may only contain letters, digits/);
    assert.equal(await page.getByLabel(/^VM name/).getAttribute('aria-invalid'), 'true');
    assert.equal(await page.getByLabel(/^VM name/).inputValue(), 'Bad name!', 'the form comes back as typed');
    await screenshot(page, 'deploy-4-name-error');
    const name = uniqueName('wiz');
    deployed = { name };
    await page.getByLabel(/^VM name/).fill(name);
    // The guest's time zone and locale: a bad zone is refused the same way.
    await page.getByLabel(/^Time zone/).fill('Mars/../Olympus');
    await page.getByRole('button', { name: 'Next: confirm' }).click();
    const zoneError = page.locator('#err-timezone');
    await zoneError.waitFor();
    assert.match(await zoneError.innerText(), /IANA time zone/);
    await page.getByLabel(/^Time zone/).fill('Europe/Berlin');
    await page.getByLabel(/^Locale/).fill('de-DE');
    await page.getByRole('button', { name: 'Next: confirm' }).click();

    // 5. Confirm.
    const summary = page.locator('#deploy-summary');
    await summary.waitFor();
    const text = await summary.innerText();
    for (const part of ['Lab blank disk', 'olga-ovh2', '1 vCPU, 128 MiB memory, 1 GiB disk', 'Bridge br0', name, 'olga', 'de-DE, Europe/Berlin']) {
      assert.ok(text.includes(part), `the summary says ${part}: ${text}`);
    }
    await screenshot(page, 'deploy-5-confirm');
    const [created] = await Promise.all([
      page.waitForResponse((r) => r.url().endsWith('/deploy/create') && r.request().method() === 'POST'),
      page.getByRole('button', { name: 'Deploy' }).click(),
    ]);
    assert.equal(created.status(), 200);
    assert.equal(created.headers()['cache-control'], 'no-store');

    // The credentials, once, with a copy button.
    const password = (await page.locator('#cred-password').innerText()).trim();
    assert.ok(password.length >= 16, `a generated password: ${password}`);
    assert.equal((await page.locator('#cred-username').innerText()).trim(), 'olga');
    assert.match(await page.locator('#credentials').innerText(), /Shown only now/);
    await page.waitForURL(/\/deploy\/[0-9a-f-]{36}$/);
    const jobId = /\/deploy\/([0-9a-f-]{36})$/.exec(page.url())[1];
    const copy = page.locator('#credentials [data-copy="#cred-password"]');
    await copy.click();
    await page.waitForFunction(
      () => /Copied|Selected/.test(document.querySelector('#credentials .copy-status')?.textContent || ''),
    );
    await screenshot(page, 'deploy-6-credentials');

    // The job, live: every step done and the image's size, without reloading.
    await page.locator('#job-status.succeeded').waitFor({ timeout: PATIENCE });
    const steps = await page.locator('#job-steps li').evaluateAll(
      (lis) => lis.map((li) => [li.querySelector('.name').textContent, li.dataset.status]),
    );
    assert.deepEqual(steps, [['image', 'done'], ['overlay', 'done'], ['seed', 'done'], ['define', 'done'], ['start', 'done']]);
    assert.match(await page.locator('#job-steps li[data-step="0"]').innerText(), /4 MiB downloaded/);
    assert.equal(await page.locator('#cred-password').innerText(), password, 'the password stays while the page lives');
    await screenshot(page, 'deploy-7-succeeded');

    // The VM exists and runs.
    const vm = await call(page, `/api/v1/hosts/${hostId}/vms/${name}`);
    assert.equal(vm.status, 200, JSON.stringify(vm.json));
    assert.equal(vm.json.state, 'running');
    deployed.uuid = vm.json.uuid;
    const job = await call(page, `/api/v1/jobs/${jobId}`);
    assert.ok(!JSON.stringify(job.json).includes(password), 'the job does not hold the password');

    // A reload shows the deployment, not the password.
    const reloaded = await page.reload();
    assert.equal(reloaded.request().method(), 'GET');
    assert.equal(await page.locator('#cred-password').count(), 0);
    await page.locator('#credentials-gone').waitFor();
    assert.ok(!(await page.content()).includes(password), 'the reloaded page holds no password');
    await page.locator('#job-status.succeeded').waitFor();
    await screenshot(page, 'deploy-8-reloaded');

    // On the VM list too.
    await page.goto(`${server.ui}/vms?q=${name}`);
    await page.locator(`tr[data-vm="${name}"] [data-state="running"]`).waitFor({ timeout: PATIENCE });
    // The three refused steps answered 400, as the API does; nothing else went wrong.
    const refusals = /status of 400 \(Bad Request\) \S+\/deploy$/;
    assert.deepEqual(page.problems.filter((p) => !refusals.test(p)), []);
    assert.equal(page.problems.length, 3, page.problems.join('\n'));

    // Clean up through the API (the after hook catches what this misses).
    const vmPath = `/api/v1/hosts/${hostId}/vms/${name}`;
    for (const [path, method] of [[`${vmPath}/force-stop`, 'POST'], [`${vmPath}?with_storage=true`, 'DELETE']]) {
      const accepted = await call(page, path, method);
      assert.equal(accepted.status, 202, JSON.stringify(accepted.json));
      const ended = await call(page, `/api/v1/jobs/${accepted.json.id}?wait=30`);
      assert.equal(ended.json.status, 'succeeded', JSON.stringify(ended.json));
    }
    await page.context().close();
  });

  test('the wizard fits a phone and starts from a host\'s page', async () => {
    const page = await newPage(browser, { viewport: { width: 390, height: 844 }, isMobile: true });
    await signIn(page, server, operator.name, operator.password);
    await page.goto(`${server.ui}/hosts/${hostId}`);
    await page.getByRole('link', { name: 'Deploy a VM' }).click();
    await page.waitForURL(`${server.ui}/deploy?host=${hostId}`);
    // UEFI and Windows profiles can be chosen (the host step checks the
    // host has their firmware, swtpm and installer ISO).
    assert.equal(await page.getByRole('radio', { name: /Windows Server 2022/ }).isEnabled(), true);
    await page.getByRole('radio', { name: /Lab blank disk/ }).check();
    await page.getByRole('button', { name: 'Next: host' }).click();
    // The host it came from is already chosen.
    await page.locator('label.choice[data-host="olga-ovh2"] input:checked').waitFor();
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 0, `no sideways scrolling (${overflow}px too wide)`);
    await screenshot(page, 'deploy-phone-host');
    await page.getByRole('button', { name: 'Next: size and network' }).click();
    await page.getByLabel(/^vCPUs/).waitFor();
    await screenshot(page, 'deploy-phone-size');
    assert.deepEqual(page.problems, []);
    await page.context().close();
  });

  test('a reader is offered no wizard', async () => {
    const reader = await createUser(server, 'rudi', 'reader');
    const page = await newPage(browser);
    await signIn(page, server, reader.name, reader.password);
    await page.goto(`${server.ui}/vms`);
    await page.locator('h1', { hasText: 'Virtual machines' }).waitFor();
    assert.equal(await page.getByRole('link', { name: 'Deploy a VM' }).count(), 0);
    const res = await page.goto(`${server.ui}/deploy`);
    assert.equal(res.status(), 403);
    await page.context().close();
  });
});
