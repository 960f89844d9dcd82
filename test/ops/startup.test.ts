import t from 'tap';
import { readFileSync } from 'node:fs';
import { checkExposure, isLoopbackHost, openFileLimit } from '../../src/ops/startup.js';

t.test('isLoopbackHost', async (t) => {
  for (const host of ['127.0.0.1', '127.1.2.3', 'localhost', '::1', '[::1]']) t.ok(isLoopbackHost(host), `${host} is loopback`);
  for (const host of ['0.0.0.0', '::', '192.0.2.1', 'example.com', '128.0.0.1', '::ffff:10.0.0.1']) t.notOk(isLoopbackHost(host), `${host} is not`);
});

t.test('protected mode: who may listen where', async (t) => {
  t.equal(checkExposure({ host: '127.0.0.1', tokensFile: undefined, insecure: false }), null, 'loopback without tokens: fine');
  t.equal(checkExposure({ host: '0.0.0.0', tokensFile: '/etc/crypt/tokens', insecure: false }), null, 'anywhere with tokens: fine');
  t.throws(() => checkExposure({ host: '0.0.0.0', tokensFile: undefined, insecure: false }), { name: 'StartupError', message: /^refusing to listen on 0\.0\.0\.0 without access tokens/ }, 'non-loopback without tokens: refused');
  t.match(checkExposure({ host: '0.0.0.0', tokensFile: undefined, insecure: true }), /^INSECURE: /, '--insecure: allowed, with a warning to log');
});

t.test('the open-file limit is read from /proc/self/limits', async (t) => {
  const limits = (soft: string) => `Limit                     Soft Limit           Hard Limit           Units\nMax open files            ${soft}                 1048576              files\n`;
  t.equal(openFileLimit(() => limits('1024')), 1024, 'a number');
  t.equal(openFileLimit(() => limits('unlimited')), null, 'unlimited: no cap');
  t.equal(openFileLimit(() => { throw new Error('no /proc'); }), null, 'unreadable: no cap');
  const soft = /^Max open files\s+(\S+)/m.exec(readFileSync('/proc/self/limits', 'utf8'))![1]!;
  t.equal(openFileLimit(), soft === 'unlimited' ? null : Number(soft), `and this machine's soft limit is read as it is (${soft})`);
});

t.test('max-connections is lowered to leave room under the open-file limit', { skip: openFileLimit() === null ? 'no open-file limit here' : false }, async (t) => {
  const { start } = await import('../helpers/server.js');
  const limit = openFileLimit()!;
  const { logs } = await start(t, { maxConnections: limit, http: true, httpPort: 0 });
  const line = logs.find((l) => l.includes('max-connections lowered'));
  t.match(line, new RegExp(`"configured":${limit},"limit":${Math.floor((limit - 64) / 2)}`), 'two listeners share what the limit leaves, minus a reserve');
});
