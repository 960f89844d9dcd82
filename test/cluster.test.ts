import t from 'tap';
import net from 'node:net';
import { once } from 'node:events';
import { join } from 'node:path';
import { CLIENT_BIN, SERVER_BIN, cleanEnv, runCli, spawnServer } from './helpers/cli.js';
import { tempDir } from './helpers/server.js';

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
  const server = await spawnServer(t, ['--port', '0', '--workers', '2', '--keyring', join(home, 'keyring.json')], env);
  await server.waitFor(/"msg":"cluster started"/);
  const listening = server.lines.filter((l) => l.includes('"msg":"listening"'));
  t.equal(listening.length, 2, 'two workers listen');
  t.equal(new Set(listening.map((l) => (JSON.parse(l) as { port: number }).port)).size, 1, 'on one port');
  const workers = listening.map(pidOf);
  t.equal(new Set(workers).size, 2, 'in two processes');
  t.match(server.lines.join('\n'), /"msg":"created a new keyring"/, 'the primary created the keyring once');

  const port = ['--port', String(server.port)];
  const token = (await runCli(CLIENT_BIN, [...port, 'en', 'across workers'], { env })).stdout.toString().trim();
  const rk = JSON.parse((await runCli(CLIENT_BIN, [...port, 'rk'], { env })).stdout.toString()) as { id: string };
  for (const pid of workers) await server.waitFor(new RegExp(`"pid":${pid},"reason":"(update|reload)","primary":"${rk.id}"`));
  t.pass('both workers have the new primary');
  const infos = await Promise.all(Array.from({ length: 6 }, () => runCli(CLIENT_BIN, [...port, 'ki'], { env })));
  t.ok(infos.every((r) => (JSON.parse(r.stdout.toString()) as { keys: Array<{ id: string; state: string }> }).keys[0]!.id === rk.id), 'every connection sees it');
  const plain = await Promise.all(Array.from({ length: 6 }, () => runCli(CLIENT_BIN, [...port, 'de', token], { env })));
  t.ok(plain.every((r) => r.stdout.toString() === 'across workers'), 'and old tokens decrypt everywhere');

  process.kill(workers[0]!, 'SIGKILL');
  await server.waitFor(new RegExp(`"worker":${workers[0]},"code":null,"signal":"SIGKILL","msg":"worker died; starting another"`));
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
  const ran = await runCli(SERVER_BIN, ['--port', String(port), '--workers', '2', '--keyring', join(home, 'k.json')], { env: cleanEnv(home) });
  t.equal(ran.code, 1, 'exit 1');
  t.match(ran.stderr, new RegExp(`crypt-server: port ${port} on 127\\.0\\.0\\.1 is already in use`), 'the reason is on stderr');
});
