/**
 * Serving from several processes (--workers n) with node:cluster: every worker runs the whole
 * server on the shared ports, and the primary only supervises.
 *
 * Rules:
 * - The primary makes sure the keyring exists before forking, so workers never race to create it.
 * - Startup is all or nothing: a worker that exits before it listens stops the others, and the
 *   primary exits 1 (the worker's reason is on stderr).
 * - A worker that dies later is logged and replaced.
 * - SIGINT/SIGTERM: each worker is told to shut down gracefully; the primary exits 0 when all have.
 * - Key changes reach every worker through the keyring file (each one watches it).
 */
import cluster from 'node:cluster';
import type { Worker } from 'node:cluster';
import { once } from 'node:events';
import { Keyring } from './keyring.js';
import type { ServerConfig } from './config.js';
import type { Logger } from './log.js';

/** The message a worker sends once it listens. */
export const READY = 'crypt:ready';
/** The message that asks a worker to shut down. */
export const SHUTDOWN = 'crypt:shutdown';

/** True when this process is a cluster worker. */
export const isWorker = (): boolean => cluster.isWorker;

/** Runs the primary: forks config.workers workers and supervises them; resolves with the exit code. */
export async function runPrimary(config: ServerConfig, log: Logger, signals: NodeJS.EventEmitter): Promise<number> {
  if (config.fernetKeys === undefined) {
    const { created } = await Keyring.open({ file: config.keyring });
    if (created) log.info({ keyring: config.keyring }, 'created a new keyring');
  }
  let stopping = false;
  const ready = new Set<Worker>();
  cluster.on('message', (worker: Worker, msg: unknown) => {
    if (msg === READY) ready.add(worker);
  });
  const workers = Array.from({ length: config.workers }, () => cluster.fork());
  const started = await new Promise<boolean>((resolve) => {
    const onMessage = () => {
      if (ready.size === config.workers) done(true);
    };
    const onExit = (worker: Worker) => {
      if (!ready.has(worker)) done(false);
    };
    const done = (ok: boolean) => {
      cluster.off('message', onMessage);
      cluster.off('exit', onExit);
      resolve(ok);
    };
    cluster.on('message', onMessage);
    cluster.on('exit', onExit);
  });
  if (!started) {
    stopping = true;
    for (const w of workers) w.process.kill('SIGTERM');
    await Promise.all(workers.filter((w) => !w.isDead()).map((w) => once(w, 'exit')));
    return 1;
  }
  log.info({ workers: config.workers }, 'cluster started');

  cluster.on('exit', (worker, code, signal) => {
    ready.delete(worker);
    if (stopping) return;
    log.error({ worker: worker.process.pid, code, signal }, 'worker died; starting another');
    cluster.fork();
  });

  const [signal] = (await Promise.race([once(signals, 'SIGINT'), once(signals, 'SIGTERM')])) as [string | undefined];
  stopping = true;
  log.info({ signal: signal ?? 'signal' }, 'signal received; stopping workers');
  const alive = Object.values(cluster.workers ?? {}).filter((w): w is Worker => w !== undefined && !w.isDead());
  for (const w of alive) w.send(SHUTDOWN);
  await Promise.all(alive.map((w) => (w.isDead() ? null : once(w, 'exit'))));
  log.info('stopped');
  return 0;
}

/** In a worker: tells the primary this worker listens, and turns its shutdown message into SIGTERM. */
export function workerReady(signals: NodeJS.EventEmitter): void {
  process.send?.(READY);
  process.on('message', (msg: unknown) => {
    if (msg === SHUTDOWN) signals.emit('SIGTERM');
  });
}

/** In a worker: lets the process end once the server has stopped (the IPC channel holds it open). */
export function workerDone(): void {
  if (cluster.isWorker && process.connected) process.disconnect();
}
