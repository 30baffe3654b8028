// The hypervisor lab seen from the browser tests (like crates/testkit from
// Rust): root-side commands inside a lab host's namespaces, tiny guests
// defined behind Overvisor's back, and authorizing a user's SSH key for the
// automation account. Only the shared hosts ovh1/ovh2 are used, and nothing
// here disrupts them.

import { execFileSync } from 'node:child_process';
import { randomUUID, randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { loadLab, sessionCall } from './support.mjs';

export function lab() {
  return loadLab();
}

export function labHost(labInfo, name) {
  const host = labInfo.hosts.find((h) => h.name === name);
  if (!host) throw new Error(`lab host ${name} is not up (run scripts/lab up)`);
  return host;
}

function pidOf(host) {
  return readFileSync(host.libvirtd_pid_file, 'utf8').trim();
}

/** Runs `program args…` as root inside the host's namespaces. */
export function asRoot(host, program, args, input) {
  return execFileSync('nsenter', ['-t', pidOf(host), '-m', '-n', '-u', program, ...args], {
    input,
    encoding: 'utf8',
    stdio: ['pipe', 'pipe', 'pipe'],
  });
}

export function virsh(host, ...args) {
  return asRoot(host, 'virsh', ['-c', host.uri, ...args]).trim();
}

/** Lets `publicKey` log in as the automation user (appending, never rewriting). */
export function authorizeKey(host, publicKey) {
  const file = `/home/${host.user}/.ssh/authorized_keys`;
  const present = asRoot(host, 'cat', [file]);
  if (present.split('\n').includes(publicKey.trim())) return;
  asRoot(host, 'tee', ['-a', file], `${publicKey.trim()}\n`);
}

/**
 * Registers `host` as the signed-in user's own, named `name`, reached with
 * that user's SSH key (authorized here first); answers the API's reply.
 */
export async function addOwnHost(page, host, name) {
  const key = await sessionCall(page, '/api/v1/users/me/ssh-key');
  if (key.status !== 200) throw new Error(`no SSH key: ${key.status}`);
  authorizeKey(host, key.json.public_key);
  return sessionCall(page, '/api/v1/hosts', 'POST', {
    name,
    address: host.address,
    port: host.port,
    ssh_user: host.user,
    host_key_fingerprint: host.host_key_fingerprint,
  });
}

export function uniqueName(prefix) {
  return `${prefix}-${randomBytes(4).toString('hex')}`;
}

const xmlEscape = (s) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;')
  .replace(/'/g, '&apos;').replace(/"/g, '&quot;');

/** Defines a tiny guest as root; returns {name, uuid, remove()}. */
export function defineGuest(labInfo, host, name) {
  const uuid = randomUUID();
  const b = Buffer.from(uuid.replace(/-/g, '').slice(0, 6), 'hex');
  const mac = `52:54:00:${[...b].map((x) => x.toString(16).padStart(2, '0')).join(':')}`;
  const xml = readFileSync(labInfo.domain_xml_template, 'utf8')
    .replaceAll('{{name}}', xmlEscape(name))
    .replaceAll('{{uuid}}', uuid)
    .replaceAll('{{kernel}}', xmlEscape(labInfo.guest.kernel))
    .replaceAll('{{initrd}}', xmlEscape(labInfo.guest.initrd))
    .replaceAll('{{serial_log}}', xmlEscape(join(host.serial_dir, `${name}.log`)))
    .replaceAll('{{mac}}', mac);
  const path = join(host.xml_dir, `${name}.xml`);
  writeFileSync(path, xml);
  virsh(host, 'define', path);
  return {
    name,
    uuid,
    remove() {
      try { virsh(host, 'destroy', name); } catch { /* not running */ }
      try { virsh(host, 'undefine', name); } catch { /* already gone */ }
    },
  };
}
