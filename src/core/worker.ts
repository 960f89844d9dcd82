/**
 * A crypto worker thread (see src/core/pool.ts): runs the data operations of the operations table
 * on large payloads. Each job brings the raw bytes of the keys it needs (the request's resolved
 * keys), which are wiped once parsed. Never logs.
 */
import { parentPort } from 'node:worker_threads';
import { FernetKey } from '../crypto/fernet.js';
import { toCryptError } from './errors.js';
import { operation } from './operations.js';
import type { Options } from './operations.js';
import type { ResolvedKey } from '../keys/keyring.js';

/** A job from the main thread. */
export interface JobMessage {
  id: number;
  command: string;
  data: Uint8Array | string;
  options: Options;
  /** The decrypting keys' bytes, primary first, and their version ids. */
  secrets: Uint8Array[];
  ids: string[];
  name: string;
}

/** The answer to a job. */
export type ResultMessage = { id: number; ok: true; result: unknown } | { id: number; ok: false; code: string; message: string };

parentPort!.on('message', (msg: JobMessage) => {
  try {
    const decrypting = msg.secrets.map((s) => FernetKey.fromBytes(s));
    for (const s of msg.secrets) s.fill(0);
    const keys: ResolvedKey = { name: msg.name, primary: decrypting[0]!, primaryId: msg.ids[0]!, decrypting, ids: msg.ids };
    const op = operation(msg.command);
    if (!op?.data) throw new Error('not a data operation');
    const result = op.data(keys, msg.data, msg.options);
    const plaintext = (result as { plaintext?: Buffer }).plaintext;
    // a plaintext is a view of its own buffer: transfer the whole buffer, no copy
    parentPort!.postMessage({ id: msg.id, ok: true, result } satisfies ResultMessage, plaintext ? [plaintext.buffer as ArrayBuffer] : []);
  } catch (err) {
    const e = toCryptError(err);
    parentPort!.postMessage({ id: msg.id, ok: false, code: e.code, message: e.message } satisfies ResultMessage);
  }
});
