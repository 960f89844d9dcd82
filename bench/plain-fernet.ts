/**
 * A deliberately plain Fernet on node:crypto, as most Node code would write it: fresh cipher and
 * HMAC objects, a CSPRNG call and concatenations per token. Plain but correct: its tokens carry
 * base64 padding, as Python's cryptography requires. The baseline the benchmarks divide by; the
 * plain baseline server uses it too. Not used by crypt itself.
 */
import { createCipheriv, createDecipheriv, createHmac, randomBytes, timingSafeEqual } from 'node:crypto';

export class PlainFernet {
  readonly #signing: Buffer;
  readonly #encryption: Buffer;

  constructor(key: string) {
    const raw = Buffer.from(key, 'base64url');
    this.#signing = raw.subarray(0, 16);
    this.#encryption = raw.subarray(16, 32);
  }

  encrypt(message: Buffer): string {
    const iv = randomBytes(16);
    const header = Buffer.alloc(9);
    header[0] = 0x80;
    header.writeUInt32BE(Math.floor(Date.now() / 1000), 5);
    const cipher = createCipheriv('aes-128-cbc', this.#encryption, iv);
    const body = Buffer.concat([header, iv, cipher.update(message), cipher.final()]);
    const mac = createHmac('sha256', this.#signing).update(body).digest();
    const token = Buffer.concat([body, mac]);
    return token.toString('base64url') + '='.repeat((3 - (token.length % 3)) % 3);
  }

  decrypt(token: string): Buffer {
    const raw = Buffer.from(token, 'base64url');
    if (raw.length < 73 || raw[0] !== 0x80) throw new Error('invalid token');
    const body = raw.subarray(0, raw.length - 32);
    const mac = createHmac('sha256', this.#signing).update(body).digest();
    if (!timingSafeEqual(mac, raw.subarray(raw.length - 32))) throw new Error('invalid token');
    const decipher = createDecipheriv('aes-128-cbc', this.#encryption, raw.subarray(9, 25));
    return Buffer.concat([decipher.update(raw.subarray(25, raw.length - 32)), decipher.final()]);
  }
}
