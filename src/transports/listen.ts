/**
 * What every listener (TCP and HTTP) shares: its settings, the TLS policy, and the per-address
 * connection count.
 *
 * Rules:
 * - TLS 1.2 or later; TLS 1.2 only with forward secrecy and AEAD (ECDHE with AES-GCM or
 *   ChaCha20-Poly1305); renegotiation refused.
 * - Each listener counts its connections per peer address, bounded by the listener's own cap.
 */
import { constants } from 'node:crypto';
import type { SecureContextOptions, TlsOptions } from 'node:tls';

/** TLS material: PEM certificate chain and private key. */
export interface TlsMaterial {
  cert: Buffer;
  key: Buffer;
}

/** Settings every listener has. */
export interface ListenOptions {
  host: string;
  port: number;
  tls?: TlsMaterial | undefined;
  /** Most open connections on this listener. */
  maxConnections: number;
  /** Most open connections from one address on this listener. */
  maxPerAddress: number;
  /** Milliseconds without a complete request before a connection is closed; 0 for never. */
  idleTimeoutMs: number;
  handshakeTimeoutMs: number;
}

/** The TLS 1.2 cipher suites allowed: ECDHE key exchange, AEAD only (TLS 1.3's are all AEAD). */
export const TLS12_CIPHERS = [
  'ECDHE-ECDSA-AES128-GCM-SHA256',
  'ECDHE-RSA-AES128-GCM-SHA256',
  'ECDHE-ECDSA-AES256-GCM-SHA384',
  'ECDHE-RSA-AES256-GCM-SHA384',
  'ECDHE-ECDSA-CHACHA20-POLY1305',
  'ECDHE-RSA-CHACHA20-POLY1305',
].join(':');

/** The secure context options for TLS material, under the policy above. */
export function secureContextOptions(material: TlsMaterial): SecureContextOptions {
  return {
    cert: material.cert,
    key: material.key,
    minVersion: 'TLSv1.2',
    ciphers: TLS12_CIPHERS,
    honorCipherOrder: true,
    secureOptions: constants.SSL_OP_NO_RENEGOTIATION,
  };
}

/** Server options for TLS material. */
export function tlsServerOptions(material: TlsMaterial, handshakeTimeoutMs: number): TlsOptions {
  return { ...secureContextOptions(material), handshakeTimeout: handshakeTimeoutMs };
}

/** Counts open connections per address; refuses past a cap. */
export class AddressCounter {
  readonly #counts = new Map<string, number>();
  readonly #cap: number;

  constructor(cap: number) {
    this.#cap = cap;
  }

  /** Counts a new connection; false (and nothing counted) when the address is at its cap. */
  add(address: string): boolean {
    const n = this.#counts.get(address) ?? 0;
    if (n >= this.#cap) return false;
    this.#counts.set(address, n + 1);
    return true;
  }

  /** Forgets a closed connection. */
  remove(address: string): void {
    const n = this.#counts.get(address) ?? 0;
    if (n <= 1) this.#counts.delete(address);
    else this.#counts.set(address, n - 1);
  }
}
