import { spawnSync } from 'node:child_process';

/** Debian's python3 with python3-cryptography: the interop reference that .ci/run installs. */
export const PYTHON = '/usr/bin/python3';

/** Runs a Python script with JSON on stdin and returns its JSON stdout; throws with stderr on failure. */
export function python<T>(script: string, input: unknown): T {
  const run = spawnSync(PYTHON, ['-c', script], { input: JSON.stringify(input), encoding: 'utf8', maxBuffer: 64 << 20 });
  if (run.status !== 0) throw new Error(`python failed (${run.status}): ${run.stderr}`);
  return JSON.parse(run.stdout) as T;
}
