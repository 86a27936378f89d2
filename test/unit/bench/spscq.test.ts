// The paper's guest workload (guest/spscq.c) run on this host: built with `make -C guest`, run
// for 1 s pinned to CPUs 0 and 1 and unpinned, its JSON line parsed; a build with
// -DSPSCQ_INJECT_BUG (drops item 1000) must be caught by its own checker. No KVM needed.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { needs } from '../../needs';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { projectRoot } from '../../../vmm/default-guest';

interface SpscqResult {
  mpps: number;
  items: number;
  seconds: number;
  pinned: boolean;
  producer_cpu: number | null;
  consumer_cpu: number | null;
  check: string;
  errors?: number;
  first_expected?: number;
  first_got?: number;
}

const root = projectRoot();
const scratch = mkdtempSync(join(tmpdir(), 'tsvmm-spscq-test-'));

function build(dir: string, cflags = ''): string {
  execFileSync('make', ['-s', '-C', join(root, 'guest'), `BUILD=${dir}`, `SPSCQ_CFLAGS=${cflags}`, `${dir}/spscq`], { stdio: ['ignore', 'ignore', 'inherit'] });
  return join(dir, 'spscq');
}

function run(bin: string, args: string[]): { code: number | null; result?: SpscqResult; err: string } {
  const r = spawnSync(bin, args, { encoding: 'utf8', timeout: 20_000 });
  const lines = r.stdout.trim().split('\n').filter(Boolean);
  assert.ok(lines.length <= 1, `spscq printed more than one line: ${r.stdout}`);
  return { code: r.status, result: lines.length ? (JSON.parse(lines[0]) as SpscqResult) : undefined, err: r.stderr };
}

const good = build(join(scratch, 'good'));

needs(availableParallelism() < 2 ? 'needs 2 CPUs to pin producer and consumer apart' : undefined)('pinned to CPUs 0 and 1 for 1 s: every item arrives, in order', () => {
  const r = run(good, ['-p', '0', '-c', '1', '-d', '1']);
  assert.is(r.code, 0, r.err);
  const j = r.result!;
  assert.is(j.check, 'ok');
  assert.is(j.pinned, true);
  assert.is(j.producer_cpu, 0);
  assert.is(j.consumer_cpu, 1);
  assert.ok(j.mpps > 0 && j.items > 0, `no throughput: ${JSON.stringify(j)}`);
  assert.ok(j.seconds >= 0.99 && j.seconds < 5, `ran ${j.seconds} s for -d 1`);
  // mpps is items / seconds, rounded to 3 decimals in the JSON.
  assert.ok(Math.abs(j.mpps - j.items / j.seconds / 1e6) < 0.01 * j.mpps + 0.002);
});

test('unpinned for 1 s', () => {
  const r = run(good, ['-u', '-d', '1']);
  assert.is(r.code, 0, r.err);
  const j = r.result!;
  assert.is(j.check, 'ok');
  assert.is(j.pinned, false);
  assert.is(j.producer_cpu, null);
  assert.is(j.consumer_cpu, null);
  assert.ok(j.mpps > 0 && j.items > 0);
});

test('a build that drops one item is caught by the checker (exit 1, check failed)', () => {
  const bad = build(join(scratch, 'bug'), '-DSPSCQ_INJECT_BUG');
  const r = run(bad, availableParallelism() < 2 ? ['-u', '-d', '0.3'] : ['-p', '0', '-c', '1', '-d', '0.3']);
  assert.is(r.code, 1);
  const j = r.result!;
  assert.is(j.check, 'failed');
  assert.is(j.errors, 1);
  assert.is(j.first_expected, 1000);
  assert.is(j.first_got, 1001);
});

test('usage errors exit 2 without a result line', () => {
  for (const args of [['-p', '0', '-c', '0'], ['-d', '0'], ['-s', '100'], ['-p', 'x'], ['extra']]) {
    const r = run(good, args);
    assert.is(r.code, 2, `spscq ${args.join(' ')}`);
    assert.is(r.result, undefined);
    assert.ok(r.err.length > 0);
  }
  // A CPU this host does not have: the pin fails, reported as a setup error, and it does not hang.
  const r = run(good, ['-p', '0', '-c', '1023', '-d', '0.2']);
  assert.is(r.code, 2);
  assert.match(r.err, /pthread_setaffinity_np to CPU 1023 failed/);
});

test.after(() => rmSync(scratch, { recursive: true, force: true }));
test.run();
