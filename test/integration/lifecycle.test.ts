import t from 'tap';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { once } from 'node:events';
import { join } from 'node:path';
import { start, raw, show, tempDir, untilKeys as until } from '../helpers/server.js';
import { CLIENT_BIN, SERVER_BIN, cleanEnv, runCli } from '../helpers/cli.js';
import { python } from '../helpers/python.js';
import { KeyBook, KeySet, Keyring } from '../../src/keys/keyring.js';
import { FernetKey, decrypt } from '../../src/crypto/fernet.js';
import { promises as fs } from 'node:fs';

interface PyCheck { oldOpensNew: boolean; newOpensNew: boolean; multiOpensOld: string; rewrapNewAlone: string; rewrapOldAlone: boolean; tsOriginal: number; tsRewrapped: number }

t.test('rotate over TCP: old tokens still decrypt, new ones need the new key; rewrap keeps the timestamp (checked with Python)', async (t) => {
  const { connect } = await start(t);
  const client = await connect();
  const oldKey = await client.getKey();
  const oldToken = await client.encrypt('made before the rotation');
  const rotated = await client.rotate();
  t.match(rotated, { state: 'primary', id: /^[0-9a-f]{12}$/ }, 'rk answers the new primary key');
  t.equal(rotated.id, FernetKey.from(await client.getKey()).id, 'gk gives the new key');
  const newKey = await client.getKey();
  t.not(newKey, oldKey, 'a new key');
  t.same((await client.keyInfo()).keys.map((k) => k.state), ['primary', 'active'], 'ki: new primary, old active');
  const newToken = await client.encrypt('made after the rotation');
  t.equal((await client.decrypt(oldToken)).toString(), 'made before the rotation', 'old tokens still decrypt');
  const rewrapped = await client.rewrap(oldToken);
  const py = python<PyCheck>(
    `import sys, json
from cryptography.fernet import Fernet, MultiFernet, InvalidToken
d = json.load(sys.stdin)
old, new = Fernet(d["old"]), Fernet(d["new"])
def opens(f, tok):
    try:
        f.decrypt(tok.encode()); return True
    except InvalidToken:
        return False
print(json.dumps({
  "oldOpensNew": opens(old, d["newToken"]), "newOpensNew": opens(new, d["newToken"]),
  "multiOpensOld": MultiFernet([new, old]).decrypt(d["oldToken"].encode()).decode(),
  "rewrapNewAlone": new.decrypt(d["rewrapped"].encode()).decode(), "rewrapOldAlone": opens(old, d["rewrapped"]),
  "tsOriginal": old.extract_timestamp(d["oldToken"].encode()), "tsRewrapped": new.extract_timestamp(d["rewrapped"].encode())}))`,
    { old: oldKey, new: newKey, oldToken, newToken, rewrapped },
  );
  t.equal(py.oldOpensNew, false, 'python: a new token does not decrypt with the old key alone');
  t.equal(py.newOpensNew, true, 'python: it decrypts with the new key');
  t.equal(py.multiOpensOld, 'made before the rotation', 'python: MultiFernet([new, old]) opens an old token');
  t.equal(py.rewrapNewAlone, 'made before the rotation', 'python: a rewrapped token decrypts with the new key alone');
  t.equal(py.rewrapOldAlone, false, 'python: and not with the old key');
  t.equal(py.tsRewrapped, py.tsOriginal, 'python: the rewrapped token keeps the original timestamp');
});

t.test('HTTP: GET /keys, POST /keys/rotate, POST /rewrap (raw, JSON, batch)', async (t) => {
  const { server } = await start(t, { http: true, httpPort: 0 });
  const base = `http://127.0.0.1:${server.http!.address.port}`;
  const token = (await (await fetch(`${base}/encrypt`, { method: 'POST', body: 'keep me' })).text()).trim();
  type Listed = { keys: Array<{ id: string; state: string; created: string }> };
  const before = ((await (await fetch(`${base}/keys`)).json()) as Listed).keys;
  t.equal(before.length, 1, 'one version');
  t.same(Object.keys(before[0]!).sort(), ['created', 'id', 'state'], 'no key material');
  const rotateRes = await fetch(`${base}/keys/rotate`, { method: 'POST' });
  const rotated = (await rotateRes.json()) as { id: string; state: string };
  t.equal(rotated.state, 'primary', 'rotate answers the new primary');
  t.equal((await fetch(`${base}/keys/rotate`)).status, 405, 'GET /keys/rotate is 405');
  const after = ((await (await fetch(`${base}/keys`)).json()) as Listed).keys;
  t.same(after.map((k) => [k.id, k.state]), [[rotated.id, 'primary'], [before[0]!.id, 'active']], 'GET /keys shows both');
  const ts = decrypt(server.keyring.current.decrypting, token).timestamp;
  const rawRe = (await (await fetch(`${base}/rewrap`, { method: 'POST', body: token })).text()).trim();
  const jsonRe = ((await (await fetch(`${base}/rewrap`, { method: 'POST', body: JSON.stringify({ token }), headers: { 'content-type': 'application/json' } })).json()) as { token: string }).token;
  const batch = ((await (await fetch(`${base}/rewrap`, { method: 'POST', body: JSON.stringify({ batch: [{ token }, { token: 'bad' }] }), headers: { 'content-type': 'application/json' } })).json()) as { batch: Array<{ token?: string; error?: { code: string } }> }).batch;
  t.match(batch, [{ token: String }, { error: { code: 'invalid_token' } }], 'batch rewrap, one failing item');
  const primaryOnly = [server.keyring.current.primary];
  for (const [name, tok] of [['raw', rawRe], ['json', jsonRe], ['batch', batch[0]!.token!]] as const) {
    const opened = decrypt(primaryOnly, tok);
    t.equal(opened.plaintext.toString(), 'keep me', `${name}: opens with the primary alone`);
    t.equal(opened.timestamp, ts, `${name}: keeps the timestamp`);
  }
});

t.test('keys CLI: list, rotate and retire while a server runs; the server follows', async (t) => {
  const { server, connect, waitForLog, config } = await start(t);
  const env = cleanEnv(tempDir(t));
  const keys = (...args: string[]) => runCli(SERVER_BIN, ['keys', ...args, '--keyring', config.keyring], { env });
  const client = await connect();
  const first = server.keyring.current.primary.id;
  const oldToken = await client.encrypt('under the first key');

  const rotated = await keys('rotate');
  t.equal(rotated.code, 0, 'keys rotate: exit 0');
  const newId = /rotated default: ([0-9a-f]{12}) is the new primary version/.exec(rotated.stdout.toString())?.[1];
  t.ok(newId, 'names the new primary');
  await waitForLog(new RegExp(`"reason":"reload","primary":"${newId}"`));
  t.equal(server.keyring.current.primary.id, newId, 'the running server picked it up');
  t.equal((await client.decrypt(oldToken)).toString(), 'under the first key', 'on the same connection, old tokens decrypt');
  const listed = await keys('list', '--json');
  t.same(JSON.parse(listed.stdout.toString()), await client.keyInfo(), 'keys list --json prints what ki answers');
  t.match((await keys('list')).stdout.toString(), new RegExp(`^NAME .*\\ndefault  no       yes         off          ${newId}  2\\n$`), 'keys list prints a table');
  t.match((await keys('show', 'default')).stdout.toString(), new RegExp(`^key default: not derived, exportable, deletion not allowed, automatic rotation off\\nID {12}STATE {4}CREATED\\n${newId}  primary  \\S+\\n${first}  active   \\S+\\n$`), 'keys show prints its versions');

  const primary = await keys('retire', newId!);
  t.equal(primary.code, 1, 'retiring the primary: exit 1');
  t.equal(primary.stderr, `crypt-server: key ${newId} is the primary key: rotate first, then retire it\n`, 'says what to do');
  const unknown = await keys('retire', 'ffffffffffff');
  t.equal(unknown.stderr, 'crypt-server: no key version with id ffffffffffff: see crypt-server keys list\n', 'an unknown id is an error');
  t.equal((await keys('retire')).code, 2, 'retire without an id is a usage error');
  t.equal((await keys('retire', first)).code, 0, 'retire the old key: exit 0');
  await waitForLog(/"reason":"reload","primary":"[0-9a-f]+","keys":2,"retired":1/);
  await t.rejects(client.decrypt(oldToken), { code: 'invalid_token' }, "a retired key's tokens fail");
  t.equal((await keys('activate', first)).code, 0, 'activate it again');
  await until(server.keyring, () => server.keyring.current.decrypting.length === 2);
  t.equal((await client.decrypt(oldToken)).toString(), 'under the first key', 'and its tokens decrypt again');
});

t.test('two servers on one keyring: a rotation through one is served by the other', async (t) => {
  const a = await start(t);
  const b = await start(t, { keyring: a.config.keyring });
  const onB = await b.connect();
  const token = await onB.encrypt('shared');
  const rotated = await (await a.connect()).rotate();
  await b.waitForLog(new RegExp(`"reason":"reload","primary":"${rotated.id}"`));
  const fromB = await onB.encrypt('after');
  t.equal(decrypt([a.server.keyring.current.primary], fromB).plaintext.toString(), 'after', 'B encrypts with the new primary, on a connection opened before');
  t.equal((await onB.decrypt(token)).toString(), 'shared', 'and still decrypts the older token');
});

t.test('a keyring change that fails to parse is ignored; the server keeps serving', async (t) => {
  const { server, connect, waitForLog, config } = await start(t);
  const client = await connect();
  const token = await client.encrypt('still fine');
  await fs.writeFile(config.keyring, '{"format": "crypt-keyring/1", "keys": []}');
  await waitForLog(/"reason":"keyring .* is not valid: key default needs exactly one primary version, found 0; it was left untouched","msg":"keyring change ignored"/);
  t.equal((await client.decrypt(token)).toString(), 'still fine', 'the keys in force stay');
  t.ok(server.keyring.current.primary, 'a primary is still in force');
});

/** Runs `crypt-server keys rotate` and kills it with SIGKILL after `killAfterMs` (or lets it finish). */
function rotation(keyring: string, env: NodeJS.ProcessEnv, killAfterMs?: number) {
  const child = spawn(process.execPath, [SERVER_BIN, 'keys', 'rotate', '--keyring', keyring], { env, stdio: 'ignore' });
  const timer = killAfterMs === undefined ? null : setTimeout(() => child.kill('SIGKILL'), killAfterMs);
  return once(child, 'exit').then(([code, signal]) => {
    if (timer) clearTimeout(timer);
    return { code: code as number | null, signal: signal as string | null };
  });
}

t.test('concurrent rotations from two processes never lose a key', async (t) => {
  const keyring = join(tempDir(t), 'keyring.json');
  await Keyring.open({ file: keyring }, { create: true });
  const env = cleanEnv(tempDir(t));
  for (let round = 0; round < 5; round++) {
    const results = await Promise.all([rotation(keyring, env), rotation(keyring, env)]);
    t.same(results.map((r) => r.code), [0, 0], `round ${round}: both rotations succeed`);
  }
  const set = KeyBook.parse(await fs.readFile(keyring, 'utf8')).key('default');
  t.equal(set.info().length, 11, 'the first key and all ten rotations are in the keyring');
  t.equal(set.info().filter((k) => k.state === 'primary').length, 1, 'exactly one primary');
});

t.test('rotations killed with SIGKILL inside the lock, before and after the rename, leave a keyring that loads, and lose no key', async (t) => {
  const dir = tempDir(t);
  const keyring = join(dir, 'keyring.json');
  await Keyring.open({ file: keyring }, { create: true });
  const script = fileURLToPath(new URL('../fixtures/change-and-die.mjs', import.meta.url));
  const moments = ['none', 'after-lock', 'before-rename', 'after-rename'];
  const tokens: Array<[string, string]> = [];
  let killed = 0;
  let planned = 0;
  for (let i = 0; i < 12; i++) {
    // three at once, each dying at its own moment
    const plan = [0, 1, 2].map((j) => moments[(i + j) % moments.length]!);
    planned += plan.filter((m) => m !== 'none').length;
    const runs = await Promise.all(plan.map((where) => {
      const child = spawn(process.execPath, [script, keyring, where], { stdio: 'ignore' });
      return once(child, 'exit').then(([, signal]) => signal as string | null);
    }));
    killed += runs.filter((s) => s === 'SIGKILL').length;
    const { keyring: loaded } = await Keyring.open({ file: keyring });
    const message = `after round ${i}`;
    tokens.push([loaded.current.primary.encrypt(Buffer.from(message)), message]);
  }
  t.equal(killed, planned, `${killed} rotations died where they were meant to`);
  const { keyring: final } = await Keyring.open({ file: keyring });
  t.ok(final.current.info().length >= 1, `the keyring loads (${final.current.info().length} keys)`);
  const failures = tokens.filter(([tok, msg]) => decrypt(final.current.decrypting, tok).plaintext.toString() !== msg);
  t.same(failures, [], 'every token made along the way still decrypts');
  const env = cleanEnv(tempDir(t));
  const after = await rotation(keyring, env);
  t.equal(after.code, 0, 'a rotation after all that succeeds (no stale lock blocks it)');
  const names = await fs.readdir(dir);
  t.same(names.filter((n) => n !== 'keyring.json' && !n.startsWith('keyring.json.lock')), [], 'the next writer cleaned up temp files');
});

t.test('named-key creates, rotations and config changes killed with SIGKILL leave a keyring that loads and lose no key', async (t) => {
  const dir = tempDir(t);
  const keyring = join(dir, 'keyring.json');
  const { keyring: first } = await Keyring.open({ file: keyring }, { create: true });
  await first.updateBook((book) => book.with(KeySet.generate('alpha')).with(KeySet.generate('beta')));
  const script = fileURLToPath(new URL('../fixtures/change-and-die.mjs', import.meta.url));
  const moments = ['none', 'after-lock', 'before-rename', 'after-rename'];
  const changes: Array<[string, string]> = [['rotate', 'alpha'], ['config', 'beta'], ['create', ''], ['rotate', 'beta'], ['config', 'alpha']];
  const tokens: Array<[string, string, string]> = [];
  let killed = 0;
  let planned = 0;
  for (let i = 0; i < 10; i++) {
    // three processes at once, each making its own change and dying at its own moment
    const plan = [0, 1, 2].map((j) => {
      const [change, name] = changes[(i + j) % changes.length]!;
      return { where: moments[(i + 2 * j) % moments.length]!, change, name: name || `new-${i}-${j}` };
    });
    planned += plan.filter((p) => p.where !== 'none').length;
    const runs = await Promise.all(plan.map(({ where, change, name }) => {
      const child = spawn(process.execPath, [script, keyring, where, change, name], { stdio: 'ignore' });
      return once(child, 'exit').then(([code, signal]) => ({ code: code as number | null, signal: signal as string | null }));
    }));
    killed += runs.filter((r) => r.signal === 'SIGKILL').length;
    t.same(runs.filter((r, j) => plan[j]!.where === 'none').map((r) => r.code), plan.filter((p) => p.where === 'none').map(() => 0), `round ${i}: the changes not killed succeed`);
    const { keyring: loaded } = await Keyring.open({ file: keyring });
    for (const set of loaded.book.keys()) {
      const message = `${set.name} after round ${i}`;
      tokens.push([set.name, set.primary.encrypt(Buffer.from(message)), message]);
    }
  }
  t.equal(killed, planned, `${killed} changes died where they were meant to`);
  const book = KeyBook.parse(await fs.readFile(keyring, 'utf8'));
  t.ok(book.get('alpha') && book.get('beta') && book.get('default'), `the keyring loads with every key (${book.size} keys)`);
  const failures = tokens.filter(([name, tok, msg]) => decrypt(book.key(name).decrypting, tok).plaintext.toString() !== msg);
  t.same(failures, [], `every token made along the way (${tokens.length}) still decrypts under its key`);
  const names = await fs.readdir(dir);
  await Keyring.open({ file: keyring }).then(({ keyring: k }) => k.update((set) => set.rotated(), 'alpha'));
  t.same((await fs.readdir(dir)).filter((n) => n !== 'keyring.json'), [], `the next writer cleaned up what the killed ones left (${names.length - 1} files)`);
});

t.test('TCP TTL and crypt-client --ttl', async (t) => {
  const { server, port } = await start(t);
  const old = server.keyring.current.primary.encrypt(Buffer.from('old'), Math.floor(Date.now() / 1000) - 100);
  const env = cleanEnv(tempDir(t));
  const ok = await runCli(CLIENT_BIN, ['--port', String(port), 'de', '--ttl', '1000', old], { env });
  t.equal(ok.stdout.toString(), 'old', '--ttl 1000: decrypts');
  const expired = await runCli(CLIENT_BIN, ['--port', String(port), 'de', '--ttl', '10', old], { env });
  t.equal(expired.code, 1, '--ttl 10: exit 1');
  t.equal(expired.stderr, 'crypt-client: invalid_token: invalid token\n', 'invalid_token');
  const s = await raw(port);
  s.send(`#de,ttl=10#${old}#\n`);
  t.same(show(await s.replies(1)), ['!invalid_token'], 'TCP #de,ttl=10#');
  s.socket.destroy();
});

t.test('a rotation that cannot write the keyring: unavailable for the admin, the reason in the log', async (t) => {
  const { connect, config, waitForLog } = await start(t);
  const client = await connect();
  await fs.rm(config.keyring);
  await t.rejects(client.rotate(), { code: 'unavailable', message: 'rotation failed: the keyring could not be updated; the server log says why' }, 'the reply names no file');
  const line = await waitForLog(/"msg":"service unavailable"/);
  t.match(line, /"reason":"keyring .*keyring\.json has disappeared; refusing to write a new one"/, 'the log does');
  t.equal((await client.decrypt(await client.encrypt('still serving'))).toString(), 'still serving', 'the keys in force still serve');
});
