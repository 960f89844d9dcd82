// The client's file commands as a user runs them (in process through run(), and a pipe between
// two real processes): round trips of binary files at the chunk edges, tampering of every kind
// leaving nothing behind, an existing output kept, rotate + rewrap-file + retire with the payload
// bytes unchanged, a crash in the middle of a rewrap recovered, inspect, a derived key's
// context, and the Python reference decryptor reading a file the client wrote.
import t from 'tap';
import { spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import { join } from 'node:path';
import { start, tempDir } from '../helpers/server.js';
import { CLIENT_BIN, cleanEnv, memoryIo } from '../helpers/cli.js';
import { run } from '../../src/cli/client.js';
import { CHUNK, HeaderReader, TAG } from '../../src/crypto/stream.js';

const REFERENCE = new URL('../../docs/stream-decrypt.py', import.meta.url).pathname;

async function setup(t: Parameters<typeof start>[0]) {
  const dir = tempDir(t);
  const started = await start(t, { keyring: join(dir, 'keyring.json') });
  const client = async (args: string[], stdin?: Buffer) => {
    const io = memoryIo({ env: {}, cwd: dir, ...(stdin ? { stdin } : {}) });
    const code = await run(['--port', String(started.port), ...args], io);
    return { code, out: io.out(), err: io.err() };
  };
  const leftovers = async () => (await fs.readdir(dir)).filter((f) => f.endsWith('.tmp') || f.endsWith('.rewrap'));
  return { ...started, dir, client, leftovers };
}

t.test('round trips of binary files at the chunk edges; stdin and stdout; inspect', async (t) => {
  const { dir, client, leftovers } = await setup(t);
  for (const size of [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 7]) {
    const data = randomBytes(size);
    await fs.writeFile(join(dir, `f${size}`), data);
    const enc = await client(['encrypt-file', `f${size}`]);
    t.equal(enc.code, 0, `${size}: encrypt-file exits 0 ${enc.err}`);
    const stream = await fs.readFile(join(dir, `f${size}.crypt`));
    t.equal((await fs.stat(join(dir, `f${size}.crypt`))).mode & 0o777, 0o600, `${size}: the output is 0600`);
    await fs.rename(join(dir, `f${size}`), join(dir, `f${size}.orig`));
    t.equal((await client(['decrypt-file', `f${size}.crypt`])).code, 0, `${size}: decrypt-file to f${size}`);
    t.ok((await fs.readFile(join(dir, `f${size}`))).equals(data), `${size}: byte-identical`);
    const piped = await client(['decrypt-file', '-', '-o', '-'], stream);
    t.ok(piped.code === 0 && piped.out.equals(data), `${size}: stdin to stdout`);
  }
  const fromStdin = await client(['encrypt-file', '-'], Buffer.from('from a pipe'));
  t.equal(fromStdin.code, 0, 'encrypt-file - writes to stdout');
  t.equal((await client(['decrypt-file', '-', '-o', '-'], fromStdin.out)).out.toString(), 'from a pipe', 'and back');
  const facts = await client(['inspect', `f${CHUNK + 1}.crypt`]);
  const parsed = JSON.parse(facts.out.toString()) as { key: string; key_id: string; size: number; created: string };
  t.match(parsed, { key: 'default', key_id: /^[0-9a-f]{12}$/, size: CHUNK + 1 }, 'inspect of a file: its key, version and plaintext size');
  t.ok(Math.abs(Date.parse(parsed.created) - Date.now()) < 60_000, 'and when its key was wrapped');
  t.same(await leftovers(), [], 'no temporary file left');
});

t.test('tampering: a flipped byte, truncation at a chunk boundary, swapped chunks, an appended byte; nothing left behind', async (t) => {
  const { dir, client, leftovers } = await setup(t);
  const data = randomBytes(3 * CHUNK + 100);
  await fs.writeFile(join(dir, 'f'), data);
  await client(['encrypt-file', 'f']);
  const good = await fs.readFile(join(dir, 'f.crypt'));
  const headerLength = new HeaderReader().push(good)!.header.bytes.length;
  const chunk = (i: number) => good.subarray(headerLength + i * (CHUNK + TAG), headerLength + (i + 1) * (CHUNK + TAG));
  const flipped = (at: number) => {
    const b = Buffer.from(good);
    b[at]! ^= 0x40;
    return b;
  };
  const cases: Array<[string, Buffer]> = [
    ['a flipped byte in the header', flipped(20)],
    ['a flipped byte in the nonce', flipped(headerLength - 40)],
    ['a flipped byte in chunk 1', flipped(headerLength + CHUNK + TAG + 5)],
    ['a flipped byte in the last tag', flipped(good.length - 1)],
    ['truncated at a chunk boundary', good.subarray(0, headerLength + 2 * (CHUNK + TAG))],
    ['truncated inside the header', good.subarray(0, 30)],
    ['two chunks swapped', Buffer.concat([good.subarray(0, headerLength), chunk(1), chunk(0), good.subarray(headerLength + 2 * (CHUNK + TAG))])],
    ['a byte appended', Buffer.concat([good, Buffer.from([0])])],
  ];
  for (const [what, bytes] of cases) {
    await fs.writeFile(join(dir, 'bad.crypt'), bytes);
    const r = await client(['decrypt-file', 'bad.crypt', '-o', 'bad.out']);
    t.equal(r.code, 1, `${what}: exit 1`);
    t.match(r.err, /^crypt-client: (invalid_stream|invalid_token): /, `${what}: said`);
    t.notOk(await fs.stat(join(dir, 'bad.out')).catch(() => null), `${what}: no output file`);
  }
  t.same(await leftovers(), [], 'no temporary file left');
  await fs.writeFile(join(dir, 'kept'), 'mine');
  const refused = await client(['decrypt-file', 'f.crypt', '-o', 'kept']);
  t.same([refused.code, (await fs.readFile(join(dir, 'kept'), 'utf8'))], [1, 'mine'], 'an existing output is kept without --force');
  t.equal((await client(['decrypt-file', 'f.crypt', '-o', 'kept', '--force'])).code, 0, 'replaced with --force');
  t.equal((await client(['decrypt-file', 'f'])).code, 2, 'no .crypt and no -o: a usage error');
  t.equal((await client(['rewrap-file', 'f.crypt', '-o', 'x'])).code, 2, 'rewrap-file takes no -o');
});

t.test('rotate, rewrap-file, retire the old version: the file decrypts, its payload bytes unchanged; a crash mid-rewrap recovers', async (t) => {
  const { dir, client, server } = await setup(t);
  const data = randomBytes(2 * CHUNK + 3);
  await fs.writeFile(join(dir, 'f'), data);
  await client(['encrypt-file', 'f', '-o', 'f.crypt']);
  const before = await fs.readFile(join(dir, 'f.crypt'));
  const old = server.keyring.current.primary.id;
  await client(['rk']);
  const r = await client(['rewrap-file', 'f.crypt']);
  t.match(r.out.toString(), new RegExp(`rewrapped f\\.crypt: key default, version ${old} -> [0-9a-f]{12}`), 'rewrapped under the new primary');
  const after = await fs.readFile(join(dir, 'f.crypt'));
  const h = new HeaderReader().push(after)!.header.bytes.length;
  t.equal(after.length, before.length, 'the same length');
  t.ok(after.subarray(h).equals(before.subarray(h)), 'the payload bytes are untouched: only the header changed');
  await server.keyring.update((s) => s.withState(old, 'retired'), 'default');
  t.equal((await client(['decrypt-file', 'f.crypt', '-o', 'f2'])).code, 0, 'decrypts with the old version retired');
  t.ok((await fs.readFile(join(dir, 'f2'))).equals(data), 'byte-identical');
  t.match((await client(['rewrap-file', 'f.crypt'])).out.toString(), /already under the primary version/, 'a second rewrap has nothing to do');
  // a crash after the saved header and a torn header write: the next run puts it back, then rewraps
  await client(['rk']);
  await fs.writeFile(join(dir, 'f.crypt.rewrap'), after.subarray(0, h));
  const torn = Buffer.from(after);
  torn.fill(0x41, 40, 120);
  await fs.writeFile(join(dir, 'f.crypt'), torn);
  t.equal((await client(['rewrap-file', 'f.crypt'])).code, 0, 'rewrap-file after a crash');
  t.notOk(await fs.stat(join(dir, 'f.crypt.rewrap')).catch(() => null), 'the saved header is gone');
  t.equal((await client(['decrypt-file', 'f.crypt', '-o', 'f3'])).code, 0, 'and the file decrypts');
});

t.test('a derived key: encrypt-file and decrypt-file with the same context; another context fails', async (t) => {
  const { dir, client, server } = await setup(t);
  await server.service.createKey('tenants', { derived: true, exportable: false });
  await fs.writeFile(join(dir, 'f'), 'tenant data');
  t.equal((await client(['encrypt-file', 'f', '--key', 'tenants', '--context', 'dGVuYW50LTE'])).code, 0, 'encrypt under tenants, context tenant-1');
  t.equal((await client(['decrypt-file', 'f.crypt', '-o', 'a', '--context', 'dGVuYW50LTE'])).code, 0, 'the same context decrypts');
  t.equal((await client(['decrypt-file', 'f.crypt', '-o', 'b', '--context', 'dGVuYW50LTI'])).code, 1, 'another context does not');
  t.equal((await client(['decrypt-file', 'f.crypt', '-o', 'c', '--key', 'x'])).code, 2, '--key goes with encrypt-file only');
});

t.test('real processes: encrypt-file | decrypt-file through a pipe; the Python reference decryptor reads the file', async (t) => {
  const { dir, port, client } = await setup(t);
  const data = randomBytes(CHUNK * 2 + 11);
  await fs.writeFile(join(dir, 'report.pdf'), data);
  const env = cleanEnv(dir);
  const enc = spawn(process.execPath, [CLIENT_BIN, '--port', String(port), 'encrypt-file', 'report.pdf', '-o', '-'], { cwd: dir, env, stdio: ['ignore', 'pipe', 'inherit'] });
  const dec = spawn(process.execPath, [CLIENT_BIN, '--port', String(port), 'decrypt-file', '-', '-o', 'copy.pdf'], { cwd: dir, env, stdio: ['pipe', 'inherit', 'inherit'] });
  enc.stdout!.pipe(dec.stdin!);
  const codes = await Promise.all([new Promise((r) => enc.on('close', r)), new Promise((r) => dec.on('close', r))]);
  t.same(codes, [0, 0], 'both exit 0');
  t.ok((await fs.readFile(join(dir, 'copy.pdf'))).equals(data), 'byte-identical through the pipe');
  await client(['encrypt-file', 'report.pdf']);
  const line = (await fs.readFile(join(dir, 'report.pdf.crypt'))).toString('latin1').split('\n')[2]!;
  const fileKey = (await client(['de', line])).out;
  t.equal(fileKey.length, 32, 'crypt-client de of the header token gives the 32-byte file key');
  const py = spawnSync('/usr/bin/python3', [REFERENCE, join(dir, 'report.pdf.crypt')], { input: fileKey });
  t.equal(py.status, 0, `the reference decryptor exits 0 ${py.stderr.toString()}`);
  t.ok(py.stdout.equals(data), 'and writes the same bytes');
  const bad = await fs.readFile(join(dir, 'report.pdf.crypt'));
  bad[bad.length - 5]! ^= 1;
  await fs.writeFile(join(dir, 'bad.crypt'), bad);
  const refused = spawnSync('/usr/bin/python3', [REFERENCE, join(dir, 'bad.crypt')], { input: fileKey });
  t.same([refused.status, refused.stdout.length], [1, 0], 'a changed file: exit 1, nothing written');
});

t.test('the Python reference decryptor reads every fixed vector', async (t) => {
  const { encodeHeader, payloadKey, StreamEncryptor } = await import('../../src/crypto/stream.js');
  const vectors = JSON.parse(await fs.readFile(new URL('../fixtures/crypt-stream/vectors.json', import.meta.url), 'utf8')) as Array<{ name: string; file_key: string; nonce: string; key_name: string; token: string; plaintext_size: number; plaintext_byte: number }>;
  const dir = tempDir(t);
  for (const v of vectors) {
    const fk = Buffer.from(v.file_key, 'hex');
    const n = Buffer.from(v.nonce, 'hex');
    const e = new StreamEncryptor(payloadKey(fk, n));
    const plaintext = Buffer.alloc(v.plaintext_size, v.plaintext_byte);
    await fs.writeFile(join(dir, 'v.crypt'), Buffer.concat([encodeHeader(v.key_name, v.token, n, fk), ...e.push(plaintext), ...e.finish()]));
    const py = spawnSync('/usr/bin/python3', [REFERENCE, join(dir, 'v.crypt')], { input: fk });
    t.ok(py.status === 0 && py.stdout.equals(plaintext), `${v.name}: decrypted by the reference ${py.stderr.toString()}`);
  }
});
