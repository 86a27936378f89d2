// guest/rtlat's `-v measure:N:US` output, as the prio benchmark (tools/bench/prio.ts) reads it:
// one `sample US` line per wake-up, in order, then `latency_us n=… p50=… p99=… max=… overruns=…`.

export interface RtlatResult {
  samples: number;
  p50: number;
  p99: number;
  max: number;
  /** Periods skipped because a wake-up came later than the next one (cyclictest's overruns). */
  overruns: number;
  /** Every wake-up's lateness in µs, in the order measured (empty without rtlat's -v). */
  latencies: number[];
}

export class RtlatOutputError extends Error {
  override name = 'RtlatOutputError';
}

/** rtlat's result; with `verbose` (rtlat ran with -v) the per-wake-up samples must all be there. */
export function parseRtlat(out: string, verbose: boolean): RtlatResult {
  const line = /^latency_us n=(\d+) p50=(\d+) p99=(\d+) max=(\d+) overruns=(\d+)$/m.exec(out);
  if (!line) throw new RtlatOutputError(`no latency_us line in rtlat's output: ${out.slice(-500)}`);
  const [samples, p50, p99, max, overruns] = line.slice(1, 6).map(Number) as [number, number, number, number, number];
  const latencies = [...out.matchAll(/^sample (-?\d+)$/gm)].map((m) => Number(m[1]));
  if (verbose && latencies.length !== samples) throw new RtlatOutputError(`rtlat reported n=${samples} but printed ${latencies.length} samples`);
  if (latencies.length && Math.max(...latencies) !== max) throw new RtlatOutputError(`rtlat's max ${max} µs is not its largest sample ${Math.max(...latencies)} µs`);
  return { samples, p50, p99, max, overruns, latencies };
}

/** How many wake-ups came at least `us` late. */
export const lateBy = (latencies: number[], us: number) => latencies.filter((l) => l >= us).length;
