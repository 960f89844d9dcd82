import t from 'tap';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { CryptoPool, OFFLOAD_BYTES, defaultThreads } from '../../src/core/pool.js';
import { KeySet, Keyring, NEW_KEY_SETTINGS } from '../../src/keys/keyring.js';
import { decrypt } from '../../src/crypto/fernet.js';
import { operation } from '../../src/core/operations.js';
import type { Operation, Results } from '../../src/core/operations.js';
import { tempDir } from '../helpers/server.js';

const en = operation('en') as Operation<'token'>;
const de = operation('de') as Operation<'plaintext'>;
const rw = operation('rw') as Operation<'token'>;
/** The pool's data operations, as the dispatcher calls them. */
const ops = (pool: CryptoPool, keyring: Keyring, name = 'default', context: Buffer | null = null) => ({
  encrypt: async (m: Uint8Array) => ((await pool.run(en, keyring.resolve(name, context), m, {})) as Results['token']).token,
  decrypt: (token: string | Uint8Array, ttl: number | undefined) => pool.run(de, keyring.resolve(name, context), token, { ttl }),
  rewrap: async (token: string) => ((await pool.run(rw, keyring.resolve(name, context), token, {})) as Results['token']).token,
});

t.test('large payloads round-trip through worker threads with the keys in force', async (t) => {
  const { keyring } = await Keyring.open({ file: join(tempDir(t), 'k.json') }, { create: true });
  const pool = new CryptoPool(2);
  t.teardown(() => pool.close());
  const p = ops(pool, keyring);
  t.equal(pool.threads, 0, 'no thread before the first job');
  const m = randomBytes(OFFLOAD_BYTES + 1);
  const token = await p.encrypt(m);
  t.ok(decrypt(keyring.current.decrypting, token).plaintext.equals(m), 'the main thread decrypts a thread token');
  const back = await p.decrypt(token, undefined);
  t.ok(back.plaintext.equals(m), 'and a thread decrypts it back');
  t.ok(Math.abs(back.timestamp - Date.now() / 1000) < 5, 'with its timestamp');
  t.equal(back.keyId, keyring.current.primary.id, 'and the id of the key that opened it');
  t.ok(Buffer.isBuffer(back.plaintext), 'the plaintext comes back as a Buffer');
  t.ok((await p.decrypt(Buffer.from(token, 'latin1'), 3600)).plaintext.equals(m), 'a token as bytes, with a ttl');
  const many = await Promise.all(Array.from({ length: 8 }, (_, i) => p.encrypt(Buffer.alloc(OFFLOAD_BYTES, i))));
  t.ok(pool.threads >= 1 && pool.threads <= 2, `${pool.threads} thread(s), never more than the pool size`);
  many.forEach((tok, i) => t.ok(decrypt(keyring.current.decrypting, tok).plaintext.equals(Buffer.alloc(OFFLOAD_BYTES, i)), `parallel job ${i} is right`));
  await t.rejects(p.decrypt('not-a-token', undefined), { code: 'invalid_token', message: 'invalid token' }, 'errors keep their catalogue code');
  t.ok(defaultThreads() >= 1 && defaultThreads(64) === 1, 'thread count follows the cores and the processes');
});

t.test('each job uses the keys in force when it was sent', async (t) => {
  const { keyring } = await Keyring.open({ file: join(tempDir(t), 'k.json') }, { create: true });
  const pool = new CryptoPool(1);
  t.teardown(() => pool.close());
  const p = ops(pool, keyring);
  const m = randomBytes(OFFLOAD_BYTES);
  const oldToken = await p.encrypt(m);
  const oldId = keyring.current.primary.id;
  const rotated = await keyring.update((s) => s.rotated());
  const newToken = await p.encrypt(m);
  t.ok(decrypt([rotated.primary], newToken), 'the next job encrypts under the new primary');
  const rewrapped = await p.rewrap(oldToken);
  t.equal(decrypt([rotated.primary], rewrapped).timestamp, decrypt(rotated.decrypting, oldToken).timestamp, 'rewrap keeps the timestamp');
  await keyring.update((s) => s.withState(oldId, 'retired'));
  await t.rejects(p.decrypt(oldToken, undefined), { code: 'invalid_token' }, 'a retired key stops decrypting in the threads too');
});

t.test('a thread that dies fails its jobs with internal; the next job gets a new thread', async (t) => {
  const { keyring } = await Keyring.open({ file: join(tempDir(t), 'k.json') }, { create: true });
  // the real worker, except that a 3-byte job kills its thread
  const pool = new CryptoPool(1, new URL('../fixtures/crash-worker.ts', import.meta.url));
  t.teardown(() => pool.close());
  const p = ops(pool, keyring);
  t.match(await p.encrypt(Buffer.alloc(OFFLOAD_BYTES)), /^gAAAAA/, 'a first job works');
  await t.rejects(p.encrypt(Buffer.from('die')), { code: 'internal', message: 'internal error' }, 'the job whose thread dies fails with internal');
  t.equal(pool.threads, 0, 'the dead thread is gone');
  const token = await p.encrypt(Buffer.alloc(OFFLOAD_BYTES, 1));
  t.ok(decrypt(keyring.current.decrypting, token).plaintext.equals(Buffer.alloc(OFFLOAD_BYTES, 1)), 'the next job runs on a new thread');
  await pool.close();
  await t.rejects(p.encrypt(Buffer.alloc(OFFLOAD_BYTES)), { code: 'unavailable', message: 'the server is shutting down' }, 'a closed pool refuses jobs');
});

t.test('keys reach threads as raw bytes, and the pool keeps no exported copy', async (t) => {
  const { keyring } = await Keyring.open({ file: join(tempDir(t), 'k.json') }, { create: true });
  const bytes = keyring.current.primary.exportBytes();
  t.ok(bytes instanceof Uint8Array && bytes.length === 32 && bytes.byteOffset === 0 && bytes.buffer.byteLength === 32, 'a key is 32 bytes, in a buffer of its own (transferable)');
  const pool = new CryptoPool(1);
  t.teardown(() => pool.close());
  const m = Buffer.alloc(OFFLOAD_BYTES, 7);
  t.ok(decrypt(keyring.current.decrypting, await ops(pool, keyring).encrypt(m)).plaintext.equals(m), 'the thread works from the bytes');
  const fields = JSON.stringify(Object.getOwnPropertyNames(pool).map((n) => (pool as unknown as Record<string, unknown>)[n]));
  t.notMatch(fields, keyring.current.primary.export().slice(0, 20), 'no exported key on the pool object');
});

t.test('derived keys: a thread gets the request\'s derived keys, never the root', async (t) => {
  const { keyring } = await Keyring.open({ file: join(tempDir(t), 'k.json') }, { create: true });
  await keyring.updateBook((b) => b.with(KeySet.generate('users', { ...NEW_KEY_SETTINGS, derived: true })));
  const pool = new CryptoPool(1);
  t.teardown(() => pool.close());
  const a = ops(pool, keyring, 'users', Buffer.from('tenant-a'));
  const m = randomBytes(OFFLOAD_BYTES);
  const token = await a.encrypt(m);
  t.ok((await a.decrypt(token, undefined)).plaintext.equals(m), 'a thread decrypts what a thread made, same context');
  t.ok(decrypt(keyring.resolve('users', Buffer.from('tenant-a')).decrypting, token).plaintext.equals(m), 'and the main thread agrees on the derived key');
  await t.rejects(ops(pool, keyring, 'users', Buffer.from('tenant-b')).decrypt(token, undefined), { code: 'invalid_token' }, 'another context fails on a thread too');
});
