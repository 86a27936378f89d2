// `tsvmm exec`: boot a guest, wait for its agent on vsock, copy files in, run one command with
// its stdout/stderr streamed to ours, and exit with its status. The guest console is hidden
// unless asked for; the VM is torn down as soon as the command ends.

import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { constants as osConstants, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { AgentClient } from './agent/client';
import { AgentError } from './agent/protocol';
import { checkKvm, machineConfig, runOptions } from './cli-options';
import { Machine } from './machine';
import { stderrLine } from './log';
import { EXIT, UsageError } from '../lib/errors';

export const EXEC_USAGE = `tsvmm exec [run options] [--put SRC:DST]... [--timeout SEC] [--console] -- CMD ARGS...
  boots the guest with virtio-vsock, runs CMD through the guest agent (vsock port 52)
  --put SRC:DST    copy host file SRC to guest path DST before running CMD (repeatable)
  --timeout SEC    kill CMD and stop the VM after SEC seconds (exit 124)
  --console        show the guest's serial console on stderr
  exit status: CMD's status (128+N if signal N ended it), 124 timeout, 125 the VM or
  agent failed before CMD finished, 126 CMD could not be run, 127 CMD not found`;

export const AGENT_PORT = 52;
const EXIT_TIMEOUT = 124;
const EXIT_VM_FAILED = 125;
const EXIT_CANNOT_RUN = 126;
const EXIT_NOT_FOUND = 127;
const GUEST_CID = 3;

const execOptions = {
  ...runOptions,
  put: { type: 'string', multiple: true },
  timeout: { type: 'string' },
  console: { type: 'boolean' },
} as const;

/** Connects to the agent, retrying while the guest is still booting (connection refused/reset). */
export async function waitForAgent(client: AgentClient, deadline: number, failed: () => boolean): Promise<void> {
  let delay = 50;
  for (;;) {
    try {
      // A connect made while the guest driver is still probing can be dropped silently by the
      // device reset Linux does at probe time: bound each attempt, then try again.
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([
        client.ping(),
        new Promise((_, reject) => (timer = setTimeout(() => reject(new Error('agent did not answer within 5 s')), 5000))),
      ]).finally(() => clearTimeout(timer));
      return;
    } catch (e) {
      if (failed() || Date.now() > deadline) throw e;
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 500);
    }
  }
}

export async function cmdExec(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({ args, options: execOptions, allowPositionals: true, strict: true });
  if (values.help) {
    process.stdout.write(EXEC_USAGE + '\n');
    return 0;
  }
  if (positionals.length === 0) throw new UsageError('exec needs a command after --');
  const timeoutSec = values.timeout === undefined ? 0 : Number(values.timeout);
  if (!Number.isFinite(timeoutSec) || timeoutSec < 0) throw new UsageError(`--timeout '${values.timeout}' is not a number of seconds`);
  const puts = (values.put ?? []).map((p) => {
    const i = p.lastIndexOf(':');
    if (i <= 0 || i === p.length - 1) throw new UsageError(`--put '${p}' must be SRC:DST`);
    return { src: p.slice(0, i), dst: p.slice(i + 1) };
  });
  const log = values.quiet ? () => {} : stderrLine;
  const dir = mkdtempSync(join(tmpdir(), 'tsvmm-exec-'));
  const config = await machineConfig({ ...values, vsock: values.vsock ?? `cid=${GUEST_CID},uds=${join(dir, 'vsock')}` }, log);
  checkKvm();
  const machine = await Machine.start(config, {
    console: values.console ? (b) => process.stderr.write(b) : () => {},
    log: values.console ? log : () => {},
  });
  let vmEnded: string | undefined;
  void machine.exited.then((s) => (vmEnded = s.detail));
  const abort = new AbortController();
  const timer = timeoutSec > 0 ? setTimeout(() => abort.abort(), timeoutSec * 1000) : undefined;
  const onSignal = () => abort.abort();
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  try {
    const client = new AgentClient(() => machine.vsock!.connect(AGENT_PORT));
    const deadline = timeoutSec > 0 ? Date.now() + timeoutSec * 1000 : Number.POSITIVE_INFINITY;
    await waitForAgent(client, deadline, () => vmEnded !== undefined || abort.signal.aborted);
    // --timeout and signals cover the copies too: a put the agent stalls is aborted with them.
    for (const p of puts) await client.put(readFileSync(p.src), p.dst, 0o644, { signal: abort.signal });
    const result = await client.exec({
      argv: positionals,
      stdin: process.stdin.isTTY || process.env.CI ? undefined : process.stdin,
      onStdout: (c) => process.stdout.write(c),
      onStderr: (c) => process.stderr.write(c),
      signal: abort.signal,
      abortSignal: 'SIGKILL',
    });
    if (abort.signal.aborted) return EXIT_TIMEOUT;
    if (result.exitCode !== null) return result.exitCode;
    const signo = osConstants.signals[result.signal as NodeJS.Signals] ?? 0;
    return 128 + signo;
  } catch (e) {
    if (abort.signal.aborted) {
      log(`timed out after ${timeoutSec} s`);
      return EXIT_TIMEOUT;
    }
    if (e instanceof AgentError && e.code === 'SPAWN') {
      // The guest could not start CMD: the shell's and docker's statuses, not a VM failure.
      stderrLine(e.message);
      // The guest is x86-64 Linux like this host: its errno numbers are ours.
      return e.errno === osConstants.errno.ENOENT ? EXIT_NOT_FOUND : EXIT_CANNOT_RUN;
    }
    log(`${vmEnded ? `the VM ended (${vmEnded}) ` : ''}before the command finished: ${(e as Error).message}`);
    return EXIT_VM_FAILED;
  } finally {
    if (timer) clearTimeout(timer);
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    machine.finish({ code: EXIT.POWEROFF, reason: 'poweroff', detail: 'exec finished' });
    await machine.exited;
    rmSync(dir, { recursive: true, force: true });
  }
}
