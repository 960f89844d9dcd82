/**
 * The HTTP limits plugin: connections, request rate, and body sizes.
 *
 * Rules:
 * - A connection past `--max-connections` or `--max-per-address` is answered 503 `busy` and
 *   closed at accept (over TLS: closed), so idle excess sockets can't pile up.
 * - The rate limit counts requests per peer address, before authentication runs: varying the
 *   Authorization header buys nothing, and wrong-token guesses are counted like any request.
 * - Raw bodies are bounded by the token of a largest message; JSON bodies by about 4/3 of it plus
 *   64 KiB (base64 and batch overhead). Bodies are collected into one buffer that grows with what
 *   arrives (src/wire/frames.ts' Collector), so a body sent one byte per segment costs its bytes,
 *   not a Buffer object per segment as Fastify's own collection would.
 * - A request's body charges the memory budget, as it arrives and until the response is done, for
 *   every copy of its payload the request makes (see JSON_CHARGE and RAW_CHARGE), but never more
 *   than half the budget: a request alone always fits, with its payload on a worker thread (the
 *   budget is at least 8 frames). A request is answered 503 `busy` and its connection closed
 *   before its body is read when the budget is used up or its declared length would not fit
 *   beside what others hold, and while it is read once the budget is used up.
 *   (admit() is called by the one per-request hook in auth.ts, after authentication: each hook
 *   Fastify runs is a measurable part of a small request's cost.)
 */
import fp from 'fastify-plugin';
import rateLimit from '@fastify/rate-limit';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { Socket } from 'node:net';
import type { Readable } from 'node:stream';
import { Collector } from '../../wire/frames.js';
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
      dispatcher.log.warn({ peer, limit: full ? limits.maxConnections : limits.maxPerAddress }, full ? 'http connection refused: too many connections' : 'http connection refused: too many connections from this address');
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

  if (limits.rateLimit > 0) {
    await app.register(rateLimit, {
      max: limits.rateLimit,
      timeWindow: 1000,
      hook: 'onRequest',
      keyGenerator: (req) => req.socket.remoteAddress ?? '',
      errorResponseBuilder: (_req, ctx) => (dispatcher.refused('http', 'rate_limited'), new CryptError('rate_limited', `too many requests from this address: at most ${ctx.max} per second; retry after ${Math.ceil(ctx.ttl / 1000)} s`)),
    });
  }

  const json = app.getDefaultJsonParser('error', 'error');
  app.removeContentTypeParser(['text/plain', 'application/json']);
  app.decorateRequest('bodyCharge', 0);
  app.addContentTypeParser(RAW_TYPES, (req, payload, done) => collectBody(req, payload, rawLimitOf(dispatcher), done, charger(dispatcher, req, RAW_CHARGE)));
  app.addContentTypeParser('application/json', (req, payload, done) =>
    collectBody(req, payload, jsonLimitOf(dispatcher), (err, body) => (err ? done(err, undefined) : json(req, body!.toString('utf8'), done)), charger(dispatcher, req, JSON_CHARGE)),
  );
});

declare module 'fastify' {
  interface FastifyRequest {
    /** Bytes of this request's body charged to the memory budget so far. */
    bodyCharge: number;
  }
}

const busy = (): CryptError => new CryptError('busy', 'the server is busy: the payload bytes it may hold (--memory-budget) are in use; retry shortly', { close: true });

/**
 * What a JSON body is charged per byte: the body, its text, what it parses into, the input bytes,
 * and for a result as large (a token is 4/3 of its message) the result, its JSON text, the copy
 * written out and the socket's copy of that. V8 frees the strings among these only in its next
 * collections, so they are charged for the whole request, as if all held at once.
 */
const JSON_CHARGE = 8;
/** What a raw body is charged per byte: the body, and the result, its line and the socket's copy. */
const RAW_CHARGE = 5;

const chargeOf = (req: FastifyRequest): number => ((req.headers['content-type'] ?? '').startsWith('application/json') ? JSON_CHARGE : RAW_CHARGE);

/**
 * Admits a request with a body under the memory budget: busy when the budget is used up, or when
 * its declared length, charged, would not fit beside what others hold; else what its body will be
 * charged (as it arrives, in collectBody) is given back when the response is done. Requests
 * without a body are not charged.
 */
export function admit(dispatcher: Dispatcher, req: FastifyRequest, reply: FastifyReply): CryptError | null {
  const length = req.headers['content-length'];
  if (length === undefined && req.headers['transfer-encoding'] === undefined) return null;
  const budget = dispatcher.budget;
  if (budget.exhausted) return busy();
  // a declared length over the body limit is answered too_large by the parser, not busy here
  const declared = Math.min(Number(length) || 0, jsonLimitOf(dispatcher));
  if (budget.used + Math.min(declared * chargeOf(req), budget.limit / 2) > budget.limit) return busy();
  req.bodyCharge = 0;
  reply.raw.once('close', () => {
    budget.adjust(-req.bodyCharge);
    req.bodyCharge = 0;
  });
  return null;
}

/** A charge function for collectBody: `per` times each chunk, up to half the budget in all. */
function charger(dispatcher: Dispatcher, req: FastifyRequest, per: number): (bytes: number) => CryptError | null {
  const budget = dispatcher.budget;
  return (bytes) => {
    const n = Math.min(bytes * per, budget.limit / 2 - req.bodyCharge);
    req.bodyCharge += n;
    budget.adjust(n);
    return budget.exhausted ? busy() : null;
  };
}

/** Reads a request body into one buffer, bounded by limit and checked against its Content-Length. */
/** The longest a request body (not a stream's) may take to arrive whole. */
export const BODY_DEADLINE_MS = 60_000;

export function collectBody(req: FastifyRequest, payload: Readable, limit: number, done: (err: Error | null, body?: Buffer) => void, charge: (bytes: number) => CryptError | null = () => null): void {
  const declared = req.headers['content-length'] === undefined ? NaN : Number(req.headers['content-length']);
  if (declared > limit) return done(new CryptError('too_large', `request body exceeds the limit of ${limit} bytes`));
  const bytes = new Collector();
  const cap = Number.isNaN(declared) ? limit : declared;
  const deadline = setTimeout(() => finish(new CryptError('timeout', `the request body did not arrive whole within ${BODY_DEADLINE_MS / 1000} s`)), BODY_DEADLINE_MS);
  const finish = (err: Error | null, body?: Buffer): void => {
    clearTimeout(deadline);
    payload.off('data', onData);
    payload.off('end', onEnd);
    payload.off('error', onError);
    done(err, body);
  };
  const onData = (chunk: Buffer): void => {
    bytes.add(chunk, cap);
    if (bytes.size > limit) return finish(new CryptError('too_large', `request body exceeds the limit of ${limit} bytes`));
    const refused = charge(chunk.length);
    if (refused) finish(refused);
  };
  const onEnd = (): void => {
    if (!Number.isNaN(declared) && bytes.size !== declared) return finish(new CryptError('bad_request', 'the Content-Length does not match the body'));
    finish(null, bytes.take());
  };
  const onError = (err: Error): void => finish(new CryptError('bad_request', `the body could not be read (${(err as NodeJS.ErrnoException).code ?? 'aborted'})`));
  payload.on('data', onData);
  payload.on('end', onEnd);
  payload.on('error', onError);
}
