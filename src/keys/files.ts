/**
 * Files that hold secrets (the keyring, the tokens file, the TLS key): checked reads, atomic
 * writes, and watching for changes made by other processes.
 *
 * Rules:
 * - A secret file is opened with O_NOFOLLOW | O_NONBLOCK (a symlink or a FIFO never blocks or
 *   redirects a read) and checked on its descriptor: a regular file, owned by this user or root,
 *   not open to group or others, no larger than a limit; and its directory must not be writable
 *   by group or others (ssh's StrictModes), else another user could swap the file.
 * - A write is temp file (0600) -> write -> fsync -> rename over the target -> fsync of the
 *   directory, so a reader or a crash sees either the old file or the new one, never a mix.
 * - Watching uses inotify on the directory and polling as a fallback; reloads run one at a time
 *   (Serial), so an older read never replaces a newer one.
 */
import { constants, promises as fs, readlinkSync, watch, watchFile, unwatchFile } from 'node:fs';
import type { Stats } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { basename, dirname, join } from 'node:path';

/** An error about a file the operator must fix; its message says how. */
export class FileError extends Error {
  override name = 'FileError';
}

/** The largest secret file read, in bytes (a keyring of 10,000 named keys is about 2 MB). */
export const MAX_SECRET_FILE = 16 * 1024 * 1024;

/** This process's user id (0 where there is none). */
export const myUid = (): number => process.getuid?.() ?? 0;
const octal = (mode: number): string => (mode & 0o7777).toString(8).padStart(4, '0');

/** Throws a FileError unless st is a private regular file of this user (or root). */
function checkSecretStats(st: Stats, path: string, what: string, maxBytes = MAX_SECRET_FILE): void {
  if (!st.isFile()) throw new FileError(`${what} ${path} is not a regular file`);
  const uid = myUid();
  if (st.uid !== uid && st.uid !== 0) throw new FileError(`${what} ${path} is owned by uid ${st.uid}, not by this user (uid ${uid}) or root: run chown ${uid} ${path} if it is yours`);
  if ((st.mode & 0o077) !== 0) throw new FileError(`${what} ${path} has mode ${octal(st.mode)}, open to group or others: run chmod 600 ${path}`);
  if (st.size > maxBytes) throw new FileError(`${what} ${path} is ${st.size} bytes, more than the ${maxBytes} a ${what} may have`);
}

/**
 * Throws a FileError unless no other user can replace path through a directory on the way to it
 * (ssh's StrictModes): its directory and every directory above, with symlinks resolved, owned by
 * this user or root; its directory not writable by group or others; one above only with the
 * sticky bit (as /tmp), which stops others from renaming what isn't theirs.
 */
export async function checkDirectory(path: string, what: string): Promise<void> {
  const uid = myUid();
  let dir = await fs.realpath(dirname(path));
  for (let first = true; ; first = false) {
    const st = await fs.stat(dir);
    if (st.uid !== uid && st.uid !== 0) throw new FileError(`the directory ${dir} above ${what} ${path} is owned by uid ${st.uid}, not by this user or root: another user could replace the file`);
    const writable = (st.mode & 0o022) !== 0;
    if (writable && (first || (st.mode & 0o1000) === 0)) {
      throw new FileError(`the directory ${dir} above ${what} ${path} has mode ${octal(st.mode)}, writable by group or others, who could replace the file: run chmod go-w ${dir}`);
    }
    const parent = dirname(dir);
    if (parent === dir) return;
    dir = parent;
  }
}

/**
 * Opens a file for reading, never through a symbolic link and never blocking on a FIFO; null when
 * it does not exist, a FileError otherwise.
 */
export async function openNoFollow(path: string, what: string): Promise<fs.FileHandle | null> {
  try {
    return await fs.open(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return null;
    if (code === 'ELOOP') throw new FileError(`${what} ${path} is a symbolic link: give the path of the file itself`);
    throw new FileError(`cannot read ${what} ${path} (${code ?? 'error'})`);
  }
}

/**
 * Reads a secret file after every check above; null when it does not exist. The checks run on
 * the open descriptor, so the file checked is the file read.
 */
export async function readSecret(path: string, what: string, maxBytes = MAX_SECRET_FILE): Promise<Buffer | null> {
  const fh = await openNoFollow(path, what);
  if (!fh) return null;
  try {
    const st = await fh.stat();
    checkSecretStats(st, path, what, maxBytes);
    await checkDirectory(path, what);
    let buf = Buffer.alloc(st.size + 4096);
    let size = 0;
    for (;;) {
      if (size === buf.length) {
        if (size > maxBytes) throw new FileError(`${what} ${path} grew past ${maxBytes} bytes while being read`);
        const bigger = Buffer.alloc(Math.min(buf.length * 2, maxBytes + 1));
        buf.copy(bigger);
        buf.fill(0);
        buf = bigger;
      }
      const { bytesRead } = await fh.read(buf, size, buf.length - size, null);
      if (bytesRead === 0) break;
      size += bytesRead;
    }
    if (size > maxBytes) throw new FileError(`${what} ${path} grew past ${maxBytes} bytes while being read`);
    return buf.subarray(0, size);
  } catch (err) {
    if (err instanceof FileError) throw err;
    throw new FileError(`cannot read ${what} ${path} (${(err as NodeJS.ErrnoException).code ?? 'error'})`);
  } finally {
    await fh.close();
  }
}

/**
 * Writes data to path atomically and durably, with mode 0600; `beforeRename` may still veto it.
 * `exclusive`: never over an existing file (EEXIST instead).
 */
export async function writeAtomic(path: string, data: string | Uint8Array, beforeRename?: (() => Promise<void>) | null, exclusive = false): Promise<void> {
  const dir = dirname(path);
  const tmp = join(dir, `.${basename(path)}.${PROCESS_TAG}.${randomBytes(4).toString('hex')}.tmp`);
  const fh = await fs.open(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
  try {
    try {
      await fh.chmod(0o600);
      await fh.writeFile(data);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await beforeRename?.();
    if (exclusive) {
      // link fails with EEXIST where rename would replace
      await fs.link(tmp, path);
      await fs.rm(tmp);
    } else {
      await fs.rename(tmp, path);
    }
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

/**
 * This process's pid namespace (from /proc/self/ns/pid; '0' where there is none): a pid means
 * something only within its namespace, and two containers can share a host name and a volume.
 */
export const PID_NAMESPACE: string = (() => {
  try {
    return /\[(\d+)\]/.exec(readlinkSync('/proc/self/ns/pid'))?.[1] ?? '0';
  } catch {
    return '0';
  }
})();

/** A tag naming this process in file names: its pid and pid namespace. */
export const PROCESS_TAG = `${process.pid}-${PID_NAMESPACE}`;

/** True when a process with this pid exists (EPERM: it exists but is another user's). */
export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Calls onChange when path changes: inotify on its directory for speed, polling every intervalMs
 * for file systems where that doesn't work. Neither holds the process open. Returns the stop function.
 */
export function watchForChanges(path: string, onChange: () => void, intervalMs = 500): () => void {
  const onStat = (curr: Stats, prev: Stats): void => {
    if (curr.mtimeMs !== prev.mtimeMs || curr.ino !== prev.ino || curr.size !== prev.size || curr.mode !== prev.mode || curr.uid !== prev.uid) onChange();
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
