// The paper experiment's pipeline (tools/bench/paper.mjs --short) on the stock kernel: three
// guests (pin none, static, hinted), spscq under no and high host load, and every output file
// parses — runs.json with spscq's self-checked results, results.md, the chart as SVG and PNG.
// No throughput is asserted (emulation); that the hinted guest's scheduler saw spscq's pins is.

import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ROOT } from './helpers';

interface Run { pin: string; load: string; ok: boolean; mpps: number | null; result: { check: string; items: number } | null; counters?: { hints: number; pins: number } }

test('paper --short: 2 loads × 3 pin policies, self-checked runs, table and chart', () => {
  const dir = mkdtempSync(join(tmpdir(), 'tsvmm-paper-'));
  try {
    const r = spawnSync(process.execPath, [join(ROOT, 'tools/bench/paper.mjs'), '--short', '--out', dir], { cwd: ROOT, encoding: 'utf8', timeout: 840_000 });
    assert.is(r.status, 0, `${r.stdout}\n${r.stderr}`);
    const record = JSON.parse(readFileSync(join(dir, 'runs.json'), 'utf8')) as { runs: Run[]; guests: unknown[] };
    assert.is(record.guests.length, 3);
    const cells = record.runs.map((x) => `${x.load}/${x.pin}`).sort();
    assert.equal(cells, ['high/hinted', 'high/none', 'high/static', 'none/hinted', 'none/none', 'none/static']);
    for (const run of record.runs) {
      assert.ok(run.ok && run.result?.check === 'ok' && run.result.items > 0 && run.mpps! > 0, JSON.stringify(run));
      // Only the hinted guest has the affinity program: spscq's two pthread_setaffinity_np reach its scheduler.
      if (run.pin === 'hinted') assert.ok(run.counters!.pins >= 2, JSON.stringify(run.counters));
      else assert.is(run.counters!.hints, 0);
    }
    const md = readFileSync(join(dir, 'results.md'), 'utf8');
    assert.is(md.split('\n').filter((l) => /^\| (none|high) \| (none|static|hinted) \| [\d.]+ \|/.test(l)).length, 6, md);
    assert.match(readFileSync(join(dir, 'chart.svg'), 'utf8'), /^<svg/);
    assert.equal([...readFileSync(join(dir, 'chart.png')).subarray(0, 4)], [0x89, 0x50, 0x4e, 0x47]);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test.run();
