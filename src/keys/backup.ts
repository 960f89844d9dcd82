/**
 * Backups of one named key: every version, in a file of its own.
 *
 * Rules:
 * - A backup is written like the keyring (0600, atomically) and never over an existing file.
 * - Only an exportable key may be backed up: a backup is the key material, as `gk` is.
 * - Reading one checks the file as a secret file and validates every byte (the key's name,
 *   settings, and every version with its id); nothing half-valid is ever restored.
 */
import { CryptError } from '../core/errors.js';
import { FileError, checkDirectory, readSecret, writeAtomic } from './files.js';
import { KeySet } from './keyring.js';

const FORMAT = 'crypt-key-backup/1';

/** Writes every version of an exportable key to a new file. */
export async function writeBackup(set: KeySet, file: string): Promise<void> {
  if (!set.settings.exportable) throw new CryptError('forbidden', `key ${set.name} is not exportable, so it can't be backed up: allow it first with crypt-server keys config ${set.name} --exportable true`);
  // as a restore will check it: a backup never written where it can't be read back
  try {
    await checkDirectory(file, 'backup');
    await writeAtomic(file, JSON.stringify({ format: FORMAT, key: set.toJson() }, null, 2) + '\n', null, true);
  } catch (err) {
    if (err instanceof FileError) throw err;
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EEXIST') throw new FileError(`${file} exists already: give a new file, a backup never replaces one`);
    throw new FileError(`cannot write ${file} (${code ?? 'error'})`);
  }
}

/** Reads and validates a backup. */
export async function readBackup(file: string): Promise<KeySet> {
  const bytes = await readSecret(file, 'backup');
  if (bytes === null) throw new FileError(`backup ${file} does not exist`);
  let doc: { format?: unknown; key?: unknown };
  try {
    doc = JSON.parse(bytes.toString('utf8')) as typeof doc;
  } catch {
    throw new FileError(`backup ${file} is not valid JSON`);
  } finally {
    bytes.fill(0);
  }
  if (typeof doc !== 'object' || doc === null || doc.format !== FORMAT || Object.keys(doc).length !== 2) throw new FileError(`${file} is not a key backup: expected {"format": "${FORMAT}", "key": {...}}`);
  try {
    return KeySet.fromJson(doc.key, 'the key');
  } catch (err) {
    throw new FileError(`backup ${file} is not valid: ${(err as Error).message}; nothing was restored`);
  }
}
