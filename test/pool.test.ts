import t from 'tap';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { CryptoPool, OFFLOAD_BYTES, defaultThreads } from '../src/pool.js';
import { Keyring } from '../src/keyring.js';
import { decrypt } from '../src/fernet.js';
import { tempDir } from './helpers/server.js';

t.test('large payloads round-trip through worker threads with the keys in force', async (t) => {
  const { keyring } = await Keyring.open({ file: join(tempDir(t), 'k.json') });
  const pool = new CryptoPool(2, keyring.current);
  t.teardown(() => pool.close());
  t.equal(pool.threads, 0, 'no thread before the first job');
  const m = randomBytes(OFFLOAD_BYTES + 1);
  const token = await pool.encrypt(m);
  t.ok(decrypt(keyring.current.decrypting, token).plaintext.equals(m), 'the main thread decrypts a thread token');
  const back = await pool.decrypt(token, undefined);
  t.ok(back.plaintext.equals(m), 'and a thread decrypts it back');
  t.ok(Math.abs(back.timestamp - Date.now() / 1000) < 5, 'with its timestamp');
  t.ok((await pool.decrypt(Buffer.from(token, 'latin1'), 3600)).plaintext.equals(m), 'a token as bytes, with a ttl');
  const many = await Promise.all(Array.from({ length: 8 }, (_, i) => pool.encrypt(Buffer.alloc(OFFLOAD_BYTES, i))));
  t.ok(pool.threads >= 1 && pool.threads <= 2, `${pool.threads} thread(s), never more than the pool size`);
  many.forEach((tok, i) => t.ok(decrypt(keyring.current.decrypting, tok).plaintext.equals(Buffer.alloc(OFFLOAD_BYTES, i)), `parallel job ${i} is right`));
  await t.rejects(pool.decrypt('not-a-token', undefined), { code: 'invalid_token', message: 'invalid token' }, 'errors keep their catalogue code');
  t.ok(defaultThreads() >= 1 && defaultThreads(64) === 1, 'thread count follows the cores and the processes');
});

t.test('a key change reaches the threads before any later job', async (t) => {
  const { keyring } = await Keyring.open({ file: join(tempDir(t), 'k.json') });
  const pool = new CryptoPool(1, keyring.current);
  t.teardown(() => pool.close());
  const m = randomBytes(OFFLOAD_BYTES);
  const oldToken = await pool.encrypt(m);
  const oldId = keyring.current.primary.id;
  const rotated = await keyring.update((s) => s.rotated());
  pool.updateKeys(rotated);
  const newToken = await pool.encrypt(m);
  t.ok(decrypt([rotated.primary], newToken), 'the next job encrypts under the new primary');
  const rewrapped = await pool.rewrap(oldToken);
  t.equal(decrypt([rotated.primary], rewrapped).timestamp, decrypt(rotated.decrypting, oldToken).timestamp, 'rewrap keeps the timestamp');
  pool.updateKeys(await keyring.update((s) => s.withState(oldId, 'retired')));
  await t.rejects(pool.decrypt(oldToken, undefined), { code: 'invalid_token' }, 'a retired key stops decrypting in the threads too');
});

t.test('a thread that dies fails its jobs with internal; the next job gets a new thread', async (t) => {
  const { keyring } = await Keyring.open({ file: join(tempDir(t), 'k.json') });
  // the real worker, except that a 3-byte job kills its thread
  const pool = new CryptoPool(1, keyring.current, new URL('./fixtures/crash-worker.ts', import.meta.url));
  t.teardown(() => pool.close());
  t.ok(await pool.encrypt(Buffer.alloc(OFFLOAD_BYTES)), 'a first job works');
  await t.rejects(pool.encrypt(Buffer.from('die')), { code: 'internal', message: 'internal error' }, 'the job whose thread dies fails with internal');
  t.equal(pool.threads, 0, 'the dead thread is gone');
  const token = await pool.encrypt(Buffer.alloc(OFFLOAD_BYTES, 1));
  t.ok(decrypt(keyring.current.decrypting, token).plaintext.equals(Buffer.alloc(OFFLOAD_BYTES, 1)), 'the next job runs on a new thread');
  await pool.close();
  await t.rejects(pool.encrypt(Buffer.alloc(OFFLOAD_BYTES)), { code: 'internal', message: 'shutting down' }, 'a closed pool refuses jobs');
});
