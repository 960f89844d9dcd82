import t from 'tap';
import type { Test } from 'tap';
import { join } from 'node:path';
import { Keyring } from '../../src/keys/keyring.js';
import { CryptService, DataOps } from '../../src/core/service.js';
import { FernetKey, decrypt } from '../../src/crypto/fernet.js';
import { tempDir } from '../helpers/server.js';

async function service(t: Test, maxKeys?: number) {
  const { keyring } = await Keyring.open({ file: join(tempDir(t), 'k.json') }, { create: true });
  return new CryptService(keyring, { maxKeys });
}

t.test('the data operations name the key they used', async (t) => {
  const s = await service(t);
  const first = s.keyring.current.primary.id;
  const enc = s.data.encrypt(Buffer.from('m'));
  t.equal(enc.keyId, first, 'encrypt: the primary');
  const dec = s.data.decrypt(enc.token, undefined);
  t.same([dec.plaintext.toString(), dec.keyId], ['m', first], 'decrypt: the plaintext and the key that opened it');
  await s.rotate();
  const second = s.keyring.current.primary.id;
  t.equal(s.data.decrypt(enc.token, undefined).keyId, first, 'after a rotation, an old token names its old key');
  const re = s.data.rewrap(enc.token);
  t.equal(re.keyId, second, 'rewrap: under the new primary');
  t.equal(decrypt([s.keyring.current.primary], re.token).timestamp, dec.timestamp, 'keeping the timestamp');
  const old = s.keyring.current.primary.encrypt(Buffer.from('old'), Math.floor(Date.now() / 1000) - 100);
  t.equal(s.data.decrypt(old, 1000).plaintext.toString(), 'old', 'within a ttl');
  t.throws(() => s.data.decrypt(old, 10), { code: 'invalid_token' }, 'past it: invalid_token');
});

t.test('DataOps works over any key set (a worker thread\'s copy)', async (t) => {
  const s = await service(t);
  const copy = new DataOps(() => s.keyring.current);
  t.equal(copy.decrypt(s.data.encrypt(Buffer.from('x')).token, undefined).plaintext.toString(), 'x', 'the same keys, another object');
});

t.test('key management: getKey, keyInfo, rotate, and the --max-keys cap', async (t) => {
  const s = await service(t, 3);
  const exported = s.getKey();
  t.equal(FernetKey.from(exported.key).id, exported.id, 'getKey gives the primary and its id');
  t.same(s.keyInfo().keys.map((k) => k.state), ['primary'], 'one key');
  const info = await s.rotate();
  t.match(info, { state: 'primary', id: /^[0-9a-f]{12}$/ }, 'rotate answers the new primary');
  await s.rotate();
  await t.rejects(s.rotate(), { code: 'conflict', message: /3 keys decrypt already, the most allowed \(--max-keys 3\): retire old ones first with crypt-server keys retire <id>/ }, 'past --max-keys, rotation is refused with the fix');
  const oldest = s.keyInfo().keys.at(-1)!.id;
  await s.keyring.update((set) => set.withState(oldest, 'retired'));
  t.match(await s.rotate(), { state: 'primary' }, 'after a retirement it works again');
});
