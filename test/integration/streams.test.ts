// Streams through the server as nc and curl users meet them: TCP #se:<n># and #sd:<n># between
// other requests, replies byte for byte, tampering found early (an error reply, the connection
// usable) or late (the connection closed before the closing '#'), the line form refused,
// --max-stream, roles and token scopes; HTTP PUT/POST /stream/encrypt and /stream/decrypt with an
// aborted reply on tampering; and interop with crypt-client's decrypt-file.
import t from 'tap';
import net from 'node:net';
import { once } from 'node:events';
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import { join } from 'node:path';
import { start, tempDir } from '../helpers/server.js';
import { memoryIo } from '../helpers/cli.js';
import { run as clientRun } from '../../src/cli/client.js';
import { CHUNK, TAG, HeaderReader, streamLength } from '../../src/crypto/stream.js';

const USER = 'streams-user-token-0123456789abcdef';
const DECRYPT = 'streams-decrypt-token-0123456789ab';
const TENANT = 'streams-tenant-token-0123456789abc';

/** A raw TCP session that collects every byte and sees the close. */
async function session(port: number) {
  const socket = net.connect(port, '127.0.0.1');
  await once(socket, 'connect');
  let got = Buffer.alloc(0);
  let waiter: (() => void) | null = null;
  let closed = false;
  socket.on('data', (c: Buffer) => {
    got = Buffer.concat([got, c]);
    waiter?.();
  });
  socket.on('close', () => {
    closed = true;
    waiter?.();
  });
  socket.on('error', () => undefined);
  /** Waits until the bytes so far satisfy `enough`, or the socket closed. */
  const until = async (enough: (b: Buffer) => boolean) => {
    while (!enough(got) && !closed) await new Promise<void>((r) => (waiter = r));
    waiter = null;
    return got;
  };
  return { socket, until, get closed() { return closed; }, take: (n: number) => { const b = got.subarray(0, n); got = got.subarray(n); return b; } };
}

/** Parses `#ok:<m>#<m bytes>#\n` at the start of b; null when not all there yet. */
function okFrame(b: Buffer): { body: Buffer; size: number } | null {
  if (b.length < 5 || b.toString('latin1', 0, 4) !== '#ok:') return null;
  const hash = b.indexOf(0x23, 4);
  if (hash === -1) return null;
  const m = Number(b.toString('latin1', 4, hash));
  const end = hash + 1 + m;
  if (b.length < end + 2) return null;
  return { body: b.subarray(hash + 1, end), size: end + 2 };
}
const line = (b: Buffer): string | null => (b.includes(0x0a) ? b.toString('latin1', 0, b.indexOf(0x0a)) : null);

t.test('TCP: se and sd between other requests, any size, the reply length announced first', async (t) => {
  const { port } = await start(t);
  const s = await session(port);
  for (const size of [0, 1, CHUNK, 200_000]) {
    const data = randomBytes(size);
    s.socket.write(Buffer.concat([Buffer.from('#en#before#\n'), Buffer.from(`#se:${size}#`), data, Buffer.from('#\n#en#after#\n')]));
    const first = line(await s.until((b) => line(b) !== null))!;
    t.match(first, /^gAAAAA/, `${size}: the request before answers first`);
    s.take(first.length + 1);
    const reply = okFrame(await s.until((b) => okFrame(b) !== null))!;
    t.equal(reply.body.length, streamLength(size, 212), `${size}: #ok:<m># with m computed from n`);
    t.equal(s.take(reply.size).subarray(-2).toString(), '#\n', `${size}: the reply ends with '#' LF`);
    t.match(line(await s.until((b) => line(b) !== null)), /^gAAAAA/, `${size}: the request after answers after`);
    s.take(line(await s.until((b) => line(b) !== null))!.length + 1);
    // and back, in small writes
    const stream = reply.body;
    const frame = Buffer.concat([Buffer.from(`#sd:${stream.length}#`), stream, Buffer.from('#\n')]);
    for (let at = 0; at < frame.length; at += 7919) s.socket.write(frame.subarray(at, at + 7919));
    const plain = okFrame(await s.until((b) => okFrame(b) !== null))!;
    t.ok(plain.body.equals(data), `${size}: sd gives the bytes back`);
    s.take(plain.size);
  }
  s.socket.destroy();
});

t.test('TCP: tampering early is an error reply; late closes the connection before the closing #', async (t) => {
  const { port } = await start(t);
  const s1 = await session(port);
  const data = randomBytes(3 * CHUNK);
  s1.socket.write(Buffer.concat([Buffer.from(`#se:${data.length}#`), data, Buffer.from('#\n')]));
  const stream = Buffer.from(okFrame(await s1.until((b) => okFrame(b) !== null))!.body);
  s1.socket.destroy();

  const early = await session(port);
  early.socket.write(Buffer.concat([Buffer.from('#sd:8#not-a-cs#\n#en#still#\n')]));
  const err = line(await early.until((b) => line(b) !== null))!;
  t.match(err, /^#er#invalid_stream#not a crypt stream/, 'not crypt-stream/1: an error reply');
  early.take(err.length + 1);
  t.match(line(await early.until((b) => line(b) !== null)), /^gAAAAA/, 'and the connection stays usable');
  const badHeader = Buffer.from(stream);
  badHeader[100]! ^= 1;
  early.socket.write(Buffer.concat([Buffer.from(`#sd:${badHeader.length}#`), badHeader, Buffer.from('#\n#en#still#\n')]));
  await early.until((b) => (b.toString('latin1').match(/\n/g) ?? []).length >= 3);
  t.match(early.take(1000).toString('latin1'), /gAAAAA.*\n#er#invalid_stream#[^\n]*\ngAAAAA/s, 'a header changed: an error before any plaintext; the next request runs');
  early.socket.destroy();

  const cases: Array<[string, Buffer]> = [
    ['a flipped byte in chunk 2', (() => { const b = Buffer.from(stream); b[212 + 2 * (CHUNK + TAG) + 3]! ^= 1; return b; })()],
    ['truncated at a chunk boundary (declared shorter)', stream.subarray(0, 212 + 2 * (CHUNK + TAG))],
    ['chunks 1 and 2 swapped', Buffer.concat([stream.subarray(0, 212 + CHUNK + TAG), stream.subarray(212 + 2 * (CHUNK + TAG)), stream.subarray(212 + CHUNK + TAG, 212 + 2 * (CHUNK + TAG))])],
  ];
  // chunk 0 failing releases nothing: still an error reply
  const swapped = Buffer.concat([stream.subarray(0, 212), stream.subarray(212 + CHUNK + TAG, 212 + 2 * (CHUNK + TAG)), stream.subarray(212, 212 + CHUNK + TAG), stream.subarray(212 + 2 * (CHUNK + TAG))]);
  const first = await session(port);
  first.socket.write(Buffer.concat([Buffer.from(`#sd:${swapped.length}#`), swapped, Buffer.from('#\n')]));
  t.match(line(await first.until((b) => line(b) !== null)), /^#er#invalid_stream#chunk 0 failed authentication/, 'chunks 0 and 1 swapped: chunk 0 fails before any byte is released, an error reply');
  first.socket.destroy();
  for (const [what, bytes] of cases) {
    const s = await session(port);
    s.socket.write(Buffer.concat([Buffer.from(`#sd:${bytes.length}#`), bytes, Buffer.from('#\n')]));
    const all = await s.until(() => false);
    t.ok(s.closed, `${what}: the server closed the connection`);
    t.notOk(all.subarray(-2).toString() === '#\n' && okFrame(all) !== null, `${what}: without a whole reply`);
  }
});

t.test('TCP: the line form, --max-stream, roles and token scopes', async (t) => {
  const dir = tempDir(t);
  const tokensFile = join(dir, 'tokens');
  await fs.writeFile(tokensFile, `user ${USER}\ndecrypt ${DECRYPT}\nuser ${TENANT} keys=tenant-*\n`, { mode: 0o600 });
  const { port, server } = await start(t, { tokensFile, keyring: join(dir, 'keyring.json'), maxStream: 1000 });
  await server.service.createKey('tenant-a', { derived: false, exportable: false });
  const s = await session(port);
  s.socket.write(`#au#${USER}#\n#se#inline#\n#se:5000#`);
  s.socket.write(Buffer.alloc(5000));
  s.socket.write('#\n#se,key=tenant-a:3#abc#\n');
  const text = (await s.until((b) => okFrame(b.subarray(b.indexOf('#ok:'))) !== null)).toString('latin1');
  t.match(text, /^ok user\n#er#bad_frame#se is a stream: it takes the length form only[^\n]*\n#er#too_large#[^\n]*\n#ok:/, 'line form refused; past --max-stream: too_large, its bytes skipped; then a stream runs');
  const streamed = okFrame(Buffer.from(text.slice(text.indexOf('#ok:')), 'latin1'))!.body;
  s.socket.destroy();
  t.equal(new HeaderReader().push(streamed)!.header.keyName, 'tenant-a', 'key= chooses the wrapping key');
  const dec = await session(port);
  dec.socket.write(`#au#${DECRYPT}#\n#se:1#x#\n`);
  t.match((await dec.until((b) => (b.toString().match(/\n/g) ?? []).length >= 2)).toString(), /ok decrypt\n#er#forbidden#/, 'a decrypt token may not se');
  dec.socket.destroy();
  const tenant = await session(port);
  const other = (await (async () => {
    const u = await session(port);
    u.socket.write(`#au#${USER}#\n#se:1#x#\n`);
    const b = await u.until((x) => okFrame(x.subarray(x.indexOf('#ok:'))) !== null);
    u.socket.destroy();
    return okFrame(b.subarray(b.indexOf('#ok:')))!.body;
  })());
  tenant.socket.write(Buffer.concat([Buffer.from(`#au#${TENANT}#\n#sd:${other.length}#`), other, Buffer.from('#\n')]));
  t.match((await tenant.until((b) => (b.toString('latin1').match(/\n/g) ?? []).length >= 2)).toString('latin1'), /ok user\n#er#forbidden#this access token may not use the key default/, "sd of a stream whose header names a key outside the token's scope: forbidden, before any byte");
  tenant.socket.destroy();
});

t.test('HTTP: PUT and POST /stream/encrypt and /stream/decrypt, chunked; tampering aborts the reply; crypt-client reads the result', async (t) => {
  const dir = tempDir(t);
  const auditFile = join(dir, 'audit.log');
  const { server, port } = await start(t, { http: true, httpPort: 0, auditFile, keyring: join(dir, 'keyring.json') });
  const base = `http://127.0.0.1:${server.http!.address.port}`;
  const data = randomBytes(2 * CHUNK + 5);
  const enc = await fetch(`${base}/stream/encrypt`, { method: 'PUT', body: data });
  t.equal(enc.status, 200, 'PUT (curl -T) works');
  t.equal(enc.headers.get('transfer-encoding'), 'chunked', 'the reply is chunked');
  const stream = Buffer.from(await enc.arrayBuffer());
  await fs.writeFile(join(dir, 'x.crypt'), stream);
  const io = memoryIo({ env: {}, cwd: dir });
  t.equal(await clientRun(['--port', String(port), 'decrypt-file', 'x.crypt', '-o', 'x'], io), 0, 'crypt-client decrypt-file reads what HTTP made');
  t.ok((await fs.readFile(join(dir, 'x'))).equals(data), 'byte-identical');
  const dec = await fetch(`${base}/stream/decrypt`, { method: 'POST', body: stream, headers: { 'content-type': 'application/octet-stream' } });
  t.ok(Buffer.from(await dec.arrayBuffer()).equals(data), 'POST /stream/decrypt gives the bytes back');
  const notStream = await fetch(`${base}/stream/decrypt`, { method: 'POST', body: 'hello' });
  t.same([notStream.status, ((await notStream.json()) as { error: { code: string } }).error.code], [400, 'invalid_stream'], 'not a stream: a 400 before any byte');
  const bad = Buffer.from(stream);
  bad[bad.length - 3]! ^= 1;
  const aborted = await fetch(`${base}/stream/decrypt`, { method: 'POST', body: bad });
  t.equal(aborted.status, 200, 'tampering found late: the reply had begun');
  await t.rejects(aborted.arrayBuffer(), 'and is aborted: reading it fails');
  const cut = await fetch(`${base}/stream/decrypt`, { method: 'POST', body: stream.subarray(0, 212 + 2 * (CHUNK + TAG)) });
  await t.rejects(cut.arrayBuffer(), 'truncated at a chunk boundary: aborted too');
  t.equal((await fetch(`${base}/stream/encrypt`)).status, 405, 'GET is not a stream');
  await server.close();
  const lines = (await fs.readFile(auditFile, 'utf8')).split('\n').filter(Boolean).map((l) => JSON.parse(l) as { op: string; outcome: string; bytes_in: number; bytes_out: number });
  const streams = lines.filter((l) => l.op === 'se' || l.op === 'sd').map((l) => `${l.op} ${l.outcome}`);
  t.same(streams, ['se ok', 'sd ok', 'sd invalid_stream', 'sd invalid_stream', 'sd invalid_stream'], 'a line per stream, with its outcome');
  t.match(lines.find((l) => l.op === 'se'), { bytes_in: data.length, bytes_out: stream.length }, 'and its sizes');
});
