import t from 'tap';
import type { Test } from 'tap';
import { join } from 'node:path';
import { KeySet, Keyring } from '../../src/keys/keyring.js';
import { CryptService, decryptWith, encryptWith, rewrapWith } from '../../src/core/service.js';
import { FernetKey, decrypt } from '../../src/crypto/fernet.js';
import { tempDir } from '../helpers/server.js';

async function service(t: Test, maxKeys?: number) {
  const { keyring } = await Keyring.open({ file: join(tempDir(t), 'k.json') }, { create: true });
  return new CryptService(keyring, { maxKeys });
}

const context = (text: string) => Buffer.from(text);

t.test('the data operations name the key version they used', async (t) => {
  const s = await service(t);
  const keys = () => s.resolve(undefined, null);
  const first = s.keyring.current.primary.id;
  const enc = encryptWith(keys(), Buffer.from('m'));
  t.equal(enc.keyId, first, 'encrypt: the primary');
  const dec = decryptWith(keys(), enc.token, undefined);
  t.same([dec.plaintext.toString(), dec.keyId], ['m', first], 'decrypt: the plaintext and the version that opened it');
  await s.rotate(undefined);
  const second = s.keyring.current.primary.id;
  t.equal(decryptWith(keys(), enc.token, undefined).keyId, first, 'after a rotation, an old token names its old version');
  const re = rewrapWith(keys(), enc.token);
  t.equal(re.keyId, second, 'rewrap: under the new primary');
  t.equal(decrypt([s.keyring.current.primary], re.token).timestamp, dec.timestamp, 'keeping the timestamp');
  const old = s.keyring.current.primary.encrypt(Buffer.from('old'), Math.floor(Date.now() / 1000) - 100);
  t.equal(decryptWith(keys(), old, 1000).plaintext.toString(), 'old', 'within a ttl');
  t.throws(() => decryptWith(keys(), old, 10), { code: 'invalid_token' }, 'past it: invalid_token');
});

t.test('named keys: each its own versions; an unknown name is unknown_key', async (t) => {
  const s = await service(t);
  const billing = await s.createKey('billing', { derived: false, exportable: false });
  t.match(billing, { name: 'billing', derived: false, exportable: false, deletion_allowed: false, auto_rotate: null, versions: [{ state: 'primary' }] }, 'created with the defaults of a new key');
  await t.rejects(s.createKey('billing', { derived: false, exportable: false }), { code: 'conflict', message: 'a key named billing exists already' }, 'a name is taken once');
  const token = encryptWith(s.resolve('billing', null), Buffer.from('invoice')).token;
  t.equal(decryptWith(s.resolve('billing', null), token, undefined).plaintext.toString(), 'invoice', 'billing decrypts its own');
  t.throws(() => decryptWith(s.resolve(undefined, null), token, undefined), { code: 'invalid_token' }, 'default does not decrypt a billing token');
  t.throws(() => s.resolve('nosuch', null), { code: 'unknown_key', message: 'no key named nosuch' }, 'an unknown name');
  t.same(s.keyInfo(undefined).named_keys.map((k) => k.name), ['billing', 'default'], 'keyInfo lists every key, by name');
  t.same(s.keyInfo(undefined, (n) => n === 'billing').named_keys.map((k) => k.name), ['billing'], 'and only those a filter lets through');
  t.same(s.keyInfo(undefined), { key: 'default', keys: s.keyring.current.info(), named_keys: s.keyInfo(undefined).named_keys }, 'keys: the versions of default, the shape ki has always had');
  t.same(s.keyInfo('billing').keys, s.keyring.book.key('billing').info(), "with a name, that key's versions");
  t.same(s.keyInfo(undefined, (n) => n === 'billing'), { key: null, keys: [], named_keys: [s.showKey('billing')] }, 'default outside the filter: no versions listed');
  t.equal(s.inspect('billing', null, token).key_state, 'primary', 'inspect works per key');
  t.equal(s.inspect(undefined, null, token).key_id, null, 'and says when no version of the key verifies the token');
});

t.test('derived keys: a context is required, and tokens of one context are invalid under another', async (t) => {
  const s = await service(t);
  await s.createKey('users', { derived: true, exportable: false });
  t.throws(() => s.resolve('users', null), { code: 'bad_request', message: /key users is derived: send a context/ }, 'no context: bad_request');
  t.throws(() => s.resolve('default', context('x')), { code: 'bad_request', message: /key default is not derived: a context means nothing to it/ }, 'a context to a key that is not derived is refused, not ignored');
  const a = encryptWith(s.resolve('users', context('tenant-a')), Buffer.from('secret of a'));
  t.equal(decryptWith(s.resolve('users', context('tenant-a')), a.token, undefined).plaintext.toString(), 'secret of a', 'the same context decrypts');
  t.throws(() => decryptWith(s.resolve('users', context('tenant-b')), a.token, undefined), { code: 'invalid_token' }, 'another context: invalid_token');
  t.throws(() => decryptWith(s.resolve('users', context('tenant-a')), encryptWith(s.resolve(undefined, null), Buffer.from('m')).token, undefined), { code: 'invalid_token' }, 'another key: invalid_token');
  t.not(s.resolve('users', context('tenant-a')).primary.export(), s.keyring.book.key('users').primary.export(), 'the request key is not the root');
  await s.rotate('users');
  const keys = s.resolve('users', context('tenant-a'));
  t.equal(decryptWith(keys, a.token, undefined).plaintext.toString(), 'secret of a', 'after a rotation, old tokens of a context still decrypt');
  const re = rewrapWith(keys, a.token);
  t.equal(re.previousKeyId, a.keyId, 'rewrap under the new root, for the same context');
  t.throws(() => decryptWith(s.resolve('users', context('tenant-b')), re.token, undefined), { code: 'invalid_token' }, 'and the rewrapped token is still only the context\'s');
  t.match(s.inspect('users', context('tenant-a'), a.token), { key: 'users', key_id: a.keyId, key_state: 'active' }, 'inspect needs the context too');
  t.match(s.inspect('users', context('tenant-b'), a.token), { key_id: null }, 'and with another, no version verifies it');
});

t.test('key settings, export, deletion and the --max-keys cap', async (t) => {
  const s = await service(t, 3);
  const exported = s.getKey(undefined);
  t.equal(FernetKey.from(exported.key).id, exported.id, 'getKey gives the default primary and its id (default stays exportable)');
  await s.createKey('billing', { derived: false, exportable: false });
  t.throws(() => s.getKey('billing'), { code: 'forbidden', message: /key billing is not exportable/ }, 'a new key is not exportable');
  t.match(await s.configureKey('billing', { exportable: true }), { exportable: true }, 'until configured so');
  t.equal(s.getKey('billing').id, s.showKey('billing').primary, 'then it exports its primary');
  await t.rejects(s.configureKey('billing', {}), { code: 'bad_request', message: /nothing to change/ }, 'a config with nothing is an error');
  await t.rejects(s.configureKey('billing', { autoRotate: 60 }), { code: 'bad_request', message: /at least 3600 seconds/ }, 'auto_rotate under an hour is refused');
  t.match(await s.configureKey('billing', { autoRotate: 86_400 }), { auto_rotate: 86_400 }, 'a day is fine');
  await t.rejects(s.deleteKey('billing', true), { code: 'conflict', message: /may not be deleted: allow it first/ }, 'delete needs deletion_allowed');
  await s.configureKey('billing', { deletionAllowed: true });
  await t.rejects(s.deleteKey('billing', false), { code: 'bad_request', message: /confirm it/ }, 'and a confirmation');
  t.same(await s.deleteKey('billing', true), { deleted: 'billing' }, 'then it goes');
  t.throws(() => s.resolve('billing', null), { code: 'unknown_key' }, 'for good');
  await t.rejects(s.deleteKey('default', true), { code: 'conflict', message: /default can't be deleted/ }, 'default never goes');

  const info = await s.rotate(undefined);
  t.match(info, { state: 'primary', id: /^[0-9a-f]{12}$/ }, 'rotate answers the new primary');
  await s.rotate(undefined);
  await t.rejects(s.rotate(undefined), { code: 'conflict', message: /3 versions of key default decrypt already, the most allowed \(--max-keys 3\): retire old ones first with crypt-server keys retire <id>/ }, 'past --max-keys, rotation is refused with the fix');
  const oldest = s.showKey('default').versions.at(-1)!.id;
  await s.keyring.update((set) => set.withState(oldest, 'retired'));
  t.match(await s.rotate(undefined), { state: 'primary' }, 'after a retirement it works again');
});

t.test('autoRotate rotates a key whose primary is older than its period, once', async (t) => {
  const s = await service(t);
  await s.createKey('billing', { derived: false, exportable: false });
  await s.configureKey('billing', { autoRotate: 3600 });
  const before = s.showKey('billing').primary;
  t.same(await s.autoRotate(), { rotated: [], failed: [] }, 'a fresh key is not due');
  const later = Date.now() + 3601_000;
  t.same(await s.autoRotate(later), { rotated: ['billing'], failed: [] }, 'an hour later it is (default has no period)');
  t.not(s.showKey('billing').primary, before, 'a new primary');
  t.same(await s.autoRotate(later), { rotated: [], failed: [] }, 'and the new primary is not due again');
});

t.test('autoRotate: a key that can not rotate does not stop the others', async (t) => {
  const s = await service(t, 2);
  for (const name of ['a1', 'a2']) {
    await s.createKey(name, { derived: false, exportable: false });
    await s.configureKey(name, { autoRotate: 3600 });
  }
  await s.rotate('a1');
  const { rotated, failed } = await s.autoRotate(Date.now() + 3601_000);
  t.same(rotated, ['a2'], 'a2, due and with room, is rotated');
  t.match(failed, [{ name: 'a1', reason: /--max-keys 2/ }], 'a1, full, is reported, not thrown');
});

t.test('autoRotate: a primary of unknown age (an old keyring) is due', async (t) => {
  const s = await service(t);
  await s.configureKey('default', { autoRotate: 3600 });
  await s.keyring.updateBook((b) => {
    const json = b.key('default').toJson() as { versions: object[] };
    return b.with(KeySet.fromJson({ ...json, versions: json.versions.map((v) => ({ ...v, created: null })) }, 'test'));
  });
  t.equal(s.keyring.current.primaryCreated(), null, 'its primary has no creation time');
  t.same((await s.autoRotate()).rotated, ['default'], 'it is rotated');
});

t.test('createKey refuses a missing, malformed or reserved name before any write', async (t) => {
  const s = await service(t);
  const before = s.showKey('default');
  for (const name of [undefined, 'undefined!', 'Upper', 'rotate', '']) {
    await t.rejects(s.createKey(name as unknown as string, { derived: false, exportable: false }), { code: 'bad_request' }, `${String(name)}: bad_request`);
  }
  t.same(s.showKey('default'), before, 'default is untouched');
});
