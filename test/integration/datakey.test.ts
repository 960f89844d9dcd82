// Data keys (dk) on every face: 32 fresh bytes and the same wrapped as a Fernet token that de
// opens; the wrapped-only form; a derived key's context; the roles of en; the key never in the
// audit log or the server log.
import t from 'tap';
import { promises as fs } from 'node:fs';
import { join } from 'node:path';
import { start, raw, show, tempDir } from '../helpers/server.js';
import { memoryIo } from '../helpers/cli.js';
import { run as clientRun } from '../../src/cli/client.js';
import { CryptClient } from '../../src/client/client.js';

const ENCRYPT = 'dk-encrypt-token-0123456789abcdef';
const DECRYPT = 'dk-decrypt-token-0123456789abcdef';
const ADMIN = 'dk-admin-token-0123456789abcdef';

t.test('dk over TCP, HTTP and crypt-client; de gives the key back; wrapped_only; roles', async (t) => {
  const dir = tempDir(t);
  const tokensFile = join(dir, 'tokens');
  await fs.writeFile(tokensFile, `encrypt ${ENCRYPT}\ndecrypt ${DECRYPT}\nadmin ${ADMIN}\n`, { mode: 0o600 });
  const auditFile = join(dir, 'audit.log');
  const { server, port, logs } = await start(t, { tokensFile, http: true, httpPort: 0, auditFile, logLevel: 'trace', keyring: join(dir, 'keyring.json') });
  const base = `http://127.0.0.1:${server.http!.address.port}`;
  await server.service.createKey('files', { derived: true, exportable: false });

  const s = await raw(port);
  s.send(`#au#${ENCRYPT}#\n#dk##\n#dk,wrapped_only=true##\n#dk,key=files,context=dGVuYW50LTE##\n#dk,key=files##\n#dk#x#\n`);
  const [auth, full, wrapped, derived, noContext, payload] = show(await s.replies(6));
  t.equal(auth, 'ok encrypt', 'an encrypt token');
  const dk = JSON.parse(full!) as { plaintext: string; token: string; key_id: string };
  t.same(Object.keys(dk), ['plaintext', 'token', 'key_id'], 'the key, its wrapped form and the version');
  t.equal(Buffer.from(dk.plaintext, 'base64url').length, 32, '32 bytes, base64url');
  t.equal(dk.key_id, server.keyring.current.primary.id, 'wrapped under the primary version');
  t.same(Object.keys(JSON.parse(wrapped!) as object), ['token', 'key_id'], 'wrapped_only: no plaintext');
  t.match(derived, /^\{"plaintext":/, 'a derived key with its context');
  t.equal(noContext, '!bad_request', 'a derived key without context is refused');
  t.equal(payload, '!bad_request', 'dk takes no payload');
  s.socket.destroy();

  const decrypter = await CryptClient.connect({ host: '127.0.0.1', port, token: DECRYPT });
  t.teardown(() => decrypter.close());
  t.same(await decrypter.decrypt(dk.token), Buffer.from(dk.plaintext, 'base64url'), 'de of the token gives the same 32 bytes');
  await t.rejects(decrypter.call((await import('../../src/core/operations.js')).operation('dk')!), { code: 'forbidden' }, 'a decrypt token may not make data keys');
  const ctx = JSON.parse(derived!) as { plaintext: string; token: string };
  t.same(await decrypter.decrypt(ctx.token, undefined, { key: 'files', context: Buffer.from('tenant-1') }), Buffer.from(ctx.plaintext, 'base64url'), 'and with the same context for a derived key');

  const res = await fetch(`${base}/datakey?key=files`, { method: 'POST', headers: { authorization: `Bearer ${ENCRYPT}`, 'content-type': 'application/json' }, body: JSON.stringify({ context: 'dGVuYW50LTI', wrapped_only: true }) });
  t.same([res.status, Object.keys((await res.json()) as object)], [200, ['token', 'key_id']], 'HTTP: POST /datakey with options in the body');

  const io = memoryIo({ env: { CRYPT_TOKEN: ENCRYPT }, cwd: dir });
  t.equal(await clientRun(['--port', String(port), 'dk', '--wrapped-only'], io), 0, 'crypt-client dk --wrapped-only');
  t.same(Object.keys(JSON.parse(io.out().toString()) as object), ['token', 'key_id'], 'prints the JSON');

  await server.close();
  const audit = await fs.readFile(auditFile, 'utf8');
  const text = audit + logs.join('');
  for (const [what, secret] of [['data key', dk.plaintext], ['data key hex', Buffer.from(dk.plaintext, 'base64url').toString('hex')], ['derived data key', ctx.plaintext], ['wrapped key', dk.token]] as const) {
    t.notOk(text.includes(secret), `no ${what} in the audit log or the server log`);
  }
  t.ok(audit.split('\n').some((l) => l.includes('"op":"dk"') && l.includes('"token_hmac"')), "a dk line carries the wrapped key's HMAC, to trace it");
});
