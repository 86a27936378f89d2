// One test file, for tools/test.mjs: runs it in its own process group (bounded in time; what it
// leaves running is killed and counted against it) and reads what uvu reported, test by test.
// Knows uvu 0.5's output format and tools/test-hooks.mjs's and test/needs.ts's lines; does not
// know about sandboxes or summaries.
import { spawn } from 'node:child_process';
import { closeSync, existsSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The checkout: the directory above this file that holds tools/test-hooks.mjs (also when bundled into a test). */
const root = (() => {
  for (let d = dirname(fileURLToPath(import.meta.url)); ; d = dirname(d)) {
    if (existsSync(join(d, 'tools/test-hooks.mjs'))) return d;
    if (dirname(d) === d) throw new Error(`no tools/test-hooks.mjs above ${fileURLToPath(import.meta.url)}`);
  }
})();
export const FILE_TIMEOUT_S = 900;

/**
 * What uvu reported for one file: `passed` from its summary, one failure per `FAIL "name"` block,
 * `skipped` from its summary with the reasons test/needs.ts printed. When the numbers do not add
 * up to uvu's Total (a test.before hook threw), or there is no summary at all (the process died),
 * or the exit status disagrees, the file gets a failure more and `problem` says why.
 */
export function parseReport(out, exit) {
  const last = (re) => {
    const all = [...out.matchAll(re)];
    return all.length ? Number(all[all.length - 1][1]) : undefined;
  };
  const total = last(/^\s*Total:\s+(\d+)\s*$/gm);
  const passed = last(/^\s*Passed:\s+(\d+)\s*$/gm);
  const skipped = last(/^\s*Skipped:\s+(\d+)\s*$/gm);
  const failures = [...out.matchAll(/^ {3}FAIL {2}"(.*)"\s*$/gm)].map((m) => m[1]);
  const skips = [...out.matchAll(/^skip ("(?:[^"\\]|\\.)*"): (.*)$/gm)].map((m) => ({ name: JSON.parse(m[1]), reason: m[2] }));
  const hook = /^ {3}HOOK FAILED {2}(.*)$/m.exec(out)?.[1];
  const r = { passed: 0, failed: failures.length, skipped: 0, failures, skips, problem: undefined };
  if (total === undefined || passed === undefined) {
    // No summary: the process died or hung mid-file. Count the marks uvu wrote so far.
    r.passed = (out.match(/• /g) ?? []).length;
    r.failed = Math.max(failures.length, (out.match(/✘ /g) ?? []).length) + 1;
    r.problem = `crashed (${exit.signal ? `signal ${exit.signal}` : `exit status ${exit.code}`}) before uvu's summary${hook ? `: ${hook}` : ''}`;
    return r;
  }
  r.passed = passed;
  r.skipped = skipped ?? 0;
  const unreported = total - passed - failures.length;
  if (unreported > 0) {
    r.failed += unreported;
    r.problem = `${unreported} test(s) never ran: ${hook ?? 'uvu stopped before them'}`;
  } else if (hook) {
    r.failed += 1;
    r.problem = hook;
  } else if (exit.code !== 0 && failures.length === 0) {
    r.failed += 1;
    r.problem = `${exit.signal ? `signal ${exit.signal}` : `exit status ${exit.code}`} after a clean summary`;
  }
  for (let i = r.skips.length; i < r.skipped; i++) r.skips.push({ name: '(unnamed)', reason: 'test.skip without a reason (use test/needs.ts)' });
  return r;
}

/** Live members of process group `pgid` (zombies left out), as "pid comm". */
export function groupMembers(pgid) {
  const out = [];
  for (const p of readdirSync('/proc')) {
    if (!/^\d+$/.test(p)) continue;
    try {
      const stat = readFileSync(`/proc/${p}/stat`, 'utf8');
      const close = stat.lastIndexOf(')');
      const [state, , pgrp] = stat.slice(close + 2).split(' ');
      if (Number(pgrp) === pgid && state !== 'Z') out.push(`${p} ${stat.slice(stat.indexOf('(') + 1, close)}`);
    } catch {
      // gone meanwhile
    }
  }
  return out;
}

/**
 * Runs the bundle `file.dist` to completion, streaming its output to `logPath` when given (so
 * what it reported survives a sandbox that dies under it). Resolves to its parsed report plus
 * `file`, `name`, `seconds` and the raw `output`. A file that hangs or crashes is reported with
 * the test it was in (tools/test-hooks.mjs writes each test's name as it starts).
 */
export function runFile(file, { logPath, env = process.env, timeoutS = FILE_TIMEOUT_S } = {}) {
  const t0 = Date.now();
  // Beside the log when there is one (a sandbox that dies leaves both for the host to read).
  const scratch = logPath ? undefined : mkdtempSync(join(tmpdir(), 'tsvmm-testfile-'));
  const currentPath = scratch ? join(scratch, 'current') : `${logPath}.current`;
  return new Promise((resolveRun) => {
    const child = spawn(process.execPath, ['--enable-source-maps', '--import', join(root, 'tools/test-hooks.mjs'), file.dist], {
      cwd: root, env: { ...env, FORCE_COLOR: '0', NODE_DISABLE_COLORS: '1', TSVMM_TEST_CURRENT: currentPath }, stdio: ['ignore', 'pipe', 'pipe'], detached: true,
    });
    const log = logPath ? openSync(logPath, 'w') : undefined;
    let out = '';
    const take = (b) => {
      out += b;
      if (log !== undefined) writeSync(log, b);
    };
    child.stdout.on('data', take);
    child.stderr.on('data', take);
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      try { process.kill(-child.pid, 'SIGKILL'); } catch { /* already gone */ }
    }, timeoutS * 1000);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      if (log !== undefined) closeSync(log);
      const r = { file: file.src, name: file.name, ...parseReport(out, { code, signal }), seconds: (Date.now() - t0) / 1000, output: out };
      const crashed = r.problem?.startsWith('crashed');
      if (timedOut) r.problem = `timed out after ${timeoutS} s`;
      if (timedOut || crashed) {
        let inTest = '';
        try {
          inTest = readFileSync(currentPath, 'utf8');
        } catch {
          // no test had started
        }
        if (inTest) r.problem += ` during test ${JSON.stringify(inTest)}`;
      }
      if (scratch) rmSync(scratch, { recursive: true, force: true });
      const left = groupMembers(child.pid);
      if (left.length) {
        try { process.kill(-child.pid, 'SIGKILL'); } catch { /* raced */ }
        r.failed += 1;
        r.problem = [r.problem, `left ${left.length} process(es) running after it ended (killed): ${left.join(', ')}`].filter(Boolean).join('; ');
      }
      resolveRun(r);
    });
  });
}
