/**
 * The dispatcher: the one place every request of every transport goes through.
 * `dispatch(operation, caller, input, options)` authorizes (the role, then the token's scope for
 * the named key), checks the size and the options, resolves the request's keys, runs the
 * operation (inline, or on the worker pool for large payloads), and reports one record to its
 * observers: who ran what, on which key, with what outcome, in how long.
 *
 * Rules:
 * - Transports decode bytes into (operation, input, options) and render what comes back; they
 *   hold no policy. Auth, limits and observation live here and in the access policy.
 * - A result is returned as is when the operation was synchronous: no promise on the hot path.
 * - A record never holds data: no payload, plaintext, token, key or secret. Observers must not
 *   throw; the dispatcher does not wait for them.
 * - With an audit log, each operation (but hc) queues its line here; the transport commits the
 *   log before it releases answers and refuses those whose line may be lost (src/core/audit.ts).
 * - renderError turns anything thrown into a catalogue error and logs each `internal` and
 *   `unavailable` exactly once, with its cause, at error level.
 */
import { performance } from 'node:perf_hooks';
import type { Logger } from 'pino';
import { CryptError, errorFields, toCryptError } from './errors.js';
import { OPERATIONS, operation } from './operations.js';
import type { Operation, OptionSpec, Options, Payload, ResultKind, Results } from './operations.js';
import { DEFAULT_KEY, KEY_NAME, MIN_AUTO_ROTATE } from '../keys/keyring.js';
import type { ResolvedKey } from '../keys/keyring.js';
import type { CryptService } from './service.js';
import type { Caller, Policy, Role } from './access.js';
import { OFFLOAD_BYTES } from './pool.js';
import type { CryptoPool } from './pool.js';
import { MemoryBudget } from './budget.js';
import { tokenLength } from '../crypto/fernet.js';
import { FileError } from '../keys/files.js';
import { decryptRun, encryptRun } from './streams.js';
import type { StreamRun } from './streams.js';
import { AUDIT_FAILURE } from './audit.js';
import type { AuditLog } from './audit.js';

/** What the dispatcher reports of each request: never data. */
export interface DispatchRecord {
  /** '' for a successful TCP request when nothing shows ids (no debug log, no audit log). */
  requestId: string;
  transport: Caller['transport'];
  peer: string;
  /** `token:<id>`, `loopback` or `anonymous`. */
  caller: string;
  /** The operation's command: en, de... */
  op: string;
  /** The named key used, when the operation has one. */
  key: string | null;
  /** The id of the key version used, when one was. */
  keyId: string | null;
  /** `ok` or the error code. */
  outcome: string;
  bytesIn: number;
  bytesOut: number;
  durationMs: number;
}

/** Receives every record. */
export type Observer = (record: DispatchRecord) => void;

/** Hears of requests refused before any operation was chosen (HTTP's per-address rate limit). */
export type RefusalObserver = (transport: Caller['transport'], code: 'rate_limited') => void;

/** What a dispatcher is made of. */
export interface DispatcherOptions {
  service: CryptService;
  policy: Policy;
  /** Largest plaintext accepted, in bytes. */
  maxMessage: number;
  pool?: CryptoPool | null;
  log: Logger;
  /** Runs of `limited` operations (rotations) per minute, all callers together; 0 for no limit. */
  limitedPerMinute?: number;
  /** The payload bytes the whole server may hold (src/core/budget.ts); unlimited when absent. */
  budget?: MemoryBudget;
  /** The audit log: every operation's answer waits for its line (src/core/audit.ts). */
  audit?: AuditLog | null;
  /** Largest stream accepted (se, sd), in bytes. */
  maxStream?: number;
}

/** A stream opened by the dispatcher: its run, and how to report its end (src/core/streams.ts). */
export interface OpenStream {
  run: StreamRun;
  /** Reports the end of the stream (its record and audit line); returns the audit entry to wait for, 0 for none. */
  done(outcome: string, bytesIn: number, bytesOut: number): number;
}

/** The default --max-stream: 64 GiB. */
export const MAX_STREAM = 64 * 1024 ** 3;

/** The largest payload of an operation that takes no message or token. */
const SMALL = 1024;
const EMPTY: Options = Object.freeze({});
/** Operations with a required option: checked even when a request brings no options at all. */
const NEEDS_OPTIONS: ReadonlySet<Operation> = new Set(OPERATIONS.filter((o) => [...o.options.values()].some((s) => s.required)));

/** The one way into the service. */
export class Dispatcher {
  readonly service: CryptService;
  readonly policy: Policy;
  /** Largest plaintext accepted, in bytes. */
  readonly maxMessage: number;
  /** Largest token accepted, in characters: the token of a largest message. */
  readonly maxToken: number;
  readonly log: Logger;
  /** The memory budget every transport charges what it holds to. */
  readonly budget: MemoryBudget;
  /** The audit log, when there is one. */
  readonly audit: AuditLog | null;
  /** Largest stream accepted, in bytes. */
  readonly maxStream: number;
  readonly #pool: CryptoPool | null;
  readonly #observers: Observer[] = [];
  readonly #refusalObservers: RefusalObserver[] = [];
  readonly #logged = new WeakSet<Error>();
  #seq = 0;
  /** The options checked for each cached TCP head (see #checkOptions). */
  readonly #checked = new WeakMap<object, { op: Operation; options: Options }>();
  readonly #limitedPerMinute: number;
  /** The debug log shows request ids: a successful request needs one. */
  readonly #idsShown: boolean;
  #limitedRuns: number[] = [];

  constructor(options: DispatcherOptions) {
    this.service = options.service;
    this.policy = options.policy;
    this.maxMessage = options.maxMessage;
    this.maxToken = tokenLength(options.maxMessage);
    this.#pool = options.pool ?? null;
    this.log = options.log;
    this.#limitedPerMinute = options.limitedPerMinute ?? 0;
    this.budget = options.budget ?? new MemoryBudget(Number.MAX_SAFE_INTEGER);
    this.audit = options.audit ?? null;
    this.maxStream = options.maxStream ?? MAX_STREAM;
    // refusals for want of an audit line are logged by the audit log, once per failure
    this.#logged.add(AUDIT_FAILURE);
    this.#idsShown = this.log.isLevelEnabled('debug');
    if (this.#idsShown) {
      this.observe((r) => this.log.debug({ requestId: r.requestId, transport: r.transport, peer: r.peer, caller: r.caller, op: r.op, keyName: r.key, keyId: r.keyId, outcome: r.outcome, bytesIn: r.bytesIn, bytesOut: r.bytesOut, ms: r.durationMs }, 'request'));
    }
  }

  /** Adds an observer of every record. */
  observe(observer: Observer): void {
    this.#observers.push(observer);
  }

  /** Adds an observer of refusals made before any operation was chosen. */
  observeRefusals(observer: RefusalObserver): void {
    this.#refusalObservers.push(observer);
  }

  /** Reports a refusal made before any operation was chosen (a transport's own limit). */
  refused(transport: Caller['transport'], code: 'rate_limited'): void {
    for (const o of this.#refusalObservers) o(transport, code);
  }

  /** The largest payload a command may carry, for a decoder to bound what it buffers. */
  limitOf(command: string): number {
    const op = operation(command);
    return op ? this.#limit(op) : SMALL;
  }

  /** Throws unless the caller may run the operation: HTTP checks it before reading a body (dispatch checks again); a refusal is audited. */
  authorize(op: Operation, caller: Caller, requestId?: string): void {
    try {
      this.policy.authorize(op, caller);
    } catch (err) {
      const e = this.renderError(err, caller, op.command, requestId);
      const id = requestId ?? this.#nextId();
      if (this.#observers.length > 0) this.#report(id, op, caller, EMPTY, 0, performance.now(), e.code, null);
      if (this.audit !== null && op.audited !== false) this.#refused(this.audit, op.command, caller, id, e.code);
      throw e;
    }
  }

  /** Authenticates a caller with a secret presented beside a request (HTTP's Authorization header); a failure is audited as `au`. */
  authenticate(caller: Caller, secret: Payload, requestId?: string): Role {
    try {
      return this.policy.authenticate(caller, secret);
    } catch (err) {
      const e = this.renderError(err, caller, 'au', requestId);
      const id = requestId ?? this.#nextId();
      if (this.#observers.length > 0) this.#report(id, operation('au')!, caller, EMPTY, 0, performance.now(), e.code, null);
      if (this.audit !== null) this.#refused(this.audit, 'au', caller, id, e.code);
      throw e;
    }
  }

  /** The line of a request refused before its body was read: no key, no sizes. */
  #refused(audit: AuditLog, op: string, caller: Caller, id: string, outcome: string): void {
    audit.add({ requestId: id, caller, op, key: null, keyId: null, outcome, bytesIn: 0, bytesOut: 0, durationMs: 0, tokenIn: null, tokenOut: null, plaintext: null });
  }

  /** Runs one request; see the rules at the top of this file. */
  dispatch<K extends ResultKind>(op: Operation<K>, caller: Caller, input: Payload, options: unknown, requestId?: string): Results[K] | Promise<Results[K]> {
    const observed = this.#observers.length > 0;
    const audit = op.audited === false ? null : this.audit;
    const start = observed || audit !== null ? performance.now() : 0;
    let result: Results[K] | Promise<Results[K]>;
    let checked: Options = EMPTY;
    try {
      if (op.input === 'stream') throw new CryptError('bad_request', `${op.command} is a stream: over TCP send "#${op.command}:<length>#<bytes>#", over HTTP stream the body to ${op.http?.path ?? 'its route'}`);
      this.policy.authorize(op, caller);
      if (op.input === 'message' && typeof input === 'string') input = Buffer.from(input, 'utf8');
      if (op.input === 'token') input = trimToken(input);
      this.#checkSize(op, input, caller);
      if (options !== null && options !== undefined) checked = this.#checkOptions(op, options);
      else if (NEEDS_OPTIONS.has(op)) checked = this.#check(op, []);
      if (op.keyed) this.policy.authorizeKey(caller, checked.key ?? DEFAULT_KEY);
      if (audit !== null && audit.failing !== null && op.barrier && op.command !== 'au') {
        throw new CryptError('unavailable', `${op.command} refused: ${audit.failing}; key changes wait until it can record them`, { cause: AUDIT_FAILURE });
      }
      if (op.limited) this.#countLimited(op);
      if (input.length > 0 && this.budget.exhausted && (op.input === 'message' || op.input === 'token')) {
        throw new CryptError('busy', 'the server is busy: the payload bytes it may hold (--memory-budget) are in use; retry shortly');
      }
      if (op.data) {
        const keys = this.service.resolve(checked.key, checked.context ?? null);
        result = this.#pool && input.length >= OFFLOAD_BYTES ? this.#offload(op, keys, input, checked) : op.data(keys, input, checked);
      } else {
        result = op.run!({ service: this.service, policy: this.policy, caller, audit: this.audit }, input, checked);
      }
    } catch (err) {
      // a request id is made only when something is logged or observed (TCP requests bring none)
      const id = requestId ?? this.#nextId();
      const e = this.renderError(err, caller, op.command, id);
      if (observed) this.#report(id, op, caller, checked, input.length, start, e.code, null);
      if (audit !== null) this.#record(audit, id, op, caller, checked, input, start, e.code, null);
      throw e;
    }
    if (!(result instanceof Promise)) {
      if (observed || audit !== null) {
        // an id for a successful request is made only for what shows it (the debug log, the audit log)
        const id = requestId ?? (audit !== null || this.#idsShown ? this.#nextId() : '');
        if (observed) this.#report(id, op, caller, checked, input.length, start, 'ok', result);
        if (audit !== null) this.#record(audit, id, op, caller, checked, input, start, 'ok', result);
      }
      return result;
    }
    const sent = input;
    return result.then(
      (value) => {
        if (this.#observers.length === 0 && audit === null) return value;
        const id = requestId ?? (audit !== null || this.#idsShown ? this.#nextId() : '');
        if (this.#observers.length > 0) this.#report(id, op, caller, checked, sent.length, start, 'ok', value);
        if (audit !== null) this.#record(audit, id, op, caller, checked, sent, start, 'ok', value);
        return value;
      },
      (err: unknown) => {
        const id = requestId ?? this.#nextId();
        const e = this.renderError(err, caller, op.command, id);
        if (this.#observers.length > 0) this.#report(id, op, caller, checked, sent.length, start, e.code, null);
        if (audit !== null) this.#record(audit, id, op, caller, checked, sent, start, e.code, null);
        throw e;
      },
    );
  }

  /** Queues an operation's audit line. */
  #record(audit: AuditLog, id: string, op: Operation, caller: Caller, options: Options, input: Payload, start: number, outcome: string, result: unknown): void {
    const { keyId, bytesOut } = measure(op.result, result);
    const r = result as { token?: Payload; plaintext?: Payload } | null;
    audit.add({
      requestId: id,
      caller,
      op: op.command,
      key: op.keyed ? options.key ?? DEFAULT_KEY : null,
      keyId,
      outcome,
      bytesIn: input.length,
      bytesOut,
      durationMs: Math.round((performance.now() - start) * 1000) / 1000,
      tokenIn: op.input === 'token' && op.auditValue !== false ? input : null,
      // the token made: en, rw, and dk's wrapped key
      tokenOut: (op.result === 'token' || op.result === 'json') && r !== null ? r.token ?? null : null,
      plaintext: op.input === 'message' && op.auditValue !== false ? input : op.result === 'plaintext' && r !== null ? r.plaintext ?? null : null,
    });
  }

  #nextId(): string {
    return String(++this.#seq);
  }

  /** Turns anything thrown into a catalogue error; logs an `internal` or `unavailable` once, with its cause. */
  renderError(err: unknown, caller: Caller | null, command: string | null, requestId?: string): CryptError {
    const e = toCryptError(err);
    if ((e.code === 'internal' || e.code === 'unavailable') && !this.#logged.has(e)) {
      this.#logged.add(e);
      const cause = e.cause;
      this.log.error({ requestId, op: command, transport: caller?.transport, peer: caller?.peer, code: e.code, reason: cause instanceof FileError ? cause.message : undefined, err: errorFields(cause ?? e) }, e.code === 'internal' ? 'internal error' : 'service unavailable');
    }
    return e;
  }

  /** Runs a data operation on the pool, charging its payload (the thread's copy and its result) meanwhile. */
  #offload<K extends ResultKind>(op: Operation<K>, keys: ResolvedKey, input: Payload, options: Options): Promise<Results[K]> {
    const charge = input.length * 2;
    this.budget.adjust(charge);
    const job = this.#pool!.run(op, keys, input, options);
    void job.then(() => this.budget.adjust(-charge), () => this.budget.adjust(-charge));
    return job;
  }

  #countLimited(op: Operation): void {
    const max = this.#limitedPerMinute;
    if (max === 0) return;
    const now = Date.now();
    this.#limitedRuns = this.#limitedRuns.filter((t) => now - t < 60_000);
    if (this.#limitedRuns.length >= max) {
      const wait = Math.ceil((this.#limitedRuns[0]! + 60_000 - now) / 1000);
      throw new CryptError('rate_limited', `${op.command}: at most ${max} per minute (--rotate-limit); try again in ${wait} s`);
    }
    this.#limitedRuns.push(now);
  }

  #limit(op: Operation): number {
    return op.input === 'message' ? this.maxMessage : op.input === 'token' ? this.maxToken : op.input === 'stream' ? this.maxStream : SMALL;
  }

  /**
   * Opens a stream (se, sd; src/core/streams.ts), checked as dispatch() checks a request: the
   * role, the options, the key (sd: the one its header names, when read), the size, the audit
   * log. `declared` is the stream's length when the transport knows it (TCP's length form).
   */
  openStream(op: Operation, caller: Caller, options: unknown, declared: number | null, requestId?: string): OpenStream {
    const start = performance.now();
    let checked: Options = EMPTY;
    const id = requestId ?? this.#nextId();
    let run: StreamRun | null = null;
    const done = (outcome: string, bytesIn: number, bytesOut: number): number => {
      const record: DispatchRecord = {
        requestId: id, transport: caller.transport, peer: caller.peer,
        caller: caller.tokenId ? `token:${caller.tokenId}` : caller.loopback ? 'loopback' : 'anonymous',
        op: op.command, key: run?.key || (op.keyed ? checked.key ?? DEFAULT_KEY : null), keyId: run?.keyId ?? null, outcome, bytesIn, bytesOut,
        durationMs: Math.round((performance.now() - start) * 1000) / 1000,
      };
      for (const o of this.#observers) o(record);
      if (this.audit === null) return 0;
      this.audit.add({ requestId: id, caller, op: op.command, key: record.key, keyId: record.keyId, outcome, bytesIn, bytesOut, durationMs: record.durationMs, tokenIn: null, tokenOut: null, plaintext: null });
      return this.audit.last;
    };
    try {
      if (op.input !== 'stream') throw new CryptError('bad_request', `${op.command} is not a stream`);
      this.policy.authorize(op, caller);
      if (options !== null && options !== undefined) checked = this.#checkOptions(op, options);
      if (declared !== null && declared > this.maxStream) throw new CryptError('too_large', `a stream of ${declared} bytes exceeds the limit of ${this.maxStream} (--max-stream)`);
      if (op.keyed) this.policy.authorizeKey(caller, checked.key ?? DEFAULT_KEY);
      if (this.audit !== null && this.audit.failing !== null) throw new CryptError('unavailable', `${op.command} refused: ${this.audit.failing}`, { cause: AUDIT_FAILURE });
      const context = checked.context ?? null;
      run = op.command === 'se'
        ? encryptRun(this.service.resolve(checked.key, context), declared)
        : decryptRun((name) => {
            this.policy.authorizeKey(caller, name);
            return this.service.resolve(name, context);
          }, declared);
      return { run, done };
    } catch (err) {
      const e = this.renderError(err, caller, op.command, id);
      done(e.code, 0, 0);
      throw e;
    }
  }

  #checkSize(op: Operation, input: Payload, caller: Caller): void {
    const size = input.length;
    if (op.input === 'message') {
      if (size > this.maxMessage) throw new CryptError('too_large', `message of ${size} bytes exceeds the limit of ${this.maxMessage} bytes (--max-frame)`);
    } else if (op.input === 'token') {
      if (size > this.maxToken) throw new CryptError('too_large', `token of ${size} characters exceeds the limit of ${this.maxToken} (the token of a largest message)`);
    } else if (op.input === 'none' && size > 0) {
      throw new CryptError('bad_request', `${op.command} takes no payload${caller.transport === 'tcp' ? `: send "#${op.command}##"` : ': send no body'}`);
    }
  }

  /**
   * Checks options (a Map from TCP, an object from HTTP) for the operation. What was checked of
   * a TCP head is remembered with the head (src/wire/frames.ts caches heads): a client that
   * sends `#en,key=billing#` again and again has it checked once.
   */
  #checkOptions(op: Operation, raw: unknown): Options {
    if (raw instanceof Map) {
      const known = this.#checked.get(raw);
      if (known && known.op === op) return known.options;
      const options = this.#check(op, [...(raw as ReadonlyMap<string, unknown>).entries()]);
      this.#checked.set(raw, { op, options });
      return options;
    }
    if (typeof raw !== 'object' || raw === null) throw new CryptError('bad_request', 'options must be an object');
    return this.#check(op, Object.entries(raw));
  }

  #check(op: Operation, entries: ReadonlyArray<[string, unknown]>): Options {
    const out: Options = {};
    for (const [name, value] of entries) {
      const spec = op.options.get(name);
      if (!spec) {
        const known = op.options.size > 0 ? `; its options: ${[...op.options.keys()].join(', ')}` : '';
        throw new CryptError('bad_request', `${op.command} has no option ${/^[A-Za-z0-9_.-]{1,32}$/.test(name) ? name : '(unprintable)'}${known}`);
      }
      // null is "not given", except for a period, where it is "off" (what ks shows for off)
      if (value === undefined || (value === null && spec.kind !== 'period')) continue;
      (out as Record<string, unknown>)[spec.field] = optionValue(name, spec, value);
    }
    for (const [name, spec] of op.options) {
      if (spec.required && (out as Record<string, unknown>)[spec.field] === undefined) throw new CryptError('bad_request', `${op.command} needs the option ${name}: ${spec.describe}`);
    }
    return entries.length === 0 ? EMPTY : Object.freeze(out);
  }

  #report(id: string, op: Operation, caller: Caller, options: Options, bytesIn: number, start: number, outcome: string, result: unknown): void {
    const { keyId, bytesOut } = measure(op.result, result);
    const record: DispatchRecord = {
      requestId: id,
      transport: caller.transport,
      peer: caller.peer,
      caller: caller.tokenId ? `token:${caller.tokenId}` : caller.loopback ? 'loopback' : 'anonymous',
      op: op.command,
      key: op.keyed ? options.key ?? DEFAULT_KEY : null,
      keyId,
      outcome,
      bytesIn,
      bytesOut,
      durationMs: Math.round((performance.now() - start) * 1000) / 1000,
    };
    for (const o of this.#observers) o(record);
  }
}

const isSpace = (c: number): boolean => c === 0x20 || c === 0x09 || c === 0x0a || c === 0x0d;

/** A token without the whitespace around it (a copy-paste, a file's line break): the one rule of every face. */
export function trimToken(input: Payload): Payload {
  if (typeof input === 'string') {
    if (input.length === 0 || (!isSpace(input.charCodeAt(0)) && !isSpace(input.charCodeAt(input.length - 1)))) return input;
    return input.replace(/^[ \t\r\n]+|[ \t\r\n]+$/g, '');
  }
  let start = 0;
  let end = input.length;
  while (start < end && isSpace(input[start]!)) start++;
  while (end > start && isSpace(input[end - 1]!)) end--;
  return start === 0 && end === input.length ? input : input.subarray(start, end);
}

const TRUE = new Set(['true', '1', 'yes', 'on']);
const FALSE = new Set(['false', '0', 'no', 'off']);
const PERIOD_UNITS = new Map([['s', 1], ['m', 60], ['h', 3600], ['d', 86_400], ['w', 604_800]]);

/** An option's value, checked for its kind: strings from TCP and query strings, JSON values from bodies. */
export function optionValue(name: string, spec: OptionSpec, value: unknown): Options[keyof Options] {
  switch (spec.kind) {
    case 'seconds':
      return seconds(name, value);
    case 'name':
      if (typeof value !== 'string' || !KEY_NAME.test(value)) throw new CryptError('bad_request', `${name} must be a key name: 1 to 64 of a-z, 0-9, '.', '_' and '-', starting with a letter or digit`);
      return value;
    case 'context': {
      const context = typeof value === 'string' && /^[A-Za-z0-9_-]*={0,2}$/.test(value) && value.replace(/=+$/, '').length % 4 !== 1 ? Buffer.from(value, 'base64url') : null;
      if (!context || context.length < 1 || context.length > 256) throw new CryptError('bad_request', `${name} must be base64url of 1 to 256 bytes`);
      return context;
    }
    case 'bool':
      if (typeof value === 'boolean') return value;
      if (typeof value === 'string' && TRUE.has(value.toLowerCase())) return true;
      if (typeof value === 'string' && FALSE.has(value.toLowerCase())) return false;
      throw new CryptError('bad_request', `${name} must be true or false`);
    case 'period': {
      if (value === null || value === false || value === 'off') return null;
      const m = typeof value === 'number' ? [String(value), String(value), 's'] : typeof value === 'string' ? /^(\d{1,10})([smhdw]?)$/.exec(value) : null;
      const secs = m ? Number(m[1]) * PERIOD_UNITS.get(m[2] || 's')! : NaN;
      if (!Number.isSafeInteger(secs) || secs < MIN_AUTO_ROTATE) throw new CryptError('bad_request', `${name} must be off or a period of at least 1h (3600, 24h, 30d)`);
      return secs;
    }
  }
}

/** A whole number of seconds, 0 or more: a number, or its decimal digits (TCP, query strings). */
export function seconds(name: string, value: unknown): number {
  if (typeof value === 'number' && Number.isSafeInteger(value) && value >= 0) return value;
  if (typeof value === 'string' && /^\d{1,15}$/.test(value)) return Number(value);
  throw new CryptError('bad_request', `${name} must be a whole number of seconds, 0 or more`);
}

function measure(kind: ResultKind, result: unknown): { keyId: string | null; bytesOut: number } {
  if (result === null || result === undefined) return { keyId: null, bytesOut: 0 };
  switch (kind) {
    case 'token': {
      const r = result as Results['token'];
      return { keyId: r.keyId, bytesOut: r.token.length };
    }
    case 'plaintext': {
      const r = result as Results['plaintext'];
      return { keyId: r.keyId, bytesOut: r.plaintext.length };
    }
    case 'key': {
      const r = result as Results['key'];
      return { keyId: r.id, bytesOut: r.key.length };
    }
    case 'json': {
      const r = result as { id?: unknown; key_id?: unknown; primary?: unknown };
      const id = r.id ?? r.key_id ?? r.primary;
      return { keyId: typeof id === 'string' ? id : null, bytesOut: 0 };
    }
    default:
      return { keyId: null, bytesOut: 0 };
  }
}
