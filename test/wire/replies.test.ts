import t from 'tap';
import { randomBytes } from 'node:crypto';
import { ReplyDecoder, ReplyError, encodeError, encodeResult, isBare } from '../../src/wire/replies.js';
import type { Reply } from '../../src/wire/replies.js';
import { CryptError } from '../../src/core/errors.js';

function randomCuts(n: number): number[] {
  const cuts = new Set<number>();
  const k = Math.floor(Math.random() * Math.min(n, 12));
  for (let i = 0; i < k; i++) cuts.add(1 + Math.floor(Math.random() * Math.max(1, n - 1)));
  return [...cuts].sort((a, b) => a - b);
}

t.test('reply encoding and decoding round trip in any split', async (t) => {
  const values: Array<string | Buffer> = [
    'gAAAAtoken', Buffer.from('plain'), Buffer.alloc(0), Buffer.from('#starts with hash'), Buffer.from('line\nbreak'),
    Buffer.from('cr\r'), Buffer.from([0, 255, 10, 35, 13]), randomBytes(70000), '{"keys":[]}', 'g'.repeat(150000),
  ];
  const errors = [new CryptError('invalid_token'), new CryptError('bad_frame', 'expected #<command>#<payload>#')];
  const wire = Buffer.concat([...values.flatMap((v) => encodeResult(v)), ...errors.map(encodeError)].map((p) => (typeof p === 'string' ? Buffer.from(p, 'latin1') : p)));
  const expected = [
    ...values.map((v) => ({ ok: true, value: Buffer.from(v).toString('hex') })),
    { ok: false, code: 'invalid_token', message: 'invalid token' },
    { ok: false, code: 'bad_frame', message: 'expected #<command>#<payload>#' },
  ];
  const render = (r: Reply) => (r.ok ? { ok: true, value: r.value.toString('hex') } : r);
  for (let trial = 0; trial < 60; trial++) {
    const cuts = trial === 0 ? Array.from({ length: 300 }, (_, i) => i + 1) : randomCuts(wire.length);
    const dec = new ReplyDecoder();
    const got: Reply[] = [];
    let prev = 0;
    for (const cut of [...cuts, wire.length]) {
      got.push(...dec.push(wire.subarray(prev, cut)));
      prev = cut;
    }
    t.same(got.map(render), expected, `replies decode (trial ${trial})`);
    t.equal(dec.pending, false, 'nothing left over');
  }
  t.same(encodeResult(Buffer.from('ok')).map(String), ['ok', '\n'], 'a safe value goes bare');
  t.same(encodeResult(Buffer.from('#x')).map(String), ['#ok:2#', '#x', '#\n'], 'a value starting with # is length-framed');
  t.same(encodeResult('gAAAAAB-token_', true), ['gAAAAAB-token_\n'], 'a value the caller knows is base64url goes bare unscanned');
  t.same(encodeResult(Buffer.from('c2VjcmV0'), true).map(String), ['c2VjcmV0', '\n'], 'as bytes too');
});

t.test('a long bare reply in many chunks comes back whole', async (t) => {
  const token = 'g'.repeat(1_400_000);
  const wire = Buffer.from(`${token}\n#er#invalid_token#invalid token#\n`, 'latin1');
  const dec = new ReplyDecoder();
  const got: Reply[] = [];
  for (let i = 0; i < wire.length; i += 65536) {
    got.push(...dec.push(wire.subarray(i, i + 65536)));
    if (i + 65536 < token.length) t.equal(dec.pending, true, 'pending until its line break');
  }
  t.equal(got.length, 2, 'two replies');
  t.ok(got[0]!.ok && got[0]!.value.toString('latin1') === token, 'the value intact');
  t.same(got[1], { ok: false, code: 'invalid_token', message: 'invalid token' }, 'and the reply after it');
  t.equal(dec.pending, false, 'nothing left over');
  const split = new ReplyDecoder();
  t.same(split.push(Buffer.from('#zz')), [], 'too short to judge');
  t.same(split.push(Buffer.from('zzzz')), [], 'no line break yet');
  t.throws(() => split.push(Buffer.from('z\n')), /malformed/, 'a broken reply split across chunks is refused at its line break');
});

t.test('reply decoder rejects a broken stream', async (t) => {
  t.throws(() => new ReplyDecoder().push(Buffer.from('#zz#\n')), /malformed/, 'unknown # reply');
  t.throws(() => new ReplyDecoder().push(Buffer.from('#ok:x#\n')), /malformed/, 'bad length');
  t.throws(() => new ReplyDecoder().push(Buffer.from('#ok:1#ab\n')), /malformed/, 'bad trailer');
  t.throws(() => new ReplyDecoder().push(Buffer.from('#er#nomessage\n')), /malformed/, 'bad error');
  t.throws(() => new ReplyDecoder().push(Buffer.from(`#ok:${'1'.repeat(30)}`)), /malformed/, 'runaway header');
});


t.test('every success reply goes through the one check: a string with a line break is framed too', async (t) => {
  t.same(encodeResult('plain'), ['plain\n'], 'a safe string goes bare');
  t.same(encodeResult('two\nlines'), ['#ok:9#two\nlines#\n'], 'a string with LF is length-framed');
  t.same(encodeResult('cr\r'), ['#ok:3#cr\r#\n'], 'a string with CR is length-framed');
  t.same(encodeResult('#x'), ['#ok:2##x#\n'], 'a string starting with # is length-framed');
  t.ok(isBare('gAAAA') && !isBare('a\nb') && !isBare(Buffer.from('#')), 'isBare takes strings and bytes');
  const dec = new ReplyDecoder();
  t.same(dec.push(Buffer.from(encodeResult('two\nlines').join(''), 'latin1')).map((r) => (r.ok ? r.value.toString() : r.code)), ['two\nlines'], 'and decodes back whole');
  t.equal(encodeError(new CryptError('bad_request', 'x')), '#er#bad_request#x#\n', 'an error frame');
});

t.test('the reply decoder bounds what it buffers', async (t) => {
  const small = new ReplyDecoder(1000);
  t.throws(() => small.push(Buffer.from('#ok:1001#')), { name: 'ReplyError', message: /exceeds the limit of 1000/ }, 'a length-framed reply over the limit is refused from its header');
  const streaming = new ReplyDecoder(1000);
  t.same(streaming.push(Buffer.alloc(600, 0x61)), [], 'a bare reply under the limit waits for its line break');
  t.throws(() => streaming.push(Buffer.alloc(600, 0x61)), { name: 'ReplyError', message: /longer than the limit of 1000 bytes without a line break/ }, 'a peer streaming without a line break is stopped at the limit');
  t.same(new ReplyDecoder(1000).push(Buffer.from(`${'a'.repeat(1000)}\n`)).length, 1, 'a reply at the limit is fine');
});

t.test('a bare line with a CR is not crypt: HTTP is recognised', async (t) => {
  const err = (() => {
    try {
      new ReplyDecoder().push(Buffer.from('HTTP/1.1 400 Bad Request\r\n'));
      return null;
    } catch (e) {
      return e as ReplyError;
    }
  })();
  t.ok(err instanceof ReplyError && err.http, 'an HTTP status line is refused as HTTP');
  t.throws(() => new ReplyDecoder().push(Buffer.from('SSH-2.0-OpenSSH_9.2\r\n')), { name: 'ReplyError', http: false }, 'another protocol is refused too');
});
