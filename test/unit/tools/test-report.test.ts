// The test runner's per-file counting (tools/test-report.mjs) on real uvu files: the fixtures in
// fixtures/runner/ are bundled here the way tools/build.mjs bundles tests (uvu external) and run
// through runFile, with tools/test-hooks.mjs preloaded as in `npm test`.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { projectRoot } from '../../../vmm/default-guest';
import { runFile } from '../../../tools/test-report.mjs';

const root = projectRoot();
// Inside the project, so that the bundles find uvu in its node_modules.
const out = mkdtempSync(join(root, 'dist', 'runner-fixtures-'));

function fixture(name: string) {
  const src = join(root, 'test/unit/tools/fixtures/runner', `${name}.ts`);
  const dist = join(out, `${name}.js`);
  execFileSync(join(root, 'node_modules/.bin/esbuild'), [src, '--bundle', '--platform=node', '--format=esm', '--external:uvu', '--external:uvu/assert', '--log-level=warning', `--outfile=${dist}`]);
  return { src, dist, name: `fixture/${name}` };
}

test.after(() => rmSync(out, { recursive: true, force: true }));

test('passes, failures by name, and skips with their reasons, as uvu reported them', async () => {
  const r = await runFile(fixture('counts'));
  assert.is(r.passed, 2);
  assert.is(r.failed, 1);
  assert.equal(r.failures, ['fails']);
  assert.is(r.skipped, 2);
  assert.equal(r.skips, [
    { name: 'skipped with a reason', reason: 'the fixture says so' },
    { name: '(unnamed)', reason: 'test.skip without a reason (use test/needs.ts)' },
  ]);
  assert.is(r.problem, undefined);
});

test('a test.before hook that throws: its error is shown and the tests that never ran fail', async () => {
  const r = await runFile(fixture('hook'));
  assert.is(r.passed, 0);
  assert.is(r.failed, 2);
  assert.match(r.problem!, /^2 test\(s\) never ran: test\.before: Error: boom in before/);
});

test('a file that exits mid-test: the passes so far, and the crash as a failure', async () => {
  const r = await runFile(fixture('crash'));
  assert.is(r.passed, 1);
  assert.is(r.failed, 1);
  assert.is(r.problem, 'crashed (exit status 3) before uvu\'s summary during test "exits"');
});

test('a file that leaves a process running fails, and the process is killed', async () => {
  const r = await runFile(fixture('leak'));
  assert.is(r.passed, 1);
  assert.is(r.failed, 1);
  const m = /left 1 process\(es\) running after it ended \(killed\): (\d+) sleep/.exec(r.problem ?? '');
  assert.ok(m, r.problem);
  const alive = () => {
    try {
      const stat = readFileSync(`/proc/${m![1]}/stat`, 'utf8');
      return stat.slice(stat.lastIndexOf(')') + 2)[0] !== 'Z';
    } catch {
      return false;
    }
  };
  for (let i = 0; i < 100 && alive(); i++) await new Promise((res) => setTimeout(res, 50));
  assert.not.ok(alive(), 'the sleep was killed');
});

test('a file that hangs is killed at its time limit and fails', async () => {
  const r = await runFile(fixture('hang'), { timeoutS: 3 });
  assert.is(r.passed, 1);
  assert.is(r.failed, 1);
  assert.is(r.problem, 'timed out after 3 s during test "hangs"');
});

test('with a log file, the running test\'s name is kept beside it (what the host reads when a sandbox dies)', async () => {
  const logPath = join(out, 'hang.log');
  const r = await runFile(fixture('hang'), { timeoutS: 2, logPath });
  assert.is(r.problem, 'timed out after 2 s during test "hangs"');
  assert.is(readFileSync(`${logPath}.current`, 'utf8'), 'hangs');
  assert.match(readFileSync(logPath, 'utf8'), '• ');
});

test.run();
