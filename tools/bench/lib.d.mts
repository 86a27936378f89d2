// Types of the parts of lib.mjs that TypeScript benchmarks (tools/bench/*.ts) import.
export declare function machine(): Record<string, unknown>;
export interface Spread { n: number; min: number | null; median: number | null; max: number | null }
export declare function stats(values: readonly number[]): Spread;
export interface ProcessMemory { rss: number; hwm: number; anon: number; file: number; shmem: number }
export declare function processMemory(pid: number): ProcessMemory | null;
export interface BenchRun { vmm: string; round: number; ok: boolean; source?: string; [k: string]: unknown }
export declare function pairedRatios(runs: readonly BenchRun[], value: (r: BenchRun) => number | null): Spread;
export declare function pooledRuns(list: string, bench: string, describe?: (data: Record<string, unknown>) => Record<string, unknown>): { runs: BenchRun[]; sources: Record<string, unknown>[] };
