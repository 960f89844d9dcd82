// Odd spellings of a token: crypt's one rule on every face (canonical base64url with padding,
// surrounding ASCII whitespace trimmed, nothing else) beside what Python's cryptography accepts.
// docs/protocol.md has the same table; this test holds both crypt and the table to it.
import t from 'tap';
import { readFileSync } from 'node:fs';
import { dispatcherFor } from '../helpers/server.js';
import { operation } from '../../src/core/operations.js';
import { newCaller } from '../../src/core/access.js';
import { python } from '../helpers/python.js';

const swapAlphabet = (s: string) => s.replace(/-/g, '+').replace(/_/g, '/');
const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';

/** Each spelling: its name in docs/protocol.md, and how to make it from a canonical token. */
const SPELLINGS: Array<[string, (tok: string) => string]> = [
  ['canonical', (s) => s],
  ['padding left out', (s) => s.replace(/=+$/, '')],
  ['one `=` too many', (s) => s + '='],
  ['a leading space', (s) => ' ' + s],
  ['a trailing space', (s) => s + ' '],
  ['a trailing LF', (s) => s + '\n'],
  ['a trailing CR LF', (s) => s + '\r\n'],
  ['a leading tab', (s) => '\t' + s],
  ['spaces on both sides', (s) => '  ' + s + '  '],
  ['a space inside', (s) => s.slice(0, 20) + ' ' + s.slice(20)],
  ['a LF inside', (s) => s.slice(0, 20) + '\n' + s.slice(20)],
  ['`+` and `/` for `-` and `_`', swapAlphabet],
  ['a trailing `!`', (s) => s + '!'],
  ['a trailing `#`', (s) => s + '#'],
  ['`AAAA` after the token', (s) => s + 'AAAA'],
  ['a non-zero unused bit in the last character', (s) => {
    const bare = s.replace(/=+$/, '');
    const last = alphabet.indexOf(bare.at(-1)!);
    return bare.slice(0, -1) + alphabet[last ^ 1] + s.slice(bare.length);
  }],
  ['a leading `=`', (s) => '=' + s],
  ['an `=` inside', (s) => s.slice(0, 20) + '=' + s.slice(20)],
  ['a trailing NUL', (s) => s + '\0'],
  ['a trailing no-break space (U+00A0)', (s) => s + '\u00a0'],
  ['a leading byte-order mark (U+FEFF)', (s) => '\ufeff' + s],
  ['the last character cut', (s) => s.replace(/=+$/, '').slice(0, -1)],
  ['the last 4 characters cut', (s) => s.slice(0, -4)],
  ['the token twice', (s) => s + s],
  ['lower case', (s) => s.toLowerCase()],
  ['base64 of the token', (s) => Buffer.from(s).toString('base64')],
  ['quoted', (s) => `"${s}"`],
];

/** Messages whose tokens end with `==`, `=` and no padding. */
const MESSAGES = ['short', 'a message of 20 b..', 'a message of forty bytes, or near enough'];

t.test('odd token spellings: crypt against its rule, Python against the documented table', async (t) => {
  const { dispatcher, keyring } = await dispatcherFor(t);
  const key = keyring.current.primary;
  // a token with both - and _ in it, so that swapping the alphabet changes it
  const tokens = MESSAGES.map((m) => {
    for (;;) {
      const tok = key.encrypt(Buffer.from(m));
      if (tok.includes('-') && tok.includes('_')) return tok;
    }
  });
  t.same(tokens.map((tok) => (/={1,2}$/.exec(tok)?.[0] ?? '').length), [2, 1, 0], 'the three tokens end with ==, = and no padding');
  const de = operation('de')!;
  const cases = SPELLINGS.flatMap(([name, spell]) => tokens.map((tok) => ({ name, spelled: spell(tok) })));
  t.equal(cases.length, 81, '81 spellings');

  const crypt = cases.map(({ spelled }) => {
    try {
      dispatcher.dispatch(de, newCaller('tcp', '127.0.0.1'), Buffer.from(spelled, 'utf8'), null);
      return 'ok';
    } catch {
      return 'invalid';
    }
  });
  // decrypt with the same key in Python: both sides see the same bytes
  const py = python<string[]>(
    `import sys, json
from cryptography.fernet import Fernet, InvalidToken
d = json.load(sys.stdin)
f = Fernet(d["key"])
out = []
for s in d["tokens"]:
    try:
        f.decrypt(s.encode("utf-8")); out.append("ok")
    except (InvalidToken, ValueError, TypeError):
        out.append("invalid")
print(json.dumps(out))`,
    { key: key.export(), tokens: cases.map((c) => c.spelled) },
  );

  const trimmed = (s: string) => s.replace(/^[ \t\r\n]+|[ \t\r\n]+$/g, '');
  const rule = (s: string) => (tokens.includes(trimmed(s)) ? 'ok' : 'invalid');
  const docs = readFileSync(new URL('../../docs/protocol.md', import.meta.url), 'utf8');
  const table = new Map([...docs.matchAll(/^\| (.+?) \| (accepted|refused|depends on the padding) \| (accepted|refused|depends on the padding) \|$/gm)].map((m) => [m[1]!, { crypt: m[2]!, python: m[3]! }]));
  const verdict = (outcomes: string[]) => (outcomes.every((o) => o === 'ok') ? 'accepted' : outcomes.every((o) => o === 'invalid') ? 'refused' : 'depends on the padding');
  for (const [i, { name, spelled }] of cases.entries()) {
    t.equal(crypt[i], rule(spelled), `crypt: ${name} (${i % 3 === 0 ? '==' : i % 3 === 1 ? '=' : 'no padding'}) is ${rule(spelled) === 'ok' ? 'accepted' : 'refused'}`);
  }
  for (const [name] of SPELLINGS) {
    const row = table.get(name);
    t.ok(row, `docs/protocol.md lists "${name}"`);
    if (!row) continue;
    const idx = cases.flatMap((c, i) => (c.name === name ? [i] : []));
    t.equal(row.crypt, verdict(idx.map((i) => crypt[i]!)), `${name}: crypt as documented`);
    t.equal(row.python, verdict(idx.map((i) => py[i]!)), `${name}: Python as documented`);
  }
});
