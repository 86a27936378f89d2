// The benchmark report's content (tools/bench/report-render.mjs): metrics taken from each
// benchmark's JSON as the benchmarks write it, the orientation of the relative column, the
// Markdown, and (with the chart libraries) real SVG + PNG charts.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { missingPackages, needs } from '../../needs';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { goals, markdown, metricsOf, renderCharts, reportMetrics, type ReportRecord } from '../../../tools/bench/report-render.mjs';

const spread = (median: number, min = median, max = median, n = 3) => ({ n, min, median, max });
const boot = { summary: { tsvmm: { readyMs: spread(2000, 1800, 2600), rssMiB: spread(180) }, qemu: { readyMs: spread(1000, 900, 1200), rssMiB: spread(170) } } };
const vsock = { summary: { tsvmm: { h2gMibS: spread(300), g2hMibS: spread(100), echoMibS: spread(30) }, qemu: { h2gMibS: spread(600), g2hMibS: spread(50), echoMibS: spread(40) } } };
const exits = { summary: { c: { exitsPerSec: spread(20000) }, local: { exitsPerSec: spread(15000, 14000, 16000) }, 'c-forwarded': { exitsPerSec: spread(4000) }, forwarded: { exitsPerSec: spread(1000) } } };
const blk = { summary: { tsvmm: { 'read-4k': spread(0.8), 'read-1m': spread(40), 'write-4k': spread(0.5), 'write-1m': spread(30) }, qemu: { 'read-4k': spread(1), 'read-1m': spread(40), 'write-4k': spread(1), 'write-1m': spread(60) } } };
const virtiofs = { summary: { tsvmm: { readMs: spread(1800), statMs: spread(800) }, qemu: { readMs: spread(2000), statMs: spread(700) } } };
const hints = { latencyMs: { n: 20, p50: 5, p95: 9, min: 3, max: 11 }, flood: { exitsPerHint: 0.5, recordsPerSecond: 1234 } };
// As dist/bench/prio.js writes it: every run (µs, measured in the guest), modes alternating.
const prioRun = (mode: string, run: number, p50: number, p99: number, vcpuClass: string) => ({
  mode, run, p50, p99, max: p99 * 3, samples: 1000, overruns: mode === 'none' ? 40 : 2, vcpuClass,
  host: { cpuMs: 900, runDelayMs: mode === 'none' ? 9000 : 1000, slices: 1100, voluntary: 1000, involuntary: 100 },
});
const prio = {
  options: { runs: 2, samples: 1000, interval: 1000 },
  runs: [prioRun('none', 0, 100, 4000, 'other'), prioRun('hinted', 0, 80, 1000, 'fifo 10'), prioRun('none', 1, 120, 6000, 'other'), prioRun('hinted', 1, 60, 2000, 'fifo 10')],
};

function record(over: Partial<ReportRecord['benches']> = {}): ReportRecord {
  const ok = (result: unknown) => ({ command: ['node', 'x'], status: 'ok', error: null, seconds: 10, result });
  return {
    started: '2026-11-30T00:00:00Z', finished: '2026-11-30T01:00:00Z', config: { short: false },
    machine: { cpu: 'AMD EPYC', cpus: 2, cores: 2, memoryGiB: 4, os: 'Debian', kernel: '6.1', kvm: 'kvm_amd', hardwareKvm: true, nestedSandbox: true, node: 'v20', loadavg: [1, 1, 1], qemu: 'QEMU 7.2' },
    host: { cpu: 'Host CPU', cpus: 2, cores: 2, memoryGiB: 24, os: 'Debian', kernel: '6.18', kvm: 'kvm_pvm', hardwareKvm: false, nestedSandbox: false, node: 'v20', loadavg: [3, 3, 3] },
    benches: { boot: ok(boot), vsock: ok(vsock), blk: ok(blk), virtiofs: ok(virtiofs), exits: ok(exits), hints: ok(hints), prio: ok(prio), ...over },
  };
}

test('relative performance: 1 is parity, above 1 tsvmm better, for times and for rates', () => {
  const [b] = metricsOf('boot', boot);
  assert.is(b!.unit, 's');
  assert.equal(b!.tsvmm, spread(2, 1.8, 2.6));
  assert.is(b!.relative, 0.5);                                   // twice QEMU's boot time
  const [h2g, g2h, echo] = metricsOf('vsock', vsock);
  assert.is(h2g!.relative, 0.5);
  assert.is(g2h!.relative, 2);
  assert.is(echo!.relative, 0.75);
  assert.match(echo!.metric, /concurrent echo/);
  // A JSON from before the echo row: the two streams, no empty echo row.
  assert.equal(metricsOf('vsock', { summary: { tsvmm: { h2gMibS: spread(3), g2hMibS: spread(2) } } }).map((m) => m.metric), ['host→guest stream', 'guest→host stream']);
  const [local, forwarded] = metricsOf('exits', exits);
  assert.is(local!.relative, 0.75);
  assert.is(forwarded!.relative, 0.25);                          // against the twin that forwards too
  assert.match(forwarded!.peerName!, /C twin forwarding to a 2nd thread/);
  const [fsRead, fsStat] = metricsOf('virtiofs', virtiofs);
  assert.is(fsRead!.relative, 2000 / 1800);                      // times: peer/tsvmm
  assert.is(fsStat!.relative, 700 / 800);
  assert.equal(metricsOf('blk', blk).map((m) => m.relative), [0.8, 1, 0.5, 0.5]);
  const [lat, p95, perHint] = metricsOf('hints', hints);
  assert.is(lat!.reference, true);                               // the prototype's polling is not measured
  assert.is(lat!.relative, null);                                // and never a ratio
  assert.equal(lat!.tsvmm, { median: 5, min: 3, max: 11, n: 20 });
  assert.is(p95!.tsvmm!.median, 9);
  assert.is(perHint!.peer, null);
  assert.is(perHint!.relative, null);
});

test('prio: hinted against none per percentile, medians over the runs; the goal is hinted/none p99 < 1', () => {
  const [p50, p99] = metricsOf('prio', prio);
  assert.is(p50!.unit, 'µs');
  assert.equal(p50!.tsvmm, { n: 2, min: 60, median: 70, max: 80 });    // --prio hinted
  assert.equal(p50!.peer, { n: 2, min: 100, median: 110, max: 120 });  // --prio none
  assert.match(p99!.metric, /p99, --prio hinted/);
  assert.match(p99!.peerName!, /--prio none/);
  assert.is(p99!.relative, 5000 / 1500);                                // none/hinted: above 1, hinted better
  const [, , waited, overruns] = metricsOf('prio', prio);
  assert.match(waited!.metric, /vCPU 1 thread runnable without a CPU, per guest wake-up/);
  assert.equal([waited!.tsvmm!.median, waited!.peer!.median, waited!.relative], [1, 9, null]); // ms; a diagnosis, no ratio
  assert.equal([overruns!.tsvmm!.median, overruns!.peer!.median, overruns!.relative], [2, 40, null]);
  const [g] = goals(record()).filter((x) => x.bench === 'prio');
  assert.is(g!.value, 1500 / 5000);
  assert.is(g!.met, true);
  assert.match(g!.note, /fifo 10 \(hinted\), other \(none\)/);
  // Hinted no better: the goal is not met, and says so.
  const worse = { runs: prio.runs.map((r) => (r.mode === 'hinted' ? { ...r, p99: 7000 } : r)) };
  const [bad] = goals(record({ prio: { command: ['node', 'dist/bench/prio.js'], status: 'ok', error: null, seconds: 1, result: worse } })).filter((x) => x.bench === 'prio');
  assert.is(bad!.met, false);
  assert.is(bad!.value, 7000 / 5000);
  assert.equal(goals(record({ prio: undefined as never })).filter((x) => x.bench === 'prio'), []);
  assert.equal(metricsOf('prio', { runs: [] }), []);
});

test('goals: each in the terms of its issue, met or not, beside the ratio', () => {
  const byGoal = new Map(goals(record()).map((g) => [g.goal, g]));
  const boot = byGoal.get('boot to init ready: tsvmm/QEMU time ≤ 0.7 (issue 16)')!;
  assert.equal([boot.value, boot.met], [2, false]);               // tsvmm's time over QEMU's
  const rss = byGoal.get('VMM RSS at init ready: tsvmm − QEMU ≤ 20 MiB (issue 16)')!;
  assert.equal([rss.value, rss.met], [10, true]);
  const fs = byGoal.get('virtio-fs sequential read: speed ≥ 0.9× QEMU (issue 14)')!;
  assert.equal([fs.value, fs.met], [2000 / 1800, true]);
  const blk4k = byGoal.get('virtio-blk read, 4 KiB blocks: ≥ 0.8× QEMU (issue 14)')!;
  assert.equal([blk4k.value, blk4k.met], [0.8, true]);            // the threshold itself is met
  const echo = byGoal.get('concurrent echo (host streams, reads the echo back): ≥ 0.8× vhost-vsock (issue 16)')!;
  assert.equal([echo.value, echo.met], [0.75, false]);
  const fwd = byGoal.get('port exits forwarded to the main thread: ≥ 0.5× the C twin (issue 16)')!;
  assert.equal([fwd.value, fwd.met], [0.25, false]);
  // No peer: no value, not met, and said.
  const [alone] = goals(record({ vsock: { command: ['x'], status: 'ok', error: null, seconds: 1, result: { summary: { tsvmm: { h2gMibS: spread(3), g2hMibS: spread(2) } } } } })).filter((g) => g.bench === 'vsock');
  assert.equal([alone!.value, alone!.met, alone!.note], [null, false, 'no peer value']);
});

test('a benchmark without a peer value or without JSON gives no ratio and no crash', () => {
  const [h2g] = metricsOf('vsock', { summary: { tsvmm: { h2gMibS: spread(3), g2hMibS: spread(2) } } });
  assert.is(h2g!.peer, null);
  assert.is(h2g!.relative, null);
  assert.equal(metricsOf('boot', null), []);
  assert.equal(metricsOf('exits', { summary: {} }), []);
});

test('markdown: machine of both levels, one row per metric, a failed benchmark named', () => {
  const rec = record({ vsock: { command: ['node', 'tools/bench/vsock.mjs'], status: 'failed', error: 'exit status 1', seconds: 3, result: null } });
  const md = markdown(rec, reportMetrics(rec));
  assert.match(md, /nested sandbox/);
  assert.match(md, /\| CPU \| AMD EPYC — 2 logical CPUs, 2 cores \| Host CPU — 2 logical CPUs, 2 cores \|/);
  assert.match(md, /\| boot \| boot to init ready \(s\) \| 2\.00 \(1\.80\.\.2\.60\) \| QEMU microvm \| 1\.00 \(0\.90\.\.1\.20\) \| 0\.50× \| tsvmm\/QEMU time ≤ 0\.7 \(issue 16\): 2\.00 \*\*not met\*\* \|/);
  assert.match(md, /\| hints \| guest setaffinity return → host setaffinity return, p50 \(min\.\.max\) \(ms\) \| 5\.00 \(3\.00\.\.11\.0\) \| prototype polled every 50 ms \(reference\) \| 50\.0 \| – \|/);
  assert.match(md, /\| exits \| port exits forwarded to the main thread \(exits\/s\) \| .* \| C twin forwarding to a 2nd thread \| 4,000 \(4,000\.\.4,000\) \| 0\.25× \| ≥ 0\.5× the C twin \(issue 16\): 0\.25 \*\*not met\*\* \|/);
  assert.match(md, /\| vsock \| \*\*failed\*\*: exit status 1 \|/);
  assert.match(md, /\| exits \| port exits handled on the vCPU thread \(exits\/s\) \| 15,000 \(14,000\.\.16,000\) \| C twin \| 20,000 \(20,000\.\.20,000\) \| 0\.75× \|  \|/);
  assert.not.match(md, /host→guest/);                            // no vsock metrics without its JSON
  assert.match(md, /\| prio \| guest real-time task wake-up latency under host load, p99, --prio hinted \(µs\) \| 1,500 \(1,000\.\.2,000\) \| tsvmm --prio none \(policy off\) \| 5,000 \(4,000\.\.6,000\) \| 3\.33× \|/);
  assert.match(md, /## Goals[\s\S]*\| prio \| hinted lowers p99 \(hinted\/none p99 < 1\) \| 0\.300 \| yes \| vCPU 1 thread while the task ran: fifo 10 \(hinted\), other \(none\) \|/);
});

const NO_CHARTS = missingPackages('vega', 'vega-lite', '@resvg/resvg-js');

needs(NO_CHARTS)('charts: one bar per measured ratio (references left out), SVG and PNG', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'tsvmm-report-'));
  try {
    const rec = record();
    const files = await renderCharts(rec, reportMetrics(rec), dir);
    const relative = readFileSync(files[0]!.svg, 'utf8');
    const bars = relative.match(/aria-label="tsvmm relative to its peer [^"]*: [\d.]+; what: [^"]*"/g) ?? [];
    assert.is(bars.length, 15, bars.join('\n'));                 // boot ×2, vsock ×3, blk ×4, virtio-fs ×2, exits ×2, prio p50 and p99; no reference
    assert.ok(bars.some((b) => /: 2; what: vsock: guest→host stream"/.test(b)), bars.join('\n'));
    const values = readFileSync(files[1]!.svg, 'utf8');
    assert.match(values, /boot: boot to init ready \(s\)/);
    for (const f of files) assert.equal([...readFileSync(f.png).subarray(0, 4)], [0x89, 0x50, 0x4e, 0x47]);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test.run();
