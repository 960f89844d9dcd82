import t from 'tap';
import { promises as fs, statSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { STALE_MS, checkPrivate, removeLeftovers, withLock, writeAtomic } from '../src/files.js';

const deadPid = (): number => spawnSync(process.execPath, ['-e', '0']).pid!;

t.test('writeAtomic writes 0600 and leaves nothing else', async (t) => {
  const dir = t.testdir();
  const file = join(dir, 'f');
  await writeAtomic(file, 'one');
  await writeAtomic(file, 'two');
  t.equal(await fs.readFile(file, 'utf8'), 'two', 'content replaced');
  t.equal(statSync(file).mode & 0o777, 0o600, 'mode 0600');
  t.same(await fs.readdir(dir), ['f'], 'no temp files');
  await t.rejects(writeAtomic(join(dir, 'missing', 'f'), 'x'), { code: 'ENOENT' }, 'a missing directory is an error');
  await fs.mkdir(join(dir, 'd'));
  await t.rejects(writeAtomic(join(dir, 'd'), 'x'), { code: 'EISDIR' }, 'renaming over a directory fails');
  t.same((await fs.readdir(dir)).sort(), ['d', 'f'], 'and cleans its temp file');
});

t.test('checkPrivate', async (t) => {
  const file = join(t.testdir({ f: 'x' }), 'f');
  await fs.chmod(file, 0o604);
  await t.rejects(checkPrivate(file, 'tokens file'), { message: `tokens file ${file} has mode 0604, open to group or others: run chmod 600 ${file}` }, 'others bit');
  await fs.chmod(file, 0o400);
  await t.resolves(checkPrivate(file, 'tokens file'), 'owner-only is fine');
});

t.test('withLock serialises, breaks dead owners, waits for live ones', async (t) => {
  const dir = t.testdir();
  const lock = join(dir, 'k.lock');
  const order: string[] = [];
  await Promise.all([1, 2, 3].map((n) => withLock(lock, async () => {
    order.push(`in${n}`);
    await new Promise((r) => setImmediate(r));
    order.push(`out${n}`);
  })));
  t.same(order.filter((_, i) => i % 2 === 0).map((s) => s.slice(2)), order.filter((_, i) => i % 2 === 1).map((s) => s.slice(3)), 'each holder leaves before the next enters');

  await fs.writeFile(lock, JSON.stringify({ pid: deadPid(), host: hostname(), nonce: 'x' }));
  t.equal(await withLock(lock, async () => 'ran'), 'ran', 'a dead owner\'s lock is broken');

  await fs.writeFile(lock, JSON.stringify({ pid: 1, host: 'elsewhere', nonce: 'x' }));
  const old = new Date(Date.now() - STALE_MS - 1000);
  await fs.utimes(lock, old, old);
  t.equal(await withLock(lock, async () => 'ran'), 'ran', 'an old lock from another host is broken');

  await fs.writeFile(lock, JSON.stringify({ pid: process.pid, host: hostname(), nonce: 'live' }));
  await t.rejects(withLock(lock, async () => 'never', 100), { message: new RegExp(`k\\.lock is held by process ${process.pid} on `) }, 'a live lock is waited for, then reported');
  t.equal(JSON.parse(await fs.readFile(lock, 'utf8')).nonce, 'live', 'and is left alone');
  await fs.rm(lock);
  t.same(await fs.readdir(dir), [], 'no lock attempts are left behind');
});

t.test('removeLeftovers removes only dead writers\' files', async (t) => {
  const dead = deadPid();
  const dir = t.testdir({
    'keyring.json': '{}',
    [`.keyring.json.${dead}.abcd.tmp`]: 'x',
    [`keyring.json.lock.${dead}.abcd`]: 'x',
    [`keyring.json.lock.stale.${dead}.abcd`]: 'x',
    [`.keyring.json.${process.pid}.abcd.tmp`]: 'mine',
    '.other.json.1.abcd.tmp': 'x',
  });
  await removeLeftovers(join(dir, 'keyring.json'));
  t.same((await fs.readdir(dir)).sort(), [`.keyring.json.${process.pid}.abcd.tmp`, '.other.json.1.abcd.tmp', 'keyring.json'].sort(), 'dead writers\' leftovers are gone');
  await t.resolves(removeLeftovers(join(dir, 'missing', 'x')), 'a missing directory is fine');
});
