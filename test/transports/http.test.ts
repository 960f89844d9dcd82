import t from 'tap';
import { randomBytes } from 'node:crypto';
import net from 'node:net';
import { once } from 'node:events';
import type { FastifyRequest, InjectOptions } from 'fastify';
import { collectBody } from '../../src/transports/http/limits.js';
import { httpApp, start, tempDir } from '../helpers/server.js';
import { PassThrough } from 'node:stream';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { promises as fs } from 'node:fs';
import { join } from 'node:path';
import { decrypt } from '../../src/crypto/fernet.js';

const RAW = ['text/plain', 'application/octet-stream', 'application/x-www-form-urlencoded'];
const json = (body: unknown) => ({ headers: { 'content-type': 'application/json' }, payload: JSON.stringify(body) });

t.test('raw bodies: curl -d and --data-binary round-trip any bytes', async (t) => {
  const { app, keyring } = await httpApp(t);
  for (const type of RAW) {
    const res = await app.inject({ method: 'POST', url: '/encrypt', headers: { 'content-type': type }, payload: 'hello' });
    t.equal(res.statusCode, 200, `${type}: 200`);
    t.equal(res.headers['content-type'], 'text/plain; charset=utf-8', `${type}: a text/plain token`);
    t.equal(decrypt(keyring.current.decrypting, res.body.trim()).plaintext.toString(), 'hello', `${type}: the body is taken as raw bytes`);
  }
  for (const size of [0, 1, 1000, 1024 * 1024]) {
    const bytes = randomBytes(size);
    if (size > 0) bytes[0] = 0xff; // never valid UTF-8
    const token = (await app.inject({ method: 'POST', url: '/encrypt', headers: { 'content-type': 'application/octet-stream' }, payload: bytes })).body;
    const back = await app.inject({ method: 'POST', url: '/decrypt', headers: { 'content-type': 'application/x-www-form-urlencoded' }, payload: token });
    t.equal(back.statusCode, 200, `${size} bytes: decrypts`);
    t.ok(back.rawPayload.equals(bytes), `${size} bytes: byte for byte`);
    if (size > 0) t.equal(back.headers['content-type'], 'application/octet-stream', 'binary plaintext comes as octet-stream');
  }
  const text = await app.inject({ method: 'POST', url: '/decrypt', headers: { 'content-type': 'text/plain' }, payload: (await app.inject({ method: 'POST', url: '/encrypt', headers: { 'content-type': 'text/plain' }, payload: 'héllo' })).body });
  t.equal(text.headers['content-type'], 'text/plain; charset=utf-8', 'UTF-8 plaintext comes as text/plain');
  t.equal(text.body, 'héllo', 'exactly');
  const over = await app.inject({ method: 'POST', url: '/encrypt', headers: { 'content-type': 'application/octet-stream' }, payload: randomBytes(1024 * 1024 + 1) });
  t.equal(over.statusCode, 413, 'one byte over the limit: 413');
  t.match(over.json(), { error: { code: 'too_large' } }, 'too_large');
});

t.test('JSON forms: plaintext, plaintext_base64, token, ttl, timestamp', async (t) => {
  const { app, keyring } = await httpApp(t);
  const a = (await app.inject({ method: 'POST', url: '/encrypt', ...json({ plaintext: 'héllo' }) })).json() as { token: string };
  const b = (await app.inject({ method: 'POST', url: '/encrypt', ...json({ plaintext_base64: Buffer.from([0, 255, 10]).toString('base64') }) })).json() as { token: string };
  const before = Math.floor(Date.now() / 1000);
  t.same(Object.keys(a), ['token', 'key_id'], '{"token", "key_id"}');
  const da = (await app.inject({ method: 'POST', url: '/decrypt', ...json({ token: a.token }) })).json() as { plaintext: string; timestamp: number };
  t.equal(da.plaintext, 'héllo', 'UTF-8 plaintext comes as "plaintext"');
  t.ok(Math.abs(da.timestamp - before) <= 2, 'with the token timestamp in seconds');
  const db = (await app.inject({ method: 'POST', url: '/decrypt', ...json({ token: b.token, ttl: 60 }) })).json() as { plaintext_base64: string };
  t.same(Buffer.from(db.plaintext_base64, 'base64'), Buffer.from([0, 255, 10]), 'binary plaintext comes as "plaintext_base64"');
  const old = keyring.current.primary.encrypt(Buffer.from('old'), before - 100);
  const expired = await app.inject({ method: 'POST', url: '/decrypt', ...json({ token: old, ttl: 10 }) });
  t.equal(expired.statusCode, 400, 'a token older than ttl: 400');
  t.same(expired.json(), { error: { code: 'invalid_token', message: 'invalid token' } }, 'invalid_token');
  const rawTtl = await app.inject({ method: 'POST', url: '/decrypt?ttl=10', headers: { 'content-type': 'text/plain' }, payload: old });
  t.equal(rawTtl.statusCode, 400, 'the raw form takes ?ttl= too');
  t.equal((await app.inject({ method: 'POST', url: '/decrypt?ttl=1000', headers: { 'content-type': 'text/plain' }, payload: old + '\n' })).body, 'old', 'within ttl; a trailing newline is fine');
});

t.test('batches answer in order; one failing item fails nothing else; bounded', async (t) => {
  const { app } = await httpApp(t, { maxBatch: 5 });
  const enc = (await app.inject({ method: 'POST', url: '/encrypt', ...json({ batch: [{ plaintext: 'a' }, { nope: 1 }, { plaintext_base64: 'YmI=' }, { plaintext_base64: '!!' }, 'str'] }) })).json() as { batch: Array<{ token?: string; error?: { code: string } }> };
  t.equal(enc.batch.length, 5, 'five answers');
  t.match(enc.batch, [{ token: String }, { error: { code: 'bad_request' } }, { token: String }, { error: { code: 'bad_request', message: '"plaintext_base64" is not valid base64 (standard or URL-safe, padded or not)' } }, { error: { code: 'bad_request' } }], 'in order, failures in their place');
  const dec = (await app.inject({ method: 'POST', url: '/decrypt', ...json({ batch: [{ token: enc.batch[2]!.token }, { token: 'bad' }, { token: enc.batch[0]!.token, ttl: 5 }] }) })).json() as { batch: unknown[] };
  t.match(dec.batch, [{ plaintext: 'bb', timestamp: Number }, { error: { code: 'invalid_token' } }, { plaintext: 'a' }], 'decrypt batch');
  const tooMany = await app.inject({ method: 'POST', url: '/encrypt', ...json({ batch: Array.from({ length: 6 }, () => ({ plaintext: 'x' })) }) });
  t.equal(tooMany.statusCode, 413, 'more items than --max-batch: 413');
  t.match(tooMany.json(), { error: { code: 'too_large', message: 'batch of 6 items exceeds the limit of 5' } }, 'says so');
  t.same((await app.inject({ method: 'POST', url: '/encrypt', ...json({ batch: [] }) })).json(), { batch: [] }, 'an empty batch is fine');
  t.equal((await app.inject({ method: 'POST', url: '/encrypt', ...json({ batch: [], plaintext: 'x' }) })).statusCode, 400, 'batch with other fields: 400');
  t.equal((await app.inject({ method: 'POST', url: '/decrypt', ...json({ batch: [], token: 'x' }) })).statusCode, 400, 'a decrypt batch takes "ttl" beside it, nothing else');
});

t.test('client mistakes get 4xx with the catalogue codes, never 500', async (t) => {
  const { app } = await httpApp(t);
  const cases: Array<[string, InjectOptions, number, string]> = [
    ['invalid JSON', { method: 'POST', url: '/encrypt', headers: { 'content-type': 'application/json' }, payload: '{bad' }, 400, 'bad_request'],
    ['empty JSON', { method: 'POST', url: '/encrypt', headers: { 'content-type': 'application/json' }, payload: '' }, 400, 'bad_request'],
    ['unknown field', { method: 'POST', url: '/encrypt', ...json({ plain: 'x' }) }, 400, 'bad_request'],
    ['wrong type', { method: 'POST', url: '/encrypt', ...json({ plaintext: 5 }) }, 400, 'bad_request'],
    ['both forms', { method: 'POST', url: '/encrypt', ...json({ plaintext: 'a', plaintext_base64: 'YQ==' }) }, 400, 'bad_request'],
    ['empty object', { method: 'POST', url: '/encrypt', ...json({}) }, 400, 'bad_request'],
    ['JSON array', { method: 'POST', url: '/encrypt', ...json([1]) }, 400, 'bad_request'],
    ['no body', { method: 'POST', url: '/encrypt' }, 400, 'bad_request'],
    ['no token', { method: 'POST', url: '/decrypt' }, 400, 'bad_request'],
    ['bad token', { method: 'POST', url: '/decrypt', headers: { 'content-type': 'text/plain' }, payload: 'nope' }, 400, 'invalid_token'],
    ['bad ttl', { method: 'POST', url: '/decrypt', ...json({ token: 'x', ttl: 'soon' }) }, 400, 'bad_request'],
    ['bad ttl query', { method: 'POST', url: '/decrypt?ttl=-1', headers: { 'content-type': 'text/plain' }, payload: 'x' }, 400, 'bad_request'],
    ['token not a string', { method: 'POST', url: '/decrypt', ...json({ token: 1 }) }, 400, 'bad_request'],
    ['batch not an array', { method: 'POST', url: '/decrypt', ...json({ batch: {} }) }, 400, 'bad_request'],
    ['unsupported type', { method: 'POST', url: '/encrypt', headers: { 'content-type': 'image/png' }, payload: 'x' }, 415, 'unsupported_media_type'],
    ['JSON too large', { method: 'POST', url: '/encrypt', headers: { 'content-type': 'application/json' }, payload: `{"plaintext":"${'a'.repeat(2_000_000)}"}` }, 413, 'too_large'],
    ['no route', { method: 'GET', url: '/nowhere' }, 404, 'not_found'],
    ['bad url', { method: 'GET', url: '/%' }, 400, 'bad_request'],
  ];
  for (const [name, req, status, code] of cases) {
    const res = await app.inject(req);
    t.equal(res.statusCode, status, `${name}: ${status}`);
    t.match(res.json(), { error: { code, message: String } }, `${name}: ${code}`);
    t.notMatch(res.body, /at .*\.(ts|js):\d+/, `${name}: no stack`);
  }
});

t.test('a 404 does not repeat the path, which may hold a token', async (t) => {
  const { app } = await httpApp(t);
  const token = (await app.inject({ method: 'POST', url: '/encrypt', headers: { 'content-type': 'text/plain' }, payload: 'hello' })).body.trim();
  const res = await app.inject({ method: 'GET', url: `/decrypt/${token}` });
  t.equal(res.statusCode, 404, '404');
  t.match(res.json(), { error: { code: 'not_found', message: /\/docs/ } }, 'points to /docs');
  t.notMatch(res.body, token.slice(0, 40), 'the token is not in the reply');
});

t.test('GET on a POST route explains itself with 405 and Allow', async (t) => {
  const { app } = await httpApp(t);
  for (const url of ['/encrypt', '/decrypt']) {
    const res = await app.inject({ method: 'GET', url, headers: { host: 'localhost:8080' } });
    t.equal(res.statusCode, 405, `GET ${url}: 405`);
    t.equal(res.headers.allow, 'POST', 'Allow: POST');
    const { message } = (res.json() as { error: { message: string } }).error;
    t.match(message, new RegExp(`^GET is not allowed here; use POST: curl (-d 'hello'|--data-binary @token.txt) http://localhost:8080${url}$`), 'a one-line usage example');
  }
  const put = await app.inject({ method: 'POST', url: '/key' });
  t.equal(put.statusCode, 405, 'POST /key: 405');
  t.equal(put.headers.allow, 'GET, HEAD', 'Allow: GET, HEAD');
});

t.test('GET /key mirrors gk; /health; the OpenAPI document describes every route', async (t) => {
  const { app, keyring } = await httpApp(t);
  const text = await app.inject({ method: 'GET', url: '/key' });
  t.equal(text.body, keyring.current.primary.export() + '\n', 'the key as text');
  t.same((await app.inject({ method: 'GET', url: '/key', headers: { accept: 'application/json' } })).json(), { key: keyring.current.primary.export(), id: keyring.current.primary.id }, 'or as JSON');
  t.match((await app.inject({ method: 'GET', url: '/health' })).json(), { status: 'ok', keyring: { fingerprint: /^[0-9a-f]{16}$/, primary: /^[0-9a-f]{12}$/, keys: 1 } }, 'health: ok, with the keyring facts');
  t.match((await app.inject({ method: 'GET', url: '/' })).json(), { service: 'crypt', docs: '/docs' }, 'an index');
  const doc = (await app.inject({ method: 'GET', url: '/openapi.json' })).json() as { openapi: string; paths: Record<string, Record<string, { requestBody?: { content: Record<string, unknown> }; responses: Record<string, unknown> }>> };
  t.match(doc.openapi, /^3\./, 'OpenAPI 3');
  t.same(Object.keys(doc.paths).sort(), ['/audit/hash', '/datakey', '/decrypt', '/encrypt', '/health', '/inspect', '/key', '/keys', '/keys/{key}', '/keys/{key}/config', '/keys/{key}/rotate', '/ready', '/rewrap', '/stream/decrypt', '/stream/encrypt'], 'every route, and only the real ones (the old /keys/rotate works, undocumented)');
  for (const url of ['/encrypt', '/decrypt', '/rewrap']) {
    t.same(Object.keys(doc.paths[url]!.post!.requestBody!.content).sort(), [...RAW, 'application/json'].sort(), `${url}: raw and JSON bodies documented`);
    t.ok(doc.paths[url]!.post!.responses['200'] && doc.paths[url]!.post!.responses['413'], `${url}: responses documented`);
  }
  const docs = await app.inject({ method: 'GET', url: '/docs/' });
  t.equal(docs.statusCode, 200, 'a docs page at /docs');
  t.match(docs.body, /swagger/i, 'Swagger UI');
});

t.test('end to end over real sockets: TCP and HTTP share keys and tokens', async (t) => {
  const { server, connect } = await start(t, { http: true, httpPort: 0 });
  const base = `http://127.0.0.1:${server.http!.address.port}`;
  const client = await connect();
  const fromTcp = await client.encrypt('via tcp');
  const r1 = await fetch(`${base}/decrypt`, { method: 'POST', body: fromTcp });
  t.equal(await r1.text(), 'via tcp', 'a TCP token decrypts over HTTP');
  const fromHttp = (await (await fetch(`${base}/encrypt`, { method: 'POST', body: 'via http' })).text()).trim();
  t.equal((await client.decrypt(fromHttp)).toString(), 'via http', 'an HTTP token decrypts over TCP');
  const file = randomBytes(300_000);
  const token = await (await fetch(`${base}/encrypt`, { method: 'POST', body: file, headers: { 'content-type': 'application/octet-stream' } })).text();
  const back = Buffer.from(await (await fetch(`${base}/decrypt`, { method: 'POST', body: token })).arrayBuffer());
  t.ok(back.equals(file), 'a file round-trips over a real socket');
});

t.test('rate limit per client: 429 with Retry-After; /health is exempt', async (t) => {
  const { server } = await start(t, { http: true, httpPort: 0, rateLimit: 3 });
  const base = `http://127.0.0.1:${server.http!.address.port}`;
  const statuses: number[] = [];
  let last: Response | null = null;
  for (let i = 0; i < 5; i++) {
    last = await fetch(`${base}/encrypt`, { method: 'POST', body: 'x' });
    statuses.push(last.status);
  }
  t.same(statuses, [200, 200, 200, 429, 429], 'the 4th request within a second is refused');
  t.ok(Number(last!.headers.get('retry-after')) >= 1, 'with Retry-After');
  t.match(await last!.json(), { error: { code: 'rate_limited' } }, 'rate_limited');
  t.equal((await fetch(`${base}/health`)).status, 200, 'health is not limited');
});

t.test('over --max-connections or --max-per-address, a connection gets 503 at accept and is closed', async (t) => {
  for (const limit of [{ maxConnections: 1 }, { maxPerAddress: 1 }]) {
    const { server } = await start(t, { http: true, httpPort: 0, ...limit });
    const port = server.http!.address.port;
    const first = net.connect(port, '127.0.0.1');
    await once(first, 'connect');
    const second = net.connect(port, '127.0.0.1');
    const chunks: Buffer[] = [];
    second.on('data', (c: Buffer) => chunks.push(c));
    await once(second, 'close');
    t.match(Buffer.concat(chunks).toString(), /^HTTP\/1\.1 503 .*"code":"busy"/s, `${Object.keys(limit)[0]}: 503 busy without sending a request`);
    first.destroy();
  }
});

t.test('the rate limit counts per address, before authentication: varying the token buys nothing', async (t) => {
  const dir = tempDir(t);
  const tokens = join(dir, 'tokens');
  await fs.writeFile(tokens, 'user user-token-0123456789abcdef\n', { mode: 0o600 });
  const { server } = await start(t, { http: true, httpPort: 0, rateLimit: 3, tokensFile: tokens });
  const base = `http://127.0.0.1:${server.http!.address.port}`;
  const statuses: number[] = [];
  for (let i = 0; i < 5; i++) {
    statuses.push((await fetch(`${base}/encrypt`, { method: 'POST', body: 'x', headers: { authorization: `Bearer guess-${i}-0123456789abcdef` } })).status);
  }
  t.same(statuses, [401, 401, 401, 429, 429], 'wrong-token guesses are counted, and a new header is no new bucket');
});

t.test('without access tokens, a Bearer header is refused, not silently accepted', async (t) => {
  const { app } = await httpApp(t);
  const res = await app.inject({ method: 'POST', url: '/encrypt', headers: { 'content-type': 'text/plain', authorization: 'Bearer anything-at-all-0123' }, payload: 'x' });
  t.equal(res.statusCode, 401, '401');
  t.match(res.json(), { error: { code: 'unauthorized', message: /no access tokens are configured on this server/ } }, 'saying no access tokens are configured');
});

t.test('a malformed batch item fails alone; a fault in an item is logged', async (t) => {
  const { app, keyring, logs, service } = await httpApp(t);
  const token = keyring.current.primary.encrypt(Buffer.from('ok'));
  const dec = (await app.inject({ method: 'POST', url: '/decrypt', ...json({ batch: [{ token: 5 }, { token, ttl: -1 }, { token: null }, { token }, { token, ttl: 'x' }, [], null] }) })).json() as { batch: unknown[] };
  t.match(dec.batch, [
    { error: { code: 'bad_request', message: '"token" must be a string' } },
    { error: { code: 'bad_request', message: 'ttl must be a whole number of seconds, 0 or more' } },
    { error: { code: 'bad_request', message: '"token" must be a string' } },
    { plaintext: 'ok' },
    { error: { code: 'bad_request' } },
    { error: { code: 'bad_request', message: 'each batch item must be a JSON object' } },
    { error: { code: 'bad_request', message: 'each batch item must be a JSON object' } },
  ], 'each malformed item has its own error; the good one is answered');
  const enc = (await app.inject({ method: 'POST', url: '/encrypt', ...json({ batch: [{ plaintext: 5 }, { plaintext: 'fine' }] }) })).json() as { batch: unknown[] };
  t.match(enc.batch, [{ error: { code: 'bad_request', message: '"plaintext" must be a string' } }, { token: String }], 'encrypt too');
  const resolve = service.resolve;
  service.resolve = () => { throw new TypeError('a bug'); };
  const faulty = (await app.inject({ method: 'POST', url: '/encrypt', ...json({ batch: [{ plaintext: 'a' }, { plaintext: 'b' }] }) })).json() as { batch: unknown[] };
  service.resolve = resolve;
  t.match(faulty.batch, [{ error: { code: 'internal' } }, { error: { code: 'internal' } }], 'a fault fails its items');
  t.equal(logs.filter((l) => l.includes('"msg":"internal error"')).length, 2, 'and each is logged');
});

t.test('validation messages name the field and what was expected', async (t) => {
  const { app } = await httpApp(t);
  const cases: Array<[string, unknown, string]> = [
    ['/encrypt', { message: 'x' }, 'unknown field "message": expected "plaintext" or "plaintext_base64" and optionally "key" or "context"'],
    ['/decrypt', { tokn: 'x' }, 'unknown field "tokn": expected "token" and optionally "ttl" or "key" or "context" or "encoding"'],
    ['/encrypt', { plaintext: 'x', key: 'Not A Name' }, "key must be a key name: 1 to 64 of a-z, 0-9, '.', '_' and '-', starting with a letter or digit"],
    ['/encrypt', { plaintext: 'x', context: 'dGVuYW50' }, 'key default is not derived: a context means nothing to it, send none'],
    ['/encrypt', { plaintext: 'x', context: '' }, 'context must be base64url of 1 to 256 bytes'],
    ['/encrypt', { plaintext: 'a', plaintext_base64: 'YQ==' }, 'send "plaintext" or "plaintext_base64", not both'],
    ['/encrypt', {}, 'expected "plaintext" (a string) or "plaintext_base64"'],
    ['/decrypt', { token: 'x', ttl: 'soon' }, 'ttl must be a whole number of seconds, 0 or more'],
    ['/decrypt', { token: 'x', encoding: 'hex' }, '"encoding" must be "base64" or "auto"'],
  ];
  for (const [url, body, message] of cases) {
    const res = await app.inject({ method: 'POST', url, ...json(body) });
    t.same(res.json(), { error: { code: 'bad_request', message } }, `${JSON.stringify(body)}: ${message}`);
  }
  const query = await app.inject({ method: 'POST', url: '/decrypt?ttl=soon', headers: { 'content-type': 'text/plain' }, payload: 'x' });
  t.same(query.json(), { error: { code: 'bad_request', message: 'ttl must be a whole number of seconds, 0 or more' } }, 'a bad ?ttl says what a ttl is, not a regex');
  const other = await app.inject({ method: 'POST', url: '/decrypt?size=1', headers: { 'content-type': 'text/plain' }, payload: 'x' });
  t.match(other.json(), { error: { message: 'de has no option size; its options: ttl' } }, 'an unknown query parameter is named');
});

t.test('plaintext_base64 takes standard and URL-safe base64, padded or not; decrypt can answer base64', async (t) => {
  const { app } = await httpApp(t);
  const bytes = Buffer.from([0xfb, 0xff, 0xbf, 0x00, 0x3e]);
  for (const b64 of [bytes.toString('base64'), bytes.toString('base64url'), bytes.toString('base64').replace(/=+$/, ''), bytes.toString('base64url') + '=']) {
    const enc = await app.inject({ method: 'POST', url: '/encrypt', ...json({ plaintext_base64: b64 }) });
    const { token } = enc.json() as { token: string };
    const dec = (await app.inject({ method: 'POST', url: '/decrypt', ...json({ token }) })).json() as { plaintext_base64: string };
    t.same(Buffer.from(dec.plaintext_base64, 'base64'), bytes, `${b64} round-trips`);
  }
  for (const bad of ['a', 'ab=c', '!!!!', 'abc==']) {
    t.equal((await app.inject({ method: 'POST', url: '/encrypt', ...json({ plaintext_base64: bad }) })).statusCode, 400, `${bad} is refused`);
  }
  const { token } = (await app.inject({ method: 'POST', url: '/encrypt', ...json({ plaintext: 'text' }) })).json() as { token: string };
  t.same((await app.inject({ method: 'POST', url: '/decrypt', ...json({ token, encoding: 'base64' }) })).json(), { plaintext_base64: Buffer.from('text').toString('base64'), timestamp: Number((await app.inject({ method: 'POST', url: '/decrypt', ...json({ token }) })).json().timestamp) }, 'encoding base64 answers base64 even for text');
  const batch = (await app.inject({ method: 'POST', url: '/decrypt', ...json({ encoding: 'base64', batch: [{ token }, { token, encoding: 'auto' }] }) })).json() as { batch: unknown[] };
  t.match(batch.batch, [{ plaintext_base64: 'dGV4dA==' }, { plaintext: 'text' }], 'in a batch, beside "batch" or per item');
});

t.test('browsers: a foreign Host or Origin, or a cross-site fetch, is refused; programs are not affected', async (t) => {
  const { app, keyring } = await httpApp(t);
  const before = keyring.current.primary.id;
  const cases: Array<[string, Record<string, string>, number]> = [
    ['curl', {}, 200],
    ['Host: localhost:8080', { host: 'localhost:8080' }, 200],
    ['Host: 127.0.0.1:8080', { host: '127.0.0.1:8080' }, 200],
    ['Host: [::1]:8080', { host: '[::1]:8080' }, 200],
    ['DNS rebinding: Host: evil.example', { host: 'evil.example:8080' }, 403],
    ['a malformed Host', { host: 'a b' }, 403],
    ['Origin of another site', { host: 'localhost:8080', origin: 'http://evil.example' }, 403],
    ['Origin of another local port', { host: 'localhost:8080', origin: 'http://localhost:3000' }, 403],
    ['Origin: null', { host: 'localhost:8080', origin: 'null' }, 403],
    ['its own origin (the /docs page)', { host: 'localhost:8080', origin: 'http://localhost:8080' }, 200],
    ['Sec-Fetch-Site: cross-site', { host: 'localhost:8080', 'sec-fetch-site': 'cross-site' }, 403],
    ['Sec-Fetch-Site: same-origin', { host: 'localhost:8080', 'sec-fetch-site': 'same-origin' }, 200],
  ];
  for (const [name, headers, status] of cases) {
    const res = await app.inject({ method: 'POST', url: '/keys/rotate', headers: { ...headers, 'content-type': 'text/plain' } });
    t.equal(res.statusCode, status, `${name}: ${status}`);
    if (status === 403) t.match(res.json(), { error: { code: 'forbidden' } }, `${name}: forbidden`);
  }
  t.equal(keyring.current.info().length, 1 + cases.filter((c) => c[2] === 200).length, 'only the allowed requests rotated');
  t.not(keyring.current.primary.id, before, 'they did rotate');
  const key = await app.inject({ method: 'GET', url: '/key', headers: { host: 'attacker.example' } });
  t.equal(key.statusCode, 403, 'a rebinding page cannot read GET /key');
});

t.test('--allowed-hosts adds names; * allows any', async (t) => {
  const { app } = await httpApp(t, { allowedHosts: ['crypt.internal'] });
  t.equal((await app.inject({ method: 'GET', url: '/keys', headers: { host: 'crypt.internal:8080' } })).statusCode, 200, 'an added name');
  t.equal((await app.inject({ method: 'GET', url: '/keys', headers: { host: 'other.internal' } })).statusCode, 403, 'others still refused');
  const any = await httpApp(t, { allowedHosts: ['*'] });
  t.equal((await any.app.inject({ method: 'GET', url: '/keys', headers: { host: 'whatever.example' } })).statusCode, 200, '* allows any');
});

t.test('a body arriving one byte per chunk costs its bytes, not an object per chunk', async (t) => {
  setFlagsFromString('--expose-gc');
  const gc = runInNewContext('gc') as () => void;
  const n = 200_000;
  const payload = new PassThrough();
  const req = { headers: { 'content-length': String(n) } } as unknown as FastifyRequest;
  const done = new Promise<Buffer>((resolve, reject) => collectBody(req, payload, 1 << 20, (err, body) => (err ? reject(err) : resolve(body!))));
  gc();
  const before = process.memoryUsage().heapUsed;
  // a flowing stream: each write is one 'data' event, as one-byte TCP segments are
  for (let i = 0; i < n - 1; i++) payload.write(Buffer.alloc(1, 0x61));
  gc();
  const grown = process.memoryUsage().heapUsed - before;
  t.ok(grown < 8 * 1024 * 1024, `199,999 one-byte chunks held in ${(grown / 1048576).toFixed(1)} MiB of heap (one Buffer each would be 30 MiB or more)`);
  payload.end(Buffer.alloc(1, 0x61));
  t.ok((await done).equals(Buffer.alloc(n, 0x61)), 'and the body comes out whole');
  const short = new PassThrough();
  const mismatch = new Promise<Error | null>((resolve) => collectBody(req, short, 1 << 20, (err) => resolve(err)));
  short.end('abc');
  t.match(await mismatch, { code: 'bad_request', message: 'the Content-Length does not match the body' }, 'a body shorter than its Content-Length is refused');
  const long = new PassThrough();
  const over = new Promise<Error | null>((resolve) => collectBody({ headers: {} } as unknown as FastifyRequest, long, 10, (err) => resolve(err)));
  long.write('a'.repeat(11));
  t.match(await over, { code: 'too_large' }, 'a body over the limit is refused as it arrives');
});
