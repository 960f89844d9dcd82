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
