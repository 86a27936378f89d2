// The guest side of the paper's experiment (tools/bench/paper.mjs drives it): boots one guest
// with a given pin policy, injects the built-in `affinity` eBPF program when the policy is
// `hinted`, then serves requests on stdin, one JSON line each, `{"args": [...spscq args]}`,
// by running guest/spscq in the guest and answering one JSON line on stdout with spscq's
// result, the vCPU placement seen halfway through the run and the scheduler counters. EOF
// on stdin powers the guest off. Owns only its temp dir; logs go to stderr. A guest whose agent
// does not answer within --timeout, or a SIGTERM/SIGINT before it did, ends the run with what
// the machine was doing (vCPUs, the guest console's last lines) on stderr and in the reply;
// a reader that went away (EPIPE on stdout) stops the guest instead of crashing this process.
//
//   node dist/paper-run.js --pin none|static|hinted [--vcpus N] [--memory SIZE] [--timeout SEC]
//
// stdout protocol: first `{"ready": true, "pin", "vcpus", "bootSeconds", "progIds"}` (or
// `{"ready": false, "error"}` and exit 1), then one `{"ok": true, "result", "placement",
// "counters"}` or `{"ok": false, "error", "stdout", "stderr", "exitCode"}` per request.

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';
import { AgentClient } from '../../vmm/agent/client';
import { affinityPackage } from '../../bpf/programs/affinity';
import { checkKvm, machineConfig } from '../../vmm/cli-options';
import { AGENT_PORT, waitForAgent } from '../../vmm/exec';
import { AgentTimeoutError, diagnoseBounded } from '../../vmm/agent-vm';
import { Machine } from '../../vmm/machine';
import { EXIT } from '../../lib/errors';

interface Request {
  args: string[];
  /** Seconds after start at which to sample the vCPU placement (default: half of -d). */
  sampleAt?: number;
}

export interface Placement {
  vcpu: number;
  cpus: number[];
  kind: string;
  tasks: string[];
}

const log = (m: string) => process.stderr.write(`paper-run: ${m}\n`);
/** Set once stdout failed (the driver is gone): nothing more is written there. */
let stdoutGone = false;
const reply = (o: unknown) => {
  if (!stdoutGone) process.stdout.write(`${JSON.stringify(o)}\n`);
};
/** The running machine, for the stdout and signal handlers. */
let running: Machine | undefined;

// An asynchronous write error on stdout (EPIPE: paper.mjs exited) must not crash the process
// with the guest still up: stop the guest and end with status 1.
process.stdout.on('error', (e: NodeJS.ErrnoException) => {
  if (stdoutGone) return;
  stdoutGone = true;
  log(`stdout failed (${e.code ?? e.message}): the driver is gone; stopping the guest`);
  void stopAndExit(1, 'stdout closed');
});

async function stopAndExit(code: number, why: string): Promise<never> {
  if (running) {
    running.finish({ code: EXIT.POWEROFF, reason: 'poweroff', detail: why });
    await running.exited;
  }
  process.exit(code);
}

function durationOf(args: readonly string[]): number {
  const i = args.indexOf('-d');
  const d = i >= 0 ? Number(args[i + 1]) : 5;
  return Number.isFinite(d) && d > 0 ? d : 5;
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: { pin: { type: 'string' }, vcpus: { type: 'string' }, memory: { type: 'string' }, timeout: { type: 'string' }, console: { type: 'boolean' } },
    strict: true,
  });
  const pin = values.pin ?? 'none';
  const timeoutMs = Number(values.timeout ?? '600') * 1000;
  const dir = mkdtempSync(join(tmpdir(), 'tsvmm-paper-'));
  // quiet unless the console is shown: the kernel's boot log goes out through the emulated
  // UART at a few forwarded exits per byte, ~130 bytes/s in a loaded nested sandbox, which made
  // a boot take minutes (and once past the 600 s limit in CI); warnings and errors still print.
  const append = values.console ? [] : ['quiet'];
  const config = await machineConfig({ vcpus: values.vcpus ?? '2', memory: values.memory ?? '512M', pin, vsock: `cid=3,uds=${join(dir, 'vsock')}`, append }, log);
  checkKvm();
  const t0 = performance.now();
  const machine = await Machine.start(config, { console: values.console ? (b) => process.stderr.write(b) : () => {}, log });
  running = machine;
  let ended: string | undefined;
  void machine.exited.then((s) => (ended = s.detail));
  // A signal while booting: say where the guest was (below); once it answered, stop it and go.
  const booting = new AbortController();
  let signalled: NodeJS.Signals | undefined;
  const onSignal = (sig: NodeJS.Signals) => {
    signalled ??= sig;
    if (!booting.signal.aborted) booting.abort();
    else void stopAndExit(sig === 'SIGINT' ? 130 : 143, `paper-run got ${sig}`);
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  try {
    const client = new AgentClient(() => machine.vsock!.connect(AGENT_PORT));
    try {
      await waitForAgent(client, Date.now() + timeoutMs, () => ended !== undefined, booting.signal, () => machine.diagnose());
    } catch (e) {
      if (!signalled) throw e;
      throw new AgentTimeoutError(`paper-run got ${signalled} while waiting for the guest agent`, await diagnoseBounded(() => machine.diagnose()));
    } finally {
      booting.abort();
    }
    let progIds: readonly number[] = [];
    if (pin === 'hinted') {
      const r = await machine.paravirt!.load(affinityPackage());
      if (!r.ok) throw new Error(`the guest refused or failed to load 'affinity' (${r.outcome}): ${r.text}`);
      progIds = r.progIds;
    }
    reply({ ready: true, pin, vcpus: config.vcpus, bootSeconds: (performance.now() - t0) / 1000, progIds });

    const sched = machine.scheduler!;
    for await (const line of createInterface({ input: process.stdin })) {
      if (!line.trim()) continue;
      if (ended) throw new Error(`the VM ended: ${ended}`);
      const req = JSON.parse(line) as Request;
      let out = '';
      let err = '';
      let placement: Placement[] = [];
      const sampleMs = (req.sampleAt ?? durationOf(req.args) / 2) * 1000;
      const handle = client.start({
        argv: ['spscq', ...req.args],
        onStdout: (c) => (out += c.toString()),
        onStderr: (c) => (err += c.toString()),
      });
      await handle.pid;
      const timer = setTimeout(() => {
        placement = sched.table().map((r) => ({ vcpu: r.vcpu, cpus: [...r.cpus], kind: r.kind, tasks: r.tasks.map((t) => `${t.comm}[${t.tid}]`) }));
      }, sampleMs);
      const res = await handle.result.finally(() => clearTimeout(timer));
      const last = out.trim().split('\n').pop() ?? '';
      let result: unknown;
      try {
        result = JSON.parse(last);
      } catch {
        result = undefined;
      }
      if (res.exitCode === 0 && result !== undefined) reply({ ok: true, result, placement, counters: sched.counters });
      else reply({ ok: false, error: `spscq exited ${res.exitCode ?? res.signal}`, exitCode: res.exitCode, result, stdout: out, stderr: err, placement });
    }
    return 0;
  } catch (e) {
    // stderr too: it reaches the log even when stdout's reader is gone.
    log((e as Error).message);
    reply({ ready: false, ok: false, error: (e as Error).message });
    return 1;
  } finally {
    machine.finish({ code: EXIT.POWEROFF, reason: 'poweroff', detail: 'paper run finished' });
    await machine.exited;
    rmSync(dir, { recursive: true, force: true });
  }
}

main().then(
  (code) => process.exit(code),
  (e: Error) => {
    reply({ ready: false, ok: false, error: e.message });
    process.exit(1);
  },
);
