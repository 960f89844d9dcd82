import t from 'tap';
import { promises as fs } from 'node:fs';
import { join } from 'node:path';
import { start, raw, show, tempDir } from '../helpers/server.js';

t.test('a full session at trace level logs no plaintext, token or key', async (t) => {
  const { port, logs, connect } = await start(t, { logLevel: 'trace', maxFrame: 4096 });
  const plaintext = 'PLAINTEXT-never-logged-7f3a';
  const client = await connect();
  const token = await client.encrypt(plaintext);
  t.equal((await client.decrypt(token)).toString(), plaintext, 'round trip');
  const key = await client.getKey();
  const rotated = await client.rotate();
  const rewrapped = await client.rewrap(token);
  await client.keyInfo();
  const newKey = await client.getKey();
  await t.rejects(client.decrypt(token.slice(0, -6) + 'AAAAAA'), { code: 'invalid_token' }, 'a bad token');
  await t.rejects(client.encrypt(Buffer.alloc(5000, plaintext)), { code: 'too_large' }, 'too large');
  await t.rejects(client.request('zz', Buffer.from(plaintext)), { code: 'unknown_command' }, 'unknown command');
  await t.rejects(client.decrypt(plaintext), { code: 'invalid_token' }, 'plaintext as a token');
  const s = await raw(port);
  s.send(`${plaintext}\n#en#${plaintext}\n#au#${plaintext}#\n`);
  t.same(show(await s.replies(3)), ['!bad_frame', '!bad_frame', '!unauthorized'], 'framing errors and au');
  s.socket.destroy();
  await client.close();

  const text = logs.join('');
  // the search below means something only if the session was logged in detail
  for (const msg of ['connection opened', 'request', 'keys changed']) t.match(text, `"msg":"${msg}"`, `the log has "${msg}" lines`);
  t.match(text, /"op":"de","keyName":"default","keyId":null,"outcome":"invalid_token"/, 'failed requests are logged with their outcome');
  for (const [name, secret] of Object.entries({ plaintext, token, key, newKey, rewrapped })) {
    t.notOk(text.includes(secret), `no ${name} in the logs`);
    t.notOk(text.includes(secret.slice(0, 24)), `not even part of the ${name}`);
  }
  t.match(text, rotated.id, 'key ids (public) may appear');
});

t.test('HTTP at trace level logs no body, token, key or Authorization header', async (t) => {
  const secret = 'some-secret-bearer-value-0042';
  const dir = tempDir(t);
  await fs.writeFile(join(dir, 'tokens'), `admin ${secret}\n`, { mode: 0o600 });
  const { server, logs } = await start(t, { logLevel: 'trace', http: true, httpPort: 0, tokensFile: join(dir, 'tokens') });
  const base = `http://127.0.0.1:${server.http!.address.port}`;
  const plaintext = 'HTTP-PLAINTEXT-never-logged-91c2';
  const bearer = `Bearer ${secret}`;
  const auth = { authorization: bearer };
  const token = (await (await fetch(`${base}/encrypt`, { method: 'POST', body: plaintext, headers: auth })).text()).trim();
  t.match(token, /^gAAAAA/, 'a token');
  await fetch(`${base}/decrypt`, { method: 'POST', body: token, headers: auth });
  await fetch(`${base}/decrypt`, { method: 'POST', body: JSON.stringify({ batch: [{ token }, { token: plaintext }] }), headers: { ...auth, 'content-type': 'application/json' } });
  await fetch(`${base}/encrypt`, { method: 'POST', body: `{"plaintext": "${plaintext}"`, headers: { ...auth, 'content-type': 'application/json' } });
  await fetch(`${base}/encrypt`, { method: 'POST', body: plaintext, headers: { ...auth, 'content-type': 'image/png' } });
  await fetch(`${base}/key`, { headers: { authorization: `Bearer ${plaintext}` } });
  const key = (await (await fetch(`${base}/key`, { headers: auth })).text()).trim();
  const text = logs.join('');
  t.match(text, /"transport":"http".*"op":"en".*"msg":"request"/, 'requests are logged');
  t.match(text, /"transport":"http".*"op":"de".*"outcome":"invalid_token".*"msg":"request"/, 'batch items too, one line each');
  for (const [name, secret] of Object.entries({ plaintext, token, key, bearer: bearer.slice(7) })) {
    t.notOk(text.includes(secret), `no ${name} in the logs`);
  }
});
