/**
 * A crypto worker thread (see src/pool.ts): encrypts, decrypts and rewraps large payloads with the
 * keys the main thread sends it. Keys arrive before any job that must use them (messages to a
 * thread are handled in order). Never logs.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { FernetKey, decrypt } from './fernet.js';
import { toCryptError } from './errors.js';

/** The keys in force, as exported Fernet keys: the primary first. */
export interface KeysMessage {
  type: 'keys';
  decrypting: string[];
}

/** A job from the main thread. */
export interface JobMessage {
  type: 'job';
  id: number;
  op: 'encrypt' | 'decrypt' | 'rewrap';
  data: Uint8Array | string;
  ttl?: number | undefined;
}

/** The answer to a job. */
export type ResultMessage =
  | { id: number; ok: true; token: string }
  | { id: number; ok: true; plaintext: Uint8Array; timestamp: number }
  | { id: number; ok: false; code: string; message: string };

let keys: FernetKey[] = [];
const install = (list: string[]) => {
  keys = list.map((k) => FernetKey.from(k));
};
install((workerData as { decrypting: string[] }).decrypting);

parentPort!.on('message', (msg: KeysMessage | JobMessage) => {
  if (msg.type === 'keys') {
    install(msg.decrypting);
    return;
  }
  try {
    const primary = keys[0]!;
    if (msg.op === 'encrypt') {
      parentPort!.postMessage({ id: msg.id, ok: true, token: primary.encrypt(msg.data as Uint8Array) } satisfies ResultMessage);
    } else if (msg.op === 'rewrap') {
      const { plaintext, timestamp } = decrypt(keys, msg.data);
      parentPort!.postMessage({ id: msg.id, ok: true, token: primary.encrypt(plaintext, timestamp) } satisfies ResultMessage);
    } else {
      const { plaintext, timestamp } = decrypt(keys, msg.data, { ttl: msg.ttl });
      // the plaintext is a view of its own buffer: transfer the whole buffer, no copy
      parentPort!.postMessage({ id: msg.id, ok: true, plaintext, timestamp } satisfies ResultMessage, [plaintext.buffer as ArrayBuffer]);
    }
  } catch (err) {
    const e = toCryptError(err);
    parentPort!.postMessage({ id: msg.id, ok: false, code: e.code, message: e.message } satisfies ResultMessage);
  }
});
