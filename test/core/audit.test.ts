// The audit log on its own: lines and their fields, HMACs equal to createHmac's, the file's checks
// and its salt, a failed write counted and then healed, a removed file noticed and made again, a
// reopen after a rename (logrotate).
import t from 'tap';
import { createHmac, randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import { join } from 'node:path';
import pino from 'pino';
import { AuditLog, loadSalt, openAuditFile } from '../../src/core/audit.js';
import type { AuditEntry } from '../../src/core/audit.js';
import { newCaller } from '../../src/core/access.js';
import { FileError } from '../../src/keys/files.js';
import { logSink, tempDir } from '../helpers/server.js';

const salt = randomBytes(32);
const entry = (over: Partial<AuditEntry> = {}): AuditEntry => ({
  requestId: '1', caller: newCaller('tcp', '127.0.0.1'), op: 'en', key: 'default', keyId: 'abc123', outcome: 'ok',
  bytesIn: 5, bytesOut: 100, durationMs: 0.25, tokenIn: null, tokenOut: null, plaintext: null, ...over,
});
const lines = async (path: string): Promise<Array<Record<string, unknown>>> =>
  (await fs.readFile(path, 'utf8')).split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>);
const hmac = (v: string | Buffer): string => createHmac('sha256', salt).update(v).digest('hex');

{
  const mode = 'audit';

  t.test(`${mode}: a line per entry, with the fields documented and HMACs of tokens and plaintexts`, async (t) => {
    const path = join(tempDir(t), 'audit.log');
    const audit = await AuditLog.open({ path, salt, hmacPlaintext: true, log: pino({ level: 'silent' }) });
    const long = 'g'.repeat(10_000);
    const n1 = audit.add(entry({ tokenOut: 'tok-out', plaintext: Buffer.from('hello') }));
    const n2 = audit.add(entry({ requestId: 'h2', op: 'rw', tokenIn: Buffer.from(long), tokenOut: 'tok-new' }));
    const n3 = audit.add(entry({ op: 'de', outcome: 'invalid_token', key: null, keyId: null, tokenIn: 'x\u0000"}{' }));
    t.same([n1, n2, n3], [1, 2, 3], 'entries are numbered');
    t.notOk(audit.written(n3), 'nothing is written before the turn ends');
    await audit.settled(n3);
    t.ok(audit.written(n3), 'written once settled');
    const got = await lines(path);
    t.equal(got.length, 3, 'three lines');
    const first = got[0]!;
    t.same(Object.keys(first), ['time', 'request_id', 'pid', 'transport', 'peer', 'caller', 'op', 'key', 'key_id', 'outcome', 'bytes_in', 'bytes_out', 'duration_ms', 'token_hmac', 'plaintext_hmac'], 'the fields, in order');
    t.match(first, { request_id: '1', pid: process.pid, transport: 'tcp', peer: '127.0.0.1', caller: 'loopback', op: 'en', key: 'default', key_id: 'abc123', outcome: 'ok', bytes_in: 5, bytes_out: 100, duration_ms: 0.25 }, 'the entry as given');
    t.ok(Math.abs(Date.parse(first.time as string) - Date.now()) < 60_000, 'an ISO time of now');
    t.equal(first.token_hmac, hmac('tok-out'), "en: the token made is the line's token_hmac, HMAC-SHA256 under the salt");
    t.equal(first.plaintext_hmac, hmac('hello'), 'plaintext_hmac with hmacPlaintext');
    t.equal(got[1]!.token_hmac, hmac(long), 'a long token (past the inline blocks) hashes the same');
    t.equal(got[1]!.new_token_hmac, hmac('tok-new'), 'rw: the token made is new_token_hmac');
    t.equal(got[2]!.token_hmac, hmac(Buffer.from('x\u0000"}{', 'latin1')), 'hostile bytes in a token stay inside its HMAC');
    t.match(got[2], { key: null, key_id: null, outcome: 'invalid_token' }, 'nulls and an error outcome');
    t.equal(audit.hash('tok-out'), first.token_hmac, 'hash() answers what the line holds');
    t.equal((await fs.stat(path)).mode & 0o777, 0o600, 'the file is 0600');
    await audit.close();
  });

  t.test(`${mode}: a failed write is counted, refused, said once, and healed by the next good one`, async (t) => {
    const path = join(tempDir(t), 'audit.log');
    const { sink, logs } = logSink();
    let counted = 0;
    const audit = await AuditLog.open({ path, salt, log: pino({ level: 'info' }, sink) , onWriteFailure: () => counted++ });
    audit.injectFailure('ENOSPC');
    const before = audit.failures;
    const n = audit.add(entry());
    const m = audit.add(entry({ requestId: '2' }));
    await audit.settled(m);
    t.ok(audit.written(n), 'a lost entry is settled too');
    t.equal(audit.failures, before + 1, 'failures moved: answers waiting on it are refused');
    t.match(audit.failing, /ENOSPC/, 'failing says why');
    t.equal(counted, 1, 'onWriteFailure once per failed write');
    t.equal(audit.unavailable().code, 'unavailable', 'the refusal is unavailable');
    await audit.settled(audit.add(entry({ requestId: '3' })));
    t.equal(logs.filter((l) => /cannot be written/.test(l)).length, 1, 'the failure is logged once, not per write');
    audit.injectFailure(null);
    await audit.settled(audit.add(entry({ requestId: '4' })));
    t.equal(audit.failing, null, 'the next good write ends the failure');
    t.ok(logs.some((l) => /writable again/.test(l)), 'and says so');
    t.same((await lines(path)).map((l) => l.request_id), ['4'], 'only the written entry is in the file');
    await audit.close();
  });

  t.test(`${mode}: a removed file fails its write, then is made again; a rename and reopen moves on`, async (t) => {
    const dir = tempDir(t);
    const path = join(dir, 'audit.log');
    const { sink, logs } = logSink();
    const audit = await AuditLog.open({ path, salt, log: pino({ level: 'info' }, sink) });
    await audit.settled(audit.add(entry({ requestId: 'a' })));
    await fs.rename(path, join(dir, 'audit.log.1'));
    await audit.reopen();
    await audit.settled(audit.add(entry({ requestId: 'b' })));
    t.same((await lines(join(dir, 'audit.log.1'))).map((l) => l.request_id), ['a'], 'the rotated file keeps its lines');
    t.same((await lines(path)).map((l) => l.request_id), ['b'], 'after reopen, lines go to a new file at the path');
    await fs.unlink(path);
    const before = audit.failures;
    await audit.settled(audit.add(entry({ requestId: 'c' })));
    t.equal(audit.failures, before + 1, 'a line written to a removed file is lost: the write counts as failed');
    // the log makes the file again on its own; wait for it to say so, with a deadline
    const deadline = Date.now() + 10_000;
    while (!logs.some((l) => /"why":"removed".*reopened/.test(l)) && Date.now() < deadline) await new Promise((r) => setImmediate(r));
    await audit.settled(audit.add(entry({ requestId: 'd' })));
    t.equal(audit.failing, null, 'writable again');
    t.same((await lines(path)).map((l) => l.request_id), ['d'], 'the new file has the next line');
    await audit.close();
  });
}

t.test('the file: refused when others may read it, when a link or not a file; standard output as -', async (t) => {
  const dir = tempDir(t);
  const open = join(dir, 'open.log');
  await fs.writeFile(open, '', { mode: 0o644 });
  await fs.chmod(open, 0o644);
  await t.rejects(openAuditFile(open), { name: 'FileError', message: /mode 0644.*chmod 600/ }, 'a file others may read');
  await fs.symlink(join(dir, 'target'), join(dir, 'link.log'));
  await t.rejects(openAuditFile(join(dir, 'link.log')), { message: /symbolic link/ }, 'a symlink');
  await fs.mkdir(join(dir, 'd.log'), { mode: 0o700 });
  await t.rejects(openAuditFile(join(dir, 'd.log')), FileError, 'a directory');
  const stdout = await AuditLog.open({ path: '-', salt, log: pino({ level: 'silent' }) });
  t.equal(stdout.path, '-', 'standard output needs no file');
  await stdout.close();
});

t.test('the salt: made on first use, 0600, 32 bytes; read back the same; refused when damaged', async (t) => {
  const dir = tempDir(t);
  const path = join(dir, 'audit.salt');
  const made = await loadSalt(path);
  t.equal(made.length, 32, '32 bytes');
  t.equal((await fs.stat(path)).mode & 0o777, 0o600, '0600');
  t.same(await loadSalt(path), made, 'read back the same');
  await fs.writeFile(path, 'short\n', { mode: 0o600 });
  await t.rejects(loadSalt(path), { message: /32 bytes/ }, 'a damaged salt is refused, never replaced');
  await fs.writeFile(path, made.toString('base64url'), { mode: 0o600 });
  await fs.chmod(path, 0o640);
  await t.rejects(loadSalt(path), FileError, 'a salt others may read is refused');
});

t.test('caller ids: an HMAC of the token digest, the same from the secret or its sha256: form', async (t) => {
  const audit = await AuditLog.open({ path: '-', salt, log: pino({ level: 'silent' }) });
  const secret = 'a-secret-token-value';
  const digest = createHmac('sha256', Buffer.alloc(0)).digest(); // any 32 bytes
  t.match(audit.callerIdOf(digest), /^token:[0-9a-f]{16}$/, 'token:<16 hex>');
  const sha = (await import('node:crypto')).createHash('sha256').update(secret).digest();
  t.equal(audit.callerIdOfSecret(secret), audit.callerIdOf(sha), 'from the secret');
  t.equal(audit.callerIdOfSecret(`sha256:${sha.toString('hex')}`), audit.callerIdOf(sha), 'from the digest form of a tokens file');
  t.notMatch(audit.callerIdOfSecret(secret), secret, 'never the secret');
  await audit.close();
});
