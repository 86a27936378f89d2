// Types of paper-report.mjs for the TypeScript tests (the module itself stays plain ESM so
// the benchmark runs without a build step).
export interface PaperRun { load: string; pin: string; ok: boolean; mpps: number | null }
export interface Stats { n: number; mean: number; sd: number; min: number; max: number }
export interface CellRow extends Stats { load: string; pin: string; failed: number }
export declare const LOADS: readonly string[];
export declare const PINS: readonly string[];
export declare function stats(xs: readonly number[]): Stats;
export declare function summarize(runs: readonly PaperRun[]): CellRow[];
export declare function markdownTable(rows: readonly CellRow[]): string;
export declare function chartSpec(rows: readonly CellRow[], title: string): Record<string, unknown>;
export declare function renderChart(rows: readonly CellRow[], base: string, title: string): Promise<{ svg: string; png: string }>;
