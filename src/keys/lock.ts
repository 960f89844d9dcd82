/**
 * A lock between processes on one host: a lock file made with link(), so it always holds its
 * owner's pid, host and a random nonce in full.
 *
 * Rules (why two holders are impossible):
 * - Taking the lock is link(mine, lock): atomic, and it never replaces an existing lock.
 * - A lock is stale when its owner on this host and in this pid namespace is dead, or (owner
 *   elsewhere, or unreadable) when it has not been refreshed for STALE_MS; a holder refreshes it
 *   every STALE_MS / 3.
 * - A lock file is removed only by whoever first creates `<lock>.break.<its nonce>` with link(),
 *   and only after checking, while holding that name, that the lock still has that nonce. Its
 *   owner releases the same way. Nothing else ever renames or removes a lock, so a check and the
 *   removal that follows it can't be interleaved with another removal, and a contender that
 *   judged an old lock stale can never remove a newer one.
 * - A holder checks that the lock is still its own before committing (`verify`), which catches
 *   the one case the rules above allow: a lock judged stale by age while its owner was paused.
 * - A lock file owned by another user is refused, never broken.
 * - Releasing never hides the work done under the lock: a release that fails is retried, then
 *   left (the lock then goes stale only by its owner's death or age).
 */
import { promises as fs } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import { setTimeout as delay } from 'node:timers/promises';
import { FileError, PID_NAMESPACE, PROCESS_TAG, isAlive, myUid, openNoFollow } from './files.js';

/** A lock not refreshed for this long is stale when its owner can't be checked (another host). */
export const STALE_MS = 30_000;
const POLL_MS = 10;
const MAX_BREAK_DEPTH = 4;

interface Owner {
  pid: number;
  host: string;
  /** The owner's pid namespace ('0' when unknown); older locks lack it. */
  ns?: string;
  nonce: string;
}

interface Seen {
  owner: Owner | null;
  /** The nonce, or for an unreadable lock a fingerprint of its inode and time. */
  id: string;
  uid: number;
  age: number;
}

/** The lock a holder has: it can check that the lock is still its own. */
export interface HeldLock {
  /** Throws a FileError when the lock is no longer this holder's. */
  verify(): Promise<void>;
}

async function see(path: string): Promise<Seen | null> {
  const fh = await openNoFollow(path, 'lock');
  if (!fh) return null;
  try {
    const st = await fh.stat();
    const text = st.isFile() && st.size <= 4096 ? await fh.readFile('utf8') : '';
    let owner: Owner | null = null;
    try {
      const o = JSON.parse(text) as Partial<Owner>;
      if (typeof o.pid === 'number' && typeof o.host === 'string' && typeof o.nonce === 'string' && /^[0-9a-f]{16}$/.test(o.nonce)) owner = o as Owner;
    } catch {
      owner = null;
    }
    return { owner, id: owner?.nonce ?? `i${st.ino}-${Math.floor(st.mtimeMs)}-${st.size}`, uid: st.uid, age: Date.now() - st.mtimeMs };
  } finally {
    await fh.close();
  }
}

function isStale(seen: Seen): boolean {
  const { owner } = seen;
  if (owner && owner.host === hostname() && (owner.ns ?? PID_NAMESPACE) === PID_NAMESPACE) return !isAlive(owner.pid);
  return seen.age > STALE_MS;
}

/** Writes a new lock attempt file (full content before anyone can see it as the lock). */
async function attempt(path: string, nonce: string): Promise<string> {
  const file = `${path}.${PROCESS_TAG}.${nonce}`;
  await fs.writeFile(file, JSON.stringify({ pid: process.pid, host: hostname(), ns: PID_NAMESPACE, nonce } satisfies Owner), { mode: 0o600, flag: 'wx' });
  return file;
}

/**
 * Tries to take `path`; true when taken. On EEXIST, breaks the lock when stale (see the rules),
 * refuses one owned by another user, and otherwise reports who holds it.
 */
async function tryTake(path: string, mine: string, depth: number): Promise<{ taken: true } | { taken: false; holder: Seen | null }> {
  try {
    await fs.link(mine, path);
    return { taken: true };
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw new FileError(`cannot create lock ${path} (${(err as NodeJS.ErrnoException).code ?? 'error'})`);
  }
  const seen = await see(path);
  if (!seen) return { taken: false, holder: null };
  if (seen.uid !== myUid() && seen.uid !== 0) {
    throw new FileError(`lock ${path} is owned by uid ${seen.uid}, not by this user: another user made it; remove it once you are sure no crypt process holds it`);
  }
  if (isStale(seen)) await removeIf(path, seen.id, depth);
  return { taken: false, holder: seen };
}

/** Removes the lock `path` if it still has this id, holding `<path>.break.<id>` meanwhile. */
async function removeIf(path: string, id: string, depth: number): Promise<void> {
  if (depth > MAX_BREAK_DEPTH) return;
  const breaker = `${path}.break.${id}`;
  const nonce = randomBytes(8).toString('hex');
  const mine = await attempt(breaker, nonce);
  try {
    const got = await tryTake(breaker, mine, depth + 1);
    if (!got.taken) return;
    try {
      const now = await see(path);
      if (now && now.id === id) await fs.unlink(path);
    } finally {
      await fs.unlink(breaker).catch(() => undefined);
    }
  } finally {
    await fs.rm(mine, { force: true });
  }
}

/**
 * Runs fn while holding the lock file `path`, waiting up to timeoutMs for another holder.
 * A dead holder's lock is broken by the next caller (see the rules at the top).
 */
export async function withLock<T>(path: string, fn: (lock: HeldLock) => Promise<T>, timeoutMs = 10_000): Promise<T> {
  const nonce = randomBytes(8).toString('hex');
  const mine = await attempt(path, nonce);
  const deadline = Date.now() + timeoutMs;
  try {
    for (;;) {
      const got = await tryTake(path, mine, 0);
      if (got.taken) break;
      if (Date.now() > deadline) {
        const owner = got.holder?.owner;
        throw new FileError(`${path} is held by ${owner ? `process ${owner.pid} on ${owner.host}` : 'another process'}; waited ${timeoutMs} ms`);
      }
      await delay(POLL_MS);
    }
  } finally {
    await fs.rm(mine, { force: true });
  }
  const refresh = setInterval(() => {
    const now = new Date();
    fs.utimes(path, now, now).catch(() => undefined);
  }, STALE_MS / 3);
  refresh.unref();
  const held: HeldLock = {
    async verify() {
      const now = await see(path);
      if (now?.id !== nonce) throw new FileError(`lost the lock ${path} to another process (it judged this one stale); nothing was written`);
    },
  };
  try {
    return await fn(held);
  } finally {
    clearInterval(refresh);
    await release(path, nonce);
  }
}

/** Releases a held lock, retrying a failure a few times; never throws (see the rules at the top). */
async function release(path: string, nonce: string): Promise<void> {
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      await removeIf(path, nonce, 0);
      return;
    } catch {
      await delay(POLL_MS * (attempt + 1));
    }
  }
}
