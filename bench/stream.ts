/**
 * The streams suite (issue 14): crypt-stream/1 against node:crypto's raw ChaCha20-Poly1305 at
 * 64 KiB chunks, measured in one run.
 * - raw: createCipheriv per 64 KiB chunk, update, final, tag: the ceiling.
 * - the client: crypt-client encrypt-file and decrypt-file of a file of `size` bytes, as real
 *   processes (a sparse input; outputs in /dev/shm when there is one), with their peak RSS.
 * - the server: TCP se and sd, and HTTP PUT /stream/encrypt, end to end on loopback from this
 *   process, with the server's peak RSS; 8 concurrent streams; and the p99 of 100-byte requests
 *   beside 4 running streams.
 */
import { spawn } from 'node:child_process';
import { createCipheriv, randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, openSync, closeSync, ftruncateSync, rmSync, statSync, readFileSync } from 'node:fs';
import net from 'node:net';
import { once } from 'node:events';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { runLoad } from './load.js';
import { startCrypt } from './servers.js';
import type { Running } from './servers.js';

const CHUNK = 65_536;
const CLIENT = fileURLToPath(new URL('../client/index.js', import.meta.url));
const MiB = 1024 * 1024;

/** Peak resident memory of a live process, in MiB (VmHWM). */
function peakMiB(pid: number): number {
  try {
    const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) / 1024 : 0;
  } catch {
    return 0;
  }
}

/** node:crypto's raw ChaCha20-Poly1305 over `size` bytes in 64 KiB chunks, in MB/s. */
export function rawChaCha(size: number): number {
  const key = randomBytes(32);
  const chunk = randomBytes(CHUNK);
  const nonce = Buffer.alloc(12);
  const n = Math.ceil(size / CHUNK);
  const start = process.hrtime.bigint();
  for (let i = 0; i < n; i++) {
    nonce.writeUInt32BE(i, 7);
    const c = createCipheriv('chacha20-poly1305', key, nonce, { authTagLength: 16 });
    c.update(chunk);
    c.final();
    c.getAuthTag();
  }
  return (n * CHUNK) / 1e6 / (Number(process.hrtime.bigint() - start) / 1e9);
}

/** Runs crypt-client, sampling its peak RSS; resolves with MB/s of `bytes` and the peak. */
async function timedClient(args: string[], bytes: number): Promise<{ mbps: number; peakMiB: number; code: number | null }> {
  const start = process.hrtime.bigint();
  const child = spawn(process.execPath, [CLIENT, ...args], { stdio: ['ignore', 'ignore', 'inherit'] });
  let peak = 0;
  const timer = setInterval(() => (peak = Math.max(peak, peakMiB(child.pid!))), 50);
  const [code] = (await once(child, 'exit')) as [number | null];
  clearInterval(timer);
  return { mbps: bytes / 1e6 / (Number(process.hrtime.bigint() - start) / 1e9), peakMiB: peak, code };
}

/** Sends `size` bytes of zeros as #se:<n># (or a stream as #sd:<n>#) and drains the reply; resolves with MB/s of the input. */
async function tcpStream(port: number, command: 'se' | 'sd', size: number, body?: Buffer): Promise<number> {
  const socket = net.connect(port, '127.0.0.1');
  await once(socket, 'connect');
  const start = process.hrtime.bigint();
  let received = 0;
  const done = new Promise<void>((resolve, reject) => {
    socket.on('data', (c: Buffer) => {
      received += c.length;
      if (c.length >= 2 && c[c.length - 2] === 0x23 && c[c.length - 1] === 0x0a && received > size / 2) resolve();
    });
    socket.on('close', () => reject(new Error(`${command}: the connection closed after ${received} bytes`)));
  });
  socket.write(`#${command}:${size}#`);
  const piece = body ?? Buffer.alloc(4 * CHUNK);
  for (let sent = 0; sent < size; ) {
    const n = Math.min(piece.length, size - sent);
    const part = body ? body.subarray(sent, sent + n) : piece.subarray(0, n);
    sent += n;
    if (!socket.write(part)) await once(socket, 'drain');
  }
  socket.write('#\n');
  await done;
  socket.destroy();
  return size / 1e6 / (Number(process.hrtime.bigint() - start) / 1e9);
}

/** What the suite measured. */
export interface StreamResult {
  sizeMiB: number;
  rawMBps: number;
  client: { encryptMBps: number; decryptMBps: number; encryptPeakMiB: number; decryptPeakMiB: number };
  server: { tcpEncryptMBps: number; tcpDecryptMBps: number; httpEncryptMBps: number; peakMiB: number; eightConcurrentPeakMiB: number; eightConcurrentMBps: number };
  beside: { p50: number; p99: number; rps: number };
}

/** The suite; `size` bytes per stream (1 GiB in the full run). */
export async function runStreams(size: number, log: (line: string) => void): Promise<StreamResult> {
  const raw = rawChaCha(Math.min(size, 512 * MiB));
  log(`  raw ChaCha20-Poly1305, 64 KiB chunks: ${raw.toFixed(0)} MB/s`);
  const dir = mkdtempSync(join(existsSync('/dev/shm') ? '/dev/shm' : tmpdir(), 'crypt-bench-stream-'));
  let server: Running | null = null;
  try {
    server = await startCrypt(['--http', '--http-port', '0']);
    const port = ['--port', String(server.port)];
    // a sparse input of `size` bytes: reading it costs little, as a cached file would
    const input = join(dir, 'in.bin');
    const fd = openSync(input, 'w');
    ftruncateSync(fd, size);
    closeSync(fd);
    const enc = await timedClient([...port, 'encrypt-file', input, '-o', join(dir, 'in.crypt')], size);
    rmSync(input);
    const dec = await timedClient([...port, 'decrypt-file', join(dir, 'in.crypt'), '-o', join(dir, 'out.bin')], size);
    if (enc.code !== 0 || dec.code !== 0 || statSync(join(dir, 'out.bin')).size !== size) throw new Error('the client round trip failed');
    rmSync(join(dir, 'out.bin'));
    log(`  crypt-client encrypt-file ${enc.mbps.toFixed(0)} MB/s (peak RSS ${enc.peakMiB.toFixed(0)} MiB), decrypt-file ${dec.mbps.toFixed(0)} MB/s (${dec.peakMiB.toFixed(0)} MiB)`);

    const pid = server.child.pid!;
    const tcpEnc = await tcpStream(server.port, 'se', size);
    // sd needs a stream: the client's file is one (its bytes read once into memory here, not in the server)
    const stream = readFileSync(join(dir, 'in.crypt'));
    rmSync(join(dir, 'in.crypt'));
    const tcpDec = await tcpStream(server.port, 'sd', stream.length, stream);
    const httpStart = process.hrtime.bigint();
    const res = await fetch(`http://127.0.0.1:${server.httpPort}/stream/encrypt`, {
      method: 'PUT',
      body: (async function* () {
        const piece = Buffer.alloc(4 * CHUNK);
        for (let sent = 0; sent < size; sent += piece.length) yield piece.subarray(0, Math.min(piece.length, size - sent));
      })() as never,
      duplex: 'half',
    } as RequestInit);
    let got = 0;
    for await (const c of res.body as unknown as AsyncIterable<Uint8Array>) got += c.length;
    if (got < size) throw new Error('the HTTP stream came back short');
    const httpEnc = size / 1e6 / (Number(process.hrtime.bigint() - httpStart) / 1e9);
    const peak = peakMiB(pid);
    log(`  server: TCP se ${tcpEnc.toFixed(0)} MB/s, sd ${tcpDec.toFixed(0)} MB/s, HTTP PUT /stream/encrypt ${httpEnc.toFixed(0)} MB/s; peak RSS ${peak.toFixed(0)} MiB`);
    await server.stop();

    // 8 concurrent streams on a fresh server: its peak
    server = await startCrypt([]);
    const start8 = process.hrtime.bigint();
    await Promise.all(Array.from({ length: 8 }, () => tcpStream(server!.port, 'se', size)));
    const mbps8 = (8 * size) / 1e6 / (Number(process.hrtime.bigint() - start8) / 1e9);
    const peak8 = peakMiB(server.child.pid!);
    log(`  8 concurrent TCP se streams: ${mbps8.toFixed(0)} MB/s together, server peak RSS ${peak8.toFixed(0)} MiB`);

    // 100-byte requests beside 4 running streams
    const streams = Promise.all(Array.from({ length: 4 }, () => tcpStream(server!.port, 'se', size)));
    const beside = await runLoad({ port: server.port, connections: 4, depth: 1, seconds: 3 });
    await streams;
    log(`  100-byte requests beside 4 streams: p50 ${beside.p50.toFixed(2)} ms, p99 ${beside.p99.toFixed(2)} ms (${beside.rps.toFixed(0)} req/s)`);
    return {
      sizeMiB: size / MiB,
      rawMBps: raw,
      client: { encryptMBps: enc.mbps, decryptMBps: dec.mbps, encryptPeakMiB: enc.peakMiB, decryptPeakMiB: dec.peakMiB },
      server: { tcpEncryptMBps: tcpEnc, tcpDecryptMBps: tcpDec, httpEncryptMBps: httpEnc, peakMiB: peak, eightConcurrentPeakMiB: peak8, eightConcurrentMBps: mbps8 },
      beside: { p50: beside.p50, p99: beside.p99, rps: beside.rps },
    };
  } finally {
    await server?.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}
