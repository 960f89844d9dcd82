import t from 'tap';
import { randomBytes } from 'node:crypto';
import { FernetKey, decrypt } from '../../src/crypto/fernet.js';
import { python } from '../helpers/python.js';

const messages = [Buffer.alloc(0), Buffer.from('hello'), Buffer.from('a#b#c\n\r\0'), randomBytes(1000), randomBytes(512 * 1024)];

t.test("Python's cryptography decrypts our tokens", async (t) => {
  const key = FernetKey.generate();
  const tokens = messages.map((m) => key.encrypt(m));
  const out = python<string[]>(
    `import sys, json, base64
from cryptography.fernet import Fernet
d = json.load(sys.stdin)
f = Fernet(d["key"])
print(json.dumps([base64.b64encode(f.decrypt(tok.encode(), ttl=3600)).decode() for tok in d["tokens"]]))`,
    { key: key.export(), tokens },
  );
  messages.forEach((m, i) => t.ok(Buffer.from(out[i]!, 'base64').equals(m), `python decrypts our ${m.length}-byte token`));
});

t.test("we decrypt Python's tokens, with its key and with several keys", async (t) => {
  const out = python<{ key: string; other: string; tokens: string[] }>(
    `import sys, json, base64
from cryptography.fernet import Fernet
d = json.load(sys.stdin)
key = Fernet.generate_key()
f = Fernet(key)
print(json.dumps({"key": key.decode(), "other": Fernet.generate_key().decode(),
  "tokens": [f.encrypt(base64.b64decode(m)).decode() for m in d]}))`,
    messages.map((m) => m.toString('base64')),
  );
  const key = FernetKey.from(out.key);
  const other = FernetKey.from(out.other);
  messages.forEach((m, i) => {
    t.ok(decrypt([key], out.tokens[i]!, { ttl: 3600 }).plaintext.equals(m), `we decrypt python's ${m.length}-byte token`);
    t.ok(decrypt([other, key], out.tokens[i]!).plaintext.equals(m), 'and with it as an older key of several');
  });
});

t.test('keys are interchangeable with Python', async (t) => {
  const ours = FernetKey.generate();
  const res = python<{ token: string }>(
    `import sys, json
from cryptography.fernet import Fernet
d = json.load(sys.stdin)
print(json.dumps({"token": Fernet(d["key"]).encrypt(b"from python").decode()}))`,
    { key: ours.export() },
  );
  t.equal(decrypt([ours], res.token).plaintext.toString(), 'from python', 'python accepts our key format and we read its token');
});
