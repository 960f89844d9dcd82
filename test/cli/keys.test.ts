// crypt-server keys ... for named keys, in process (run(argv, io)) on a keyring file: create,
// list, show, config, rotate <name>, retire, activate, delete, backup and restore; and
// crypt-client's --key and --context end to end.
import t from 'tap';
import type { Test } from 'tap';
import { promises as fs, statSync } from 'node:fs';
import { join } from 'node:path';
import { run as serverRun } from '../../src/cli/server.js';
import { run as clientRun } from '../../src/cli/client.js';
import { memoryIo } from '../helpers/cli.js';
import { start, tempDir } from '../helpers/server.js';
import { KeyBook, Keyring } from '../../src/keys/keyring.js';
import { FernetKey, decrypt } from '../../src/crypto/fernet.js';

/** A keyring made with keys init, and `keys <args> --keyring <it>` in process. */
async function keyring(t: Test) {
  const dir = tempDir(t);
  const file = join(dir, 'keyring.json');
  const keys = async (...args: string[]) => {
    const io = memoryIo({ env: {}, cwd: dir });
    const code = await serverRun(['keys', ...args, '--keyring', file], io);
    return { code, out: io.out().toString(), err: io.err() };
  };
  const init = await keys('init');
  if (init.code !== 0) throw new Error(`keys init failed: ${init.err}`);
  const book = async () => KeyBook.parse(await fs.readFile(file, 'utf8'));
  return { dir, file, keys, book };
}

t.test('create, list, show: named keys with their settings', async (t) => {
  const { keys, book } = await keyring(t);
  const billing = await keys('create', 'billing');
  t.equal(billing.code, 0, 'create billing: exit 0');
  t.equal(billing.out, `created: billing, primary version ${(await book()).key('billing').details().primary}\n`, 'names the new primary version');
  t.match((await keys('create', 'users', '--derived')).out, /^created: users \(derived: requests bring a context\), primary version [0-9a-f]{12}\n$/, 'create --derived');
  t.match((await keys('create', 'exports', '--exportable')).out, /^created: exports, exportable, primary version [0-9a-f]{12}\n$/, 'create --exportable');
  t.match((await book()).key('exports').details(), { derived: false, exportable: true, deletion_allowed: false, auto_rotate: null }, 'as saved');
  t.match((await book()).key('users').details(), { derived: true, exportable: false }, 'users is derived and not exportable');
  const twice = await keys('create', 'billing');
  t.same([twice.code, twice.err], [1, 'crypt-server: a key named billing exists already\n'], 'a name is taken once: exit 1');
  const noName = await keys('create');
  t.same([noName.code, noName.err], [2, 'crypt-server: keys create needs a key name: see crypt-server keys list\n'], 'create without a name: exit 2');

  for (const bad of ['Billing', 'bad#name', '.hidden', 'a'.repeat(65)]) {
    const r = await keys('create', bad);
    t.same([r.code, r.err], [1, "crypt-server: a key name is 1 to 64 of a-z, 0-9, '.', '_' and '-', starting with a letter or digit\n"], `create ${JSON.stringify(bad)}: refused, exit 1`);
  }
  t.equal((await keys('create', '')).code, 2, 'create "": a usage error');
  t.same((await book()).keys().map((k) => k.name), ['billing', 'default', 'exports', 'users'], 'no bad name made it into the keyring, which still loads');

  const list = await keys('list');
  const ids = Object.fromEntries((await book()).keys().map((k) => [k.name, k.details().primary]));
  t.equal(list.out, [
    'NAME     DERIVED  EXPORTABLE  AUTO-ROTATE  PRIMARY       VERSIONS',
    `billing  no       no          off          ${ids.billing}  1`,
    `default  no       yes         off          ${ids.default}  1`,
    `exports  no       yes         off          ${ids.exports}  1`,
    `users    yes      no          off          ${ids.users}  1`,
  ].join('\n') + '\n', 'list: a table of every key, by name');
  t.same(JSON.parse((await keys('list', '--json')).out), { key: 'default', keys: (await book()).key('default').info(), named_keys: (await book()).keys().map((k) => k.details()) }, 'list --json: every key as JSON, as ki answers');
  const show = await keys('show', 'users');
  t.match(show.out, new RegExp(`^key users: derived, not exportable, deletion not allowed, automatic rotation off\\nID {12}STATE {4}CREATED\\n${ids.users}  primary  \\d{4}-\\d\\d-\\d\\dT[\\d:.]+Z\\n$`), 'show: settings, then its versions');
  t.same(JSON.parse((await keys('show', 'users', '--json')).out), (await book()).key('users').details(), 'show --json');
  const unknown = await keys('show', 'nosuch');
  t.same([unknown.code, unknown.err], [1, 'crypt-server: no key named nosuch\n'], 'show of an unknown key: exit 1');
});

t.test('config, rotate <name>, retire and activate work on one key', async (t) => {
  const { keys, book, file } = await keyring(t);
  await keys('create', 'billing');
  const configured = await keys('config', 'billing', '--exportable', 'true', '--auto-rotate', '30d');
  t.same([configured.code, configured.out], [0, 'configured: billing: exportable, deletion not allowed, automatic rotation 30d\n'], 'config --exportable true --auto-rotate 30d');
  t.match((await book()).key('billing').details(), { exportable: true, auto_rotate: 30 * 86_400 }, 'saved');
  t.equal((await keys('config', 'billing', '--auto-rotate', '36h')).out, 'configured: billing: exportable, deletion not allowed, automatic rotation 36h\n', 'a period in hours');
  t.equal((await keys('config', 'billing', '--auto-rotate', 'off', '--deletion-allowed', 'true')).out, 'configured: billing: exportable, deletion allowed, automatic rotation off\n', 'off, and deletion allowed');
  const unchanged = await fs.readFile(file, 'utf8');
  const refusals: Array<[string[], number, string]> = [
    [['config', 'billing'], 1, 'crypt-server: nothing to change: give exportable, deletion_allowed or auto_rotate\n'],
    [['config', 'billing', '--auto-rotate', '5m'], 2, 'crypt-server: --auto-rotate must be off or a period of at least 1h (3600, 24h, 30d)\n'],
    [['config', 'billing', '--exportable', 'maybe'], 2, 'crypt-server: --exportable must be true or false\n'],
    [['config', 'nosuch', '--exportable', 'true'], 1, 'crypt-server: no key named nosuch\n'],
    [['config'], 2, 'crypt-server: keys config needs a key name: see crypt-server keys list\n'],
  ];
  for (const [args, code, err] of refusals) {
    const r = await keys(...args);
    t.same([r.code, r.err], [code, err], `${args.join(' ')}: refused with exit ${code}`);
  }
  t.equal(await fs.readFile(file, 'utf8'), unchanged, 'the refusals changed nothing');

  const defaultBefore = (await book()).key('default').details();
  const first = (await book()).key('billing').details().primary;
  const oldToken = (await book()).key('billing').primary.encrypt(Buffer.from('billing, first version'));
  const rotated = await keys('rotate', 'billing');
  const newId = /^rotated billing: ([0-9a-f]{12}) is the new primary version\n$/.exec(rotated.out)?.[1];
  t.ok(newId, 'rotate billing names its new primary');
  t.same((await book()).key('billing').details().versions.map((v) => [v.id, v.state]), [[newId, 'primary'], [first, 'active']], 'billing: new primary, old active');
  t.same((await book()).key('default').details(), defaultBefore, 'default untouched');
  t.match((await keys('rotate')).out, /^rotated default: [0-9a-f]{12} is the new primary version\n$/, 'rotate without a name rotates default');
  t.equal((await book()).key('billing').details().primary, newId, 'and not billing');
  t.same([(await keys('rotate', 'nosuch')).code], [1], 'rotate of an unknown key: exit 1');

  const retired = await keys('retire', first);
  t.same([retired.code, retired.out], [0, `retired: ${first} (key billing)\n`], 'retire finds the key the version belongs to');
  const afterRetire = (await book()).key('billing');
  t.same(afterRetire.details().versions.map((v) => v.state), ['primary', 'retired'], 'the old version is retired, and kept');
  t.throws(() => decrypt(afterRetire.decrypting, oldToken), { code: 'invalid_token' }, 'its tokens no longer decrypt');
  t.same([(await keys('retire', newId!)).err], [`crypt-server: key ${newId} is the primary key: rotate first, then retire it\n`], 'the primary of a named key cannot be retired');
  const activated = await keys('activate', first);
  t.same([activated.code, activated.out], [0, `activated: ${first} (key billing)\n`], 'activate');
  t.equal(decrypt((await book()).key('billing').decrypting, oldToken).plaintext.toString(), 'billing, first version', 'its tokens decrypt again');
});

t.test('delete needs deletion_allowed and --yes', async (t) => {
  const { keys, book, file } = await keyring(t);
  await keys('create', 'old');
  const before = await fs.readFile(file, 'utf8');
  const notAllowed = await keys('delete', 'old', '--yes');
  t.same([notAllowed.code, notAllowed.err], [1, 'crypt-server: key old may not be deleted: allow it first with crypt-server keys config old --deletion-allowed true\n'], 'without deletion_allowed: exit 1, with the fix');
  await keys('config', 'old', '--deletion-allowed', 'true');
  const unconfirmed = await keys('delete', 'old');
  t.same([unconfirmed.code, unconfirmed.err], [1, 'crypt-server: deleting key old makes every token made with it undecryptable, for good: confirm it (confirm=true, --yes)\n'], 'without --yes: exit 1');
  t.ok((await book()).get('old'), 'still there');
  t.not(await fs.readFile(file, 'utf8'), before, '(the config was saved)');
  const deleted = await keys('delete', 'old', '--yes');
  t.same([deleted.code, deleted.out], [0, 'deleted: old\n'], 'delete --yes: gone');
  t.equal((await book()).get('old'), undefined, 'from the file');
  const def = await keys('delete', 'default', '--yes');
  t.same([def.code, def.err], [1, "crypt-server: the key default can't be deleted: requests without a key name use it\n"], 'default is never deleted');
});

t.test('backup: an exportable key only, 0600, never over an existing file', async (t) => {
  const { keys, dir } = await keyring(t);
  await keys('create', 'secret');
  const out = join(dir, 'secret.backup');
  const refused = await keys('backup', 'secret', '-o', out);
  t.same([refused.code, refused.err], [1, "crypt-server: key secret is not exportable, so it can't be backed up: allow it first with crypt-server keys config secret --exportable true\n"], 'a key that is not exportable: exit 1');
  await t.rejects(fs.stat(out), { code: 'ENOENT' }, 'and no file is written');
  const noFile = await keys('backup', 'secret');
  t.same([noFile.code, noFile.err], [2, 'crypt-server: keys backup needs a file to write: -o <file>\n'], 'without -o: exit 2');
  await keys('config', 'secret', '--exportable', 'true');
  await keys('rotate', 'secret');
  const done = await keys('backup', 'secret', '-o', out);
  t.same([done.code, done.out], [0, `backed up secret (2 versions) to ${out}: keep it as private as the keyring\n`], 'backup -o: exit 0');
  t.equal(statSync(out).mode & 0o777, 0o600, 'the backup is 0600');
  const doc = JSON.parse(await fs.readFile(out, 'utf8')) as { format: string; key: { name: string; versions: unknown[] } };
  t.same([doc.format, doc.key.name, doc.key.versions.length], ['crypt-key-backup/1', 'secret', 2], 'a key backup of every version');
  const bytes = await fs.readFile(out);
  const again = await keys('backup', 'secret', '-o', out);
  t.same([again.code, again.err], [1, `crypt-server: ${out} exists already: give a new file, a backup never replaces one\n`], 'over an existing file: exit 1');
  t.ok((await fs.readFile(out)).equals(bytes), 'the existing file is unchanged');
  const other = join(dir, 'unrelated');
  await fs.writeFile(other, 'precious', { mode: 0o600 });
  t.equal((await keys('backup', 'secret', '-o', other)).code, 1, 'not over an unrelated file either');
  t.equal(await fs.readFile(other, 'utf8'), 'precious', 'which is unchanged');
  t.same((await fs.readdir(dir)).filter((n) => n.endsWith('.tmp')), [], 'no temp file is left');
});

t.test('restore: refuses an existing name unless --force, validates every byte, brings deleted tokens back', async (t) => {
  const { keys, book, file, dir } = await keyring(t);
  await keys('create', 'archive', '--exportable');
  const tokens: string[] = [(await book()).key('archive').primary.encrypt(Buffer.from('archived 1'))];
  await keys('rotate', 'archive');
  tokens.push((await book()).key('archive').primary.encrypt(Buffer.from('archived 2')));
  const backup = join(dir, 'archive.backup');
  t.equal((await keys('backup', 'archive', '-o', backup)).code, 0, 'backed up');
  const versions = (await book()).key('archive').details().versions;

  const before = await fs.readFile(file, 'utf8');
  const exists = await keys('restore', backup);
  t.same([exists.code, exists.err], [1, 'crypt-server: a key named archive exists already: restore with --force to replace it\n'], 'an existing name: exit 1');
  t.equal(await fs.readFile(file, 'utf8'), before, 'the keyring is unchanged');
  await keys('rotate', 'archive');
  const forced = await keys('restore', backup, '--force');
  t.same([forced.code, forced.out], [0, 'restored: archive (2 versions)\n'], 'restore --force replaces it');
  t.same((await book()).key('archive').details().versions, versions, 'with the versions of the backup');

  const doc = JSON.parse(await fs.readFile(backup, 'utf8')) as { format: string; key: { versions: Array<Record<string, unknown>> } & Record<string, unknown> };
  const stranger = FernetKey.generate();
  const variant = (change: (d: typeof doc) => unknown) => {
    const copy = structuredClone(doc);
    return JSON.stringify(change(copy) ?? copy);
  };
  const cases: Array<[string, string, RegExp, number?]> = [
    ['corrupt JSON', '{"format": "crypt-key-backup/1", "key": {', /is not valid JSON\n$/],
    ['the wrong format', variant((d) => ({ ...d, format: 'crypt-keyring/2' })), /is not a key backup: expected \{"format": "crypt-key-backup\/1", "key": \{\.\.\.\}\}\n$/],
    ['a keyring instead of a backup', before, /is not a key backup/],
    ['an extra top-level field', variant((d) => ({ ...d, note: 'x' })), /is not a key backup/],
    ['an unknown field in the key', variant((d) => void (d.key.colour = 'blue')), /is not valid: the key \(archive\): unknown field "colour"; nothing was restored\n$/],
    ['an unknown field in a version', variant((d) => void (d.key.versions[1]!.note = 'x')), /is not valid: the key \(archive\), version 2: unknown field "note"; nothing was restored\n$/],
    ['a version whose id does not match its key', variant((d) => void (d.key.versions[1]!.key = stranger.export())), /is not valid: the key \(archive\), version 2: "id" does not match its key \(expected [0-9a-f]{12}\); nothing was restored\n$/],
    ['a bad name', variant((d) => void (d.key.name = 'Archive!')), /is not valid: the key: "name" must match/],
    ['two primaries', variant((d) => void (d.key.versions[1]!.state = 'primary')), /is not valid: key archive needs exactly one primary version, found 2; nothing was restored\n$/],
    ['a bad flag', variant((d) => void (d.key.exportable = 'yes')), /"exportable" must be true or false/],
    ['auto_rotate below an hour', variant((d) => void (d.key.auto_rotate = 60)), /"auto_rotate" must be null or a whole number of seconds, 3600 or more/],
    ['a loose-mode file', JSON.stringify(doc), /has mode 0644, open to group or others: run chmod 600/, 0o644],
  ];
  await keys('config', 'archive', '--deletion-allowed', 'true');
  await keys('delete', 'archive', '--yes');
  const afterDelete = await fs.readFile(file, 'utf8');
  for (const [what, text, message, mode] of cases) {
    const bad = join(dir, `bad-${what.replace(/\W+/g, '-')}`);
    await fs.writeFile(bad, text, { mode: mode ?? 0o600 });
    await fs.chmod(bad, mode ?? 0o600);
    const r = await keys('restore', bad, '--force');
    t.equal(r.code, 1, `${what}: exit 1`);
    t.match(r.err, message, `${what}: says what is wrong`);
    t.notMatch(r.err, stranger.export().slice(0, 16), `${what}: and shows no key`);
    t.equal(await fs.readFile(file, 'utf8'), afterDelete, `${what}: the keyring is unchanged`);
  }
  const missing = await keys('restore', join(dir, 'nope'));
  t.same([missing.code, missing.err], [1, `crypt-server: backup ${join(dir, 'nope')} does not exist\n`], 'a missing backup: exit 1');

  t.equal((await book()).get('archive'), undefined, 'archive is deleted');
  const restored = await keys('restore', backup);
  t.same([restored.code, restored.out], [0, 'restored: archive (2 versions)\n'], 'restoring a deleted key needs no --force');
  const { keyring: loaded } = await Keyring.open({ file });
  t.same(tokens.map((tok) => decrypt(loaded.book.key('archive').decrypting, tok).plaintext.toString()), ['archived 1', 'archived 2'], 'tokens made before the deletion decrypt after the restore');
});

t.test('restore refuses a backup whose versions belong to another key, and a derived default', async (t) => {
  const { keys, book, file, dir } = await keyring(t);
  await keys('create', 'archive', '--exportable');
  const backup = join(dir, 'archive.backup');
  await keys('backup', 'archive', '-o', backup);
  const doc = JSON.parse(await fs.readFile(backup, 'utf8')) as { key: Record<string, unknown> };
  const before = await fs.readFile(file, 'utf8');
  const write = async (name: string, change: (key: Record<string, unknown>) => void) => {
    const copy = structuredClone(doc);
    change(copy.key);
    const path = join(dir, name);
    await fs.writeFile(path, JSON.stringify(copy), { mode: 0o600 });
    return path;
  };
  const renamed = await keys('restore', await write('renamed', (k) => void (k.name = 'archive-copy')));
  t.same([renamed.code, renamed.err], [1, `crypt-server: version ${(await book()).key('archive').primary.id} of this backup is a version of the key archive already (was the backup's name changed?); nothing was restored\n`], 'a renamed backup: refused, two keys never share a version');
  const derivedDefault = await keys('restore', await write('default', (k) => Object.assign(k, { name: 'default', derived: true })), '--force');
  t.equal(derivedDefault.code, 1, 'a derived default: exit 1');
  t.match(derivedDefault.err, /holds a derived key named default: requests without a key name bring no context/, 'and says why');
  t.equal(await fs.readFile(file, 'utf8'), before, 'the keyring is unchanged');
});

t.test('each keys action takes only its own flags and words', async (t) => {
  const { keys, book } = await keyring(t);
  const cases: Array<[string[], RegExp]> = [
    [['create', 'c1', '--auto-rotate', '24h'], /^crypt-server: keys create does not take --auto-rotate; it takes --derived, --exportable: see crypt-server --help\n$/],
    [['create', 'c2', 'extra'], /^crypt-server: keys create does not take the extra word "extra"; it takes --derived, --exportable/],
    [['list', 'x'], /^crypt-server: keys list does not take the extra word "x"; it takes --json/],
    [['rotate', '--yes'], /^crypt-server: keys rotate does not take --yes: see/],
    [['show', 'default', '--force'], /^crypt-server: keys show does not take --force; it takes --json/],
  ];
  for (const [args, message] of cases) {
    const r = await keys(...args);
    t.same(r.code, 2, `${args.join(' ')}: exit 2`);
    t.match(r.err, message, `${args.join(' ')}: names what it does not take`);
  }
  t.same((await book()).keys().map((k) => k.name), ['default'], 'nothing was created');
  t.equal((await keys('create', 'rotate')).err, 'crypt-server: the key name rotate is reserved: /keys/rotate is the older HTTP path of rk\n', 'the name rotate is refused');
});

t.test('crypt-client --key and --context end to end; kc, ks, kf, kd; a session with --key and --context', async (t) => {
  const { port } = await start(t);
  const client = async (args: string[], stdin?: string) => {
    const io = memoryIo({ env: {}, cwd: tempDir(t), stdin });
    const code = await clientRun(['--port', String(port), ...args], io);
    return { code, out: io.out().toString(), err: io.err() };
  };
  const A = Buffer.from('tenant-42').toString('base64url');
  const B = Buffer.from('tenant-43').toString('base64url');
  const kc = await client(['kc', 'users', '--derived']);
  t.equal(kc.code, 0, 'kc users --derived: exit 0');
  t.match(JSON.parse(kc.out), { name: 'users', derived: true, exportable: false }, 'prints the new key as JSON');
  const en = await client(['en', '--key', 'users', '--context', A, 'hello', 'tenant']);
  t.equal(en.code, 0, 'en --key users --context A: exit 0');
  const token = en.out.trim();
  t.same(await client(['de', '--key', 'users', '--context', A, token]), { code: 0, out: 'hello tenant', err: '' }, 'de with the same context prints the plaintext');
  t.same(await client(['de', '--key', 'users', '--context', B, token]), { code: 1, out: '', err: 'crypt-client: invalid_token: invalid token\n' }, 'de with another context: invalid_token, exit 1');
  t.match(await client(['de', '--key', 'users', token]), { code: 1, err: /^crypt-client: bad_request: key users is derived: send a context/ }, 'de without a context: bad_request');
  t.match(await client(['de', token]), { code: 1, err: 'crypt-client: invalid_token: invalid token\n' }, 'de with default: invalid_token');
  t.match(JSON.parse((await client(['in', '--key', 'users', '--context', A, token])).out), { key: 'users', key_state: 'primary' }, 'in with the key and context');

  t.match(JSON.parse((await client(['ks', 'users'])).out), { name: 'users', derived: true }, 'ks users');
  t.match(JSON.parse((await client(['kf', 'users', '--exportable', 'true', '--auto-rotate', '30d'])).out), { exportable: true, auto_rotate: 30 * 86_400 }, 'kf users --exportable true --auto-rotate 30d');
  t.match(await client(['kd', 'users', '--yes']), { code: 1, err: /^crypt-client: conflict: key users may not be deleted/ }, 'kd of a key without deletion_allowed: exit 1');
  await client(['kf', 'users', '--deletion-allowed', 'true']);
  t.match(await client(['kd', 'users']), { code: 1, err: /^crypt-client: bad_request: deleting key users .* confirm it/ }, 'kd without --yes: exit 1');
  await client(['kc', 'tenants', '--derived']);
  const ten = (await client(['en', '--key', 'tenants', '--context', A, 'in a session'])).out.trim();

  const session = await client(['--key', 'tenants', '--context', A], `de\n${ten}\nen\nsession made\nks\n`);
  t.equal(session.code, 0, 'a session with --key and --context: exit 0');
  const lines = session.out.split('\n');
  t.equal(lines[0], 'in a session', 'de in the session uses the key and context');
  t.equal((await client(['de', '--key', 'tenants', '--context', A, lines[1]!])).out, 'session made', 'so does en');
  t.match(JSON.parse(lines[2]!), { name: 'tenants' }, 'ks uses --key without asking');
  const other = await client(['--key', 'tenants', '--context', B], `de\n${ten}\n`);
  t.same([other.code, other.err], [1, 'error: invalid_token: invalid token\n'], 'a session with another context: invalid_token');
  const asks = await client([], 'ks\ntenants\nkd\nusers\n');
  const asked = asks.out.split('\n');
  t.match(JSON.parse(asked[0]!), { name: 'tenants' }, 'without --key, ks asks for the key (key> ) and shows it');
  t.equal(asks.code, 1, 'kd asked in a session is not confirmed: the session reports a failure');
  t.match(asks.err, /error: bad_request: deleting key users .* confirm it/, 'kd without confirmation is refused');
  const deleted = await client(['kd', 'users', '--yes']);
  t.same([deleted.code, JSON.parse(deleted.out) as unknown], [0, { deleted: 'users' }], 'kd users --yes deletes it');
  t.match(await client(['ks', 'users']), { code: 1, err: 'crypt-client: unknown_key: no key named users\n' }, 'then ks users: unknown_key');
});

t.test('a keyring or a backup is never written where it could not be read back', async (t) => {
  const { keys, dir } = await keyring(t);
  await keys('create', 'archive', '--exportable');
  const loose = join(tempDir(t), 'loose');
  await fs.mkdir(loose);
  await fs.chmod(loose, 0o777);
  const backup = await keys('backup', 'archive', '-o', join(loose, 'archive.backup'));
  t.equal(backup.code, 1, 'a backup into a directory others may write: exit 1');
  t.match(backup.err, /has mode 0777, writable by group or others, who could replace the file: run chmod go-w/, 'with the fix');
  t.same(await fs.readdir(loose), [], 'and nothing written');
  const io = memoryIo({ env: {}, cwd: dir });
  const init = await serverRun(['keys', 'init', '--keyring', join(loose, 'keyring.json')], io);
  t.equal(init, 1, 'keys init there: exit 1');
  t.match(io.err(), /the directory .*loose above keyring .* has mode 0777/, 'for the same reason');
  t.same(await fs.readdir(loose), [], 'and no keyring made');
});
