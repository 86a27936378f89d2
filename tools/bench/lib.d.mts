// Types of the parts of lib.mjs that TypeScript benchmarks (tools/bench/*.ts) import.
export declare function machine(): Record<string, unknown>;
