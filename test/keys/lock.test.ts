import t from 'tap';
import { promises as fs } from 'node:fs';
import { spawn, spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { once } from 'node:events';
import { STALE_MS, withLock } from '../../src/keys/lock.js';
import { tempDir } from '../helpers/server.js';

const deadPid = (): number => spawnSync(process.execPath, ['-e', '0']).pid!;
const owner = (pid: number, host = hostname(), nonce = '0123456789abcdef', ns?: string) => JSON.stringify({ pid, host, nonce, ...(ns ? { ns } : {}) });

t.test('withLock serialises holders in one process', async (t) => {
  const lock = join(tempDir(t), 'k.lock');
  const order: string[] = [];
  await Promise.all([1, 2, 3].map((n) => withLock(lock, async () => {
    order.push(`in${n}`);
    await new Promise((r) => setImmediate(r));
    order.push(`out${n}`);
  })));
  t.same(order.filter((_, i) => i % 2 === 0).map((s) => s.slice(2)), order.filter((_, i) => i % 2 === 1).map((s) => s.slice(3)), 'each holder leaves before the next enters');
  t.same(await fs.readdir(join(lock, '..')), [], 'nothing is left behind');
});

t.test('stale locks are broken; live ones are waited for and never touched', async (t) => {
  const dir = tempDir(t);
  const lock = join(dir, 'k.lock');
  await fs.writeFile(lock, owner(deadPid()));
  t.equal(await withLock(lock, async () => 'ran'), 'ran', "a dead owner's lock is broken");

  await fs.writeFile(lock, owner(1, 'elsewhere'));
  const old = new Date(Date.now() - STALE_MS - 1000);
  await fs.utimes(lock, old, old);
  t.equal(await withLock(lock, async () => 'ran'), 'ran', 'an old lock from another host is broken');

  await fs.writeFile(lock, 'not json');
  await fs.utimes(lock, old, old);
  t.equal(await withLock(lock, async () => 'ran'), 'ran', 'an old unreadable lock is broken');

  await fs.writeFile(lock, owner(process.pid, hostname(), 'feedfeedfeedfeed'));
  await t.rejects(withLock(lock, async () => 'never', 100), { message: new RegExp(`k\\.lock is held by process ${process.pid} on `) }, 'a live lock is waited for, then reported');
  t.equal(JSON.parse(await fs.readFile(lock, 'utf8')).nonce, 'feedfeedfeedfeed', 'and is left alone');
  await fs.writeFile(lock, owner(1, 'elsewhere'));
  await t.rejects(withLock(lock, async () => 'never', 100), { message: /held by process 1 on elsewhere/ }, 'a fresh lock of another host is not stale');
  await fs.writeFile(lock, owner(deadPid(), hostname(), 'cafecafecafecafe', '1'));
  await t.rejects(withLock(lock, async () => 'never', 100), { message: /is held by process/ }, "a fresh lock of another pid namespace is not stale, though its pid is no process here");
  await fs.rm(lock);
  t.same(await fs.readdir(dir), [], 'no lock attempts are left behind');
});

t.test('a lock file owned by another user is refused, never broken', async (t) => {
  const dir = tempDir(t);
  const lock = join(dir, 'k.lock');
  await fs.writeFile(lock, owner(deadPid()));
  await fs.chown(lock, 4242, 4242);
  await t.rejects(withLock(lock, async () => 'never', 100), { message: /lock .*k\.lock is owned by uid 4242, not by this user/ }, 'refused with the reason');
  t.ok((await fs.stat(lock)).uid === 4242, 'and left in place');
});

t.test('the holder can check that the lock is still its own', async (t) => {
  const lock = join(tempDir(t), 'k.lock');
  await withLock(lock, async (held) => {
    await t.resolves(held.verify(), 'verified while held');
    await fs.unlink(lock);
    await fs.writeFile(lock, owner(process.pid, hostname(), 'aaaaaaaaaaaaaaaa'));
    await t.rejects(held.verify(), { message: /lost the lock .*nothing was written/ }, 'a lock taken over is noticed before any commit');
  });
  t.equal(JSON.parse(await fs.readFile(lock, 'utf8')).nonce, 'aaaaaaaaaaaaaaaa', "releasing never removes another holder's lock");
});

t.test('many processes, stale locks and holders killed inside: never two holders, no lost update', async (t) => {
  const dir = tempDir(t);
  const script = fileURLToPath(new URL('../fixtures/lock-contender.mjs', import.meta.url));
  let done = 0;
  let killed = 0;
  const violations: string[] = [];
  for (let round = 0; round < 4; round++) {
    // a stale lock from a dead process for the contenders to break, all at once
    await fs.writeFile(join(dir, 'lock'), owner(deadPid(), hostname(), `dead${String(round).padStart(12, '0')}`));
    const runs = Array.from({ length: 8 }, () => {
      const child = spawn(process.execPath, [script, dir, '6', '0.08'], { stdio: ['ignore', 'pipe', 'inherit'] });
      let out = '';
      child.stdout.on('data', (c: Buffer) => (out += c.toString()));
      return once(child, 'exit').then(([code, signal]) => ({ code, signal, out }));
    });
    for (const r of await Promise.all(runs)) {
      done += r.out.split('\n').filter((l) => l === 'done').length;
      if (r.signal === 'SIGKILL') killed++;
      else if (r.code !== 0) violations.push(`exit ${r.code}: ${r.out.trim()}`);
      violations.push(...r.out.split('\n').filter((l) => l.startsWith('VIOLATION')));
    }
  }
  t.same(violations, [], 'no process ever found another live one inside the lock');
  t.ok(killed > 0, `${killed} holders were killed inside the lock, and their locks broken by others`);
  const counter = Number(await fs.readFile(join(dir, 'counter'), 'utf8'));
  t.equal(counter, done, `every completed increment landed exactly once (${done})`);
});
