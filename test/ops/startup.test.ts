import t from 'tap';
import { checkExposure, isLoopbackHost } from '../../src/ops/startup.js';

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
