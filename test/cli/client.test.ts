import t from 'tap';
import { promises as fs } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { run } from '../../src/cli/client.js';
import { memoryIo } from '../helpers/cli.js';
import { start, tempDir } from '../helpers/server.js';
import { decrypt } from '../../src/crypto/fernet.js';

const USER = 'user-token-0123456789abcdef';
const ADMIN = 'admin-token-0123456789abcdef';

/** Runs crypt-client in process against a port; the streams and the exit code. */
async function client(port: number, args: string[], options: { stdin?: string | Buffer; tty?: boolean; env?: NodeJS.ProcessEnv } = {}) {
  const io = memoryIo({ ...options, env: options.env ?? {}, cwd: tempDir(t) });
  const code = await run(['--port', String(port), ...args], io);
  return { code, out: io.out(), err: io.err() };
}

t.test('argv mode: en prints a token, de the plaintext, gk the key, ki and in JSON', async (t) => {
  const { port, server } = await start(t);
  const en = await client(port, ['en', 'hello', 'world']);
  t.equal(en.code, 0, 'en exits 0');
  t.match(en.out.toString(), /^gAAAAA[A-Za-z0-9_-]+={0,2}\n$/, 'the token alone on stdout');
  t.equal(en.err, '', 'nothing on stderr');
  const token = en.out.toString().trim();
  const de = await client(port, ['de', token]);
  t.equal(de.out.toString(), 'hello world', 'words joined by spaces, the plaintext exactly');
  t.equal((await client(port, ['de', token], { tty: true })).out.toString(), 'hello world\n', 'a line break is added on a terminal');
  t.equal((await client(port, ['gk'])).out.toString(), server.keyring.current.primary.export() + '\n', 'gk prints the key');
  t.match(JSON.parse((await client(port, ['ki'])).out.toString()), { key: 'default', keys: [{ state: 'primary' }], named_keys: [{ name: 'default', versions: [{ state: 'primary' }] }] }, 'ki prints key metadata as JSON');
  for (const name of ['in', 'inspect']) {
    const facts = JSON.parse((await client(port, [name, token])).out.toString()) as Record<string, unknown>;
    t.match(facts, { key_id: server.keyring.current.primary.id, key_state: 'primary', age_seconds: Number, created: String }, `${name}: the token's key and age`);
    t.notMatch(JSON.stringify(facts), 'hello', `${name}: never the plaintext`);
  }
  const rw = await client(port, ['rw', token]);
  t.equal(decrypt(server.keyring.current.decrypting, rw.out.toString().trim()).plaintext.toString(), 'hello world', 'rw prints a new token for the same message');
  const rk = await client(port, ['rk']);
  t.match(JSON.parse(rk.out.toString()), { state: 'primary' }, 'rk prints the new primary');
});

t.test('a message is the words exactly as given: numbers, dashes, empty, unicode, whitespace', async (t) => {
  const { port } = await start(t);
  const cases: Array<[string[], string]> = [
    [['en', '1.50'], '1.50'],
    [['en', '0x10'], '0x10'],
    [['en', '1e3'], '1e3'],
    [['en', '-0'], '-0'],
    [['en', '--', '-secret'], '-secret'],
    [['en', 'x', '--', '-y'], 'x -y'],
    [['en', '--', '--port', '9'], '--port 9'],
    [['en', ''], ''],
    [['en', 'héllo', 'wörld', '🙂'], 'héllo wörld 🙂'],
    [['en', '  '], '  '],
    [['en', 'a  b', 'c'], 'a  b c'],
    [['en', 'pay', '-h'], 'pay -h'],
    [['en', 'a', '--port', '9', 'b'], 'a --port 9 b'],
    [['en', '--', '-'], '-'],
  ];
  for (const [args, message] of cases) {
    const en = await client(port, args);
    t.equal(en.code, 0, `${JSON.stringify(args)}: exit 0`);
    const de = await client(port, ['de', en.out.toString().trim()]);
    t.equal(de.out.toString(), message, `${JSON.stringify(args)} encrypts ${JSON.stringify(message)}`);
  }
});

t.test('stdin: - and a pipe with no words send bytes exactly; an empty pipe is a usage error', async (t) => {
  const { port } = await start(t);
  const bytes = Buffer.concat([randomBytes(5000), Buffer.from('\n#\r\n')]);
  for (const args of [['en', '-'], ['en']]) {
    const en = await client(port, args, { stdin: bytes });
    t.equal(en.code, 0, `${args.join(' ')} exits 0`);
    const de = await client(port, ['de'], { stdin: en.out });
    t.ok(de.out.equals(bytes), `${args.join(' ')}: the plaintext comes back byte for byte (token piped to de)`);
  }
  const empty = await client(port, ['en'], { stdin: '' });
  t.equal(empty.code, 2, 'en with an empty pipe (cron, CI): exit 2');
  t.equal(empty.err, 'crypt-client: en got no message: stdin was empty (pass - to en empty input on purpose)\n', 'says so');
  const dash = await client(port, ['en', '-'], { stdin: '' });
  t.equal(dash.code, 0, 'en - with an empty stdin encrypts the empty message: asked for explicitly');
  const late = await client(port, ['de', 'TOKEN', '--ttl', '60']);
  t.equal(late.err, 'crypt-client: de takes one token, got 3 words (options go before the token: crypt-client de [options] <token>)\n', 'an option after the token is pointed out');
  const tty = await client(port, ['de'], { tty: true });
  t.equal(tty.code, 2, 'de on a terminal with no token: exit 2');
  t.match(tty.err, /de needs a token: crypt-client de <token>, or pipe it on stdin/, 'says how');
});

t.test('usage mistakes: unknown commands are named, with the closest; -v; --ttl', async (t) => {
  const { port } = await start(t);
  const cases: Array<[string[], RegExp]> = [
    [['enc', 'hello'], /^crypt-client: unknown command enc: the commands are en, de, rw, dk, in \(inspect\), ki, ks, kc, kf, kd, gk, rk, hc, ah \(audit-hash\); did you mean en\?\n$/],
    [['encrypt', 'x'], /did you mean en\?/],
    [['decrypt', 'x'], /did you mean de\?/],
    [['inspct', 'x'], /did you mean inspect\?/],
    [['zzzzzz'], /^crypt-client: unknown command zzzzzz: the commands are [^;]+\n$/],
    [['de', '--ttl', 'soon', 'x'], /^crypt-client: --ttl must be a whole number of seconds, 0 or more\n$/],
    [['en', '--ttl', '5', 'x'], /^crypt-client: --ttl goes with de, not en\n$/],
    [['gk', '--context', 'eA', 'x'], /^crypt-client: --context goes with en, de, rw, dk, in, not gk\n$/],
    [['en', '--key', 'Bad#Name', 'x'], /^crypt-client: --key must be a key name: 1 to 64 of a-z, 0-9, '.', '_' and '-', starting with a letter or digit\n$/],
    [['en', '--context', 'not base64!', 'x'], /^crypt-client: --context must be base64url of 1 to 256 bytes\n$/],
    [['en', '--key', 'a', '--key', 'b', 'x'], /^crypt-client: --key given more than once\n$/],
    [['ks', 'a', '--key', 'b'], /^crypt-client: give the key once: crypt-client ks <key>, or --key <key>\n$/],
    [['kf', 'billing', '--auto-rotate', '5m'], /^crypt-client: --auto-rotate must be off or a period of at least 1h \(3600, 24h, 30d\)\n$/],
    [['kd', 'billing', '--yes', '--exportable'], /^crypt-client: --exportable goes with kc, kf, not kd\n$/],
    [['en', '--yes', 'x'], /^crypt-client: --yes goes with kd, not en\n$/],
    [['ks', 'a', 'b'], /^crypt-client: ks takes one key name: crypt-client ks <key>\n$/],
    [['en', '-secret'], /to encrypt words that start with -, put them after --: crypt-client en -- <message>/],
    [['de', 'a', 'b'], /^crypt-client: de takes one token, got 2 words\n$/],
    [['ki', 'a', 'b'], /^crypt-client: ki takes one key name: crypt-client ki <key>\n$/],
  ];
  for (const [args, message] of cases) {
    const r = await client(port, args);
    t.equal(r.code, 2, `${args.join(' ')}: exit 2`);
    t.match(r.err, message, `${args.join(' ')}: ${message.source}`);
  }
  for (const flag of ['-v', '--version']) {
    const v = await client(port, [flag]);
    t.equal(v.out.toString().trim(), JSON.parse(await fs.readFile(new URL('../../package.json', import.meta.url), 'utf8')).version, `${flag} prints the version`);
  }
});

t.test('the client reads no .env: one in the working directory could point it elsewhere', async (t) => {
  const { port } = await start(t);
  const dir = tempDir(t);
  await fs.writeFile(join(dir, '.env'), 'CRYPT_PORT=1\nCRYPT_HOST=attacker.example\n');
  const io = memoryIo({ env: {}, cwd: dir });
  t.equal(await run(['--port', String(port), 'en', 'x'], io), 0, 'the .env is not read');
  const io2 = memoryIo({ env: { CRYPT_PORT: String(port) }, cwd: dir });
  t.equal(await run(['en', 'x'], io2), 0, 'the environment is');
});

t.test('a server error exits 1 with its code; an unreachable server exits 3', async (t) => {
  const { port } = await start(t);
  const bad = await client(port, ['de', 'not-a-token']);
  t.equal(bad.code, 1, 'a server error exits 1');
  t.equal(bad.err, 'crypt-client: invalid_token: invalid token\n', 'one line, with the code');
  const refused = await client(1, ['en', 'x']);
  t.equal(refused.code, 3, 'connection refused exits 3');
  t.equal(refused.err, 'crypt-client: cannot connect to 127.0.0.1:1 (connection refused): is crypt-server running?\n', 'names host:port and says to start crypt-server');
});

t.test('pointed at the HTTP port, every command refuses the reply with exit 3 and one line', async (t) => {
  const { server } = await start(t, { http: true, httpPort: 0 });
  const port = server.http!.address.port;
  for (const args of [['en', 'x'], ['de', 'gAAAAABtoken'], ['rw', 'gAAAAABtoken'], ['gk'], ['ki'], ['rk'], ['in', 'gAAAAABtoken']]) {
    const r = await client(port, args);
    t.equal(r.code, 3, `${args[0]}: exit 3`);
    t.equal(r.err, 'crypt-client: this is an HTTP port: crypt-client speaks the TCP protocol (--port 8000 by default), or use curl for HTTP\n', `${args[0]}: says it is an HTTP port`);
    t.equal(r.out.length, 0, `${args[0]}: nothing on stdout`);
  }
});

t.test('access tokens: --token-file, CRYPT_TOKEN, and --token with a warning', async (t) => {
  const dir = tempDir(t);
  const tokens = join(dir, 'tokens');
  await fs.writeFile(tokens, `user ${USER}\nadmin ${ADMIN}\n`, { mode: 0o600 });
  const { port } = await start(t, { tokensFile: tokens });
  const none = await client(port, ['en', 'x']);
  t.equal(none.code, 1, 'without a token: exit 1');
  t.match(none.err, /^crypt-client: unauthorized: authentication required: .*(--token-file|CRYPT_TOKEN)/, 'unauthorized, saying how to send one');
  const file = join(dir, 'my-token');
  await fs.writeFile(file, `${USER}\n`, { mode: 0o600 });
  const fromFile = await client(port, ['--token-file', file, 'en', 'x']);
  t.equal(fromFile.code, 0, '--token-file works (a trailing line break is fine)');
  t.equal(fromFile.err, '', 'silently');
  t.equal((await client(port, ['en', 'x'], { env: { CRYPT_TOKEN: USER } })).code, 0, 'CRYPT_TOKEN works');
  const argv = await client(port, ['--token', USER, 'en', 'x']);
  t.equal(argv.code, 0, '--token works');
  t.match(argv.err, /^crypt-client: warning: --token puts the secret in the process list, where other local users can read it; use CRYPT_TOKEN or --token-file\n$/, 'with a warning');
  await fs.chmod(file, 0o644);
  const loose = await client(port, ['--token-file', file, 'en', 'x']);
  t.equal(loose.code, 2, 'a token file open to others: exit 2');
  t.match(loose.err, /token file .* has mode 0644, open to group or others: run chmod 600/, 'with the fix');
  const both = await client(port, ['--token-file', file, 'en', 'x'], { env: { CRYPT_TOKEN: USER } });
  t.match(both.err, /give the access token one way/, 'two ways at once is a usage error');
  const wrong = await client(port, ['en', 'x'], { env: { CRYPT_TOKEN: 'wrong-token-0000000000' } });
  t.equal(wrong.err, 'crypt-client: unauthorized: invalid access token (send a token with --token-file or CRYPT_TOKEN)\n', 'a wrong token is named as such');
  const gk = await client(port, ['gk'], { env: { CRYPT_TOKEN: USER } });
  t.equal(gk.err, 'crypt-client: forbidden: gk needs the admin role\n', 'a user may not gk');
});

t.test('the prompted session, piped: every operation, help, and an exit code that reports failures', async (t) => {
  const { port, server } = await start(t);
  const token = server.keyring.current.primary.encrypt(Buffer.from('earlier'));
  const ok = await client(port, [], { stdin: `en\nhello prompt\nde\n${token}\nin\n${token}\nki\ngk\nhelp\n\nquit\nen\nnever sent\n` });
  t.equal(ok.code, 0, 'quit after successes: exit 0');
  const lines = ok.out.toString().split('\n');
  t.match(lines[0], /^gAAAAA/, 'en prints a token');
  t.equal(lines[1], 'earlier', 'de prints the plaintext');
  t.match(JSON.parse(lines[2]!), { key_state: 'primary' }, 'in prints the facts');
  t.match(JSON.parse(lines[3]!), { keys: [{ state: 'primary' }], named_keys: [{ name: 'default' }] }, 'ki prints the keys');
  t.match(lines[4], /^[A-Za-z0-9_-]{43}=$/, 'gk prints the key');
  t.same(lines.slice(5), [''], 'nothing after quit');
  t.match(ok.err, /en\s+encrypt\s+encrypt a message/, 'help lists the operations, on stderr');
  const failing = await client(port, [], { stdin: 'de\nbad\nbogus\nenc\nen\nstill works\n' });
  t.equal(failing.code, 1, 'a piped session in which something failed: exit 1');
  t.match(failing.err, /error: invalid_token: invalid token/, 'a server error is shown and the session goes on');
  t.match(failing.err, /unknown operation "bogus": choose en, de, rw, dk, in, ki, ks, kc, kf, kd, gk, rk, hc, ah, help, quit/, 'an unknown operation is explained');
  t.match(failing.err, /unknown operation "enc": .*did you mean en\?/, 'with the closest one');
  t.match(failing.out.toString(), /^gAAAAA/, 'and later operations still run');
  const constructor = await client(port, [], { stdin: 'constructor\ntoString\n' });
  t.match(constructor.err, /unknown operation "constructor"/, 'a prototype name is just an unknown operation, never a crash');
  t.equal(constructor.code, 1, 'and counts as a failure');
});

t.test('the prompted session offers what the caller may run', async (t) => {
  const dir = tempDir(t);
  const tokens = join(dir, 'tokens');
  await fs.writeFile(tokens, `user ${USER}\n`, { mode: 0o600 });
  const { port } = await start(t, { tokensFile: tokens });
  const user = await client(port, [], { stdin: 'gk\nen\nx\n', env: { CRYPT_TOKEN: USER } });
  t.match(user.err, /unknown operation "gk": choose en, de, rw, dk, in, ki, ks, hc, help, quit\n/, 'a user is not offered gk, rk or key management');
  t.match(user.out.toString(), /^gAAAAA/, 'and runs what it may');
});
