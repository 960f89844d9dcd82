import t from 'tap';
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

// Imports go down only: entry points -> cli -> ops -> transports, client -> core -> keys -> crypto, wire.
// crypto/ and wire/ import nothing of the project but the error catalogue; a layer may import itself.
const RANK: Record<string, number> = { crypto: 0, wire: 0, keys: 1, core: 2, transports: 3, client: 3, ops: 4, cli: 5, 'index.ts': 6, server: 7, client_bin: 7 };
const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const CATALOGUE = 'src/core/errors.ts';

function layer(file: string): string {
  const [top, second] = relative(root, file).split('/');
  if (top === 'src') return second!;
  return top === 'client' ? 'client_bin' : top!;
}

function sources(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    return statSync(path).isDirectory() ? sources(path) : name.endsWith('.ts') ? [path] : [];
  });
}

t.test('imports only go down the layers', async (t) => {
  const files = [...sources(join(root, 'src')), join(root, 'server/index.ts'), join(root, 'client/index.ts')];
  const wrong: string[] = [];
  for (const file of files) {
    const from = layer(file);
    for (const m of readFileSync(file, 'utf8').matchAll(/(?:from|import)\s*\(?\s*'(\.{1,2}\/[^']+)'/g)) {
      const target = resolve(dirname(file), m[1]!).replace(/\.js$/, '.ts');
      const to = layer(target);
      const ok = relative(root, target) === CATALOGUE || to === from || (RANK[to]! < RANK[from]! && !(from === 'crypto' || from === 'wire'));
      if (!ok) wrong.push(`${relative(root, file)} (${from}) imports ${relative(root, target)} (${to})`);
    }
  }
  t.ok(files.length > 30, `${files.length} files checked`);
  t.same(wrong, [], 'no import goes up a layer, and crypto/ and wire/ import only the error catalogue');
});
