import t from 'tap';
import { readFileSync } from 'node:fs';
import { createDecipheriv, createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { inspect } from 'node:util';
import { FernetKey, decrypt, tokenLength, MAX_CLOCK_SKEW } from '../../src/crypto/fernet.js';
import { CryptError } from '../../src/core/errors.js';

interface Vector { token: string; now: string; secret: string; src?: string; iv?: number[]; ttl_sec?: number; desc?: string }
const load = (name: string): Vector[] =>
  JSON.parse(readFileSync(new URL(`../fixtures/fernet-spec/${name}.json`, import.meta.url), 'utf8')) as Vector[];
const seconds = (iso: string): number => Date.parse(iso) / 1000;

/** An independent reference decryption with fresh node:crypto objects, to check the fast path against. */
function reference(secret: string, token: string): Buffer {
  const key = Buffer.from(secret, 'base64url');
  const raw = Buffer.from(token, 'base64url');
  const body = raw.subarray(0, raw.length - 32);
  const mac = createHmac('sha256', key.subarray(0, 16)).update(body).digest();
  if (!timingSafeEqual(mac, raw.subarray(raw.length - 32))) throw new Error('reference: bad mac');
  const d = createDecipheriv('aes-128-cbc', key.subarray(16), raw.subarray(9, 25));
  return Buffer.concat([d.update(raw.subarray(25, raw.length - 32)), d.final()]);
}

t.test('spec generate vectors produce the exact token', async (t) => {
  for (const v of load('generate')) {
    const key = FernetKey.from(v.secret);
    const token = key.encryptWith(Buffer.from(v.src!), seconds(v.now), Uint8Array.from(v.iv!));
    t.equal(token, v.token, `generate "${v.src}" gives the spec token`);
    // a second token through the same long-lived CBC stream must still be exact
    t.equal(key.encryptWith(Buffer.from(v.src!), seconds(v.now), Uint8Array.from(v.iv!)), v.token, 'the chained stream gives the same token again');
  }
});

t.test('spec verify vectors decrypt', async (t) => {
  for (const v of load('verify')) {
    const key = FernetKey.from(v.secret);
    const opened = decrypt([key], v.token, { ttl: v.ttl_sec, now: seconds(v.now) });
    t.equal(opened.plaintext.toString(), v.src, 'verify vector yields its source');
    t.equal(opened.timestamp, seconds('1985-10-26T01:20:00-07:00'), 'timestamp is the token creation time');
    t.equal(opened.key, key, 'reports the key that opened it');
  }
});

t.test('spec invalid vectors are each the same opaque invalid_token', async (t) => {
  const vectors = load('invalid');
  t.equal(vectors.length, 8, 'all 8 invalid vectors are present');
  for (const v of vectors) {
    const key = FernetKey.from(v.secret);
    t.throws(() => decrypt([key], v.token, { ttl: v.ttl_sec, now: seconds(v.now) }),
      { code: 'invalid_token', message: 'invalid token' }, `rejects: ${v.desc}`);
  }
});

t.test('round trips any bytes, through the long-lived stream, against a reference', async (t) => {
  const key = FernetKey.generate();
  const sizes = [0, 1, 15, 16, 17, 31, 32, 33, 100, 1000, 4095, 4096, 65535, 65536, 65537, 70000, 1 << 20];
  for (const size of sizes) {
    const m = randomBytes(size);
    for (let i = 0; i < 3; i++) {
      const token = key.encrypt(m);
      t.equal(token.length, tokenLength(size), `token length formula holds at ${size} bytes`);
      t.ok(reference(key.export(), token).equals(m), `reference decrypts our ${size}-byte token (#${i})`);
      t.ok(decrypt([key], token).plaintext.equals(m), `we decrypt our ${size}-byte token (#${i})`);
      t.ok(decrypt([key], Buffer.from(token, 'latin1')).plaintext.equals(m), `token given as bytes decrypts at ${size}`);
    }
  }
});

t.test('interleaving keys and directions keeps every stream right', async (t) => {
  const a = FernetKey.generate();
  const b = FernetKey.generate();
  const tokens: [FernetKey, Buffer, string][] = [];
  for (let i = 0; i < 200; i++) {
    const k = i % 3 === 0 ? b : a;
    const m = randomBytes(i * 7);
    tokens.push([k, m, k.encrypt(m)]);
    const j = Math.floor(Math.random() * tokens.length);
    const [, mm, tok] = tokens[j]!;
    t.ok(decrypt([a, b], tok).plaintext.equals(mm), `random earlier token #${j} still decrypts`);
  }
});

t.test('several keys: first match wins, unknown key fails', async (t) => {
  const oldKey = FernetKey.generate();
  const newKey = FernetKey.generate();
  const token = oldKey.encrypt(Buffer.from('x'));
  t.equal(decrypt([newKey, oldKey], token).key, oldKey, 'an older key still opens its token');
  t.throws(() => decrypt([newKey], token), { code: 'invalid_token' }, 'without the old key it fails');
  t.throws(() => decrypt([], token), { code: 'invalid_token' }, 'with no keys it fails');
});

t.test('TTL and clock skew follow the reference implementations', async (t) => {
  const key = FernetKey.generate();
  const made = 1_000_000;
  const token = key.encrypt(Buffer.from('x'), made);
  t.ok(decrypt([key], token, { ttl: 10, now: made + 10 }), 'exactly ttl seconds old is valid');
  t.throws(() => decrypt([key], token, { ttl: 10, now: made + 11 }), { code: 'invalid_token' }, 'older than ttl fails');
  t.ok(decrypt([key], token, { ttl: 10, now: made - MAX_CLOCK_SKEW }), '60 s in the future is tolerated');
  t.throws(() => decrypt([key], token, { ttl: 10, now: made - MAX_CLOCK_SKEW - 1 }), { code: 'invalid_token' }, 'beyond 60 s of skew fails');
  t.ok(decrypt([key], token, { now: made + 10 ** 9 }), 'without a ttl, age does not matter');
});

t.test('tokens are canonical base64url: the URL-safe alphabet, padded, no stray bits', async (t) => {
  const key = FernetKey.generate();
  const token = key.encrypt(Buffer.from('hello world'));
  t.match(token, /=$/, 'tokens are written padded');
  const bare = token.replace(/=+$/, '');
  const bad = [
    bare,
    token.slice(0, 10) + '%' + token.slice(11),
    token.slice(0, 10) + '+' + token.slice(11),
    token.slice(0, 10) + '/' + token.slice(11),
    token.slice(0, 10) + '=' + token.slice(11),
    ' ' + token,
    token + '\n',
    token + '=',
    bare + '===',
    token.slice(0, -5),
    token.slice(0, 10) + 'é' + token.slice(11),
    '',
    'gAAAAA',
  ];
  for (const b of bad) t.throws(() => decrypt([key], b), { code: 'invalid_token' }, `rejects ${JSON.stringify(b.slice(0, 12))}…${JSON.stringify(b.slice(-3))}`);
  // the last character before the padding carries unused bits: they must be zero
  const pad = token.length - bare.length;
  const last = bare.at(-1)!;
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
  const stray = alphabet[alphabet.indexOf(last) | 1]!;
  t.throws(() => decrypt([key], bare.slice(0, -1) + stray + '='.repeat(pad)), { code: 'invalid_token' }, `a non-canonical last character (${last} -> ${stray}) is refused`);
  const raw = Buffer.from(token, 'base64url');
  raw[0] = 0x81;
  t.throws(() => decrypt([key], raw.toString('base64url') + '='.repeat(pad)), { code: 'invalid_token' }, 'rejects another version byte');
  t.throws(() => decrypt([key], token.slice(0, 20) + (token[20] === 'A' ? 'B' : 'A') + token.slice(21)), CryptError, 'rejects a flipped bit');
});

t.test('keys parse strictly, have a stable public id, and never print themselves', async (t) => {
  const key = FernetKey.generate();
  const text = key.export();
  t.equal(text.length, 44, 'exported key is 44 characters');
  t.match(text, /^[A-Za-z0-9_-]{43}=$/, 'exported key is padded base64url');
  const again = FernetKey.from(text);
  t.equal(again.id, key.id, 'the id is derived from the key');
  t.match(key.id, /^[0-9a-f]{12}$/, 'the id is 12 hex digits');
  t.equal(FernetKey.from(text.slice(0, 43)).id, key.id, 'an unpadded key parses too');
  for (const bad of ['', 'short', text.slice(0, 40), text + 'AAAA', text.replace(/^./, '+')]) {
    t.throws(() => FernetKey.from(bad), { message: /^not a Fernet key/ }, 'rejects a malformed key');
    try { FernetKey.from(bad); } catch (err) { t.notMatch(String(err), bad || 'never-empty', 'the error does not echo the input'); }
  }
  t.equal(FernetKey.fromBytes(key.exportBytes()).id, key.id, 'the raw bytes make the same key');
  t.throws(() => FernetKey.fromBytes(new Uint8Array(31)), TypeError, 'a key is 32 bytes');
  t.notMatch(inspect(key), text, 'inspect does not show the key');
  t.notMatch(JSON.stringify({ key }), text, 'JSON does not show the key');
  t.notMatch(String(key), text, 'String() does not show the key');
});
