/**
 * The HTTP errors plugin: every error becomes `{"error": {"code", "message"}}` with the
 * catalogue's code and status, rendered by the dispatcher's renderError (which logs an
 * `internal` once). A client's mistake is never a 500, and no response carries a stack.
 */
import fp from 'fastify-plugin';
import type { FastifyError, FastifyInstance, FastifyRequest } from 'fastify';
import { CryptError } from '../../core/errors.js';
import type { Dispatcher } from '../../core/dispatcher.js';

/** The content types taken as raw bytes. */
export const RAW_TYPES = ['text/plain', 'application/octet-stream', 'application/x-www-form-urlencoded'];
const ACCEPTED = `${RAW_TYPES.join(', ')} or application/json`;

/** The JSON body of an error. */
export const errorBody = (e: CryptError): { code: string; message: string } => ({ code: e.code, message: e.message });

/** Maps anything a route or Fastify throws onto the catalogue. */
function httpError(err: FastifyError, limit: number): CryptError {
  if (err instanceof CryptError) return err;
  switch (err.code) {
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return new CryptError('too_large', `request body exceeds the limit of ${limit} bytes`);
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return new CryptError('unsupported_media_type', `unsupported content type: send ${ACCEPTED}`);
    case 'FST_ERR_CTP_INVALID_JSON_BODY':
      return new CryptError('bad_request', 'the body is not valid JSON');
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
      return new CryptError('bad_request', 'the body is empty but its content type says JSON');
    case 'FST_ERR_CTP_INVALID_CONTENT_LENGTH':
      return new CryptError('bad_request', 'the Content-Length does not match the body');
    default:
      break;
  }
  const status = err.statusCode ?? 500;
  if (status === 404) return new CryptError('not_found');
  if (status === 413) return new CryptError('too_large');
  if (status === 415) return new CryptError('unsupported_media_type');
  if (status >= 400 && status < 500) return new CryptError('bad_request');
  return new CryptError('internal', undefined, { cause: err });
}

/** Registers the error handler, the 404 answer and the answer to malformed URLs. */
export const errorsPlugin = fp<{ dispatcher: Dispatcher; limitOf: (req: FastifyRequest) => number }>(async (app: FastifyInstance, { dispatcher, limitOf }) => {
  app.setErrorHandler((err: FastifyError, req, reply) => {
    const e = dispatcher.renderError(httpError(err, limitOf(req)), req.caller ?? null, req.routeOptions.url ?? null, String(req.id));
    if (e.code === 'unauthorized') reply.header('www-authenticate', 'Bearer');
    if (e.close) reply.header('connection', 'close');
    return reply.code(e.status).type('application/json; charset=utf-8').send({ error: errorBody(e) });
  });
  // the path is not repeated: a client may have put a token in it (GET /decrypt/<token>)
  app.setNotFoundHandler((req, reply) =>
    reply.code(404).send({ error: errorBody(new CryptError('not_found', `no ${/^[A-Z]{1,10}$/.test(req.method) ? req.method : ''} route at this path: the routes are listed at / and /docs`)) }),
  );
});
