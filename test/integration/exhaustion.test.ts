import t from 'tap';
import net from 'node:net';
import { once } from 'node:events';
import { start, tempDir } from '../helpers/server.js';
import { promises as fs } from 'node:fs';
import { join } from 'node:path';
import { encodeRequest } from '../../src/wire/frames.js';
import { ReplyDecoder } from '../../src/wire/replies.js';

const MiB = 1024 * 1024;


/**
 * Resolves once the budget's use meets a condition, checked once per turn of the event loop (the
 * charges follow socket reads, which have no event of their own here); rejects after 10 s.
 */
function budgetReaches(budget: { used: number }, ok: (used: number) => boolean, what: string): Promise<void> {
  const deadline = Date.now() + 10_000;
  return new Promise((resolve, reject) => {
    const check = (): void => {
      if (ok(budget.used)) return resolve();
      if (Date.now() > deadline) return reject(new Error(`the budget never reached ${what} within 10 s (used: ${budget.used})`));
      setImmediate(check);
    };
    check();
  });
}

t.test('TCP: connections pipelining large frames without reading stay within the memory budget', async (t) => {
  const budget = 8 * MiB;
  const { port, server } = await start(t, { memoryBudget: budget, maxFrame: MiB, frameTimeout: 0 });
  const frame = encodeRequest('en', Buffer.alloc(MiB - 100, 0x61));
  const perConnection = 6;
  const sockets = await Promise.all(Array.from({ length: 12 }, async () => {
    const s = net.connect(port, '127.0.0.1');
    await once(s, 'connect');
    s.pause();
    s.on('error', () => undefined);
    for (let i = 0; i < perConnection; i++) s.write(frame);
    return s;
  }));
  // everyone writes 6 MiB and reads nothing: the server must stop reading, not buffer 72 MiB
  const seen = await Promise.all(sockets.map(async (s) => {
    const decoder = new ReplyDecoder();
    const codes: string[] = [];
    s.on('data', (c: Buffer) => {
      for (const r of decoder.push(c)) codes.push(r.ok ? 'ok' : r.code);
      if (codes.length === perConnection) s.end();
    });
    s.resume();
    await new Promise((resolve) => s.once('close', resolve));
    return codes;
  }));
  const served = seen.flat().filter((c) => c === 'ok').length;
  t.ok(served > 0, `${served} requests were served`);
  t.ok(seen.every((codes) => codes.length === perConnection ? codes.every((c) => c === 'ok' || c === 'busy') : codes.at(-1) === 'busy'), 'every connection got all its answers, or answers up to a busy before it was closed');
  t.ok(seen.some((codes) => codes.includes('busy')), 'some were told the server is busy');
  const peak = server.dispatcher.budget.peak;
  t.ok(peak <= budget + 12 * 2 * MiB, `peak charged ${(peak / MiB).toFixed(1)} MiB: the budget, plus at most one frame in progress per connection`);
  await server.close();
  t.equal(server.dispatcher.budget.used, 0, 'and all of it is given back once the connections are gone');
});

t.test('HTTP: concurrent large bodies past the budget get 503 busy; the rest are served', async (t) => {
  const budget = 8 * MiB;
  const { server } = await start(t, { memoryBudget: budget, maxFrame: MiB, http: true, httpPort: 0, rateLimit: 0 });
  const base = `http://127.0.0.1:${server.http!.address.port}`;
  const body = JSON.stringify({ batch: [{ plaintext: 'a'.repeat(MiB - 100) }] });
  const statuses = await Promise.all(Array.from({ length: 40 }, () => fetch(`${base}/encrypt`, { method: 'POST', body, headers: { 'content-type': 'application/json' } }).then((r) => r.status, () => 0)));
  t.ok(statuses.filter((s) => s === 200).length >= 1, `${statuses.filter((s) => s === 200).length} served`);
  t.ok(statuses.filter((s) => s === 503).length >= 1, `${statuses.filter((s) => s === 503).length} refused with 503 busy`);
  t.ok(statuses.every((s) => s === 200 || s === 503), 'nothing else');
  t.ok(server.dispatcher.budget.peak <= budget + 3 * 2 * MiB, `peak charged ${(server.dispatcher.budget.peak / MiB).toFixed(1)} MiB`);
  t.equal(server.dispatcher.budget.used, 0, 'all given back');
});

t.test('the budget must leave room for requests in flight', async (t) => {
  const { serverConfig } = await import('../../src/ops/config.js');
  t.throws(() => serverConfig({ flags: { 'memory-budget': String(4 * MiB), 'max-frame': String(MiB) }, env: {}, dotenv: {} }), { message: /--memory-budget \(4194304\) must be at least 8 times --max-frame/ }, 'a budget under 8 frames is refused');
});

t.test('HTTP: a caller without the role is refused before its body is read, and a body is charged as it arrives', async (t) => {
  const dir = tempDir(t);
  await fs.writeFile(join(dir, 'tokens'), 'user user-token-0123456789abcdef\n', { mode: 0o600 });
  const { server } = await start(t, { http: true, httpPort: 0, tokensFile: join(dir, 'tokens'), maxFrame: MiB });
  const port = server.http!.address.port;
  const head = (auth: string) => `POST /encrypt HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\nContent-Length: 1000000\r\n${auth}\r\n`;
  const answer = (auth: string) => new Promise<string>((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    let text = '';
    s.on('data', (c: Buffer) => {
      text += c.toString();
      if (text.includes('\r\n\r\n')) {
        s.destroy();
        resolve(text);
      }
    });
    s.on('error', () => undefined);
    s.write(head(auth));
  });
  t.match(await answer(''), /^HTTP\/1\.1 401 /, 'no token: 401 with the body never sent');
  const used = server.dispatcher.budget.used;
  t.equal(used, 0, 'and nothing is charged for it');
  const s = net.connect(port, '127.0.0.1');
  await once(s, 'connect');
  s.write(head('Authorization: Bearer user-token-0123456789abcdef\r\n') + 'a'.repeat(1000));
  await budgetReaches(server.dispatcher.budget, (used) => used > 0, 'a charge for the body');
  const charged = server.dispatcher.budget.used;
  t.ok(charged <= 3 * 64 * 1024, `a body that has sent 1,000 of 1,000,000 bytes is charged for what arrived (${charged} bytes), not for its Content-Length`);
  s.destroy();
});

t.test('HTTP: a request alone is served whatever its size; one that cannot fit beside others is refused before its body is read', async (t) => {
  const budget = 8 * MiB;
  const { server } = await start(t, { memoryBudget: budget, maxFrame: MiB, http: true, httpPort: 0, rateLimit: 0 });
  const port = server.http!.address.port;
  const body = JSON.stringify({ batch: [{ plaintext: 'a'.repeat(MiB) }] });
  const alone = await fetch(`http://127.0.0.1:${port}/encrypt`, { method: 'POST', body, headers: { 'content-type': 'application/json' } });
  const json = (await alone.json()) as { batch: Array<{ token?: string }> };
  t.equal(alone.status, 200, 'a JSON body of a largest message (8 times its size is the whole budget) is served when nothing else holds any');
  t.ok(typeof json.batch[0]?.token === 'string', 'with its token');
  t.equal(server.dispatcher.budget.used, 0, 'and its charge is given back');

  // two requests hold 5 of the 8 MiB: their bodies are on their way (each is charged 5 times, up to half the budget)
  const holders = await Promise.all([900_000, 200_000].map(async (sent) => {
    const s = net.connect(port, '127.0.0.1');
    s.on('error', () => undefined);
    await once(s, 'connect');
    s.write(`POST /encrypt HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\nContent-Length: 1000000\r\n\r\n${'a'.repeat(sent)}`);
    return s;
  }));
  await budgetReaches(server.dispatcher.budget, (used) => used >= 5_000_000, '5 MB charged to the two holders');
  t.ok(!server.dispatcher.budget.exhausted, 'the budget is not used up');
  const answer = await new Promise<string>((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    let text = '';
    const deadline = setTimeout(() => {
      s.destroy();
      resolve(text || 'no answer within 10 s');
    }, 10_000);
    s.on('data', (c: Buffer) => {
      text += c.toString();
      if (text.includes('\r\n\r\n')) {
        clearTimeout(deadline);
        s.destroy();
        resolve(text);
      }
    });
    s.on('error', () => undefined);
    // headers only: the answer must come without any of the body
    s.write(`POST /encrypt HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n`);
  });
  t.match(answer, /^HTTP\/1\.1 503 /, 'a body whose declared length would not fit beside it: 503 before any of it is sent');
  for (const h of holders) h.destroy();
  await Promise.all(holders.map((h) => once(h, 'close')));
  await budgetReaches(server.dispatcher.budget, (used) => used === 0, 'the holders\' charges given back');
  t.equal(server.dispatcher.budget.used, 0, 'the holders\' charges are given back once they are gone');
});
