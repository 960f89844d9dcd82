import t from 'tap';
import net from 'node:net';
import tls from 'node:tls';
import https from 'node:https';
import http from 'node:http';
import { once } from 'node:events';
import { promises as fs } from 'node:fs';
import { join } from 'node:path';
import { start, raw, show, tempDir } from '../helpers/server.js';
import { makeCerts } from '../helpers/tls.js';
import { memoryIo } from '../helpers/cli.js';
import { run as runClient } from '../../src/cli/client.js';
import { spawnSync } from 'node:child_process';
import { CLIENT_BIN, SERVER_BIN, cleanEnv, runCli, spawnServer } from '../helpers/cli.js';
import { CryptClient } from '../../src/client/client.js';
import { Keyring } from '../../src/keys/keyring.js';

const USER = 'user-token-0123456789abcdef';
const ADMIN = 'admin-token-0123456789abcdef';

async function tokensFile(dir: string, text = `user ${USER}\nadmin ${ADMIN}\n`): Promise<string> {
  const file = join(dir, 'tokens');
  await fs.writeFile(file, text, { mode: 0o600 });
  return file;
}

/** An HTTPS or HTTP request with optional headers and CA; resolves with status, headers and body. */
function request(url: string, options: { method?: string; headers?: Record<string, string>; body?: string; ca?: Buffer } = {}) {
  return new Promise<{ status: number; headers: Record<string, string | string[] | undefined>; body: string }>((resolve, reject) => {
    const req = https.request(url, { method: options.method ?? 'GET', headers: options.headers, ca: options.ca }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(chunks).toString() }));
    });
    req.on('error', reject);
    req.end(options.body);
  });
}

t.test('protected mode: a non-loopback address needs access tokens or --insecure', async (t) => {
  const home = tempDir(t);
  const env = cleanEnv(home);
  const refused = await runCli(SERVER_BIN, ['--host', '0.0.0.0', '--port', '0', '--keyring', join(home, 'k.json')], { env });
  t.equal(refused.code, 1, '--host 0.0.0.0 without tokens: exit 1');
  t.match(refused.stderr, /^crypt-server: refusing to listen on 0\.0\.0\.0 without access tokens: .*--tokens-file <file>.*--insecure to override\n$/, 'says how to configure tokens, or to override');
  t.same(await fs.readdir(home), [], 'nothing was created');
  const insecure = await spawnServer(t, ['--host', '0.0.0.0', '--port', '0', '--keyring', join(home, 'k.json'), '--insecure', '--init'], env);
  t.match(insecure.lines.join('\n'), /"level":40.*INSECURE: listening on 0\.0\.0\.0 with no access tokens/, '--insecure starts with a loud warning');
  insecure.child.kill('SIGTERM');
  await insecure.exited;
  const withTokens = await spawnServer(t, ['--host', '0.0.0.0', '--port', '0', '--keyring', join(home, 'k.json'), '--tokens-file', await tokensFile(home)], env);
  t.ok(withTokens.port > 0, 'with a tokens file it starts');
  withTokens.child.kill('SIGTERM');
  await withTokens.exited;
});

t.test('TCP: au before anything; roles; repeated failures close', async (t) => {
  const { port } = await start(t, { tokensFile: await tokensFile(tempDir(t)) });
  const s = await raw(port);
  s.send('#en#x#\n#gk##\n#ki##\n');
  const before = await s.replies(3);
  t.same(show(before), ['!unauthorized', '!unauthorized', '!unauthorized'], 'everything is unauthorized before au');
  t.match(before[0]!.ok ? '' : before[0]!.message, /authentication required/, 'and says what to do');
  s.send(`#au#${USER}#\n#en#x#\n#gk##\n#rk##\n`);
  const asUser = show(await s.replies(4));
  t.equal(asUser[0], 'ok user', 'au answers with the role');
  t.match(asUser[1], /^gAAAAA/, 'a user may encrypt');
  t.same(asUser.slice(2), ['!forbidden', '!forbidden'], 'but not gk or rk');
  s.send(`#au#${ADMIN}#\n#gk##\n`);
  const asAdmin = show(await s.replies(2));
  t.equal(asAdmin[0], 'ok admin', 're-authenticating switches the role');
  t.match(asAdmin[1], /^[A-Za-z0-9_-]{43}=$/, 'an admin may gk');
  s.socket.destroy();

  const bad = await raw(port);
  bad.send('#au#wrong-token-000000000000#\n#au#wrong-token-000000000000#\n#au#wrong-token-000000000000#\n#en#never#\n');
  const replies = await bad.replies(4);
  t.same(show(replies), ['!unauthorized', '!unauthorized', '!unauthorized'], 'three failures, then nothing more is answered');
  t.match(replies[2]!.ok ? '' : replies[2]!.message, /closing after 3 failures/, 'the last says the connection closes');
  t.ok((await bad.closed).byServer, 'and the connection is closed: the server ended the connection');
});

t.test('HTTP: Authorization: Bearer; 401 without or wrong, 403 for the wrong role', async (t) => {
  const { server } = await start(t, { tokensFile: await tokensFile(tempDir(t)), http: true, httpPort: 0 });
  const base = `http://127.0.0.1:${server.http!.address.port}`;
  const none = await fetch(`${base}/encrypt`, { method: 'POST', body: 'x' });
  t.equal(none.status, 401, 'no token: 401');
  t.equal(none.headers.get('www-authenticate'), 'Bearer', 'with WWW-Authenticate: Bearer');
  t.match(await none.json(), { error: { code: 'unauthorized' } }, 'unauthorized');
  t.equal((await fetch(`${base}/encrypt`, { method: 'POST', body: 'x', headers: { authorization: 'Bearer wrong-token-00000000000' } })).status, 401, 'wrong token: 401');
  t.equal((await fetch(`${base}/encrypt`, { method: 'POST', body: 'x', headers: { authorization: `Basic ${USER}` } })).status, 401, 'not a bearer: 401');
  const user = { authorization: `Bearer ${USER}` };
  t.equal((await fetch(`${base}/encrypt`, { method: 'POST', body: 'x', headers: user })).status, 200, 'user may encrypt');
  const key = await fetch(`${base}/key`, { headers: user });
  t.equal(key.status, 403, 'user may not get the key: 403');
  t.match(await key.json(), { error: { code: 'forbidden', message: 'gk needs the admin role' } }, 'forbidden, with the reason');
  t.equal((await fetch(`${base}/key`, { headers: { authorization: `Bearer ${ADMIN}` } })).status, 200, 'admin may');
  const batch = await fetch(`${base}/encrypt`, { method: 'POST', body: JSON.stringify({ batch: [{ plaintext: 'a' }] }), headers: { 'content-type': 'application/json' } });
  t.equal(batch.status, 401, 'a batch without a token is one 401');
  t.equal((await fetch(`${base}/health`)).status, 200, 'health needs no token');
});

t.test('the tokens file is reloaded when it changes', async (t) => {
  const dir = tempDir(t);
  const file = await tokensFile(dir);
  const { connect, waitForLog } = await start(t, { tokensFile: file });
  const NEW = 'added-later-token-0123456789';
  await t.rejects(connect({ token: NEW }), { code: 'unauthorized' }, 'an unknown token is refused');
  const open = await connect({ token: USER });
  await open.encrypt(Buffer.from('before'));
  await fs.writeFile(file, `user ${NEW}\n`);
  await waitForLog(/"tokens":1,"msg":"access tokens reloaded"/);
  await t.rejects(open.encrypt(Buffer.from('after')), { code: 'unauthorized' }, 'a connection authenticated with a removed token loses its access');
  const client = await connect({ token: NEW });
  t.equal(client.role, 'user', 'the new token works without a restart');
  await t.rejects(connect({ token: USER }), { code: 'unauthorized' }, 'a removed token no longer works');
  const still = await connect({ token: NEW });
  await fs.writeFile(file, 'nonsense\n');
  await waitForLog(/"reason":"tokens file .*: line 1: expected .*","msg":"access tokens: a line or the file was refused and grants nothing"/);
  await waitForLog(/"msg":"no valid access token: every request is refused until the tokens file is fixed"/);
  await t.rejects(connect({ token: NEW }), { code: 'unauthorized' }, 'a broken file grants nothing: revocation fails closed');
  await t.rejects(still.encrypt('x'), { code: 'unauthorized' }, 'not even to an open connection');
});

t.test('--no-get-key refuses key export to everyone, TCP and HTTP', async (t) => {
  const { server, connect } = await start(t, { tokensFile: await tokensFile(tempDir(t)), getKey: false, http: true, httpPort: 0 });
  const admin = await connect({ token: ADMIN });
  await t.rejects(admin.getKey(), { code: 'forbidden', message: 'key export is disabled on this server (--no-get-key): gk is refused to everyone' }, 'TCP: forbidden even to an admin');
  const res = await fetch(`http://127.0.0.1:${server.http!.address.port}/key`, { headers: { authorization: `Bearer ${ADMIN}` } });
  t.equal(res.status, 403, 'HTTP: 403');
  t.match(await admin.rotate(), { state: 'primary' }, 'other admin operations still work');
});

t.test('TLS on both listeners, TLS 1.2 or later; the client with --tls and --ca', async (t) => {
  const dir = tempDir(t);
  const certs = makeCerts(dir);
  const env = cleanEnv(dir);
  const server = await spawnServer(t, ['--port', '0', '--http', '--http-port', '0', '--keyring', join(dir, 'k.json'), '--init', '--tls-cert', certs.certFile, '--tls-key', certs.keyFile], env);
  t.match(server.lines.join('\n'), /"proto":"tcp\+tls"/, 'TCP listens with TLS');
  t.match(server.lines.join('\n'), /"proto":"https"/, 'HTTP listens with TLS');
  const port = ['--port', String(server.port)];
  const en = await runCli(CLIENT_BIN, [...port, '--tls', '--ca', certs.caFile, 'en', 'over tls'], { env });
  t.equal(en.code, 0, 'crypt-client --tls --ca: exit 0');
  const de = await runCli(CLIENT_BIN, [...port, '--tls', '--ca', certs.caFile, 'de', en.stdout.toString().trim()], { env });
  t.equal(de.stdout.toString(), 'over tls', 'round trip over TLS');
  const noCa = await runCli(CLIENT_BIN, [...port, '--tls', 'en', 'x'], { env });
  t.equal(noCa.code, 3, 'without the CA: exit 3');
  t.equal(noCa.stderr, `crypt-client: TLS with 127.0.0.1:${server.port} failed: the server's certificate is signed by a CA this machine does not trust: pass that CA with --ca <file>\n`, 'says to pass --ca');
  const other = makeCerts(tempDir(t));
  const wrongCa = await runCli(CLIENT_BIN, [...port, '--tls', '--ca', other.caFile, 'en', 'x'], { env });
  t.equal(wrongCa.stderr, `crypt-client: TLS with 127.0.0.1:${server.port} failed: the server's certificate is not signed by the CA given with --ca\n`, 'with --ca, says that CA does not sign it');

  const plain = await runCli(CLIENT_BIN, [...port, '--timeout', '3', 'en', 'x'], { env });
  t.equal(plain.code, 3, 'a plain client against TLS: exit 3');
  t.match(plain.stderr, /^crypt-client: connection to 127\.0\.0\.1:\d+ (closed by the server before any reply: does it expect TLS \(--tls\)\?|was reset: does the server expect TLS \(--tls\)\?)\n$/, 'one line, suggesting --tls');


  const https1 = await request(`https://127.0.0.1:${server.httpPort}/encrypt`, { method: 'POST', body: 'over https', headers: { 'content-type': 'text/plain' }, ca: certs.ca });
  t.equal(https1.status, 200, 'HTTPS encrypt');
  const https2 = await request(`https://localhost:${server.httpPort}/decrypt`, { method: 'POST', body: https1.body, headers: { 'content-type': 'text/plain' }, ca: certs.ca });
  t.equal(https2.body, 'over https', 'HTTPS decrypt, by host name too');
  const client = await CryptClient.connect({ host: 'localhost', port: server.port, tls: true, ca: certs.ca });
  t.equal((await client.decrypt(https1.body.trim())).toString(), 'over https', 'an HTTPS token decrypts over TCP+TLS');
  await client.close();
});

t.test('limits: connections, idle, TLS handshake', async (t) => {
  const { port } = await start(t, { maxConnections: 2, idleTimeout: 0.3 });
  const a = await raw(port);
  const b = await raw(port);
  const c = await raw(port);
  t.same(show(await c.replies(1)), ['!busy'], 'the third connection gets busy');
  t.ok((await c.closed).byServer, 'and is closed: the server ended the connection');
  a.send('#en#x#\n');
  t.equal((await a.replies(1)).length, 1, 'the others are served');
  const idle = await b.replies(1);
  t.same(show(idle), ['!timeout'], 'a silent connection gets timeout');
  t.ok((await b.closed).byServer, 'and is closed: the server ended the connection');
  a.socket.destroy();

  const dir = tempDir(t);
  const certs = makeCerts(dir);
  const secure = await start(t, { tlsCert: certs.certFile, tlsKey: certs.keyFile, handshakeTimeout: 0.3 });
  const silent = net.connect(secure.port, '127.0.0.1');
  await once(silent, 'connect');
  silent.on('error', () => undefined);
  let received = 0;
  silent.on('data', (c: Buffer) => (received += c.length));
  await new Promise((resolve) => silent.once('close', resolve));
  t.equal(received, 0, 'a connection that never does its TLS handshake is closed, without a byte');
});

t.test('secret files open to group or others stop the server with the chmod fix', async (t) => {
  const home = tempDir(t);
  const env = cleanEnv(home);
  const keyring = join(home, 'k.json');
  await Keyring.open({ file: keyring }, { create: true });
  await fs.chmod(keyring, 0o644);
  const k = await runCli(SERVER_BIN, ['--port', '0', '--keyring', keyring], { env });
  t.equal(k.code, 1, 'keyring 0644: exit 1');
  t.equal(k.stderr, `crypt-server: keyring ${keyring} has mode 0644, open to group or others: run chmod 600 ${keyring}\n`, 'with the fix');
  await fs.chmod(keyring, 0o600);
  const tokens = await tokensFile(home);
  await fs.chmod(tokens, 0o640);
  const tk = await runCli(SERVER_BIN, ['--port', '0', '--keyring', keyring, '--tokens-file', tokens], { env });
  t.equal(tk.code, 1, 'tokens file 0640: exit 1');
  t.equal(tk.stderr, `crypt-server: tokens file ${tokens} has mode 0640, open to group or others: run chmod 600 ${tokens}\n`, 'with the fix');
});

t.test('a session with tokens at debug level logs no secret', async (t) => {
  const { server, logs, connect } = await start(t, { tokensFile: await tokensFile(tempDir(t)), logLevel: 'debug', http: true, httpPort: 0 });
  const client = await connect({ token: ADMIN });
  const token = await client.encrypt('TOP-SECRET-PLAINTEXT');
  const key = await client.getKey();
  await t.rejects(connect({ token: 'WRONG-SECRET-0123456789' }), { code: 'unauthorized' }, 'a wrong token');
  await fetch(`http://127.0.0.1:${server.http!.address.port}/decrypt`, { method: 'POST', body: token, headers: { authorization: `Bearer ${USER}` } });
  await fetch(`http://127.0.0.1:${server.http!.address.port}/key`, { headers: { authorization: 'Bearer WRONG-SECRET-0123456789' } });
  const text = logs.join('');
  // the search below means something only if the session was logged in detail
  t.ok(logs.filter((l) => /"level":20.*"msg":"request"/.test(l)).length >= 4, 'every request has a debug line');
  t.match(text, /"transport":"http".*"op":"de".*"outcome":"ok"/, 'the HTTP decrypt among them');
  for (const [name, secret] of Object.entries({ ADMIN, USER, wrong: 'WRONG-SECRET-0123456789', plaintext: 'TOP-SECRET-PLAINTEXT', token, key })) {
    t.notOk(text.includes(secret), `no ${name} in the logs`);
  }
});

/** A TLS client's outcome: the protocol and cipher, or the error code. */
function tlsTry(port: number, ca: Buffer, options: tls.ConnectionOptions): Promise<{ socket: tls.TLSSocket; error: string | null; cipher: string | null }> {
  return new Promise((resolve) => {
    const socket = tls.connect({ host: '127.0.0.1', port, ca, ...options });
    socket.once('secureConnect', () => resolve({ socket, error: null, cipher: socket.getCipher().name }));
    // later errors (a reset after the outcome) belong to nobody: keep them from being uncaught
    socket.on('error', (err: NodeJS.ErrnoException) => resolve({ socket, error: err.code ?? 'error', cipher: null }));
  });
}

t.test('TLS: 1.2 only with ECDHE and AEAD, never older; renegotiation refused; on both listeners', async (t) => {
  const certs = makeCerts(tempDir(t));
  const { port, server } = await start(t, { tlsCert: certs.certFile, tlsKey: certs.keyFile, http: true, httpPort: 0 });
  for (const [name, p] of [['TCP', port], ['HTTPS', server.http!.address.port]] as const) {
    const old = await tlsTry(p, certs.ca, { minVersion: 'TLSv1', maxVersion: 'TLSv1.1', ciphers: 'DEFAULT@SECLEVEL=0' });
    t.equal(old.error, 'ERR_SSL_TLSV1_ALERT_PROTOCOL_VERSION', `${name}: TLS 1.1 is refused by the server`);
    for (const suite of ['ECDHE-ECDSA-AES128-SHA', 'ECDHE-ECDSA-AES256-SHA384', 'AES128-GCM-SHA256']) {
      const weak = await tlsTry(p, certs.ca, { maxVersion: 'TLSv1.2', ciphers: suite });
      t.ok(weak.error !== null, `${name}: TLS 1.2 with ${suite} is refused (${weak.error})`);
      weak.socket.destroy();
    }
    const good = await tlsTry(p, certs.ca, { maxVersion: 'TLSv1.2', ciphers: 'ECDHE-ECDSA-AES128-GCM-SHA256' });
    t.equal(good.cipher, 'ECDHE-ECDSA-AES128-GCM-SHA256', `${name}: TLS 1.2 with ECDHE and AES-GCM works`);
    const closed = new Promise((resolve) => good.socket.once('close', resolve));
    const refused = new Promise<string>((resolve) => good.socket.on('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? 'error')));
    good.socket.renegotiate({}, () => undefined);
    t.equal(await refused, 'ERR_SSL_NO_RENEGOTIATION', `${name}: a renegotiation is refused`);
    await closed;
    const modern = await tlsTry(p, certs.ca, {});
    t.match(modern.cipher, /^TLS_/, `${name}: TLS 1.3 works (${modern.cipher})`);
    modern.socket.destroy();
  }
});

t.test('the TLS key is a secret file; a mismatched or swapped pair names the files and flags', async (t) => {
  const dir = tempDir(t);
  const certs = makeCerts(dir);
  const other = makeCerts(tempDir(t));
  const env = cleanEnv(dir);
  const serve = (cert: string, key: string) => runCli(SERVER_BIN, ['--port', '0', '--keyring', join(dir, 'k.json'), '--init', '--tls-cert', cert, '--tls-key', key], { env });
  await fs.chmod(certs.keyFile, 0o644);
  const loose = await serve(certs.certFile, certs.keyFile);
  t.equal(loose.code, 1, 'a TLS key readable by others: exit 1');
  t.equal(loose.stderr, `crypt-server: TLS private key ${certs.keyFile} has mode 0644, open to group or others: run chmod 600 ${certs.keyFile}\n`, 'with the chmod fix');
  await fs.chmod(certs.keyFile, 0o600);
  const mismatched = await serve(certs.certFile, other.keyFile);
  t.equal(mismatched.stderr, `crypt-server: the TLS certificate ${certs.certFile} (--tls-cert) and private key ${other.keyFile} (--tls-key) do not belong together, or one of them is unreadable\n`, 'a key of another certificate');
  const swappedKey = join(dir, 'swapped.key');
  await fs.copyFile(certs.certFile, swappedKey);
  await fs.chmod(swappedKey, 0o600);
  const swapped = await serve(certs.keyFile, swappedKey);
  t.match(swapped.stderr, /--tls-cert\) holds no PEM certificate: are --tls-cert and --tls-key swapped\?/, 'swapped files are named as such');
  const missing = await runCli(SERVER_BIN, ['--port', '0', '--tls-key', certs.keyFile], { env });
  t.equal(missing.stderr, 'crypt-server: --tls-key needs --tls-cert too\n', 'half a pair is a usage error');
  t.equal(missing.code, 2, 'exit 2');
});

t.test('a renewed certificate is served without a restart', async (t) => {
  const dir = tempDir(t);
  const first = makeCerts(dir);
  const { port, waitForLog } = await start(t, { tlsCert: first.certFile, tlsKey: first.keyFile });
  const before = await tlsTry(port, first.ca, {});
  t.equal(before.error, null, 'the first certificate is served');
  const fingerprint = before.socket.getPeerCertificate().fingerprint256;
  before.socket.destroy();
  const renewed = makeCerts(tempDir(t));
  await fs.writeFile(first.keyFile, await fs.readFile(renewed.keyFile));
  await fs.writeFile(first.certFile, await fs.readFile(renewed.certFile));
  await waitForLog(/"msg":"TLS certificate and key reloaded"/);
  let after = await tlsTry(port, renewed.ca, {});
  // the two files change one after the other: a reload may have seen the first alone (and been refused)
  while (after.error === null && after.socket.getPeerCertificate().fingerprint256 === fingerprint) {
    after.socket.destroy();
    await waitForLog(/"msg":"TLS certificate and key reloaded"/);
    after = await tlsTry(port, renewed.ca, {});
  }
  t.equal(after.error, null, 'the renewed certificate is served, trusted by its CA');
  t.not(after.socket.getPeerCertificate().fingerprint256, fingerprint, 'a different certificate');
  after.socket.destroy();
});

t.test('a non-ASCII secret works the same over TCP and HTTP', async (t) => {
  const secret = 'sécret-ünïcode-0123456789';
  const { port, server } = await start(t, { tokensFile: await tokensFile(tempDir(t), `user ${secret}\n`), http: true, httpPort: 0 });
  const tcp = await raw(port);
  tcp.send(Buffer.from(`#au#${secret}#\n`, 'utf8'));
  t.same(show(await tcp.replies(1)), ['ok user'], 'TCP: its UTF-8 bytes authenticate');
  tcp.socket.destroy();
  const res = await new Promise<number>((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port: server.http!.address.port, path: '/keys', headers: { authorization: Buffer.from(`Bearer ${secret}`, 'utf8').toString('latin1') } }, (r) => {
      r.resume();
      resolve(r.statusCode!);
    });
    req.on('error', reject);
    req.end();
  });
  t.equal(res, 200, 'HTTP: the same bytes in the Authorization header authenticate');
});

t.test('--insecure says so on stderr too, whatever the log level', async (t) => {
  const home = tempDir(t);
  const server = await spawnServer(t, ['--host', '0.0.0.0', '--port', '0', '--keyring', join(home, 'k.json'), '--init', '--insecure', '--log-level', 'error'], cleanEnv(home));
  t.match(server.lines.join('\n'), /crypt-server: INSECURE: listening on 0\.0\.0\.0 with no access tokens/, 'the warning is on stderr');
  server.child.kill('SIGTERM');
  await server.exited;
});

t.test('TLS failures name their real cause', async (t) => {
  const dir = tempDir(t);
  // what a newcomer makes first: CN=localhost and no subjectAltName for 127.0.0.1
  const nameOnly = makeCerts(dir, 'DNS:localhost');
  const tlsServer = await start(t, { tlsCert: nameOnly.certFile, tlsKey: nameOnly.keyFile });
  const plain = await start(t);
  const cli = async (args: string[]) => {
    const io = memoryIo({ cwd: dir });
    const code = await runClient(args, io);
    return { code, err: io.err() };
  };
  const byAddress = await cli(['--port', String(tlsServer.port), '--tls', '--ca', nameOnly.caFile, 'en', 'x']);
  t.equal(byAddress.code, 3, 'exit 3');
  t.match(byAddress.err, /^crypt-client: TLS with 127\.0\.0\.1:\d+ failed: the server's certificate is not for 127\.0\.0\.1 \(.*\): connect with a name it has, or give it subjectAltName=DNS:localhost,IP:127\.0\.0\.1 \(README, TLS\)\n$/, 'an address the certificate does not name: the name is the cause, not --ca');
  t.equal((await cli(['--host', 'localhost', '--port', String(tlsServer.port), '--tls', '--ca', nameOnly.caFile, 'en', 'x'])).code, 0, 'by the name it has, it works');
  const notTls = await cli(['--port', String(plain.port), '--tls', 'en', 'x']);
  t.equal(notTls.err, `crypt-client: TLS with 127.0.0.1:${plain.port} failed: the server does not speak TLS there: leave out --tls, or check --port\n`, '--tls against a plain server says so');
});

t.test("the README's TLS recipe works as written", async (t) => {
  const readme = await fs.readFile(new URL('../../README.md', import.meta.url), 'utf8');
  const recipe = /<!-- tls-recipe -->\n```sh\n([\s\S]*?)```/.exec(readme)?.[1];
  t.ok(recipe, 'the README has the recipe');
  const dir = tempDir(t);
  const ran = spawnSync('bash', ['-euo', 'pipefail', '-c', recipe!], { cwd: dir, encoding: 'utf8' });
  t.equal(ran.status, 0, `it runs (${ran.stderr.trim().split('\n').at(-1) ?? ''})`);
  const { port } = await start(t, { tlsCert: join(dir, 'server.pem'), tlsKey: join(dir, 'server.key') });
  for (const host of ['127.0.0.1', 'localhost']) {
    const io = memoryIo({ cwd: dir });
    const code = await runClient(['--host', host, '--port', String(port), '--tls', '--ca', join(dir, 'ca.pem'), 'en', 'hello'], io);
    t.equal(code, 0, `crypt-client --tls --ca ca.pem reaches ${host}`);
  }
});

t.test('guessing tokens: failures count across connections and transports, per address', async (t) => {
  const { port, server, waitForLog } = await start(t, { tokensFile: await tokensFile(tempDir(t)), authFailures: 5, http: true, httpPort: 0 });
  const wrong = '#au#wrong-token-000000000000#\n';
  const first = await raw(port);
  first.send(`${wrong}#au#${USER}#\n${wrong}${wrong}`);
  t.same(show(await first.replies(4)), ['!unauthorized', 'ok user', '!unauthorized', '!unauthorized'], 'a success in between does not reset the count: the third failure closes');
  t.ok((await first.closed).byServer, 'closed by the server');
  const second = await raw(port);
  second.send(`${wrong}${wrong}#au#${USER}#\n`);
  const replies = await second.replies(3);
  t.same(show(replies), ['!unauthorized', '!unauthorized', '!rate_limited'], 'a new connection from the same address: after 5 failures in all, even a right token is refused');
  t.match(replies[2]!.ok ? '' : replies[2]!.message, /too many failed authentications from this address; try again in \d+ s/, 'saying why and for how long');
  const res = await fetch(`http://127.0.0.1:${server.http!.address.port}/keys`, { headers: { authorization: `Bearer ${USER}` } });
  t.equal(res.status, 429, 'HTTP from the same address is refused too');
  await server.close();
  const line = await waitForLog(/"msg":"failed authentications in the last minute"/);
  t.match(line, /"failures":5,"addresses":1,"refused":2/, 'one log line sums them up');
});
