/**
 * Serving from several processes (--workers n) with node:cluster: every worker runs the whole
 * server on the shared ports, and the primary only supervises.
 *
 * Rules:
 * - The primary opens (or creates) the keyring before forking, so workers never race to create it.
 * - Startup is all or nothing: a worker that exits before it listens stops the others, and the
 *   primary exits 1 (the worker's reason is on stderr).
 * - A worker that dies later is replaced after a delay that doubles with each recent death
 *   (RESTART_BASE_MS up to RESTART_MAX_MS); after MAX_RESTARTS deaths within RESTART_WINDOW_MS
 *   the primary gives up, as systemd's StartLimitBurst does: it stops the others and exits 1
 *   with one line saying so.
 * - SIGINT/SIGTERM: each worker is told to shut down gracefully; the primary exits 0 when all have.
 * - Key changes reach every worker through the keyring file (each one watches it).
 * - Metrics: the primary aggregates every worker's registry (prom-client's AggregatorRegistry),
 *   for a worker's GET /metrics (asked over IPC) and on --metrics-port, which the primary serves.
 * - One worker is the lead and logs routine lines (listening, keys changed); the others log
 *   them at debug, so n workers don't print every line n times. A dead lead's replacement leads.
 */
import cluster from 'node:cluster';
import type { Worker } from 'node:cluster';
import { once } from 'node:events';
import type { Writable } from 'node:stream';
import type { Logger } from 'pino';
import { openKeyring } from './startup.js';
import { METRICS_REQUEST, clusterMetrics, serveMetrics } from './metrics.js';
import type { ServerConfig } from './config.js';

/** The message a worker sends once it listens. */
const READY = 'crypt:ready';
/** The message that asks a worker to shut down. */
const SHUTDOWN = 'crypt:shutdown';
/** The environment variable that makes a worker the lead: the one that logs routine lines. */
export const LEAD = 'CRYPT_WORKER_LEAD';
/** Deaths within RESTART_WINDOW_MS after which the primary gives up. */
const MAX_RESTARTS = 5;
const RESTART_WINDOW_MS = 60_000;
const RESTART_BASE_MS = 100;
const RESTART_MAX_MS = 10_000;

/** True when this process is a cluster worker. */
export const isWorker = (): boolean => cluster.isWorker;

/** The delay before replacing a worker, given the deaths within the window (1 for the first). */
const restartDelay = (deaths: number): number => Math.min(RESTART_MAX_MS, RESTART_BASE_MS * 2 ** (deaths - 1));

/** Runs the primary: forks config.workers workers and supervises them; resolves with the exit code. */
export async function runPrimary(config: ServerConfig, log: Logger, signals: NodeJS.EventEmitter, stderr?: Writable): Promise<number> {
  const { keyring, created } = await openKeyring(config);
  if (created) log.warn({ keyring: keyring.file }, 'created a new keyring: back it up, it holds every key');
  let stopping = false;
  const ready = new Set<Worker>();
  const scrape = config.metrics ? clusterMetrics() : null;
  cluster.on('message', (worker: Worker, msg: unknown) => {
    if (msg === READY) ready.add(worker);
    const m = msg as { type?: unknown; id?: unknown } | null;
    if (scrape && m?.type === METRICS_REQUEST && typeof m.id === 'number') {
      const id = m.id;
      scrape().then(
        (text) => !worker.isDead() && worker.send({ type: METRICS_REQUEST, id, text }),
        (err: Error) => !worker.isDead() && worker.send({ type: METRICS_REQUEST, id, error: err.message }),
      );
    }
  });
  const metricsServer = scrape && config.metricsPort !== undefined ? await serveMetrics(config.metricsPort, config.metricsHost, scrape, log) : null;
  if (metricsServer) log.info({ proto: 'metrics', host: config.metricsHost, port: (metricsServer.address() as { port: number }).port }, 'listening');
  let lead: Worker = cluster.fork({ [LEAD]: '1' });
  const workers = [lead, ...Array.from({ length: config.workers - 1 }, () => cluster.fork())];
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
  const stopAll = async (message: string | null) => {
    stopping = true;
    const alive = Object.values(cluster.workers ?? {}).filter((w): w is Worker => w !== undefined && !w.isDead());
    for (const w of alive) {
      if (message === null) w.process.kill('SIGTERM');
      else w.send(message);
    }
    await Promise.all(alive.map((w) => (w.isDead() ? null : once(w, 'exit'))));
  };
  if (!started) {
    metricsServer?.close();
    await stopAll(null);
    return 1;
  }
  log.info({ workers: config.workers }, 'cluster started');
  if (!log.isLevelEnabled('info')) stderr?.write(`crypt-server: ${config.workers} workers started\n`);

  const deaths: number[] = [];
  const pending = new Set<NodeJS.Timeout>();
  const gaveUp = new Promise<number>((resolve) => {
    cluster.on('exit', (worker, code, signal) => {
      ready.delete(worker);
      if (stopping) return;
      const now = Date.now();
      deaths.push(now);
      while (deaths.length > 0 && now - deaths[0]! > RESTART_WINDOW_MS) deaths.shift();
      if (deaths.length >= MAX_RESTARTS) {
        log.error({ worker: worker.process.pid, code, signal, deaths: deaths.length, windowSeconds: RESTART_WINDOW_MS / 1000 }, 'workers keep dying; giving up');
        stderr?.write(`crypt-server: workers died ${deaths.length} times within ${RESTART_WINDOW_MS / 1000} s; giving up (their reasons are above)\n`);
        for (const t of pending) clearTimeout(t);
        void stopAll(null).then(() => resolve(1));
        return;
      }
      const delay = restartDelay(deaths.length);
      log.error({ worker: worker.process.pid, code, signal, restartInMs: delay }, 'worker died; starting another');
      const wasLead = worker === lead;
      const timer = setTimeout(() => {
        pending.delete(timer);
        if (stopping) return;
        const next = cluster.fork(wasLead ? { [LEAD]: '1' } : {});
        if (wasLead) lead = next;
      }, delay);
      pending.add(timer);
    });
  });

  // logrotate signals the primary: each worker reopens the audit file
  const hangup = () => {
    for (const w of Object.values(cluster.workers ?? {})) if (w && !w.isDead()) w.process.kill('SIGHUP');
  };
  if (config.auditFile) signals.on('SIGHUP', hangup);
  const signalled = Promise.race([once(signals, 'SIGINT'), once(signals, 'SIGTERM')]).then(([signal]) => signal as string | undefined);
  const outcome = await Promise.race([gaveUp.then((code) => ({ code })), signalled.then((signal) => ({ signal }))]);
  metricsServer?.close();
  if ('code' in outcome) {
    signals.off('SIGHUP', hangup);
    return outcome.code;
  }
  for (const t of pending) clearTimeout(t);
  signals.off('SIGHUP', hangup);
  log.info({ signal: outcome.signal ?? 'signal' }, 'signal received; stopping workers');
  await stopAll(SHUTDOWN);
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
