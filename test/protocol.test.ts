import t from 'tap';
import type { Test } from 'tap';
import { randomBytes } from 'node:crypto';
import { FrameDecoder, ReplyDecoder, encodeError, encodeRequest, encodeResult, isFault, parseHead, MAX_HEAD } from '../src/protocol.js';
import type { Decoded, Reply } from '../src/protocol.js';
import { CryptError } from '../src/errors.js';

type Item = string; // a compact, comparable rendering of a decoded item
const show = (d: Decoded): Item =>
  isFault(d) ? `!${d.error.code}${d.fatal ? ' fatal' : ''}` : `${d.command}${d.options ? JSON.stringify(d.options) : ''}:${d.payload.toString('latin1')}`;

/** Decodes input split at the given cut points, then ends the stream. */
function decode(input: Buffer, cuts: number[], max = 100): Item[] {
  const dec = new FrameDecoder(max);
  const out: Item[] = [];
  let prev = 0;
  for (const cut of [...cuts, input.length]) {
    out.push(...dec.push(input.subarray(prev, cut)).map(show));
    prev = cut;
  }
  out.push(...dec.end().map(show));
  return out;
}

function randomCuts(n: number): number[] {
  const cuts = new Set<number>();
  const k = Math.floor(Math.random() * Math.min(n, 12));
  for (let i = 0; i < k; i++) cuts.add(1 + Math.floor(Math.random() * Math.max(1, n - 1)));
  return [...cuts].sort((a, b) => a - b);
}

/** Checks one case whole, byte by byte and in random splits. */
function check(t: Test, name: string, input: string | Buffer, expected: Item[], max = 100): void {
  const buf = typeof input === 'string' ? Buffer.from(input, 'latin1') : input;
  t.same(decode(buf, [], max), expected, `${name}: whole`);
  t.same(decode(buf, Array.from({ length: Math.max(0, buf.length - 1) }, (_, i) => i + 1), max), expected, `${name}: byte by byte`);
  for (let i = 0; i < 50; i++) {
    const cuts = randomCuts(buf.length);
    const got = decode(buf, cuts, max);
    if (JSON.stringify(got) !== JSON.stringify(expected)) {
      t.same(got, expected, `${name}: split at ${cuts.join(',')}`);
      return;
    }
  }
  t.pass(`${name}: 50 random splits agree`);
}

t.test('line form', async (t) => {
  check(t, 'one request', '#en#hello#\n', ['en:hello']);
  check(t, 'CR LF', '#en#hello#\r\n', ['en:hello']);
  check(t, 'payload with #', '#en#a#b#c#\n', ['en:a#b#c']);
  check(t, 'empty payload', '#gk##\n', ['gk:']);
  check(t, 'payload of #', '#en####\n', ['en:##']);
  check(t, 'CR inside the payload', '#en#a\rb#\n', ['en:a\rb']);
  check(t, 'options', '#de,ttl=60#tok#\n', ['de{"ttl":"60"}:tok']);
  check(t, 'pipelined', '#en#a#\n#de#b#\n#gk##\n', ['en:a', 'de:b', 'gk:']);
  check(t, 'blank lines between requests are skipped', '\n\r\n#en#a#\n\n#en#b#\n', ['en:a', 'en:b']);
  check(t, 'last request ended by end of stream', '#en#a#\n#en#last#', ['en:a', 'en:last']);
  check(t, 'binary payload except LF', Buffer.from([0x23, 0x65, 0x6e, 0x23, 0, 0xff, 0x80, 0x23, 0x0a]), ['en:\u0000\u00ff\u0080']);
});

t.test('length form', async (t) => {
  check(t, 'one request', '#en:5#hello#\n', ['en:hello']);
  check(t, 'binary with LF and #', '#en:7#a\n#\r\n#b#\n', ['en:a\n#\r\n#b']);
  check(t, 'zero length', '#en:0##\n', ['en:']);
  check(t, 'CR LF after', '#en:2#hi#\r\n#gk##\n', ['en:hi', 'gk:']);
  check(t, 'options', '#de,ttl=5:3#abc#\n', ['de{"ttl":"5"}:abc']);
  check(t, 'mixed with line form', '#en:3#a\nb#\n#en#c#\n', ['en:a\nb', 'en:c']);
  check(t, 'ended by end of stream after #', '#en:2#hi#', ['en:hi']);
  check(t, 'ended after CR', '#en:2#hi#\r', ['en:hi']);
});

t.test('bad lines are answered and skipped', async (t) => {
  check(t, 'no leading #', 'hello\n#en#a#\n', ['!bad_frame', 'en:a']);
  check(t, 'no closing #', '#en#hello\n#en#a#\n', ['!bad_frame', 'en:a']);
  check(t, 'only a command', '#gk#\n#en#a#\n', ['!bad_frame', 'en:a']);
  check(t, 'no second #', '#gk\n#en#a#\n', ['!bad_frame', 'en:a']);
  check(t, 'trailing text after the last #', '#en#a# \n#en#b#\n', ['!bad_frame', 'en:b']);
  check(t, 'bad command characters', '#e n#a#\n#en#b#\n', ['!bad_frame', 'en:b']);
  check(t, 'bad options', '#de,TTL#a#\n#en#b#\n', ['!bad_frame', 'en:b']);
  check(t, 'long head', `#${'x'.repeat(MAX_HEAD + 5)}#a#\n#en#b#\n`, ['!bad_frame', 'en:b']);
  check(t, 'truncated head at end of stream', '#en#a#\n#e', ['en:a', '!bad_frame']);
  check(t, 'unfinished line at end of stream', '#en#abc', ['!bad_frame']);
});

t.test('broken length forms close the stream', async (t) => {
  check(t, 'missing # after the bytes', '#en:2#hix\n#en#a#\n', ['!bad_frame fatal']);
  check(t, 'missing LF', '#en:2#hi##en#a#\n', ['!bad_frame fatal']);
  check(t, 'CR then junk', '#en:2#hi#\rX', ['!bad_frame fatal']);
  check(t, 'non-digit length', '#en:2x#hi#\n', ['!bad_frame fatal']);
  check(t, 'empty length', '#en:#hi#\n', ['!bad_frame fatal']);
  check(t, 'too many digits', '#en:1234567890123456#', ['!bad_frame fatal']);
  check(t, 'cut short by end of stream', '#en:10#abc', ['!bad_frame']);
  check(t, 'cut before # by end of stream', '#en:3#abc', ['!bad_frame']);
});

t.test('size limit: answered early, never buffered whole, stream stays usable', async (t) => {
  check(t, 'line at the limit', `#en#${'a'.repeat(10)}#\n`, [`en:${'a'.repeat(10)}`], 10);
  check(t, 'line over the limit', `#en#${'a'.repeat(11)}#\n#en#b#\n`, ['!too_large', 'en:b'], 10);
  check(t, 'long line over the limit', `#en#${'a'.repeat(500)}#\n#en#b#\n`, ['!too_large', 'en:b'], 10);
  check(t, 'length form over the limit', `#en:11#${'a'.repeat(11)}#\n#en#b#\n`, ['!too_large', 'en:b'], 10);
  check(t, 'length form with LF inside, over the limit', `#en:20#${'a\n'.repeat(10)}#\n#en#b#\n`, ['!too_large', 'en:b'], 10);

  const dec = new FrameDecoder(1000);
  const first = dec.push(Buffer.from('#en:1000000#'));
  t.same(first.map(show), ['!too_large'], 'an oversized length form is answered from its header alone');
  const line = new FrameDecoder(1000);
  t.same(line.push(Buffer.from('#en#')), [], 'nothing yet');
  t.same(line.push(Buffer.alloc(600, 0x61)), [], 'under the limit so far');
  t.same(line.push(Buffer.alloc(600, 0x61)).map(show), ['!too_large'], 'a line is answered as soon as it passes the limit');
  t.same(line.push(Buffer.alloc(100000, 0x61)), [], 'the rest of the line is skipped');
  t.same(line.push(Buffer.from('#\n#en#ok#\n')).map(show), ['en:ok'], 'and the next line is served');
});

t.test('a large payload in many chunks is joined once and exactly', async (t) => {
  const payload = randomBytes(1 << 20);
  const input = encodeRequest('en', payload);
  const dec = new FrameDecoder(1 << 20);
  const got: Decoded[] = [];
  for (let i = 0; i < input.length; i += 65536) got.push(...dec.push(input.subarray(i, i + 65536)));
  t.equal(got.length, 1, 'one frame');
  t.ok(!isFault(got[0]!) && got[0]!.payload.equals(payload), 'payload intact');
});

t.test('parseHead', async (t) => {
  t.same(parseHead('en'), { command: 'en', options: null }, 'bare command');
  t.same(parseHead('de,ttl=60,x=a.b-c'), { command: 'de', options: { ttl: '60', x: 'a.b-c' } }, 'options');
  for (const bad of ['', 'e n', 'de,', 'de,ttl', 'de,=1', 'de,Ttl=1', 'de,ttl=1=2', 'x'.repeat(17)]) t.equal(parseHead(bad), null, `rejects ${JSON.stringify(bad)}`);
});

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

t.test('requests encode to the length form', async (t) => {
  t.equal(encodeRequest('de', Buffer.from('tok'), { ttl: 60 }).toString(), '#de,ttl=60:3#tok#\n', 'with options');
  t.equal(encodeRequest('gk', Buffer.alloc(0)).toString(), '#gk:0##\n', 'empty');
});

t.test('limits can differ per command, and the error names the command and its limit', async (t) => {
  const dec = new FrameDecoder((command) => (command === 'en' ? 4 : 8));
  const out = dec.push(Buffer.from('#en#12345#\n#de#12345#\n#de:9#123456789#\n#en:5#12345#\n'));
  t.same(out.map(show), ['!too_large', 'de:12345', '!too_large', '!too_large'], 'en stops at 4 bytes, de at 8');
  t.same(out.filter(isFault).map((f) => f.error.message), ['en payload exceeds the limit of 4 bytes', 'de payload exceeds the limit of 8 bytes', 'en payload exceeds the limit of 4 bytes'], 'each names its command and limit');
});
