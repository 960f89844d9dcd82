/**
 * Streams over HTTP (se, sd): `curl -T big.iso localhost:8080/stream/encrypt > big.iso.crypt`,
 * and `/stream/decrypt` back. The request body goes through the run as it arrives and the reply
 * is sent chunked as it is made: memory stays about two chunks whatever the size.
 *
 * Rules:
 * - The body is never collected: these routes have their own content-type parser, which hands
 *   the request stream on. POST and PUT (curl -T) both work; any content type is taken.
 * - A failure before the reply began (a refused key, a header that does not open) is an ordinary
 *   error reply. After, the chunked reply is aborted without its last chunk: curl exits non-zero
 *   and no client can take a cut reply for a whole one. The reply ends only once its audit line
 *   is written.
 * - A body that stalls for FRAME_IDLE_MS is abandoned (a deadline per chunk, not per request: a
 *   large stream takes its time).
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { Readable } from 'node:stream';
import { OPERATIONS } from '../../core/operations.js';
import type { Operation } from '../../core/operations.js';
import type { Dispatcher, OpenStream } from '../../core/dispatcher.js';
import { CryptError } from '../../core/errors.js';
import { fastifyPath } from './routes.js';

/** The longest a stream's body may go without a byte. */
const FRAME_IDLE_MS = 60_000;

/** The next chunk of a body, within the idle deadline. */
async function nextChunk(source: AsyncIterator<Buffer>): Promise<IteratorResult<Buffer>> {
  let timer: NodeJS.Timeout | undefined;
  const idle = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new CryptError('timeout', `no bytes of the stream for ${FRAME_IDLE_MS / 1000} s`)), FRAME_IDLE_MS);
  });
  try {
    return await Promise.race([source.next(), idle]);
  } finally {
    clearTimeout(timer);
  }
}

/** Registers POST and PUT for each stream operation (an encapsulated plugin: its parser is its own). */
export async function streamsPlugin(app: FastifyInstance, { dispatcher }: { dispatcher: Dispatcher }): Promise<void> {
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', (_req, payload, done) => done(null, payload));
  const audit = dispatcher.audit;
  for (const op of OPERATIONS.filter((o) => o.input === 'stream' && o.http)) {
    const handler = async (req: FastifyRequest, reply: FastifyReply) => {
      const options = { ...((req.query ?? {}) as Record<string, unknown>) };
      const length = req.headers['content-length'] === undefined ? null : Number(req.headers['content-length']);
      const open: OpenStream = dispatcher.openStream(op, req.caller, options, Number.isSafeInteger(length) ? length : null, String(req.id));
      const body = (req.body ?? req.raw) as Readable;
      const source = body[Symbol.asyncIterator]() as AsyncIterator<Buffer>;
      let bytesIn = 0;
      let bytesOut = 0;
      let ended = false;
      const fail = (err: unknown): never => {
        if (!ended) {
          ended = true;
          open.done(dispatcher.renderError(err, req.caller, op.command, String(req.id)).code, bytesIn, bytesOut);
        }
        throw err;
      };
      // the first reply bytes come before the reply begins: what fails until then is an error reply
      let first: Buffer[] = [];
      let done = false;
      try {
        while (first.length === 0 && !done) {
          const next = await nextChunk(source);
          if (next.done) {
            first = open.run.finish();
            done = true;
          } else {
            bytesIn += next.value.length;
            first = open.run.push(next.value);
          }
        }
      } catch (err) {
        fail(err);
      }
      const out = Readable.from(
        (async function* () {
          try {
            for (const b of first) {
              bytesOut += b.length;
              yield b;
            }
            while (!done) {
              const next = await nextChunk(source);
              const chunks = next.done ? open.run.finish() : open.run.push(next.value);
              if (next.done) done = true;
              else bytesIn += next.value.length;
              if (chunks.length === 0) continue;
              // a chunk and its tag in one piece: half the writes, for one 64 KiB copy
              const piece = chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks);
              bytesOut += piece.length;
              yield piece;
            }
          } catch (err) {
            fail(err);
          }
          // the reply's last chunk waits for the audit line
          ended = true;
          const mark = audit === null ? 0 : audit.failures;
          const entry = open.done('ok', bytesIn, bytesOut);
          if (audit !== null && entry > 0) {
            await audit.settled(entry);
            if (audit.failures !== mark) throw audit.unavailable();
          }
        })(),
        { objectMode: false },
      );
      // a reply cut short is destroyed, never ended: the chunked response is aborted
      out.on('error', () => reply.raw.destroy());
      return reply.type('application/octet-stream').send(out);
    };
    for (const method of ['POST', 'PUT'] as const) {
      app.route({
        method,
        url: fastifyPath(op.http!.path),
        schema: method === 'POST' ? { summary: op.summary, tags: ['streams'], querystring: { type: 'object', properties: Object.fromEntries([...op.options.keys()].map((k) => [k, { type: 'string' }])) } } : { hide: true },
        handler,
      });
    }
  }
}
