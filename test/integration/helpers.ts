// Shared by the integration tests: run the real CLI (dist/tsvmm.js, as a user would) against the
// default guest, and build guest commands for the init's `tsvmm.cmd=` hook.

import { spawn } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { encodeGuestCommand } from '../../vmm/default-guest';

export const ROOT = (() => {
  let d = dirname(fileURLToPath(import.meta.url));
  while (!d.endsWith('/dist') && d !== '/') d = dirname(d);
  return dirname(d);
})();
export const TSVMM = join(ROOT, 'bin/tsvmm.js');

export interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
  ms: number;
}

/** Runs `tsvmm ARGS` to completion (bounded by timeoutMs), capturing both streams. */
export function tsvmm(
  args: string[],
  opts: { timeoutMs?: number; input?: string; env?: NodeJS.ProcessEnv; respond?: { when: string; send: string } } = {},
): Promise<RunResult> {
  return new Promise((resolve) => {
    const t0 = Date.now();
    const child = spawn(process.execPath, [TSVMM, ...args], { cwd: ROOT, env: { ...process.env, ...opts.env }, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    let responded = false;
    child.stdout.on('data', (b) => {
      stdout += b;
      if (opts.respond && !responded && stdout.includes(opts.respond.when)) {
        responded = true;
        child.stdin.end(opts.respond.send);
      }
    });
    child.stderr.on('data', (b) => (stderr += b));
    if (opts.input !== undefined) child.stdin.end(opts.input);
    else if (!opts.respond) child.stdin.end();
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 300_000);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr, ms: Date.now() - t0 });
    });
  });
}

/** `tsvmm run` of the default guest running `cmd` in its init, then powering off. */
export function runGuestCommand(cmd: string, extra: string[] = []): Promise<RunResult> {
  return tsvmm(['run', '--append', `quiet ${encodeGuestCommand(cmd)}`, ...extra]);
}
