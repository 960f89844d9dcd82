/**
 * HTTP with autocannon: 8 connections, each request chain an encrypt of a 100-byte message then a
 * decrypt of the token, checked against the message; beside the plain node:http baseline.
 */
import autocannon from 'autocannon';
import { message } from './load.js';

/** Requests per second, latencies in ms, and checked failures. */
export interface HttpResult {
  rps: number;
  p50: number;
  p99: number;
  errors: number;
}

export async function runHttp(port: number, seconds: number, connections = 8): Promise<HttpResult> {
  const msg = message(0, 100);
  let errors = 0;
  const run = (duration: number) =>
    autocannon({
      url: `http://127.0.0.1:${port}`,
      connections,
      pipelining: 1,
      duration,
      requests: [
        {
          method: 'POST',
          path: '/encrypt',
          headers: { 'content-type': 'text/plain' },
          body: msg,
          onResponse: (status: number, body: string, context: object) => {
            if (status !== 200) errors++;
            (context as { token?: string }).token = body.trim();
          },
        },
        {
          method: 'POST',
          path: '/decrypt',
          headers: { 'content-type': 'text/plain' },
          setupRequest: (req: autocannon.Request, context: object) => ({ ...req, body: String((context as { token?: string }).token) }),
          onResponse: (status: number, body: string) => {
            if (status !== 200 || body !== msg) errors++;
          },
        },
      ],
    });
  await run(1);
  errors = 0;
  const r = await run(seconds);
  return { rps: r.requests.average, p50: r.latency.p50, p99: r.latency.p99, errors: errors + r.errors + r.non2xx };
}
