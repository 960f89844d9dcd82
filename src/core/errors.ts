/**
 * The error catalogue: every error the service can return, with its stable code, HTTP status and
 * default message. Both transports render errors from this table; neither invents codes.
 *
 * Rules:
 * - Messages never contain a payload, plaintext, token, key, secret or server file path; they
 *   may carry a detail built from sizes, names and limits only. What only the operator may read
 *   (a file path, an errno) goes in `cause`, which is logged and never sent.
 * - Messages never contain a line break, so they fit the TCP error frame.
 * - `internal` carries no detail at all.
 */

/** Every entry of the catalogue, keyed by its stable code. */
export const ERRORS = {
  bad_frame: { status: 400, message: 'malformed request' },
  unknown_command: { status: 400, message: 'unknown command' },
  bad_request: { status: 400, message: 'invalid request' },
  invalid_token: { status: 400, message: 'invalid token' },
  invalid_stream: { status: 400, message: 'invalid stream' },
  unauthorized: { status: 401, message: 'authentication required' },
  forbidden: { status: 403, message: 'not allowed for this role' },
  not_found: { status: 404, message: 'no such route' },
  unknown_key: { status: 404, message: 'no such key' },
  method_not_allowed: { status: 405, message: 'method not allowed' },
  timeout: { status: 408, message: 'connection idle for too long' },
  conflict: { status: 409, message: 'not possible in the current state' },
  too_large: { status: 413, message: 'request too large' },
  unsupported_media_type: { status: 415, message: 'unsupported content type' },
  rate_limited: { status: 429, message: 'too many requests' },
  internal: { status: 500, message: 'internal error' },
  busy: { status: 503, message: 'too many connections' },
  unavailable: { status: 503, message: 'temporarily unavailable' },
} as const satisfies Record<string, { status: number; message: string }>;

/** A stable error code from the catalogue. */
export type ErrorCode = keyof typeof ERRORS;

const CODES: ReadonlyMap<string, ErrorCode> = new Map(Object.keys(ERRORS).map((c) => [c, c as ErrorCode]));

/** The catalogue code for a string, or undefined (never a lookup of user input in an object). */
export const errorCode = (code: string): ErrorCode | undefined => CODES.get(code);

/** An error the service returns to a client: a catalogue code and a safe message. */
export class CryptError extends Error {
  readonly code: ErrorCode;
  readonly status: number;
  /** The transport should close the connection after sending this error. */
  readonly close: boolean;

  constructor(code: ErrorCode, message?: string, options: { cause?: unknown; close?: boolean } = {}) {
    super(code === 'internal' ? ERRORS.internal.message : message ?? ERRORS[code].message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'CryptError';
    this.code = code;
    this.status = ERRORS[code].status;
    this.close = options.close ?? false;
  }
}

/** The one opaque error for every kind of bad token, shared so that no check is told apart. */
export const invalidToken = (): CryptError => new CryptError('invalid_token');

/** Turns anything thrown into a CryptError; unknown faults become `internal`, keeping the fault as cause. */
export function toCryptError(err: unknown): CryptError {
  return err instanceof CryptError ? err : new CryptError('internal', undefined, { cause: err });
}

/**
 * What may be logged of an error: its type, code and stack frames, never its message (a
 * library's message can quote the data it was given).
 */
export function errorFields(err: unknown): { type: string; code?: string; stack?: string } {
  if (!(err instanceof Error)) return { type: typeof err };
  const code = (err as NodeJS.ErrnoException).code;
  const frames = err.stack?.split('\n').filter((l) => l.trimStart().startsWith('at ')).join('\n');
  return { type: err.name, ...(typeof code === 'string' ? { code } : {}), ...(frames ? { stack: frames } : {}) };
}
