/**
 * A closed-loop TCP load generator that checks every reply. Each chain encrypts its message,
 * decrypts the token it got back, compares the plaintext with the message, and starts over: every
 * request and every reply are counted, and a wrong or missing answer is an error. `depth` chains
 * share a connection: 1 is sequential, 16 is pipelined. `perRequest` opens a connection for every
 * request, as the clients of the old tool did.
 *
 * The generator writes once per read (all the requests a batch of replies allows), so that it
 * costs less than the servers it measures.
 */
import net from 'node:net';
import { once } from 'node:events';
import { percentile } from './stats.js';
import { encodeRequest } from '../src/wire/frames.js';
import { ReplyDecoder } from '../src/wire/replies.js';

/** What to run. */
export interface LoadOptions {
  port: number;
  host?: string;
  connections: number;
  /** Requests in flight per connection (1: sequential). */
  depth: number;
  seconds: number;
  warmupSeconds?: number;
  perRequest?: boolean;
  /** Bytes per message (printable ASCII, no '#'); 100 by default. */
  messageSize?: number;
  /** Extra connections that keep a 1 MiB encrypt-then-decrypt in flight the whole time (not counted). */
  heavy?: number;
  /** Options on every request, as the TCP head carries them (`,key=billing`); none by default. */
  options?: string;
}

/** What it measured: requests and latencies over the measured window; errors over the whole run. */
export interface LoadResult {
  requests: number;
  /** Requests per second (an encrypt and a decrypt are two requests). */
  rps: number;
  p50: number;
  p99: number;
  errors: number;
}

const CAPACITY = 1 << 21;

/** Latency samples in milliseconds; reservoir-sampled past its capacity. */
class Latencies {
  readonly #samples = new Float64Array(CAPACITY);
  #seen = 0;

  add(ms: number): void {
    const i = this.#seen++;
    if (i < CAPACITY) this.#samples[i] = ms;
    else {
      const j = Math.floor(Math.random() * (i + 1));
      if (j < CAPACITY) this.#samples[j] = ms;
    }
  }

  sorted(): Float64Array {
    return this.#samples.slice(0, Math.min(this.#seen, CAPACITY)).sort();
  }
}

interface State {
  measuring: boolean;
  stopped: boolean;
  requests: number;
  errors: number;
  latencies: Latencies;
}

/** A message of `size` printable characters, unique to its chain. */
export function message(chain: number, size: number): string {
  const head = `m${chain}-`;
  let body = '';
  for (let i = 0; body.length < size - head.length; i++) body += String.fromCharCode(97 + ((chain * 7 + i) % 26));
  return (head + body).slice(0, size);
}

/** One persistent connection running `depth` chains. */
async function persistent(o: LoadOptions, first: number, state: State): Promise<void> {
  const socket = net.connect(o.port, o.host ?? '127.0.0.1');
  await once(socket, 'connect');
  socket.setNoDelay(true);
  socket.setEncoding('latin1');
  const depth = o.depth;
  const messages = Array.from({ length: depth }, (_, i) => message(first + i, o.messageSize ?? 100));
  const decrypting = new Uint8Array(depth);
  // FIFO of requests in flight: chain and send time
  const chainOf = new Int32Array(depth);
  const sentAt = new Float64Array(depth);
  let head = 0;
  let count = 0;
  const push = (chain: number, at: number) => {
    const tail = (head + count) % depth;
    chainOf[tail] = chain;
    sentAt[tail] = at;
    count++;
  };
  let pending = '';
  const done = new Promise<void>((resolve) => socket.once('close', resolve));
  socket.on('error', () => {
    state.errors++;
  });
  let out = '';
  const en = `#en${o.options ?? ''}#`;
  const de = `#de${o.options ?? ''}#`;
  const start = performance.now();
  for (let c = 0; c < depth; c++) {
    out += `${en}${messages[c]}#\n`;
    push(c, start);
  }
  socket.write(out, 'latin1');
  socket.on('data', (chunk: string) => {
    const s = pending ? pending + chunk : chunk;
    const now = performance.now();
    let pos = 0;
    out = '';
    for (;;) {
      const lf = s.indexOf('\n', pos);
      if (lf === -1) break;
      const line = s.slice(pos, lf);
      pos = lf + 1;
      const chain = chainOf[head]!;
      const sent = sentAt[head]!;
      head = (head + 1) % depth;
      count--;
      if (state.measuring) {
        state.requests++;
        state.latencies.add(now - sent);
      }
      let next: string;
      if (line.charCodeAt(0) === 35) {
        state.errors++;
        decrypting[chain] = 0;
        next = `${en}${messages[chain]}#\n`;
      } else if (decrypting[chain] === 0) {
        decrypting[chain] = 1;
        next = `${de}${line}#\n`;
      } else {
        if (line !== messages[chain]) state.errors++;
        decrypting[chain] = 0;
        next = `${en}${messages[chain]}#\n`;
      }
      if (!state.stopped) {
        out += next;
        push(chain, now);
      }
    }
    pending = pos < s.length ? s.slice(pos) : '';
    if (out) socket.write(out, 'latin1');
    else if (state.stopped && count === 0) socket.end();
  });
  await done;
}

/** One request on its own connection; resolves with the reply line. */
function oneShot(o: LoadOptions, request: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(o.port, o.host ?? '127.0.0.1', () => socket.write(request, 'latin1'));
    socket.setNoDelay(true);
    let data = '';
    socket.setEncoding('latin1');
    socket.on('data', (chunk: string) => {
      data += chunk;
      const lf = data.indexOf('\n');
      if (lf !== -1) {
        // close with a reset: a client-side TIME_WAIT per request would slow every later connect()
        socket.resetAndDestroy();
        resolve(data.slice(0, lf));
      }
    });
    socket.on('error', reject);
    socket.on('close', () => reject(new Error('closed without a reply')));
  });
}

/** A chain that opens a connection per request. */
async function perRequest(o: LoadOptions, chain: number, state: State): Promise<void> {
  const msg = message(chain, o.messageSize ?? 100);
  let token = '';
  while (!state.stopped) {
    for (const phase of ['en', 'de'] as const) {
      const t0 = performance.now();
      let reply: string;
      try {
        reply = await oneShot(o, phase === 'en' ? `#en#${msg}#\n` : `#de#${token}#\n`);
      } catch {
        state.errors++;
        break;
      }
      if (state.measuring) {
        state.requests++;
        state.latencies.add(performance.now() - t0);
      }
      if (phase === 'en') {
        if (reply.startsWith('#')) {
          state.errors++;
          break;
        }
        token = reply;
      } else if (reply !== msg) {
        state.errors++;
      }
    }
  }
}

/** A connection that keeps one large message in flight: encrypt, decrypt, check, again. */
async function heavy(o: LoadOptions, state: State, size = 1024 * 1024): Promise<void> {
  const socket = net.connect(o.port, o.host ?? '127.0.0.1');
  await once(socket, 'connect');
  const msg = Buffer.alloc(size, 'h');
  const decoder = new ReplyDecoder();
  let waiting: ((value: Buffer | null) => void) | null = null;
  socket.on('data', (chunk: Buffer) => {
    for (const r of decoder.push(chunk)) waiting?.(r.ok ? Buffer.from(r.value) : null);
  });
  const request = (command: string, payload: Buffer) =>
    new Promise<Buffer | null>((resolve) => {
      waiting = resolve;
      socket.write(encodeRequest(command, payload));
    });
  while (!state.stopped) {
    const token = await request('en', msg);
    const plain = token && (await request('de', token));
    if (!plain?.equals(msg)) state.errors++;
  }
  socket.destroy();
}

/** Runs a load: warm-up, then the measured window; resolves once every connection is done. */
export async function runLoad(o: LoadOptions): Promise<LoadResult> {
  const state: State = { measuring: false, stopped: false, requests: 0, errors: 0, latencies: new Latencies() };
  const workers = Array.from({ length: o.connections }, (_, i) => (o.perRequest ? perRequest(o, i, state) : persistent(o, i * o.depth, state)));
  for (let i = 0; i < (o.heavy ?? 0); i++) workers.push(heavy(o, state));
  const all = Promise.allSettled(workers);
  await new Promise((r) => setTimeout(r, (o.warmupSeconds ?? 1) * 1000));
  state.measuring = true;
  const start = performance.now();
  await new Promise((r) => setTimeout(r, o.seconds * 1000));
  const requests = state.requests;
  const elapsed = (performance.now() - start) / 1000;
  state.measuring = false;
  state.stopped = true;
  await all;
  const sorted = state.latencies.sorted();
  return { requests, rps: requests / elapsed, p50: percentile(sorted, 50), p99: percentile(sorted, 99), errors: state.errors };
}
