import t from 'tap';
import { promises as fs, statSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { FileError, PID_NAMESPACE, checkDirectory, readSecret, writeAtomic } from '../../src/keys/files.js';
import { removeLeftovers } from '../../src/keys/store.js';
import { tempDir } from '../helpers/server.js';

const deadPid = (): number => spawnSync(process.execPath, ['-e', '0']).pid!;
const ns = PID_NAMESPACE;

t.test('writeAtomic writes 0600 and leaves nothing else', async (t) => {
  const dir = tempDir(t);
  const file = join(dir, 'f');
  await writeAtomic(file, 'one');
  await writeAtomic(file, 'two');
  t.equal(await fs.readFile(file, 'utf8'), 'two', 'content replaced');
  t.equal(statSync(file).mode & 0o777, 0o600, 'mode 0600');
  t.same(await fs.readdir(dir), ['f'], 'no temp files');
  await t.rejects(writeAtomic(join(dir, 'missing', 'f'), 'x'), { code: 'ENOENT' }, 'a missing directory is an error');
  await fs.mkdir(join(dir, 'd'));
  await t.rejects(writeAtomic(join(dir, 'd'), 'x'), { code: 'EISDIR' }, 'renaming over a directory fails');
  await t.rejects(writeAtomic(file, 'three', async () => { throw new FileError('vetoed'); }), { message: 'vetoed' }, 'the last check before the rename can veto it');
  t.equal(await fs.readFile(file, 'utf8'), 'two', 'and then nothing changed');
  t.same((await fs.readdir(dir)).sort(), ['d', 'f'], 'and the temp files are gone');
});

t.test('readSecret checks the file it reads: type, owner, mode, size, directory', async (t) => {
  const dir = tempDir(t);
  const file = join(dir, 'secret');
  await fs.writeFile(file, 'top secret', { mode: 0o600 });
  t.equal((await readSecret(file, 'keyring'))?.toString(), 'top secret', 'a private file reads');
  t.equal(await readSecret(join(dir, 'missing'), 'keyring'), null, 'a missing file is null');

  await fs.chmod(file, 0o604);
  await t.rejects(readSecret(file, 'tokens file'), { message: `tokens file ${file} has mode 0604, open to group or others: run chmod 600 ${file}` }, 'open to others');
  await fs.chmod(file, 0o600);

  await fs.chown(file, 4242, 4242);
  await t.rejects(readSecret(file, 'keyring'), { message: new RegExp(`keyring ${file} is owned by uid 4242, not by this user`) }, 'owned by another user');
  await fs.chown(file, process.getuid!(), process.getgid!());

  const link = join(dir, 'link');
  await fs.symlink(file, link);
  await t.rejects(readSecret(link, 'keyring'), { message: `keyring ${link} is a symbolic link: give the path of the file itself` }, 'a symlink is not followed');

  const fifo = join(dir, 'fifo');
  spawnSync('mkfifo', ['-m', '600', fifo]);
  await t.rejects(readSecret(fifo, 'keyring'), { message: `keyring ${fifo} is not a regular file` }, 'a FIFO is refused without blocking');

  await t.rejects(readSecret('/dev/zero', 'keyring'), { message: /is not a regular file|owned by|mode/ }, '/dev/zero is refused, never read');

  await fs.writeFile(file, 'x'.repeat(2000));
  await t.rejects(readSecret(file, 'keyring', 1000), { message: /is 2000 bytes, more than the 1000 a keyring may have/ }, 'too large');

  await fs.chmod(dir, 0o777);
  t.teardown(() => fs.chmod(dir, 0o700));
  await t.rejects(readSecret(file, 'keyring', 4000), { message: new RegExp(`the directory ${dir} above keyring .* has mode 0777, writable by group or others, who could replace the file: run chmod go-w ${dir}`) }, 'a directory others can write to');
  await fs.chmod(dir, 0o1777);
  await t.rejects(checkDirectory(file, 'keyring'), { message: /mode 1777, writable by group or others/ }, 'even with the sticky bit, for the directory the file is in');
  await fs.chmod(dir, 0o755);
  await t.resolves(checkDirectory(file, 'keyring'), '0755 is fine');
  // a directory above: writable by others only with the sticky bit (as /tmp)
  const sub = join(dir, 'sub');
  await fs.mkdir(sub, { mode: 0o700 });
  await fs.writeFile(join(sub, 'k'), 'x', { mode: 0o600 });
  await fs.chmod(dir, 0o777);
  await t.rejects(checkDirectory(join(sub, 'k'), 'keyring'), { message: new RegExp(`the directory ${dir} above keyring .* has mode 0777`) }, 'a directory above that others can write to, without the sticky bit');
  await fs.chmod(dir, 0o1777);
  await t.resolves(checkDirectory(join(sub, 'k'), 'keyring'), 'with the sticky bit, a directory above is fine');
  await fs.chown(dir, 4242, 4242);
  await t.rejects(checkDirectory(join(sub, 'k'), 'keyring'), { message: /is owned by uid 4242, not by this user or root/ }, 'a directory above owned by another user is not');
  await fs.chown(dir, process.getuid!(), process.getgid!());
  await fs.chmod(dir, 0o700);
  const viaLink = join(tempDir(t), 'link');
  await fs.symlink(sub, viaLink);
  await t.resolves(checkDirectory(join(viaLink, 'k'), 'keyring'), 'symlinks on the way are resolved before the check');
});

t.test("removeLeftovers removes only dead writers' files", async (t) => {
  const dead = deadPid();
  const dir = tempDir(t);
  const names = {
    'keyring.json': '{}',
    [`.keyring.json.${dead}-${ns}.abcd.tmp`]: 'x',
    [`keyring.json.lock.${dead}-${ns}.0123456789abcdef`]: 'x',
    [`keyring.json.lock.break.0123456789abcdef.${dead}-${ns}.fedcba9876543210`]: 'x',
    [`.keyring.json.${process.pid}-${ns}.abcd.tmp`]: 'mine',
    [`.keyring.json.${dead}-1.abcd.tmp`]: 'another pid namespace: its pid means nothing here',
    'keyring.json.lock': 'a lock is left to the lock',
    [`.other.json.1-${ns}.abcd.tmp`]: 'x',
  };
  for (const [name, text] of Object.entries(names)) await fs.writeFile(join(dir, name), text);
  await removeLeftovers(join(dir, 'keyring.json'));
  t.same((await fs.readdir(dir)).sort(), [`.keyring.json.${process.pid}-${ns}.abcd.tmp`, `.keyring.json.${dead}-1.abcd.tmp`, `.other.json.1-${ns}.abcd.tmp`, 'keyring.json', 'keyring.json.lock'].sort(), "dead writers' leftovers are gone, and only theirs");
  await t.resolves(removeLeftovers(join(dir, 'missing', 'x')), 'a missing directory is fine');
});
