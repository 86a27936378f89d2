// Types of the parts of test-report.mjs that TypeScript tests import.
export interface FileResult {
  file: string;
  name: string;
  passed: number;
  failed: number;
  skipped: number;
  failures: string[];
  skips: { name: string; reason: string }[];
  problem: string | undefined;
  seconds: number;
  output: string;
}
export declare const FILE_TIMEOUT_S: number;
/** Runs one bundled test file (its own process group, bounded) and reads what uvu reported. */
export declare function runFile(
  file: { src: string; dist: string; name: string },
  opts?: { logPath?: string; env?: NodeJS.ProcessEnv; timeoutS?: number },
): Promise<FileResult>;
/** Live members of process group `pgid` (zombies left out), as "pid comm". */
export declare function groupMembers(pgid: number): string[];
