import t from 'tap';
import { promises as fs } from 'node:fs';
import { dispatcherFor } from '../helpers/server.js';
import { operation } from '../../src/core/operations.js';
import type { Operation, Results } from '../../src/core/operations.js';
import { newCaller } from '../../src/core/access.js';
import type { DispatchRecord } from '../../src/core/dispatcher.js';
import { seconds, trimToken } from '../../src/core/dispatcher.js';
import { CryptoPool, OFFLOAD_BYTES } from '../../src/core/pool.js';
import { decrypt } from '../../src/crypto/fernet.js';

const op = <K extends keyof Results>(command: string) => operation(command) as Operation<K>;
const local = () => newCaller('tcp', '127.0.0.1');

t.test('one record per request, with who, what, which key, the outcome and sizes, never data', async (t) => {
  const { dispatcher, keyring } = await dispatcherFor(t);
  const records: DispatchRecord[] = [];
  dispatcher.observe((r) => records.push(r));
  const enc = dispatcher.dispatch(op<'token'>('en'), local(), Buffer.from('hello'), null) as Results['token'];
  t.equal(decrypt(keyring.current.decrypting, enc.token).plaintext.toString(), 'hello', 'en runs inline, synchronously');
  const dec = dispatcher.dispatch(op<'plaintext'>('de'), newCaller('http', '127.0.0.1'), enc.token, { ttl: 60 }, 'req-7') as Results['plaintext'];
  t.equal(dec.plaintext.toString(), 'hello', 'de runs too');
  t.throws(() => dispatcher.dispatch(op('de'), local(), 'not-a-token', null), { code: 'invalid_token' }, 'a failure is thrown as a catalogue error');
  t.equal(records.length, 3, 'one record each, failures included');
  t.match(records[0], { transport: 'tcp', peer: '127.0.0.1', caller: 'loopback', op: 'en', keyId: keyring.current.primary.id, outcome: 'ok', bytesIn: 5, bytesOut: enc.token.length }, 'the encrypt');
  t.match(records[1], { requestId: 'req-7', transport: 'http', op: 'de', keyId: keyring.current.primary.id, outcome: 'ok', bytesIn: enc.token.length, bytesOut: 5 }, 'the decrypt, with the id the transport gave');
  t.match(records[2], { op: 'de', outcome: 'invalid_token', keyId: null }, 'the failure');
  t.ok(records.every((r) => typeof r.durationMs === 'number' && r.durationMs >= 0), 'each is timed');
  t.notMatch(JSON.stringify(records), /hello|gAAAA|not-a-token/, 'no plaintext or token in any record');
});

t.test('size, payload and option checks, the same for every transport', async (t) => {
  const { dispatcher } = await dispatcherFor(t, { maxFrame: 100 });
  const c = local();
  t.throws(() => dispatcher.dispatch(op('en'), c, Buffer.alloc(101), null), { code: 'too_large', message: /message of 101 bytes exceeds the limit of 100 bytes/ }, 'a message over --max-frame');
  t.throws(() => dispatcher.dispatch(op('en'), c, 'é'.repeat(51), null), { code: 'too_large' }, 'a string message is measured in UTF-8 bytes');
  t.throws(() => dispatcher.dispatch(op('de'), c, 'g'.repeat(dispatcher.maxToken + 1), null), { code: 'too_large', message: /token of \d+ characters exceeds the limit/ }, 'a token over the token of a largest message');
  t.throws(() => dispatcher.dispatch(op('gk'), c, Buffer.from('x'), null), { code: 'bad_request', message: 'gk takes no payload: send "#gk##"' }, 'a payload where none belongs (TCP wording)');
  t.throws(() => dispatcher.dispatch(op('gk'), newCaller('http', '127.0.0.1'), Buffer.from('x'), null), { code: 'bad_request', message: 'gk takes no payload: send no body' }, 'and HTTP wording');
  t.throws(() => dispatcher.dispatch(op('en'), c, Buffer.from('x'), { ttl: '5' }), { code: 'bad_request', message: 'en has no option ttl' }, 'an option the operation lacks');
  t.throws(() => dispatcher.dispatch(op('de'), c, 'x', { size: '5' }), { code: 'bad_request', message: 'de has no option size; its options: ttl' }, 'and the options it has');
  t.throws(() => dispatcher.dispatch(op('de'), c, 'x', { 'bad\nname': 1 }), { code: 'bad_request', message: 'de has no option (unprintable); its options: ttl' }, 'an unprintable name is not echoed');
  t.throws(() => dispatcher.dispatch(op('de'), c, 'x', { constructor: 1 }), { code: 'bad_request', message: /has no option constructor/ }, 'a prototype name is just an unknown option');
  for (const bad of [-1, 1.5, '1e3', 'x', '', true, {}, Number.MAX_SAFE_INTEGER + 1]) {
    t.throws(() => dispatcher.dispatch(op('de'), c, 'x', { ttl: bad }), { code: 'bad_request', message: 'ttl must be a whole number of seconds, 0 or more' }, `ttl ${JSON.stringify(bad)} is refused`);
  }
  t.equal(seconds('ttl', 60), 60, 'ttl as a number');
  t.equal(seconds('ttl', '60'), 60, 'ttl as digits (TCP, query strings)');
});

t.test('whitespace around a token is one rule on every face', async (t) => {
  const { dispatcher } = await dispatcherFor(t);
  const { token } = dispatcher.dispatch(op<'token'>('en'), local(), Buffer.from('trim me'), null) as Results['token'];
  for (const spelled of [` ${token}`, `${token}\n`, `\t${token}\r\n`, Buffer.from(`  ${token}\n`)]) {
    const r = dispatcher.dispatch(op<'plaintext'>('de'), local(), spelled, null) as Results['plaintext'];
    t.equal(r.plaintext.toString(), 'trim me', `${JSON.stringify(String(spelled).replace(token, 'TOKEN'))} decrypts`);
  }
  t.equal(trimToken('abc'), 'abc', 'nothing to trim: the same string');
  const b = Buffer.from('abc');
  t.equal(trimToken(b), b, 'nothing to trim: the same buffer');
  t.throws(() => dispatcher.dispatch(op('de'), local(), `${token.slice(0, 20)} ${token.slice(20)}`, null), { code: 'invalid_token' }, 'whitespace inside a token is not trimmed');
});

t.test('renderError logs an internal fault exactly once, with its stack and no message', async (t) => {
  const { dispatcher, logs } = await dispatcherFor(t);
  const broken: Operation<'json'> = { ...op<'json'>('ki'), command: 'zz', run: () => { throw new TypeError('SECRET detail of a bug'); } };
  const e = (() => {
    try {
      dispatcher.dispatch(broken, local(), Buffer.alloc(0), null);
      return null;
    } catch (err) {
      return err as Error & { code: string };
    }
  })();
  t.match(e, { code: 'internal', message: 'internal error' }, 'the caller gets internal, nothing more');
  dispatcher.renderError(e, null, null);
  const lines = logs.filter((l) => l.includes('"msg":"internal error"'));
  t.equal(lines.length, 1, 'logged once, though rendered twice');
  t.match(lines[0], /"op":"zz".*"type":"TypeError".*"stack":"    at /, 'with the operation, the type and the stack');
  t.notMatch(lines.join(''), 'SECRET', 'never the message');
});

t.test('a keyring that cannot be written: unavailable, no path to the caller, the reason in the log', async (t) => {
  const { dispatcher, logs, config } = await dispatcherFor(t);
  await fs.rm(config.keyring);
  const err = await (dispatcher.dispatch(op('rk'), local(), Buffer.alloc(0), null) as Promise<unknown>).then(() => null, (e: unknown) => e as Error & { code: string });
  t.match(err, { code: 'unavailable', message: 'rotation failed: the keyring could not be updated; the server log says why' }, 'unavailable, 503');
  t.notMatch(err!.message, config.keyring, 'the reply names no path');
  const line = logs.find((l) => l.includes('"msg":"service unavailable"'));
  t.match(line, /"reason":"keyring .*keyring\.json has disappeared; refusing to write a new one"/, 'the log says why, path and all');
});

t.test('--rotate-limit counts rotations across callers', async (t) => {
  const { dispatcher } = await dispatcherFor(t, { rotateLimit: 2 });
  await dispatcher.dispatch(op('rk'), local(), Buffer.alloc(0), null);
  await dispatcher.dispatch(op('rk'), newCaller('http', '127.0.0.2'), Buffer.alloc(0), null);
  t.throws(() => dispatcher.dispatch(op('rk'), local(), Buffer.alloc(0), null), { code: 'rate_limited', message: /rk: at most 2 per minute \(--rotate-limit\); try again in \d+ s/ }, 'the third within a minute is refused');
  t.doesNotThrow(() => dispatcher.dispatch(op('en'), local(), Buffer.from('x'), null), 'other operations are not limited');
});

t.test('large payloads go to the pool; the result is a promise, recorded when it settles', async (t) => {
  const { service, policy, keyring } = await dispatcherFor(t);
  const { Dispatcher } = await import('../../src/core/dispatcher.js');
  const { createLogger } = await import('../../src/ops/log.js');
  const pool = new CryptoPool(1);
  t.teardown(() => pool.close());
  const dispatcher = new Dispatcher({ service, policy, maxMessage: 1 << 20, pool, log: createLogger('silent') });
  const records: DispatchRecord[] = [];
  dispatcher.observe((r) => records.push(r));
  const big = Buffer.alloc(OFFLOAD_BYTES, 1);
  const pending = dispatcher.dispatch(op<'token'>('en'), local(), big, null);
  t.ok(pending instanceof Promise, 'a promise');
  t.equal(records.length, 0, 'not recorded before it settles');
  const { token, keyId } = await pending;
  t.ok(decrypt(keyring.current.decrypting, token).plaintext.equals(big), 'the thread encrypted it');
  t.equal(keyId, keyring.current.primary.id, 'and says with which key');
  t.match(records, [{ op: 'en', outcome: 'ok', bytesIn: OFFLOAD_BYTES }], 'recorded once settled');
  const small = dispatcher.dispatch(op<'token'>('en'), local(), Buffer.from('small'), null);
  t.notOk(small instanceof Promise, 'a small payload stays inline');
  await t.rejects(dispatcher.dispatch(op('de'), local(), 'g'.repeat(OFFLOAD_BYTES), null) as Promise<unknown>, { code: 'invalid_token' }, 'a failure on the thread keeps its code');
});

t.test('debug level logs one line per request from the records', async (t) => {
  const { dispatcher, logs } = await dispatcherFor(t, { logLevel: 'debug', tokensFile: undefined });
  dispatcher.dispatch(op('en'), local(), Buffer.from('x'), null);
  t.match(logs.join(''), /"op":"en".*"outcome":"ok".*"msg":"request"/, 'a request line');
});
