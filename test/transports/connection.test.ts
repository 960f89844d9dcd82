import t from 'tap';
import { EventEmitter } from 'node:events';
import type { Socket } from 'node:net';
import { Connection, MAX_QUEUED } from '../../src/transports/tcp/connection.js';
import type { Dispatcher } from '../../src/core/dispatcher.js';
import { CryptError } from '../../src/core/errors.js';
import { MemoryBudget } from '../../src/core/budget.js';
import { createLogger } from '../../src/ops/log.js';
import { ReplyDecoder } from '../../src/wire/replies.js';

/** A socket the test drives: data goes in by push(), writes are collected, pause() is honoured. */
class FakeSocket extends EventEmitter {
  remoteAddress = '127.0.0.1';
  written: Buffer[] = [];
  writableNeedDrain = false;
  paused = false;
  ended = false;
  destroyed = false;
  /** Bytes after which writes report a full buffer (a client that stopped reading). */
  capacity = Infinity;
  #size = 0;

  /** Bytes written and not yet read by the client. */
  get writableLength(): number {
    return this.#size;
  }

  write(data: string | Buffer): boolean {
    const b = typeof data === 'string' ? Buffer.from(data, 'latin1') : Buffer.from(data);
    this.written.push(b);
    this.#size += b.length;
    if (this.#size >= this.capacity) this.writableNeedDrain = true;
    return !this.writableNeedDrain;
  }
  cork(): void {}
  uncork(): void {}
  pause(): this {
    this.paused = true;
    return this;
  }
  resume(): this {
    this.paused = false;
    return this;
  }
  end(): void {
    this.ended = true;
  }
  destroy(): void {
    this.destroyed = true;
  }
  setTimeout(): void {}
  /** Emits a chunk as a socket would: only while not paused. */
  push(chunk: string): boolean {
    if (this.paused) return false;
    this.emit('data', Buffer.from(chunk, 'latin1'));
    return true;
  }
  /** The client reads everything: the buffer empties and 'drain' fires. */
  drain(): void {
    this.#size = 0;
    this.writableNeedDrain = false;
    this.emit('drain');
  }
  replies(): string[] {
    return new ReplyDecoder().push(Buffer.concat(this.written)).map((r) => (r.ok ? r.value.toString() : `!${r.code}`));
  }
}

/** A dispatcher that answers `en` with its payload, except `slow` ones, which wait for release(). */
function fakeDispatcher() {
  const calls: string[] = [];
  const waiting: Array<() => void> = [];
  const dispatcher = {
    policy: { tokens: null },
    budget: new MemoryBudget(Number.MAX_SAFE_INTEGER),
    limitOf: () => 1 << 20,
    renderError: (err: unknown) => (err instanceof CryptError ? err : new CryptError('internal')),
    dispatch: (_op: unknown, _caller: unknown, payload: Buffer) => {
      const text = payload.toString();
      calls.push(text);
      if (text.startsWith('slow')) return new Promise((resolve) => waiting.push(() => resolve({ token: text, keyId: 'k' })));
      return { token: text, keyId: 'k' };
    },
  } as unknown as Dispatcher;
  return { dispatcher, calls, release: () => waiting.splice(0).forEach((f) => f()) };
}

const connect = (dispatcher: Dispatcher) => {
  const socket = new FakeSocket();
  const conn = new Connection({ dispatcher, log: createLogger('silent'), httpProbe: () => undefined }, socket as unknown as Socket);
  return { socket, conn };
};

const requests = (n: number, from = 0) => Array.from({ length: n }, (_, i) => `#en#m${from + i}#\n`).join('');

t.test('behind a pending result, requests stop running at MAX_QUEUED replies and reading stops', async (t) => {
  const { dispatcher, calls, release } = fakeDispatcher();
  const { socket } = connect(dispatcher);
  socket.push(`#en#slow#\n${requests(100_000)}`);
  t.equal(calls.length, MAX_QUEUED, `the pending request and ${MAX_QUEUED - 1} behind it ran, no more`);
  t.ok(socket.paused, 'reading stopped');
  t.same(socket.written, [], 'nothing written: the first reply is not ready');
  t.notOk(socket.push(requests(10, 200_000)), 'a paused socket delivers nothing more');
  release();
  await new Promise((r) => setImmediate(r));
  t.equal(calls.length, 100_001, 'once it is ready, the rest runs');
  const replies = socket.replies();
  t.equal(replies.length, 100_001, 'every request is answered');
  t.ok(replies[0] === 'slow' && replies.slice(1).every((r, i) => r === `m${i}`), 'in request order');
  t.notOk(socket.paused, 'and reading resumes');
});

t.test('a client that does not read: requests stop running when the socket buffer is full', async (t) => {
  const { dispatcher, calls } = fakeDispatcher();
  const { socket } = connect(dispatcher);
  socket.capacity = 64 * 1024;
  socket.push(requests(100_000));
  const ran = calls.length;
  t.ok(ran < 100_000, `${ran} of 100,000 ran before the buffer filled`);
  t.ok(socket.paused, 'reading stopped');
  const written = socket.written.reduce((a, b) => a + b.length, 0);
  t.ok(written < 64 * 1024 + 64 * 1024 + 1024, `what waits to be written is bounded (${written} bytes)`);
  socket.drain();
  t.ok(calls.length > ran, 'once the client reads, more run');
  while (socket.writableNeedDrain) socket.drain();
  t.equal(calls.length, 100_000, 'and in the end all of them');
  t.equal(socket.replies().length, 100_000, 'every reply arrives');
});

t.test('a barrier operation holds back everything behind it until it is done', async (t) => {
  const { dispatcher, calls, release } = fakeDispatcher();
  const barrier = dispatcher.dispatch;
  (dispatcher as unknown as { dispatch: unknown }).dispatch = (op: { command: string }, caller: unknown, payload: Buffer) => {
    if (op.command === 'rk') {
      calls.push('rk');
      return new Promise((resolve) => setImmediate(() => resolve({ id: 'new', state: 'primary', created: null })));
    }
    return barrier(op as never, caller as never, payload, null);
  };
  const { socket } = connect(dispatcher);
  socket.push('#rk##\n#en#after#\n');
  t.same(calls, ['rk'], 'nothing behind rk runs while it is pending');
  await new Promise((r) => setImmediate(r));
  await new Promise((r) => setImmediate(r));
  t.same(calls, ['rk', 'after'], 'then the request behind it runs');
  t.same(socket.replies(), ['{"id":"new","state":"primary","created":null}', 'after'], 'answers in order');
  release();
});

t.test('the end of the stream answers what was received, even behind a pending result', async (t) => {
  const { dispatcher, calls, release } = fakeDispatcher();
  const { socket } = connect(dispatcher);
  socket.push(`#en#slow#\n${requests(200)}`);
  socket.emit('end');
  t.notOk(socket.ended, 'not ended while replies are pending');
  release();
  await new Promise((r) => setImmediate(r));
  t.equal(calls.length, 201, 'every request received before the end ran');
  t.equal(socket.replies().length, 201, 'and was answered');
  t.ok(socket.ended, 'then the socket ends');
});

t.test('an error marked close ends the connection after its reply; nothing behind it runs', async (t) => {
  const { dispatcher, calls } = fakeDispatcher();
  (dispatcher as unknown as { dispatch: unknown }).dispatch = (_op: unknown, _c: unknown, payload: Buffer) => {
    calls.push(payload.toString());
    throw new CryptError('unauthorized', 'closing', { close: true });
  };
  const { socket } = connect(dispatcher);
  socket.push('#au#x#\n#en#never#\n');
  t.same(calls, ['x'], 'the second request never runs');
  t.same(socket.replies(), ['!unauthorized'], 'one error reply');
  t.ok(socket.ended, 'and the socket ends');
});

t.test('past the memory budget a connection stops reading; a half frame is answered busy and closed', async (t) => {
  const { dispatcher, calls } = fakeDispatcher();
  const budget = new MemoryBudget(1000);
  (dispatcher as unknown as { budget: MemoryBudget }).budget = budget;
  const { socket } = connect(dispatcher);
  socket.push('#en#first#\n');
  t.equal(calls.length, 1, 'under the budget, requests run');
  budget.adjust(5000);
  socket.push('#en#second#\n#en#third#\n');
  t.same(calls, ['first', 'second', 'third'], 'past it, requests already decoded still run (the dispatcher answers busy to payloads)');
  t.ok(socket.paused, 'but reading stops');
  budget.adjust(-5000);
  t.notOk(socket.paused, 'given back, reading resumes');
  socket.push('#en:100#abc');
  budget.adjust(5000);
  socket.push('def');
  t.same(socket.replies().slice(-1), ['!busy'], 'a connection holding half a frame past the budget is answered busy');
  t.ok(socket.ended, 'and closed');
  socket.emit('close');
  budget.adjust(-5000);
  t.equal(budget.used, 0, 'a closed connection gives back everything it held');
});

t.test('a closing connection gives back what it holds and is cut off after a fixed linger, whatever the peer sends', async (t) => {
  const { dispatcher } = fakeDispatcher();
  const budget = new MemoryBudget(1 << 30);
  (dispatcher as unknown as { budget: MemoryBudget }).budget = budget;
  const { socket } = connect(dispatcher);
  socket.push('#en:1000000#' + 'a'.repeat(500_000));
  t.ok(budget.used >= 500_000, 'half a frame is charged');
  socket.push('\x00');
  socket.emit('end');
  t.ok(socket.ended, 'the stream ended: the connection finishes');
  t.ok(budget.used < 1000, `and gives back the half frame at once, not when the socket finally closes (${budget.used} bytes of reply still charged)`);
  socket.emit('close');
});
