/**
 * The JSON schemas of the HTTP routes, made from the operations table: they document every
 * route in the OpenAPI document and describe (and serialize) responses. Request bodies are
 * checked in code (src/transports/http/routes.ts), item by item, so that a batch item with a
 * wrongly typed field fails alone and every message names the field.
 */
import type { FastifySchema } from 'fastify';
import type { InputKind, Operation, OptionSpec, ResultKind } from '../../core/operations.js';

/** The error body, shared by every route. */
export const errorSchema = {
  $id: 'Error',
  type: 'object',
  properties: {
    error: {
      type: 'object',
      properties: { code: { type: 'string' }, message: { type: 'string' } },
      required: ['code', 'message'],
    },
  },
  required: ['error'],
} as const;

const errorRef = { $ref: 'Error#' };
const itemError = { error: { type: 'object', properties: { code: { type: 'string' }, message: { type: 'string' } } } };
const timestamp = { type: 'integer', description: "the token's creation time, seconds since the Unix epoch" };

/** The JSON fields that carry each kind of input. */
export const INPUT_FIELDS: Readonly<Record<InputKind, readonly string[]>> = {
  message: ['plaintext', 'plaintext_base64'],
  token: ['token'],
  secret: [],
  none: [],
  stream: [],
};

const inputProperties = (kind: InputKind): Record<string, object> =>
  kind === 'message'
    ? { plaintext: { type: 'string', description: 'the message as text (UTF-8)' }, plaintext_base64: { type: 'string', description: 'the message as base64 (standard or URL-safe, padded or not)' } }
    : kind === 'token'
      ? { token: { type: 'string', description: 'a Fernet token; whitespace around it is ignored' } }
      : {};

const JSON_TYPES: Record<OptionSpec['kind'], object> = {
  seconds: { type: 'integer', minimum: 0 },
  name: { type: 'string', pattern: '^[a-z0-9][a-z0-9._-]{0,63}$' },
  context: { type: 'string', description: 'base64url, 1 to 256 bytes' },
  bool: { type: 'boolean' },
  period: { type: 'string', description: 'off, or seconds (at least 3600), or 24h, 30d' },
};

function optionProperties(op: Operation, json: boolean, entries: ReadonlyArray<[string, OptionSpec]> = [...op.options.entries()]): Record<string, object> {
  const out: Record<string, object> = {};
  for (const [name, spec] of entries) out[name] = { ...(json ? JSON_TYPES[spec.kind] : { type: 'string' }), description: spec.describe };
  if (op.result === 'plaintext' && json) out.encoding = { type: 'string', enum: ['auto', 'base64'], description: 'base64: answer plaintext_base64 even for UTF-8 text' };
  return out;
}

/** The JSON of one result (in a JSON response or a batch item). */
const resultProperties: Record<ResultKind, Record<string, object>> = {
  token: { token: { type: 'string' }, key_id: { type: 'string', description: 'the key that made the token' }, previous_key_id: { type: 'string', description: 'rewrap: the key the token was under before' } },
  plaintext: { plaintext: { type: 'string' }, plaintext_base64: { type: 'string' }, timestamp },
  key: { key: { type: 'string' }, id: { type: 'string' } },
  json: {},
  role: { role: { type: 'string' } },
  stream: {},
};

function okResponse(op: Operation): object {
  switch (op.result) {
    case 'token':
    case 'plaintext': {
      const raw = op.result === 'token'
        ? { 'text/plain': { schema: { type: 'string', description: 'the token and a line break' } } }
        : { 'text/plain': { schema: { type: 'string', description: 'the plaintext, when it is UTF-8' } }, 'application/octet-stream': { schema: { type: 'string', format: 'binary', description: 'the plaintext, when it is not UTF-8' } } };
      const props = resultProperties[op.result];
      const json = { type: 'object', properties: { ...props, batch: { type: 'array', items: { type: 'object', properties: { ...props, ...itemError } } } } };
      return { content: { ...raw, 'application/json': { schema: json } } };
    }
    case 'key':
      return { content: { 'text/plain': { schema: { type: 'string' } }, 'application/json': { schema: { type: 'object', properties: resultProperties.key } } } };
    default:
      return op.resultSchema ?? { type: 'object', additionalProperties: true };
  }
}

/** The schema of an operation's route. */
export function routeSchema(op: Operation): FastifySchema {
  const schema: Record<string, unknown> = {
    summary: op.summary,
    description: `TCP: #${op.command}#...#. Roles: ${op.roles === null ? 'anyone' : ['admin', ...op.roles].join(', ')}.`,
    // an operation with a status of its own (hc: 503 not_ready) answers 503 with its result or an error: no 503 schema
    response: { 200: okResponse(op), ...Object.fromEntries([400, 401, 403, 413, 415, 429, ...(op.status ? [] : [503])].map((s) => [s, errorRef])) },
  };
  const inPath = [...op.http!.path.matchAll(/\{(\w+)\}/g)].map((m) => m[1]!);
  if (inPath.length > 0) schema.params = { type: 'object', properties: Object.fromEntries(inPath.map((p) => [p, { type: 'string', description: op.options.get(p)?.describe ?? p }])), required: inPath };
  const queried = [...op.options.entries()].filter(([name]) => !inPath.includes(name));
  if (queried.length > 0) schema.querystring = { type: 'object', properties: optionProperties(op, false, queried) };
  if (op.input === 'message' || op.input === 'token') {
    const item = { ...inputProperties(op.input), ...optionProperties(op, true) };
    schema.body = {
      content: {
        'application/json': {
          schema: {
            type: 'object',
            description: `one ${op.input}, or {"batch": [...]} of them (options beside "batch" apply to every item)`,
            properties: { ...item, batch: { type: 'array', description: 'items are checked one by one: a malformed item fails alone', items: { type: 'object', properties: item } } },
          },
        },
      },
    };
  }
  return schema as FastifySchema;
}
