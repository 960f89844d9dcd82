// Named keys, derived keys and scoped access tokens end to end (issue 13, "Done when"): an admin
// creates `billing` and the derived `users`; a web tier may only encrypt with billing, a back
// office may only decrypt with it; tenants of `users` can't read each other's tokens. Over TCP
// (the client library and raw frames), HTTP (fetch with Bearer tokens) and crypt-client (in
// process). Also the migration of a format-1 keyring at server start.
import t from 'tap';
import type { Test } from 'tap';
import { promises as fs, statSync } from 'node:fs';
import { join } from 'node:path';
import { start, raw, show, tempDir, untilKeys as until } from '../helpers/server.js';
import type { Started } from '../helpers/server.js';
import { memoryIo } from '../helpers/cli.js';
import { run as clientRun } from '../../src/cli/client.js';
import { run as serverRun } from '../../src/cli/server.js';
import { CryptClient } from '../../src/client/client.js';
import { KeyBook, v1Backup } from '../../src/keys/keyring.js';
import type { KeyDetails, Keyring } from '../../src/keys/keyring.js';
import { FernetKey, decrypt } from '../../src/crypto/fernet.js';

const ADMIN = 'admin-secret-0123456789abcdef';
const WEB = 'web-tier-secret-0123456789abcdef';
const BACK = 'back-office-secret-0123456789abcd';
const TENANTS = 'tenants-secret-0123456789abcdef';
const ANY = 'any-user-secret-0123456789abcdef';
const EXPIRED = 'expired-secret-0123456789abcdef';
const TOKENS = [
  `admin ${ADMIN}`,
  `encrypt ${WEB} keys=billing`,
  `decrypt ${BACK} keys=billing`,
  `user ${TENANTS} keys=users`,
  // a line as an old tokens file has it: no keys=, no expires=
  `user ${ANY}`,
  `user ${EXPIRED} expires=2001-01-01T00:00:00Z`,
].join('\n') + '\n';

const b64 = (text: string): string => Buffer.from(text).toString('base64url');
const TENANT_A = b64('tenant-a');
const TENANT_B = b64('tenant-b');

interface Setup extends Started {
  tokens: string;
  admin: CryptClient;
  /** fetch on the HTTP listener, with a Bearer token when given; JSON bodies get their content type. */
  http(path: string, options?: { method?: string; token?: string; body?: string | object; accept?: string }): Promise<Response>;
}

/** A server with the tokens file above, TCP and HTTP; the admin has created billing and users (derived). */
async function setup(t: Test, tokensText = TOKENS): Promise<Setup> {
  const tokens = join(tempDir(t), 'tokens');
  await fs.writeFile(tokens, tokensText, { mode: 0o600 });
  const started = await start(t, { tokensFile: tokens, http: true, httpPort: 0 });
  const base = `http://127.0.0.1:${started.server.http!.address.port}`;
  const admin = await started.connect({ token: ADMIN });
  if (tokensText === TOKENS) {
    await admin.createKey('billing');
    await admin.createKey('users', { derived: true });
  }
  const http: Setup['http'] = (path, options = {}) => {
    const headers: Record<string, string> = {};
    if (options.token) headers.authorization = `Bearer ${options.token}`;
    if (options.accept) headers.accept = options.accept;
    let body: string | undefined;
    if (typeof options.body === 'object') {
      headers['content-type'] = 'application/json';
      body = JSON.stringify(options.body);
    } else body = options.body;
    return fetch(`${base}${path}`, { method: options.method ?? (body === undefined ? 'GET' : 'POST'), headers, body });
  };
  return { ...started, tokens, admin, http };
}

/** The error a promise rejects with (fails the test when it resolves). */
async function failure(t: Test, p: Promise<unknown>, what: string): Promise<{ code?: string; message: string }> {
  try {
    await p;
  } catch (err) {
    return err as { code?: string; message: string };
  }
  t.fail(`${what}: expected a refusal`);
  return { message: '' };
}

t.test('TCP: the web tier only encrypts with billing, the back office only decrypts with it', async (t) => {
  const { connect, server } = await setup(t);
  const billing = () => server.keyring.book.key('billing');
  const web = await connect({ token: WEB });
  t.equal(web.role, 'encrypt', 'the web tier authenticates with the role encrypt');
  const token = await web.encrypt('invoice 42', { key: 'billing' });
  t.equal(decrypt(billing().decrypting, token).plaintext.toString(), 'invoice 42', 'its token is made with billing');
  t.throws(() => decrypt(server.keyring.book.key('default').decrypting, token), { code: 'invalid_token' }, 'and not with default');

  const refusedToWeb: Array<[string, Promise<unknown>, RegExp]> = [
    ['de', web.decrypt(token, undefined, { key: 'billing' }), /^de needs the admin or user or decrypt role$/],
    ['rw', web.rewrap(token, { key: 'billing' }), /^rw needs the admin or user role$/],
    ['in', web.inspect(token, { key: 'billing' }), /^in needs the admin or user or decrypt role$/],
    ['ki', web.keyInfo(), /^ki needs the admin or user role$/],
    ['ks', web.showKey('billing'), /^ks needs the admin or user role$/],
    ['gk', web.getKey('billing'), /^gk needs the admin role$/],
    ['rk', web.rotate('billing'), /^rk needs the admin role$/],
    ['kc', web.createKey('web-own'), /^kc needs the admin role$/],
    ['en without a key (default)', web.encrypt('x'), /^this access token may not use the key default$/],
    ['en with users', web.encrypt('x', { key: 'users', context: TENANT_A }), /^this access token may not use the key users$/],
  ];
  for (const [what, p, message] of refusedToWeb) await t.rejects(p, { code: 'forbidden', message }, `web tier, ${what}: forbidden`);
  t.equal(decrypt(billing().decrypting, await web.encrypt('still', { key: 'billing' })).plaintext.toString(), 'still', 'the refusals leave its connection usable');

  const back = await connect({ token: BACK });
  t.equal(back.role, 'decrypt', 'the back office authenticates with the role decrypt');
  t.equal((await back.decrypt(token, undefined, { key: 'billing' })).toString(), 'invoice 42', 'it decrypts the web tier token with billing');
  t.match(await back.inspect(token, { key: 'billing' }), { key: 'billing', key_id: billing().details().primary, key_state: 'primary' }, 'and may inspect it');
  const defaultToken = await (await connect({ token: ADMIN })).encrypt('default data');
  const refusedToBack: Array<[string, Promise<unknown>, RegExp]> = [
    ['en', back.encrypt('x', { key: 'billing' }), /^en needs the admin or user or encrypt role$/],
    ['rw', back.rewrap(token, { key: 'billing' }), /^rw needs the admin or user role$/],
    ['ki', back.keyInfo(), /^ki needs the admin or user role$/],
    ['gk', back.getKey('billing'), /^gk needs the admin role$/],
    ['de without a key (default)', back.decrypt(defaultToken), /^this access token may not use the key default$/],
    ['in of default', back.inspect(defaultToken), /^this access token may not use the key default$/],
  ];
  for (const [what, p, message] of refusedToBack) await t.rejects(p, { code: 'forbidden', message }, `back office, ${what}: forbidden`);
});

t.test('HTTP and crypt-client: the same parts and refusals', async (t) => {
  const { http, port, server } = await setup(t);
  const enc = await http('/encrypt?key=billing', { token: WEB, body: 'invoice 43' });
  t.equal(enc.status, 200, 'web tier: POST /encrypt?key=billing is 200');
  const token = (await enc.text()).trim();
  t.equal(decrypt(server.keyring.book.key('billing').decrypting, token).plaintext.toString(), 'invoice 43', 'made with billing');
  const webDe = await http('/decrypt?key=billing', { token: WEB, body: token });
  t.equal(webDe.status, 403, 'web tier: POST /decrypt is 403');
  t.same(await webDe.json(), { error: { code: 'forbidden', message: 'de needs the admin or user or decrypt role' } }, 'with the role it needs');
  const webDefault = await http('/encrypt', { token: WEB, body: 'x' });
  t.same([webDefault.status, await webDefault.json()], [403, { error: { code: 'forbidden', message: 'this access token may not use the key default' } }], 'web tier: the default key is outside its scope');
  const json = await http('/encrypt', { token: WEB, body: { plaintext: 'from json', key: 'billing' } });
  t.match(await json.json(), { token: String, key_id: server.keyring.book.key('billing').details().primary }, 'web tier: "key" in a JSON body works too');

  const backDe = await http('/decrypt?key=billing', { token: BACK, body: token });
  t.same([backDe.status, await backDe.text()], [200, 'invoice 43'], 'back office: POST /decrypt?key=billing gives the plaintext');
  const backIn = await http('/inspect?key=billing', { token: BACK, body: token });
  t.match(await backIn.json(), { key: 'billing', key_state: 'primary' }, 'back office: POST /inspect reports the key and its state');
  const backEn = await http('/encrypt?key=billing', { token: BACK, body: 'x' });
  t.same([backEn.status, await backEn.json()], [403, { error: { code: 'forbidden', message: 'en needs the admin or user or encrypt role' } }], 'back office: POST /encrypt is 403');
  t.equal((await http('/keys', { token: BACK })).status, 403, 'back office: GET /keys is 403');

  const cli = async (secret: string, args: string[]) => {
    const io = memoryIo({ env: { CRYPT_TOKEN: secret }, cwd: tempDir(t) });
    const code = await clientRun(['--port', String(port), ...args], io);
    return { code, out: io.out().toString(), err: io.err() };
  };
  const en = await cli(WEB, ['en', '--key', 'billing', 'invoice', '44']);
  t.equal(en.code, 0, 'crypt-client, web tier: en --key billing exits 0');
  const cliToken = en.out.trim();
  t.equal(decrypt(server.keyring.book.key('billing').decrypting, cliToken).plaintext.toString(), 'invoice 44', 'with a billing token on stdout');
  const webCliDe = await cli(WEB, ['de', '--key', 'billing', cliToken]);
  t.same([webCliDe.code, webCliDe.err], [1, 'crypt-client: forbidden: de needs the admin or user or decrypt role\n'], 'crypt-client, web tier: de is refused, exit 1');
  const webCliDefault = await cli(WEB, ['en', 'x']);
  t.same([webCliDefault.code, webCliDefault.err], [1, 'crypt-client: forbidden: this access token may not use the key default\n'], 'crypt-client, web tier: en without --key is refused');
  const de = await cli(BACK, ['de', '--key', 'billing', cliToken]);
  t.same([de.code, de.out], [0, 'invoice 44'], 'crypt-client, back office: de --key billing prints the plaintext');
  const backCliEn = await cli(BACK, ['en', '--key', 'billing', 'x']);
  t.same([backCliEn.code, backCliEn.err], [1, 'crypt-client: forbidden: en needs the admin or user or encrypt role\n'], 'crypt-client, back office: en is refused, exit 1');
  const session = await cli(WEB, []);
  t.equal(session.code, 0, 'crypt-client, web tier: an empty session connects and ends (its role is accepted)');
});

t.test('forbidden reveals nothing: a key outside the scope is refused alike, whether it exists or not', async (t) => {
  const { connect, http } = await setup(t);
  const web = await connect({ token: WEB });
  const named = (e: { code?: string; message: string }, name: string) => ({ code: e.code, message: e.message.split(name).join('<name>') });
  // users exists (and is derived: a request without a context would be bad_request if it got that far)
  const existing = named(await failure(t, web.encrypt('x', { key: 'users' }), 'users'), 'users');
  const missing = named(await failure(t, web.encrypt('x', { key: 'nosuch' }), 'nosuch'), 'nosuch');
  t.same(existing, { code: 'forbidden', message: 'this access token may not use the key <name>' }, 'TCP: an existing key outside the scope is forbidden');
  t.same(missing, existing, 'TCP: a key that does not exist gets the same answer');
  const existingHttp = await http('/encrypt?key=users', { token: WEB, body: 'x' });
  const missingHttp = await http('/encrypt?key=nosuch', { token: WEB, body: 'x' });
  t.equal(existingHttp.status, 403, 'HTTP: an existing key outside the scope is 403');
  t.equal(missingHttp.status, existingHttp.status, 'HTTP: a missing key gets the same status');
  const bodies = [JSON.stringify(await existingHttp.json()).split('users').join('<name>'), JSON.stringify(await missingHttp.json()).split('nosuch').join('<name>')];
  t.equal(bodies[1], bodies[0], 'and the same body');
  const tenants = await connect({ token: TENANTS });
  t.same(named(await failure(t, tenants.showKey('billing'), 'ks billing'), 'billing'), named(await failure(t, tenants.showKey('nosuch'), 'ks nosuch'), 'nosuch'), 'ks: the same for an existing and a missing key');
  await t.rejects((await connect({ token: ANY })).encrypt('x', { key: 'nosuch' }), { code: 'unknown_key', message: 'no key named nosuch' }, 'a token covering every key learns that a key does not exist');
});

t.test('derived keys: tenants can not read each other, contexts are checked, over TCP and HTTP', async (t) => {
  const { connect, http, port } = await setup(t);
  const tenants = await connect({ token: TENANTS });
  const ofA = await tenants.encrypt('secret of tenant a', { key: 'users', context: TENANT_A });
  t.equal((await tenants.decrypt(ofA, undefined, { key: 'users', context: TENANT_A })).toString(), 'secret of tenant a', 'the same context decrypts');
  await t.rejects(tenants.decrypt(ofA, undefined, { key: 'users', context: TENANT_B }), { code: 'invalid_token', message: 'invalid token' }, "tenant b can't read tenant a's token");
  t.equal((await tenants.decrypt(ofA, undefined, { key: 'users', context: Buffer.from('tenant-a') })).toString(), 'secret of tenant a', 'the client library sends a context given as bytes as their base64url');
  await t.rejects(tenants.encrypt('x', { key: 'users' }), { code: 'bad_request', message: /^key users is derived: send a context/ }, 'no context on a derived key: bad_request');
  await t.rejects(tenants.inspect(ofA, { key: 'users' }), { code: 'bad_request', message: /^key users is derived/ }, 'inspect too');
  const admin = await connect({ token: ADMIN });
  await t.rejects(admin.encrypt('x', { key: 'billing', context: TENANT_A }), { code: 'bad_request', message: /^key billing is not derived: a context means nothing to it/ }, 'a context to a key that is not derived: bad_request');
  await t.rejects(admin.encrypt('x', { context: TENANT_A }), { code: 'bad_request', message: /^key default is not derived/ }, 'to default as well');
  await t.rejects(tenants.encrypt('x', { key: 'users', context: b64('x'.repeat(257)) }), { code: 'bad_request', message: 'context must be base64url of 1 to 256 bytes' }, 'a context over 256 bytes: bad_request');
  t.match(await tenants.encrypt('x', { key: 'users', context: b64('x'.repeat(256)) }), /^gAAAAA/, '256 bytes is fine');

  const s = await raw(port);
  s.send(`#au#${TENANTS}#\n#en,key=users,context=${TENANT_A}#hello#\n`);
  const [auth, en] = await s.replies(2);
  t.same(show([auth!]), ['ok user'], 'raw TCP: au');
  t.ok(en!.ok, 'raw TCP: #en,key=users,context=...# answers a token');
  const rawToken = en!.ok ? en!.value.toString() : '';
  s.send(`#de,key=users,context=${TENANT_A}#${rawToken}#\n#de,key=users,context=${TENANT_B}#${rawToken}#\n#de,key=users#${rawToken}#\n#de,key=users,context=a#${rawToken}#\n`);
  const replies = await s.replies(4);
  t.same(show(replies), ['hello', '!invalid_token', '!bad_request', '!bad_request'], "raw TCP: its own context opens it, another doesn't, none and a malformed one are bad requests");
  s.socket.destroy();

  const viaHttp = await http(`/encrypt?key=users&context=${TENANT_B}`, { token: TENANTS, body: 'secret of tenant b' });
  const ofB = (await viaHttp.text()).trim();
  t.same([(await http(`/decrypt?key=users&context=${TENANT_B}`, { token: TENANTS, body: ofB })).status], [200], 'HTTP: the same context decrypts');
  const cross = await http('/decrypt', { token: TENANTS, body: { token: ofB, key: 'users', context: TENANT_A } });
  t.same([cross.status, await cross.json()], [400, { error: { code: 'invalid_token', message: 'invalid token' } }], "HTTP: tenant a can't read tenant b's token (JSON body)");
  const missing = await http('/encrypt?key=users', { token: TENANTS, body: 'x' });
  t.match([missing.status, await missing.json()], [400, { error: { code: 'bad_request', message: /key users is derived/ } }], 'HTTP: no context on a derived key is 400');
  const stray = await http(`/encrypt?key=billing&context=${TENANT_A}`, { token: ADMIN, body: 'x' });
  t.match([stray.status, await stray.json()], [400, { error: { code: 'bad_request', message: /key billing is not derived/ } }], 'HTTP: a context to billing is 400');
  t.equal((await tenants.decrypt(ofB, undefined, { key: 'users', context: TENANT_B })).toString(), 'secret of tenant b', 'an HTTP token opens over TCP with its context');
});

t.test('an unknown key: unknown_key over TCP, 404 over HTTP', async (t) => {
  const { http, port, admin } = await setup(t);
  const s = await raw(port);
  s.send(`#au#${ADMIN}#\n#en,key=nosuch#hello#\n#ks,key=nosuch##\n`);
  const replies = await s.replies(3);
  t.same(replies.slice(1), [{ ok: false, code: 'unknown_key', message: 'no key named nosuch' }, { ok: false, code: 'unknown_key', message: 'no key named nosuch' }], 'TCP: #er#unknown_key#no key named nosuch#');
  s.socket.destroy();
  await t.rejects(admin.rotate('nosuch'), { code: 'unknown_key' }, 'rk of an unknown key');
  await t.rejects(admin.configureKey('nosuch', { exportable: true }), { code: 'unknown_key' }, 'kf of an unknown key');
  for (const [path, body] of [['/encrypt?key=nosuch', 'x'], ['/keys/nosuch', undefined], ['/key?key=nosuch', undefined]] as const) {
    const res = await http(path, { token: ADMIN, body });
    t.same([res.status, await res.json()], [404, { error: { code: 'unknown_key', message: 'no key named nosuch' } }], `HTTP ${path}: 404 unknown_key`);
  }
});

t.test('rotation, rewrap, retire and inspect work per key', async (t) => {
  const { admin, server, http, config } = await setup(t);
  const book = () => server.keyring.book;
  const defaultBefore = book().key('default').details();
  const billingFirst = book().key('billing').details().primary;
  const old = await admin.encrypt('billing before', { key: 'billing' });
  const oldDefault = await admin.encrypt('default before');
  const rotated = await admin.rotate('billing');
  t.match(rotated, { state: 'primary', id: /^[0-9a-f]{12}$/ }, 'rk billing answers its new primary');
  t.same(book().key('billing').details().versions.map((v) => [v.id, v.state]), [[rotated.id, 'primary'], [billingFirst, 'active']], 'billing: a new primary, the old one active');
  t.same(book().key('default').details(), defaultBefore, 'rotating billing does not touch default');
  t.match(await admin.inspect(old, { key: 'billing' }), { key: 'billing', key_id: billingFirst, key_state: 'active' }, 'inspect: an old billing token names the old version, active');
  t.match(await admin.inspect(old), { key: 'default', key_id: null, key_state: null }, 'inspect with default: no version of default verifies it');
  const rewrapped = await admin.rewrap(old, { key: 'billing' });
  t.match(await admin.inspect(rewrapped, { key: 'billing' }), { key: 'billing', key_id: rotated.id, key_state: 'primary' }, 'rewrap with billing: under its new primary');
  t.equal(decrypt(book().key('billing').decrypting, rewrapped).timestamp, decrypt(book().key('billing').decrypting, old).timestamp, 'keeping the timestamp');
  await t.rejects(admin.rewrap(old), { code: 'invalid_token' }, 'rewrap with default does not open a billing token');

  const io = memoryIo({ env: {}, cwd: tempDir(t) });
  t.equal(await serverRun(['keys', 'retire', billingFirst, '--keyring', config.keyring], io), 0, 'crypt-server keys retire <old billing id>: exit 0');
  t.equal(io.out().toString(), `retired: ${billingFirst} (key billing)\n`, 'names the key the version belongs to');
  await until(server.keyring, () => book().key('billing').details().versions.some((v) => v.id === billingFirst && v.state === 'retired'));
  await t.rejects(admin.decrypt(old, undefined, { key: 'billing' }), { code: 'invalid_token' }, 'a token of the retired billing version no longer decrypts');
  t.match(await admin.inspect(old, { key: 'billing' }), { key: 'billing', key_id: billingFirst, key_state: 'retired' }, 'inspect says it is retired');
  t.equal((await admin.decrypt(rewrapped, undefined, { key: 'billing' })).toString(), 'billing before', 'the rewrapped token still decrypts');
  t.equal((await admin.decrypt(oldDefault)).toString(), 'default before', 'default is untouched by the retirement');
  t.same(book().key('default').details(), defaultBefore, 'and its versions too');

  const httpRotate = await http('/keys/users/rotate', { method: 'POST', token: ADMIN });
  const usersRotated = (await httpRotate.json()) as { id: string; state: string };
  t.same([httpRotate.status, usersRotated.state, book().key('users').details().primary], [200, 'primary', usersRotated.id], 'HTTP: POST /keys/users/rotate rotates users');
  t.same(book().key('default').details(), defaultBefore, 'and not default');
  const legacy = await http('/keys/rotate', { method: 'POST', token: ADMIN });
  t.same([legacy.status, book().key('default').details().primary], [200, ((await legacy.json()) as { id: string }).id], 'the old POST /keys/rotate still rotates default');
});

t.test('ki and GET /keys list only the keys in the token scope; ks outside it is forbidden', async (t) => {
  const { connect, http } = await setup(t);
  const names = (info: { named_keys: KeyDetails[] }) => info.named_keys.map((k) => k.name);
  t.same(names(await (await connect({ token: TENANTS })).keyInfo()), ['users'], 'TCP: a token for users sees users only');
  t.same(names(await (await connect({ token: ANY })).keyInfo()), ['billing', 'default', 'users'], 'a token without keys= sees every key');
  t.same(names(await (await connect({ token: ADMIN })).keyInfo()), ['billing', 'default', 'users'], 'an admin too');
  const listed = (await (await http('/keys', { token: TENANTS })).json()) as { key: string | null; keys: unknown[]; named_keys: KeyDetails[] };
  t.same(names(listed), ['users'], 'HTTP: GET /keys, the same');
  t.same([listed.key, listed.keys], [null, []], 'and no versions of default, outside the scope');
  const usersVersions = (await (await http('/keys?key=users', { token: TENANTS })).json()) as { key: string; keys: Array<{ state: string }> };
  t.match(usersVersions, { key: 'users', keys: [{ state: 'primary' }] }, 'GET /keys?key=users: the versions of users');
  const otherVersions = await http('/keys?key=billing', { token: TENANTS });
  t.equal(otherVersions.status, 403, 'GET /keys?key=billing outside the scope: forbidden');
  t.notMatch(JSON.stringify(listed), /"key":"[A-Za-z0-9_-]{43}=/, 'and no key material');
  const shown = await http('/keys/users', { token: TENANTS });
  t.match([shown.status, await shown.json()], [200, { name: 'users', derived: true, exportable: false, deletion_allowed: false, auto_rotate: null }], 'GET /keys/users: its settings');
  const outside = await http('/keys/billing', { token: TENANTS });
  t.same([outside.status, await outside.json()], [403, { error: { code: 'forbidden', message: 'this access token may not use the key billing' } }], 'GET /keys/billing: forbidden');
});

t.test('an expired token is unauthorized; an old tokens file still works', async (t) => {
  const { connect, http } = await setup(t);
  await t.rejects(connect({ token: EXPIRED }), { code: 'unauthorized', message: 'this access token has expired' }, 'TCP: au with an expired token');
  const res = await http('/encrypt', { token: EXPIRED, body: 'x' });
  t.same([res.status, await res.json()], [401, { error: { code: 'unauthorized', message: 'this access token has expired' } }], 'HTTP: 401');

  const old = await setup(t, `user ${ANY}\nadmin ${ADMIN}\n`);
  const user = await old.connect({ token: ANY });
  t.equal(user.role, 'user', 'a line without keys= or expires= still gives its role');
  t.equal((await user.decrypt(await user.encrypt('as before'))).toString(), 'as before', 'and en/de work as before');
  await old.admin.createKey('billing');
  t.equal((await user.decrypt(await user.encrypt('any key', { key: 'billing' }), undefined, { key: 'billing' })).toString(), 'any key', 'covering every named key');
  t.same((await user.keyInfo()).named_keys.map((k) => k.name), ['billing', 'default'], 'and listing them all');
  t.same((await user.keyInfo()).keys.map((v) => v.state), ['primary'], 'ki answers the versions of default in keys, as before named keys');
});

t.test('HTTP batch: a key per item, a default for the batch, scope checked item by item', async (t) => {
  const { http, server } = await setup(t);
  type Batch = { batch: Array<{ token?: string; plaintext?: string; error?: { code: string; message: string } }> };
  const enc = (await (await http('/encrypt', {
    token: ADMIN,
    body: { batch: [
      { plaintext: 'for billing', key: 'billing' },
      { plaintext: 'for default' },
      { plaintext: 'for tenant a', key: 'users', context: TENANT_A },
      { plaintext: 'nowhere', key: 'nosuch' },
      { plaintext: 'no context', key: 'users' },
    ] },
  })).json()) as Batch;
  t.match(enc.batch, [{ token: String }, { token: String }, { token: String }, { error: { code: 'unknown_key' } }, { error: { code: 'bad_request' } }], 'each item with its key; the failing ones fail alone');
  t.equal(decrypt(server.keyring.book.key('billing').decrypting, enc.batch[0]!.token!).plaintext.toString(), 'for billing', 'item 1 under billing');
  t.equal(decrypt(server.keyring.book.key('default').decrypting, enc.batch[1]!.token!).plaintext.toString(), 'for default', 'item 2 under default');
  const dec = (await (await http('/decrypt', {
    token: ADMIN,
    body: { batch: [
      { token: enc.batch[0]!.token, key: 'billing' },
      { token: enc.batch[1]!.token },
      { token: enc.batch[2]!.token, key: 'users', context: TENANT_A },
      { token: enc.batch[2]!.token, key: 'users', context: TENANT_B },
      { token: enc.batch[0]!.token },
    ] },
  })).json()) as Batch;
  t.same(dec.batch.map((i) => i.plaintext ?? i.error!.code), ['for billing', 'for default', 'for tenant a', 'invalid_token', 'invalid_token'], 'decrypt batch: per-item keys and contexts; a wrong key or context is invalid_token');
  const shared = (await (await http('/encrypt', { token: ADMIN, body: { key: 'billing', batch: [{ plaintext: 'x' }, { plaintext: 'y', key: 'default' }] } })).json()) as Batch;
  t.equal(decrypt(server.keyring.book.key('billing').decrypting, shared.batch[0]!.token!).plaintext.toString(), 'x', 'a batch-level key is the default of its items');
  t.equal(decrypt(server.keyring.book.key('default').decrypting, shared.batch[1]!.token!).plaintext.toString(), 'y', 'an item may name another');
  const web = (await (await http('/encrypt', { token: WEB, body: { batch: [{ plaintext: 'a', key: 'billing' }, { plaintext: 'b' }, { plaintext: 'c', key: 'nosuch' }] } })).json()) as Batch;
  t.match(web.batch, [{ token: String }, { error: { code: 'forbidden', message: 'this access token may not use the key default' } }, { error: { code: 'forbidden', message: 'this access token may not use the key nosuch' } }], 'a scoped token: the items outside its scope are forbidden, the others work');
});

t.test('key management over TCP: create, show, config, export, delete', async (t) => {
  const { admin, connect } = await setup(t);
  const created = await admin.createKey('reports');
  t.match(created, { name: 'reports', derived: false, exportable: false, deletion_allowed: false, auto_rotate: null, versions: [{ state: 'primary' }] }, 'kc: a new key, not derived, not exportable, not deletable');
  await t.rejects(admin.createKey('reports'), { code: 'conflict', message: 'a key named reports exists already' }, 'kc of an existing name: conflict');
  t.same(await admin.showKey('reports'), created, 'ks shows what kc answered');
  await t.rejects(admin.getKey('reports'), { code: 'forbidden', message: /^key reports is not exportable/ }, 'gk of a key that is not exportable: forbidden, even to an admin');
  t.match(await admin.configureKey('reports', { exportable: true }), { exportable: true, deletion_allowed: false }, 'kf exportable=true');
  const exported = await admin.getKey('reports');
  t.equal(FernetKey.from(exported).id, created.primary, 'then gk gives its primary');
  t.not(exported, await admin.getKey(), 'not the default key');
  t.match(await admin.configureKey('reports', { auto_rotate: '30d' }), { auto_rotate: 30 * 86_400, exportable: true }, 'kf auto_rotate=30d, the rest kept');
  t.match(await admin.configureKey('reports', { auto_rotate: 'off' }), { auto_rotate: null }, 'kf auto_rotate=off');
  await t.rejects(admin.configureKey('reports', { auto_rotate: 60 }), { code: 'bad_request' }, 'kf auto_rotate under an hour: bad_request');
  await t.rejects(admin.deleteKey('reports'), { code: 'conflict', message: /^key reports may not be deleted: allow it first/ }, 'kd without deletion_allowed: conflict, even confirmed');
  await admin.configureKey('reports', { deletion_allowed: true });
  await t.rejects(admin.request('kd', undefined, { key: 'reports' }), { code: 'bad_request', message: /confirm it/ }, 'kd without confirm=true: bad_request');
  t.match(await admin.showKey('reports'), { name: 'reports' }, 'and the key is still there');
  await admin.deleteKey('reports');
  await t.rejects(admin.showKey('reports'), { code: 'unknown_key' }, 'kd with deletion_allowed and confirm: gone');
  await t.rejects(admin.deleteKey('default'), { code: 'conflict', message: /default can't be deleted/ }, 'default is never deleted');
  const user = await connect({ token: ANY });
  const attempts: [string, () => Promise<unknown>][] = [
    ['kc', () => user.createKey('mine')],
    ['kf', () => user.configureKey('billing', { exportable: true })],
    ['kd', () => user.deleteKey('billing')],
  ];
  for (const [what, attempt] of attempts) {
    await t.rejects(attempt(), { code: 'forbidden', message: `${what} needs the admin role` }, `a user may not ${what}`);
  }
});

t.test('a key command without its key name is refused before anything is written; the path names the key', async (t) => {
  const { admin, server, http } = await setup(t);
  const before = server.keyring.book.key('default').details();
  const token = await admin.encrypt('made with default');
  for (const command of ['kc', 'ks', 'kf', 'kd']) {
    await t.rejects(admin.request(command), { code: 'bad_request', message: new RegExp(`^${command} needs the option key`) }, `#${command}##: bad_request`);
  }
  t.same(server.keyring.book.key('default').details(), before, 'default is untouched');
  t.equal((await admin.decrypt(token)).toString(), 'made with default', 'and its tokens decrypt');

  await admin.configureKey('billing', { exportable: true });
  const mismatch = await http('/keys/billing/config', { token: ADMIN, body: { key: 'default', deletion_allowed: true } });
  t.match([mismatch.status, await mismatch.json()], [400, { error: { code: 'bad_request', message: 'the path names the key billing; a "key" in the body must be the same or left out' } }], 'a body key other than the path\'s: 400');
  t.same([server.keyring.book.key('default').settings.deletionAllowed, server.keyring.book.key('billing').settings.deletionAllowed], [false, false], 'and neither key changed');
  const same = await http('/keys/billing/config', { token: ADMIN, body: { key: 'billing', auto_rotate: '24h' } });
  t.match([same.status, await same.json()], [200, { name: 'billing', auto_rotate: 86_400 }], 'the same key in both: fine');
  const off = await http('/keys/billing/config', { token: ADMIN, body: { auto_rotate: null } });
  t.match([off.status, await off.json()], [200, { auto_rotate: null }], '"auto_rotate": null turns it off, as ks shows off');
  const deleting = await http('/keys/billing', { method: 'DELETE', token: ADMIN, body: { key: 'users', confirm: true } });
  t.equal(deleting.status, 400, 'DELETE /keys/billing with a body naming users: 400');
  t.ok(server.keyring.book.get('users') && server.keyring.book.get('billing'), 'both keys are still there');
});

t.test('key management over HTTP: POST /keys, config, GET /key, DELETE', async (t) => {
  const { http } = await setup(t);
  const created = await http('/keys', { token: ADMIN, body: { key: 'ledger', derived: true, exportable: false } });
  const details = (await created.json()) as KeyDetails;
  t.match([created.status, details], [200, { name: 'ledger', derived: true, exportable: false }], 'POST /keys creates a derived key');
  t.same(await (await http('/keys/ledger', { token: ADMIN })).json(), details, 'GET /keys/ledger shows it');
  const again = await http('/keys', { token: ADMIN, body: { key: 'ledger' } });
  t.match([again.status, await again.json()], [409, { error: { code: 'conflict' } }], 'twice: 409');
  const refused = await http('/key?key=ledger', { token: ADMIN });
  t.match([refused.status, await refused.json()], [403, { error: { code: 'forbidden', message: /^key ledger is not exportable/ } }], 'GET /key of a key that is not exportable: 403');
  const config = await http('/keys/ledger/config', { token: ADMIN, body: { exportable: true, auto_rotate: '24h' } });
  t.match([config.status, await config.json()], [200, { exportable: true, auto_rotate: 86_400 }], 'POST /keys/ledger/config');
  const key = await http('/key?key=ledger', { token: ADMIN });
  t.equal(key.status, 200, 'then GET /key?key=ledger is 200');
  t.equal(FernetKey.from((await key.text()).trim()).id, details.primary, 'and gives its primary');
  const asJson = (await (await http('/key?key=ledger', { token: ADMIN, accept: 'application/json' })).json()) as { key: string; id: string };
  t.equal(asJson.id, details.primary, 'as JSON with its id');
  const bad = await http('/keys/ledger/config', { token: ADMIN, body: { auto_rotate: 60 } });
  t.match([bad.status, await bad.json()], [400, { error: { code: 'bad_request', message: /auto_rotate must be off or a period of at least 1h/ } }], 'auto_rotate under an hour: 400');
  const notAllowed = await http('/keys/ledger?confirm=true', { method: 'DELETE', token: ADMIN });
  t.match([notAllowed.status, await notAllowed.json()], [409, { error: { code: 'conflict', message: /may not be deleted/ } }], 'DELETE without deletion_allowed: 409');
  await http('/keys/ledger/config', { token: ADMIN, body: { deletion_allowed: true } });
  const unconfirmed = await http('/keys/ledger', { method: 'DELETE', token: ADMIN });
  t.match([unconfirmed.status, await unconfirmed.json()], [400, { error: { code: 'bad_request', message: /confirm it \(confirm=true, --yes\)/ } }], 'DELETE without confirm=true: 400');
  t.equal((await http('/keys/ledger', { token: ADMIN })).status, 200, 'the key is still there');
  const deleted = await http('/keys/ledger?confirm=true', { method: 'DELETE', token: ADMIN });
  t.same([deleted.status, await deleted.json()], [200, { deleted: 'ledger' }], 'DELETE ?confirm=true: deleted');
  t.equal((await http('/keys/ledger', { token: ADMIN })).status, 404, 'then GET /keys/ledger is 404');
  const byUser = await http('/keys', { token: ANY, body: { key: 'mine' } });
  t.same([byUser.status, await byUser.json()], [403, { error: { code: 'forbidden', message: 'kc needs the admin role' } }], 'a user may not create a key');
});

t.test('a format-1 keyring is migrated at server start, once; every old token still decrypts', async (t) => {
  const dir = tempDir(t);
  const file = join(dir, 'keyring.json');
  const primary = FernetKey.generate();
  const active = FernetKey.generate();
  const created = '2024-01-02T03:04:05.000Z';
  const v1 = JSON.stringify({ format: 'crypt-keyring/1', keys: [
    { id: primary.id, state: 'primary', created, key: primary.export() },
    { id: active.id, state: 'active', created, key: active.export() },
  ] }, null, 2) + '\n';
  await fs.writeFile(file, v1, { mode: 0o600 });
  const byPrimary = primary.encrypt(Buffer.from('made under the primary'));
  const byActive = active.encrypt(Buffer.from('made under the older key'));

  const first = await start(t, { keyring: file, init: false });
  const line = first.logs.find((l) => l.includes('"msg":"keyring saved in format 2'));
  t.ok(line, 'the server logs the migration');
  t.match(line, `"backup":"${v1Backup(file)}"`, 'naming the copy of the old file');
  const doc = JSON.parse(await fs.readFile(file, 'utf8')) as { format: string; keys: Array<{ name: string; versions: Array<{ id: string; state: string }> }> };
  t.equal(doc.format, 'crypt-keyring/2', 'the file is now format 2');
  t.same(doc.keys.map((k) => [k.name, k.versions.map((v) => [v.id, v.state])]), [['default', [[primary.id, 'primary'], [active.id, 'active']]]], 'its keys are the key default, versions and states kept');
  t.match(KeyBook.parse(await fs.readFile(file, 'utf8')).key('default').details(), { exportable: true, derived: false, deletion_allowed: false, auto_rotate: null }, 'with the settings default always had');
  t.equal(statSync(v1Backup(file)).mode & 0o777, 0o600, `${v1Backup(file)} is 0600`);
  t.equal(await fs.readFile(v1Backup(file), 'utf8'), v1, 'and holds the old bytes');
  const client = await first.connect();
  t.equal((await client.decrypt(byPrimary)).toString(), 'made under the primary', 'a token of the old primary decrypts, no key named');
  t.equal((await client.decrypt(byActive)).toString(), 'made under the older key', 'a token of the old active key too');
  t.equal(decrypt([primary], await client.encrypt('new')).plaintext.toString(), 'new', 'and the old primary still encrypts');
  await first.server.close();

  const migrated = await fs.readFile(file, 'utf8');
  const second = await start(t, { keyring: file, init: false });
  t.ok(second.logs.some((l) => l.includes('"msg":"loaded keyring"')), 'a second start loads the keyring');
  t.notOk(second.logs.some((l) => l.includes('keyring saved in format 2')), 'and does not migrate again');
  t.equal(await fs.readFile(file, 'utf8'), migrated, 'the format-2 file is not rewritten');
  t.equal(await fs.readFile(v1Backup(file), 'utf8'), v1, 'the copy still holds the format-1 bytes');
  t.equal((await (await second.connect()).decrypt(byActive)).toString(), 'made under the older key', 'old tokens still decrypt');
});
