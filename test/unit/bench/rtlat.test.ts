// The guest real-time task of the prio benchmark (guest/rtlat.c) run on this host: its
// cyclictest loop reports one line of percentiles, and a wake-up that comes far too late (the
// process stopped for 400 ms) is one late sample with the missed periods counted as overruns,
// not a backlog of targets already past that every later sample inherits — the fault that
// made the benchmark's first sandbox run report seconds of "latency" (docs/benchmarks.md).
// No KVM needed.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { projectRoot } from '../../../vmm/default-guest';
import { RtlatOutputError, lateBy, parseRtlat } from '../../../tools/bench/rtlat/output';

const scratch = mkdtempSync(join(tmpdir(), 'tsvmm-rtlat-test-'));
test.after(() => rmSync(scratch, { recursive: true, force: true }));
execFileSync('make', ['-s', '-C', join(projectRoot(), 'guest'), `BUILD=${scratch}`, `${scratch}/rtlat`], { stdio: ['ignore', 'ignore', 'inherit'] });
const rtlat = join(scratch, 'rtlat');

const LINE = /^latency_us n=(\d+) p50=(\d+) p99=(\d+) max=(\d+) overruns=(\d+)$/m;

test('measure: N samples, p50 <= p99 <= max, a done line', () => {
  const out = execFileSync(rtlat, ['measure:50:2000'], { encoding: 'utf8' });
  const m = LINE.exec(out);
  assert.ok(m, out);
  const [n, p50, p99, max] = m!.slice(1, 5).map(Number) as [number, number, number, number];
  assert.is(n, 50);
  assert.ok(p50 <= p99 && p99 <= max, out);
  assert.match(out, /^done measure:50:2000 tid \d+ cpu \d+$/m);
});

test('a wake-up 400 ms late is one late sample; the periods it missed are skipped and counted', async () => {
  // 300 wake-ups every 1 ms, stopped for 400 ms after ~50 ms: with a backlog, the ~400 periods
  // missed would each be sampled at once afterwards, hundreds of ms late, falling 1 ms a sample.
  const p = spawn(rtlat, ['-v', 'measure:300:1000'], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  p.stdout.on('data', (b: Buffer) => (out += b.toString()));
  await new Promise((r) => setTimeout(r, 50));
  p.kill('SIGSTOP');
  await new Promise((r) => setTimeout(r, 400));
  p.kill('SIGCONT');
  const code = await new Promise<number | null>((r) => p.on('exit', r));
  assert.is(code, 0, out);
  const samples = [...out.matchAll(/^sample (\d+)$/gm)].map((x) => Number(x[1]));
  assert.is(samples.length, 300);
  const late = samples.filter((us) => us >= 200_000);
  assert.is(late.length, 1, `one wake-up came after the stop, the next ones are on time again: ${late.join(' ')}`);
  const overruns = Number(LINE.exec(out)![5]);
  assert.ok(overruns >= 200, `the periods missed while stopped are counted: ${overruns}`);
});

test('the benchmark reads -v output: every sample, in order, its max the line\'s max', () => {
  const out = execFileSync(rtlat, ['-v', 'cpu:0', 'measure:40:2000'], { encoding: 'utf8' });
  const r = parseRtlat(out, true);
  assert.is(r.samples, 40);
  assert.is(r.latencies.length, 40);
  assert.is(Math.max(...r.latencies), r.max);
  assert.ok(r.latencies.every((us) => Number.isInteger(us) && us >= 0), out);
  assert.is(lateBy(r.latencies, 0), 40);
  assert.is(lateBy([5, 10_000, 9_999, 25_000], 10_000), 2);
});

test('the benchmark refuses output without the percentile line, or with samples missing', () => {
  const out = execFileSync(rtlat, ['-v', 'measure:20:2000'], { encoding: 'utf8' });
  assert.throws(() => parseRtlat(out.replace(/^latency_us.*$/m, ''), true), (e: unknown) => e instanceof RtlatOutputError && /no latency_us line/.test(e.message));
  const cut = out.split('\n').filter((l, i) => !(l.startsWith('sample ') && i === 3)).join('\n');
  assert.throws(() => parseRtlat(cut, true), (e: unknown) => e instanceof RtlatOutputError && /n=20 but printed 19/.test(e.message));
  const quiet = execFileSync(rtlat, ['measure:20:2000'], { encoding: 'utf8' });
  assert.is(parseRtlat(quiet, false).latencies.length, 0);
  assert.throws(() => parseRtlat(quiet, true), (e: unknown) => e instanceof RtlatOutputError && /n=20 but printed 0/.test(e.message));
});

test.run();
