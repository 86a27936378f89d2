// Types of report-render.mjs for the TypeScript tests (the module stays plain ESM so the
// benchmarks run without a build step).
export interface Spread { median: number; min: number; max: number; n: number }
export interface Metric {
  bench: string; metric: string; unit: string; better: 'lower' | 'higher';
  tsvmm: Spread | null; peerName: string | null; peer: Spread | null; reference: boolean; relative: number | null;
  goal: MetricGoal | null;
}
/** `time`: tsvmm/peer time ≤ threshold; `speed`: relative ≥ threshold; `excess`: tsvmm − peer ≤ threshold. */
export interface MetricGoal { kind: 'time' | 'speed' | 'excess'; threshold: number; text: string }
export declare function goalValue(m: Metric): { value: number | null; met: boolean };
export interface BenchRun { command: string[]; status: string; error: string | null; seconds: number; result: unknown }
export interface ReportRecord {
  started: string; finished?: string; config: { short: boolean } & Record<string, unknown>;
  machine: Record<string, unknown> | null; host: Record<string, unknown> | null; benches: Record<string, BenchRun>;
}
export declare const BENCHES: readonly string[];
export declare function metricsOf(bench: string, json: unknown): Metric[];
export declare function reportMetrics(record: ReportRecord): Metric[];
export interface Goal { bench: string; goal: string; value: number | null; met: boolean; note: string }
export declare function goals(record: ReportRecord): Goal[];
export declare function markdown(record: ReportRecord, metrics: readonly Metric[]): string;
export declare function relativeSpec(metrics: readonly Metric[], title: string): Record<string, unknown>;
export declare function valuesSpec(metrics: readonly Metric[], title: string): Record<string, unknown>;
export declare function renderCharts(record: ReportRecord, metrics: readonly Metric[], dir: string): Promise<{ svg: string; png: string }[]>;
