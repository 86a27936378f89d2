// The fuzz targets with a long budget (docs/security.md, "Fuzzing"): builds the unit tests,
// runs every target in test/unit/fuzz (and the virtqueue fuzz) with TSVMM_FUZZ_CASES, and
// prints each target's FUZZ line (cases, crashes, seed, time). CI runs the same targets with
// their short budgets as ordinary unit tests.
//
//   node tools/fuzz.mjs [--cases N] [--seed S] [--only NAME]      (default 1000000 cases)
//
// Each target reports its progress on stderr every 30 s during a long run (cases done, and
// for the api target what it waits for), so a run that stops making progress says where.
import { spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
if (process.argv.includes('--help') || process.argv.includes('-h')) {
  console.log(`usage: node tools/fuzz.mjs [--cases N] [--seed S] [--only NAME]

Runs every fuzz target (test/unit/fuzz/*, test/unit/virtio/fuzz) with N cases each (default
1000000), prints each target's FUZZ line (cases, crashes, seed, time); progress on stderr.
  --cases N    cases per target (TSVMM_FUZZ_CASES)
  --seed S     one seed for every target (TSVMM_FUZZ_SEED; default: each target's own)
  --only NAME  only the targets whose file name contains NAME
It uses a CPU per target while it runs: on a shared machine, run it with nice -n 19.`);
  process.exit(0);
}
const arg = (name, def) => {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : def;
};
const cases = arg('--cases', '1000000');
const seed = arg('--seed', undefined);
const only = arg('--only', '');
const b = spawnSync(process.execPath, ['tools/build.mjs', '--tests=unit/'], { cwd: root, stdio: 'inherit' });
if (b.status !== 0) process.exit(1);
const targets = [
  ...readdirSync(join(root, 'dist/test/unit/fuzz')).filter((f) => f.endsWith('.test.js')).map((f) => join('dist/test/unit/fuzz', f)),
  'dist/test/unit/virtio/fuzz.test.js',
].filter((t) => t.includes(only));
let failed = 0;
const lines = [];
for (const t of targets) {
  const t0 = Date.now();
  const env = { ...process.env, TSVMM_FUZZ_CASES: cases, ...(seed === undefined ? {} : { TSVMM_FUZZ_SEED: seed }) };
  // stderr passes through: the targets' progress lines and any failure's details.
  const r = spawnSync(process.execPath, ['--enable-source-maps', t], { cwd: root, env, encoding: 'utf8', maxBuffer: 256 << 20, stdio: ['ignore', 'pipe', 'inherit'] });
  const found = `${r.stdout}`.split('\n').filter((l) => l.startsWith('FUZZ '));
  const ok = r.status === 0 && found.length > 0;
  if (!ok) failed++;
  lines.push(...found);
  console.log(`${ok ? 'ok  ' : 'FAIL'} ${t} (${((Date.now() - t0) / 1000).toFixed(0)} s)`);
  for (const l of found) console.log(`     ${l}`);
  if (!ok) console.log(`${r.stdout}`.split('\n').slice(-40).join('\n'));
}
console.log(`${lines.length} fuzz runs, ${failed} failed`);
process.exit(failed ? 1 : 0);
