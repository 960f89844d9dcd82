// Prometheus metrics as an operator scrapes them: counters that move with TCP and HTTP requests,
// the sub-millisecond buckets, auth and rate-limit counters, key and pool gauges, who may scrape
// (admin or loopback), --metrics-port and --no-metrics, every worker summed with --workers 2, and
// the dashboard and alert rules in docs/ using only metrics that exist.
import t from 'tap';
import { promises as fs, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { start, raw, tempDir } from '../helpers/server.js';
import { CLIENT_BIN, cleanEnv, runCli, spawnServer } from '../helpers/cli.js';
import { DURATION_BUCKETS } from '../../src/ops/metrics.js';

const USER = 'metrics-user-token-0123456789abcdef';
const ADMIN = 'metrics-admin-token-0123456789abcdef';

/** `name{labels} value` lines, as a map from the part before the value. */
function parse(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const at = line.lastIndexOf(' ');
    out.set(line.slice(0, at), Number(line.slice(at + 1)));
  }
  return out;
}
const names = (text: string): Set<string> => new Set([...text.matchAll(/^# TYPE (\S+) /gm)].map((m) => m[1]!));

t.test('counters move with TCP and HTTP requests; buckets from 100 us; who may scrape', async (t) => {
  const dir = tempDir(t);
  const tokensFile = join(dir, 'tokens');
  await fs.writeFile(tokensFile, `user ${USER}\nadmin ${ADMIN}\n`, { mode: 0o600 });
  const { server, port } = await start(t, { tokensFile, http: true, httpPort: 0, keyring: join(dir, 'keyring.json'), rateLimit: 3 });
  const base = `http://127.0.0.1:${server.http!.address.port}`;
  const scrape = async (token = ADMIN) => {
    const res = await fetch(`${base}/metrics`, { headers: { authorization: `Bearer ${token}` } });
    return { status: res.status, type: res.headers.get('content-type'), text: await res.text() };
  };

  const s = await raw(port);
  s.send(`#au#${USER}#\n#en#message-alpha#\n#en#message-beta#\n#de#bad#\n#au#wrong-token-000000000000#\n`);
  await s.replies(5);
  s.socket.destroy();
  await fetch(`${base}/encrypt`, { method: 'POST', body: 'x', headers: { authorization: `Bearer ${USER}` } });
  await fetch(`${base}/encrypt`, { method: 'POST', body: 'x', headers: { authorization: 'Bearer nope-nope-nope-nope-nope' } });

  const ok = await scrape();
  t.equal(ok.status, 200, 'an admin token may scrape');
  t.match(ok.type, /^text\/plain; version=0\.0\.4/, 'the Prometheus text format');
  const m = parse(ok.text);
  const primary = server.keyring.current.primary.id;
  t.equal(m.get('crypt_requests_total{op="en",transport="tcp",outcome="ok"}'), 2, 'TCP encrypts counted');
  t.equal(m.get('crypt_requests_total{op="de",transport="tcp",outcome="invalid_token"}'), 1, 'a failure counted by its code');
  t.equal(m.get('crypt_requests_total{op="en",transport="http",outcome="ok"}'), 1, 'HTTP counted with its transport');
  t.equal(m.get('crypt_auth_failures_total{transport="tcp"}'), 1, 'a failed #au#');
  t.equal(m.get('crypt_auth_failures_total{transport="http"}'), 1, 'a bad bearer token');
  t.equal(m.get(`crypt_key_operations_total{key="default",key_id="${primary}",op="en"}`), 3, 'encryptions under this key version');
  const buckets = [...m.keys()].filter((k) => k.startsWith('crypt_request_duration_seconds_bucket{op="en",transport="tcp"')).map((k) => /le="([^"]+)"/.exec(k)![1]);
  t.same(buckets, [...DURATION_BUCKETS.map(String), '+Inf'], 'latency buckets from 100 us to 1 s');
  t.equal(DURATION_BUCKETS[0], 0.0001, 'the first bucket is 100 us');
  t.equal(m.get('crypt_request_duration_seconds_count{op="en",transport="tcp"}'), 2, 'the histogram counts each request');
  t.equal(m.get('crypt_key_versions{state="primary"}'), 1, 'key versions by state');
  t.equal(m.get('crypt_named_keys'), 1, 'named keys');
  t.ok((m.get('crypt_primary_key_age_seconds{key="default"}') ?? -1) >= 0, 'the primary key age');
  t.ok(m.has('crypt_build_info{version="0.1.0",node="' + process.version + '"}'), 'build info');
  t.ok(m.has('process_cpu_user_seconds_total') && m.has('nodejs_heap_size_used_bytes'), "Node's default metrics");
  t.ok((m.get('crypt_connections_active{transport="http"}') ?? 0) >= 1, 'the scraping connection, at least, is open');
  t.notMatch(ok.text, new RegExp(`${USER}|${ADMIN}|message-alpha|message-beta`), 'no token, secret or message in a label');

  t.equal((await scrape(USER)).status, 403, 'a user token may not scrape');
  t.equal((await fetch(`${base}/metrics`)).status, 401, 'nor may a caller without a token, even on loopback, once tokens exist');
  for (let i = 0; i < 4; i++) await fetch(`${base}/keys`, { headers: { authorization: `Bearer ${USER}` } });
  t.ok((parse((await scrape()).text).get('crypt_rate_limited_total{transport="http"}') ?? 0) >= 1, 'the per-address rate limit counted; /metrics itself is not limited');
});

t.test('loopback without tokens may scrape; the pool threads; --no-metrics', async (t) => {
  const { server, port } = await start(t, { http: true, httpPort: 0 });
  const c = await (await import('../../src/client/client.js')).CryptClient.connect({ host: '127.0.0.1', port });
  t.teardown(() => c.close());
  await c.encrypt(Buffer.alloc(200_000, 1));
  const m = parse(await (await fetch(`http://127.0.0.1:${server.http!.address.port}/metrics`)).text());
  t.equal(m.get('crypt_pool_thread_jobs_total{thread="1"}'), 1, 'a large payload ran on crypto thread 1, counted');
  t.ok(m.has('crypt_pool_thread_utilization{thread="1"}') && m.has('crypt_pool_queue_depth'), "the thread's utilization and the queue depth");
  t.equal(m.get('crypt_request_size_bytes_bucket{op="en",le="262144"}'), 1, 'its size in the size histogram');
  const off = await start(t, { http: true, httpPort: 0, metrics: false });
  t.equal((await fetch(`http://127.0.0.1:${off.server.http!.address.port}/metrics`)).status, 404, '--no-metrics: no /metrics');
  t.equal(off.server.metrics, null, 'and nothing counted');
});

t.test('--metrics-port serves GET /metrics alone; --workers 2 sums every worker', async (t) => {
  const home = tempDir(t);
  const env = cleanEnv(home);
  const server = await spawnServer(t, ['--port', '0', '--http', '--http-port', '0', '--workers', '2', '--metrics-port', '0', '--keyring', join(home, 'keyring.json'), '--init', '--log-level', 'debug'], env);
  await server.waitFor(/"msg":"cluster started"/);
  const metricsPort = (JSON.parse(await server.waitFor(/"proto":"metrics"/)) as { port: number }).port;
  const pids = new Set(server.lines.filter((l) => l.includes('"msg":"listening"') && l.includes('"proto":"tcp"')).map((l) => (JSON.parse(l) as { pid: number }).pid));
  t.equal(pids.size, 2, 'two workers');
  // separate client processes: the kernel spreads their connections over both workers
  await Promise.all(Array.from({ length: 8 }, () => runCli(CLIENT_BIN, ['--port', String(server.port), 'en', 'x'], { env })));
  const alone = await fetch(`http://127.0.0.1:${metricsPort}/metrics`);
  const m = parse(await alone.text());
  t.equal(m.get('crypt_requests_total{op="en",transport="tcp",outcome="ok"}'), 8, 'the primary sums both workers: every request counted once');
  t.equal(m.get('crypt_named_keys'), 1, 'keyring facts taken once, not summed');
  t.equal((await fetch(`http://127.0.0.1:${metricsPort}/other`)).status, 404, 'nothing else on that port');
  const shared = parse(await (await fetch(`http://127.0.0.1:${server.httpPort}/metrics`)).text());
  t.equal(shared.get('crypt_requests_total{op="en",transport="tcp",outcome="ok"}'), 8, "a worker's GET /metrics answers for every worker too");
  server.child.kill('SIGTERM');
  t.same(await server.exited, { code: 0, signal: null }, 'a clean exit');
});

t.test('the Grafana dashboard and the alert rules use only metrics that exist', async (t) => {
  const { server } = await start(t, { http: true, httpPort: 0 });
  await fetch(`http://127.0.0.1:${server.http!.address.port}/encrypt`, { method: 'POST', body: 'x' });
  const exposed = names(await server.metrics!.text());
  const known = new Set([...exposed].flatMap((n) => [n, `${n}_bucket`, `${n}_sum`, `${n}_count`]));
  const dashboard = JSON.parse(readFileSync(new URL('../../docs/grafana-dashboard.json', import.meta.url), 'utf8')) as { panels: Array<{ title: string; targets?: Array<{ expr: string }> }> };
  const rules = readFileSync(new URL('../../docs/prometheus-alerts.yml', import.meta.url), 'utf8');
  const exprs = [...dashboard.panels.flatMap((p) => (p.targets ?? []).map((x) => x.expr)), ...[...rules.matchAll(/expr: (.+)/g)].map((m) => m[1]!)];
  t.ok(exprs.length >= 8, `${exprs.length} queries in all`);
  const used = new Set(exprs.flatMap((e) => [...e.matchAll(/\b(crypt_[a-z_]+|process_[a-z_]+|nodejs_[a-z_]+)\b/g)].map((m) => m[1]!)));
  for (const name of used) t.ok(known.has(name), `${name} exists`);
  t.ok(dashboard.panels.every((p) => typeof p.title === 'string'), 'every panel has a title');
});
