// The command lines as real processes: what only a process shows (the bins, stdin and exit codes
// as the shell sees them, signals, a terminal). Everything else is tested in process, through
// run(argv, io): test/cli/client.test.ts and test/cli/server.test.ts.
import t from 'tap';
import type { Test } from 'tap';
import { promises as fs, statSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { spawn } from 'node:child_process';
import { SERVER_BIN, CLIENT_BIN, cleanEnv, runCli, spawnServer } from '../helpers/cli.js';
import { tempDir } from '../helpers/server.js';

/** A server process on port 0 in a private home, and a client runner pointed at it. */
async function setup(t: Test, serverArgs: string[] = []) {
  const home = tempDir(t);
  const env = cleanEnv(home);
  const keyring = join(home, 'keyring.json');
  const server = await spawnServer(t, ['--port', '0', '--keyring', keyring, '--init', ...serverArgs], env, home);
  const client = (args: string[], input?: string | Buffer) => runCli(CLIENT_BIN, ['--port', String(server.port), ...args], { env, cwd: home, input });
  return { home, env, keyring, server, client };
}

t.test('the bins: --help has examples, --version the version', async (t) => {
  const env = cleanEnv(tempDir(t));
  const pkg = JSON.parse(await fs.readFile(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
  for (const bin of [SERVER_BIN, CLIENT_BIN]) {
    const help = await runCli(bin, ['--help'], { env });
    t.equal(help.code, 0, 'help exits 0');
    t.match(help.stdout.toString(), /Examples:/, 'help shows examples');
    t.equal((await runCli(bin, ['--version'], { env })).stdout.toString().trim(), pkg.version, 'version matches package.json');
  }
});

t.test('a round trip through real pipes, byte for byte, and exit codes as the shell sees them', async (t) => {
  const { client, env, home } = await setup(t);
  const en = await client(['en', 'hello', 'world']);
  t.equal(en.code, 0, 'en exits 0');
  t.match(en.stdout.toString(), /^gAAAAA[A-Za-z0-9_-]+={0,2}\n$/, 'the token alone on stdout');
  t.equal((await client(['de'], en.stdout)).stdout.toString(), 'hello world', 'the token piped to de');
  const bytes = Buffer.concat([randomBytes(5000), Buffer.from('\n#\r\n')]);
  const binary = await client(['en', '-'], bytes);
  t.ok((await client(['de', '-'], binary.stdout)).stdout.equals(bytes), 'binary stdin with -, back byte for byte');
  t.equal((await client(['de', 'not-a-token'])).code, 1, 'a server error: exit 1');
  t.equal((await client(['xx'])).code, 2, 'a usage error: exit 2');
  t.equal((await client(['en'], '')).code, 2, 'an empty pipe: exit 2');
  const refused = await runCli(CLIENT_BIN, ['--port', '1', 'en', 'x'], { env, cwd: home });
  t.equal(refused.code, 3, 'connection refused: exit 3');
});

/** Drives a session in a pseudo-terminal (script(1)): each step waits for a pattern, then types. */
async function terminalSession(t: Test, port: number, env: NodeJS.ProcessEnv, cwd: string, steps: Array<[RegExp, string | null]>) {
  const child = spawn('script', ['-qec', `${process.execPath} ${CLIENT_BIN} --port ${port}`, '/dev/null'], { env, cwd });
  let out = '';
  let seen = 0;
  const remaining = [...steps];
  child.stdout.on('data', (c: Buffer) => {
    out += c.toString();
    for (;;) {
      const step = remaining[0];
      const m = step && step[0].exec(out.slice(seen));
      if (!step || !m) break;
      seen += m.index + m[0].length;
      remaining.shift();
      if (step[1] !== null) child.stdin.write(step[1]);
    }
  });
  const code = await new Promise((resolve) => child.on('close', resolve));
  return { code, remaining: remaining.length, out };
}

t.test('the prompted session in a terminal: every operation offered, history, Ctrl-D and Ctrl-C end it', async (t) => {
  const { server, env, home } = await setup(t);
  const prompt = /operation \(en, de, rw, dk, in, ki, ks, kc, kf, kd, gk, rk, hc, ah, help, quit\)> /;
  const first = await terminalSession(t, server.port, env, home, [
    [/connected to 127\.0\.0\.1:\d+; operations: en, de, rw, dk, in, ki, ks, kc, kf, kd, gk, rk, hc, ah, help, quit/, null],
    [prompt, 'en\r'],
    [/message> /, 'typed in a terminal\r'],
    [/gAAAAA[A-Za-z0-9_-]+={0,2}\r\n/, null],
    // up arrow twice: the line before the last one, `en`, from the history
    [prompt, '\x1b[A\x1b[A\r'],
    [/message> /, 'again\r'],
    [/gAAAAA[A-Za-z0-9_-]+={0,2}\r\n/, null],
    [prompt, '\x04'],
  ]);
  t.equal(first.remaining, 0, 'banner, prompts, a token, a line from the history, a token again: in that order');
  t.equal(first.code, 0, 'Ctrl-D ends the session with exit 0');
  const second = await terminalSession(t, server.port, env, home, [
    [prompt, 'gk\r'],
    [/[A-Za-z0-9_-]{43}=\r\n/, null],
    [prompt, '\x03'],
  ]);
  t.equal(second.remaining, 0, 'gk answers in the terminal too');
  t.equal(second.code, 0, 'Ctrl-C ends the session with exit 0');
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

t.test('FERNET_KEYS serve without a file', async (t) => {
  const home = tempDir(t);
  const env = cleanEnv(home, { FERNET_KEYS: 'cw_0x689RpI-jtRR7oE8h_eQsKImvJapLeSbXpwF4e4=' });
  const server = await spawnServer(t, ['--port', '0'], env);
  const de = await runCli(CLIENT_BIN, ['--port', String(server.port), 'de', 'gAAAAAAdwJ6wAAECAwQFBgcICQoLDA0ODy021cpGVWKZ_eEwCGM4BLLF_5CV9dOPmrhuVUPgJobwOz7JcbmrR64jVmpU4IwqDA=='], { env });
  t.equal(de.stdout.toString(), 'hello', 'the spec token decrypts with the spec key');
  t.same(await fs.readdir(home), [], 'no keyring file was created');
});

t.test('configuration: flags > environment > .env > defaults', async (t) => {
  const home = tempDir(t);
  await fs.writeFile(join(home, '.env'), 'CRYPT_PORT=1\nCRYPT_KEYRING=./from-dotenv.json\nCRYPT_INIT=true\n');
  const fromDotenv = await spawnServer(t, [], cleanEnv(home, { CRYPT_PORT: '0' }), home);
  t.ok(statSync(join(home, 'from-dotenv.json')).isFile(), '.env supplies the keyring path');
  t.not(fromDotenv.port, 1, 'the environment beats .env for the port');
  const flag = await runCli(SERVER_BIN, ['--port', 'x'], { env: cleanEnv(home, { CRYPT_PORT: '0' }), cwd: home });
  t.equal(flag.stderr, 'crypt-server: --port: expected a whole number from 0 to 65535, got "x"\n', 'the flag beats the environment (and is validated)');
  const env = await runCli(SERVER_BIN, [], { env: cleanEnv(home, { CRYPT_PORT: '70000' }), cwd: home });
  t.equal(env.stderr, 'crypt-server: CRYPT_PORT: expected a whole number from 0 to 65535, got "70000"\n', 'an environment value is validated and named');
});
