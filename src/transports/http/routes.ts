/**
 * The HTTP routes plugin: one route per operation of the table, with its 405 answers, plus the
 * index and /health.
 *
 * Rules:
 * - Every operation with a message or a token has a raw form (body in, bytes out), a JSON form
 *   and a JSON batch form. Raw bodies are taken as bytes, never decoded. Options come from the
 *   query string, from JSON fields, and for a batch from fields beside "batch" (defaults for
 *   every item).
 * - Every request goes through the dispatcher, every batch item too. A batch answers item by
 *   item, in order; one failing item (even a malformed one) fails nothing else. The caller is
 *   authorized once for the whole batch first, so a missing token is one 401, not n item errors.
 * - Validation messages name the field and what was expected.
 */
import fp from 'fastify-plugin';
import { isUtf8 } from 'node:buffer';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { CryptError } from '../../core/errors.js';
import { LIVENESS, OPERATIONS } from '../../core/operations.js';
import type { Operation, Payload, ResultKind, Results } from '../../core/operations.js';
import type { Dispatcher } from '../../core/dispatcher.js';
import { KEY_NAME } from '../../keys/keyring.js';
import { VERSION } from '../../core/version.js';
import { errorBody } from './errors.js';
import { INPUT_FIELDS, routeSchema } from './schemas.js';

const METHODS = ['GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS'] as const;
const EMPTY = Buffer.alloc(0);

/** A request's body as a JSON object; a missing body gets a clear error. */
function jsonObject(req: FastifyRequest, op: Operation): Record<string, unknown> {
  const body = req.body;
  if (body === undefined || body === null) {
    throw new CryptError('bad_request', `send the ${op.input} as the request body, e.g. curl ${op.input === 'message' ? "-d 'hello'" : '--data-binary @token.txt'} http://HOST${op.http!.path}`);
  }
  if (typeof body !== 'object' || Array.isArray(body)) throw new CryptError('bad_request', 'the JSON body must be an object');
  return body as Record<string, unknown>;
}

const quoted = (name: string): string => (/^[A-Za-z0-9_.-]{1,40}$/.test(name) ? `"${name}"` : 'a field');
const list = (names: readonly string[]): string => names.map((n) => `"${n}"`).join(' or ');

/** Standard or URL-safe base64, padded or not; null when it is neither. */
function decodeBase64(text: string): Buffer | null {
  const m = /^([A-Za-z0-9+/_-]*)(={0,2})$/.exec(text);
  if (!m) return null;
  const data = m[1]!;
  if (data.length % 4 === 1 || (m[2]!.length > 0 && text.length % 4 !== 0)) return null;
  return Buffer.from(data.replace(/-/g, '+').replace(/_/g, '/'), 'base64');
}

/** One JSON item: its input, its options (over the defaults) and the encoding asked for. */
interface Item {
  input: Payload;
  options: Record<string, unknown>;
  base64: boolean;
}

function itemOf(op: Operation, item: unknown, defaults: Record<string, unknown>): Item {
  if (typeof item !== 'object' || item === null || Array.isArray(item)) throw new CryptError('bad_request', 'each batch item must be a JSON object');
  const fields = INPUT_FIELDS[op.input];
  const options: Record<string, unknown> = { ...defaults };
  let base64 = defaults.encoding === 'base64';
  delete options.encoding;
  for (const [name, value] of Object.entries(item)) {
    if (fields.includes(name)) continue;
    if (op.options.has(name)) options[name] = value;
    else if (name === 'encoding' && op.result === 'plaintext') {
      if (value !== 'base64' && value !== 'auto') throw new CryptError('bad_request', '"encoding" must be "base64" or "auto"');
      base64 = value === 'base64';
    } else {
      const optional = [...op.options.keys(), ...(op.result === 'plaintext' ? ['encoding'] : [])];
      throw new CryptError('bad_request', `unknown field ${quoted(name)}: expected ${list(fields)}${optional.length ? ` and optionally ${list(optional)}` : ''}`);
    }
  }
  const record = item as Record<string, unknown>;
  if (op.input === 'message') {
    const { plaintext, plaintext_base64: b64 } = record;
    if (plaintext !== undefined && b64 !== undefined) throw new CryptError('bad_request', 'send "plaintext" or "plaintext_base64", not both');
    if (typeof plaintext === 'string') return { input: Buffer.from(plaintext, 'utf8'), options, base64 };
    if (typeof b64 === 'string') {
      const bytes = decodeBase64(b64);
      if (!bytes) throw new CryptError('bad_request', '"plaintext_base64" is not valid base64 (standard or URL-safe, padded or not)');
      return { input: bytes, options, base64 };
    }
    if (plaintext !== undefined || b64 !== undefined) throw new CryptError('bad_request', `"${plaintext !== undefined ? 'plaintext' : 'plaintext_base64'}" must be a string`);
    throw new CryptError('bad_request', 'expected "plaintext" (a string) or "plaintext_base64"');
  }
  if (op.input === 'token') {
    if (typeof record.token !== 'string') throw new CryptError('bad_request', record.token === undefined ? 'expected "token" (a string)' : '"token" must be a string');
    return { input: record.token, options, base64 };
  }
  return { input: EMPTY, options, base64 };
}

/** A plaintext in JSON: text when it is UTF-8 and base64 was not asked for, else base64. */
const plaintextJson = (r: Results['plaintext'], base64: boolean) =>
  !base64 && isUtf8(r.plaintext) ? { plaintext: r.plaintext.toString('utf8'), timestamp: r.timestamp } : { plaintext_base64: r.plaintext.toString('base64'), timestamp: r.timestamp };

/** A result in a JSON response or batch item. */
function jsonResult(op: Operation, result: Results[ResultKind], base64: boolean): object {
  switch (op.result) {
    case 'token': {
      const r = result as Results['token'];
      return r.previousKeyId ? { token: r.token, key_id: r.keyId, previous_key_id: r.previousKeyId } : { token: r.token, key_id: r.keyId };
    }
    case 'plaintext':
      return plaintextJson(result as Results['plaintext'], base64);
    case 'key': {
      const r = result as Results['key'];
      return { key: r.key, id: r.id };
    }
    default:
      return result;
  }
}

/** A result in a raw response: text, bytes, or JSON for JSON results. */
function sendRaw(op: Operation, result: Results[ResultKind], req: FastifyRequest, reply: FastifyReply) {
  switch (op.result) {
    case 'token':
      return reply.type('text/plain; charset=utf-8').send((result as Results['token']).token + '\n');
    case 'plaintext': {
      const { plaintext } = result as Results['plaintext'];
      return reply.type(isUtf8(plaintext) ? 'text/plain; charset=utf-8' : 'application/octet-stream').send(plaintext);
    }
    case 'key':
      if ((req.headers.accept ?? '').includes('application/json')) return reply.send(jsonResult(op, result, false));
      return reply.type('text/plain; charset=utf-8').send((result as Results['key']).key + '\n');
    default:
      return reply.send(result);
  }
}

/** Registers the routes. */
export const routesPlugin = fp<{ dispatcher: Dispatcher; maxBatch: number }>(async (app: FastifyInstance, { dispatcher, maxBatch }) => {
  const dispatch = (op: Operation, req: FastifyRequest, input: Payload, options: unknown) => dispatcher.dispatch(op, req.caller, input, options, String(req.id));
  const audit = dispatcher.audit;
  // no answer leaves before its audit line is written (src/core/audit.ts): one that may have lost it is refused
  const recorded = async (mark: number): Promise<void> => {
    if (audit === null) return;
    await audit.settled(audit.last);
    if (audit.failures !== mark) throw audit.unavailable();
  };
  const run = async (op: Operation, req: FastifyRequest, input: Payload, options: unknown) => {
    const mark = audit === null ? 0 : audit.failures;
    const result = await dispatch(op, req, input, options);
    await recorded(mark);
    return result;
  };

  // the role was checked by the route's hook (auth.ts) before the body was read; each item is dispatched, and checked, on its own
  async function batch(op: Operation, req: FastifyRequest, body: Record<string, unknown>, query: Record<string, unknown>) {
    const items = body.batch;
    if (!Array.isArray(items)) throw new CryptError('bad_request', '"batch" must be an array');
    if (items.length > maxBatch) throw new CryptError('too_large', `batch of ${items.length} items exceeds the limit of ${maxBatch} (--max-batch)`);
    const shared: Record<string, unknown> = { ...query };
    for (const [name, value] of Object.entries(body)) {
      if (name === 'batch') continue;
      if (!op.options.has(name) && !(name === 'encoding' && op.result === 'plaintext')) {
        const allowed = [...op.options.keys(), ...(op.result === 'plaintext' ? ['encoding'] : [])];
        throw new CryptError('bad_request', `a batch request has "batch"${allowed.map((k) => ` and "${k}"`).join('')} only; ${quoted(name)} belongs in the items`);
      }
      shared[name] = value;
    }
    const out: object[] = [];
    const mark = audit === null ? 0 : audit.failures;
    for (const raw of items) {
      try {
        const item = itemOf(op, raw, shared);
        out.push(jsonResult(op, await dispatch(op, req, item.input, item.options), item.base64));
      } catch (err) {
        out.push({ error: errorBody(dispatcher.renderError(err, req.caller, op.command, String(req.id))) });
      }
    }
    // the items' lines are written once, for the whole batch
    await recorded(mark);
    return { batch: out };
  }

  for (const op of OPERATIONS) {
    // streams have their own routes (streams.ts): their bodies are never collected
    if (!op.http || op.input === 'stream') continue;
    for (const path of [op.http.path, ...(op.http.alias ? [op.http.alias] : [])]) {
      app.route({
      method: op.http.method,
      url: fastifyPath(path),
      schema: path === op.http.path ? routeSchema(op) : { hide: true },
      // what anyone may run (GET /ready) is what load balancers poll: not rate limited
      ...(op.roles === null ? { config: { rateLimit: false } } : {}),
      // bodies are checked in code, item by item (see the rules above)
      validatorCompiler: () => () => true,
      handler: async (req, reply) => {
        // options from the query string, and the path's {key}
        const params = (req.params ?? {}) as Record<string, unknown>;
        const query = { ...((req.query ?? {}) as Record<string, unknown>), ...params };
        const body = req.body;
        if (Buffer.isBuffer(body) || op.input === 'none') {
          const fields = op.input === 'none' && body && typeof body === 'object' && !Buffer.isBuffer(body) ? itemOf(op, body, {}).options : null;
          // the key named in the path is the key: a body may repeat it, never change it
          if (fields && params.key !== undefined && (fields as { key?: unknown }).key !== undefined && (fields as { key?: unknown }).key !== params.key) {
            const named = typeof params.key === 'string' && KEY_NAME.test(params.key) ? `the key ${params.key}` : 'a key';
            throw new CryptError('bad_request', `the path names ${named}; a "key" in the body must be the same or left out`);
          }
          const options = fields ? { ...query, ...fields } : query;
          const result = await run(op, req, Buffer.isBuffer(body) ? body : EMPTY, options);
          if (op.status) reply.code(op.status(result));
          return sendRaw(op, result, req, reply);
        }
        const json = jsonObject(req, op);
        if (json.batch !== undefined) return batch(op, req, json, query);
        const item = itemOf(op, json, query);
        return jsonResult(op, await run(op, req, item.input, item.options), item.base64);
      },
      });
    }
  }

  app.get('/', { schema: { hide: true } }, async () => ({
    service: 'crypt',
    version: VERSION,
    docs: '/docs',
    openapi: '/openapi.json',
    routes: [...OPERATIONS.flatMap((o) => (o.http ? [`${o.http.method} ${o.http.path}`] : [])), 'GET /health'],
  }));
  // liveness: the process answers (readiness is hc, GET /ready, from the operations table)
  app.get('/health', { schema: { summary: "Liveness: the process answers; with the keyring's fingerprint and primary version", response: { 200: LIVENESS } }, config: { rateLimit: false } }, async () => dispatcher.service.health.live());

  // every other method on a known path: 405 with Allow and a usage line
  const paths = new Map<string, { allow: string[]; example: string }>();
  for (const op of OPERATIONS) {
    if (!op.http) continue;
    // an alias is a path of its own (GET /keys/rotate is 405, not the key named rotate)
    for (const path of [op.http.path, ...(op.http.alias ? [op.http.alias] : [])]) {
      const known = paths.get(path) ?? { allow: [], example: op.http.example };
      // a stream takes PUT too: what curl -T sends
      known.allow.push(...(op.http.method === 'GET' ? ['GET', 'HEAD'] : op.input === 'stream' ? ['POST', 'PUT'] : [op.http.method]));
      paths.set(path, known);
    }
  }
  paths.set('/health', { allow: ['GET', 'HEAD'], example: 'curl http://{host}/health' });
  for (const [path, { allow, example }] of paths) {
    app.route({
      method: METHODS.filter((m) => !allow.includes(m)),
      url: fastifyPath(path),
      schema: { hide: true },
      config: { rateLimit: false },
      handler: async (req, reply: FastifyReply) => {
        reply.header('allow', allow.join(', '));
        throw new CryptError('method_not_allowed', `${/^[A-Z]{1,10}$/.test(req.method) ? req.method : 'this method'} is not allowed here; use ${allow[0]}: ${example.replace('{host}', usageHost(req))}`);
      },
    });
  }
});

/** A table path (`/keys/{key}`) as Fastify writes it (`/keys/:key`). */
export const fastifyPath = (path: string): string => path.replace(/\{(\w+)\}/g, ':$1');

function usageHost(req: FastifyRequest): string {
  const host = req.headers.host ?? '';
  return /^[A-Za-z0-9.:[\]-]{1,255}$/.test(host) ? host : 'localhost:8080';
}
