// The test command (`npm test`): type check, build, unit tests, then integration tests against
// real KVM — directly where the host has hardware KVM, otherwise inside the nested sandbox
// (tools/sandbox/run.sh, QEMU software emulation: slow). Owns how tests are run and counted;
// the tests themselves and the sandbox's mechanics are not its business.
//
//   node tools/test.mjs [--unit] [--integration] [--filter SUBSTR] [PATH.test.ts ...]
//   npm test -- test/unit/boot/elf.test.ts        (only the named files; no type check)
//
// Counting: every file runs in its own process, and its tests are counted as uvu reports them:
// passed from its summary, one failure per `FAIL "name"` block, skips from its summary, each with
// the reason test/needs.ts printed. A file whose counts do not add up (a test.before hook threw,
// the process crashed or timed out) is a failure. The last line is `N passed, N failed, N skipped`;
// the exit status is non-zero when anything failed, and under CI=true also when anything was
// skipped (CI has every prerequisite: tools/setup.sh installs it or the sandbox provides it).
//
// Integration files on a host without hardware KVM run in shared sandboxes, grouped by the
// sandbox options their source asks for (a `// runs: sandbox --smp 4` line; `// runs: host`
// keeps a file on this side). Results come back per file through the sandbox's output
// directory, so a sandbox that dies loses only the file it was running: that file is rerun
// once, in a fresh sandbox, with the files not yet run — unless it had already reported a
// failed test. A failed test is never rerun. docs/testing.md has the reasoning and numbers.
//
// Inside the sandbox it runs as `--inside --results DIR FILE...`.
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { FILE_TIMEOUT_S, parseReport, runFile } from './test-report.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const env = { ...process.env, FORCE_COLOR: '0', NODE_DISABLE_COLORS: '1' };
/** Sandbox deaths tolerated in one run before the remaining files are failed outright. */
const MAX_SANDBOX_DEATHS = 3;

function parseArgs(argv) {
  const o = { unit: false, integration: false, filter: '', inside: false, results: '', paths: [] };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--unit') o.unit = true;
    else if (a === '--integration') o.integration = true;
    else if (a === '--inside') o.inside = true;
    else if (a === '--filter' || a === '--results') {
      if (argv[i + 1] === undefined) usage(`${a} needs a value`);
      o[a.slice(2)] = argv[++i];
    } else if (a.startsWith('-')) usage(`unknown option ${a}`);
    else o.paths.push(a);
  }
  if (!o.unit && !o.integration) o.unit = o.integration = true;
  return o;
}

function usage(msg) {
  console.error(`test: ${msg}\nusage: node tools/test.mjs [--unit] [--integration] [--filter SUBSTR] [test/.../NAME.test.ts ...]`);
  process.exit(2);
}

// ---------------------------------------------------------------------------------------------
// Test files: the .ts source under test/ is what users name; dist/ holds the bundle that runs.

/** A test file: `src` as in the tree, `dist` the bundle, `name` as printed (unit/boot/elf.test). */
function testFile(src) {
  const rel = relative(root, resolve(root, src));
  const m = /^test\/(unit|integration)\/(.+)\.test\.ts$/.exec(rel);
  if (!m) usage(`${src}: not a test file (test/unit/**/NAME.test.ts or test/integration/**/NAME.test.ts)`);
  if (!existsSync(join(root, rel))) usage(`${src}: no such file`);
  return { src: rel, dist: join(root, 'dist', rel.replace(/\.ts$/, '.js')), name: `${m[1]}/${m[2]}.test`, kind: m[1] };
}

function findTests(dir) {
  const out = [];
  if (!existsSync(join(root, dir))) return out;
  for (const e of readdirSync(join(root, dir)).sort()) {
    const p = join(dir, e);
    if (statSync(join(root, p)).isDirectory()) out.push(...findTests(p));
    else if (e.endsWith('.test.ts')) out.push(p);
  }
  return out;
}

/** Why an integration file is a stress test (its `// stress: WHY` line), or undefined. */
function stressReason(file) {
  return /^\/\/ stress: (.+)$/m.exec(readFileSync(join(root, file.src), 'utf8'))?.[1];
}

/** Where an integration file runs: `host`, or `sandbox` with run.sh options (its `// runs:` line). */
function placement(file) {
  const m = /^\/\/ runs: (host|sandbox)((?: --(?:smp|mem) \S+)*)\s*$/m.exec(readFileSync(join(root, file.src), 'utf8'));
  return m ? { where: m[1], options: m[2].trim().split(/\s+/).filter(Boolean) } : { where: 'sandbox', options: [] };
}

function printResult(r) {
  const counts = [`${r.passed} passed`, r.failed ? `${r.failed} failed` : '', r.skipped ? `${r.skipped} skipped` : ''].filter(Boolean).join(', ');
  console.log(`${r.failed ? 'FAIL' : 'ok  '} ${r.name}: ${counts} (${r.seconds.toFixed(1)} s)${r.problem ? `: ${r.problem}` : ''}`);
  if (r.failed) process.stdout.write(r.output.split('\n').map((l) => `    ${l}`).join('\n') + '\n');
}

// ---------------------------------------------------------------------------------------------
// Inside the sandbox: run the files named, one result file each, then `done`.

async function inside(o) {
  if (!o.results) usage('--inside needs --results DIR');
  mkdirSync(o.results, { recursive: true });
  for (const src of o.paths) {
    const file = testFile(src);
    const key = file.name.replaceAll('/', '__');
    const r = await runFile(file, { logPath: join(o.results, `${key}.log`) });
    printResult(r);
    delete r.output;
    writeFileSync(join(o.results, `${key}.json`), JSON.stringify(r));
  }
  writeFileSync(join(o.results, 'done'), '');
}

// ---------------------------------------------------------------------------------------------
// The host side.

const results = [];
const reruns = [];
let sandboxes = 0;
let deaths = 0;

function record(r, print = true) {
  if (print) printResult(r);
  results.push(r);
}

function failWhole(name, problem, output = '') {
  record({ file: name, name, passed: 0, failed: 1, skipped: 0, failures: [], skips: [], problem, seconds: 0, output });
}

function hardwareKvm() {
  return existsSync('/dev/kvm') && (existsSync('/sys/module/kvm_intel') || existsSync('/sys/module/kvm_amd'));
}

/** Runs run.sh with stderr passed through; the last reason it gave for a dead sandbox. */
function runSandbox(args) {
  return new Promise((resolveRun) => {
    const child = spawn('bash', [join(root, 'tools/sandbox/run.sh'), ...args], { cwd: root, env, stdio: ['ignore', 'inherit', 'pipe'] });
    let why = '';
    let buf = '';
    child.stderr.on('data', (b) => {
      process.stderr.write(b);
      buf += b;
      for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        const m = /^sandbox: (?:sandbox attempt \d+ died|sandbox failed): (.*)$/.exec(line);
        if (m) why = m[1];
      }
    });
    child.on('close', (code) => resolveRun({ code, why }));
  });
}

/**
 * Runs a group of integration files in sandboxes with the same options, until each has a
 * result: a sandbox that dies is replaced, and only the file it was running is rerun (once).
 */
async function runGroup(options, files) {
  let pending = files;
  const rerun = new Set();
  let diedEmpty = false;
  while (pending.length) {
    const out = mkdtempSync(join(tmpdir(), 'tsvmm-test-'));
    try {
      const timeout = FILE_TIMEOUT_S * pending.length + 300;
      sandboxes++;
      const { code, why } = await runSandbox(['--attempts', '1', '--timeout', String(timeout), ...options, '--out', out, '--',
        process.execPath, 'tools/test.mjs', '--inside', '--results', join(out, 'results'), ...pending.map((f) => f.src)]);
      const dir = join(out, 'results');
      const got = (f, ext) => join(dir, `${f.name.replaceAll('/', '__')}.${ext}`);
      const finished = pending.filter((f) => existsSync(got(f, 'json')));
      for (const f of finished) record(JSON.parse(readFileSync(got(f, 'json'), 'utf8')), false);
      if (existsSync(join(dir, 'done'))) {
        for (const f of pending.filter((f) => !finished.includes(f))) failWhole(f.name, 'the sandbox finished without its result');
        return;
      }
      deaths++;
      let reason = why || `run.sh exit status ${code}, no results`;
      const running = pending.find((f) => !finished.includes(f) && existsSync(got(f, 'log')));
      // The test it was in (tools/test-hooks.mjs), when one had started.
      const inTest = running && existsSync(`${got(running, 'log')}.current`) ? readFileSync(`${got(running, 'log')}.current`, 'utf8') : '';
      if (inTest) reason += `, during test ${JSON.stringify(inTest)}`;
      let rest = pending.filter((f) => !finished.includes(f));
      if (running) {
        const partial = readFileSync(got(running, 'log'), 'utf8');
        const report = parseReport(partial, { code: null, signal: null });
        if (/✘ /.test(partial)) {
          // It had already reported a failed test: that stands; a rerun could only hide it.
          record({ file: running.src, name: running.name, ...report, problem: `its sandbox died (${reason}) after it had reported a failure`, seconds: 0, output: partial });
          rest = rest.filter((f) => f !== running);
        } else if (rerun.has(running)) {
          record({ file: running.src, name: running.name, ...report, problem: `its sandbox died twice while it ran (${reason})`, seconds: 0, output: partial });
          rest = rest.filter((f) => f !== running);
        } else {
          rerun.add(running);
          reruns.push(`${running.name}: its sandbox died (${reason})`);
          console.log(`sandbox died while running ${running.name} (${reason}): rerunning it once in a fresh sandbox${rest.length > 1 ? `, with the ${rest.length - 1} file(s) not yet run` : ''}; what it printed:`);
          process.stdout.write(partial.split('\n').map((l) => `    ${l}`).join('\n') + '\n');
        }
      } else if (diedEmpty) {
        for (const f of rest) failWhole(f.name, `the sandbox died twice before running any file (${reason})`);
        return;
      } else {
        diedEmpty = true;
        reruns.push(`a sandbox for ${rest.map((f) => f.name).join(', ')} died before running any file (${reason})`);
        console.log(`the sandbox died before running any file (${reason}): starting a fresh one`);
      }
      if (deaths >= MAX_SANDBOX_DEATHS && rest.length) {
        for (const f of rest) failWhole(f.name, `not run: ${deaths} sandboxes died in this run, the sandbox is broken here (last: ${reason})`);
        return;
      }
      pending = rest;
    } finally {
      rmSync(out, { recursive: true, force: true });
    }
  }
}

async function hostSide(o) {
  const named = o.paths.map(testFile);
  const wanted = (kind) => (named.length ? named.filter((f) => f.kind === kind) : (kind === 'unit' ? o.unit : o.integration) ? findTests(`test/${kind}`).map(testFile) : [])
    .filter((f) => f.src.includes(o.filter));
  const unit = wanted('unit');
  // Stress files (a `// stress: WHY` line) run only when named: what they load is more than the
  // nested sandbox's own kernel survives (docs/testing.md), so the whole suite leaves them out
  // and says so; on a host with hardware KVM, name them.
  const all = wanted('integration');
  const stress = named.length ? [] : all.filter((f) => stressReason(f));
  const integration = all.filter((f) => !stress.includes(f));
  for (const f of stress) console.log(`not in this run: ${f.name} (stress: ${stressReason(f)}; run it by name: npm test -- ${f.src})`);
  if (!unit.length && !integration.length) usage(`no test file matches${o.filter ? ` --filter ${o.filter}` : ''}`);

  if (!named.length) {
    const t0 = Date.now();
    const tc = spawnSync(join(root, 'node_modules/.bin/tsc'), ['--noEmit', '-p', '.'], { cwd: root, env, encoding: 'utf8' });
    const ok = tc.status === 0;
    record({ file: 'tsconfig.json', name: 'typecheck (tsc --noEmit, strict)', passed: ok ? 1 : 0, failed: ok ? 0 : 1, skipped: 0, failures: [], skips: [], problem: undefined, seconds: (Date.now() - t0) / 1000, output: `${tc.stdout}${tc.stderr}` });
  }
  const b = spawnSync(process.execPath, ['tools/build.mjs', '--tests'], { cwd: root, env, stdio: 'inherit' });
  if (b.status !== 0) {
    failWhole('build', 'tools/build.mjs --tests failed (see above)');
    return;
  }
  if (unit.length) {
    // The boot tests read the default kernel: fetch it (cached after the first time) before them.
    const k = spawnSync('sh', ['tools/guest/fetch-kernel.sh'], { cwd: root, env, encoding: 'utf8' });
    if (k.status !== 0) console.log(`test: could not fetch the default kernel, the tests that read it will skip:\n${k.stderr}`);
    for (const f of unit) record(await runFile(f));
  }
  if (!integration.length) return;
  const placed = integration.map((f) => ({ f, p: placement(f) }));
  if (hardwareKvm()) {
    for (const { f } of placed) record(await runFile(f));
    return;
  }
  for (const { f } of placed.filter((x) => x.p.where === 'host')) record(await runFile(f));
  const groups = new Map();
  for (const { f, p } of placed.filter((x) => x.p.where === 'sandbox')) {
    const key = p.options.join(' ');
    groups.set(key, [...(groups.get(key) ?? []), f]);
  }
  if (groups.size) console.log('no hardware KVM here: running the integration tests inside the nested sandbox (QEMU software emulation; slow)');
  for (const [key, files] of groups) {
    console.log(`sandbox${key ? ` ${key}` : ''}: ${files.map((f) => f.name).join(', ')}`);
    await runGroup(key ? key.split(' ') : [], files);
  }
}

function summary() {
  const sum = (k) => results.reduce((n, r) => n + r[k], 0);
  const passed = sum('passed');
  const failed = sum('failed');
  const skipped = sum('skipped');
  console.log('');
  for (const r of results) {
    const byReason = new Map();
    for (const s of r.skips) byReason.set(s.reason, (byReason.get(s.reason) ?? 0) + 1);
    for (const [reason, n] of byReason) console.log(`skipped ${n} in ${r.name}: ${reason}`);
  }
  for (const r of results.filter((x) => x.failed)) {
    const what = [...r.failures.map((n) => JSON.stringify(n)), r.problem].filter(Boolean).join('; ');
    console.log(`failed: ${r.name}${what ? ` (${what})` : ''}`);
  }
  if (sandboxes) console.log(`sandboxes: ${sandboxes} booted, ${deaths} died, ${reruns.length} rerun(s)${reruns.map((x) => `\n  rerun: ${x}`).join('')}`);
  const ciSkips = process.env.CI === 'true' && skipped > 0;
  if (ciSkips) console.log(`CI=true: ${skipped} skipped test(s) fail this run (tools/setup.sh installs every prerequisite and the sandbox provides the rest)`);
  console.log(`${passed} passed, ${failed} failed, ${skipped} skipped`);
  return failed > 0 || ciSkips ? 1 : 0;
}

const opts = parseArgs(process.argv.slice(2));
if (opts.inside) {
  await inside(opts);
} else {
  await hostSide(opts);
  process.exitCode = summary();
}
