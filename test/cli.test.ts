import t from 'tap';
import type { Test } from 'tap';
import { promises as fs, statSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { spawn } from 'node:child_process';
import { SERVER_BIN, CLIENT_BIN, cleanEnv, runCli, spawnServer } from './helpers/cli.js';
import { tempDir } from './helpers/server.js';

/** A server process on port 0 in a private home, and a client runner pointed at it. */
async function setup(t: Test, serverArgs: string[] = []) {
  const home = tempDir(t);
  const env = cleanEnv(home);
  const keyring = join(home, 'keyring.json');
  const server = await spawnServer(t, ['--port', '0', '--keyring', keyring, ...serverArgs], env, home);
  const client = (args: string[], input?: string | Buffer) => runCli(CLIENT_BIN, ['--port', String(server.port), ...args], { env, cwd: home, input });
  return { home, env, keyring, server, client };
}

t.test('argv mode: en prints a token, de the plaintext, gk the key', async (t) => {
  const { client } = await setup(t);
  const en = await client(['en', 'hello', 'world']);
  t.equal(en.code, 0, 'en exits 0');
  t.match(en.stdout.toString(), /^gAAAAA[A-Za-z0-9_-]+={0,2}\n$/, 'the token alone on stdout');
  t.equal(en.stderr, '', 'nothing on stderr');
  const de = await client(['de', en.stdout.toString().trim()]);
  t.equal(de.code, 0, 'de exits 0');
  t.equal(de.stdout.toString(), 'hello world', 'words joined by spaces, the plaintext exactly');
  const gk = await client(['gk']);
  t.match(gk.stdout.toString(), /^[A-Za-z0-9_-]{43}=\n$/, 'gk prints the key');
  const ki = await client(['ki']);
  t.match(JSON.parse(ki.stdout.toString()), { keys: [{ state: 'primary' }] }, 'ki prints key metadata as JSON');
});

t.test('stdin: - and a pipe with no message send bytes exactly', async (t) => {
  const { client } = await setup(t);
  const bytes = Buffer.concat([randomBytes(5000), Buffer.from('\n#\r\n')]);
  for (const args of [['en', '-'], ['en']]) {
    const en = await client(args, bytes);
    t.equal(en.code, 0, `${args.join(' ')} exits 0`);
    const de = await client(['de'], en.stdout);
    t.ok(de.stdout.equals(bytes), `${args.join(' ')}: the plaintext comes back byte for byte (token piped to de)`);
  }
});

t.test('exit codes and one-line errors tell failures apart', async (t) => {
  const { client, env, home } = await setup(t);
  const bad = await client(['de', 'not-a-token']);
  t.equal(bad.code, 1, 'a server error exits 1');
  t.equal(bad.stderr, 'crypt-client: invalid_token: invalid token\n', 'one line, with the code');
  const usage = await client(['xx']);
  t.equal(usage.code, 2, 'a usage error exits 2');
  t.match(usage.stderr, /^crypt-client: Unknown argument: xx: see crypt-client --help\n$/, 'and says so');
  const ttl = await client(['de', 'x', '--ttl', 'soon']);
  t.equal(ttl.code, 2, 'a bad --ttl is a usage error');
  const refused = await runCli(CLIENT_BIN, ['--port', '1', 'en', 'x'], { env, cwd: home });
  t.equal(refused.code, 3, 'connection refused exits 3');
  t.equal(refused.stderr, 'crypt-client: cannot connect to 127.0.0.1:1 (connection refused): is crypt-server running?\n', 'names host:port and says to start crypt-server');
});

t.test('--help has examples; --version prints the version', async (t) => {
  const home = tempDir(t);
  const env = cleanEnv(home);
  for (const bin of [SERVER_BIN, CLIENT_BIN]) {
    const help = await runCli(bin, ['--help'], { env });
    t.equal(help.code, 0, 'help exits 0');
    t.match(help.stdout.toString(), /Examples:/, 'help shows examples');
    const version = await runCli(bin, ['--version'], { env });
    const pkg = JSON.parse(await fs.readFile(new URL('../package.json', import.meta.url), 'utf8')) as { version: string };
    t.equal(version.stdout.toString().trim(), pkg.version, 'version matches package.json');
  }
});

t.test('prompt mode with answers piped on stdin', async (t) => {
  const { client } = await setup(t);
  const first = await client([], 'en\nhello prompt\ngk\nbogus\n\nquit\nen\nnever sent\n');
  t.equal(first.code, 0, 'quit exits 0');
  const [token, key, ...rest] = first.stdout.toString().split('\n');
  t.match(token, /^gAAAAA/, 'en prints a token');
  t.match(key, /^[A-Za-z0-9_-]{43}=$/, 'gk prints the key');
  t.same(rest, [''], 'nothing after quit');
  t.match(first.stderr, /unknown operation "bogus": choose en, de, gk or quit/, 'a wrong operation is explained, then asked again');
  const second = await client([], `de\n${token}\nde\nbad\n`);
  t.equal(second.code, 0, 'end of input exits 0');
  t.equal(second.stdout.toString(), 'hello prompt\n', 'de prints the plaintext');
  t.match(second.stderr, /error: invalid_token: invalid token/, 'a server error is shown and the session goes on');
});

t.test('prompt mode in a terminal', async (t) => {
  const { server, env, home } = await setup(t);
  // script(1) runs the client in a pseudo-terminal, as a person would use it
  const child = spawn('script', ['-qec', `${process.execPath} ${CLIENT_BIN} --port ${server.port}`, '/dev/null'], { env, cwd: home });
  let out = '';
  let seen = 0;
  const steps: Array<[RegExp, string | null]> = [
    [/connected to 127\.0\.0\.1:\d+; operations: en \(encrypt\), de \(decrypt\), gk \(get key\), quit/, null],
    [/operation \(en, de, gk, quit\)> /, 'en\n'],
    [/message> /, 'typed in a terminal\n'],
    [/gAAAAA[A-Za-z0-9_-]+={0,2}\r\n/, null],
    [/operation \(en, de, gk, quit\)> /, 'quit\n'],
  ];
  const passed: string[] = [];
  child.stdout.on('data', (c: Buffer) => {
    out += c.toString();
    for (;;) {
      const step = steps[0];
      const m = step && step[0].exec(out.slice(seen));
      if (!step || !m) break;
      seen += m.index + m[0].length;
      passed.push(step[0].source);
      steps.shift();
      if (step[1]) child.stdin.write(step[1]);
    }
  });
  const code = await new Promise((resolve) => child.on('close', resolve));
  t.equal(code, 0, 'the session ends with quit');
  t.equal(steps.length, 0, 'banner, prompt for the operation, prompt for the message, the token, the prompt again: in that order');
});

t.test('the server stops on SIGTERM and SIGINT with exit 0; a restart keeps decrypting', async (t) => {
  const { server, client, keyring, env, home } = await setup(t);
  const token = (await client(['en', 'across restarts'])).stdout.toString().trim();
  server.child.kill('SIGTERM');
  t.same(await server.exited, { code: 0, signal: null }, 'SIGTERM: exit 0');
  t.ok(server.lines.some((l) => l.includes('"msg":"stopped"')), 'logs that it stopped');
  t.equal(statSync(keyring).mode & 0o777, 0o600, 'the keyring is 0600');
  const again = await spawnServer(t, ['--port', '0', '--keyring', keyring], env, home);
  const de = await runCli(CLIENT_BIN, ['--port', String(again.port), 'de', token], { env });
  t.equal(de.stdout.toString(), 'across restarts', 'the token from before the restart decrypts');
  again.child.kill('SIGINT');
  t.same(await again.exited, { code: 0, signal: null }, 'SIGINT: exit 0');
});

t.test('a keyring that cannot be parsed stops the server and stays untouched', async (t) => {
  const home = tempDir(t);
  const keyring = join(home, 'keyring.json');
  await fs.writeFile(keyring, 'not json', { mode: 0o600 });
  const ran = await runCli(SERVER_BIN, ['--port', '0', '--keyring', keyring], { env: cleanEnv(home) });
  t.equal(ran.code, 1, 'exit 1');
  t.equal(ran.stderr, `crypt-server: keyring ${keyring} is not valid: not valid JSON; it was left untouched\n`, 'a clear error');
  t.equal(await fs.readFile(keyring, 'utf8'), 'not json', 'the file is untouched');
});

t.test('invalid FERNET_KEYS stop the server; valid ones serve without a file', async (t) => {
  const home = tempDir(t);
  const bad = await runCli(SERVER_BIN, ['--port', '0'], { env: cleanEnv(home, { FERNET_KEYS: 'abc' }) });
  t.equal(bad.code, 1, 'invalid keys: exit 1');
  t.equal(bad.stderr, 'crypt-server: FERNET_KEYS: key 1 of 1 is not a Fernet key (44 characters of base64url)\n', 'a clear error, without the key');
  const key = 'cw_0x689RpI-jtRR7oE8h_eQsKImvJapLeSbXpwF4e4=';
  const env = cleanEnv(home, { FERNET_KEYS: key });
  const server = await spawnServer(t, ['--port', '0'], env);
  const token = await runCli(CLIENT_BIN, ['--port', String(server.port), 'de', 'gAAAAAAdwJ6wAAECAwQFBgcICQoLDA0ODy021cpGVWKZ_eEwCGM4BLLF_5CV9dOPmrhuVUPgJobwOz7JcbmrR64jVmpU4IwqDA=='], { env });
  t.equal(token.stdout.toString(), 'hello', 'the spec token decrypts with the spec key');
  t.same(await fs.readdir(home), [], 'no keyring file was created');
});

t.test('configuration: flags > environment > .env > defaults', async (t) => {
  const home = tempDir(t);
  await fs.writeFile(join(home, '.env'), 'CRYPT_PORT=1\nCRYPT_KEYRING=./from-dotenv.json\n');
  const fromDotenv = await spawnServer(t, [], cleanEnv(home, { CRYPT_PORT: '0' }), home);
  t.ok(statSync(join(home, 'from-dotenv.json')).isFile(), '.env supplies the keyring path');
  t.not(fromDotenv.port, 1, 'the environment beats .env for the port');
  const flag = await runCli(SERVER_BIN, ['--port', 'x'], { env: cleanEnv(home, { CRYPT_PORT: '0' }), cwd: home });
  t.equal(flag.stderr, 'crypt-server: --port: expected a whole number from 0 to 65535, got "x"\n', 'the flag beats the environment (and is validated)');
  const env = await runCli(SERVER_BIN, [], { env: cleanEnv(home, { CRYPT_PORT: '70000' }), cwd: home });
  t.equal(env.stderr, 'crypt-server: CRYPT_PORT: expected a whole number from 0 to 65535, got "70000"\n', 'an environment value is validated and named');
});
