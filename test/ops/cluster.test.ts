import t from 'tap';
import net from 'node:net';
import { once } from 'node:events';
import { join } from 'node:path';
import { promises as fs } from 'node:fs';
import { CLIENT_BIN, SERVER_BIN, cleanEnv, runCli, spawnServer } from '../helpers/cli.js';
import { tempDir } from '../helpers/server.js';

const pidOf = (line: string): number => (JSON.parse(line) as { pid: number }).pid;
const alive = (pid: number): boolean => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

t.test('--workers 2: shared port, keys follow a rotation in every worker, a dead worker is replaced, SIGTERM stops all', async (t) => {
  const home = tempDir(t);
  const env = cleanEnv(home);
  const server = await spawnServer(t, ['--port', '0', '--workers', '2', '--keyring', join(home, 'keyring.json'), '--init', '--log-level', 'debug'], env);
  await server.waitFor(/"msg":"cluster started"/);
  const listening = server.lines.filter((l) => l.includes('"msg":"listening"'));
  t.equal(listening.filter((l) => l.includes('"level":30')).length, 1, 'at info, one worker (the lead) says it listens; the other says so at debug');
  t.equal(listening.length, 2, 'two workers listen');
  t.equal(new Set(listening.map((l) => (JSON.parse(l) as { port: number }).port)).size, 1, 'on one port');
  const workers = listening.map(pidOf);
  t.equal(new Set(workers).size, 2, 'in two processes');
  t.equal(server.lines.filter((l) => l.includes('"msg":"created a new keyring')).length, 1, 'the primary created the keyring, once');

  const port = ['--port', String(server.port)];
  const token = (await runCli(CLIENT_BIN, [...port, 'en', 'across workers'], { env })).stdout.toString().trim();
  const rk = JSON.parse((await runCli(CLIENT_BIN, [...port, 'rk'], { env })).stdout.toString()) as { id: string };
  const followed = await Promise.all(workers.map((pid) => server.waitFor(new RegExp(`"pid":${pid},"reason":"(update|reload)","primary":"${rk.id}"`))));
  t.same(followed.map(pidOf).sort(), [...workers].sort(), 'each worker logs the new primary as its keys');
  const infos = await Promise.all(Array.from({ length: 6 }, () => runCli(CLIENT_BIN, [...port, 'ki'], { env })));
  t.ok(infos.every((r) => (JSON.parse(r.stdout.toString()) as { keys: Array<{ id: string; state: string }> }).keys[0]!.id === rk.id), 'every connection sees it');
  const plain = await Promise.all(Array.from({ length: 6 }, () => runCli(CLIENT_BIN, [...port, 'de', token], { env })));
  t.ok(plain.every((r) => r.stdout.toString() === 'across workers'), 'and old tokens decrypt everywhere');

  process.kill(workers[0]!, 'SIGKILL');
  await server.waitFor(new RegExp(`"worker":${workers[0]},"code":null,"signal":"SIGKILL","restartInMs":100,"msg":"worker died; starting another"`));
  const replacement = await server.waitFor(new RegExp(`"pid":(?!${workers[0]}|${workers[1]})\\d+.*"msg":"listening"`));
  t.ok(pidOf(replacement), 'a new worker listens in its place');
  const s = net.connect(server.port, '127.0.0.1');
  await once(s, 'connect');
  s.destroy();

  server.child.kill('SIGTERM');
  t.same(await server.exited, { code: 0, signal: null }, 'SIGTERM: the primary exits 0');
  t.ok([...workers.slice(1), pidOf(replacement)].every((pid) => !alive(pid)), 'after every worker has exited');
});

t.test('--workers: a startup failure stops everything with exit 1', async (t) => {
  const home = tempDir(t);
  const taken = net.createServer().listen(0, '127.0.0.1');
  await once(taken, 'listening');
  t.teardown(() => taken.close());
  const port = (taken.address() as net.AddressInfo).port;
  const ran = await runCli(SERVER_BIN, ['--port', String(port), '--workers', '2', '--keyring', join(home, 'k.json'), '--init'], { env: cleanEnv(home) });
  t.equal(ran.code, 1, 'exit 1');
  t.match(ran.stderr, new RegExp(`crypt-server: port ${port} on 127\\.0\\.0\\.1 is already in use`), 'the reason is on stderr');
});

t.test('--workers: a worker that keeps dying is restarted with backoff, then the primary gives up with exit 1', async (t) => {
  const home = tempDir(t);
  const keyring = join(home, 'keyring.json');
  const server = await spawnServer(t, ['--port', '0', '--workers', '2', '--keyring', keyring, '--init'], cleanEnv(home));
  await server.waitFor(/"msg":"cluster started"/);
  const workers = server.lines.filter((l) => l.includes('"msg":"listening"')).map(pidOf);
  // every new worker now fails at startup: the keyring is open to others
  await fs.chmod(keyring, 0o644);
  process.kill(workers[0]!, 'SIGKILL');
  const { code } = await server.exited;
  t.equal(code, 1, 'the primary exits 1');
  const delays = server.lines.filter((l) => l.includes('"msg":"worker died; starting another"')).map((l) => (JSON.parse(l) as { restartInMs: number }).restartInMs);
  t.same(delays, [100, 200, 400, 800], 'each restart waits twice as long as the last');
  t.match(server.lines.join('\n'), /"deaths":5,"windowSeconds":60,"msg":"workers keep dying; giving up"/, 'then it gives up, in the log');
  t.ok(server.lines.includes('crypt-server: workers died 5 times within 60 s; giving up (their reasons are above)'), 'and in one line on stderr');
  t.ok(server.lines.some((l) => /keyring .* has mode 0644, open to group or others/.test(l)), 'after each worker said why it could not start');
  t.notOk(alive(workers[1]!), 'the other worker was stopped too');
});
