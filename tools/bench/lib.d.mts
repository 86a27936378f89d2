// Types of the parts of lib.mjs that TypeScript benchmarks (tools/bench/*.ts) import.
export declare function machine(): Record<string, unknown>;
export interface Spread { n: number; min: number | null; median: number | null; max: number | null }
export declare function stats(values: readonly number[]): Spread;
