// The paper experiment's report (tools/bench/paper-report.mjs): statistics per cell, the
// Markdown table, and (when the chart libraries are installed) a real SVG + PNG.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { missingPackages, needs } from '../../needs';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { markdownTable, renderChart, stats, summarize } from '../../../tools/bench/paper-report.mjs';

test('stats: mean and sample standard deviation', () => {
  const s = stats([2, 4, 4, 4, 5, 5, 7, 9]);
  assert.is(s.n, 8);
  assert.is(s.mean, 5);
  assert.ok(Math.abs(s.sd - Math.sqrt(32 / 7)) < 1e-12);
  assert.is(s.min, 2);
  assert.is(s.max, 9);
  assert.is(stats([3]).sd, 0);
  assert.is(stats([]).n, 0);
});

test('summarize: matrix order, failed runs counted but not averaged', () => {
  const rows = summarize([
    { load: 'high', pin: 'hinted', ok: true, mpps: 10 },
    { load: 'none', pin: 'static', ok: true, mpps: 20 },
    { load: 'none', pin: 'static', ok: true, mpps: 22 },
    { load: 'high', pin: 'hinted', ok: false, mpps: null },
    { load: 'high', pin: 'hinted', ok: true, mpps: 14 },
  ]);
  assert.equal(rows.map((r) => `${r.load}/${r.pin}`), ['none/static', 'high/hinted']);
  assert.is(rows[0].mean, 21);
  assert.is(rows[1].n, 2);
  assert.is(rows[1].failed, 1);
  assert.is(rows[1].mean, 12);
  const md = markdownTable(rows);
  assert.match(md, /^\| host load \| pinning \| mean Mpps \| sd \| n \|/);
  assert.match(md, /\| high \| hinted \| 12\.00 \| 2\.83 \| 2 \| 10\.00 \| 14\.00 \| 1 \|/);
});

const NO_CHARTS = missingPackages('vega', 'vega-lite', '@resvg/resvg-js');

needs(NO_CHARTS)('renderChart: SVG with one bar per cell and a PNG', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'tsvmm-paper-report-'));
  try {
    const rows = summarize([
      { load: 'none', pin: 'none', ok: true, mpps: 20 }, { load: 'none', pin: 'none', ok: true, mpps: 24 },
      { load: 'high', pin: 'hinted', ok: true, mpps: 18 },
    ]);
    const out = await renderChart(rows, join(dir, 'chart'), 'test chart');
    const svg = readFileSync(out.svg, 'utf8');
    assert.match(svg, /^<svg/);
    assert.match(svg, /test chart/);
    // One bar per cell, carrying its mean (vega writes each mark's fields into aria-label).
    const bars = svg.match(/aria-label="[^"]*Mpps, mean ± sd\): [\d.]+; pin: [a-z]+;/g) ?? [];
    assert.is(bars.length, 2);
    assert.ok(bars.some((b) => /: 22; pin: none;/.test(b)), bars.join('\n'));
    assert.ok(bars.some((b) => /: 18; pin: hinted;/.test(b)), bars.join('\n'));
    const png = readFileSync(out.png);
    assert.equal([...png.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test.run();
