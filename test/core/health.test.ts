// Health (src/core/health.ts): liveness facts, readiness checks, the keyring check that follows
// reload failures, and the fingerprint that follows the keys in force.
import t from 'tap';
import type { Test } from 'tap';
import { promises as fs } from 'node:fs';
import { join } from 'node:path';
import { Health } from '../../src/core/health.js';
import { Keyring } from '../../src/keys/keyring.js';

async function keyring(t: Test) {
  const file = join(t.testdir(), 'keyring.json');
  const { keyring } = await Keyring.open({ file }, { create: true });
  return { file, keyring };
}

t.test('ready when every check passes; a failing or throwing check is named with its reason', async (t) => {
  const { keyring: k } = await keyring(t);
  const health = new Health(k);
  t.match(health.ready(), { status: 'ready', checks: [{ name: 'keyring', ok: true }] }, 'the keyring check is built in');
  let up = true;
  health.add('tcp', () => (up ? null : 'the TCP listener is not accepting connections'));
  t.equal(health.ready().status, 'ready', 'a passing check keeps it ready');
  up = false;
  t.same(health.ready().checks, [{ name: 'keyring', ok: true }, { name: 'tcp', ok: false, reason: 'the TCP listener is not accepting connections' }], 'a failing check: named, with its reason');
  t.equal(health.ready().status, 'not_ready', 'and not ready');
  health.add('tcp', () => {
    throw new Error('/secret/path exploded');
  });
  t.same(health.ready().checks[1], { name: 'tcp', ok: false, reason: 'the check itself failed' }, 'a check that throws fails, without its message');
  health.remove('tcp');
  t.equal(health.ready().status, 'ready', 'a removed check is gone');
});

t.test('liveness facts: the fingerprint follows the keys in force, never their material', async (t) => {
  const { file, keyring: k } = await keyring(t);
  const health = new Health(k);
  const before = health.live();
  t.match(before, { status: 'ok', keyring: { fingerprint: /^[0-9a-f]{16}$/, primary: k.current.primary.id, keys: 1 } }, 'ok, with the facts');
  const { keyring: other } = await Keyring.open({ file });
  t.equal(new Health(other).facts().fingerprint, before.keyring.fingerprint, 'another process on the same keyring: the same fingerprint');
  await k.update((set) => set.rotated());
  t.not(health.facts().fingerprint, before.keyring.fingerprint, 'a rotation changes it');
  t.equal(health.facts().primary, k.current.primary.id, 'and the primary is the new one');
  const oldId = k.current.info()[1]!.id;
  const rotated = health.facts().fingerprint;
  await k.update((set) => set.withState(oldId, 'retired'));
  t.not(health.facts().fingerprint, rotated, 'so does a retirement (states count)');
  t.notMatch(JSON.stringify(health.ready()), k.current.primary.export().slice(0, 20), 'no key material in what it answers');
});

t.test('the keyring check fails while the stored keyring can not be loaded, and passes once it can', async (t) => {
  const { file, keyring: k } = await keyring(t);
  const health = new Health(k);
  const good = await fs.readFile(file, 'utf8');
  await fs.writeFile(file, '{"format": "crypt-keyring/2", "keys": []}');
  const failed = new Promise((resolve) => k.once('error', resolve));
  void k.reload();
  await failed;
  t.match(k.problem, /a keyring needs the key default/, 'the keyring knows why (for the log)');
  t.same(health.ready().checks[0], { name: 'keyring', ok: false, reason: 'the keyring changed and could not be loaded: the last good keys stay in force; the server log says why' }, 'readiness says so, naming no file');
  t.equal(health.ready().status, 'not_ready', 'not ready');
  t.equal(health.facts().primary, k.current.primary.id, 'the facts are those of the keys still in force');
  await fs.writeFile(file, good);
  await k.reload();
  t.equal(k.problem, null, 'a reload that succeeds clears it');
  t.equal(health.ready().status, 'ready', 'ready again');
});
