// crypt-stream/1's pure core: age's 28 published STREAM vectors run verbatim (whole and in random
// splits), round trips at the chunk edges in random splits, every kind of tampering (a flipped
// byte anywhere, truncation at every chunk boundary and inside a chunk, swapped, repeated and
// appended chunks), the header checked before any payload, the lengths, rewrap, and the fixed
// vectors of test/fixtures/crypt-stream.
import t from 'tap';
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync, readdirSync } from 'node:fs';
import { inflateSync } from 'node:zlib';
import {
  CHUNK, HeaderReader, MAGIC, StreamDecryptor, StreamEncryptor, StreamError, TAG,
  encodeHeader, payloadKey, plaintextLength, rewrapHeader, streamLength, verifyHeader,
} from '../../src/crypto/stream.js';

const AGE = new URL('../fixtures/age-stream/', import.meta.url);
const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/** Pushes data in random splits (or the given sizes), then finishes. */
function run(worker: { push(b: Buffer): Buffer[]; finish(): Buffer[] }, data: Buffer, split: 'whole' | 'random' | 'bytes' = 'random'): Buffer {
  const out: Buffer[] = [];
  let at = 0;
  while (at < data.length) {
    const n = split === 'whole' ? data.length : split === 'bytes' ? 1 : 1 + Math.floor(Math.random() * Math.min(data.length - at, 3 * CHUNK));
    out.push(...worker.push(Buffer.from(data.subarray(at, at + n))));
    at += n;
  }
  out.push(...worker.finish());
  return Buffer.concat(out);
}

function parseVector(file: Buffer): { expect: string; payload: string; fileKey: Buffer; nonce: Buffer | null; body: Buffer } {
  const blank = file.indexOf('\n\n');
  const fields = new Map(file.toString('latin1', 0, blank).split('\n').map((l) => [l.slice(0, l.indexOf(':')), l.slice(l.indexOf(':') + 2)] as const));
  let age = file.subarray(blank + 2);
  if (fields.get('compressed') === 'zlib') age = inflateSync(age);
  const mac = age.indexOf('\n--- ');
  const headerEnd = age.indexOf('\n', mac + 1) + 1;
  const rest = age.subarray(headerEnd);
  return { expect: fields.get('expect')!, payload: fields.get('payload') ?? '', fileKey: Buffer.from(fields.get('file key')!, 'hex'), nonce: rest.length >= 16 ? rest.subarray(0, 16) : null, body: rest.subarray(16) };
}

t.test("age's STREAM vectors: successes hash to their payload, failures fail, whole and in splits", async (t) => {
  const files = readdirSync(AGE).filter((f) => f.startsWith('stream_'));
  t.equal(files.length, 28, 'the 28 vectors');
  for (const name of files) {
    const v = parseVector(readFileSync(new URL(name, AGE)));
    for (const split of ['whole', 'random', ...(v.body.length < 300 ? ['bytes' as const] : [])] as const) {
      let result: Buffer | Error;
      try {
        if (!v.nonce) throw new StreamError('no nonce');
        result = run(new StreamDecryptor(payloadKey(v.fileKey, v.nonce)), v.body, split);
      } catch (err) {
        result = err as Error;
      }
      if (v.expect === 'success') t.equal(result instanceof Buffer ? sha256(result) : String(result), v.payload, `${name} (${split}): the payload's SHA-256`);
      else t.type(result, StreamError, `${name} (${split}): ${v.expect}`);
    }
  }
});

const fileKey = randomBytes(32);
const nonce = randomBytes(16);
const key = payloadKey(fileKey, nonce);
const seal = (data: Buffer): Buffer => run(new StreamEncryptor(key), data);
const open = (ct: Buffer): Buffer => run(new StreamDecryptor(key), ct);

t.test('round trips at the chunk edges, in random splits; lengths computable both ways', async (t) => {
  for (const size of [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 200_000]) {
    const data = randomBytes(size);
    const ct = seal(data);
    t.equal(ct.length, streamLength(size, 0), `${size}: the stream length is computable from the plaintext's`);
    t.equal(plaintextLength(ct.length, 0), size, `${size}: and back`);
    t.ok(open(ct).equals(data), `${size}: decrypts to the same bytes`);
  }
  t.equal(seal(Buffer.alloc(0)).length, TAG, 'an empty stream is one empty final chunk');
  t.equal(seal(Buffer.alloc(CHUNK)).length, CHUNK + TAG, 'exactly one chunk: one full final chunk, no empty one after it');
  t.equal(plaintextLength(TAG - 1, 0), -1, 'too short for any stream');
  t.equal(plaintextLength(CHUNK + TAG + TAG, 0), -1, 'an empty chunk after a full one is no stream');
});

t.test('tampering of every kind fails; no plaintext of a bad chunk is released', async (t) => {
  const data = randomBytes(3 * CHUNK + 1000);
  const ct = seal(data);
  const fails = (what: string, bytes: Buffer) => t.throws(() => open(bytes), { code: 'invalid_stream' }, what);
  for (const at of [0, 15, 16, 1000, CHUNK + TAG - 1, CHUNK + TAG, 2 * (CHUNK + TAG) + 5, ct.length - 17, ct.length - 1]) {
    const b = Buffer.from(ct);
    b[at]! ^= 0x01;
    fails(`a flipped bit at byte ${at}`, b);
  }
  for (let k = 1; k <= 3; k++) fails(`truncated at chunk boundary ${k}`, ct.subarray(0, k * (CHUNK + TAG)));
  fails('truncated inside a chunk', ct.subarray(0, CHUNK + TAG + 100));
  fails('truncated inside the final chunk', ct.subarray(0, ct.length - 1));
  const c = (i: number) => ct.subarray(i * (CHUNK + TAG), (i + 1) * (CHUNK + TAG));
  const last = ct.subarray(3 * (CHUNK + TAG));
  fails('two chunks swapped', Buffer.concat([c(1), c(0), c(2), last]));
  fails('a chunk repeated', Buffer.concat([c(0), c(0), c(1), c(2), last]));
  fails('a byte appended', Buffer.concat([ct, Buffer.from([0])]));
  fails('a chunk appended', Buffer.concat([ct, last]));
  fails('nothing at all', Buffer.alloc(0));
  // what a caller sees: chunk 0 and 1 released, then the failure at chunk 2
  const d = new StreamDecryptor(key);
  const b = Buffer.from(ct);
  b[2 * (CHUNK + TAG) + 10]! ^= 1;
  const released = [...d.push(b.subarray(0, 2 * (CHUNK + TAG) + 1))];
  t.throws(() => d.push(b.subarray(2 * (CHUNK + TAG) + 1)), { code: 'invalid_stream', message: /chunk 2 failed authentication/ }, 'the bad chunk is named');
  t.ok(Buffer.concat(released).equals(data.subarray(0, 2 * CHUNK)), 'the two chunks before it were released, and are authentic');
  t.throws(() => open(seal(randomBytes(10)).subarray(0, 5)), { message: /truncated/ }, 'a cut final chunk says truncated');
});

t.test('the header: written, read in any split, verified in constant time, rewrapped', async (t) => {
  const token = 'gAAAAAB' + 'x'.repeat(133);
  const header = encodeHeader('billing', token, nonce, fileKey);
  t.ok(header.subarray(0, MAGIC.length).equals(MAGIC), 'starts with crypt-stream/1');
  t.equal(header.length, 15 + 8 + 141 + 16 + 32, 'magic, name line, token line, nonce, MAC');
  const body = seal(Buffer.from('payload'));
  for (const size of [1, 7, 100, header.length + body.length]) {
    const r = new HeaderReader();
    let got: ReturnType<HeaderReader['push']> = null;
    const all = Buffer.concat([header, body]);
    for (let at = 0; got === null && at < all.length; at += size) got = r.push(all.subarray(at, at + size));
    t.same([got?.header.keyName, got?.header.token, got?.header.nonce.equals(nonce)], ['billing', token, true], `read in pieces of ${size}`);
  }
  const parsed = new HeaderReader().push(Buffer.concat([header, body]))!;
  t.ok(parsed.rest.equals(body), 'what follows the header is handed back');
  t.doesNotThrow(() => verifyHeader(parsed.header, fileKey), 'the right file key verifies it');
  t.throws(() => verifyHeader(parsed.header, randomBytes(32)), { code: 'invalid_stream', message: /header failed authentication/ }, 'another key does not');
  for (const at of [0, 16, 20, 100, header.length - 40, header.length - 1]) {
    const b = Buffer.from(header);
    b[at]! ^= 0x01;
    let failed = false;
    try {
      const h = new HeaderReader().push(b);
      if (h) verifyHeader(h.header, fileKey);
    } catch (err) {
      failed = err instanceof StreamError;
    }
    t.ok(failed, `a flipped bit at header byte ${at} fails before any payload`);
  }
  t.throws(() => new HeaderReader().push(Buffer.from('age-encryption.org/v1\n')), { message: /does not start with "crypt-stream\/1"/ }, 'another format is refused at once');
  t.throws(() => new HeaderReader().push(Buffer.concat([MAGIC, Buffer.alloc(70, 0x61)])), { message: /key name/ }, 'a key name line is bounded');
  t.throws(() => new HeaderReader().push(Buffer.concat([MAGIC, Buffer.from('k\n'), Buffer.alloc(1100, 0x61)])), { message: /token line/ }, 'a token line is bounded');
  const rewrapped = rewrapHeader(parsed.header, fileKey, 'billing-2', 'gAAAAABnew');
  const again = new HeaderReader().push(rewrapped)!.header;
  t.same([again.keyName, again.token, again.nonce.equals(nonce)], ['billing-2', 'gAAAAABnew', true], 'a rewrap changes the name and token, keeps the nonce');
  t.doesNotThrow(() => verifyHeader(again, fileKey), 'and verifies with the same file key: the payload is untouched');
});

t.test('fixed vectors of crypt-stream/1 (test/fixtures/crypt-stream/vectors.json) are reproduced', async (t) => {
  const vectors = JSON.parse(readFileSync(new URL('../fixtures/crypt-stream/vectors.json', import.meta.url), 'utf8')) as Array<{ name: string; file_key: string; nonce: string; key_name: string; token: string; plaintext_size: number; plaintext_byte: number; sha256: string; length: number }>;
  t.ok(vectors.length >= 4, 'several vectors');
  for (const v of vectors) {
    const fk = Buffer.from(v.file_key, 'hex');
    const n = Buffer.from(v.nonce, 'hex');
    const plaintext = Buffer.alloc(v.plaintext_size, v.plaintext_byte);
    const stream = Buffer.concat([encodeHeader(v.key_name, v.token, n, fk), run(new StreamEncryptor(payloadKey(fk, n)), plaintext, 'whole')]);
    t.same([stream.length, sha256(stream)], [v.length, v.sha256], `${v.name}: the same bytes`);
    const h = new HeaderReader().push(stream)!;
    verifyHeader(h.header, fk);
    t.ok(run(new StreamDecryptor(payloadKey(fk, h.header.nonce)), h.rest).equals(plaintext), `${v.name}: decrypts`);
  }
});
