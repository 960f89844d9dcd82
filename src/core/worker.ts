/**
 * A crypto worker thread (see src/core/pool.ts): runs the data operations of the operations table
 * on large payloads, with the keys the main thread sends it. Keys arrive as raw bytes, before any
 * job that must use them (messages to a thread are handled in order), and are wiped once parsed.
 * Never logs.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { FernetKey } from '../crypto/fernet.js';
import { KeySet } from '../keys/keyring.js';
import { toCryptError } from './errors.js';
import { operation } from './operations.js';
import type { Options } from './operations.js';
import { DataOps } from './service.js';

/** The keys in force, as raw key bytes: the primary first, then the other decrypting keys. */
export interface KeysMessage {
  type: 'keys';
  secrets: Uint8Array[];
}

/** A job from the main thread. */
export interface JobMessage {
  type: 'job';
  id: number;
  command: string;
  data: Uint8Array | string;
  options: Options;
}

/** The answer to a job. */
export type ResultMessage = { id: number; ok: true; result: unknown } | { id: number; ok: false; code: string; message: string };

let keys: KeySet;
const install = (secrets: Uint8Array[]): void => {
  keys = KeySet.fromKeys(secrets.map((s) => FernetKey.fromBytes(s)));
  for (const s of secrets) s.fill(0);
};
install((workerData as { secrets: Uint8Array[] }).secrets);
const ops = new DataOps(() => keys);

parentPort!.on('message', (msg: KeysMessage | JobMessage) => {
  if (msg.type === 'keys') return install(msg.secrets);
  try {
    const op = operation(msg.command);
    if (!op?.data) throw new Error('not a data operation');
    const result = op.data(ops, msg.data, msg.options);
    const plaintext = (result as { plaintext?: Buffer }).plaintext;
    // a plaintext is a view of its own buffer: transfer the whole buffer, no copy
    parentPort!.postMessage({ id: msg.id, ok: true, result } satisfies ResultMessage, plaintext ? [plaintext.buffer as ArrayBuffer] : []);
  } catch (err) {
    const e = toCryptError(err);
    parentPort!.postMessage({ id: msg.id, ok: false, code: e.code, message: e.message } satisfies ResultMessage);
  }
});
