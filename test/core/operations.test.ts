import t from 'tap';
import { readFileSync } from 'node:fs';
import { COMMAND_LIST, OPERATIONS, operation } from '../../src/core/operations.js';
import type { Operation } from '../../src/core/operations.js';

const protocol = readFileSync(new URL('../../docs/protocol.md', import.meta.url), 'utf8');
const readme = readFileSync(new URL('../../README.md', import.meta.url), 'utf8');

/** The rows of the first Markdown table after a heading, as arrays of trimmed cells. */
function table(doc: string, heading: string): string[][] {
  const at = doc.indexOf(`\n${heading}\n`);
  if (at === -1) return [];
  const lines = doc.slice(at + heading.length + 2).split('\n');
  const start = lines.findIndex((l) => l.startsWith('|'));
  const rows: string[][] = [];
  for (const line of lines.slice(start + 2)) {
    if (!line.startsWith('|')) break;
    rows.push(line.slice(1, -1).split('|').map((c) => c.trim()));
  }
  return rows;
}

const role = (o: Operation): string => (o.roles === null ? 'anyone' : ['admin', ...o.roles].join(', '));
const http = (o: Operation): string => (o.http ? `\`${o.http.method} ${o.http.path}\`` : '—');

t.test('the table is well-formed', async (t) => {
  const commands = OPERATIONS.map((o) => o.command);
  t.equal(new Set(commands).size, commands.length, 'each command once');
  const routes = OPERATIONS.flatMap((o) => (o.http ? [`${o.http.method} ${o.http.path}`] : []));
  t.equal(new Set(routes).size, routes.length, 'each HTTP route once');
  for (const o of OPERATIONS) {
    t.match(o.command, /^[a-z]{2}$/, `${o.command}: a two-letter command`);
    t.ok(o.input === 'stream' ? !o.data && !o.run : Boolean(o.data) !== Boolean(o.run), `${o.command}: either a data operation or a main-thread one (a stream is neither: src/core/streams.ts)`);
    t.ok(!o.data || o.input === 'message' || o.input === 'token' || (o.input === 'none' && o.result === 'json'), `${o.command}: data operations take a message or a token, or make a key from nothing (dk)`);
    t.ok(o.result !== 'json' || o.resultSchema, `${o.command}: a JSON result has a schema`);
    if (o.http) t.match(o.http.example, new RegExp(`\\{host\\}${o.http.path.replace(/\{\w+\}/g, '[a-z0-9._-]+')}(?:[?'" ]|$)`), `${o.command}: its example calls its route`);
    t.equal(operation(o.command), o, `${o.command}: found by its command`);
  }
  t.equal(COMMAND_LIST, commands.join(', '), 'the list for messages');
});

t.test('commands are looked up in a Map: no prototype name is an operation', async (t) => {
  for (const name of ['constructor', 'toString', 'valueOf', '__proto__', 'hasOwnProperty', 'isPrototypeOf', 'toLocaleString', '__defineGetter__']) {
    t.equal(operation(name), undefined, `${name} is not an operation`);
  }
});

t.test('docs/protocol.md lists every operation as the table has it', async (t) => {
  const rows = table(protocol, '## Commands');
  t.ok(rows.length > 0, 'the Commands table is there');
  const documented = new Map(rows.map((r) => [r[0]!.replace(/`/g, ''), r]));
  t.same([...documented.keys()], OPERATIONS.map((o) => o.command), 'the same commands, in the same order');
  for (const o of OPERATIONS) {
    const row = documented.get(o.command);
    if (!row) continue;
    t.equal(row[2], [...o.options.keys()].map((k) => `\`${k}\``).join(', '), `${o.command}: options`);
    t.equal(row[4], role(o), `${o.command}: role`);
    t.equal(row[5], http(o), `${o.command}: HTTP route`);
  }
});

t.test('the README lists every operation as the table has it', async (t) => {
  const rows = table(readme, '### Operations');
  t.ok(rows.length > 0, 'the Operations table is there');
  const documented = new Map(rows.map((r) => [/#(\w+)[#:,]/.exec(r[2] ?? '')?.[1] ?? '', r]));
  t.same([...documented.keys()], OPERATIONS.map((o) => o.command), 'the same commands, in the same order');
  for (const o of OPERATIONS) {
    const row = documented.get(o.command);
    if (!row) continue;
    t.equal(row[0], o.title, `${o.command}: its name`);
    t.equal(row[3], http(o), `${o.command}: HTTP route`);
    t.equal(row[4], role(o), `${o.command}: role`);
    if (o.input === 'stream') t.match(row[1], `crypt-client ${o.command === 'se' ? 'encrypt' : 'decrypt'}-file`, `${o.command}: the client's own command (it encrypts on the client)`);
    else if (o.input !== 'secret') t.match(row[1], `crypt-client ${o.command}`, `${o.command}: the client command`);
  }
});

t.test('docs/protocol.md lists every option with the commands that take it', async (t) => {
  const rows = table(protocol, '### Options');
  t.ok(rows.length > 0, 'the Options table is there');
  const takes = new Map<string, string[]>();
  for (const o of OPERATIONS) for (const name of o.options.keys()) takes.set(name, [...(takes.get(name) ?? []), o.command]);
  t.same(rows.map((r) => r[0]!.replace(/`/g, '')).sort(), [...takes.keys()].sort(), 'the same options');
  for (const [name, commands] of takes) {
    const row = rows.find((r) => r[0] === `\`${name}\``);
    if (row) t.equal(row[1], commands.join(', '), `${name}: taken by ${commands.join(', ')}`);
  }
});
