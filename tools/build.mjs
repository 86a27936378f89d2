// Bundles the CLI, the library (dist/index.js, what `import 'tsvmm'` loads) and every worker
// entry into dist/ with esbuild (koffi stays external: it loads a native module), and the
// library's type declarations into one file, dist/index.d.ts (dts-bundle-generator), when they
// are missing or older than a source (or with --types). Also links node_modules/.bin/tsvmm so
// `npm ci` leaves a runnable CLI in the project itself.
import { build } from 'esbuild';
import { existsSync, mkdirSync, readdirSync, statSync, symlinkSync, unlinkSync, lstatSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const common = {
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node20',
  external: ['koffi'],
  sourcemap: 'linked',
  logLevel: 'warning',
  // ESM bundles that pull CommonJS need a require() of their own.
  banner: { js: "import { createRequire as __tsvmmCreateRequire } from 'node:module'; const require = __tsvmmCreateRequire(import.meta.url);" },
};

/** Entry points: the CLI plus every worker script (a worker is its own bundle). */
const entries = { tsvmm: 'vmm/cli.ts', index: 'vmm/lib/index.ts' };
for (const [name, src] of [['vcpu-worker', 'vmm/vcpu/worker.ts'], ['blk-worker', 'devices/virtio/block/worker.ts'], ['api-worker', 'vmm/api/worker.ts']]) {
  if (existsSync(join(root, src))) entries[name] = src;
}

/** Newest mtime of the TypeScript sources the library is built from. */
function newestSource(dir = root, rel = '') {
  let newest = 0;
  for (const e of readdirSync(join(dir, rel), { withFileTypes: true })) {
    const r = join(rel, e.name);
    if (e.isDirectory()) {
      if (rel === '' && !['lib', 'kvm', 'vmm', 'devices', 'bpf'].includes(e.name)) continue;
      newest = Math.max(newest, newestSource(dir, r));
    } else if (e.name.endsWith('.ts')) newest = Math.max(newest, statSync(join(dir, r)).mtimeMs);
  }
  return newest;
}

/** dist/index.d.ts: the library's API with every type it names, in one self-contained file. */
async function declarations() {
  const out = join(root, 'dist/index.d.ts');
  const force = process.argv.includes('--types');
  if (!force && existsSync(out) && statSync(out).mtimeMs >= newestSource()) return;
  const bin = join(root, 'node_modules/.bin/dts-bundle-generator');
  if (!existsSync(bin)) {
    console.error('build: dts-bundle-generator is missing (npm ci installs it); dist/index.d.ts not written');
    process.exit(1);
  }
  const r = spawnSync(bin, ['--silent', '--no-check', '--export-referenced-types=false', '-o', out, join(root, 'vmm/lib/index.ts')], { cwd: root, stdio: 'inherit' });
  if (r.status !== 0) process.exit(1);
}

function findTests(dir, out = []) {
  if (!existsSync(dir)) return out;
  for (const e of readdirSync(dir)) {
    const p = join(dir, e);
    if (statSync(p).isDirectory()) findTests(p, out);
    else if (e.endsWith('.test.ts')) out.push(p);
  }
  return out;
}

// --tests builds every test/**/*.test.ts into dist/test; --tests=SUBSTR only the matching ones.
const testArg = process.argv.find((a) => a === '--tests' || a.startsWith('--tests='));
const withTests = testArg !== undefined;
const testFilter = testArg?.includes('=') ? testArg.slice(testArg.indexOf('=') + 1) : '';
await build({ ...common, absWorkingDir: root, entryPoints: entries, outdir: join(root, 'dist') });
await declarations();
// Benchmarks written in TypeScript drive the VMM in-process: dist/bench/NAME.js.
const benches = existsSync(join(root, 'tools/bench'))
  ? readdirSync(join(root, 'tools/bench')).filter((f) => f.endsWith('.ts')).map((f) => [f.replace(/\.ts$/, ''), join('tools/bench', f)])
  : [];
if (benches.length) await build({ ...common, absWorkingDir: root, entryPoints: Object.fromEntries(benches), outdir: join(root, 'dist/bench') });
if (withTests) {
  const tests = findTests(join(root, 'test')).filter((t) => t.includes(testFilter));
  const testEntries = Object.fromEntries(tests.map((t) => [relative(join(root, 'test'), t).replace(/\.ts$/, ''), t]));
  // uvu stays external: the test runner's preload (tools/test-hooks.mjs) must patch the same instance.
  await build({ ...common, external: [...common.external, 'uvu', 'uvu/assert'], absWorkingDir: root, entryPoints: testEntries, outdir: join(root, 'dist/test') });
}

// node_modules/.bin/tsvmm -> ../../bin/tsvmm.js (npm does not link a root package's own bin).
const binDir = join(root, 'node_modules/.bin');
if (existsSync(join(root, 'node_modules'))) {
  mkdirSync(binDir, { recursive: true });
  const link = join(binDir, 'tsvmm');
  try { lstatSync(link); unlinkSync(link); } catch {}
  symlinkSync('../../bin/tsvmm.js', link);
}
