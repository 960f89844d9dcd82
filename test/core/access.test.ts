import t from 'tap';
import { promises as fs } from 'node:fs';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { once } from 'node:events';
import { AccessTokens, AuthThrottle, Policy, newCaller, parseTokens, tokenIdOf } from '../../src/core/access.js';
import type { Caller, FailureReport, Role } from '../../src/core/access.js';
import { OPERATIONS, operation } from '../../src/core/operations.js';
import type { Operation } from '../../src/core/operations.js';
import { tempDir } from '../helpers/server.js';

const USER = 'user-secret-0123456789';
const ADMIN = 'admin-secret-0123456789';
const HASHED = 'hashed-secret-0123456789';
const sha = (s: string) => createHash('sha256').update(s).digest('hex');
const FILE = `# access tokens\n\nuser ${USER}\n  admin   ${ADMIN}  \nuser sha256:${sha(HASHED)}\n`;
const op = (command: string): Operation => operation(command)!;

async function tokensFile(dir: string, text = FILE): Promise<string> {
  const file = join(dir, 'tokens');
  await fs.writeFile(file, text, { mode: 0o600 });
  return file;
}

t.test('parseTokens reads roles, secrets and sha256 digests; bad lines are reported by number, never echoed', async (t) => {
  const { entries, problems } = parseTokens(FILE);
  t.equal(entries.length, 3, 'three tokens, comments and blanks skipped');
  t.same(problems, [], 'no problem');
  const bad: Array<[string, RegExp]> = [
    ['user', /^line 1: expected "<role> <secret> \[keys=<pattern>,...\] \[expires=<date>\]"$/],
    ['root abcdefghijklmnopqrst', /^line 1: role must be admin, user, encrypt or decrypt$/],
    ['\nuser short', /^line 2: secret shorter than 16 bytes \(make one with: openssl rand -hex 32\)$/],
    ['admin sha256:abc', /^line 1: sha256: must be followed by 64 hex digits$/],
    ['user a b c', /^line 1: expected/],
    [`user ${ADMIN} keys=`, /^line 1: keys= takes key names or patterns such as billing,tenant-\*$/],
    [`user ${ADMIN} keys=Billing`, /^line 1: keys= takes key names/],
    [`user ${ADMIN} keys=a,,b`, /^line 1: keys= takes key names/],
    [`user ${ADMIN} expires=tomorrow`, /^line 1: expected .*, not "expires="$/],
    [`user ${ADMIN} keys=a keys=b`, /^line 1: expected .*, not "keys="$/],
    [`user ${ADMIN} scope=all`, /^line 1: expected .*, not "scope="$/],
  ];
  for (const [text, message] of bad) {
    const parsed = parseTokens(`${text}\nuser ${USER}\n`);
    t.match(parsed.problems, [message], `reports ${JSON.stringify(text)}`);
    t.equal(parsed.entries.length, 1, 'and keeps only the valid line');
  }
  t.notMatch(parseTokens('root thisIsTheSecretValue1').problems.join(), 'thisIsTheSecretValue1', 'the secret is not echoed');
});

t.test('AccessTokens: roles by secret; a file that is unsafe or wrong is refused at load', async (t) => {
  const dir = tempDir(t);
  const file = await tokensFile(dir);
  await fs.chmod(file, 0o644);
  await t.rejects(AccessTokens.load(file), { message: `tokens file ${file} has mode 0644, open to group or others: run chmod 600 ${file}` }, 'a loose tokens file is refused');
  await fs.chmod(file, 0o600);
  await t.rejects(AccessTokens.load(join(dir, 'missing')), { message: /tokens file .*missing does not exist/ }, 'a missing file is an error');
  const badLine = await tokensFile(tempDir(t), `user ${USER}\nnonsense\n`);
  await t.rejects(AccessTokens.load(badLine), { message: /tokens file .*: line 2: expected/ }, 'a bad line stops a start');
  const empty = await tokensFile(tempDir(t), '# nothing\n');
  await t.rejects(AccessTokens.load(empty), { message: /holds no access token/ }, 'a file with no token stops a start');
  const tokens = await AccessTokens.load(file);
  t.equal(tokens.verify(USER), 'user', 'user secret');
  t.equal(tokens.verify(ADMIN), 'admin', 'admin secret');
  t.equal(tokens.verify(HASHED), 'user', 'secret stored as sha256');
  t.equal(tokens.verify(Buffer.from(ADMIN)), 'admin', 'bytes work too');
  t.equal(tokens.verify('wrong-secret-0123456789'), null, 'wrong secret');
  t.equal(tokens.verify(''), null, 'empty secret');
});

t.test('revocation fails closed: every way of breaking the file leaves no token valid', async (t) => {
  const dir = tempDir(t);
  const file = await tokensFile(dir);
  const tokens = await AccessTokens.load(file);
  const problems: string[] = [];
  tokens.on('problem', (p: string) => problems.push(p));
  const cases: Array<[string, () => Promise<void>, RegExp]> = [
    ['emptied', () => fs.writeFile(file, ''), /holds no access token/],
    ['only comments', () => fs.writeFile(file, '# all gone\n'), /holds no access token/],
    ['deleted', () => fs.rm(file), /does not exist/],
    ['rewritten 0644', () => fs.writeFile(file, FILE, { mode: 0o644 }).then(() => fs.chmod(file, 0o644)), /open to group or others/],
    ['a bad line in the same edit', () => fs.writeFile(file, `garbage\n`, { mode: 0o600 }).then(() => fs.chmod(file, 0o600)), /line 1: expected/],
  ];
  for (const [name, breakIt, problem] of cases) {
    await fs.writeFile(file, FILE, { mode: 0o600 });
    await fs.chmod(file, 0o600);
    await tokens.reload();
    t.equal(tokens.verify(USER), 'user', `${name}: the token works before`);
    problems.length = 0;
    await breakIt();
    await tokens.reload();
    t.equal(tokens.verify(USER), null, `${name}: then grants nothing`);
    t.equal(tokens.verify(ADMIN), null, `${name}: no token does`);
    t.match(problems.join('\n'), problem, `${name}: and says why`);
  }
  await fs.writeFile(file, `user ${USER}\nbroken line\nadmin ${ADMIN}\n`, { mode: 0o600 });
  await fs.chmod(file, 0o600);
  await tokens.reload();
  t.equal(tokens.verify(USER), 'user', 'valid lines beside a bad one still work');
  t.equal(tokens.verify(ADMIN), 'admin', 'all of them');
});

t.test('AccessTokens reloads when the file changes', async (t) => {
  const dir = tempDir(t);
  const file = await tokensFile(dir);
  const tokens = await AccessTokens.load(file);
  const keepAlive = setInterval(() => undefined, 1000);
  tokens.watch(20);
  t.teardown(() => {
    tokens.close();
    clearInterval(keepAlive);
  });
  const changed = once(tokens, 'change');
  await fs.writeFile(file, `admin ${USER}\n`);
  t.same(await changed, [1], 'reloaded with one token');
  t.equal(tokens.verify(USER), 'admin', 'the new role is in force');
});

t.test('Policy: who may do what, from the operations table', async (t) => {
  const tokens = await AccessTokens.load(await tokensFile(tempDir(t)));
  const outcome = (policy: Policy, o: Operation, role: Role | null, loopback: boolean): string => {
    const caller: Caller = { ...newCaller('tcp', loopback ? '127.0.0.1' : '192.0.2.1'), role };
    try {
      policy.authorize(o, caller);
      return 'ok';
    } catch (err) {
      return (err as { code: string }).code;
    }
  };
  const withTokens = new Policy(tokens, true);
  const without = new Policy(null, true);
  for (const o of OPERATIONS) {
    const anyone = o.roles === null;
    const adminOnly = !anyone && o.roles!.length === 0;
    for (const loopback of [true, false]) {
      t.equal(outcome(withTokens, o, null, loopback), anyone ? 'ok' : 'unauthorized', `tokens, no role, ${o.command}`);
      for (const role of ['user', 'encrypt', 'decrypt'] as const) {
        t.equal(outcome(withTokens, o, role, loopback), anyone || o.roles!.includes(role) ? 'ok' : 'forbidden', `tokens, ${role}, ${o.command}`);
      }
      t.equal(outcome(withTokens, o, 'admin', loopback), 'ok', `tokens, admin, ${o.command}`);
    }
    t.equal(outcome(without, o, null, true), 'ok', `no tokens, loopback, ${o.command}: ok`);
    t.equal(outcome(without, o, null, false), adminOnly ? 'forbidden' : 'ok', `no tokens, remote, ${o.command}`);
  }
  const allowed = (role: Role) => OPERATIONS.filter((o) => outcome(withTokens, o, role, false) === 'ok' && o.roles !== null).map((o) => o.command);
  t.same(allowed('user'), ['en', 'de', 'rw', 'dk', 'in', 'se', 'sd', 'ki', 'ks'], 'user: the data operations, streams and reading key facts');
  t.same(allowed('encrypt'), ['en', 'dk', 'se'], 'encrypt: en, dk (a data key is an encryption) and se');
  t.same(allowed('decrypt'), ['de', 'in', 'sd'], 'decrypt: de, inspect and sd');
  const noKey = new Policy(tokens, false);
  t.throws(() => noKey.authorize(op('gk'), { ...newCaller('tcp', '127.0.0.1'), role: 'admin' }), { code: 'forbidden', message: /key export is disabled on this server \(--no-get-key\)/ }, '--no-get-key refuses even admins');
  t.throws(() => withTokens.authorize(op('rk'), { ...newCaller('tcp', '127.0.0.1'), role: 'user' }), { code: 'forbidden', message: 'rk needs the admin role' }, 'messages name the operation as users type it');
  t.throws(() => withTokens.authorize(op('en'), newCaller('http', '127.0.0.1')), { message: /Authorization: Bearer/ }, 'HTTP callers are told how to send a token');
  t.throws(() => withTokens.authorize(op('en'), newCaller('tcp', '127.0.0.1')), { message: /#au#<token>#.*CRYPT_TOKEN/ }, 'TCP callers too');
});

t.test('Policy.authenticate: roles, identity, and no tokens means no authentication', async (t) => {
  const tokens = await AccessTokens.load(await tokensFile(tempDir(t)));
  const policy = new Policy(tokens, true);
  const caller = newCaller('tcp', '192.0.2.1');
  t.equal(policy.authenticate(caller, ADMIN), 'admin', 'authenticate grants the role');
  t.equal(caller.tokenId, tokenIdOf(createHash('sha256').update(ADMIN).digest()), 'and a public token id');
  t.notMatch(caller.tokenId!, ADMIN, 'which is not the secret');
  t.throws(() => policy.authenticate(newCaller('tcp', '192.0.2.1'), 'nope-nope-nope-nope'), { code: 'unauthorized', message: 'invalid access token' }, 'a wrong secret is unauthorized');
  t.throws(() => policy.authenticate(newCaller('tcp', '192.0.2.1'), Buffer.alloc(5000, 0x61)), { code: 'unauthorized' }, 'an oversized secret is refused without hashing it');
  const open = new Policy(null, true);
  for (const transport of ['tcp', 'http'] as const) {
    t.throws(() => open.authenticate(newCaller(transport, '127.0.0.1'), 'anything'), { code: 'unauthorized', message: /no access tokens are configured on this server/ }, `without tokens, ${transport} authentication is refused, not faked`);
  }
  const utf8 = 'sécret-ünïcode-0123456789';
  const uni = await AccessTokens.load(await tokensFile(tempDir(t), `user ${utf8}\n`));
  t.equal(new Policy(uni, true).authenticate(newCaller('tcp', '127.0.0.1'), Buffer.from(utf8, 'utf8')), 'user', 'a non-ASCII secret matches its UTF-8 bytes');
});

t.test('failed authentications: per connection for its whole life, per address across connections', async (t) => {
  const tokens = await AccessTokens.load(await tokensFile(tempDir(t)));
  const reports: FailureReport[] = [];
  const throttle = new AuthThrottle({ perConnection: 3, perPeer: 5, windowMs: 60_000 }, (r) => reports.push(r));
  const policy = new Policy(tokens, true, throttle);
  const conn = newCaller('tcp', '192.0.2.7');
  const wrong = 'wrong-secret-0123456789';
  t.throws(() => policy.authenticate(conn, wrong), { code: 'unauthorized', close: false }, 'a first failure');
  t.equal(policy.authenticate(conn, USER), 'user', 'a success');
  t.throws(() => policy.authenticate(conn, wrong), { code: 'unauthorized', close: false }, 'does not reset the count: second failure');
  t.throws(() => policy.authenticate(conn, wrong), { code: 'unauthorized', close: true, message: /closing after 3 failures/ }, 'the third failure closes the connection, success or not in between');
  t.throws(() => policy.authenticate(conn, ADMIN), { code: 'unauthorized', close: true }, 'and nothing more is checked on it');
  const other = newCaller('tcp', '192.0.2.7');
  t.throws(() => policy.authenticate(other, wrong), { code: 'unauthorized' }, 'a new connection from the same address: fourth failure');
  t.throws(() => policy.authenticate(other, wrong), { code: 'unauthorized' }, 'fifth failure');
  t.throws(() => policy.authenticate(newCaller('http', '192.0.2.7'), ADMIN), { code: 'rate_limited', close: true, message: /too many failed authentications from this address/ }, 'past the address budget even a right secret is refused, on any transport');
  t.equal(policy.authenticate(newCaller('tcp', '192.0.2.8'), USER), 'user', 'another address is not affected');
  throttle.flush();
  t.equal(reports.length, 1, 'one report line for the period');
  t.match(reports[0], { failures: 5, peers: 1, refused: 1, blocked: ['192.0.2.7'] }, 'summing up failures, addresses and refusals');
  throttle.flush();
  t.equal(reports.length, 1, 'nothing more to report');
  const later = new AuthThrottle({ perConnection: 3, perPeer: 1, windowMs: 1000 });
  const c = newCaller('tcp', '192.0.2.9');
  later.failed(c, 0);
  t.throws(() => later.check(c, 500), { code: 'rate_limited' }, 'within the window: refused');
  t.doesNotThrow(() => later.check(c, 1000), 'after it: allowed again');
});

t.test('Policy: a caller that authenticated before the tokens changed is checked again', async (t) => {
  const file = await tokensFile(tempDir(t));
  const tokens = await AccessTokens.load(file);
  const policy = new Policy(tokens, true);
  const user = newCaller('tcp', '192.0.2.1');
  const admin = newCaller('tcp', '192.0.2.1');
  policy.authenticate(user, USER);
  policy.authenticate(admin, ADMIN);
  const failed: Caller = { ...user };
  t.throws(() => policy.authenticate(failed, 'wrong-secret-0123456789'), { code: 'unauthorized' }, 'a wrong secret is refused');
  t.equal(failed.role, 'user', 'and leaves the caller as it was');
  policy.authorize(op('en'), user);
  await fs.writeFile(file, `admin ${USER}\n`);
  await tokens.reload();
  t.doesNotThrow(() => policy.authorize(op('rk'), user), 'a changed role is in force for an open caller');
  t.equal(user.role, 'admin', 'the caller now has the new role');
  t.throws(() => policy.authorize(op('en'), admin), { code: 'unauthorized' }, 'a removed token no longer works for an open caller');
  t.equal(admin.role, null, 'and its role is gone');
  t.equal(admin.tokenId, null, 'and its identity');
});

t.test('scopes and expiry: keys= patterns limit the named keys, expires= ends a token', async (t) => {
  const WEB = 'web-tier-secret-0123456789';
  const BACK = 'back-office-secret-0123456789';
  const TENANTS = 'tenants-secret-0123456789';
  const OLD = 'expired-secret-0123456789';
  const SOON = 'soon-secret-0123456789';
  const soon = Date.now() + 60_000;
  const text = [
    `encrypt ${WEB} keys=billing`,
    `decrypt ${BACK} keys=billing expires=2999-01-01`,
    `user ${TENANTS} keys=tenant-*,shared.v1`,
    `user ${OLD} expires=2000-01-01T00:00:00Z`,
    `admin ${SOON} expires=${new Date(soon).toISOString()}`,
    `user ${USER}`,
  ].join('\n');
  const parsed = parseTokens(text);
  t.same(parsed.problems, ['line 4: expired on 2000-01-01T00:00:00.000Z; it grants nothing'], 'an expired line is reported, not fatal');
  const tokens = await AccessTokens.load(await tokensFile(tempDir(t), text));
  const policy = new Policy(tokens, true);
  const as = (secret: string): Caller => {
    const caller = newCaller('tcp', '192.0.2.1');
    policy.authenticate(caller, secret);
    return caller;
  };
  const can = (caller: Caller, command: string, key: string): string => {
    try {
      policy.authorize(op(command), caller);
      policy.authorizeKey(caller, key);
      return 'ok';
    } catch (err) {
      return (err as { code: string }).code;
    }
  };
  const web = as(WEB);
  t.same([can(web, 'en', 'billing'), can(web, 'de', 'billing'), can(web, 'en', 'default'), can(web, 'en', 'billing2')], ['ok', 'forbidden', 'forbidden', 'forbidden'], 'the web tier encrypts with billing, nothing else');
  const back = as(BACK);
  t.same([can(back, 'de', 'billing'), can(back, 'in', 'billing'), can(back, 'en', 'billing'), can(back, 'rw', 'billing'), can(back, 'de', 'users')], ['ok', 'ok', 'forbidden', 'forbidden', 'forbidden'], 'the back office decrypts and inspects billing, nothing else');
  const tenants = as(TENANTS);
  t.same(['tenant-a', 'tenant-', 'tenant-x.y', 'shared.v1', 'sharedxv1', 'tenant', 'a-tenant-b'].map((k) => can(tenants, 'en', k)), ['ok', 'ok', 'ok', 'ok', 'forbidden', 'forbidden', 'forbidden'], 'patterns: * is any run of name characters, . is a dot');
  t.throws(() => policy.authorizeKey(tenants, 'billing'), { code: 'forbidden', message: 'this access token may not use the key billing' }, 'the message is the same whether the key exists or not');
  t.ok(policy.covers(as(USER), 'anything'), 'no keys= covers every key (old files keep working)');
  t.throws(() => policy.authenticate(newCaller('tcp', '192.0.2.1'), OLD), { code: 'unauthorized', message: 'this access token has expired' }, 'an expired token is unauthorized');
  const admin = as(SOON);
  t.equal(can(admin, 'rk', 'default'), 'ok', 'a token works until it expires');
  const realNow = Date.now;
  Date.now = () => soon + 1;
  t.teardown(() => {
    Date.now = realNow;
  });
  t.equal(can(admin, 'rk', 'default'), 'unauthorized', 'and is unauthorized after, on a connection that authenticated before');
});
