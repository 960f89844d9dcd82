/**
 * The HTTP auth plugin: who is calling, from which page, with which token.
 *
 * Rules:
 * - Browsers: a request whose Host does not name this listener is refused (DNS rebinding), and
 *   so is one a browser marks as coming from another page (an Origin other than this listener's
 *   own, `Sec-Fetch-Site: cross-site`): 403 before anything runs. Programs, which send neither Origin nor Sec-Fetch-Site, are not
 *   affected. Allowed hosts: loopback names and addresses, the listener's own address, and
 *   `--allowed-hosts` (`*` allows any).
 * - `Authorization: Bearer <token>` authenticates the request through the dispatcher (the same
 *   failure budget as TCP's `au`); the token is taken as the exact bytes sent. The role the
 *   route's operation needs is checked here, before the body is read.
 * - Then a request with a body is admitted under the memory budget (src/transports/http/limits.ts).
 */
import fp from 'fastify-plugin';
import { isIP } from 'node:net';
import type { FastifyInstance, FastifyRequest, onRequestHookHandler } from 'fastify';
import { CryptError } from '../../core/errors.js';
import { newCaller } from '../../core/access.js';
import type { Caller } from '../../core/access.js';
import type { Dispatcher } from '../../core/dispatcher.js';
import { admit } from './limits.js';
import { fastifyPath } from './routes.js';
import { OPERATIONS } from '../../core/operations.js';
import type { Operation } from '../../core/operations.js';

declare module 'fastify' {
  interface FastifyRequest {
    caller: Caller;
  }
}

/** Which hosts and origins a listener answers. */
export interface HostRules {
  /** Extra host names or addresses (lower case, no port); `*` allows any. */
  allowedHosts: readonly string[];
  /** The address the listener is bound to. */
  bind: string;
}

/** The host part of a Host header or URL authority, lower case, brackets kept for IPv6; null when malformed. */
function hostOf(authority: string): string | null {
  const m = /^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)(?::\d{1,5})?$/.exec(authority);
  return m ? m[1]!.toLowerCase() : null;
}

/** True for loopback names and addresses. */
function isLoopbackHost(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, '');
  if (h === 'localhost' || h.endsWith('.localhost') || h === '::1') return true;
  return isIP(h) === 4 && h.startsWith('127.');
}

/** A check of Host values under the rules above. */
function hostChecker(rules: HostRules): (host: string) => boolean {
  if (rules.allowedHosts.includes('*')) return () => true;
  const allowed = new Set(rules.allowedHosts.map((h) => h.toLowerCase()));
  const bind = rules.bind.toLowerCase();
  const wildcard = bind === '0.0.0.0' || bind === '::' || bind === '[::]';
  return (host) => {
    if (isLoopbackHost(host) || allowed.has(host)) return true;
    const bare = host.replace(/^\[|\]$/g, '');
    // an address literal is what a browser sends when the user typed an address: no rebinding
    return bare === bind.replace(/^\[|\]$/g, '') || (wildcard && isIP(bare) !== 0);
  };
}

/** Registers the browser checks and authentication as the first request hooks. */
export const authPlugin = fp<{ dispatcher: Dispatcher; hosts: HostRules }>(async (app: FastifyInstance, { dispatcher, hosts }) => {
  const allowedHost = hostChecker(hosts);
  app.decorateRequest('caller', null as unknown as Caller);
  // a callback hook, not an async one: no promise per request on the hot path
  const hookFor = (op: Operation | undefined): onRequestHookHandler => (req, reply, done) => {
    req.caller = newCaller('http', req.socket.remoteAddress);
    // the request id (the caller's x-request-id, or one of ours: see app.ts) goes back, errors included
    reply.header('x-request-id', req.id);
    const refusal = browserRefusal(req, allowedHost);
    if (refusal) return done(new CryptError('forbidden', refusal));
    const auth = req.headers.authorization;
    try {
      if (auth !== undefined) {
        const m = /^Bearer +(\S+) *$/i.exec(auth);
        if (!m) return done(new CryptError('unauthorized', 'the Authorization header must be: Bearer <token>'));
        // Node decodes header bytes as latin1: back to the exact bytes sent, as TCP takes them
        dispatcher.authenticate(req.caller, Buffer.from(m[1]!, 'latin1'), String(req.id));
      }
      // the role is checked before the body is read: a caller who may not run it sends it for nothing
      if (op) dispatcher.authorize(op, req.caller, String(req.id));
    } catch (err) {
      return done(err as Error);
    }
    const busy = admit(dispatcher, req, reply);
    if (busy) return done(busy);
    done();
  };
  const ops = new Map<string, Operation>(
    OPERATIONS.flatMap((o) => (o.http ? [o.http.path, ...(o.http.alias ? [o.http.alias] : [])].map((p) => [`${o.http!.method} ${fastifyPath(p)}`, o] as [string, Operation]) : [])),
  );
  // added to each route after the rate limit's own hook (also per route), so a request is
  // counted before its token is checked
  app.addHook('onRoute', (route) => {
    const method = Array.isArray(route.method) ? route.method[0] : route.method;
    const hook = hookFor(ops.get(`${method === 'HEAD' ? 'GET' : method} ${route.url}`));
    route.onRequest = [...(Array.isArray(route.onRequest) ? route.onRequest : route.onRequest ? [route.onRequest] : []), hook];
  });
});

function browserRefusal(req: FastifyRequest, allowedHost: (host: string) => boolean): string | null {
  const rawHost = req.headers.host;
  const host = rawHost === undefined ? null : hostOf(rawHost);
  if (rawHost !== undefined && (host === null || !allowedHost(host))) {
    return `the Host header names a host this server does not answer for (a web page's DNS rebinding looks like this): if it is yours, add it with --allowed-hosts`;
  }
  if (req.headers['sec-fetch-site'] === 'cross-site') return 'cross-site requests from web pages are refused';
  const origin = req.headers.origin;
  if (origin !== undefined) {
    // same origin only: crypt's own /docs page may call it, no other page may
    const m = /^https?:\/\/([^/]+)$/i.exec(origin);
    if (!m || m[1]!.toLowerCase() !== (rawHost ?? '').toLowerCase()) return 'requests from web pages of other origins are refused';
  }
  return null;
}
