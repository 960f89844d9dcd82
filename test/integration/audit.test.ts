// The audit log as an operator uses it: a session over TCP and HTTP (batches too) with access
// tokens, then "which caller decrypted with key X", audit-hash finding a token's lines, and no
// secret of any kind in the file. Fail closed: an injected write failure and a real full disk (a
// tmpfs of 64 KiB in a mount namespace) refuse every operation whose line was not written; the
// command line's keys actions are recorded; SIGHUP reopens the file after a rename.
import t from 'tap';
import { spawn, spawnSync } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { promises as fs } from 'node:fs';
import { join } from 'node:path';
import { start, raw, show, tempDir } from '../helpers/server.js';
import { SERVER_BIN, cleanEnv, memoryIo, spawnServer } from '../helpers/cli.js';
import { run as serverRun } from '../../src/cli/server.js';
import { run as clientRun } from '../../src/cli/client.js';
import { loadSalt } from '../../src/core/audit.js';

const USER = 'audit-user-token-0123456789abcdef';
const ADMIN = 'audit-admin-token-0123456789abcdef';

async function setup(t: Parameters<typeof start>[0], extra: Parameters<typeof start>[1] = {}) {
  const dir = tempDir(t);
  const tokensFile = join(dir, 'tokens');
  await fs.writeFile(tokensFile, `user ${USER}\nadmin ${ADMIN}\n`, { mode: 0o600 });
  const auditFile = join(dir, 'audit.log');
  const started = await start(t, { tokensFile, http: true, httpPort: 0, auditFile, keyring: join(dir, 'keyring.json'), ...extra });
  const base = `http://127.0.0.1:${started.server.http!.address.port}`;
  const lines = async () => (await fs.readFile(auditFile, 'utf8')).split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>);
  return { ...started, dir, auditFile, base, lines };
}

t.test('a session over TCP and HTTP: a line each, jq questions answered, audit-hash finds a token', async (t) => {
  const { server, port, base, lines, auditFile, dir } = await setup(t);
  await server.service.createKey('billing', { derived: false, exportable: false });
  const user = await (await import('../../src/client/client.js')).CryptClient.connect({ host: '127.0.0.1', port, token: USER });
  t.teardown(() => user.close());
  const token = await user.encrypt('card 4111 1111 1111 1111', { key: 'billing' });
  t.equal((await user.decrypt(token, undefined, { key: 'billing' })).toString(), 'card 4111 1111 1111 1111', 'decrypted');
  const auth = { authorization: `Bearer ${ADMIN}` };
  const viaHttp = await fetch(`${base}/decrypt?key=billing`, { method: 'POST', body: token, headers: { ...auth, 'x-request-id': 'req-7' } });
  t.equal(viaHttp.status, 200, 'HTTP decrypt');
  const batch = await fetch(`${base}/encrypt`, { method: 'POST', body: JSON.stringify({ batch: [{ plaintext: 'one' }, { plaintext: 'two' }] }), headers: { ...auth, 'content-type': 'application/json' } });
  const made = ((await batch.json()) as { batch: Array<{ token: string }> }).batch.map((b) => b.token);
  const bad = await fetch(`${base}/decrypt`, { method: 'POST', body: 'not-a-token', headers: auth });
  t.equal(bad.status, 400, 'a bad token');
  const hashed = await fetch(`${base}/audit/hash`, { method: 'POST', body: `${token}\n`, headers: auth });
  const { hmac } = (await hashed.json()) as { hmac: string };
  const callerOf = async (secret: string) => ((await (await fetch(`${base}/audit/hash`, { method: 'POST', body: secret, headers: auth })).json()) as { caller: string }).caller;
  const [userCaller, adminCaller] = [await callerOf(USER), await callerOf(ADMIN)];
  const forbidden = await fetch(`${base}/audit/hash`, { method: 'POST', body: token, headers: { authorization: `Bearer ${USER}` } });
  t.equal(forbidden.status, 403, 'audit-hash is admin only');

  const got = await lines();
  const ops = got.map((l) => `${l.transport as string} ${l.op as string} ${l.outcome as string}`);
  t.same(ops.filter((o) => !o.endsWith(' ah ok') && !o.startsWith('tcp au')), ['tcp en ok', 'tcp de ok', 'http de ok', 'http en ok', 'http en ok', 'http de invalid_token', 'http ah forbidden'], 'a line per operation and batch item, failures too');
  const decryptedBilling = got.filter((l) => l.op === 'de' && l.key === 'billing' && l.outcome === 'ok').map((l) => l.caller);
  t.same(decryptedBilling, [userCaller, adminCaller], 'which caller decrypted with billing: the user token, then the admin (audit-hash of each secret names it)');
  t.not(userCaller, adminCaller, 'two callers told apart');
  t.match(userCaller, /^token:[0-9a-f]{16}$/, 'a caller is an HMAC id');
  const ofToken = got.filter((l) => l.token_hmac === hmac).map((l) => `${l.transport as string} ${l.op as string}`);
  t.same(ofToken, ['tcp en', 'tcp de', 'http de'], "audit-hash of the token finds its lines: where it was made and each decrypt");
  const viaLine = got.find((l) => l.request_id === 'req-7');
  t.match(viaLine, { transport: 'http', key: 'billing', key_id: server.keyring.book.key('billing').details().primary, bytes_in: token.length, bytes_out: 24 }, "the caller's request id, the key and its version, the sizes");

  const io = memoryIo({ env: { CRYPT_TOKEN: ADMIN }, cwd: dir });
  t.equal(await clientRun(['--port', String(port), 'audit-hash', made[0]!], io), 0, 'crypt-client audit-hash');
  t.equal((JSON.parse(io.out().toString()) as { hmac: string }).hmac, got.find((l) => l.op === 'en' && l.transport === 'http')!.token_hmac, 'finds the first batch item');

  const text = await fs.readFile(auditFile, 'latin1');
  const salt = await loadSalt(join(dir, 'audit.salt'));
  for (const [what, secret] of [['plaintext', 'card 4111'], ['token', token], ['token body', token.slice(10, 60)], ['user secret', USER], ['admin secret', ADMIN], ['batch token', made[1]!], ['salt', salt.toString('hex')], ['salt b64', salt.toString('base64url')]] as const) {
    t.notOk(text.includes(secret), `no ${what} in the audit log`);
  }
  t.equal(hmac, createHmac('sha256', salt).update(token).digest('hex'), 'the HMAC is HMAC-SHA256 under the salt file, whitespace trimmed');
});

t.test('fail closed: a failed write refuses every answer that waited on it, and key changes until healed', async (t) => {
  const { server, port, base, lines } = await setup(t, { tokensFile: undefined });
  const s = await raw(port);
  s.send('#en#before#\n');
  t.equal(show(await s.replies(1))[0]!.slice(0, 6), 'gAAAAA', 'served while the log is healthy');
  const primary = server.keyring.current.primary.id;
  server.audit!.injectFailure('EIO');
  s.send('#en#one#\n#en#two#\n#de#x#\n');
  t.same(show(await s.replies(3)), ['!unavailable', '!unavailable', '!unavailable'], 'TCP: every answer of the failed write is unavailable');
  s.send('#rk##\n');
  t.same(show(await s.replies(1)), ['!unavailable'], 'rk refused');
  t.equal(server.keyring.current.primary.id, primary, 'and not run: the primary is unchanged');
  const viaHttp = await fetch(`${base}/encrypt`, { method: 'POST', body: 'x' });
  t.same([viaHttp.status, ((await viaHttp.json()) as { error: { code: string } }).error.code], [503, 'unavailable'], 'HTTP: 503 unavailable');
  const batch = await fetch(`${base}/encrypt`, { method: 'POST', body: JSON.stringify({ batch: [{ plaintext: 'a' }] }), headers: { 'content-type': 'application/json' } });
  t.equal(batch.status, 503, 'a batch whose lines were lost: 503');
  const ready = await fetch(`${base}/ready`);
  const body = (await ready.json()) as { checks: Array<{ name: string; ok: boolean }> };
  t.same([ready.status, body.checks.find((c) => c.name === 'audit')?.ok], [503, false], '/ready: 503, the audit check failing');
  server.audit!.injectFailure(null);
  s.send('#en#after#\n');
  t.equal(show(await s.replies(1))[0]!.slice(0, 6), 'gAAAAA', 'the next good write serves again');
  s.send('#rk##\n');
  t.match(show(await s.replies(1))[0], /"state":"primary"/, 'and key changes too');
  s.socket.destroy();
  const ok = (await lines()).filter((l) => l.outcome === 'ok').map((l) => l.op);
  t.same(ok, ['en', 'en', 'rk'], 'the file holds exactly the operations that succeeded');
});

const probe = spawnSync('unshare', ['-rm', 'sh', '-c', 'mount -t tmpfs -o size=64k tmpfs /mnt && echo ok'], { encoding: 'utf8' });
const noNamespace = probe.stdout?.trim() === 'ok' ? false : `no mount namespace here (${(probe.stderr || probe.error?.message || '').trim()}); the injected failure covers the logic`;

t.test('a full disk: on a 64 KiB tmpfs, no operation succeeds without its line', { skip: noNamespace }, async (t) => {
  const home = tempDir(t);
  const mnt = join(home, 'full');
  await fs.mkdir(mnt, { mode: 0o700 });
  const script = `mount -t tmpfs -o size=64k,mode=0700 tmpfs '${mnt}' && exec '${process.execPath}' '${SERVER_BIN}' --port 0 --keyring '${join(home, 'keyring.json')}' --init --audit-file '${mnt}/audit.log' --audit-salt-file '${join(home, 'audit.salt')}' --log-level info`;
  const child = spawn('unshare', ['-rm', 'sh', '-c', script], { env: cleanEnv(home), stdio: ['ignore', 'pipe', 'pipe'] });
  t.teardown(() => void child.kill('SIGKILL'));
  let log = '';
  const port = await new Promise<number>((resolve, reject) => {
    child.stdout!.on('data', (c: Buffer) => {
      log += c.toString();
      const m = /"proto":"tcp"[^\n]*"port":(\d+)/.exec(log);
      if (m) resolve(Number(m[1]));
    });
    child.on('exit', () => reject(new Error(`server exited: ${log}`)));
  });
  const s = await raw(port);
  const tokens: string[] = [];
  let refused = 0;
  // about 350 bytes a line: 64 KiB fills within a few hundred requests
  for (let round = 0; round < 40 && refused < 20; round++) {
    s.send('#en#fill the disk#\n'.repeat(25));
    for (const r of show(await s.replies(25))) {
      if (r.startsWith('gAAAAA')) {
        if (refused > 0) t.fail('an operation succeeded after the disk was full');
        tokens.push(r);
      } else {
        t.equal(r, '!unavailable', 'refused as unavailable');
        refused++;
      }
    }
  }
  t.ok(tokens.length > 50 && refused >= 20, `the disk filled: ${tokens.length} served, then ${refused} refused`);
  s.socket.destroy();
  t.match(log, /"code":"ENOSPC","msg":"audit log cannot be written/, 'the server log says why');
  const salt = await loadSalt(join(home, 'audit.salt'));
  const text = await fs.readFile(`/proc/${child.pid}/root${mnt}/audit.log`, 'latin1');
  const recorded = new Set(text.split('\n').filter((l) => l.endsWith('}')).map((l) => (JSON.parse(l) as { token_hmac: string }).token_hmac));
  const missing = tokens.filter((tok) => !recorded.has(createHmac('sha256', salt).update(tok).digest('hex')));
  t.same(missing, [], `each of the ${tokens.length} tokens served has its line`);
  child.kill('SIGTERM');
});

t.test('the command line: keys actions are recorded as transport cli; a log others may read stops them first', async (t) => {
  const dir = tempDir(t);
  const keyring = join(dir, 'keyring.json');
  const auditFile = join(dir, 'audit.log');
  const run = async (...argv: string[]) => {
    const io = memoryIo({ env: {}, cwd: dir });
    const code = await serverRun(['keys', ...argv, '--keyring', keyring, '--audit-file', auditFile], io);
    return { code, err: io.err() };
  };
  t.equal((await run('init')).code, 0, 'init');
  t.equal((await run('create', 'billing')).code, 0, 'create');
  t.equal((await run('rotate', 'billing')).code, 0, 'rotate');
  t.equal((await run('delete', 'billing')).code, 1, 'delete without deletion_allowed fails');
  const got = (await fs.readFile(auditFile, 'utf8')).split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>);
  t.same(got.map((l) => `${l.transport as string} ${l.op as string} ${l.key as string} ${l.outcome as string}`), ['cli keys-init default ok', 'cli kc billing ok', 'cli rk billing ok', 'cli kd billing conflict'], 'each action, its key and outcome');
  t.match(got[0]!.caller, /^user:/, 'the caller is the user who ran it');
  t.match(got[2]!.key_id, /^[0-9a-f]{12}$/, 'rotate records the new version');
  await fs.chmod(auditFile, 0o644);
  const refused = await run('create', 'other');
  t.same([refused.code, /mode 0644/.test(refused.err)], [1, true], 'a log others may read: exit 1, said why');
  await fs.chmod(auditFile, 0o600);
  t.equal((await run('show', 'other')).code, 1, 'and the key was not created');
});

t.test('SIGHUP reopens the file at its path (logrotate); the process keeps serving', async (t) => {
  const home = tempDir(t);
  const auditFile = join(home, 'audit.log');
  const server = await spawnServer(t, ['--port', '0', '--keyring', join(home, 'k.json'), '--init', '--audit-file', auditFile], cleanEnv(home));
  const s = await raw(server.port);
  s.send('#en#a#\n');
  await s.replies(1);
  await fs.rename(auditFile, `${auditFile}.1`);
  server.child.kill('SIGHUP');
  await server.waitFor(/audit log reopened/);
  s.send('#en#b#\n');
  t.equal(show(await s.replies(1))[0]!.slice(0, 6), 'gAAAAA', 'served after SIGHUP');
  s.socket.destroy();
  const count = async (p: string) => (await fs.readFile(p, 'utf8')).split('\n').filter(Boolean).length;
  t.same([await count(`${auditFile}.1`), await count(auditFile)], [1, 1], 'the old line in the rotated file, the new one at the path');
  server.child.kill('SIGTERM');
  t.same(await server.exited, { code: 0, signal: null }, 'a clean exit after');
});
