/**
 * TLS material for the listeners: read, checked, and reloaded when the files change, so a renewed
 * certificate needs no restart.
 *
 * Rules:
 * - The private key is a secret file: owner-only, as the keyring (src/keys/files.ts).
 * - A certificate and key that don't belong together, or that aren't PEM, are refused with a
 *   message naming both files and their flags; at startup that stops the server, on a reload the
 *   material in force stays and the reason is logged.
 */
import { createSecureContext } from 'node:tls';
import { promises as fs } from 'node:fs';
import { EventEmitter } from 'node:events';
import { FileError, Serial, readSecret, watchForChanges } from '../keys/files.js';
import { secureContextOptions } from '../transports/listen.js';
import type { TlsMaterial } from '../transports/listen.js';

/** Reads and checks a certificate and its key. */
export async function loadTls(certFile: string, keyFile: string): Promise<TlsMaterial> {
  let cert: Buffer;
  try {
    cert = await fs.readFile(certFile);
  } catch (err) {
    throw new FileError(`cannot read the TLS certificate ${certFile} (--tls-cert): ${(err as NodeJS.ErrnoException).code ?? 'error'}`);
  }
  const key = await readSecret(keyFile, 'TLS private key', 1024 * 1024);
  if (key === null) throw new FileError(`the TLS private key ${keyFile} (--tls-key) does not exist`);
  if (!cert.includes('-----BEGIN CERTIFICATE-----')) throw new FileError(`${certFile} (--tls-cert) holds no PEM certificate${key.includes('CERTIFICATE') ? ': are --tls-cert and --tls-key swapped?' : ''}`);
  if (!/-----BEGIN [A-Z ]*PRIVATE KEY-----/.test(key.toString('latin1'))) throw new FileError(`${keyFile} (--tls-key) holds no PEM private key${cert.includes('PRIVATE KEY') ? ': are --tls-cert and --tls-key swapped?' : ''}`);
  try {
    createSecureContext(secureContextOptions({ cert, key }));
  } catch {
    throw new FileError(`the TLS certificate ${certFile} (--tls-cert) and private key ${keyFile} (--tls-key) do not belong together, or one of them is unreadable`);
  }
  return { cert, key };
}

/** TLS material that reloads when its files change. Events: `change` (TlsMaterial), `error` (Error). */
export class TlsFiles extends EventEmitter {
  readonly #cert: string;
  readonly #key: string;
  #unwatch: Array<() => void> = [];
  readonly #serial = new Serial();

  constructor(certFile: string, keyFile: string) {
    super();
    this.#cert = certFile;
    this.#key = keyFile;
  }

  /** Reloads now; a failure is emitted as `error` and the material in force stays. */
  readonly reload = this.#serial.coalesced(async () => {
    try {
      this.emit('change', await loadTls(this.#cert, this.#key));
    } catch (err) {
      this.emit('error', err);
    }
  });

  /** Watches both files. */
  watch(intervalMs = 1000): void {
    if (this.#unwatch.length > 0) return;
    this.#unwatch = [this.#cert, this.#key].map((f) => watchForChanges(f, () => void this.reload(), intervalMs));
  }

  /** Stops watching. */
  close(): void {
    for (const u of this.#unwatch) u();
    this.#unwatch = [];
  }
}
