// The fuzz targets with a long budget (docs/security.md, "Fuzzing"): builds the unit tests,
// runs every target in test/unit/fuzz (and the virtqueue fuzz) with TSVMM_FUZZ_CASES, and
// prints each target's FUZZ line (cases, crashes, seed, time). CI runs the same targets with
// their short budgets as ordinary unit tests.
//
//   node tools/fuzz.mjs [--cases N] [--seed S] [--only NAME]      (default 1000000 cases)
import { spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
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
  const r = spawnSync(process.execPath, ['--enable-source-maps', t], { cwd: root, env, encoding: 'utf8', maxBuffer: 256 << 20 });
  const found = `${r.stdout}${r.stderr}`.split('\n').filter((l) => l.startsWith('FUZZ '));
  const ok = r.status === 0 && found.length > 0;
  if (!ok) failed++;
  lines.push(...found);
  console.log(`${ok ? 'ok  ' : 'FAIL'} ${t} (${((Date.now() - t0) / 1000).toFixed(0)} s)`);
  for (const l of found) console.log(`     ${l}`);
  if (!ok) console.log(`${r.stdout}${r.stderr}`.split('\n').slice(-40).join('\n'));
}
console.log(`${lines.length} fuzz runs, ${failed} failed`);
process.exit(failed ? 1 : 0);
