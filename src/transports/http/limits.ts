/**
 * The HTTP limits plugin: connections, request rate, and body sizes.
 *
 * Rules:
 * - A connection past `--max-connections` or `--max-per-address` is answered 503 `busy` and
 *   closed at accept (over TLS: closed), so idle excess sockets can't pile up.
 * - The rate limit counts requests per peer address, before authentication runs: varying the
 *   Authorization header buys nothing, and wrong-token guesses are counted like any request.
 * - Raw bodies are bounded by the token of a largest message; JSON bodies by about 4/3 of it plus
 *   64 KiB (base64 and batch overhead).
 * - Each request with a body charges the memory budget three times its length (the body, what it
 *   parses into, and the result) until its response is sent; past the budget, a request gets
 *   503 `busy` before its body is read.
 */
import fp from 'fastify-plugin';
import rateLimit from '@fastify/rate-limit';
import type { FastifyInstance } from 'fastify';
import type { Socket } from 'node:net';
import { CryptError } from '../../core/errors.js';
import type { Dispatcher } from '../../core/dispatcher.js';
import { AddressCounter } from '../listen.js';
import { RAW_TYPES, errorBody } from './errors.js';

/** The HTTP limits. */
export interface HttpLimits {
  maxConnections: number;
  maxPerAddress: number;
  /** Requests per second per address; 0 for no limit. */
  rateLimit: number;
  tls: boolean;
}

/** The largest raw body: the token of a largest message, and a line break. */
export const rawLimitOf = (dispatcher: Dispatcher): number => dispatcher.maxToken + 2;
/** The largest JSON body. */
export const jsonLimitOf = (dispatcher: Dispatcher): number => Math.ceil((dispatcher.maxToken * 4) / 3) + 64 * 1024;

function busyResponse(message: string): string {
  const body = JSON.stringify({ error: errorBody(new CryptError('busy', message)) });
  return `HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json; charset=utf-8\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`;
}

/** Registers the connection limits, the rate limit and the raw body parser. */
export const limitsPlugin = fp<{ dispatcher: Dispatcher; limits: HttpLimits }>(async (app: FastifyInstance, { dispatcher, limits }) => {
  const perAddress = new AddressCounter(limits.maxPerAddress);
  let open = 0;
  app.server.prependListener('connection', (socket: Socket) => {
    const peer = socket.remoteAddress ?? '';
    const full = open >= limits.maxConnections;
    if (full || !perAddress.add(peer)) {
      app.log.warn({ peer, limit: full ? limits.maxConnections : limits.maxPerAddress }, full ? 'http connection refused: too many connections' : 'http connection refused: too many connections from this address');
      socket.on('error', () => undefined);
      if (limits.tls) socket.destroy();
      else socket.end(busyResponse(full ? 'too many connections, try again later' : 'too many connections from this address, try again later'), () => socket.destroy());
      return;
    }
    open++;
    socket.once('close', () => {
      open--;
      perAddress.remove(peer);
    });
  });

  const budget = dispatcher.budget;
  const charged = new WeakMap<object, number>();
  const giveBack = (req: object): void => {
    const n = charged.get(req);
    if (n === undefined) return;
    charged.delete(req);
    budget.adjust(-n);
  };
  app.addHook('onRequest', (req, reply, done) => {
    const declared = Number(req.headers['content-length'] ?? (req.headers['transfer-encoding'] ? jsonLimitOf(dispatcher) : 0));
    if (!(declared > 0)) return done();
    if (budget.exhausted) {
      reply.header('connection', 'close');
      return done(new CryptError('busy', 'the server is busy: the payload bytes it may hold (--memory-budget) are in use; retry shortly'));
    }
    const n = Math.min(declared, jsonLimitOf(dispatcher)) * 3;
    charged.set(req, n);
    budget.adjust(n);
    done();
  });
  app.addHook('onResponse', (req, _reply, done) => {
    giveBack(req);
    done();
  });
  app.addHook('onRequestAbort', (req, done) => {
    giveBack(req);
    done();
  });

  if (limits.rateLimit > 0) {
    await app.register(rateLimit, {
      max: limits.rateLimit,
      timeWindow: 1000,
      hook: 'onRequest',
      keyGenerator: (req) => req.socket.remoteAddress ?? '',
      errorResponseBuilder: (_req, ctx) => new CryptError('rate_limited', `too many requests from this address: at most ${ctx.max} per second; retry after ${Math.ceil(ctx.ttl / 1000)} s`),
    });
  }

  app.removeContentTypeParser('text/plain');
  app.addContentTypeParser(RAW_TYPES, { parseAs: 'buffer', bodyLimit: rawLimitOf(dispatcher) }, (_req, body, done) => done(null, body));
});
