/**
 * The HTTP transport: Fastify over the same CryptService as TCP.
 *
 * Rules:
 * - Every operation has a raw form (body in, bytes out), a JSON form and a JSON batch form.
 *   Raw bodies (text/plain, application/octet-stream, and the form encoding curl -d sends) are
 *   taken as bytes, never decoded.
 * - Errors are `{"error": {"code", "message"}}` with the catalogue's codes and statuses; a
 *   client's mistake is never a 500, and no response carries a stack.
 * - A batch answers item by item, in order; one failing item fails nothing else. The caller is
 *   authorized once for the whole batch, so a missing token is one 401, not n item errors.
 * - Request logs go through the shared pino logger at debug level, with no body, no token and no
 *   Authorization header.
 */
import Fastify, { LogController } from 'fastify';
import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest, FastifySchema } from 'fastify';
import swagger from '@fastify/swagger';
import swaggerUi from '@fastify/swagger-ui';
import rateLimit from '@fastify/rate-limit';
import { createHash } from 'node:crypto';
import { isUtf8 } from 'node:buffer';
import type { Socket } from 'node:net';
import type { AddressInfo } from 'node:net';
import { CryptError, toCryptError } from './errors.js';
import { checkTtl } from './service.js';
import type { CryptService } from './service.js';
import type { Caller, Operation } from './access.js';
import { isLoopback } from './tcp.js';
import type { ListenOptions } from './tcp.js';
import { errorFields } from './log.js';
import type { Logger } from './log.js';
import { VERSION } from './version.js';

/** Listener settings: those of every listener, and HTTP's own. */
export interface HttpOptions extends ListenOptions {
  /** Requests per second per client; 0 for no limit. */
  rateLimit: number;
  maxBatch: number;
}

declare module 'fastify' {
  interface FastifyRequest {
    caller: Caller;
  }
}

const RAW_TYPES = ['text/plain', 'application/octet-stream', 'application/x-www-form-urlencoded'];
const ACCEPTED = `${RAW_TYPES.join(', ')} or application/json`;

const errorSchema = {
  $id: 'Error',
  type: 'object',
  properties: {
    error: {
      type: 'object',
      properties: { code: { type: 'string' }, message: { type: 'string' } },
      required: ['code', 'message'],
    },
  },
  required: ['error'],
} as const;
const errorRef = { $ref: 'Error#' };
const errors = (...statuses: number[]) => Object.fromEntries(statuses.map((s) => [s, errorRef]));
const itemError = { error: { type: 'object', properties: { code: { type: 'string' }, message: { type: 'string' } } } };
const ttlSchema = { type: 'integer', minimum: 0, description: 'refuse tokens older than this many seconds' };
const timestamp = { type: 'integer', description: "the token's creation time, seconds since the Unix epoch" };
const keyInfo = {
  type: 'object',
  properties: {
    id: { type: 'string' },
    state: { type: 'string', enum: ['primary', 'active', 'retired'] },
    created: { type: 'string', format: 'date-time', nullable: true },
  },
};

const tokenIn = (what: string) => ({
  type: 'object',
  additionalProperties: false,
  description: `{"token"} for one ${what}, or {"batch": [{"token"}, ...]}`,
  properties: {
    token: { type: 'string' },
    ttl: ttlSchema,
    batch: { type: 'array', description: 'items are checked one by one: a malformed item fails alone', items: { properties: { token: { type: 'string' }, ttl: ttlSchema } } },
  },
});

/** Responses of the routes that answer tokens: raw text, JSON, or a JSON batch. */
const tokenOut = (description: string) => ({
  200: {
    content: {
      'text/plain': { schema: { type: 'string', description } },
      'application/json': {
        schema: {
          type: 'object',
          properties: {
            token: { type: 'string' },
            batch: { type: 'array', items: { type: 'object', properties: { token: { type: 'string' }, ...itemError } } },
          },
        },
      },
    },
  },
  ...errors(400, 401, 403, 413, 415, 429),
});

/** Route schemas: validation for JSON bodies, and the OpenAPI document. */
const SCHEMAS: Record<string, FastifySchema> = {
  encrypt: {
    summary: 'Encrypt',
    description: 'Raw body in, token out (text/plain); or JSON {"plaintext"} / {"plaintext_base64"} in, {"token"} out; or {"batch": [...]}.',
    body: {
      content: {
        'application/json': {
          schema: {
            type: 'object',
            additionalProperties: false,
            properties: {
              plaintext: { type: 'string' },
              plaintext_base64: { type: 'string', contentEncoding: 'base64' },
              batch: { type: 'array', description: 'items are checked one by one: a malformed item fails alone', items: { properties: { plaintext: { type: 'string' }, plaintext_base64: { type: 'string' } } } },
            },
          },
        },
      },
    },
    response: tokenOut('the token'),
  },
  decrypt: {
    summary: 'Decrypt',
    description: 'Raw token in (?ttl=<seconds> optional), plaintext bytes out; or JSON {"token", "ttl"} in, {"plaintext" | "plaintext_base64", "timestamp"} out; or {"batch": [...]}.',
    querystring: { type: 'object', properties: { ttl: { type: 'string', pattern: '^[0-9]{1,15}$', description: 'raw form: refuse tokens older than this many seconds' } } },
    body: { content: { 'application/json': { schema: tokenIn('token') } } },
    response: {
      200: {
        content: {
          'text/plain': { schema: { type: 'string', description: 'the plaintext, when it is UTF-8' } },
          'application/octet-stream': { schema: { type: 'string', format: 'binary', description: 'the plaintext, when it is not UTF-8' } },
          'application/json': {
            schema: {
              type: 'object',
              properties: {
                plaintext: { type: 'string' },
                plaintext_base64: { type: 'string' },
                timestamp,
                batch: { type: 'array', items: { type: 'object', properties: { plaintext: { type: 'string' }, plaintext_base64: { type: 'string' }, timestamp, ...itemError } } },
              },
            },
          },
        },
      },
      ...errors(400, 401, 403, 413, 415, 429),
    },
  },
  key: {
    summary: 'The primary key (admin; loopback only without access tokens)',
    description: 'text/plain by default; {"key", "id"} with Accept: application/json.',
    response: {
      200: {
        content: {
          'text/plain': { schema: { type: 'string' } },
          'application/json': { schema: { type: 'object', properties: { key: { type: 'string' }, id: { type: 'string' } } } },
        },
      },
      ...errors(401, 403, 429),
    },
  },
  rewrap: {
    summary: 'Rewrap: re-encrypt under the primary key, keeping the timestamp',
    description: 'Raw token in, token out (text/plain); or JSON {"token"} in, {"token"} out; or {"batch": [...]}. The plaintext never leaves the server.',
    body: { content: { 'application/json': { schema: tokenIn('token to rewrap') } } },
    response: tokenOut('the new token'),
  },
  keys: {
    summary: 'Key metadata: ids, states and creation times, never key material',
    response: { 200: { type: 'object', properties: { keys: { type: 'array', items: keyInfo } } }, ...errors(401, 403, 429) },
  },
  rotate: {
    summary: 'Rotate: make a new primary key (admin)',
    description: 'New tokens use the new key; older tokens still decrypt. Other servers on the same keyring pick it up within 2 s.',
    response: { 200: keyInfo, ...errors(401, 403, 409, 429) },
  },
  health: {
    summary: 'Health check for load balancers',
    response: { 200: { type: 'object', properties: { status: { type: 'string' } } } },
  },
};

const METHODS = ['GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS'] as const;

/** Handler context shared by the routes. */
class Routes {
  constructor(readonly service: CryptService, readonly maxBatch: number) {}

  /**
   * Runs one operation per item of body.batch, in order; each item's failure stays in its item.
   * The body may hold nothing else but the keys in `shared` (settings for every item).
   */
  async batch<T>(req: FastifyRequest, op: Operation, body: Record<string, unknown>, shared: string[], one: (item: Record<string, unknown>) => Promise<T> | T): Promise<{ batch: Array<T | { error: { code: string; message: string } }> }> {
    this.service.policy.authorize(op, req.caller);
    if (Object.keys(body).some((k) => k !== 'batch' && !shared.includes(k))) {
      throw new CryptError('bad_request', `a batch request has "batch"${shared.map((k) => ` and "${k}"`).join('')} only`);
    }
    const items = body.batch;
    if (!Array.isArray(items)) throw new CryptError('bad_request', 'batch must be an array');
    if (items.length > this.maxBatch) throw new CryptError('too_large', `batch of ${items.length} items exceeds the limit of ${this.maxBatch}`);
    const out: Array<T | { error: { code: string; message: string } }> = [];
    for (const item of items) {
      try {
        if (typeof item !== 'object' || item === null || Array.isArray(item)) throw new CryptError('bad_request', 'each batch item must be an object');
        out.push(await one(item as Record<string, unknown>));
      } catch (err) {
        out.push({ error: errorBody(toCryptError(err)) });
      }
    }
    return { batch: out };
  }
}

/** The bytes of a JSON plaintext item: exactly one of plaintext or plaintext_base64. */
function plaintextOf(item: Record<string, unknown>): Buffer {
  const { plaintext, plaintext_base64: b64 } = item;
  const keys = Object.keys(item);
  if (keys.some((k) => k !== 'plaintext' && k !== 'plaintext_base64')) throw new CryptError('bad_request', 'expected "plaintext" or "plaintext_base64" only');
  if (typeof plaintext === 'string' && b64 === undefined) return Buffer.from(plaintext, 'utf8');
  if (typeof b64 === 'string' && plaintext === undefined) {
    if (b64.length % 4 !== 0 || !/^[A-Za-z0-9+/]*={0,2}$/.test(b64)) throw new CryptError('bad_request', 'plaintext_base64 is not valid base64');
    return Buffer.from(b64, 'base64');
  }
  throw new CryptError('bad_request', 'expected exactly one of "plaintext" (a string) or "plaintext_base64"');
}

/** The token of a JSON token item, and its ttl (the item's, else the request's). */
function tokenOf(item: Record<string, unknown>, fallbackTtl?: unknown): { token: string; ttl: number | undefined } {
  if (Object.keys(item).some((k) => k !== 'token' && k !== 'ttl')) throw new CryptError('bad_request', 'expected "token" and optionally "ttl" only');
  if (typeof item.token !== 'string') throw new CryptError('bad_request', 'expected "token" (a string)');
  return { token: item.token, ttl: checkTtl(item.ttl ?? fallbackTtl) };
}

/** A decrypted plaintext in JSON: as text when it is UTF-8, else as base64. */
const plaintextJson = (plaintext: Buffer, timestamp: number) =>
  isUtf8(plaintext) ? { plaintext: plaintext.toString('utf8'), timestamp } : { plaintext_base64: plaintext.toString('base64'), timestamp };

const errorBody = (e: CryptError) => ({ code: e.code, message: e.message });

/** The JSON body of a request; a request with no body at all gets a clear error. */
function jsonBody(req: FastifyRequest, what: string): Record<string, unknown> {
  if (req.body === undefined || req.body === null) throw new CryptError('bad_request', `send the ${what} as the request body, e.g. curl --data-binary @file`);
  return req.body as Record<string, unknown>;
}

/** A raw body holding a token (whitespace around it, as curl or a file may add, is dropped). */
const rawToken = (body: Buffer): string => body.toString('latin1').trim();

/** Maps anything a route or Fastify throws onto the catalogue. */
function httpError(err: FastifyError, limit: number): CryptError {
  if (err instanceof CryptError) return err;
  if (err.validation) return new CryptError('bad_request', err.message);
  switch (err.code) {
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return new CryptError('too_large', `request body exceeds the limit of ${limit} bytes`);
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return new CryptError('unsupported_media_type', `unsupported content type: send ${ACCEPTED}`);
    case 'FST_ERR_CTP_INVALID_JSON_BODY':
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
    case 'FST_ERR_CTP_INVALID_CONTENT_LENGTH':
      return new CryptError('bad_request', err.message);
    default:
      break;
  }
  const status = err.statusCode ?? 500;
  if (status === 404) return new CryptError('not_found');
  if (status === 413) return new CryptError('too_large');
  if (status === 415) return new CryptError('unsupported_media_type');
  if (status >= 400 && status < 500) return new CryptError('bad_request');
  return new CryptError('internal');
}

function usageHost(req: FastifyRequest): string {
  const host = req.headers.host ?? '';
  return /^[A-Za-z0-9.:[\]-]{1,255}$/.test(host) ? host : 'localhost:8080';
}

/** Builds the Fastify app (not listening): used by listen() and by inject() tests. */
export async function buildHttp(service: CryptService, options: HttpOptions, log: Logger): Promise<FastifyInstance> {
  const rawLimit = service.maxToken + 2;
  const jsonLimit = Math.ceil((service.maxToken * 4) / 3) + 64 * 1024;
  const app = Fastify({
    loggerInstance: log,
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: jsonLimit,
    ...(options.tls ? { https: { cert: options.tls.cert, key: options.tls.key, minVersion: 'TLSv1.2' as const, handshakeTimeout: options.handshakeTimeoutMs } } : {}),
    connectionTimeout: options.idleTimeoutMs,
    keepAliveTimeout: options.idleTimeoutMs > 0 ? Math.min(options.idleTimeoutMs, 72_000) : 72_000,
    requestTimeout: 60_000,
    return503OnClosing: true,
    // no coercion, no silent removal; strictTypes off because batch items declare properties
    // without type "object" on purpose: a non-object item must reach the handler and fail alone
    ajv: { customOptions: { coerceTypes: false, removeAdditional: false, strictTypes: false } },
    frameworkErrors: (_err, _req, reply) => {
      void (reply as unknown as FastifyReply).code(400).send({ error: errorBody(new CryptError('bad_request', 'malformed URL')) });
    },
  }) as unknown as FastifyInstance;

  app.addSchema(errorSchema);
  app.decorateRequest('caller', null as unknown as Caller);
  app.removeContentTypeParser('text/plain');
  app.addContentTypeParser(RAW_TYPES, { parseAs: 'buffer', bodyLimit: rawLimit }, (_req, body, done) => done(null, body));

  app.setErrorHandler((err: FastifyError, req, reply) => {
    const json = (req.headers['content-type'] ?? '').startsWith('application/json');
    const e = httpError(err, json ? jsonLimit : req.routeOptions.url === '/encrypt' ? service.maxMessage : rawLimit);
    if (e.code === 'internal') req.log.error({ url: req.routeOptions.url, err: errorFields(err), reason: err === e ? e.message : undefined }, 'internal error');
    if (e.code === 'unauthorized') reply.header('www-authenticate', 'Bearer');
    return reply.code(e.status).type('application/json; charset=utf-8').send({ error: errorBody(e) });
  });
  // the path is not repeated: a client may have put a token in it (GET /decrypt/<token>)
  app.setNotFoundHandler((req, reply) => reply.code(404).send({ error: errorBody(new CryptError('not_found', `no ${req.method} route at this path: the routes are listed at /docs`)) }));

  // the connection limit: connections past it get 503 on their requests, then close
  const excess = new WeakSet<Socket>();
  let open = 0;
  app.server.on(options.tls ? 'secureConnection' : 'connection', (socket: Socket) => {
    open++;
    if (open > options.maxConnections) excess.add(socket);
    socket.once('close', () => open--);
  });

  // callback hooks, not async ones: no promise per request on the hot path
  app.addHook('onRequest', (req, reply, done) => {
    if (excess.has(req.socket)) {
      log.warn({ remote: req.socket.remoteAddress, limit: options.maxConnections }, 'http connection refused: too many connections');
      reply.header('connection', 'close');
      return done(new CryptError('busy', 'too many connections, try again later'));
    }
    req.caller = { role: null, loopback: isLoopback(req.socket.remoteAddress) };
    const auth = req.headers.authorization;
    if (auth !== undefined) {
      const m = /^Bearer +(\S+)$/i.exec(auth);
      if (!m) return done(new CryptError('unauthorized', 'the Authorization header must be: Bearer <token>'));
      try {
        service.authenticate(req.caller, m[1]!);
      } catch (err) {
        return done(err as Error);
      }
    }
    done();
  });
  if (log.isLevelEnabled('debug')) {
    app.addHook('onResponse', (req, reply, done) => {
      log.debug({ method: req.method, route: req.routeOptions.url, status: reply.statusCode, ms: Math.round(reply.elapsedTime * 10) / 10 }, 'http request');
      done();
    });
  }

  await app.register(swagger, {
    openapi: {
      openapi: '3.0.3',
      info: { title: 'crypt', version: VERSION, description: 'Encryption as a service: Fernet tokens over HTTP. The same operations over TCP: docs/protocol.md.' },
      components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer', description: 'an access token from the tokens file' } } },
      security: [{ bearer: [] }],
    },
    transform: ({ schema, url }) => {
      // raw bodies are parsed as bytes and not validated; the document still lists them
      const body = (schema as { body?: { content?: Record<string, unknown> } } | undefined)?.body;
      if (!body?.content) return { schema, url };
      const raw = Object.fromEntries(RAW_TYPES.map((t) => [t, { schema: { type: 'string', format: 'binary' } }]));
      return { schema: { ...schema, body: { ...body, content: { ...raw, ...body.content } } } as FastifySchema, url };
    },
  });
  await app.register(swaggerUi, { routePrefix: '/docs' });
  if (options.rateLimit > 0) {
    await app.register(rateLimit, {
      max: options.rateLimit,
      timeWindow: 1000,
      keyGenerator: (req) => {
        const auth = req.headers.authorization;
        return auth ? createHash('sha256').update(auth).digest('base64') : req.ip;
      },
      errorResponseBuilder: (_req, ctx) => new CryptError('rate_limited', `too many requests: at most ${ctx.max} per second; retry after ${Math.ceil(ctx.ttl / 1000)} s`),
    });
  }

  const routes = new Routes(service, options.maxBatch);

  app.get('/', { schema: { hide: true } }, async () => ({
    service: 'crypt',
    version: VERSION,
    docs: '/docs',
    openapi: '/openapi.json',
    routes: ['POST /encrypt', 'POST /decrypt', 'POST /rewrap', 'GET /keys', 'POST /keys/rotate', 'GET /key', 'GET /health'],
  }));
  app.get('/openapi.json', { schema: { hide: true } }, async () => app.swagger());
  app.get('/health', { schema: SCHEMAS.health!, config: { rateLimit: false } }, async () => ({ status: 'ok' }));

  app.post('/encrypt', { schema: SCHEMAS.encrypt! }, async (req, reply) => {
    if (Buffer.isBuffer(req.body)) return reply.type('text/plain; charset=utf-8').send((await service.encrypt(req.caller, req.body)) + '\n');
    const body = jsonBody(req, 'message');
    if (body.batch !== undefined) return routes.batch(req, 'encrypt', body, [], async (item) => ({ token: await service.encrypt(req.caller, plaintextOf(item)) }));
    return { token: await service.encrypt(req.caller, plaintextOf(body)) };
  });

  app.post('/decrypt', { schema: SCHEMAS.decrypt! }, async (req, reply) => {
    if (Buffer.isBuffer(req.body)) {
      const query = req.query as { ttl?: string };
      const { plaintext } = await service.decrypt(req.caller, rawToken(req.body), query.ttl === undefined ? undefined : Number(query.ttl));
      return reply.type(isUtf8(plaintext) ? 'text/plain; charset=utf-8' : 'application/octet-stream').send(plaintext);
    }
    const body = jsonBody(req, 'token');
    if (body.batch !== undefined) {
      return routes.batch(req, 'decrypt', body, ['ttl'], async (item) => {
        const t = tokenOf(item, body.ttl);
        const { plaintext, timestamp } = await service.decrypt(req.caller, t.token, t.ttl);
        return plaintextJson(plaintext, timestamp);
      });
    }
    const t = tokenOf(body);
    const { plaintext, timestamp } = await service.decrypt(req.caller, t.token, t.ttl);
    return plaintextJson(plaintext, timestamp);
  });

  app.post('/rewrap', { schema: SCHEMAS.rewrap! }, async (req, reply) => {
    if (Buffer.isBuffer(req.body)) return reply.type('text/plain; charset=utf-8').send((await service.rewrap(req.caller, rawToken(req.body))) + '\n');
    const body = jsonBody(req, 'token');
    if (body.batch !== undefined) return routes.batch(req, 'rewrap', body, [], async (item) => ({ token: await service.rewrap(req.caller, tokenOf(item).token) }));
    return { token: await service.rewrap(req.caller, tokenOf(body).token) };
  });

  app.get('/keys', { schema: SCHEMAS.keys! }, async (req) => service.keyInfo(req.caller));
  app.post('/keys/rotate', { schema: SCHEMAS.rotate! }, async (req) => service.rotate(req.caller));

  app.get('/key', { schema: SCHEMAS.key! }, async (req, reply) => {
    const key = service.getKey(req.caller);
    if ((req.headers.accept ?? '').includes('application/json')) return reply.send({ key, id: service.keyring.current.primary.id });
    return reply.type('text/plain; charset=utf-8').send(key + '\n');
  });

  // every other method on a known route: 405 with Allow and a usage line
  const allowed: Record<string, { allow: string[]; usage: (host: string) => string }> = {
    '/encrypt': { allow: ['POST'], usage: (h) => `use POST: curl -d 'hello' http://${h}/encrypt` },
    '/decrypt': { allow: ['POST'], usage: (h) => `use POST: curl --data-binary @token.txt http://${h}/decrypt` },
    '/rewrap': { allow: ['POST'], usage: (h) => `use POST: curl --data-binary @token.txt http://${h}/rewrap` },
    '/keys/rotate': { allow: ['POST'], usage: (h) => `use POST: curl -X POST http://${h}/keys/rotate` },
    '/keys': { allow: ['GET', 'HEAD'], usage: (h) => `use GET: curl http://${h}/keys` },
    '/key': { allow: ['GET', 'HEAD'], usage: (h) => `use GET: curl http://${h}/key` },
    '/health': { allow: ['GET', 'HEAD'], usage: (h) => `use GET: curl http://${h}/health` },
  };
  for (const [url, { allow, usage }] of Object.entries(allowed)) {
    app.route({
      method: METHODS.filter((m) => !allow.includes(m)),
      url,
      schema: { hide: true },
      config: { rateLimit: false },
      handler: async (req, reply: FastifyReply) => {
        reply.header('allow', allow.join(', '));
        throw new CryptError('method_not_allowed', `${req.method} is not allowed here; ${usage(usageHost(req))}`);
      },
    });
  }
  return app;
}

/** A listening HTTP server. */
export interface HttpServer {
  app: FastifyInstance;
  address: AddressInfo;
  close(): Promise<void>;
}

/** Builds the app and listens. */
export async function listenHttp(service: CryptService, options: HttpOptions, log: Logger): Promise<HttpServer> {
  const app = await buildHttp(service, options, log);
  await app.listen({ host: options.host, port: options.port });
  return { app, address: app.server.address() as AddressInfo, close: () => app.close() };
}
