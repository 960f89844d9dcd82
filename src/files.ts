/**
 * Secret files on disk: atomic writes, a lock between processes, and the owner-only check.
 *
 * Rules:
 * - A write is temp file (0600) -> write -> fsync -> rename over the target -> fsync of the
 *   directory, so a reader or a crash sees either the old file or the new one, never a mix.
 * - The lock is a file made with link(), so it always holds its owner's pid and host in full.
 *   A lock whose owner is dead (same host) or older than STALE_MS (another host) is broken;
 *   breaking renames it aside first and checks it was the lock judged stale.
 * - Files holding secrets must not be open to group or others, as ssh demands of keys.
 * - Files other processes change (keyring, tokens) are watched with inotify on their directory
 *   and by polling as a fallback; their reloads run one at a time, so an older read never
 *   replaces a newer one.
 */
import { constants, promises as fs, watch, watchFile, unwatchFile } from 'node:fs';
import type { Stats } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { basename, dirname, join } from 'node:path';
import { hostname } from 'node:os';
import { setTimeout as delay } from 'node:timers/promises';

/** A lock older than this is stale when its owner can't be checked (another host). */
export const STALE_MS = 30_000;
const POLL_MS = 20;

/** An error about a file the operator must fix; its message says how. */
export class FileError extends Error {
  override name = 'FileError';
}

/** Throws a FileError when a secret file is open to group or others. */
export async function checkPrivate(path: string, what: string): Promise<void> {
  const st = await fs.stat(path);
  if ((st.mode & 0o077) !== 0) {
    const mode = (st.mode & 0o777).toString(8).padStart(4, '0');
    throw new FileError(`${what} ${path} has mode ${mode}, open to group or others: run chmod 600 ${path}`);
  }
}

/** Writes data to path atomically and durably, with mode 0600. */
export async function writeAtomic(path: string, data: string): Promise<void> {
  const dir = dirname(path);
  const tmp = join(dir, `.${basename(path)}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
  const fh = await fs.open(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o600);
  try {
    try {
      await fh.chmod(0o600);
      await fh.writeFile(data);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await fs.rename(tmp, path);
  } catch (err) {
    await fs.rm(tmp, { force: true });
    throw err;
  }
  await syncDir(dir);
}

async function syncDir(dir: string): Promise<void> {
  const dh = await fs.open(dir, 'r');
  try {
    await dh.sync();
  } finally {
    await dh.close();
  }
}

interface LockOwner {
  pid: number;
  host: string;
  nonce: string;
}

const isAlive = (pid: number): boolean => {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
};

async function readOwner(path: string): Promise<{ owner: LockOwner | null; ino: number; age: number } | null> {
  try {
    const [text, st] = await Promise.all([fs.readFile(path, 'utf8'), fs.stat(path)]);
    let owner: LockOwner | null = null;
    try {
      owner = JSON.parse(text) as LockOwner;
    } catch {
      owner = null;
    }
    return { owner, ino: st.ino, age: Date.now() - st.mtimeMs };
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
}

function isStale(info: { owner: LockOwner | null; age: number }): boolean {
  const { owner, age } = info;
  if (owner && owner.host === hostname() && typeof owner.pid === 'number') return !isAlive(owner.pid);
  return age > STALE_MS;
}

/** Removes a stale lock; if another process replaced it meanwhile, puts that one back. */
async function breakLock(path: string, staleIno: number): Promise<void> {
  const aside = `${path}.stale.${process.pid}.${randomBytes(4).toString('hex')}`;
  try {
    await fs.rename(path, aside);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw err;
  }
  const st = await fs.stat(aside);
  if (st.ino !== staleIno) await fs.link(aside, path).catch(() => undefined);
  await fs.rm(aside, { force: true });
}

/**
 * Runs fn while holding the lock file `path`, waiting up to timeoutMs for another holder.
 * The lock survives nothing but its owner: a dead owner's lock is broken by the next caller.
 */
export async function withLock<T>(path: string, fn: () => Promise<T>, timeoutMs = 10_000): Promise<T> {
  const nonce = randomBytes(8).toString('hex');
  const mine = `${path}.${process.pid}.${nonce}`;
  await fs.writeFile(mine, JSON.stringify({ pid: process.pid, host: hostname(), nonce } satisfies LockOwner), { mode: 0o600 });
  const deadline = Date.now() + timeoutMs;
  try {
    for (;;) {
      try {
        await fs.link(mine, path);
        break;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      }
      const info = await readOwner(path);
      if (!info) continue;
      if (isStale(info)) {
        await breakLock(path, info.ino);
        continue;
      }
      if (Date.now() > deadline) {
        const who = info.owner ? `process ${info.owner.pid} on ${info.owner.host}` : 'another process';
        throw new FileError(`${path} is held by ${who}; waited ${timeoutMs} ms`);
      }
      await delay(POLL_MS);
    }
  } finally {
    await fs.rm(mine, { force: true });
  }
  try {
    return await fn();
  } finally {
    const info = await readOwner(path);
    if (info?.owner?.nonce === nonce) await fs.rm(path, { force: true });
  }
}

/** Removes what a killed writer left beside path: temp files and lock attempts of dead pids. */
export async function removeLeftovers(path: string): Promise<void> {
  const dir = dirname(path);
  const base = basename(path);
  let names: string[];
  try {
    names = await fs.readdir(dir);
  } catch {
    return;
  }
  const pidOf = (name: string): number => {
    const m = new RegExp(`^(?:\\.${escape(base)}\\.|${escape(base)}\\.lock\\.(?:stale\\.)?)(\\d+)\\.[0-9a-f]+(?:\\.tmp)?$`).exec(name);
    return m ? Number(m[1]) : NaN;
  };
  const stale = names.filter((n) => {
    const pid = pidOf(n);
    return Number.isInteger(pid) && pid !== process.pid && !isAlive(pid);
  });
  await Promise.all(stale.map((n) => fs.rm(join(dir, n), { force: true })));
}

const escape = (s: string): string => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/**
 * Calls onChange when path changes: inotify on its directory for speed, polling every intervalMs
 * for file systems where that doesn't work. Neither holds the process open. Returns the stop function.
 */
export function watchForChanges(path: string, onChange: () => void, intervalMs = 500): () => void {
  const onStat = (curr: Stats, prev: Stats): void => {
    if (curr.mtimeMs !== prev.mtimeMs || curr.ino !== prev.ino || curr.size !== prev.size || curr.mode !== prev.mode) onChange();
  };
  watchFile(path, { interval: intervalMs, persistent: false }, onStat);
  const name = basename(path);
  let dir: ReturnType<typeof watch> | null = null;
  try {
    dir = watch(dirname(path), { persistent: false }, (_event, changed) => {
      if (changed === null || changed === name) onChange();
    });
    dir.on('error', () => dir?.close());
  } catch {
    dir = null;
  }
  return () => {
    unwatchFile(path, onStat);
    dir?.close();
  };
}

/** Runs asynchronous tasks one at a time, in the order they were given. */
export class Serial {
  #queue: Promise<unknown> = Promise.resolve();

  run<T>(task: () => Promise<T>): Promise<T> {
    const run = this.#queue.then(task, task);
    this.#queue = run.catch(() => undefined);
    return run;
  }

  /** A function that queues task unless a run of it is already waiting (bursts of events coalesce). */
  coalesced(task: () => Promise<void>): () => Promise<void> {
    let waiting = false;
    return () => {
      if (waiting) return Promise.resolve();
      waiting = true;
      return this.run(() => {
        waiting = false;
        return task();
      });
    };
  }
}
