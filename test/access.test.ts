import t from 'tap';
import { promises as fs } from 'node:fs';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { once } from 'node:events';
import { AccessTokens, Policy, parseTokens } from '../src/access.js';
import type { Caller, Operation, Role } from '../src/access.js';

const USER = 'user-secret-0123456789';
const ADMIN = 'admin-secret-0123456789';
const HASHED = 'hashed-secret-0123456789';
const sha = (s: string) => createHash('sha256').update(s).digest('hex');
const FILE = `# access tokens\n\nuser ${USER}\n  admin   ${ADMIN}  \nuser sha256:${sha(HASHED)}\n`;

t.test('parseTokens reads roles, secrets and sha256 digests; errors name the line only', async (t) => {
  t.equal(parseTokens(FILE).length, 3, 'three tokens, comments and blanks skipped');
  const bad: Array<[string, RegExp]> = [
    ['user', /^line 1: expected "<role> <secret>"$/],
    ['root abcdefghijklmnopqrst', /^line 1: role must be user or admin$/],
    ['\nuser short', /^line 2: secret shorter than 16 characters \(make one with: openssl rand -hex 32\)$/],
    ['admin sha256:abc', /^line 1: sha256: must be followed by 64 hex digits$/],
    ['user a b c', /^line 1: expected/],
    ['# only comments', /^no access tokens in it$/],
  ];
  for (const [text, message] of bad) t.throws(() => parseTokens(text), { message }, `rejects ${JSON.stringify(text)}`);
  try { parseTokens('root thisIsTheSecretValue1'); } catch (err) { t.notMatch((err as Error).message, 'thisIsTheSecretValue1', 'the secret is not echoed'); }
});

t.test('AccessTokens: roles by secret, 0600 required, reloads on change', async (t) => {
  const dir = t.testdir({ tokens: FILE });
  const file = join(dir, 'tokens');
  await fs.chmod(file, 0o644);
  await t.rejects(AccessTokens.load(file), { message: `tokens file ${file} has mode 0644, open to group or others: run chmod 600 ${file}` }, 'a loose tokens file is refused');
  await fs.chmod(file, 0o600);
  await t.rejects(AccessTokens.load(join(dir, 'missing')), { message: /cannot read tokens file .*missing \(ENOENT\)/ }, 'a missing file is an error');
  const tokens = await AccessTokens.load(file);
  t.equal(tokens.verify(USER), 'user', 'user secret');
  t.equal(tokens.verify(ADMIN), 'admin', 'admin secret');
  t.equal(tokens.verify(HASHED), 'user', 'secret stored as sha256');
  t.equal(tokens.verify(Buffer.from(ADMIN)), 'admin', 'bytes work too');
  t.equal(tokens.verify('wrong-secret-0123456789'), null, 'wrong secret');
  t.equal(tokens.verify(''), null, 'empty secret');

  const keepAlive = setInterval(() => undefined, 1000);
  tokens.watch(20);
  t.teardown(() => { tokens.close(); clearInterval(keepAlive); });
  const changed = once(tokens, 'change');
  await fs.writeFile(file, `admin ${USER}\n`);
  t.same(await changed, [1], 'reloaded with one token');
  t.equal(tokens.verify(USER), 'admin', 'the new role is in force');
  // a write can be seen half done (inotify), so wait for the error the finished write causes
  const failed = new Promise<Error>((resolve) => {
    const on = (err: Error) => {
      if (!/tokens file .*: line 1: expected/.test(err.message)) return;
      tokens.off('error', on);
      resolve(err);
    };
    tokens.on('error', on);
  });
  await fs.writeFile(file, 'garbage\n');
  t.match((await failed).message, /tokens file .*: line 1: expected/, 'a bad change is reported');
  t.equal(tokens.verify(USER), 'admin', 'and the tokens in force stay');
});

t.test('Policy: who may do what', async (t) => {
  const file = join(t.testdir({ tokens: FILE }), 'tokens');
  await fs.chmod(file, 0o600);
  const tokens = await AccessTokens.load(file);
  const ops: Operation[] = ['encrypt', 'decrypt', 'rewrap', 'keyInfo', 'getKey', 'rotate'];
  const adminOnly = new Set<Operation>(['getKey', 'rotate']);
  const outcome = (policy: Policy, op: Operation, role: Role | null, loopback: boolean): string => {
    try {
      policy.authorize(op, { role, loopback });
      return 'ok';
    } catch (err) {
      return (err as { code: string }).code;
    }
  };
  const withTokens = new Policy(tokens, true);
  const without = new Policy(null, true);
  for (const op of ops) {
    for (const loopback of [true, false]) {
      t.equal(outcome(withTokens, op, null, loopback), 'unauthorized', `tokens, no role, ${op}: unauthorized`);
      t.equal(outcome(withTokens, op, 'user', loopback), adminOnly.has(op) ? 'forbidden' : 'ok', `tokens, user, ${op}`);
      t.equal(outcome(withTokens, op, 'admin', loopback), 'ok', `tokens, admin, ${op}`);
    }
    t.equal(outcome(without, op, null, true), 'ok', `no tokens, loopback, ${op}: ok`);
    t.equal(outcome(without, op, null, false), adminOnly.has(op) ? 'forbidden' : 'ok', `no tokens, remote, ${op}`);
  }
  const noKey = new Policy(tokens, false);
  t.throws(() => noKey.authorize('getKey', { role: 'admin', loopback: true }), { code: 'forbidden', message: 'key export is disabled on this server (--no-get-key)' }, '--no-get-key refuses even admins');
  t.equal(withTokens.authenticate({ role: null, loopback: false }, ADMIN), 'admin', 'authenticate grants the role');
  t.throws(() => withTokens.authenticate({ role: null, loopback: false }, 'nope'), { code: 'unauthorized', message: 'invalid access token' }, 'a wrong secret is unauthorized');
  t.equal(without.authenticate({ role: null, loopback: true }, 'anything'), 'admin', 'without tokens, the role follows the address');
});

t.test('Policy: a caller that authenticated before the tokens changed is checked again', async (t) => {
  const dir = t.testdir({ tokens: FILE });
  const file = join(dir, 'tokens');
  await fs.chmod(file, 0o600);
  const tokens = await AccessTokens.load(file);
  const policy = new Policy(tokens, true);
  const user: Caller = { role: null, loopback: false };
  const admin: Caller = { role: null, loopback: false };
  policy.authenticate(user, USER);
  policy.authenticate(admin, ADMIN);
  const failed: Caller = { ...user };
  t.throws(() => policy.authenticate(failed, 'wrong-secret-0123456789'), { code: 'unauthorized' }, 'a wrong secret is refused');
  t.equal(failed.role, 'user', 'and leaves the caller as it was');
  policy.authorize('encrypt', user);
  await fs.writeFile(file, `admin ${USER}\n`);
  await tokens.reload();
  t.equal(tokens.generation, 1, 'a reload is a new generation');
  t.doesNotThrow(() => policy.authorize('rotate', user), 'a changed role is in force for an open caller');
  t.equal(user.role, 'admin', 'the caller now has the new role');
  t.throws(() => policy.authorize('encrypt', admin), { code: 'unauthorized' }, 'a removed token no longer works for an open caller');
  t.equal(admin.role, null, 'and its role is gone');
  const errors: Error[] = [];
  tokens.on('error', (err: Error) => errors.push(err));
  await fs.writeFile(file, 'garbage\n');
  await tokens.reload();
  t.equal(errors.length, 1, 'the bad change is reported');
  t.equal(tokens.generation, 1, 'a failed reload keeps the generation');
  t.equal(policy.roleOf(user), 'admin', 'and the roles in force');
});
