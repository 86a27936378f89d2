// The benchmark report's pipeline (tools/bench/report.mjs --short) against real peers on the
// stock kernel: QEMU microvm for boot and vsock (vhost-vsock), the C twin for the exit loop,
// and the hint path. Every benchmark must run and give tsvmm's value and, where a peer is
// measured, a ratio (references give none); report.json, report.md and both charts must parse.
// No speed is asserted. The guest real-time latency (prio), virtio-blk, virtio-fs and serial
// benchmarks are left out with --skip: each boots two or more guests (~1 min apiece here) and adds
// nothing to the pipeline a unit test does not check (test/unit/bench/report-render.test.ts
// renders their rows and goals from their JSON); run them with tools/bench/run.sh NAME.

import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ROOT } from './helpers';
import type { Metric, ReportRecord } from '../../tools/bench/report-render.mjs';

/** What report.json says of each benchmark, each failed one's log tail first: the report's own
 *  stdout is long enough that a CI log's excerpt would cut the one line that matters. */
function failedBenches(dir: string): string {
  let record: ReportRecord;
  try { record = JSON.parse(readFileSync(join(dir, 'report.json'), 'utf8')) as ReportRecord; } catch { return 'no report.json'; }
  const lines: string[] = [];
  for (const [b, r] of Object.entries(record.benches)) {
    if (r.status === 'ok') continue;
    let log = '';
    try { log = readFileSync(join(dir, `${b}.log`), 'utf8').trimEnd().split('\n').slice(-40).join('\n'); } catch { /* none */ }
    lines.push(`${b}: ${r.status} (${r.error})\n${log}`);
  }
  lines.push(`benchmarks: ${Object.entries(record.benches).map(([b, r]) => `${b} ${r.status}`).join(', ')}`);
  return lines.join('\n');
}

test('report --short: boot, vsock, exits and hints against their peers, one report', () => {
  const dir = mkdtempSync(join(tmpdir(), 'tsvmm-report-'));
  try {
    const r = spawnSync(process.execPath, [join(ROOT, 'tools/bench/report.mjs'), '--short', '--skip', 'prio,blk,virtiofs,serial', '--out', dir], { cwd: ROOT, encoding: 'utf8', timeout: 840_000 });
    assert.is(r.status, 0, `${failedBenches(dir)}\n${r.stderr.slice(-6000)}`);
    const record = JSON.parse(readFileSync(join(dir, 'report.json'), 'utf8')) as ReportRecord & { metrics: Metric[] };
    for (const b of ['boot', 'vsock', 'exits', 'hints']) assert.is(record.benches[b]?.status, 'ok', b);
    for (const b of ['prio', 'blk', 'virtiofs', 'serial']) assert.is(record.benches[b], undefined, `--skip ${b}`);
    assert.ok(record.machine?.hardwareKvm, 'the machine the VMMs ran on is recorded');
    const byBench = (b: string) => record.metrics.filter((m) => m.bench === b);
    for (const b of ['boot', 'vsock', 'exits']) {
      assert.ok(byBench(b).length > 0, b);
      // A measured peer gives a ratio (the forwarded exits' peer is the C twin forwarding too).
      for (const m of byBench(b)) assert.ok(m.tsvmm!.median > 0 && m.peer!.median > 0 && (m.reference ? m.relative === null : m.relative! > 0), JSON.stringify(m));
    }
    const hints = byBench('hints');
    assert.ok(hints.every((m) => m.tsvmm && Number.isFinite(m.tsvmm.median) && m.relative === null), JSON.stringify(hints));
    // Per-sample latency: every sample was matched to its own host pin.
    const latency = hints.find((m) => m.metric.startsWith('guest setaffinity return → host setaffinity return, p50'))!;
    assert.is(latency.tsvmm!.n, record.config.samples as number, JSON.stringify(latency));
    const md = readFileSync(join(dir, 'report.md'), 'utf8');
    assert.match(md, /\| boot \| boot to init ready \(s\) \| [\d.]+ \| QEMU microvm \| [\d.]+ \| [\d.]+× \|/);
    assert.match(md, /\| vsock \| guest→host stream \(MiB\/s\) \| [\d.]+ \| QEMU vhost-vsock \|/);
    for (const c of ['relative', 'values']) {
      assert.match(readFileSync(join(dir, `${c}.svg`), 'utf8'), /^<svg/);
      assert.equal([...readFileSync(join(dir, `${c}.png`)).subarray(0, 4)], [0x89, 0x50, 0x4e, 0x47]);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test.run();
