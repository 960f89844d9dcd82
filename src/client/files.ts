/**
 * Files and streams of any size, encrypted by the client (docs/stream-format.md): the service
 * makes and unwraps file keys (dk, de, rw); the bulk never crosses it.
 *
 * Rules:
 * - A file key lives in memory only while its stream runs, and is zeroed after; it is never
 *   written, logged or put in an error.
 * - Decryption releases only verified chunks; the caller decides where they go (a temporary file
 *   renamed into place once the final chunk verifies: src/cli/files.ts).
 * - Streams are piped with backpressure: memory stays about two chunks whatever the size.
 */
import { open, readFile, unlink } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import type { Readable, Writable } from 'node:stream';
import type { CryptClient, KeyChoice } from './client.js';
import type { TokenFacts } from '../core/service.js';
import { FILE_KEY, HeaderReader, MAX_HEADER, StreamDecryptor, StreamEncryptor, StreamError, encodeHeader, payloadKey, plaintextLength, rewrapHeader, verifyHeader } from '../crypto/stream.js';
import type { StreamHeader } from '../crypto/stream.js';

/** Called with the bytes read so far (for a progress bar). */
export type Progress = (bytesRead: number) => void;

/** Bytes gathered into one write: a write per 64 KiB chunk and tag costs more than the copy. */
const WRITE_BATCH = 1024 * 1024;

/** Writes chunks to out in batches of about 1 MiB, with backpressure; ends it when asked (never standard output). */
async function drainTo(chunks: AsyncIterable<Buffer>, out: Writable, end: boolean): Promise<void> {
  let parts: Buffer[] = [];
  let size = 0;
  const flush = async (): Promise<void> => {
    if (size === 0) return;
    if (out.destroyed) throw new Error('the output was closed');
    const data = parts.length === 1 ? parts[0]! : Buffer.concat(parts, size);
    parts = [];
    size = 0;
    if (!out.write(data)) await once(out, 'drain');
  };
  for await (const c of chunks) {
    parts.push(c);
    size += c.length;
    if (size >= WRITE_BATCH) await flush();
  }
  await flush();
  if (end) await new Promise<void>((resolve, reject) => out.end((err?: Error | null) => (err ? reject(err) : resolve())));
}

/** Encrypts input into output as crypt-stream/1 under a fresh data key from the service. */
export async function encryptStream(client: CryptClient, input: Readable, output: Writable, keys: KeyChoice & { key: string }, progress?: Progress, end = true): Promise<{ keyId: string; bytes: number }> {
  const dk = await client.dataKey(keys);
  const nonce = randomBytes(16);
  let read = 0;
  try {
    const header = encodeHeader(keys.key, dk.token, nonce, dk.key);
    const encryptor = new StreamEncryptor(payloadKey(dk.key, nonce));
    dk.key.fill(0);
    await drainTo(
      (async function* () {
        yield header;
        for await (const chunk of input as AsyncIterable<Buffer>) {
          read += chunk.length;
          progress?.(read);
          yield* encryptor.push(chunk);
        }
        yield* encryptor.finish();
      })(),
      output,
      end,
    );
  } finally {
    dk.key.fill(0);
  }
  return { keyId: dk.keyId, bytes: read };
}

/** Reads the header from the start of a stream; the bytes read past it are handed back. */
export async function readHeader(input: AsyncIterator<Buffer>): Promise<{ header: StreamHeader; rest: Buffer }> {
  const reader = new HeaderReader();
  for (;;) {
    const next = await input.next();
    if (next.done) throw new StreamError('the stream ends inside its header: it is truncated, or not a crypt stream');
    const got = reader.push(next.value);
    if (got) return got;
  }
}

/** The file key a header wraps, unwrapped by the service (de under the key the header names). */
async function fileKeyOf(client: CryptClient, header: StreamHeader, context: KeyChoice['context']): Promise<Buffer> {
  const key = await client.decrypt(header.token, undefined, { key: header.keyName, context });
  if (key.length !== FILE_KEY) {
    key.fill(0);
    throw new StreamError('the header token does not hold a 32-byte file key');
  }
  try {
    verifyHeader(header, key);
  } catch (err) {
    key.fill(0);
    throw err;
  }
  return key;
}

/** Decrypts a crypt-stream/1 input into output; throws StreamError (invalid_stream) when it fails to verify. */
export async function decryptStream(client: CryptClient, input: Readable, output: Writable, context?: KeyChoice['context'], progress?: Progress, end = true): Promise<{ keyName: string; bytes: number }> {
  const source = input[Symbol.asyncIterator]() as AsyncIterator<Buffer>;
  const { header, rest } = await readHeader(source);
  const fileKey = await fileKeyOf(client, header, context);
  const decryptor = new StreamDecryptor(payloadKey(fileKey, header.nonce));
  fileKey.fill(0);
  let read = header.bytes.length + rest.length;
  let written = 0;
  await drainTo(
    (async function* () {
      for (const c of decryptor.push(rest)) {
        written += c.length;
        yield c;
      }
      for (;;) {
        const next = await source.next();
        if (next.done) break;
        read += next.value.length;
        progress?.(read);
        for (const c of decryptor.push(next.value)) {
          written += c.length;
          yield c;
        }
      }
      for (const c of decryptor.finish()) {
        written += c.length;
        yield c;
      }
    })(),
    output,
    end,
  );
  return { keyName: header.keyName, bytes: written };
}

/** What `inspect` shows of a file: its header's facts and the plaintext size, never the file key. */
export interface FileFacts {
  key: string;
  /** The version that verifies the header token, or null when none does (retired, deleted). */
  key_id: string | null;
  key_state: string | null;
  /** When the file key was wrapped: the header token's time. */
  created: string;
  size: number;
  stream_bytes: number;
}

/** The facts of a crypt-stream/1 file (key, key version, creation time, plaintext size). */
export async function inspectFile(client: CryptClient, path: string, context?: KeyChoice['context']): Promise<FileFacts> {
  const { header, size } = await readFileHeader(path);
  const facts: TokenFacts = await client.inspect(header.token, { key: header.keyName, context });
  const plain = plaintextLength(size, header.bytes.length);
  if (plain < 0) throw new StreamError(`the file's length (${size} bytes) is no crypt stream's: it is truncated or has bytes appended`);
  return { key: header.keyName, key_id: facts.key_id, key_state: facts.key_state, created: facts.created, size: plain, stream_bytes: size };
}

async function readFileHeader(path: string): Promise<{ header: StreamHeader; size: number }> {
  const fh = await open(path, 'r');
  try {
    const size = (await fh.stat()).size;
    const buf = Buffer.alloc(Math.min(MAX_HEADER, size));
    const { bytesRead } = await fh.read(buf, 0, buf.length, 0);
    const got = new HeaderReader().push(buf.subarray(0, bytesRead));
    if (!got) throw new StreamError('the file ends inside its header: it is truncated, or not a crypt stream');
    return { header: got.header, size };
  } finally {
    await fh.close();
  }
}

/**
 * Rewraps a file's header under the primary version of its key (after a rotation): the payload is
 * untouched. Crash-safe: the old header is saved to `<file>.rewrap` and synced first, then the new
 * header (of the same length) is written in place and synced, then the copy is removed. A run that
 * finds a `<file>.rewrap` left by a crash puts that header back first (it still verifies) and
 * starts over.
 */
export async function rewrapFile(client: CryptClient, path: string, context?: KeyChoice['context']): Promise<{ key: string; from: string | null; to: string; changed: boolean }> {
  const journal = `${path}.rewrap`;
  await recover(path, journal);
  const { header } = await readFileHeader(path);
  const fileKey = await fileKeyOf(client, header, context);
  try {
    const before = await client.inspect(header.token, { key: header.keyName, context });
    const token = await client.rewrap(header.token, { key: header.keyName, context });
    const after = await client.inspect(token, { key: header.keyName, context });
    if (before.key_id === after.key_id) return { key: header.keyName, from: before.key_id, to: after.key_id!, changed: false };
    const next = rewrapHeader(header, fileKey, header.keyName, token);
    if (next.length !== header.bytes.length) throw new StreamError('the new header is not the length of the old one: nothing was changed');
    const saved = await open(journal, 'wx', 0o600);
    try {
      await saved.writeFile(header.bytes);
      await saved.sync();
    } finally {
      await saved.close();
    }
    const fh = await open(path, 'r+');
    try {
      await fh.write(next, 0, next.length, 0);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await unlink(journal);
    return { key: header.keyName, from: before.key_id, to: after.key_id!, changed: true };
  } finally {
    fileKey.fill(0);
  }
}

/** Puts back the header a crashed rewrap saved, if any. */
async function recover(path: string, journal: string): Promise<void> {
  const saved = await readFile(journal).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return null;
    throw err;
  });
  if (saved === null) return;
  const got = new HeaderReader().push(saved);
  if (!got || got.rest.length !== 0) throw new StreamError(`${journal} is not a saved crypt-stream header: remove it if you know why it is there`);
  const fh = await open(path, 'r+');
  try {
    await fh.write(saved, 0, saved.length, 0);
    await fh.sync();
  } finally {
    await fh.close();
  }
  await unlink(journal);
}
