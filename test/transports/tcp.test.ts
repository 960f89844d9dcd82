import t from 'tap';
import net from 'node:net';
import { once } from 'node:events';
import { randomBytes } from 'node:crypto';
import { promises as fs, statSync } from 'node:fs';
import { start, raw, show, externalAddress, tempDir } from '../helpers/server.js';
import { decrypt } from '../../src/crypto/fernet.js';
import { join } from 'node:path';
import { python } from '../helpers/python.js';

t.test("the old tool's client works unchanged: connect, send, one read, close", async (t) => {
  const { port, server } = await start(t);
  const socket = net.connect(port, '127.0.0.1');
  socket.write('#en#hello world#\n');
  const [data] = (await once(socket, 'data')) as [Buffer];
  socket.destroy();
  const token = data.toString();
  t.match(token, /^gAAAAA[A-Za-z0-9_-]+={0,2}\n$/, 'one line: a token and LF');
  t.equal(decrypt(server.keyring.current.decrypting, token.trim()).plaintext.toString(), 'hello world', 'it decrypts to the message');
});

t.test('line form: # inside a message round-trips; CR LF works; last line without LF is answered', async (t) => {
  const { port } = await start(t);
  const s = await raw(port);
  s.send('#en#a#b#c#\r\n');
  const [tok] = show(await s.replies(1));
  s.send(`#de#${tok}#\n`);
  t.same(show(await s.replies(1)), ['a#b#c'], '#en#a#b#c# round-trips to a#b#c');
  s.socket.end(`#de#${tok}#`);
  t.same(show(await s.replies(1)), ['a#b#c'], 'a last request ended by end of stream is answered');
  t.ok((await s.closed).byServer, 'then the server closes: the server ended the connection');
});

t.test('binary-safe length form and #ok framing of unsafe results', async (t) => {
  const { port } = await start(t);
  const s = await raw(port);
  const msg = Buffer.from('#first\nsecond\r\n\0\xff', 'latin1');
  s.send(Buffer.concat([Buffer.from(`#en:${msg.length}#`), msg, Buffer.from('#\n')]));
  const [tok] = show(await s.replies(1));
  s.send(`#de#${tok}#\n`);
  const chunks: Buffer[] = [];
  s.socket.removeAllListeners('data');
  s.socket.on('data', (c: Buffer) => chunks.push(c));
  s.socket.end();
  await s.closed;
  t.equal(Buffer.concat(chunks).toString('latin1'), `#ok:${msg.length}#${msg.toString('latin1')}#\n`, 'a result with LF comes length-framed');
});

t.test('a 512 KiB message and one at the limit round-trip; one byte over is too_large', async (t) => {
  const { connect } = await start(t);
  const client = await connect();
  for (const size of [512 * 1024, 1024 * 1024]) {
    const m = randomBytes(size);
    t.ok((await client.decrypt(await client.encrypt(m))).equals(m), `${size} bytes round-trip`);
  }
  await t.rejects(client.encrypt(randomBytes(1024 * 1024 + 1)), { code: 'too_large' }, 'over the limit is too_large');
  t.equal((await client.decrypt(await client.encrypt('still here'))).toString(), 'still here', 'and the connection is still usable');
});

t.test('10,000 pipelined requests on one connection come back right and in order', async (t) => {
  const { port } = await start(t);
  const s = await raw(port);
  const n = 10_000;
  s.send(Array.from({ length: n }, (_, i) => `#en#message ${i}#\n`).join(''));
  const tokens = show(await s.replies(n));
  t.equal(tokens.length, n, 'all encrypt replies');
  s.send(tokens.map((tok) => `#de#${tok}#\n`).join(''));
  const plain = show(await s.replies(n));
  const wrong = plain.findIndex((p, i) => p !== `message ${i}`);
  t.equal(wrong, -1, 'every decrypt reply matches its request, in order');
  s.socket.destroy();
});

t.test('concurrent clients are all served', async (t) => {
  const { connect } = await start(t);
  const results = await Promise.all(Array.from({ length: 50 }, async (_, c) => {
    const client = await connect();
    for (let i = 0; i < 20; i++) {
      const m = `client ${c} message ${i}`;
      if ((await client.decrypt(await client.encrypt(m))).toString() !== m) return false;
    }
    return true;
  }));
  t.ok(results.every(Boolean), '50 clients x 20 round trips all correct');
});

t.test('a client that does not read stalls no one, and gets all its replies later', async (t) => {
  const { port, connect } = await start(t);
  const slow = net.connect(port, '127.0.0.1');
  await once(slow, 'connect');
  slow.pause();
  const line = `#en#${'x'.repeat(1000)}#\n`;
  const count = 20_000; // ~20 MB of requests, ~28 MB of replies: far more than socket buffers hold
  let written = 0;
  const writeMore = (): void => {
    while (written < count) {
      written++;
      if (!slow.write(line)) return void slow.once('drain', writeMore);
    }
  };
  writeMore();
  const other = await connect();
  for (let i = 0; i < 20; i++) t.equal((await other.decrypt(await other.encrypt(`m${i}`))).toString(), `m${i}`, `another client is served (${i})`);
  t.ok(written < count, 'the server stopped reading the slow client (backpressure reached it)');
  let lines = 0;
  slow.on('data', (c: Buffer) => {
    for (let i = c.indexOf(10); i !== -1; i = c.indexOf(10, i + 1)) lines++;
    if (lines === count) slow.end();
  });
  slow.resume();
  await once(slow, 'close');
  t.equal(lines, count, 'once it reads, every reply arrives');
});

t.test('bad input gets a clear error and the connection stays usable', async (t) => {
  const { port } = await start(t, { maxFrame: 64 });
  const s = await raw(port);
  const cases: Array<[string, string]> = [
    ['hello\n', '!bad_frame'],
    ['#en#no end\n', '!bad_frame'],
    ['#xx#1#\n', '!unknown_command'],
    ['#de#not-a-token#\n', '!invalid_token'],
    [`#en#${'a'.repeat(65)}#\n`, '!too_large'],
    [`#en:1000#${'a'.repeat(1000)}#\n`, '!too_large'],
    ['#gk#payload#\n', '!bad_request'],
    ['#de,ttl=x#t#\n', '!bad_request'],
    ['#en,ttl=5#t#\n', '!bad_request'],
  ];
  for (const [input, code] of cases) {
    s.send(input);
    s.send('#en#ok#\n');
    const [err, ok] = await s.replies(2);
    t.same(show([err!]), [code], `${JSON.stringify(input.slice(0, 20))} -> ${code}`);
    t.ok(ok?.ok, 'the next request is served');
  }
  s.socket.destroy();
});

t.test('a broken length form is answered, then the connection closes', async (t) => {
  const { port } = await start(t);
  const s = await raw(port);
  s.send('#en:3#abcd#\n#en#never#\n');
  const replies = await s.replies(2);
  t.same(show(replies), ['!bad_frame'], 'one error, nothing after it');
  t.ok((await s.closed).byServer, 'closed: the server ended the connection');
});

t.test('error replies never echo the payload', async (t) => {
  const { port } = await start(t, { maxFrame: 64 });
  const s = await raw(port);
  const secret = 'SUPERSECRETPAYLOAD';
  s.send(`#de#${secret}#\n#en#${secret.repeat(10)}#\n#xx#${secret}#\n${secret}\n#gk#${secret}#\n`);
  const replies = await s.replies(5);
  t.equal(replies.length, 5, 'five errors');
  for (const r of replies) t.notMatch(r.ok ? '' : r.message, secret, `${r.ok ? '' : r.code} does not echo`);
  s.socket.destroy();
});

t.test('a token made before a restart decrypts after it; the keyring is 0600', async (t) => {
  const keyring = join(tempDir(t), 'keyring.json');
  const first = await start(t, { keyring });
  const c1 = await first.connect();
  const token = await c1.encrypt('survives restarts');
  await c1.close();
  await first.server.close();
  t.equal(statSync(keyring).mode & 0o777, 0o600, 'keyring mode is 0600');
  t.match(first.logs.join(''), /"keyring":"[^"]+keyring\.json".*"msg":"created a new keyring: back it up/, 'the first start logs the keyring it created');
  const second = await start(t, { keyring });
  const c2 = await second.connect();
  t.equal((await c2.decrypt(token)).toString(), 'survives restarts', 'decrypts after the restart');
  t.match(second.logs.join(''), /"msg":"loaded keyring"/, 'the second start loads it');
});

t.test('Python decrypts an en token with the key from gk; the server decrypts a Python token', async (t) => {
  const { connect } = await start(t);
  const client = await connect();
  const key = await client.getKey();
  t.equal(key.length, 44, 'gk gives a 44-character key');
  const token = await client.encrypt('for python');
  const out = python<{ plain: string; token: string }>(
    `import sys, json
from cryptography.fernet import Fernet
d = json.load(sys.stdin)
f = Fernet(d["key"])
print(json.dumps({"plain": f.decrypt(d["token"].encode()).decode(), "token": f.encrypt(b"from python").decode()}))`,
    { key, token },
  );
  t.equal(out.plain, 'for python', 'python decrypts our token with the key from gk');
  t.equal((await client.decrypt(out.token)).toString(), 'from python', "the server decrypts python's token");
});

t.test('TTL on decrypt: #de,ttl=<seconds>#', async (t) => {
  const { port, server } = await start(t);
  const old = server.keyring.current.primary.encrypt(Buffer.from('old'), Math.floor(Date.now() / 1000) - 100);
  const s = await raw(port);
  s.send(`#de,ttl=1000#${old}#\n#de,ttl=10#${old}#\n#de#${old}#\n`);
  t.same(show(await s.replies(3)), ['old', '!invalid_token', 'old'], 'within ttl, too old, no ttl');
  s.socket.destroy();
});

t.test('gk is answered to loopback clients only (no tokens configured)', async (t) => {
  const address = externalAddress();
  const { port } = await start(t, { host: '0.0.0.0', insecure: true });
  const local = await raw(port, '127.0.0.1');
  local.send('#gk##\n');
  const [key] = await local.replies(1);
  t.ok(key?.ok && key.value.length === 44, 'loopback gets the key');
  local.socket.destroy();
  await t.test('from a non-loopback address', { skip: address ? false : 'no non-loopback interface on this machine' }, async (t) => {
    const remote = await raw(port, address);
    remote.send('#gk##\n#rk##\n#en#x#\n');
    const replies = await remote.replies(3);
    t.same(show(replies.slice(0, 2)), ['!forbidden', '!forbidden'], `from ${address}: gk and rk are forbidden`);
    t.match(replies[0]!.ok ? '' : replies[0]!.message, /loopback clients only until access tokens are configured/, 'and says why');
    t.ok(replies[2]?.ok, 'data operations still work');
    remote.socket.destroy();
  });
});

t.test('shutdown answers what was received, then closes; new connections are refused', async (t) => {
  const { port, server } = await start(t);
  const s = await raw(port);
  const n = 2000;
  s.send(Array.from({ length: n }, (_, i) => `#en#${i}#\n`).join(''));
  const first = await s.replies(1);
  const closing = server.close();
  const rest = await s.replies(n - 1);
  t.equal(first.length + rest.length, n, 'every request received before shutdown is answered');
  t.ok([...first, ...rest].every((r) => r.ok), 'all successfully');
  await s.closed;
  await closing;
  const refused = net.connect(port, '127.0.0.1');
  const [err] = (await once(refused, 'error')) as [NodeJS.ErrnoException];
  t.equal(err.code, 'ECONNREFUSED', 'the port is closed');
});

t.test('names from Object.prototype are unknown commands, with or without options or a length', async (t) => {
  const { port, logs } = await start(t);
  const s = await raw(port);
  const names = ['constructor', 'toString', 'valueOf', 'hasOwnProperty', '__proto__'];
  const lines = names.flatMap((n) => [`#${n}##\n`, `#${n},ttl=5#x#\n`, `#${n}:1#x#\n`]).filter((l) => !l.startsWith('#__proto__'));
  s.send(lines.join(''));
  const replies = await s.replies(lines.length);
  t.same(show(replies), lines.map(() => '!unknown_command'), 'every one is unknown_command');
  t.match(replies[0]!.ok ? '' : replies[0]!.message, /^unknown command constructor: commands are en, de/, 'with the list of commands');
  t.notMatch(logs.join(''), /"level":50/, 'and nothing is logged as an error');
  s.socket.destroy();
});

t.test('a web page or an HTTP client on the TCP port is closed at once, nothing runs, one log line', async (t) => {
  const { port, server, waitForLog } = await start(t);
  const before = server.keyring.current.primary.id;
  const s = await raw(port);
  s.send('POST / HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nContent-Type: text/plain\r\nContent-Length: 8\r\n\r\n\n#rk##\n');
  const replies = await s.replies(1);
  t.same(show(replies), ['!bad_frame'], 'one error');
  t.match(replies[0]!.ok ? '' : replies[0]!.message, /this is crypt's TCP port.*HTTP is served on --http-port/, 'saying where HTTP is');
  t.ok((await s.closed).byServer, 'and the connection is closed: the server ended the connection');
  t.equal(server.keyring.current.primary.id, before, 'the #rk## in the body never ran');
  const second = await raw(port);
  second.send('GET / HTTP/1.1\r\n\r\n');
  await second.closed;
  const line = await waitForLog(/"msg":"closed connections that spoke HTTP to the TCP port/);
  t.match(line, /"level":40/, 'logged as a warning, as a probable cross-protocol attack');
});

t.test('a key rotation is a barrier: requests behind it see the new key', async (t) => {
  const { port, server } = await start(t);
  const before = server.keyring.current.primary.export();
  const s = await raw(port);
  s.send('#rk##\n#gk##\n#ki##\n');
  const [rk, gk, ki] = show(await s.replies(3));
  const id = (JSON.parse(rk!) as { id: string }).id;
  t.not(gk, before, 'gk after rk gives a new key');
  t.equal(server.keyring.current.primary.export(), gk, 'the new primary');
  t.equal((JSON.parse(ki!) as { keys: Array<{ id: string; state: string }> }).keys[0]!.id, id, 'ki after rk names it the primary');
  s.socket.destroy();
});

t.test('deadlines: a frame must arrive whole in time; only complete requests keep a connection alive', async (t) => {
  const { port } = await start(t, { frameTimeout: 0.3, idleTimeout: 0.6 });
  const slow = await raw(port);
  slow.send('#en#never fini');
  t.same(show(await slow.replies(1)), ['!timeout'], 'an unfinished frame gets timeout');
  t.ok((await slow.closed).byServer, 'and is closed: the server ended the connection');
  const trickle = await raw(port);
  const drip = setInterval(() => trickle.send('\n'), 100);
  t.teardown(() => clearInterval(drip));
  const [idle] = await trickle.replies(1);
  clearInterval(drip);
  t.same(show([idle!]), ['!timeout'], 'blank lines are not requests: the idle deadline passes anyway');
  t.match(idle!.ok ? '' : idle!.message, /idle/, 'as idle');
  await trickle.closed;
});

t.test('with access tokens, a connection must authenticate within --auth-timeout', async (t) => {
  const dir = tempDir(t);
  const tokens = join(dir, 'tokens');
  await fs.writeFile(tokens, 'user user-token-0123456789abcdef\n', { mode: 0o600 });
  const { port } = await start(t, { tokensFile: tokens, authTimeout: 0.3 });
  const lazy = await raw(port);
  const [r] = await lazy.replies(1);
  t.same(show([r!]), ['!unauthorized'], 'a silent unauthenticated connection is refused');
  t.match(r!.ok ? '' : r!.message, /not authenticated within 0.3 s/, 'saying why');
  await lazy.closed;
  const good = await raw(port);
  good.send('#au#user-token-0123456789abcdef#\n');
  t.same(show(await good.replies(1)), ['ok user'], 'an authenticated one');
  good.send('#en#x#\n');
  t.equal((await good.replies(1)).length, 1, 'stays');
  good.socket.destroy();
});

t.test('--max-per-address: one address cannot take every slot', async (t) => {
  const { port } = await start(t, { maxPerAddress: 2 });
  const a = await raw(port);
  const b = await raw(port);
  const c = await raw(port);
  const [busy] = await c.replies(1);
  t.same(show([busy!]), ['!busy'], 'the third from one address gets busy');
  t.match(busy!.ok ? '' : busy!.message, /too many connections from this address/, 'saying why');
  await c.closed;
  a.socket.destroy();
  await a.closed;
  const d = await raw(port);
  d.send('#en#x#\n');
  t.equal((await d.replies(1)).length, 1, 'a slot freed is usable again');
  b.socket.destroy();
  d.socket.destroy();
});
