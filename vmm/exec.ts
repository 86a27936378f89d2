// `tsvmm exec`: run one command in a guest through its agent, with its stdin, stdout and stderr
// streamed and its exit status as ours. Either boots a guest for it (the default guest, or any
// kernel: vmm/kernel/) and tears it down after, or runs it in a VM that is already running
// (`--api-sock S`: the API's agent route, docs/api.md). Files go in before (--put) and come out
// after (--get, also when the command failed); --json ends with one line of status and timings.
// Owns the command line and the order of those steps; the VM is agent-vm.ts's, the wire the
// agent client's.

import { StartupClock } from './startup';
import { createWriteStream, statSync, writeFileSync, type WriteStream } from 'node:fs';
import { constants as osConstants } from 'node:os';
import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { AgentClient, type ExecResult } from './agent/client';
import { AgentError } from './agent/protocol';
import { AgentTimeoutError, AgentVm } from './agent-vm';
import { apiAgentConnector } from './api/client';
import { checkKvm, machineConfig, MACHINE_FLAGS, runOptions } from './cli-options';
import { stderrLine } from './log';
import { guestPathOf } from './shares';
import { TsvmmError, UsageError, EXIT } from '../lib/errors';

export const EXEC_USAGE = `tsvmm exec [run options] [exec options] -- CMD ARGS...
tsvmm exec --api-sock S [exec options] -- CMD ARGS...
  runs CMD through the guest agent (vsock port 52): in a guest booted for it (the default
  guest, or --kernel K [--modules M]: any kernel, its agent initramfs built and cached), or
  with --api-sock in the running VM that serves API socket S (tsvmm run --api-sock S --vsock …)
  --env K=V        set K in CMD's environment (repeatable)
  --cwd DIR        run CMD in guest directory DIR (default: the caller's directory when
                   the guest sees it through --share or --rootfs host)
  --put SRC:DST    copy host file SRC to guest path DST before CMD, making DST's parent
                   directories; DST keeps SRC's permission bits (repeatable)
  --get SRC:DST    copy guest file SRC to host path DST after CMD, also when CMD failed
                   (repeatable)
  --timeout SEC    kill CMD and stop the VM after SEC seconds (exit 124)
  --console        show the guest's serial console on stderr
  --console-log F  write the guest's serial console (the kernel's messages) to file F
  --verbose-console  the kernel's whole boot log on the console (default: warnings and
                   errors only, loglevel=5, as vng without --verbose; a --cmdline of your
                   own is taken as it is; --append loglevel=N also overrides)
  --json           end with one JSON line on stdout: status, signal, timings (ms: node start,
                   boot, agent, command; startup: the VMM's start to the first KVM_RUN by
                   phase), console log path, exits (register accesses forwarded to the
                   main thread, by device and by register, and served in the vCPU threads)
  stdin is streamed to CMD (unless it is a terminal); CMD's stdout and stderr are ours.
  exit status: CMD's status (128+N if signal N ended it), 124 timeout, 125 the VM or agent
  failed before CMD finished (or a --get failed after CMD succeeded), 126 CMD could not be
  run, 127 CMD not found`;

export { AGENT_VSOCK_PORT as AGENT_PORT } from './agent/connect';
export { waitForAgent } from './agent-vm';
export const EXIT_TIMEOUT = 124;
const EXIT_VM_FAILED = 125;
const EXIT_CANNOT_RUN = 126;
const EXIT_NOT_FOUND = 127;

const execOptions = {
  ...runOptions,
  put: { type: 'string', multiple: true },
  get: { type: 'string', multiple: true },
  env: { type: 'string', multiple: true },
  cwd: { type: 'string' },
  timeout: { type: 'string' },
  console: { type: 'boolean' },
  'console-log': { type: 'string' },
  'verbose-console': { type: 'boolean' },
  json: { type: 'boolean' },
  'api-sock': { type: 'string' },
} as const;

/** `--timeout SEC` (0 or absent: none). */
export function parseTimeout(v: string | undefined): number {
  if (v === undefined) return 0;
  const n = Number(v);
  if (v.trim() === '' || !Number.isFinite(n) || n < 0) throw new UsageError(`--timeout '${v}' is not a number of seconds`);
  return n;
}

interface Copy {
  from: string;
  to: string;
}

/** `SRC:DST`, split at the last colon (host paths may hold colons; guest paths rarely do). */
export function parseCopy(flag: string, spec: string): Copy {
  const i = spec.lastIndexOf(':');
  if (i <= 0 || i === spec.length - 1) throw new UsageError(`${flag} '${spec}' must be SRC:DST`);
  return { from: spec.slice(0, i), to: spec.slice(i + 1) };
}

export function parseEnv(list: readonly string[]): string[] {
  for (const e of list) if (!/^[^=]+=/.test(e)) throw new UsageError(`--env '${e}' must be KEY=VALUE`);
  return [...list];
}

/** What --json prints: one line, the last on stdout. Timings are ms; null when not measured. */
export interface ExecReport {
  status: number;
  exitCode: number | null;
  signal: string | null;
  timedOut: boolean;
  error: string | null;
  timings: {
    nodeMs: number; bootMs: number | null; agentMs: number | null; commandMs: number | null; totalMs: number;
    /** The VMM's own start to the first KVM_RUN, ms per phase (vmm/startup.ts); null with --api-sock. */
    startup: Record<string, number> | null;
  };
  consoleLog: string | null;
  /**
   * The boot's register accesses (all vCPUs, to the VM's end; null with --api-sock): forwarded to
   * the main thread, by device and by register ("com1+0x1 w"), and served in the vCPU threads
   * themselves.
   */
  exits: { forwarded: number; shared: number; forwardedByDevice: Record<string, number>; forwardedByRegister: Record<string, number> } | null;
}

/** tsvmm's exit status for how CMD ended. */
export function statusOf(r: ExecResult): number {
  if (r.exitCode !== null) return r.exitCode;
  return 128 + (osConstants.signals[r.signal as NodeJS.Signals] ?? 0);
}

export async function cmdExec(args: string[]): Promise<number> {
  const nodeMs = performance.now();
  const startup = new StartupClock();
  const { values, positionals } = parseArgs({ args, options: execOptions, allowPositionals: true, strict: true });
  if (values.help) {
    process.stdout.write(EXEC_USAGE + '\n');
    return 0;
  }
  if (positionals.length === 0) throw new UsageError('exec needs a command after --');
  const timeoutSec = parseTimeout(values.timeout);
  const puts = (values.put ?? []).map((p) => parseCopy('--put', p));
  const gets = (values.get ?? []).map((p) => parseCopy('--get', p));
  const env = parseEnv(values.env ?? []);
  for (const p of puts) {
    try {
      if (!statSync(p.from).isFile()) throw new UsageError(`--put ${p.from}: not a regular file`);
    } catch (e) {
      if (e instanceof UsageError) throw e;
      throw new UsageError(`--put ${p.from}: ${(e as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (e as Error).message}`);
    }
  }
  const remote = values['api-sock'];
  if (remote !== undefined) {
    const bootFlags = MACHINE_FLAGS.filter((f) => values[f] !== undefined);
    if (bootFlags.length) throw new UsageError(`--api-sock runs CMD in a VM that is already running; --${bootFlags[0]} is for booting one`);
    if (values.console || values['console-log'] !== undefined || values['verbose-console']) throw new UsageError('--console, --console-log and --verbose-console need a VM booted by this exec (the running VM has its own console)');
  }
  const log = values.quiet ? () => {} : stderrLine;
  const report: ExecReport = {
    status: EXIT_VM_FAILED, exitCode: null, signal: null, timedOut: false, error: null,
    timings: { nodeMs, bootMs: null, agentMs: null, commandMs: null, totalMs: 0, startup: null },
    consoleLog: values['console-log'] === undefined ? null : resolve(values['console-log']),
    exits: null,
  };
  const abort = new AbortController();
  const timer = timeoutSec > 0 ? setTimeout(() => abort.abort(), timeoutSec * 1000) : undefined;
  const onSignal = () => abort.abort();
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  let vm: AgentVm | undefined;
  let consoleLog: WriteStream | undefined;
  let wroteNewline = true;
  try {
    let client: AgentClient;
    let cwd = values.cwd;
    if (remote !== undefined) {
      client = new AgentClient(apiAgentConnector(remote));
    } else {
      const config = await machineConfig(values, log, 'exec');
      checkKvm();
      startup.end('config');
      cwd ??= guestPathOf(process.cwd(), config.shares ?? []);
      if (report.consoleLog) consoleLog = createWriteStream(report.consoleLog);
      vm = await AgentVm.start(config, {
        console: (b) => {
          if (values.console) process.stderr.write(b);
          consoleLog?.write(b);
        },
        log: values.console ? log : () => {},
        progress: log,
        startup,
      });
      report.timings.startup = startup.toJSON();
      await vm.whenReady({ signal: abort.signal });
      report.timings.bootMs = (vm.initReadyAt ?? vm.agentAt!) - nodeMs;
      report.timings.agentMs = vm.agentAt! - (vm.initReadyAt ?? vm.agentAt!);
      client = vm.client;
    }
    // --timeout and signals cover the copies too: a put the agent stalls is aborted with them.
    for (const p of puts) await client.put(p.from, p.to, statSync(p.from).mode & 0o7777, { signal: abort.signal, mkdirs: true });
    const stdin = process.stdin.isTTY ? undefined : process.stdin;
    const t0 = performance.now();
    let result: ExecResult | undefined;
    let failure: unknown;
    try {
      result = await client.exec({
        argv: positionals, env, cwd, stdin,
        onStdout: (c) => {
          wroteNewline = c[c.length - 1] === 0x0a;
          process.stdout.write(c);
        },
        onStderr: (c) => process.stderr.write(c),
        signal: abort.signal,
        abortSignal: 'SIGKILL',
      });
      report.timings.commandMs = performance.now() - t0;
    } catch (e) {
      failure = e;
    } finally {
      if (stdin) stdin.destroy(); // nothing more goes in; a pending read must not hold the process
    }
    // The files a failed test leaves are what one wants to see: copied whatever happened, as
    // long as the agent can still be reached and time is left.
    const getFailed = await copyOut(client, gets, abort.signal, log);
    if (abort.signal.aborted) throw failure ?? new AgentError('ABORTED', 'aborted');
    if (failure) throw failure;
    report.exitCode = result!.exitCode;
    report.signal = result!.signal;
    report.status = statusOf(result!);
    if (getFailed && report.status === 0) {
      report.status = EXIT_VM_FAILED;
      report.error = 'a --get failed';
    }
  } catch (e) {
    const err = e as Error;
    report.error = err.message;
    if (abort.signal.aborted) {
      report.timedOut = timeoutSec > 0;
      report.status = report.timedOut ? EXIT_TIMEOUT : EXIT_VM_FAILED;
      log(report.timedOut ? `timed out after ${timeoutSec} s` : 'interrupted');
      // Before the agent answered: what the machine was doing, even under --quiet (it is why).
      if (e instanceof AgentTimeoutError) process.stderr.write(`tsvmm: ${err.message}\n`);
    } else if (e instanceof AgentError && e.code === 'SPAWN') {
      // The guest could not start CMD: the shell's and docker's statuses, not a VM failure.
      process.stderr.write(`tsvmm: ${err.message}\n`);
      // The guest is x86-64 Linux like this host: its errno numbers are ours.
      report.status = e.errno === osConstants.errno.ENOENT ? EXIT_NOT_FOUND : EXIT_CANNOT_RUN;
    } else if (e instanceof TsvmmError && e.exitCode === EXIT.USAGE) {
      throw e;
    } else {
      if (vm) report.error = vm.describeFailure(err);
      process.stderr.write(`tsvmm: ${vm ? `before the command finished: ${report.error}` : err.message}\n`);
      report.status = EXIT_VM_FAILED;
    }
  } finally {
    clearTimeout(timer);
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await vm?.close({ code: EXIT.POWEROFF, reason: 'poweroff', detail: 'exec finished' });
    if (consoleLog) await new Promise((r) => consoleLog!.end(r));
  }
  if (vm) {
    const exits = vm.machine.vcpuExits();
    const sum = (k: string) => exits.reduce((n, e) => n + (e[k] ?? 0), 0);
    const { byDevice, byRegister } = vm.machine.forwardedExits();
    report.exits = { forwarded: sum('forwarded'), shared: sum('shared'), forwardedByDevice: byDevice, forwardedByRegister: byRegister };
  }
  report.timings.totalMs = performance.now();
  if (values.json) process.stdout.write(`${wroteNewline ? '' : '\n'}${JSON.stringify(report)}\n`);
  return report.status;
}

/** --get: each guest file to its host path; true when any failed (each failure is logged). */
async function copyOut(client: AgentClient, gets: readonly Copy[], signal: AbortSignal, log: (m: string) => void): Promise<boolean> {
  let failed = false;
  for (const g of gets) {
    try {
      writeFileSync(g.to, await client.get(g.from, { signal }));
    } catch (e) {
      failed = true;
      log(`--get ${g.from}:${g.to}: ${(e as Error).message}`);
    }
  }
  return failed;
}
