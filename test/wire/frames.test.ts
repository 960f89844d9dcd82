import t from 'tap';
import type { Test } from 'tap';
import { randomBytes } from 'node:crypto';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { Collector, FrameDecoder, HTTP_ON_TCP, encodeRequest, isFault, isStreamPart, parseHead, MAX_HEAD } from '../../src/wire/frames.js';
import type { Decoded } from '../../src/wire/frames.js';

type Item = string; // a compact, comparable rendering of a decoded item
const show = (d: Decoded): Item =>
  isFault(d)
    ? `!${d.error.code}${d.fatal ? ' fatal' : ''}${d.http ? ' http' : ''}`
    : isStreamPart(d)
      ? d.stream === 'start' ? `<${d.command}:${d.length}` : d.stream === 'data' ? `~${d.data.toString('latin1')}` : '>'
      : `${d.command}${d.options ? JSON.stringify(Object.fromEntries(d.options)) : ''}:${d.payload.toString('latin1')}`;

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
  const disagreeing = Array.from({ length: 50 }, () => randomCuts(buf.length)).filter((cuts) => JSON.stringify(decode(buf, cuts, max)) !== JSON.stringify(expected));
  t.same(disagreeing, [], `${name}: 50 random splits agree`);
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
  check(t, 'a word without a line break at end of stream', 'hello', ['!bad_frame']);
  check(t, 'a header-like word that is not HTTP', 'note: hi\n#en#a#\n', ['!bad_frame', 'en:a']);
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
  t.ok(!isFault(got[0]!) && !isStreamPart(got[0]!) && got[0]!.payload.equals(payload), 'payload intact');
});

t.test('parseHead', async (t) => {
  t.same(parseHead('en'), { command: 'en', options: null }, 'bare command');
  const options = (head: string) => Object.fromEntries(parseHead(head)?.options ?? []);
  t.same(options('de,ttl=60,x=a.b-c'), { ttl: '60', x: 'a.b-c' }, 'options');
  t.same(options('en,key=users,context=dGVuYW50LTQy,pad=dA=='), { key: 'users', context: 'dGVuYW50LTQy', pad: 'dA==' }, 'base64url values, padded or not (the dispatcher checks each value)');
  t.ok(parseHead('de,constructor=1,__proto__=2') === null && Object.hasOwn(options('de,constructor=1,valueof=2'), 'constructor'), 'options are a Map: prototype names are just names, and no name starts with _');
  t.equal(parseHead('en,key=billing'), parseHead('en,key=billing'), 'a head seen again is the same parsed head (cached)');
  for (let i = 0; i < 2000; i++) parseHead(`en,key=k${i}`);
  t.same(options('en,key=billing'), { key: 'billing' }, 'the cache is bounded and a head still parses after it was emptied');
  for (const bad of ['', 'e n', 'de,', 'de,ttl', 'de,=1', 'de,Ttl=1', 'de,ttl=1,ttl=2', 'de,ttl=a/b', 'de,ttl=a+b', 'x'.repeat(17)]) t.equal(parseHead(bad), null, `rejects ${JSON.stringify(bad)}`);
});

t.test('requests encode to the length form', async (t) => {
  t.equal(encodeRequest('de', Buffer.from('tok'), { ttl: 60 }).toString(), '#de,ttl=60:3#tok#\n', 'with options');
  t.equal(encodeRequest('gk', Buffer.alloc(0)).toString(), '#gk:0##\n', 'empty');
  t.equal(encodeRequest('en', Buffer.from('m'), { key: 'billing', context: undefined, exportable: true }).toString(), '#en,key=billing,exportable=true:1#m#\n', 'undefined options are left out, booleans spelled');
  for (const bad of ['a#b', 'a,b', 'a:b', 'a b', 'a\n']) t.throws(() => encodeRequest('en', Buffer.from('m'), { key: bad }), RangeError, `a value ${JSON.stringify(bad)} can't end the head or add an option`);
});

t.test('limits can differ per command, and the error names the command and its limit', async (t) => {
  const dec = new FrameDecoder((command) => (command === 'en' ? 4 : 8));
  const out = dec.push(Buffer.from('#en#12345#\n#de#12345#\n#de:9#123456789#\n#en:5#12345#\n'));
  t.same(out.map(show), ['!too_large', 'de:12345', '!too_large', '!too_large'], 'en stops at 4 bytes, de at 8');
  t.same(out.filter(isFault).map((f) => f.error.message), ['en payload exceeds the limit of 4 bytes', 'de payload exceeds the limit of 8 bytes', 'en payload exceeds the limit of 4 bytes'], 'each names its command and limit');
});

t.test('a line that looks like HTTP closes the stream: nothing after it is decoded', async (t) => {
  const browser = 'POST / HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nContent-Type: text/plain\r\nContent-Length: 8\r\n\r\n\n#rk##\n';
  check(t, "a web page's cross-protocol POST", browser, ['!bad_frame fatal http']);
  check(t, 'a header line after a request', '#en#a#\nHost: evil.example\n#rk##\n', ['en:a', '!bad_frame fatal http']);
  check(t, 'Origin header', 'origin: http://evil.example\n#gk##\n', ['!bad_frame fatal http']);
  for (const line of ['GET / HTTP/1.1', 'PUT /x HTTP/1.0', 'HEAD / HTTP/1.1', 'OPTIONS * HTTP/1.1', 'HTTP/1.1 200 OK', 'PRI * HTTP/2.0']) {
    check(t, line, `${line}\r\n#rk##\n`, ['!bad_frame fatal http']);
  }
  const [f] = new FrameDecoder(100).push(Buffer.from('GET / HTTP/1.1\r\n'));
  t.ok(f && isFault(f) && f.error.message === HTTP_ON_TCP && f.error.close, 'the fault says where HTTP is, and asks for a close');
});

t.test('a frame arriving one byte per chunk costs its bytes, not an object per chunk', async (t) => {
  setFlagsFromString('--expose-gc');
  const gc = runInNewContext('gc') as () => void;
  const n = 200_000;
  const dec = new FrameDecoder(n);
  t.equal(dec.pending, false, 'nothing pending at first');
  dec.push(Buffer.from('#en#'));
  gc();
  const before = process.memoryUsage().heapUsed;
  for (let i = 0; i < n; i++) {
    const one = Buffer.alloc(1, 0x61);
    if (dec.push(one).length !== 0) t.fail('nothing completes early');
  }
  gc();
  const grown = process.memoryUsage().heapUsed - before;
  t.ok(dec.pending, 'a frame is pending');
  t.ok(grown < 8 * 1024 * 1024, `200,000 one-byte chunks held in ${(grown / 1048576).toFixed(1)} MiB of heap (one object each would be 30 MiB or more)`);
  const [frame] = dec.push(Buffer.from('#\n'));
  t.ok(frame && !isFault(frame) && !isStreamPart(frame) && frame.payload.length === n && frame.payload.every((b) => b === 0x61), 'and the frame comes out whole');
  t.equal(dec.pending, false, 'nothing pending after it');
});

t.test('the collector gives back the bytes as they came, whatever the parts, and keeps large parts as they are', async (t) => {
  let seed = 7;
  const rnd = (n: number): number => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    return seed % n;
  };
  let bad = 0;
  for (let round = 0; round < 400; round++) {
    const total = rnd(300_000);
    const data = randomBytes(total);
    const cap = rnd(2) === 0 ? total : total + rnd(1000);
    const c = new Collector();
    for (let at = 0; at < total; ) {
      const kind = rnd(3);
      const n = Math.min(total - at, 1 + (kind === 0 ? rnd(16) : kind === 1 ? rnd(6000) : rnd(70_000)));
      c.add(data.subarray(at, at + n), cap);
      at += n;
      if (c.size !== at) bad++;
    }
    if (!c.take().equals(data) || c.size !== 0 || c.take().length !== 0) bad++;
  }
  t.equal(bad, 0, '400 random splits (1 byte to 70 KB parts) come back whole, and the collector resets');
  const c = new Collector();
  const one = Buffer.alloc(64 * 1024, 1);
  c.add(one, 1 << 20);
  t.equal(c.take(), one, 'one part is given back as it is, not copied');
  const parts = [Buffer.alloc(64 * 1024, 1), Buffer.alloc(64 * 1024, 2), Buffer.alloc(10, 3)];
  for (const p of parts) c.add(p, 1 << 20);
  parts[0]!.fill(9);
  const joined = c.take();
  t.equal(joined[0], 9, 'a large part is kept as a view until take(), not copied as it arrives');
  t.equal(joined.length, 128 * 1024 + 10, 'and take() joins them all');
});

t.test('stream commands: the length form only, their bytes handed on as they arrive, in any split', async (t) => {
  const isStream = (c: string) => c === 'se' || c === 'sd';
  const input = Buffer.from('#en#a#\n#se:10#0123456789#\n#se#no#\n#en#b#\n#sd,context=eA:3#xyz#\n');
  for (const cuts of [[], [1, 2, 3, 9, 10, 11, 14, 15, 20, 25, 26], Array.from({ length: input.length }, (_, i) => i)]) {
    const dec = new FrameDecoder(100, isStream);
    const items: Decoded[] = [];
    let at = 0;
    for (const cut of [...cuts, input.length]) {
      items.push(...dec.push(input.subarray(at, cut)));
      at = cut;
    }
    items.push(...dec.end());
    const shown = items.map(show);
    const joined: Item[] = [];
    for (const s of shown) {
      const last = joined.at(-1);
      if (s.startsWith('~') && last?.startsWith('~')) joined[joined.length - 1] = last + s.slice(1);
      else joined.push(s);
    }
    t.same(joined, ['en:a', '<se:10', '~0123456789', '>', '!bad_frame', 'en:b', '<sd:3', '~xyz', '>'], `split at ${cuts.length} points: start, data, end; the line form refused`);
  }
  const big = new FrameDecoder(1000, isStream);
  t.same(big.push(Buffer.from('#se:5000#')).map(show), ['!too_large'], 'past the stream limit: too_large from the head');
  const cut = new FrameDecoder(100, isStream);
  cut.push(Buffer.from('#se:10#0123'));
  t.equal(cut.streaming, true, 'streaming while the bytes arrive');
  t.same(cut.end().map(show), ['!bad_frame'], 'a stream cut short is a fault');
});
