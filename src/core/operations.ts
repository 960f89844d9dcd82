/**
 * The operations table: every operation crypt has, once. The TCP commands and the decoder's
 * per-command limit, the HTTP routes, their documentation and 405 answers, the access rules and
 * crypt-client's commands are all made from it, and a test holds the tables in README.md and
 * docs/protocol.md to it.
 *
 * Rules:
 * - An operation is named by its TCP command (`en`), the name users type everywhere.
 * - Lookups by a name that came from outside go through `operation()`, a Map: never a plain object.
 * - `data` operations are pure functions of a request's keys and may run on a worker thread;
 *   `run` operations need the main thread (the keyring, the access policy).
 * - A `keyed` operation works on one named key (option `key`, `default` when absent): the
 *   caller's token must cover that name, and the dispatcher resolves it for data operations.
 * - Adding an operation is one entry here plus its method in src/core/service.ts.
 */
import type { Caller, Policy, Role } from './access.js';
import type { CryptService, Decrypted, Encrypted, ExportedKey } from './service.js';
import { dataKeyWith, decryptWith, encryptWith, rewrapWith } from './service.js';
import type { ResolvedKey } from '../keys/keyring.js';
import type { Readiness } from './health.js';
import type { AuditLog } from './audit.js';
import { CryptError } from './errors.js';

/** What a request carries: a message, a token, an access secret, nothing, or a stream of any size (se, sd: src/core/streams.ts). */
export type InputKind = 'message' | 'token' | 'secret' | 'none' | 'stream';

/** What an operation answers; each transport renders every kind. */
export interface Results {
  /** A Fernet token (text/plain over HTTP; `{"token", "key_id"}` in JSON). */
  token: Encrypted;
  /** A plaintext (bytes over HTTP; `{"plaintext" | "plaintext_base64", "timestamp"}` in JSON). */
  plaintext: Decrypted;
  /** A key (text/plain over HTTP; `{"key", "id"}` in JSON). */
  key: ExportedKey;
  /** A JSON document, the same on every face. */
  json: object;
  /** The role an access secret grants (`ok <role>` over TCP). */
  role: { role: Role };
  /** A stream's reply, sent as it is made (se, sd): never a value. */
  stream: never;
}

/** A result kind. */
export type ResultKind = keyof Results;

/** Checked option values. */
export interface Options {
  ttl?: number | undefined;
  /** The named key; `default` when absent. */
  key?: string | undefined;
  /** A derived key's context, decoded. */
  context?: Buffer | undefined;
  derived?: boolean | undefined;
  exportable?: boolean | undefined;
  deletionAllowed?: boolean | undefined;
  /** Seconds between automatic rotations; null for off. */
  autoRotate?: number | null | undefined;
  confirm?: boolean | undefined;
  wrappedOnly?: boolean | undefined;
}

/** An option an operation takes (`#de,ttl=60#`, `?ttl=60`, `"ttl": 60`). */
export interface OptionSpec {
  kind: 'seconds' | 'name' | 'context' | 'bool' | 'period';
  /** The field of Options it fills. */
  field: keyof Options;
  describe: string;
  required?: boolean;
}

/** One operation. */
export interface Operation<K extends ResultKind = ResultKind> {
  /** The TCP command and the name users type (crypt-client, docs, errors, logs). */
  command: string;
  /** A word for people: encrypt, decrypt... */
  title: string;
  /** One line, for help, the OpenAPI document and docs. */
  summary: string;
  /**
   * The HTTP route (`{key}` in the path is the option `key`), with an example a person can
   * paste, and an older path that still works; null when HTTP has none.
   */
  http: { method: 'GET' | 'POST' | 'DELETE'; path: string; example: string; alias?: string } | null;
  /** The roles that may run it besides admin (which may run everything); null for anyone. */
  roles: readonly Role[] | null;
  input: InputKind;
  options: ReadonlyMap<string, OptionSpec>;
  result: K;
  /** It works on one named key (option `key`): scoped tokens are checked against the name. */
  keyed: boolean;
  /** Requests behind this one on a connection wait until it has finished (key management). */
  barrier: boolean;
  /** Counted against --rotate-limit, across callers (key changes are costly and unbounded otherwise). */
  limited: boolean;
  /** A key export, refused to everyone by --no-get-key. */
  exportsKey: boolean;
  /** The JSON schema of a `json` result (for the HTTP documentation and serializer). */
  resultSchema?: object;
  /** The HTTP status of a result, when not always 200 (hc: 503 when not ready); crypt-client exits 1 at 400 or more. */
  status?: (result: unknown) => number;
  /** false: no audit line (hc: load balancers ask every few seconds). */
  audited?: false;
  /** false: the input is not a token or plaintext of the caller's, and no HMAC of it is recorded (ah). */
  auditValue?: false;
  /** A data operation: pure over the request's keys, may run on a worker thread. */
  data?: (keys: ResolvedKey, input: Payload, options: Options) => Results[K];
  /** An operation of the main thread. */
  run?: (ctx: Context, input: Payload, options: Options) => Results[K] | Promise<Results[K]>;
}

/** A request's payload as the transport has it. */
export type Payload = Uint8Array | string;

/** What a main-thread operation may use. */
export interface Context {
  service: CryptService;
  policy: Policy;
  caller: Caller;
  audit: AuditLog | null;
}

const option = (kind: OptionSpec['kind'], field: keyof Options, describe: string, required = false): OptionSpec => ({ kind, field, describe, required });
const TTL = option('seconds', 'ttl', 'refuse tokens older than this many seconds');
const KEY = option('name', 'key', 'the named key (default: default)');
const NAMED = option('name', 'key', 'the named key', true);
const CONTEXT = option('context', 'context', "a derived key's context: base64url, 1 to 256 bytes");
const options = (...entries: Array<[string, OptionSpec]>) => new Map<string, OptionSpec>(entries);
const KEYED = options(['key', KEY], ['context', CONTEXT]);

const VERSION_INFO = {
  type: 'object',
  properties: {
    id: { type: 'string', description: 'a public fingerprint of the version' },
    state: { type: 'string', enum: ['primary', 'active', 'retired'] },
    created: { type: 'string', format: 'date-time', nullable: true },
  },
};
const KEYRING_FACTS = {
  type: 'object',
  properties: {
    fingerprint: { type: 'string', description: "a hash of every key's name, version ids and states: equal on servers with the same keys in force" },
    primary: { type: 'string', description: 'the id of the primary version of the key default' },
    keys: { type: 'integer', description: 'how many named keys' },
  },
};
/** The JSON schema of a liveness answer (GET /health). */
export const LIVENESS = { type: 'object', properties: { status: { type: 'string', enum: ['ok'] }, keyring: KEYRING_FACTS } };
const READINESS = {
  type: 'object',
  properties: {
    status: { type: 'string', enum: ['ready', 'not_ready'] },
    checks: { type: 'array', items: { type: 'object', properties: { name: { type: 'string' }, ok: { type: 'boolean' }, reason: { type: 'string' } } } },
    keyring: KEYRING_FACTS,
  },
};
const KEY_DETAILS = {
  type: 'object',
  properties: {
    name: { type: 'string' },
    derived: { type: 'boolean' },
    exportable: { type: 'boolean' },
    deletion_allowed: { type: 'boolean' },
    auto_rotate: { type: 'integer', nullable: true, description: 'seconds between automatic rotations, or null' },
    primary: { type: 'string', description: 'the id of the primary version' },
    versions: { type: 'array', items: VERSION_INFO },
  },
};
const TOKEN_FACTS = {
  type: 'object',
  properties: {
    timestamp: { type: 'integer', description: "the token's creation time, seconds since the Unix epoch" },
    created: { type: 'string', format: 'date-time' },
    age_seconds: { type: 'integer' },
    key: { type: 'string', description: 'the named key inspected' },
    key_id: { type: 'string', nullable: true, description: 'the version that verifies the token, or null when none does' },
    key_state: { type: 'string', enum: ['primary', 'active', 'retired'], nullable: true },
  },
};

type Defaults = 'barrier' | 'limited' | 'exportsKey' | 'options' | 'keyed';

function op<K extends ResultKind>(spec: Omit<Operation<K>, Defaults> & Partial<Pick<Operation<K>, Defaults>>): Operation<K> {
  return { barrier: false, limited: false, exportsKey: false, keyed: false, options: options(), ...spec };
}

/** Every operation, in the order docs list them. */
export const OPERATIONS: readonly Operation[] = [
  op({
    command: 'en', title: 'encrypt', summary: 'encrypt a message: the message in, a Fernet token out',
    http: { method: 'POST', path: '/encrypt', example: "curl -d 'hello' http://{host}/encrypt" },
    roles: ['user', 'encrypt'], input: 'message', result: 'token', keyed: true, options: KEYED,
    // the dispatcher hands a message over as bytes (a string one is encoded there, before its size is checked)
    data: (keys, input) => encryptWith(keys, input as Uint8Array),
  }),
  op({
    command: 'de', title: 'decrypt', summary: 'decrypt a token: a token in, its message out',
    http: { method: 'POST', path: '/decrypt', example: 'curl --data-binary @token.txt http://{host}/decrypt' },
    roles: ['user', 'decrypt'], input: 'token', result: 'plaintext', keyed: true, options: options(['ttl', TTL], ['key', KEY], ['context', CONTEXT]),
    data: (keys, input, o) => decryptWith(keys, input, o.ttl),
  }),
  op({
    command: 'rw', title: 'rewrap', summary: 'rewrap a token under the primary key, keeping its timestamp; the plaintext never leaves the server',
    http: { method: 'POST', path: '/rewrap', example: 'curl --data-binary @token.txt http://{host}/rewrap' },
    roles: ['user'], input: 'token', result: 'token', keyed: true, options: KEYED,
    data: (keys, input) => rewrapWith(keys, input),
  }),
  op({
    command: 'dk', title: 'data key', summary: "a fresh 256-bit data key to encrypt files near the data: the key (base64url) and the key wrapped as a Fernet token under the named key; wrapped_only: the token alone",
    http: { method: 'POST', path: '/datakey', example: 'curl -X POST http://{host}/datakey' },
    roles: ['user', 'encrypt'], input: 'none', result: 'json', keyed: true,
    options: options(['key', KEY], ['context', CONTEXT], ['wrapped_only', option('bool', 'wrappedOnly', 'answer the wrapped key only: for callers that store it for later')]),
    resultSchema: { type: 'object', properties: { plaintext: { type: 'string', description: 'the 32-byte key, base64url (absent with wrapped_only)' }, token: { type: 'string', description: "a Fernet token of the key's 32 bytes: decrypt it (de) to get the key back" }, key_id: { type: 'string' } } },
    data: (keys, _input, o) => dataKeyWith(keys, o.wrappedOnly ?? false),
  }),
  op({
    command: 'in', title: 'inspect', summary: "a token's creation time and age, and the key version that verifies it (or that none does); never its plaintext",
    http: { method: 'POST', path: '/inspect', example: 'curl --data-binary @token.txt http://{host}/inspect' },
    roles: ['user', 'decrypt'], input: 'token', result: 'json', keyed: true, options: KEYED, resultSchema: TOKEN_FACTS,
    run: (ctx, input, o) => ctx.service.inspect(o.key, o.context ?? null, input),
  }),
  op({
    command: 'se', title: 'stream encrypt', summary: 'encrypt a stream of any size into crypt-stream/1 (docs/stream-format.md), answered as it is made: for callers without crypt-client (nc, curl)',
    http: { method: 'POST', path: '/stream/encrypt', example: 'curl -T big.iso http://{host}/stream/encrypt > big.iso.crypt' },
    roles: ['user', 'encrypt'], input: 'stream', result: 'stream', keyed: true, options: KEYED,
  }),
  op({
    command: 'sd', title: 'stream decrypt', summary: 'decrypt a crypt-stream/1 stream, answered as each chunk verifies; tampering found late ends the reply before its end (TCP closes, HTTP aborts)',
    http: { method: 'POST', path: '/stream/decrypt', example: 'curl -T big.iso.crypt http://{host}/stream/decrypt > big.iso' },
    // its key is the one the stream's header names, checked against the caller's token when read
    roles: ['user', 'decrypt'], input: 'stream', result: 'stream', options: options(['context', CONTEXT]),
  }),
  op({
    command: 'ki', title: 'list keys', summary: "a key's versions (ids, states, creation times; default: the key default), and every named key the caller may use with its settings; never key material",
    http: { method: 'GET', path: '/keys', example: 'curl http://{host}/keys' },
    // not keyed: a token for tenant-* lists its keys with a plain ki (keys is then empty: default is outside it); key= is checked here
    roles: ['user'], input: 'none', result: 'json', options: options(['key', KEY]),
    resultSchema: { type: 'object', properties: { key: { type: 'string', nullable: true }, keys: { type: 'array', items: VERSION_INFO }, named_keys: { type: 'array', items: KEY_DETAILS } } },
    run: (ctx, _input, o) => {
      if (o.key !== undefined) ctx.policy.authorizeKey(ctx.caller, o.key);
      return ctx.service.keyInfo(o.key, (name) => ctx.policy.covers(ctx.caller, name));
    },
  }),
  op({
    command: 'ks', title: 'show key', summary: "one named key's settings and versions",
    http: { method: 'GET', path: '/keys/{key}', example: 'curl http://{host}/keys/default' },
    roles: ['user'], input: 'none', result: 'json', keyed: true, options: options(['key', NAMED]), resultSchema: KEY_DETAILS,
    run: (ctx, _input, o) => ctx.service.showKey(o.key!),
  }),
  op({
    command: 'kc', title: 'create key', summary: 'create a named key: derived (requests bring a context) and exportable if asked',
    http: { method: 'POST', path: '/keys', example: `curl -H 'content-type: application/json' -d '{"key": "billing"}' http://{host}/keys` },
    roles: [], input: 'none', result: 'json', keyed: true, barrier: true, resultSchema: KEY_DETAILS,
    options: options(['key', NAMED], ['derived', option('bool', 'derived', 'requests bring a context; their keys are derived from it')], ['exportable', option('bool', 'exportable', 'gk and backups may export it')]),
    run: (ctx, _input, o) => ctx.service.createKey(o.key!, { derived: o.derived ?? false, exportable: o.exportable ?? false }),
  }),
  op({
    command: 'kf', title: 'configure key', summary: "change a named key's settings: exportable, deletion_allowed, auto_rotate",
    http: { method: 'POST', path: '/keys/{key}/config', example: `curl -H 'content-type: application/json' -d '{"auto_rotate": "30d"}' http://{host}/keys/default/config` },
    roles: [], input: 'none', result: 'json', keyed: true, barrier: true, resultSchema: KEY_DETAILS,
    options: options(['key', NAMED], ['exportable', option('bool', 'exportable', 'gk and backups may export it')], ['deletion_allowed', option('bool', 'deletionAllowed', 'the key may be deleted')], ['auto_rotate', option('period', 'autoRotate', 'rotate automatically this often (at least 1h: 3600, 24h, 30d), or off')]),
    run: (ctx, _input, o) => ctx.service.configureKey(o.key!, { exportable: o.exportable, deletionAllowed: o.deletionAllowed, autoRotate: o.autoRotate }),
  }),
  op({
    command: 'kd', title: 'delete key', summary: 'delete a named key and every version of it: every token made with it is lost; only when deletion_allowed and confirmed',
    http: { method: 'DELETE', path: '/keys/{key}', example: "curl -X DELETE 'http://{host}/keys/old?confirm=true'" },
    roles: [], input: 'none', result: 'json', keyed: true, barrier: true, resultSchema: { type: 'object', properties: { deleted: { type: 'string' } } },
    options: options(['key', NAMED], ['confirm', option('bool', 'confirm', 'true: yes, destroy it')]),
    run: (ctx, _input, o) => ctx.service.deleteKey(o.key!, o.confirm ?? false),
  }),
  op({
    command: 'gk', title: 'get key', summary: "a key's primary version in Fernet format (an exportable key only)",
    http: { method: 'GET', path: '/key', example: 'curl http://{host}/key' },
    roles: [], input: 'none', result: 'key', keyed: true, exportsKey: true, options: options(['key', KEY]),
    run: (ctx, _input, o) => ctx.service.getKey(o.key),
  }),
  op({
    command: 'rk', title: 'rotate', summary: 'rotate: make a new primary version of a key; older tokens still decrypt',
    http: { method: 'POST', path: '/keys/{key}/rotate', example: 'curl -X POST http://{host}/keys/default/rotate', alias: '/keys/rotate' },
    roles: [], input: 'none', result: 'json', keyed: true, barrier: true, limited: true, resultSchema: VERSION_INFO, options: options(['key', KEY]),
    run: (ctx, _input, o) => ctx.service.rotate(o.key),
  }),
  op({
    command: 'hc', title: 'health', summary: "readiness: ready or not_ready, each check (the keyring loaded and current, the listeners up), and the keyring's fingerprint and primary version; HTTP answers 503 when not ready",
    http: { method: 'GET', path: '/ready', example: 'curl http://{host}/ready' },
    roles: null, input: 'none', result: 'json', resultSchema: READINESS, audited: false,
    status: (r) => ((r as Readiness).status === 'ready' ? 200 : 503),
    run: (ctx) => ctx.service.health.ready(),
  }),
  op({
    command: 'ah', title: 'audit hash', summary: 'the HMAC the audit log records for a value (a token, or a plaintext with --audit-hmac-plaintext), and the caller id it gives an access token: to search the log',
    http: { method: 'POST', path: '/audit/hash', example: 'curl --data-binary @token.txt http://{host}/audit/hash' },
    roles: [], input: 'token', result: 'json', auditValue: false,
    resultSchema: { type: 'object', properties: { hmac: { type: 'string', description: 'the token_hmac (or plaintext_hmac) of lines about this value' }, caller: { type: 'string', description: 'the caller of lines made with this value as an access token' } } },
    run: (ctx, input) => {
      if (!ctx.audit) throw new CryptError('conflict', 'the audit log is off: start the server with --audit-file');
      return { hmac: ctx.audit.hash(input), caller: ctx.audit.callerIdOfSecret(input) };
    },
  }),
  op({
    command: 'au', title: 'authenticate', summary: 'authenticate the connection with an access token (HTTP: the Authorization header)',
    http: null,
    roles: null, input: 'secret', result: 'role', barrier: true,
    run: (ctx, input) => ({ role: ctx.policy.authenticate(ctx.caller, input) }),
  }),
];

const BY_COMMAND: ReadonlyMap<string, Operation> = new Map(OPERATIONS.map((o) => [o.command, o]));

/** The operation a command names, or undefined. */
export const operation = (command: string): Operation | undefined => BY_COMMAND.get(command);

/** The commands, for messages: `en, de, rw, ...`. */
export const COMMAND_LIST = OPERATIONS.map((o) => o.command).join(', ');

