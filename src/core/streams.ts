/**
 * Streams through the server (se, sd): crypt-stream/1 for callers without the client (nc, curl).
 * A run takes the request's bytes as they arrive and gives back the reply's bytes as they are
 * made; memory is about two chunks whatever the size. The dispatcher opens runs (policy), the
 * transports feed them (I/O).
 *
 * Rules:
 * - se makes a fresh file key, wraps it under the named key's primary version and writes the
 *   header first; the reply's length is known from the request's (TCP's `#ok:<m>#`).
 * - sd reads the header, unwraps its token with the key it names (the caller's token must cover
 *   that name: `authorizeKey`), checks the header MAC, then releases each chunk once its tag
 *   verified. Tampering found after chunks were released is an error the transport turns into a
 *   visible failure (a connection closed before the reply's end).
 * - File keys are zeroed once the payload key is derived; none is kept, logged or returned.
 */
import { randomBytes } from 'node:crypto';
import { FILE_KEY, HeaderReader, StreamDecryptor, StreamEncryptor, StreamError, encodeHeader, payloadKey, plaintextLength, streamLength, verifyHeader } from '../crypto/stream.js';
import type { ResolvedKey } from '../keys/keyring.js';
import { decryptWith } from './service.js';

/** One stream through the server. */
export interface StreamRun {
  /** The reply's length in bytes for a request of the declared length, once known (se: at once; sd: after the header); null before. */
  readonly replyLength: number | null;
  /** The named key, and the version used once known. */
  readonly key: string;
  readonly keyId: string | null;
  /** Takes request bytes (views: not reused by the caller); returns reply bytes ready to send. */
  push(data: Buffer): Buffer[];
  /** Ends the request; returns the last reply bytes; throws when the stream is incomplete or changed. */
  finish(): Buffer[];
}

/** se: encrypts into crypt-stream/1 under a fresh file key wrapped by the key's primary version. */
export function encryptRun(keys: ResolvedKey, declared: number | null): StreamRun {
  const fileKey = randomBytes(FILE_KEY);
  const nonce = randomBytes(16);
  const header = encodeHeader(keys.name, keys.primary.encrypt(fileKey), nonce, fileKey);
  const encryptor = new StreamEncryptor(payloadKey(fileKey, nonce));
  fileKey.fill(0);
  let first: Buffer | null = header;
  const lead = (out: Buffer[]): Buffer[] => {
    if (first === null) return out;
    out.unshift(first);
    first = null;
    return out;
  };
  return {
    replyLength: declared === null ? null : streamLength(declared, header.length),
    key: keys.name,
    keyId: keys.primaryId,
    push: (data) => lead(encryptor.push(data)),
    finish: () => lead(encryptor.finish()),
  };
}

/** sd: decrypts crypt-stream/1; `keysOf` resolves (and authorizes) the key its header names. */
export function decryptRun(keysOf: (name: string) => ResolvedKey, declared: number | null): StreamRun {
  const reader = new HeaderReader();
  let decryptor: StreamDecryptor | null = null;
  const run = {
    replyLength: null as number | null,
    key: '',
    keyId: null as string | null,
    push(data: Buffer): Buffer[] {
      if (decryptor) return decryptor.push(data);
      const got = reader.push(Buffer.from(data));
      if (!got) return [];
      const { header, rest } = got;
      run.key = header.keyName;
      const keys = keysOf(header.keyName);
      let opened;
      try {
        opened = decryptWith(keys, header.token, undefined);
      } catch {
        throw new StreamError(`the header token does not open with the key ${header.keyName}: another key, a retired or deleted version, or a changed header`);
      }
      const fileKey = Buffer.from(opened.plaintext);
      opened.plaintext.fill(0);
      try {
        if (fileKey.length !== FILE_KEY) throw new StreamError('the header token does not hold a 32-byte file key');
        verifyHeader(header, fileKey);
        decryptor = new StreamDecryptor(payloadKey(fileKey, header.nonce));
      } finally {
        fileKey.fill(0);
      }
      run.keyId = opened.keyId;
      if (declared !== null) {
        const m = plaintextLength(declared, header.bytes.length);
        if (m < 0) throw new StreamError(`a stream of ${declared} bytes can't be whole: it is truncated, or has bytes appended`);
        run.replyLength = m;
      }
      return decryptor.push(rest);
    },
    finish(): Buffer[] {
      if (!decryptor) throw new StreamError('the stream ends inside its header: it is truncated, or not a crypt stream');
      return decryptor.finish();
    },
  };
  return run;
}
