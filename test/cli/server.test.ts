import t from 'tap';
import { promises as fs, statSync } from 'node:fs';
import { EventEmitter, once } from 'node:events';
import net from 'node:net';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { run } from '../../src/cli/server.js';
import { memoryIo } from '../helpers/cli.js';
import { tempDir } from '../helpers/server.js';
import { KeyBook, Keyring } from '../../src/keys/keyring.js';

/** crypt-server in process, to completion (keys commands, startup failures). */
async function server(args: string[], options: { env?: NodeJS.ProcessEnv; cwd?: string } = {}) {
  const io = memoryIo({ env: options.env ?? {}, cwd: options.cwd ?? tempDir(t) });
  const code = await run(args, io);
  return { code, out: io.out().toString(), err: io.err() };
}

/** crypt-server serving in process: resolves once it logs its listeners; stop() sends SIGTERM. */
async function serving(args: string[], env: NodeJS.ProcessEnv = {}) {
  const io = memoryIo({ env, cwd: tempDir(t) });
  const stdout = new PassThrough() as PassThrough & { isTTY?: boolean };
  let out = '';
  stdout.on('data', (c: Buffer) => (out += c.toString()));
  const signals = new EventEmitter();
  const done = run(args, { ...io, stdout }, signals);
  const wanted = args.includes('--http-port') ? 2 : 1;
  while ((out.match(/"msg":"listening"/g) ?? []).length < wanted) await Promise.race([once(stdout, 'data'), done]);
  const ports = [...out.matchAll(/"port":(\d+),"msg":"listening"/g)].map((m) => Number(m[1]));
  return { ports, output: () => out, stop: async () => { signals.emit('SIGTERM'); return done; } };
}

t.test('keys init creates a keyring once; keys list has a header, and without a keyring says how to make one', async (t) => {
  const dir = tempDir(t);
  const keyring = join(dir, 'sub', 'keyring.json');
  const none = await server(['keys', 'list', '--keyring', keyring]);
  t.equal(none.code, 1, 'list without a keyring: exit 1');
  t.equal(none.err, `crypt-server: no keyring at ${keyring}: create one with crypt-server keys init (or start the server with --init)\n`, 'says how to create one');
  const init = await server(['keys', 'init', '--keyring', keyring]);
  t.equal(init.code, 0, 'init: exit 0');
  t.match(init.out, new RegExp(`^created ${keyring} with the key default \\([0-9a-f]{12}\\): back it up, it holds every key\\n$`), 'says what it made');
  t.equal(statSync(keyring).mode & 0o777, 0o600, 'owner-only');
  const again = await server(['keys', 'init', '--keyring', keyring]);
  t.equal(again.code, 1, 'a second init: exit 1');
  t.match(again.err, /exists already; nothing was changed/, 'and changes nothing');
  const list = await server(['keys', 'list', '--keyring', keyring]);
  t.match(list.out, /^NAME {5}DERIVED  EXPORTABLE  AUTO-ROTATE  PRIMARY       VERSIONS\ndefault  no       yes         off          [0-9a-f]{12}  1\n$/, 'list prints a header, then the keys');
  const json = await server(['keys', 'list', '--json', '--keyring', keyring]);
  const set = KeyBook.parse(await fs.readFile(keyring, 'utf8')).key('default');
  t.same(JSON.parse(json.out), { key: 'default', keys: set.info(), named_keys: [set.details()] }, 'list --json prints the keys as JSON');
  t.equal((await server(['keys', 'rotate', '--keyring', keyring, '--max-keys', '2'])).code, 0, 'rotate');
  const capped = await server(['keys', 'rotate', '--keyring', keyring, '--max-keys', '2']);
  t.equal(capped.code, 1, 'past --max-keys: exit 1');
  t.match(capped.err, /2 versions of key default decrypt already, the most allowed \(--max-keys 2\): retire old ones first/, 'with the fix');
  t.equal((await server(['keys', 'retire', '--keyring', keyring])).code, 2, 'retire without an id: exit 2');
});

t.test('a missing keyring is created only when asked; a vanished one is an error, never a new key', async (t) => {
  const dir = tempDir(t);
  const explicit = join(dir, 'keyring.json');
  const refused = await server(['--port', '0', '--keyring', explicit]);
  t.equal(refused.code, 1, 'an explicit path that does not exist: exit 1');
  t.equal(refused.err, `crypt-server: keyring ${explicit} does not exist: create it with crypt-server keys init (or start with --init)\n`, 'says how to create it');
  t.same(await fs.readdir(dir), [], 'and creates nothing');

  const home = tempDir(t);
  const first = await serving(['--port', '0'], { HOME: home });
  t.match(first.output(), /"msg":"created a new keyring: back it up, it holds every key"/, 'the default path is created on the very first start');
  t.equal(await first.stop(), 0, 'stops with exit 0');
  const path = join(home, '.local/share/crypt/keyring.json');
  const id = (await Keyring.open({ file: path })).keyring.current.primary.id;
  await fs.rm(path);
  const vanished = await server(['--port', '0'], { env: { HOME: home } });
  t.equal(vanished.code, 1, 'once its directory exists, a missing default keyring is an error');
  t.match(vanished.err, /keyring .* does not exist, but its directory does: it was there before .* Restore it from a backup, or start with --init/, 'saying it vanished, and what to do');
  t.same(await fs.readdir(join(home, '.local/share/crypt')), [], 'no new key was made');
  void id;
});

t.test('a symlinked keyring is resolved once: read and written beside its target', async (t) => {
  const dir = tempDir(t);
  const real = join(dir, 'real.json');
  await server(['keys', 'init', '--keyring', real]);
  const link = join(dir, 'link.json');
  await fs.symlink(real, link);
  const rotated = await server(['keys', 'rotate', '--keyring', link]);
  t.equal(rotated.code, 0, 'a rotation through the link works');
  t.ok((await fs.lstat(link)).isSymbolicLink(), 'the link is still a link');
  t.equal(KeyBook.parse(await fs.readFile(real, 'utf8')).key('default').info().length, 2, 'the target has the new key');
});

t.test('startup failures: unreadable keyring, bad FERNET_KEYS, busy ports, configuration', async (t) => {
  const dir = tempDir(t);
  const keyring = join(dir, 'keyring.json');
  await fs.writeFile(keyring, 'not json', { mode: 0o600 });
  const garbage = await server(['--port', '0', '--keyring', keyring]);
  t.equal(garbage.code, 1, 'an unparseable keyring: exit 1');
  t.equal(garbage.err, `crypt-server: keyring ${keyring} is not valid: not valid JSON; it was left untouched\n`, 'a clear error');
  t.equal(await fs.readFile(keyring, 'utf8'), 'not json', 'the file is untouched');
  const fernet = await server(['--port', '0'], { env: { FERNET_KEYS: 'abc' } });
  t.equal(fernet.err, 'crypt-server: FERNET_KEYS: key 1 of 1 is not a Fernet key (44 characters of base64url)\n', 'invalid FERNET_KEYS, without the key');
  const taken = net.createServer().listen(0, '127.0.0.1');
  await once(taken, 'listening');
  t.teardown(() => taken.close());
  const port = (taken.address() as net.AddressInfo).port;
  const key = 'cw_0x689RpI-jtRR7oE8h_eQsKImvJapLeSbXpwF4e4=';
  const tcp = await server(['--port', String(port)], { env: { FERNET_KEYS: key } });
  t.equal(tcp.err, `crypt-server: port ${port} on 127.0.0.1 is already in use: stop the other server or choose another --port\n`, 'a busy TCP port names --port');
  const http = await server(['--port', '0', '--http-port', String(port)], { env: { FERNET_KEYS: key } });
  t.equal(http.err, `crypt-server: port ${port} on 127.0.0.1 is already in use: stop the other server or choose another --http-port\n`, 'a busy HTTP port names --http-port (and --http-port alone turned HTTP on)');
  const usage = await server(['--port', 'x']);
  t.equal(usage.code, 2, 'a bad flag: exit 2');
  t.equal(usage.err, 'crypt-server: --port: expected a whole number from 0 to 65535, got "x"\n', 'named');
});

t.test('serving in process: --http-port implies HTTP; SIGTERM stops it with exit 0', async (t) => {
  const s = await serving(['--port', '0', '--http-port', '0', '--init', '--keyring', join(tempDir(t), 'k.json')]);
  t.equal(s.ports.length, 2, 'two listeners');
  t.equal((s.output().match(/"msg":"listening"/g) ?? []).length, 2, 'one listening line each, no duplicate from Fastify');
  const res = await fetch(`http://127.0.0.1:${s.ports[1]}/health`);
  t.equal(res.status, 200, 'HTTP answers');
  t.equal(await s.stop(), 0, 'SIGTERM: exit 0');
  t.match(s.output(), /"msg":"stopped"/, 'logs that it stopped');
});

t.test('--log-format pretty prints lines for people; json (and auto off a terminal) JSON', async (t) => {
  const pretty = await server(['keys', 'list', '--keyring', join(tempDir(t), 'none.json'), '--log-format', 'pretty']);
  t.equal(pretty.code, 1, 'a keys command is unaffected');
  const s = await serving(['--port', '0', '--init', '--keyring', join(tempDir(t), 'k.json'), '--log-format', 'json']);
  t.match(s.output(), /^\{"level":/, 'json: JSON lines');
  await s.stop();
  const io = memoryIo({ cwd: tempDir(t) });
  const out = new PassThrough();
  let text = '';
  out.on('data', (c: Buffer) => (text += c.toString()));
  const signals = new EventEmitter();
  const done = run(['--port', '0', '--init', '--keyring', join(tempDir(t), 'p.json'), '--log-format', 'pretty'], { ...io, stdout: out }, signals);
  while (!/listening/.test(text)) await once(out, 'data');
  t.match(text, /INFO.*listening/, 'pretty: a level word and the message');
  t.notMatch(text, /^\{"level"/m, 'not JSON');
  signals.emit('SIGTERM');
  t.equal(await done, 0, 'exit 0');
});
