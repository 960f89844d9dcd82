import t from 'tap';
import { readFileSync } from 'node:fs';
import { ERRORS, CryptError, errorCode, errorFields, toCryptError, invalidToken } from '../../src/core/errors.js';
import type { ErrorCode } from '../../src/core/errors.js';
import { encodeError } from '../../src/wire/replies.js';

const docs = readFileSync(new URL('../../docs/protocol.md', import.meta.url), 'utf8');

t.test('every catalogue entry is well-formed, encodable and documented', async (t) => {
  for (const code of Object.keys(ERRORS) as ErrorCode[]) {
    const err = new CryptError(code);
    t.equal(err.status, ERRORS[code].status, `${code}: status from the table`);
    t.match(code, /^[a-z_]+$/, `${code}: snake_case`);
    t.notMatch(err.message, /[\r\n]/, `${code}: no line break in the message`);
    t.equal(encodeError(err), `#er#${code}#${err.message}#\n`, `${code}: encodes as a TCP error frame`);
    t.match(docs, new RegExp(`^\\| \`${code}\` \\| ${err.status} \\|`, 'm'), `${code}: docs/protocol.md lists it with status ${err.status}`);
  }
  const documented = [...docs.matchAll(/^\| `([a-z_]+)` \| (\d{3}) \|/gm)].map((m) => m[1]);
  t.same(documented.sort(), Object.keys(ERRORS).sort(), 'the docs list no code the catalogue lacks');
});

t.test('unknown faults become internal, with no detail', async (t) => {
  const e = toCryptError(new TypeError('secret detail'));
  t.equal(e.code, 'internal', 'internal');
  t.equal(e.message, 'internal error', 'no detail leaks');
  const known = new CryptError('too_large', 'message of 5 bytes exceeds the limit of 4 bytes');
  t.equal(toCryptError(known), known, 'a CryptError passes through');
  t.same([invalidToken().code, invalidToken().message], ['invalid_token', 'invalid token'], 'the one opaque token error');
  t.equal(new CryptError('internal', 'rotation failed: /secret/path').message, 'internal error', 'internal never carries a detail, even when given one');
  const cause = new Error('/var/lib/crypt/keyring.json: EACCES');
  const unavailable = new CryptError('unavailable', 'the keyring could not be updated', { cause });
  t.equal(unavailable.status, 503, 'unavailable is 503');
  t.equal(unavailable.cause, cause, 'the operator detail is kept as the cause, for the log');
  t.notMatch(unavailable.message, /\//, 'and not in the message');
});

t.test('codes are looked up in a Map, never in a plain object', async (t) => {
  t.equal(errorCode('invalid_token'), 'invalid_token', 'a real code');
  for (const name of ['constructor', 'toString', '__proto__', 'hasOwnProperty', 'valueOf']) t.equal(errorCode(name), undefined, `${name} is not a code`);
});

t.test('errorFields keeps the type, code and frames, never the message', async (t) => {
  const err = Object.assign(new Error('contains SECRET data'), { code: 'EACCES' });
  const fields = errorFields(err);
  t.equal(fields.type, 'Error', 'type');
  t.equal(fields.code, 'EACCES', 'code');
  t.notMatch(JSON.stringify(fields), 'SECRET', 'no message');
  t.same(errorFields('thrown string'), { type: 'string' }, 'a non-error is its type only');
});
