// Renders a vega-lite spec to SVG (vega's headless renderer) and PNG (resvg) for the benchmark
// reports (paper-report.mjs, report-render.mjs). The chart libraries are optional at import
// time: without them the callers still write their JSON and Markdown, and the error names
// the npm line that adds them. Writes only `${base}.svg` and `${base}.png`.
import { existsSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

export const CHART_DEPS = 'npm install --save-dev vega@6.4.0 vega-lite@6.4.3 @resvg/resvg-js@2.6.2';

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

/** Writes `${base}.svg` and `${base}.png`; throws an Error naming what to install if a library is missing. */
export async function renderVegaLite(spec, base) {
  let vega, vegaLite, resvg;
  try {
    vega = await importDep('vega');
    vegaLite = await importDep('vega-lite');
    resvg = await importDep('@resvg/resvg-js');
  } catch (e) {
    throw new Error(`chart libraries missing (${e.message.split('\n')[0]}): ${CHART_DEPS}, or set TSVMM_PAPER_DEPS to a dir where they are installed`);
  }
  const view = new vega.View(vega.parse(vegaLite.compile(spec).spec), { renderer: 'none' });
  const svg = await view.toSVG();
  view.finalize();
  const Resvg = resvg.Resvg ?? resvg.default?.Resvg;
  const png = new Resvg(svg, { fitTo: { mode: 'zoom', value: 2 }, background: 'white', font: { loadSystemFonts: true } }).render().asPng();
  writeFileSync(`${base}.svg`, svg);
  writeFileSync(`${base}.png`, png);
  return { svg: `${base}.svg`, png: `${base}.png` };
}
