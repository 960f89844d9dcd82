#!/usr/bin/env node
// Runs tap, checks the coverage floor, then prints the closing line CI reads:
// `N passed, N failed`, counting every assertion (leaf test point) in the TAP that tap saved
// for each test file. tap's own 100% gate is off (.taprc); the floor below is the gate.
import { spawnSync } from 'node:child_process';
import { readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { createRequire } from 'node:module';

const { Parser } = createRequire(import.meta.url)('tap-parser');
const results = '.tap/test-results';
rmSync(results, { recursive: true, force: true });
const tap = spawnSync(process.execPath, ['node_modules/tap/dist/esm/run.mjs', ...process.argv.slice(2)], { stdio: 'inherit' });

const files = [];
const walk = (dir) => {
  for (const name of readdirSync(dir)) {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) walk(path);
    else if (name.endsWith('.tap')) files.push(path);
  }
};
try {
  walk(results);
} catch {
  // no results at all: counted below as a failure of the run
}

let passed = 0;
let failed = 0;
const count = (parser) => {
  let children = 0;
  parser.on('child', (child) => {
    children++;
    count(child);
  });
  parser.on('assert', (result) => {
    // a subtest's own summary point follows its child parser: count only leaves
    if (children > 0) {
      children--;
      return;
    }
    if (result.ok || result.todo || result.skip) passed++;
    else failed++;
  });
};
for (const file of files) {
  const parser = new Parser();
  count(parser);
  parser.end(readFileSync(file, 'utf8'));
}

/** Coverage below these percentages (all files together, on a full run) fails the run. */
const FLOOR = { lines: 95, branches: 90 };
let status = tap.status ?? 1;
if (status !== 0 && failed === 0) {
  console.log(`tap exited with status ${status} although no assertion failed (a crash or a timeout: see above)`);
  failed = 1;
}
if (process.argv.length === 2) {
  let total = null;
  try {
    total = JSON.parse(readFileSync('.tap/report/coverage-summary.json', 'utf8')).total;
  } catch {
    console.log('no coverage summary was written');
  }
  for (const [metric, floor] of Object.entries(FLOOR)) {
    const pct = total?.[metric]?.pct ?? 0;
    if (pct < floor) {
      console.log(`coverage of ${metric} is ${pct}%, below the floor of ${floor}%`);
      if (status === 0) status = 1;
      failed++;
    }
  }
}
console.log(`${passed} passed, ${failed} failed`);
process.exit(status);
