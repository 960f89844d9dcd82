// Automatic rotation with several servers on one keyring: every server checks at start (and every
// minute), the due check is made again inside the keyring's compare-and-swap update, so a key
// that is due is rotated exactly once, by one of them.
import t from 'tap';
import { promises as fs } from 'node:fs';
import { join } from 'node:path';
import { CLIENT_BIN, cleanEnv, runCli, spawnServer } from '../helpers/cli.js';
import { tempDir } from '../helpers/server.js';
import { KeyBook, KeySet, NEW_KEY_SETTINGS } from '../../src/keys/keyring.js';
import { FernetKey, decrypt } from '../../src/crypto/fernet.js';

t.test('three server processes on one keyring: a key past its auto_rotate period is rotated exactly once', async (t) => {
  const home = tempDir(t);
  const env = cleanEnv(home);
  const file = join(home, 'keyring.json');
  const hours = (n: number) => new Date(Date.now() - n * 3_600_000).toISOString();
  const billingRoot = FernetKey.generate();
  const defaultKey = KeySet.generate('default').toJson();
  const billing = {
    ...KeySet.generate('billing', NEW_KEY_SETTINGS).toJson(),
    auto_rotate: 3600,
    versions: [{ id: billingRoot.id, state: 'primary', created: hours(2), key: billingRoot.export() }],
  };
  // a key with a period that is not due yet: left alone
  const fresh = FernetKey.generate();
  const weekly = {
    ...KeySet.generate('weekly', NEW_KEY_SETTINGS).toJson(),
    auto_rotate: 7 * 86_400,
    versions: [{ id: fresh.id, state: 'primary', created: hours(2), key: fresh.export() }],
  };
  const text = JSON.stringify({ format: 'crypt-keyring/2', keys: [defaultKey, billing, weekly] }, null, 2) + '\n';
  await fs.writeFile(file, text, { mode: 0o600 });
  const before = KeyBook.parse(text);
  const oldToken = billingRoot.encrypt(Buffer.from('made before the rotation'));

  const servers = await Promise.all([0, 1, 2].map(() => spawnServer(t, ['--port', '0', '--keyring', file, '--log-level', 'debug'], env, home)));
  // the check at start is logged (at debug) after any rotation it made: once each has logged it, every start-up check is done
  await Promise.all(servers.map((s) => s.waitFor(/"msg":"keys checked for automatic rotation"/)));

  const rotatedBy = servers.map((s) => s.lines.filter((l) => l.includes('"msg":"key rotated automatically"')));
  t.equal(rotatedBy.flat().length, 1, 'exactly one process logged an automatic rotation');
  t.match(rotatedBy.flat()[0], /"keyName":"billing"/, 'of billing');
  const after = KeyBook.parse(await fs.readFile(file, 'utf8'));
  const versions = after.key('billing').details().versions;
  t.equal(versions.length, 2, 'the keyring holds exactly 2 versions of billing: one rotation');
  t.same(versions.map((v) => v.state), ['primary', 'active'], 'a new primary; the old one still decrypts');
  t.equal(versions[1]!.id, billingRoot.id, 'the old one is the version written by hand');
  t.match(rotatedBy.flat()[0], `"primary":"${versions[0]!.id}"`, 'the log line names the new primary');
  t.same(after.key('default').details(), before.key('default').details(), 'default (no auto_rotate) is untouched');
  t.same(after.key('weekly').details(), before.key('weekly').details(), 'a key whose period has not passed is untouched');
  t.equal(decrypt(after.key('billing').decrypting, oldToken).plaintext.toString(), 'made before the rotation', 'tokens of the old primary decrypt');

  // each server's check ended on the latest keys: every one serves the new primary
  for (const [i, s] of servers.entries()) {
    const shown = await runCli(CLIENT_BIN, ['--port', String(s.port), 'ks', 'billing'], { env, cwd: home });
    t.equal((JSON.parse(shown.stdout.toString()) as { primary: string }).primary, versions[0]!.id, `server ${i + 1} serves the new primary of billing`);
  }
  for (const s of servers) s.child.kill('SIGTERM');
  const exits = await Promise.all(servers.map((s) => s.exited));
  t.same(exits, [0, 1, 2].map(() => ({ code: 0, signal: null })), 'all three stop cleanly');
  t.equal(KeyBook.parse(await fs.readFile(file, 'utf8')).key('billing').details().versions.length, 2, 'and nothing rotated it again meanwhile');
});
