/**
 * The error catalogue: every error the service can return, with its stable code, HTTP status and
 * default message. Both transports render errors from this table; neither invents codes.
 *
 * Rules: messages never contain a payload, plaintext, token, key or secret; they may carry a
 * detail built by the service from sizes, names and limits only. Messages never contain a line
 * break, so they fit the TCP error frame (whose message runs to the line's last '#').
 */

/** Every entry of the catalogue, keyed by its stable code. */
export const ERRORS = {
  bad_frame: { status: 400, message: 'malformed request' },
  unknown_command: { status: 400, message: 'unknown command' },
  bad_request: { status: 400, message: 'invalid request' },
  invalid_token: { status: 400, message: 'invalid token' },
  unauthorized: { status: 401, message: 'authentication required' },
  forbidden: { status: 403, message: 'not allowed for this role' },
  not_found: { status: 404, message: 'no such route' },
  method_not_allowed: { status: 405, message: 'method not allowed' },
  conflict: { status: 409, message: 'not possible in the current state' },
  too_large: { status: 413, message: 'request too large' },
  unsupported_media_type: { status: 415, message: 'unsupported content type' },
  rate_limited: { status: 429, message: 'too many requests' },
  internal: { status: 500, message: 'internal error' },
  busy: { status: 503, message: 'too many connections' },
  timeout: { status: 408, message: 'connection idle for too long' },
} as const satisfies Record<string, { status: number; message: string }>;

/** A stable error code from the catalogue. */
export type ErrorCode = keyof typeof ERRORS;

/** An error the service returns to a client: a catalogue code and a safe message. */
export class CryptError extends Error {
  readonly code: ErrorCode;
  readonly status: number;

  constructor(code: ErrorCode, message?: string) {
    super(message ?? ERRORS[code].message);
    this.name = 'CryptError';
    this.code = code;
    this.status = ERRORS[code].status;
  }
}

/** The one opaque error for every kind of bad token, shared so that no check is told apart. */
export const invalidToken = (): CryptError => new CryptError('invalid_token');

/** Turns anything thrown into a CryptError; unknown faults become `internal` with no detail. */
export function toCryptError(err: unknown): CryptError {
  return err instanceof CryptError ? err : new CryptError('internal');
}
