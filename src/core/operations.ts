/**
 * The operations table: every operation crypt has, once. The TCP commands and the decoder's
 * per-command limit, the HTTP routes, their documentation and 405 answers, the access rules and
 * crypt-client's commands are all made from it, and a test holds the tables in README.md and
 * docs/protocol.md to it.
 *
 * Rules:
 * - An operation is named by its TCP command (`en`), the name users type everywhere.
 * - Lookups by a name that came from outside go through `operation()`, a Map: never a plain object.
 * - `data` operations are pure functions of the keys and may run on a worker thread; `run`
 *   operations need the main thread (the keyring, the access policy).
 * - Adding an operation is one entry here plus its method in src/core/service.ts.
 */
import type { Caller, Policy, Role } from './access.js';
import type { CryptService, DataOps, Decrypted, Encrypted, ExportedKey } from './service.js';

/** What a request carries: a message, a token, an access secret, or nothing. */
export type InputKind = 'message' | 'token' | 'secret' | 'none';

/** What an operation answers; each transport renders every kind. */
export interface Results {
  /** A Fernet token (text/plain over HTTP; `{"token"}` in JSON). */
  token: Encrypted;
  /** A plaintext (bytes over HTTP; `{"plaintext" | "plaintext_base64", "timestamp"}` in JSON). */
  plaintext: Decrypted;
  /** A key (text/plain over HTTP; `{"key", "id"}` in JSON). */
  key: ExportedKey;
  /** A JSON document, the same on every face. */
  json: object;
  /** The role an access secret grants (`ok <role>` over TCP). */
  role: { role: Role };
}

/** A result kind. */
export type ResultKind = keyof Results;

/** An option an operation takes (`#de,ttl=60#`, `?ttl=60`, `"ttl": 60`). */
export interface OptionSpec {
  kind: 'seconds';
  describe: string;
}

/** Checked option values. */
export interface Options {
  ttl?: number | undefined;
}

/** One operation. */
export interface Operation<K extends ResultKind = ResultKind> {
  /** The TCP command and the name users type (crypt-client, docs, errors, logs). */
  command: string;
  /** A word for people: encrypt, decrypt... */
  title: string;
  /** One line, for help, the OpenAPI document and docs. */
  summary: string;
  /** The HTTP route, with an example a person can paste; null when HTTP has none. */
  http: { method: 'GET' | 'POST'; path: string; example: string } | null;
  /** The role needed: user (user or admin), admin, or null for anyone. */
  role: Role | null;
  input: InputKind;
  options: ReadonlyMap<string, OptionSpec>;
  result: K;
  /** Requests behind this one on a connection wait until it has finished (key management). */
  barrier: boolean;
  /** Counted against --rotate-limit, across callers (key changes are costly and unbounded otherwise). */
  limited: boolean;
  /** A key export, refused to everyone by --no-get-key. */
  exportsKey: boolean;
  /** The JSON schema of a `json` result (for the HTTP documentation and serializer). */
  resultSchema?: object;
  /** A data operation: pure over the keys, may run on a worker thread. */
  data?: (ops: DataOps, input: Payload, options: Options) => Results[K];
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
}

const TTL: OptionSpec = { kind: 'seconds', describe: 'refuse tokens older than this many seconds' };
const TOKEN_FACTS = {
  type: 'object',
  properties: {
    timestamp: { type: 'integer', description: "the token's creation time, seconds since the Unix epoch" },
    created: { type: 'string', format: 'date-time' },
    age_seconds: { type: 'integer' },
    key_id: { type: 'string', nullable: true, description: 'the key that verifies the token, or null when none in the keyring does' },
    key_state: { type: 'string', enum: ['primary', 'active', 'retired'], nullable: true },
  },
};
const KEY_INFO = {
  type: 'object',
  properties: {
    id: { type: 'string', description: 'a public fingerprint of the key' },
    state: { type: 'string', enum: ['primary', 'active', 'retired'] },
    created: { type: 'string', format: 'date-time', nullable: true },
  },
};
const none = new Map<string, OptionSpec>();

type Defaults = 'barrier' | 'limited' | 'exportsKey' | 'options';

function op<K extends ResultKind>(spec: Omit<Operation<K>, Defaults> & Partial<Pick<Operation<K>, Defaults>>): Operation<K> {
  return { barrier: false, limited: false, exportsKey: false, options: none, ...spec };
}

/** Every operation, in the order docs list them. */
export const OPERATIONS: readonly Operation[] = [
  op({
    command: 'en', title: 'encrypt', summary: 'encrypt a message: the message in, a Fernet token out',
    http: { method: 'POST', path: '/encrypt', example: "curl -d 'hello' http://{host}/encrypt" },
    role: 'user', input: 'message', result: 'token',
    data: (ops, input) => ops.encrypt(bytes(input)),
  }),
  op({
    command: 'de', title: 'decrypt', summary: 'decrypt a token: a token in, its message out',
    http: { method: 'POST', path: '/decrypt', example: 'curl --data-binary @token.txt http://{host}/decrypt' },
    role: 'user', input: 'token', result: 'plaintext', options: new Map([['ttl', TTL]]),
    data: (ops, input, options) => ops.decrypt(input, options.ttl),
  }),
  op({
    command: 'rw', title: 'rewrap', summary: 'rewrap a token under the primary key, keeping its timestamp; the plaintext never leaves the server',
    http: { method: 'POST', path: '/rewrap', example: 'curl --data-binary @token.txt http://{host}/rewrap' },
    role: 'user', input: 'token', result: 'token',
    data: (ops, input) => ops.rewrap(input),
  }),
  op({
    command: 'in', title: 'inspect', summary: "a token's creation time and age, and the key that verifies it (or that none does); never its plaintext",
    http: { method: 'POST', path: '/inspect', example: 'curl --data-binary @token.txt http://{host}/inspect' },
    role: 'user', input: 'token', result: 'json', resultSchema: TOKEN_FACTS,
    run: (ctx, input) => ctx.service.inspect(input),
  }),
  op({
    command: 'ki', title: 'key info', summary: 'key ids, states and creation times as JSON, never key material',
    http: { method: 'GET', path: '/keys', example: 'curl http://{host}/keys' },
    role: 'user', input: 'none', result: 'json', resultSchema: { type: 'object', properties: { keys: { type: 'array', items: KEY_INFO } } },
    run: (ctx) => ctx.service.keyInfo(),
  }),
  op({
    command: 'gk', title: 'get key', summary: 'the primary key in Fernet format',
    http: { method: 'GET', path: '/key', example: 'curl http://{host}/key' },
    role: 'admin', input: 'none', result: 'key', exportsKey: true,
    run: (ctx) => ctx.service.getKey(),
  }),
  op({
    command: 'rk', title: 'rotate', summary: 'rotate: make a new primary key; older tokens still decrypt',
    http: { method: 'POST', path: '/keys/rotate', example: 'curl -X POST http://{host}/keys/rotate' },
    role: 'admin', input: 'none', result: 'json', barrier: true, limited: true, resultSchema: KEY_INFO,
    run: (ctx) => ctx.service.rotate(),
  }),
  op({
    command: 'au', title: 'authenticate', summary: 'authenticate the connection with an access token (HTTP: the Authorization header)',
    http: null,
    role: null, input: 'secret', result: 'role', barrier: true,
    run: (ctx, input) => ({ role: ctx.policy.authenticate(ctx.caller, input) }),
  }),
];

const BY_COMMAND: ReadonlyMap<string, Operation> = new Map(OPERATIONS.map((o) => [o.command, o]));

/** The operation a command names, or undefined. */
export const operation = (command: string): Operation | undefined => BY_COMMAND.get(command);

/** The commands, for messages: `en, de, rw, ki, gk, rk, au`. */
export const COMMAND_LIST = OPERATIONS.map((o) => o.command).join(', ');

/** A payload as bytes (a string payload is UTF-8). */
export const bytes = (input: Payload): Uint8Array => (typeof input === 'string' ? Buffer.from(input, 'utf8') : input);
