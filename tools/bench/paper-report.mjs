// The paper experiment's report: per-cell statistics (mean, sample standard deviation, n),
// the Markdown table, and the chart (vega-lite → SVG via vega's headless renderer, SVG → PNG
// via resvg). Pure functions over the run records of tools/bench/paper.mjs; writes only the
// files it is asked to. The chart libraries are optional at import time: without them the
// JSON and Markdown are still written and renderChart says what to install.
import { existsSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

export const LOADS = ['none', 'low', 'high'];
export const PINS = ['none', 'static', 'hinted'];
export const CHART_DEPS = 'npm install --save-dev vega@6.4.0 vega-lite@6.5.0 @resvg/resvg-js@2.6.2';

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

/** Imports a package from the project, or else from $TSVMM_PAPER_DEPS (a scratch `npm install` dir). */
async function importDep(name) {
  try {
    return await import(name);
  } catch (e) {
    const dir = process.env.TSVMM_PAPER_DEPS;
    if (!dir || !existsSync(join(dir, 'package.json'))) throw e;
    return import(pathToFileURL(createRequire(join(dir, 'package.json')).resolve(name)).href);
  }
}

/**
 * Writes `${base}.svg` and `${base}.png`. Returns the paths, or throws an Error whose message
 * names the missing dependency and the npm line that adds it.
 */
export async function renderChart(rows, base, title) {
  let vega, vegaLite, resvg;
  try {
    vega = await importDep('vega');
    vegaLite = await importDep('vega-lite');
    resvg = await importDep('@resvg/resvg-js');
  } catch (e) {
    throw new Error(`chart libraries missing (${e.message.split('\n')[0]}): ${CHART_DEPS}, or set TSVMM_PAPER_DEPS to a dir where they are installed`);
  }
  const { spec } = vegaLite.compile(chartSpec(rows, title));
  const view = new vega.View(vega.parse(spec), { renderer: 'none' });
  const svg = await view.toSVG();
  view.finalize();
  const Resvg = resvg.Resvg ?? resvg.default?.Resvg;
  const png = new Resvg(svg, { fitTo: { mode: 'zoom', value: 2 }, background: 'white', font: { loadSystemFonts: true } }).render().asPng();
  writeFileSync(`${base}.svg`, svg);
  writeFileSync(`${base}.png`, png);
  return { svg: `${base}.svg`, png: `${base}.png` };
}
