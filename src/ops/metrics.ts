/**
 * Prometheus metrics (GET /metrics, --metrics-port): what the dispatcher's records, the
 * listeners, the keyring, the worker pool and the audit log say, in the text format, through
 * prom-client.
 *
 * Rules:
 * - The hot path only counts: each record adds to plain numbers in one Map cell (one per op,
 *   transport, outcome, key and key version); prom-client sees them at scrape time. Its own
 *   per-request API (labels looked up and hashed per call) costs more than a small request.
 * - Labels are never data: ops, transports, outcome codes, key names and version ids (public
 *   fingerprints). At most MAX_CELLS cells: past that, new key versions count as key_id "other".
 * - Latency buckets fit a service that answers in microseconds: 100 us to 1 s.
 * - With --workers, the primary aggregates every worker's registry (prom-client's
 *   AggregatorRegistry): counts are summed; keyring facts, the same in every worker, taken once;
 *   thread utilization averaged. Each worker's registry includes its crypto threads.
 */
import { AggregatorRegistry, Gauge, Registry, collectDefaultMetrics } from 'prom-client';
import type { Metric } from 'prom-client';
import type { Dispatcher, DispatchRecord } from '../core/dispatcher.js';
import type { CryptoPool } from '../core/pool.js';
import type { Keyring, KeyBook } from '../keys/keyring.js';
import { VERSION } from '../core/version.js';
import { createServer } from 'node:http';
import type { Server } from 'node:http';
import type { Logger } from 'pino';

/** Request latency buckets, in seconds. */
export const DURATION_BUCKETS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1];
/** Request size buckets (payload in), in bytes. */
export const SIZE_BUCKETS = [64, 256, 1024, 4096, 16_384, 65_536, 262_144, 1_048_576, 4_194_304, 16_777_216];
/** The most cells counted; past it, new key versions share key_id "other". */
export const MAX_CELLS = 10_000;

/** Facts of one key book. */
interface KeyFacts {
  book: KeyBook;
  states: Map<string, number>;
  named: number;
  defaultCreated: number | null;
  oldestCreated: number | null;
}

interface Cell {
  op: string;
  transport: string;
  outcome: string;
  key: string;
  keyId: string;
  count: number;
  durations: Float64Array;
  durationSum: number;
  sizes: Float64Array;
  sizeSum: number;
}

type Labels = Record<string, string | number>;
/** A line of a metric: `metricName` for a histogram's _bucket, _sum and _count lines. */
type Values = Array<{ labels: Labels; value: number; metricName?: string }>;

/** A metric whose values are made at scrape time. */
function computed(name: string, help: string, type: 'counter' | 'gauge' | 'histogram', values: () => Values | Promise<Values>, aggregator: 'sum' | 'first' | 'max' | 'average' = 'sum'): Metric {
  const metric = {
    name,
    help,
    type,
    aggregator,
    async get() {
      return { name, help, type, aggregator, values: await values() };
    },
    reset() {},
  };
  return metric as unknown as Metric;
}

/** The sources a server's metrics read. */
export interface MetricSources {
  dispatcher: Dispatcher;
  keyring: Keyring;
  pool: CryptoPool | null;
  /** Open connections of each listener. */
  connections: Map<'tcp' | 'http', () => number | Promise<number>>;
}

/** A server's metrics. */
export class Metrics {
  readonly registry = new Registry();
  /** Cells by key version id ('' for none): few per id, found by comparing interned strings. */
  readonly #cells = new Map<string, Cell[]>();
  #cellCount = 0;
  readonly #authFailures = new Map<string, number>();
  readonly #rateLimited = new Map<string, number>();
  #auditFailures = 0;
  #reloads = { ok: 0, error: 0 };
  readonly #sources: MetricSources;
  #keyFacts: KeyFacts | null = null;

  constructor(sources: MetricSources) {
    this.#sources = sources;
    sources.dispatcher.observe((r) => this.#count(r));
    sources.dispatcher.observeRefusals((transport) => this.#rateLimited.set(transport, (this.#rateLimited.get(transport) ?? 0) + 1));
    sources.keyring.on('change', () => void this.#reloads.ok++);
    sources.keyring.on('error', () => void this.#reloads.error++);
    const r = this.registry;
    collectDefaultMetrics({ register: r });
    const info = new Gauge({ name: 'crypt_build_info', help: 'the build: version and Node.js version (always 1)', labelNames: ['version', 'node'], registers: [r], aggregator: 'first' });
    info.set({ version: VERSION, node: process.version }, 1);
    const cells = () => [...this.#cells.values()].flat();
    r.registerMetric(computed('crypt_requests_total', 'requests by operation, transport and outcome (ok or the error code)', 'counter', () => sum(cells(), (c) => ({ op: c.op, transport: c.transport, outcome: c.outcome }), (c) => c.count)));
    r.registerMetric(computed('crypt_request_duration_seconds', 'time in the server per request, by operation and transport', 'histogram', () => histogram('crypt_request_duration_seconds', cells(), (c) => ({ op: c.op, transport: c.transport }), DURATION_BUCKETS, (c) => c.durations, (c) => c.durationSum, (c) => c.count)));
    r.registerMetric(computed('crypt_request_size_bytes', 'payload bytes in per request (message or token), by operation', 'histogram', () => histogram('crypt_request_size_bytes', cells(), (c) => ({ op: c.op }), SIZE_BUCKETS, (c) => c.sizes, (c) => c.sizeSum, (c) => c.count)));
    r.registerMetric(computed('crypt_key_operations_total', 'successful operations by named key and key version (how many encryptions under this key), and operation', 'counter', () => sum(cells().filter((c) => c.outcome === 'ok' && c.keyId !== ''), (c) => ({ key: c.key, key_id: c.keyId, op: c.op }), (c) => c.count)));
    r.registerMetric(computed('crypt_auth_failures_total', 'failed authentications and requests refused for want of one, by transport', 'counter', () => byTransport(this.#authFailures)));
    r.registerMetric(computed('crypt_rate_limited_total', 'requests refused by a rate limit (HTTP per address, rotations), by transport', 'counter', () => byTransport(this.#rateLimited)));
    r.registerMetric(computed('crypt_audit_write_failures_total', 'audit log writes that failed (each refused the operations it held)', 'counter', () => [{ labels: {}, value: this.#auditFailures }]));
    r.registerMetric(computed('crypt_connections_active', 'open connections, by transport', 'gauge', async () => Promise.all([...sources.connections].map(async ([transport, count]) => ({ labels: { transport }, value: await count() })))));
    r.registerMetric(computed('crypt_keyring_reloads_total', 'keyring changes picked up from the file, by result (error: refused, the keys in force stay)', 'counter', () => [{ labels: { result: 'ok' }, value: this.#reloads.ok }, { labels: { result: 'error' }, value: this.#reloads.error }]));
    r.registerMetric(computed('crypt_key_versions', 'key versions by state, all named keys together', 'gauge', () => [...this.#facts().states].map(([state, value]) => ({ labels: { state }, value })), 'first'));
    r.registerMetric(computed('crypt_named_keys', 'named keys', 'gauge', () => [{ labels: {}, value: this.#facts().named }], 'first'));
    r.registerMetric(computed('crypt_primary_key_age_seconds', "age of a primary version: of the key default, and the oldest of all keys' (rotation overdue?)", 'gauge', () => {
      const f = this.#facts();
      const now = Date.now();
      return [
        ...(f.defaultCreated === null ? [] : [{ labels: { key: 'default' }, value: Math.round((now - f.defaultCreated) / 1000) }]),
        ...(f.oldestCreated === null ? [] : [{ labels: { key: 'oldest' }, value: Math.round((now - f.oldestCreated) / 1000) }]),
      ];
    }, 'max'));
    r.registerMetric(computed('crypt_pool_queue_depth', 'large-payload jobs waiting or running on the crypto threads', 'gauge', () => [{ labels: {}, value: (sources.pool?.stats() ?? []).reduce((n, t) => n + t.queued, 0) }]));
    r.registerMetric(computed('crypt_pool_thread_jobs_total', 'jobs each crypto thread has finished', 'counter', () => (sources.pool?.stats() ?? []).map((t) => ({ labels: { thread: t.thread }, value: t.done }))));
    r.registerMetric(computed('crypt_pool_thread_utilization', "each crypto thread's event-loop utilization since it started (0 to 1)", 'gauge', () => (sources.pool?.stats() ?? []).map((t) => ({ labels: { thread: t.thread }, value: t.utilization })), 'average'));
  }

  /** Counts a failed audit write (the audit log's onWriteFailure). */
  auditWriteFailure(): void {
    this.#auditFailures++;
  }

  /** The text format of every metric. */
  text(): Promise<string> {
    return this.registry.metrics();
  }

  #count(r: DispatchRecord): void {
    const key = r.key ?? '';
    let keyId = r.keyId ?? '';
    let list = this.#cells.get(keyId);
    if (list === undefined && this.#cellCount >= MAX_CELLS) list = this.#cells.get((keyId = 'other'));
    if (list === undefined) this.#cells.set(keyId, (list = []));
    let cell: Cell | undefined;
    for (const c of list) {
      if (c.op === r.op && c.transport === r.transport && c.outcome === r.outcome && c.key === key) {
        cell = c;
        break;
      }
    }
    if (cell === undefined) {
      cell = { op: r.op, transport: r.transport, outcome: r.outcome, key, keyId, count: 0, durations: new Float64Array(DURATION_BUCKETS.length + 1), durationSum: 0, sizes: new Float64Array(SIZE_BUCKETS.length + 1), sizeSum: 0 };
      list.push(cell);
      this.#cellCount++;
    }
    cell.count++;
    const seconds = r.durationMs / 1000;
    cell.durationSum += seconds;
    let i = 0;
    while (i < DURATION_BUCKETS.length && seconds > DURATION_BUCKETS[i]!) i++;
    cell.durations[i]!++;
    cell.sizeSum += r.bytesIn;
    let j = 0;
    while (j < SIZE_BUCKETS.length && r.bytesIn > SIZE_BUCKETS[j]!) j++;
    cell.sizes[j]!++;
    if (r.outcome === 'unauthorized') this.#authFailures.set(r.transport, (this.#authFailures.get(r.transport) ?? 0) + 1);
    else if (r.outcome === 'rate_limited') this.#rateLimited.set(r.transport, (this.#rateLimited.get(r.transport) ?? 0) + 1);
  }

  /** Facts of the keys in force, computed once per book (a change is a new book). */
  #facts(): KeyFacts {
    const book = this.#sources.keyring.book;
    if (this.#keyFacts?.book === book) return this.#keyFacts;
    const states = new Map<string, number>([['primary', 0], ['active', 0], ['retired', 0]]);
    let oldest: number | null = null;
    let ofDefault: number | null = null;
    for (const set of book.keys()) {
      for (const v of set.info()) {
        states.set(v.state, (states.get(v.state) ?? 0) + 1);
        if (v.state === 'primary' && v.created) {
          const t = Date.parse(v.created);
          if (oldest === null || t < oldest) oldest = t;
          if (set.name === 'default') ofDefault = t;
        }
      }
    }
    this.#keyFacts = { book, states, named: book.size, defaultCreated: ofDefault, oldestCreated: oldest };
    return this.#keyFacts;
  }
}

function byTransport(counts: Map<string, number>): Values {
  return ['tcp', 'http'].map((transport) => ({ labels: { transport }, value: counts.get(transport) ?? 0 }));
}

/** Sums cells that share the labels `labelsOf` picks. */
function sum(cells: Cell[], labelsOf: (c: Cell) => Labels, valueOf: (c: Cell) => number): Values {
  const out = new Map<string, { labels: Labels; value: number }>();
  for (const c of cells) {
    const labels = labelsOf(c);
    const id = JSON.stringify(labels);
    const v = out.get(id);
    if (v) v.value += valueOf(c);
    else out.set(id, { labels, value: valueOf(c) });
  }
  return [...out.values()];
}

/** A histogram's _bucket (cumulative), _sum and _count lines, summed over cells that share labels. */
function histogram(name: string, cells: Cell[], labelsOf: (c: Cell) => Labels, bounds: number[], bucketsOf: (c: Cell) => Float64Array, sumOf: (c: Cell) => number, countOf: (c: Cell) => number): Values {
  const groups = new Map<string, { labels: Labels; buckets: Float64Array; sum: number; count: number }>();
  for (const c of cells) {
    const labels = labelsOf(c);
    const id = JSON.stringify(labels);
    let g = groups.get(id);
    if (!g) groups.set(id, (g = { labels, buckets: new Float64Array(bounds.length + 1), sum: 0, count: 0 }));
    const b = bucketsOf(c);
    for (let i = 0; i < b.length; i++) g.buckets[i]! += b[i]!;
    g.sum += sumOf(c);
    g.count += countOf(c);
  }
  const out: Values = [];
  for (const g of groups.values()) {
    let cumulative = 0;
    bounds.forEach((le, i) => {
      cumulative += g.buckets[i]!;
      out.push({ metricName: `${name}_bucket`, labels: { ...g.labels, le }, value: cumulative });
    });
    out.push({ metricName: `${name}_bucket`, labels: { ...g.labels, le: '+Inf' }, value: g.count });
    out.push({ metricName: `${name}_sum`, labels: g.labels, value: g.sum });
    out.push({ metricName: `${name}_count`, labels: g.labels, value: g.count });
  }
  return out;
}

/** In a cluster worker: lets the primary's AggregatorRegistry read this registry. */
export function shareWithPrimary(metrics: Metrics): void {
  // prom-client answers the primary's requests once an AggregatorRegistry exists in the worker
  void new AggregatorRegistry();
  AggregatorRegistry.setRegistries([metrics.registry]);
}

/** The primary's view of every worker's metrics. */
export function clusterMetrics(): () => Promise<string> {
  const aggregator = new AggregatorRegistry();
  return () => aggregator.clusterMetrics();
}

/** The content type of the text format. */
export const METRICS_CONTENT_TYPE = new Registry().contentType;

/** Serves GET /metrics alone on its own port (--metrics-port); resolves once listening. */
export async function serveMetrics(port: number, host: string, scrape: () => Promise<string>, log: Logger): Promise<Server> {
  const server = createServer((req, res) => {
    if (req.method !== 'GET' || (req.url ?? '').split('?')[0] !== '/metrics') {
      res.writeHead(404, { 'content-type': 'text/plain; charset=utf-8' }).end('crypt metrics: GET /metrics\n');
      return;
    }
    scrape().then(
      (text) => res.writeHead(200, { 'content-type': METRICS_CONTENT_TYPE }).end(text),
      (err: Error) => {
        log.error({ reason: err.message }, 'metrics scrape failed');
        res.writeHead(503, { 'content-type': 'text/plain; charset=utf-8' }).end('metrics unavailable: the server log says why\n');
      },
    );
  });
  server.requestTimeout = 10_000;
  server.headersTimeout = 10_000;
  server.keepAliveTimeout = 5_000;
  server.maxConnections = 64;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  return server;
}

/** The message a worker sends to ask for every worker's metrics, and the primary's answer. */
export const METRICS_REQUEST = 'crypt:metrics';
const ASK_TIMEOUT_MS = 10_000;
let asked = 0;

/** In a cluster worker: every worker's metrics, from the primary (GET /metrics on a shared port). */
export function askPrimary(): Promise<string> {
  const id = ++asked;
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      process.off('message', onMessage);
      reject(new Error(`the primary did not answer for metrics within ${ASK_TIMEOUT_MS / 1000} s`));
    }, ASK_TIMEOUT_MS);
    const onMessage = (msg: unknown): void => {
      const m = msg as { type?: unknown; id?: unknown; text?: unknown; error?: unknown } | null;
      if (m?.type !== METRICS_REQUEST || m.id !== id) return;
      clearTimeout(timer);
      process.off('message', onMessage);
      if (typeof m.text === 'string') resolve(m.text);
      else reject(new Error(typeof m.error === 'string' ? m.error : 'no metrics'));
    };
    process.on('message', onMessage);
    process.send!({ type: METRICS_REQUEST, id });
  });
}
