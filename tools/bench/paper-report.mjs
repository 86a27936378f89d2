// The paper experiment's report: per-cell statistics (mean, sample standard deviation, n),
// the Markdown table, and the chart (vega-lite → SVG via vega's headless renderer, SVG → PNG
// via resvg). Pure functions over the run records of tools/bench/paper.mjs; writes only the
// files it is asked to. The chart libraries are optional at import time: without them the
// JSON and Markdown are still written and renderChart says what to install.
import { renderVegaLite } from './chart.mjs';

export const LOADS = ['none', 'low', 'high'];
export const PINS = ['none', 'static', 'hinted'];

/** Mean, sample standard deviation (n - 1; 0 for one sample), n, min, max of numbers. */
export function stats(xs) {
  const n = xs.length;
  if (n === 0) return { n: 0, mean: NaN, sd: NaN, min: NaN, max: NaN };
  const mean = xs.reduce((a, b) => a + b, 0) / n;
  const sd = n > 1 ? Math.sqrt(xs.reduce((a, b) => a + (b - mean) ** 2, 0) / (n - 1)) : 0;
  return { n, mean, sd, min: Math.min(...xs), max: Math.max(...xs) };
}

/** One row per (load, pin) cell that has runs, in matrix order; failed runs are counted, not averaged. */
export function summarize(runs) {
  const rows = [];
  for (const load of LOADS) {
    for (const pin of PINS) {
      const cell = runs.filter((r) => r.load === load && r.pin === pin);
      if (cell.length === 0) continue;
      const ok = cell.filter((r) => r.ok);
      rows.push({ load, pin, failed: cell.length - ok.length, ...stats(ok.map((r) => r.mpps)) });
    }
  }
  return rows;
}

const f2 = (x) => (Number.isFinite(x) ? x.toFixed(2) : '–');

export function markdownTable(rows) {
  const lines = ['| host load | pinning | mean Mpps | sd | n | min | max | failed |', '|---|---|---:|---:|---:|---:|---:|---:|'];
  for (const r of rows) lines.push(`| ${r.load} | ${r.pin} | ${f2(r.mean)} | ${f2(r.sd)} | ${r.n} | ${f2(r.min)} | ${f2(r.max)} | ${r.failed} |`);
  return lines.join('\n') + '\n';
}

/** Grouped bars (mean Mpps per load, one bar per pin policy) with ±1 sd error bars. */
export function chartSpec(rows, title) {
  const values = rows.filter((r) => r.n > 0).map((r) => ({ load: r.load, pin: r.pin, mean: r.mean, lo: r.mean - r.sd, hi: r.mean + r.sd, n: r.n }));
  const x = { field: 'load', type: 'nominal', sort: LOADS, axis: { labelAngle: 0 }, title: 'host load (busy processes per host CPU: low 2, high 8)' };
  const offset = { field: 'pin', sort: PINS };
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title,
    width: 420,
    height: 260,
    background: 'white',
    data: { values },
    encoding: { x, xOffset: offset },
    layer: [
      {
        mark: 'bar',
        encoding: {
          y: { field: 'mean', type: 'quantitative', title: 'spscq throughput (Mpps, mean ± sd)' },
          color: { field: 'pin', type: 'nominal', sort: PINS, title: 'vCPU pinning' },
        },
      },
      { mark: { type: 'rule', color: 'black' }, encoding: { y: { field: 'lo', type: 'quantitative' }, y2: { field: 'hi' } } },
      { mark: { type: 'tick', color: 'black', thickness: 1.5, width: 8 }, encoding: { y: { field: 'lo', type: 'quantitative' } } },
      { mark: { type: 'tick', color: 'black', thickness: 1.5, width: 8 }, encoding: { y: { field: 'hi', type: 'quantitative' } } },
    ],
  };
}

/** Writes `${base}.svg` and `${base}.png` (chart.mjs says what to install if a library is missing). */
export function renderChart(rows, base, title) {
  return renderVegaLite(chartSpec(rows, title), base);
}
