/**
 * The HTTP transport: Fastify over the same dispatcher as TCP, made of four plugins: errors,
 * limits, auth and routes (in that order: the rate limit counts a request before
 * authentication runs), plus the OpenAPI document at /openapi.json and a page at /docs.
 *
 * Rule: request logs go through the dispatcher's records (debug level), with no body, no token
 * and no Authorization header. Fastify gets no logger of its own: it would make a child logger per
 * request (a measurable cost) only to log what the dispatcher already does.
 */
import Fastify from 'fastify';
import type { FastifyInstance, FastifyReply, FastifyRequest, FastifySchema } from 'fastify';
import swagger from '@fastify/swagger';
import swaggerUi from '@fastify/swagger-ui';
import type { AddressInfo } from 'node:net';
import type { Server as TlsServer } from 'node:tls';
import type { Logger } from 'pino';
import { CryptError } from '../../core/errors.js';
import type { Dispatcher } from '../../core/dispatcher.js';
import { VERSION } from '../../core/version.js';
import { secureContextOptions, tlsServerOptions } from '../listen.js';
import type { ListenOptions, TlsMaterial } from '../listen.js';
import { RAW_TYPES, errorBody, errorsPlugin } from './errors.js';
import { authPlugin } from './auth.js';
import { jsonLimitOf, limitsPlugin, rawLimitOf } from './limits.js';
import { routesPlugin } from './routes.js';
import { streamsPlugin } from './streams.js';
import { errorSchema } from './schemas.js';

/** The HTTP listener's settings. */
export interface HttpOptions extends ListenOptions {
  /** Requests per second per address; 0 for no limit. */
  rateLimit: number;
  maxBatch: number;
  /** Host names served besides loopback and the listener's address; `*` for any. */
  allowedHosts: readonly string[];
  /** Prometheus metrics in the text format, for GET /metrics (admin or loopback); none when absent. */
  metrics?: (() => Promise<string>) | null;
}

const REQUEST_ID = /^[A-Za-z0-9._:-]{1,64}$/;
let requestSeq = 0;
/** A request's id: its x-request-id when that is safe to log and echo, else `h` and a number of this process. */
function requestId(req: { headers: Record<string, string | string[] | undefined> }): string {
  const given = req.headers['x-request-id'];
  return typeof given === 'string' && REQUEST_ID.test(given) ? given : `h${(++requestSeq).toString(36)}`;
}

/** Builds the Fastify app (not listening): used by listenHttp() and by inject() tests. */
export async function buildHttp(dispatcher: Dispatcher, options: HttpOptions, log: Logger): Promise<FastifyInstance> {
  const jsonLimit = jsonLimitOf(dispatcher);
  void log;
  const app = Fastify({
    bodyLimit: jsonLimit,
    ...(options.tls ? { https: tlsServerOptions(options.tls, options.handshakeTimeoutMs) } : {}),
    // an idle keep-alive connection closes after keepAliveTimeout; one that never completes a
    // request, after Node's headersTimeout and requestTimeout (408): no per-socket timer is needed
    keepAliveTimeout: options.idleTimeoutMs > 0 ? Math.min(options.idleTimeoutMs, 72_000) : 72_000,
    // no limit on a whole request: streams (se, sd) take their time; other bodies are collected
    // within BODY_DEADLINE_MS (limits.ts), and stream bodies may not stall (streams.ts)
    requestTimeout: 0,
    return503OnClosing: true,
    // x-request-id: the caller's when it is a plain token of at most 64 characters (it goes into
    // the log and back in the reply), else one of ours
    requestIdHeader: false,
    genReqId: requestId,
    ajv: { customOptions: { coerceTypes: false, removeAdditional: false, strictTypes: false } },
    frameworkErrors: (_err, _req, reply) => {
      void (reply as unknown as FastifyReply).code(400).send({ error: errorBody(new CryptError('bad_request', 'malformed URL')) });
    },
  }) as unknown as FastifyInstance;

  app.addSchema(errorSchema);
  const limitOf = (req: FastifyRequest): number =>
    (req.headers['content-type'] ?? '').startsWith('application/json') ? jsonLimit : req.routeOptions.url === '/encrypt' ? dispatcher.maxMessage : rawLimitOf(dispatcher);
  await app.register(errorsPlugin, { dispatcher, limitOf });
  await app.register(limitsPlugin, { dispatcher, limits: { maxConnections: options.maxConnections, maxPerAddress: options.maxPerAddress, rateLimit: options.rateLimit, tls: Boolean(options.tls) } });
  await app.register(authPlugin, { dispatcher, hosts: { allowedHosts: options.allowedHosts, bind: options.host } });
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
  await app.register(routesPlugin, { dispatcher, maxBatch: options.maxBatch });
  await app.register(streamsPlugin, { dispatcher });
  app.get('/openapi.json', { schema: { hide: true } }, async () => app.swagger());
  const metrics = options.metrics;
  if (metrics) {
    // what Prometheus scrapes: admin, or loopback without access tokens (as key management); not rate limited
    app.get('/metrics', { schema: { hide: true }, config: { rateLimit: false } }, async (req, reply) => {
      dispatcher.policy.requireRole([], 'GET /metrics', req.caller);
      const text = await metrics().catch((err: unknown) => {
        throw new CryptError('unavailable', 'metrics could not be gathered; the server log says why', { cause: err });
      });
      return reply.type('text/plain; version=0.0.4; charset=utf-8').send(text);
    });
  }
  return app;
}

/** A listening HTTP server. */
export interface HttpServer {
  app: FastifyInstance;
  address: AddressInfo;
  /** Puts new TLS material in force for new connections. */
  setTls(material: TlsMaterial): void;
  close(): Promise<void>;
}

/** Builds the app and listens. */
export async function listenHttp(dispatcher: Dispatcher, options: HttpOptions, log: Logger): Promise<HttpServer> {
  const app = await buildHttp(dispatcher, options, log);
  await app.ready();
  // listening on the server itself: Fastify's listen() would log a line of its own per address
  await new Promise<void>((resolve, reject) => {
    app.server.once('error', reject);
    app.server.listen(options.port, options.host, () => {
      app.server.off('error', reject);
      resolve();
    });
  });
  return {
    app,
    address: app.server.address() as AddressInfo,
    setTls: (material) => (app.server as unknown as TlsServer).setSecureContext(secureContextOptions(material)),
    close: () => app.close(),
  };
}
