/**
 * Memory: resident set with 10,000 idle connections (each used once, then left open), and while a
 * 1 MiB request is in flight, with the p99 of 100-byte requests running beside it.
 */
import net from 'node:net';
import { once } from 'node:events';
import { rssMiB } from './servers.js';
import type { Running } from './servers.js';
import { runLoad } from './load.js';

/** RSS before and with n idle connections, in MiB. */
export async function idleConnections(server: Running, n = 10_000): Promise<{ before: number; idle: number; perConnectionKiB: number }> {
  const before = rssMiB(server.child.pid!);
  const sockets: net.Socket[] = [];
  for (let i = 0; i < n; i += 500) {
    const batch = Array.from({ length: Math.min(500, n - i) }, () => net.connect(server.port, '127.0.0.1'));
    for (const s of batch) s.on('error', () => undefined);
    await Promise.all(batch.map((s) => once(s, 'connect')));
    sockets.push(...batch);
  }
  await Promise.all(sockets.map((s) => new Promise<void>((resolve) => {
    s.once('data', () => resolve());
    s.write('#en#hello#\n');
  })));
  // let the server settle (buffers released, timers idle) before reading its memory
  await new Promise((r) => setTimeout(r, 1000));
  const idle = rssMiB(server.child.pid!);
  for (const s of sockets) s.destroy();
  return { before, idle, perConnectionKiB: ((idle - before) * 1024) / n };
}

/** p99 of 100-byte sequential requests while a 1 MiB encrypt-then-decrypt is always in flight, and the peak RSS. */
export async function largeInFlight(server: Running, seconds: number): Promise<{ rps: number; p50: number; p99: number; peakMiB: number; errors: number }> {
  let peak = 0;
  const sample = setInterval(() => {
    peak = Math.max(peak, rssMiB(server.child.pid!));
  }, 25);
  const r = await runLoad({ port: server.port, connections: 8, depth: 1, seconds, warmupSeconds: 1, heavy: 1 });
  clearInterval(sample);
  return { rps: r.rps, p50: r.p50, p99: r.p99, peakMiB: peak, errors: r.errors };
}

/** Samples a process's RSS every 50 ms until stopped; resolves with the peak, in MiB. */
function peakSampler(pid: number): { stop(): number } {
  let peak = rssMiB(pid);
  const timer = setInterval(() => (peak = Math.max(peak, rssMiB(pid))), 50);
  return {
    stop() {
      clearInterval(timer);
      return Math.max(peak, rssMiB(pid));
    },
  };
}

/** An attack's effect on the server: RSS before and at its peak, in MiB, and what clients saw. */
export interface AttackResult {
  beforeMiB: number;
  peakMiB: number;
  detail: string;
}

/**
 * Connections that pipeline 1 MiB frames and never read a reply (the memory-exhaustion attack of
 * the hardening issue: 400 such connections took RSS to 2 GiB before the memory budget).
 */
export async function pipelineFlood(server: Running, connections = 400, framesEach = 4, seconds = 8): Promise<AttackResult> {
  const beforeMiB = rssMiB(server.child.pid!);
  const sampler = peakSampler(server.child.pid!);
  const frame = Buffer.concat([Buffer.from(`#en:${1024 * 1024 - 64}#`), Buffer.alloc(1024 * 1024 - 64, 0x61), Buffer.from('#\n')]);
  const sockets: net.Socket[] = [];
  for (let i = 0; i < connections; i += 50) {
    const batch = Array.from({ length: Math.min(50, connections - i) }, () => net.connect(server.port, '127.0.0.1'));
    for (const s of batch) s.on('error', () => undefined);
    await Promise.all(batch.map((s) => once(s, 'connect')));
    for (const s of batch) {
      s.pause();
      for (let f = 0; f < framesEach; f++) s.write(frame);
    }
    sockets.push(...batch);
  }
  await new Promise((r) => setTimeout(r, seconds * 1000));
  const peakMiB = sampler.stop();
  for (const s of sockets) s.destroy();
  return { beforeMiB, peakMiB, detail: `${connections} connections x ${framesEach} frames of 1 MiB, never reading, for ${seconds} s` };
}

/** Concurrent HTTP batches, each with one 1 MiB item (500 of them took RSS to 1.9 GiB before the budget). */
export async function httpBatchFlood(server: Running, requests = 500): Promise<AttackResult> {
  const beforeMiB = rssMiB(server.child.pid!);
  const sampler = peakSampler(server.child.pid!);
  const body = JSON.stringify({ batch: [{ plaintext: 'a'.repeat(1024 * 1024 - 64) }] });
  const statuses = await Promise.all(Array.from({ length: requests }, () =>
    fetch(`http://127.0.0.1:${server.httpPort}/encrypt`, { method: 'POST', body, headers: { 'content-type': 'application/json' } }).then(async (r) => {
      await r.arrayBuffer();
      return r.status;
    }, () => 0),
  ));
  const peakMiB = sampler.stop();
  const count = (s: number) => statuses.filter((x) => x === s).length;
  return { beforeMiB, peakMiB, detail: `${requests} concurrent requests: ${count(200)} served, ${count(503)} busy, ${requests - count(200) - count(503)} other` };
}

/** Connections that send a frame one byte per segment (the decoder used to keep every chunk). */
export async function slowSegments(server: Running, connections = 8, seconds = 20): Promise<AttackResult> {
  const beforeMiB = rssMiB(server.child.pid!);
  const sampler = peakSampler(server.child.pid!);
  const sockets = await Promise.all(Array.from({ length: connections }, async () => {
    const s = net.connect({ port: server.port, host: '127.0.0.1', noDelay: true });
    s.on('error', () => undefined);
    await once(s, 'connect');
    s.write(`#en:${1024 * 1024 - 64}#`);
    return s;
  }));
  const one = Buffer.from('a');
  let sent = 0;
  const end = Date.now() + seconds * 1000;
  while (Date.now() < end) {
    for (const s of sockets) {
      if (!s.writableNeedDrain) {
        s.write(one);
        sent++;
      }
    }
    await new Promise((r) => setImmediate(r));
  }
  const peakMiB = sampler.stop();
  for (const s of sockets) s.destroy();
  return { beforeMiB, peakMiB, detail: `${connections} connections sent ${sent} one-byte segments in ${seconds} s` };
}
