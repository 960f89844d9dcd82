import t from 'tap';
import { readFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { CLIENT, SERVER, ConfigError, clientConfig, defaultKeyring, envExample, readDotenv, resolve, serverConfig } from '../../src/ops/config.js';
import type { ServerConfig } from '../../src/ops/config.js';

t.test('precedence: flags > environment > .env > defaults', async (t) => {
  const cfg = (flags: Record<string, unknown>, env: Record<string, string>, dotenv: Record<string, string>) =>
    serverConfig({ flags, env, dotenv });
  t.equal(cfg({}, {}, {}).port, 8000, 'default');
  t.equal(cfg({}, {}, { CRYPT_PORT: '3' }).port, 3, '.env over the default');
  t.equal(cfg({}, { CRYPT_PORT: '2' }, { CRYPT_PORT: '3' }).port, 2, 'environment over .env');
  t.equal(cfg({ port: '1' }, { CRYPT_PORT: '2' }, { CRYPT_PORT: '3' }).port, 1, 'flag over environment');
  const d = cfg({}, {}, {});
  t.match(d, { host: '127.0.0.1', http: false, httpPort: 8080, maxFrame: 1048576, logLevel: 'info', getKey: true, insecure: false, workers: 1 }, 'documented defaults');
  t.equal(d.tokensFile, undefined, 'no tokens file by default');
  t.equal(d.fernetKeys, undefined, 'no FERNET_KEYS by default');
});

t.test('values are validated the same way from every source, and named', async (t) => {
  const bad: Array<[Record<string, unknown>, Record<string, string>, RegExp]> = [
    [{ port: 'x' }, {}, /^--port: expected a whole number from 0 to 65535, got "x"$/],
    [{}, { CRYPT_PORT: '65536' }, /^CRYPT_PORT: expected a whole number/],
    [{}, { CRYPT_MAX_FRAME: '0' }, /^CRYPT_MAX_FRAME: expected a whole number from 1 /],
    [{ workers: '0' }, {}, /^--workers: expected a whole number from 1 /],
    [{ 'log-level': 'loud' }, {}, /^--log-level: expected one of fatal, error/],
    [{}, { CRYPT_HTTP: 'maybe' }, /^CRYPT_HTTP: expected true or false, got "maybe"$/],
    [{ keyring: '' }, {}, /^--keyring: expected a file path/],
    [{ 'tls-cert': 'c.pem' }, {}, /^--tls-cert needs --tls-key too$/],
    [{ 'log-format': 'xml' }, {}, /^--log-format: expected one of auto, json, pretty/],
    [{ 'allowed-hosts': 'a b' }, {}, /^--allowed-hosts: expected host names or addresses, comma-separated, or \*/],
    [{ 'memory-budget': '1000' }, {}, /^--memory-budget: expected a whole number from 1048576 /],
    [{}, { FERNET_KEYS: '' }, /^FERNET_KEYS: expected a value$/],
  ];
  for (const [flags, env, message] of bad) t.throws(() => serverConfig({ flags, env, dotenv: {} }), { name: 'ConfigError', message }, `rejects ${JSON.stringify({ ...flags, ...env })}`);
  t.throws(() => serverConfig({ flags: {}, env: {}, dotenv: { CRYPT_PORT: 'x' } }), { message: /^CRYPT_PORT in \.env: / }, 'a .env value is named as such');
  t.throws(() => clientConfig({ flags: {}, env: { CRYPT_TOKEN: ' ' }, dotenv: {} }), { message: 'CRYPT_TOKEN: expected a value' }, 'a secret is never shown');
  const ok = serverConfig({ flags: { http: true, 'rate-limit': '0' }, env: { CRYPT_INSECURE: 'YES', CRYPT_GET_KEY: 'off', CRYPT_IDLE_TIMEOUT: '0' }, dotenv: {} });
  t.match(ok, { http: true, insecure: true, getKey: false, rateLimit: 0, idleTimeout: 0 }, 'booleans and zero where allowed');
});

t.test('derived settings: --http-port turns HTTP on; lists; whether the keyring path is the default', async (t) => {
  const cfg = (flags: Record<string, unknown>, env: Record<string, string> = {}) => serverConfig({ flags, env, dotenv: {} });
  t.equal(cfg({}).http, false, 'no HTTP by default');
  t.equal(cfg({ 'http-port': '9000' }).http, true, '--http-port alone turns HTTP on');
  t.equal(cfg({}, { CRYPT_HTTP_PORT: '9000' }).http, true, 'CRYPT_HTTP_PORT too');
  t.equal(cfg({ 'http-port': '9000', http: false }).http, false, 'unless HTTP is turned off explicitly');
  t.same(cfg({ 'allowed-hosts': 'Crypt.Internal, 10.0.0.5 ,[::1]' }).allowedHosts, ['crypt.internal', '10.0.0.5', '[::1]'], 'a list, trimmed and lower-cased');
  t.same(cfg({}).allowedHosts, [], 'empty by default');
  t.equal(cfg({}).keyringDefault, true, 'the default keyring path');
  t.equal(cfg({ keyring: '/k.json' }).keyringDefault, false, 'a given one');
  t.throws(() => clientConfig({ flags: { 'token-file': 'f' }, env: { CRYPT_TOKEN: 'x' }, dotenv: {} }), { message: /give the access token one way/ }, 'a token two ways');
});

t.test('paths: ~ expands; the default keyring follows XDG', async (t) => {
  t.equal(defaultKeyring({ HOME: '/h' }), '/h/.local/share/crypt/keyring.json', 'under ~/.local/share');
  t.equal(defaultKeyring({ HOME: '/h', XDG_DATA_HOME: '/x' }), '/x/crypt/keyring.json', 'under $XDG_DATA_HOME');
  t.equal(serverConfig({ flags: {}, env: { HOME: '/h' }, dotenv: {} }).keyring, '/h/.local/share/crypt/keyring.json', 'the default keyring');
  t.equal(serverConfig({ flags: { keyring: '~/k.json' }, env: { HOME: '/h' }, dotenv: {} }).keyring, '/h/k.json', '~ expands');
  t.equal(clientConfig({ flags: { ca: 'ca.pem' }, env: {}, dotenv: {} }).ca, 'ca.pem', 'a relative path stays relative');
});

t.test('.env is read from a directory without touching process.env', async (t) => {
  const dir = t.testdir({ '.env': '# comment\nCRYPT_PORT=9\nCRYPT_HOST="0.0.0.0"\n' });
  t.same(readDotenv(dir), { CRYPT_PORT: '9', CRYPT_HOST: '0.0.0.0' }, 'parsed');
  t.equal(process.env.CRYPT_PORT, undefined, 'process.env untouched');
  t.same(readDotenv(join(dir, 'missing')), {}, 'absent is empty');
  const odd = t.testdir();
  mkdirSync(join(odd, '.env'));
  t.throws(() => readDotenv(odd), ConfigError, 'unreadable is an error');
});

t.test('.env.example lists every variable with its default, and is up to date', async (t) => {
  const file = readFileSync(new URL('../../.env.example', import.meta.url), 'utf8');
  t.equal(file, envExample(), '.env.example is what envExample() generates (run: npm run env-example)');
  for (const s of [...SERVER, ...CLIENT]) t.match(file, new RegExp(`^#? ?${s.env}=`, 'm'), `${s.env} is listed`);
  const asDotenv = serverConfig({ flags: {}, env: {}, dotenv: readDotenvText(file) });
  const defaults = serverConfig({ flags: {}, env: {}, dotenv: {} });
  t.same(asDotenv, defaults, 'copied to .env as is, it changes nothing');
});

t.test('the README configuration table covers every variable', async (t) => {
  const readme = readFileSync(new URL('../../README.md', import.meta.url), 'utf8');
  for (const s of [...SERVER, ...CLIENT]) t.match(readme, `\`${s.env}\``, `README mentions ${s.env}`);
});

t.test('resolve is table-driven', async (t) => {
  const out = resolve<{ a: string }>([{ key: 'a', flag: 'a', env: 'A', kind: 'string', default: 'd', describe: '' }], { flags: {} });
  t.same(out, { a: 'd' }, 'a default from the table');
  process.env.CRYPT_MAX_BATCH = '7';
  t.teardown(() => delete process.env.CRYPT_MAX_BATCH);
  const fromProcess: ServerConfig = serverConfig({ flags: {} });
  t.equal(fromProcess.maxBatch, 7, 'process.env is the default environment');
});

function readDotenvText(text: string): Record<string, string> {
  return Object.fromEntries(text.split('\n').filter((l) => /^[A-Z_]+=/.test(l)).map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]));
}
