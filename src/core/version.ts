/** The package version, read from package.json (from src/core/ when run by tests, from dist/src/core/ when built). */
import { readFileSync } from 'node:fs';

function find(): string {
  for (const rel of ['../../package.json', '../../../package.json']) {
    try {
      const pkg = JSON.parse(readFileSync(new URL(rel, import.meta.url), 'utf8')) as { name?: string; version?: string };
      if (pkg.name === 'crypt' && pkg.version) return pkg.version;
    } catch {
      // try the next location
    }
  }
  return 'unknown';
}

/** The version of crypt. */
export const VERSION = find();
