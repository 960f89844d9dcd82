import t from 'tap';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';

const semver = createRequire(import.meta.url)('semver') as { satisfies(v: string, range: string): boolean; minVersion(range: string): { version: string } | null };
const read = (rel: string) => readFileSync(new URL(rel, import.meta.url), 'utf8');

t.test('every locked dependency supports the Node.js the README promises', async (t) => {
  const promised = /You need Node\.js (\d+\.\d+) or later/.exec(read('../../README.md'))?.[1];
  t.ok(promised, 'the README names a Node.js version');
  const pkg = JSON.parse(read('../../package.json')) as { engines: { node: string } };
  t.equal(semver.minVersion(pkg.engines.node)?.version, `${promised}.0`, 'package.json engines says the same');
  const lock = JSON.parse(read('../../package-lock.json')) as { packages: Record<string, { engines?: { node?: string } | string[] }> };
  const unsupported = Object.entries(lock.packages)
    .filter(([, p]) => p.engines && !Array.isArray(p.engines) && p.engines.node && !semver.satisfies(`${promised}.0`, p.engines.node))
    .map(([name, p]) => `${name} needs node ${(p.engines as { node: string }).node}`);
  t.same(unsupported, [], `npm ci on Node.js ${promised} prints no EBADENGINE warning`);
});
