import t from 'tap';
import { promises as fs, statSync } from 'node:fs';
import { join } from 'node:path';
import { once } from 'node:events';
import { hkdfSync } from 'node:crypto';
import { DerivedKeys, KeyBook, Keyring, KeySet, NEW_KEY_SETTINGS, v1Backup } from '../../src/keys/keyring.js';
import { FileStore } from '../../src/keys/store.js';
import type { KeyStore } from '../../src/keys/store.js';
import { FernetKey, decrypt } from '../../src/crypto/fernet.js';


t.test('first open creates a 0600 keyring; later opens load the same keys', async (t) => {
  const dir = t.testdir();
  const file = join(dir, 'sub', 'keyring.json');
  const first = await Keyring.open({ file }, { create: true });
  t.equal(first.created, true, 'the first open creates the file');
  t.equal(statSync(file).mode & 0o777, 0o600, 'the keyring is readable by its owner only');
  t.equal(statSync(join(dir, 'sub')).mode & 0o777, 0o700, 'a directory it creates is private too');
  const token = first.keyring.current.primary.encrypt(Buffer.from('before restart'));
  const second = await Keyring.open({ file });
  t.equal(second.created, false, 'the second open loads');
  t.equal(decrypt(second.keyring.current.decrypting, token).plaintext.toString(), 'before restart', 'a token from before a restart decrypts after it');
  t.same(await fs.readdir(join(dir, 'sub')), ['keyring.json'], 'no temp or lock file is left behind');
});

t.test('concurrent first opens agree on one key', async (t) => {
  const file = join(t.testdir(), 'keyring.json');
  const opened = await Promise.all(Array.from({ length: 8 }, () => Keyring.open({ file }, { create: true })));
  t.equal(opened.filter((o) => o.created).length, 1, 'exactly one open created the file');
  t.equal(new Set(opened.map((o) => o.keyring.current.primary.id)).size, 1, 'all see the same primary');
});

t.test('a keyring that cannot be read or parsed is an error and stays untouched', async (t) => {
  const dir = t.testdir({ 'garbage.json': '{"format": "crypt-keyring/1", "keys": [', 'isdir.json': {} });
  const garbage = join(dir, 'garbage.json');
  await fs.chmod(garbage, 0o600);
  const before = await fs.readFile(garbage);
  await t.rejects(Keyring.open({ file: garbage }), { message: /keyring .*garbage\.json is not valid: not valid JSON; it was left untouched/ }, 'unparseable file is refused');
  t.ok((await fs.readFile(garbage)).equals(before), 'the file is unchanged');
  await t.rejects(Keyring.open({ file: join(dir, 'isdir.json') }), { message: /keyring .*isdir\.json is not a regular file/ }, 'a directory is refused');
  await t.rejects(Keyring.open({ file: join(dir, 'missing.json') }), { message: /keyring .*missing\.json does not exist: create it with crypt-server keys init \(or start with --init\)/ }, 'no creation unless asked');

  const key = FernetKey.generate();
  const cases: Array<[string, unknown, RegExp]> = [
    ['empty file', '', /not valid JSON/],
    ['wrong format', { keys: [] }, /not a keyring/],
    ['no primary', { format: 'crypt-keyring/1', keys: [] }, /key default needs exactly one primary version, found 0/],
    ['bad key', { format: 'crypt-keyring/1', keys: [{ id: 'x', state: 'primary', created: null, key: 'nope' }] }, /key 1: "key" is not a Fernet key/],
    ['bad state', { format: 'crypt-keyring/1', keys: [{ id: key.id, state: 'on', created: null, key: key.export() }] }, /"state" must be/],
    ['wrong id', { format: 'crypt-keyring/1', keys: [{ id: 'abc', state: 'primary', created: null, key: key.export() }] }, /does not match its key/],
    ['bad time', { format: 'crypt-keyring/1', keys: [{ id: key.id, state: 'primary', created: 'yesterday', key: key.export() }] }, /"created" must be/],
    ['duplicate', { format: 'crypt-keyring/1', keys: [{ id: key.id, state: 'primary', created: null, key: key.export() }, { id: key.id, state: 'active', created: null, key: key.export() }] }, /appears twice/],
  ];
  for (const [name, doc, message] of cases) {
    const text = typeof doc === 'string' ? doc : JSON.stringify(doc);
    const err = (() => { try { KeyBook.parse(text); return null; } catch (e) { return e as Error; } })();
    t.match(err?.message, message, `${name} is refused with a clear message`);
    t.notMatch(err?.message ?? '', key.export().slice(0, 20), `${name}: the message shows no key`);
  }
});

t.test('a keyring open to group or others is refused with the chmod fix', async (t) => {
  const file = join(t.testdir(), 'keyring.json');
  await Keyring.open({ file }, { create: true });
  await fs.chmod(file, 0o640);
  await t.rejects(Keyring.open({ file }), { message: `keyring ${file} has mode 0640, open to group or others: run chmod 600 ${file}` }, 'loose mode is refused');
  await fs.chmod(file, 0o600);
  t.match((await Keyring.open({ file })).keyring.current.primary.id, /^[0-9a-f]{12}$/, 'after chmod 600 it opens');
});

t.test('FERNET_KEYS supplies keys without a file, newest first', async (t) => {
  const a = FernetKey.generate();
  const b = FernetKey.generate();
  const { keyring } = await Keyring.open({ list: ` ${a.export()}, ${b.export()} ` });
  t.equal(keyring.current.primary.id, a.id, 'the first key is the primary');
  t.same(keyring.current.decrypting.map((k) => k.id), [a.id, b.id], 'both decrypt, newest first');
  t.same(keyring.current.info(), [{ id: a.id, state: 'primary', created: null }, { id: b.id, state: 'active', created: null }], 'info has ids and states');
  await t.rejects(keyring.update((s) => s.rotated()), { code: 'conflict', message: /FERNET_KEYS/ }, 'rotation is refused with a pointer to FERNET_KEYS');
  t.throws(() => KeySet.fromList(`${a.export()},not-a-key`), { message: 'FERNET_KEYS: key 2 of 2 is not a Fernet key (44 characters of base64url)' }, 'an invalid key is named by position only');
  t.throws(() => KeySet.fromList(' , '), { message: /holds no key/ }, 'an empty list is an error');
  await keyring.reload();
  keyring.watch();
  keyring.close();
});

t.test('rotation, retirement and reactivation', async (t) => {
  const file = join(t.testdir(), 'keyring.json');
  const { keyring } = await Keyring.open({ file }, { create: true });
  const first = keyring.current.primary;
  const oldToken = first.encrypt(Buffer.from('old'));
  const changes: string[] = [];
  keyring.on('change', (_set, reason: string) => changes.push(reason));
  const rotated = await keyring.update((s) => s.rotated());
  t.not(rotated.primary.id, first.id, 'a new primary');
  t.same(rotated.info().map((i) => i.state), ['primary', 'active'], 'the old primary becomes active');
  t.equal(decrypt(keyring.current.decrypting, oldToken).plaintext.toString(), 'old', 'old tokens still decrypt');
  t.same(changes, ['update'], 'a change event');
  await t.rejects(keyring.update((s) => s.withState(rotated.primary.id, 'retired')), { code: 'conflict', message: /primary key: rotate first/ }, 'the primary cannot be retired');
  await t.rejects(keyring.update((s) => s.withState('000000000000', 'retired')), { code: 'not_found', message: 'no key version with id 000000000000' }, 'an unknown id is an error');
  await keyring.update((s) => s.withState(first.id, 'retired'));
  t.throws(() => decrypt(keyring.current.decrypting, oldToken), { code: 'invalid_token' }, 'tokens of a retired key stop decrypting');
  const onDisk = KeyBook.parse(await fs.readFile(file, 'utf8')).key('default');
  t.same(onDisk.info().map((i) => i.state), ['primary', 'retired'], 'the retired key stays in the file');
  await keyring.update((s) => s.withState(first.id, 'active'));
  t.equal(decrypt(keyring.current.decrypting, oldToken).plaintext.toString(), 'old', 'reactivated, it decrypts again');
});

t.test('concurrent updates in one process never lose a key', async (t) => {
  const file = join(t.testdir(), 'keyring.json');
  await Keyring.open({ file }, { create: true });
  const handles = await Promise.all(Array.from({ length: 5 }, () => Keyring.open({ file })));
  await Promise.all(handles.flatMap((h) => [h.keyring.update((s) => s.rotated()), h.keyring.update((s) => s.rotated())]));
  const final = KeyBook.parse(await fs.readFile(file, 'utf8')).key('default');
  t.equal(final.info().length, 11, 'the first key and all ten rotations are there');
});

t.test('reload picks up other writers and ignores a broken change', async (t) => {
  const file = join(t.testdir(), 'keyring.json');
  const { keyring } = await Keyring.open({ file }, { create: true });
  const other = (await Keyring.open({ file })).keyring;
  keyring.watch(20);
  // the watcher does not hold the process open (a server's sockets do); this test's timer does
  const keepAlive = setInterval(() => undefined, 1000);
  t.teardown(() => { keyring.close(); clearInterval(keepAlive); });
  const changed = once(keyring, 'change');
  await other.update((s) => s.rotated());
  const [book, reason] = (await changed) as [KeyBook, string];
  t.equal(reason, 'reload', 'the watcher reloaded');
  t.equal(book.key('default').primary.id, other.current.primary.id, 'and sees the new primary');

  // one change can be seen more than once (inotify and polling): wait for the error expected
  const nextError = (pattern: RegExp) => new Promise<Error>((resolve) => {
    const on = (err: Error) => {
      if (!pattern.test(err.message)) return;
      keyring.off('error', on);
      resolve(err);
    };
    keyring.on('error', on);
  });
  const inForce = keyring.current.primary.id;
  const failed = nextError(/is not valid: not valid JSON/);
  await fs.writeFile(file, '{ broken');
  t.match((await failed).message, /not valid JSON/, 'a broken change is reported');
  t.equal(keyring.current.primary.id, inForce, 'and the keys in force stay');

  const loose = nextError(/run chmod 600/);
  await fs.writeFile(file, other.book.serialize());
  await fs.chmod(file, 0o644);
  t.match((await loose).message, /run chmod 600/, 'a file opened to others is not loaded');
  const gone = nextError(/has disappeared; keeping the keys in force/);
  await fs.rm(file);
  t.match((await gone).message, /has disappeared; keeping the keys in force/, 'a removed file keeps the keys');
  t.equal(keyring.current.primary.id, inForce, 'still the same keys');
  await t.rejects(keyring.update((s) => s.rotated()), { message: /has disappeared; refusing to write a new one/ }, 'no update recreates a lost keyring');
});

t.test('the storage seam: compare-and-swap, and an update retried when another writer got there first', async (t) => {
  const file = join(t.testdir(), 'keyring.json');
  await Keyring.open({ file }, { create: true });
  const store = new FileStore(file);
  const stored = (await store.load())!;
  t.equal(await store.save(stored.text, 'not-the-version'), null, 'a save from a stale version writes nothing');
  t.equal(await store.save(stored.text, null), null, 'a create over an existing keyring writes nothing');
  t.equal(await fs.readFile(file, 'utf8'), stored.text, 'the file is untouched');
  // a store whose first save loses a race: another process rotates just before it
  const other = (await Keyring.open({ file })).keyring;
  let raced = false;
  const racy: KeyStore = {
    where: store.where,
    writable: true,
    load: () => store.load(),
    watch: () => () => undefined,
    async save(text, expected) {
      if (!raced) {
        raced = true;
        await other.update((set) => set.rotated());
      }
      return store.save(text, expected);
    },
  };
  const { keyring } = await Keyring.open(racy);
  let calls = 0;
  const next = await keyring.update((set) => {
    calls++;
    return set.rotated();
  });
  t.equal(calls, 2, 'the change ran again on the latest keys');
  t.equal(next.info().length, 3, "both rotations are kept: the other writer's and this one");
  t.same(KeyBook.parse(await fs.readFile(file, 'utf8')).key('default').info().map((k) => k.id), next.info().map((k) => k.id), 'as on disk');
});

/** A format-2 keyring text with `default` and the keys given, each with one fresh version. */
function format2(...keys: Array<Record<string, unknown>>): string {
  const key = (name: string) => KeySet.generate(name, name === 'default' ? undefined : NEW_KEY_SETTINGS).toJson();
  return JSON.stringify({ format: 'crypt-keyring/2', keys: keys.map((k) => ({ ...key(String(k.name)), ...k })) });
}

t.test('KeyBook.parse, format 2: every mistake is refused with a message that names the key, never shows one', async (t) => {
  const ok = KeyBook.parse(format2({ name: 'default' }, { name: 'billing', auto_rotate: 3600 }, { name: 'users', derived: true }));
  t.same(ok.keys().map((k) => [k.name, k.settings.derived, k.settings.autoRotate]), [['billing', false, 3600], ['default', false, null], ['users', true, null]], 'a valid file parses: names, settings (an hour is the shortest period)');
  t.equal(ok.format, 2, 'as format 2');
  const billing = KeySet.generate('billing', NEW_KEY_SETTINGS).toJson() as { versions: Array<Record<string, unknown>> };
  const cases: Array<[string, string, string]> = [
    ['an unknown field in a key', format2({ name: 'default' }, { name: 'billing', colour: 'blue' }), 'key 2 (billing): unknown field "colour"'],
    ['an unknown field in a version', format2({ name: 'default' }, { name: 'billing', versions: [{ ...billing.versions[0], note: 'x' }] }), 'key 2 (billing), version 1: unknown field "note"'],
    ['a duplicate key name', format2({ name: 'default' }, { name: 'billing' }, { name: 'billing' }), 'key billing appears twice'],
    ['no key default', format2({ name: 'billing' }), 'a keyring needs the key default'],
    ['a bad name', format2({ name: 'default' }, { name: 'Billing' }), 'key 2: "name" must match ^[a-z0-9][a-z0-9._-]{0,63}$'],
    ['a name too long', format2({ name: 'default' }, { name: 'a'.repeat(65) }), 'key 2: "name" must match ^[a-z0-9][a-z0-9._-]{0,63}$'],
    ['auto_rotate below an hour', format2({ name: 'default' }, { name: 'billing', auto_rotate: 3599 }), 'key 2 (billing): "auto_rotate" must be null or a whole number of seconds, 3600 or more'],
    ['auto_rotate as text', format2({ name: 'default' }, { name: 'billing', auto_rotate: '30d' }), 'key 2 (billing): "auto_rotate" must be null or a whole number of seconds, 3600 or more'],
    ['a flag that is not a boolean', format2({ name: 'default' }, { name: 'billing', derived: 'no' }), 'key 2 (billing): "derived" must be true or false'],
    ['a missing flag', format2({ name: 'default' }, { name: 'billing', exportable: undefined }), 'key 2 (billing): "exportable" must be true or false'],
    ['versions not a list', format2({ name: 'default' }, { name: 'billing', versions: {} }), 'key 2 (billing): "versions" must be a list'],
    ['a key with no primary', format2({ name: 'default' }, { name: 'billing', versions: [{ ...billing.versions[0], state: 'active' }] }), 'key billing needs exactly one primary version, found 0'],
    ['a key that is not an object', JSON.stringify({ format: 'crypt-keyring/2', keys: [KeySet.generate().toJson(), 'billing'] }), 'key 2: expected an object'],
    ['an unknown format', JSON.stringify({ format: 'crypt-keyring/3', keys: [KeySet.generate().toJson()] }), 'not a keyring: expected {"format": "crypt-keyring/2", "keys": [...]}'],
  ];
  for (const [what, text, message] of cases) {
    const err = (() => {
      try {
        KeyBook.parse(text);
        return null;
      } catch (e) {
        return e as Error;
      }
    })();
    t.equal(err?.message, message, `${what}: refused, saying so`);
    const keys = [...text.matchAll(/"key":"([A-Za-z0-9_-]{43}=)"/g)].map((m) => m[1]!);
    t.ok(keys.length > 0 && keys.every((k) => !(err?.message ?? '').includes(k.slice(0, 16))), `${what}: no key in the message`);
  }
});

t.test('DerivedKeys: fed 1,000,000 contexts it never holds more than its capacity; a recent context is a hit; keys are HKDF-SHA256', { timeout: 600_000 }, async (t) => {
  const cache = new DerivedKeys(10_000);
  t.equal(cache.capacity, 10_000, 'the capacity asked for');
  const root = FernetKey.generate();
  const rootBytes = Buffer.from(root.exportBytes());
  const hkdf = (context: Buffer) => Buffer.from(hkdfSync('sha256', rootBytes, 'crypt derived key v1', context, 32)).toString('base64url') + '=';
  const contextOf = (i: number) => Buffer.from(`tenant-${i}`);
  let largest = 0;
  let mismatches = 0;
  for (let i = 0; i < 1_000_000; i++) {
    const context = contextOf(i);
    const key = cache.get(root, root.id, context);
    if (cache.size > largest) largest = cache.size;
    // a sample checked against node's HKDF (every key would double the run time)
    if (i % 9973 === 0 && key.export() !== hkdf(context)) mismatches++;
  }
  t.ok(largest <= cache.capacity, `the most it held at once was ${largest}, at most its capacity of ${cache.capacity}`);
  t.ok(largest >= cache.capacity / 2, `and it does cache (${largest} at its fullest)`);
  t.equal(mismatches, 0, 'every sampled key equals HKDF-SHA256(ikm = the root bytes, salt = "crypt derived key v1", info = the context, 32)');
  const recent = contextOf(999_999);
  const first = cache.get(root, root.id, recent);
  t.equal(cache.get(root, root.id, Buffer.from(recent)), first, 'a repeated recent context gets the very same key object (a hit)');
  const older = contextOf(999_999 - 1000);
  t.equal(cache.get(root, root.id, older), cache.get(root, root.id, older), 'so does another recent one');
  const long = cache.get(root, root.id, contextOf(0));
  t.equal(long.export(), hkdf(contextOf(0)), 'a context dropped long ago is derived again, to the same key');
  const other = FernetKey.generate();
  t.not(cache.get(other, other.id, recent).export(), first.export(), 'another root version gives another key for the same context');
  t.ok(cache.size <= cache.capacity, 'still within its capacity');
  const tiny = new DerivedKeys(1);
  t.equal(tiny.capacity, 2, 'a capacity below 2 is raised to 2');
  for (let i = 0; i < 10; i++) tiny.get(root, root.id, contextOf(i));
  t.ok(tiny.size <= 2, 'and holds');
});

t.test('a change that would make the keyring larger than a keyring may be read is refused before it is written', async (t) => {
  const file = join(t.testdir(), 'keyring.json');
  const { keyring } = await Keyring.open({ file }, { create: true });
  const before = await fs.readFile(file, 'utf8');
  // about 180 bytes a version: 100,000 retired versions make a file over 16 MiB
  const key = FernetKey.generate();
  const versions = Array.from({ length: 100_000 }, (_, i) => ({ id: key.id, state: i === 0 ? 'primary' as const : 'retired' as const, created: new Date(0).toISOString(), key }));
  const huge = new KeySet('huge', NEW_KEY_SETTINGS, versions);
  await t.rejects(keyring.updateBook((b) => b.with(huge)), { code: 'conflict', message: /^the keyring would be \d+ bytes, more than the 16777216 a keyring may have: delete keys or retire versions/ }, 'refused, with what to do');
  t.equal(await fs.readFile(file, 'utf8'), before, 'the keyring is unchanged');
  t.same(keyring.book.keys().map((k) => k.name), ['default'], 'and so are the keys in force');
});

t.test('a derived key resolved again for the same context object is the same resolution; other objects of the same bytes agree', async (t) => {
  const set = KeySet.generate('users', { ...NEW_KEY_SETTINGS, derived: true });
  const cache = new DerivedKeys();
  const context = Buffer.from('tenant-42');
  const first = set.resolve(context, cache);
  t.equal(set.resolve(context, cache), first, 'the same context object: the same resolution');
  const copy = set.resolve(Buffer.from('tenant-42'), cache);
  t.not(copy, first, 'another object is resolved through the cache');
  t.equal(copy.primary, first.primary, 'to the same derived key');
  const other = set.resolve(Buffer.from('tenant-43'), cache);
  t.not(other.primary, first.primary, 'another context: another key');
  const token = first.primary.encrypt(Buffer.from('hi'));
  t.throws(() => decrypt(other.decrypting, token), { code: 'invalid_token' }, 'which does not decrypt the first one\'s tokens');
  const rotated = set.rotated();
  t.not(rotated.resolve(context, cache).primary, first.primary, 'after a rotation, the same context object resolves to the new primary');
  t.equal(decrypt(rotated.resolve(context, cache).decrypting, token).plaintext.toString(), 'hi', 'and still decrypts the old tokens');
});
