// `tsvmm demo` (also `npm start`): the paper's loop end to end on a stock kernel. Boots the
// default guest with 2 vCPUs and `--pin hinted`, injects the built-in `affinity` eBPF program
// through the hypercall device, runs `taskset -c 1` on a busy loop in the guest, and prints the
// host's vCPU → CPU table before, while the guest task is pinned, and after it exits. The pin is
// held for HOLD_MS, with the thread id and the /proc line to watch it from outside, read back
// once a second meanwhile.

import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { affinityPackage } from '../bpf/programs/affinity';
import { checkKvm, machineConfig, runOptions } from './cli-options';
import { AgentVm } from './agent-vm';
import type { VcpuRow } from './scheduler/scheduler';
import { EXIT } from '../lib/errors';

const say = (m: string) => process.stdout.write(`${m}\n`);
/** How long the guest task stays pinned, so that the pin can be watched, not only reported. */
const HOLD_MS = 3000;

const statusPath = (tid: number) => `/proc/${process.pid}/task/${tid}/status`;

function threadCpus(tid: number): string {
  try {
    return /Cpus_allowed_list:\s*(\S+)/.exec(readFileSync(statusPath(tid), 'utf8'))?.[1] ?? '?';
  } catch {
    return '?';
  }
}

function printTable(title: string, rows: readonly VcpuRow[]): void {
  say(`\n${title}`);
  say('  vCPU  thread tid  host CPUs (kernel)  placement   guest tasks');
  for (const r of rows) {
    const tasks = r.tasks.map((t) => `${t.comm}[${t.tid}]`).join(' ') || '-';
    say(`  ${String(r.vcpu).padEnd(4)}  ${String(r.tid ?? '-').padEnd(10)}  ${threadCpus(r.tid ?? 0).padEnd(18)}  ${r.kind.padEnd(10)}  ${tasks}`);
  }
}

async function until(what: string, cond: () => boolean, timeoutMs: number): Promise<number> {
  const t0 = performance.now();
  while (!cond()) {
    if (performance.now() - t0 > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
  return performance.now() - t0;
}

export async function cmdDemo(args: string[]): Promise<number> {
  const { values } = parseArgs({ args, options: runOptions, strict: true });
  const vcpus = values.vcpus ?? '2';
  if (Number(vcpus) < 2) throw new Error('the demo needs at least 2 vCPUs');
  const log = (m: string) => say(`tsvmm: ${m}`);
  const config = await machineConfig({ ...values, vcpus, pin: values.pin ?? 'hinted' }, log, 'demo');
  checkKvm();
  say(`booting ${config.kernel} with ${config.vcpus} vCPUs, pin policy ${config.pin}`);
  const vm = await AgentVm.start(config, { log });
  const machine = vm.machine;
  const sched = machine.scheduler!;
  // A signal while the guest boots ends the demo with what the machine was doing (a hung boot
  // explains itself); after that, the signal's default action, as before.
  const booting = new AbortController();
  const onSignal = (sig: NodeJS.Signals) => {
    if (!booting.signal.aborted) return booting.abort();
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    process.kill(process.pid, sig);
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  try {
    const client = vm.client;
    const t0 = performance.now();
    try {
      await vm.whenReady({ signal: booting.signal });
    } finally {
      booting.abort();
    }
    say(`guest agent answered after ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    printTable('before: no guest task is pinned', sched.table());

    const pkg = affinityPackage();
    const r = await machine.paravirt!.load(pkg);
    if (!r.ok) throw new Error(`the guest refused or failed to load 'affinity' (${r.outcome}): ${r.text}`);
    say(`\ninjected eBPF package 'affinity' into the guest: prog ids ${r.progIds.join(', ')}`);

    const busy = client.start({ argv: ['taskset', '-c', '1', 'sh', '-c', 'while :; do :; done'] });
    const pid = await busy.pid;
    say(`guest: started 'taskset -c 1' busy loop, pid ${pid}`);
    const pinned = () => sched.table().some((row) => row.vcpu === 1 && row.tasks.length > 0);
    const ms = await until('the pin of vCPU 1', pinned, 10_000);
    printTable(`during: the guest pinned a task to vCPU 1 (host pinned it ${ms.toFixed(1)} ms after the task started)`, sched.table());

    const tid = sched.table().find((row) => row.vcpu === 1)!.tid!;
    say(`\nvCPU 1 is host thread ${tid} of tsvmm (pid ${process.pid}); watch its CPUs from another terminal${process.env.TSVMM_IN_SANDBOX ? ' of this (sandbox) machine' : ''}:`);
    say(`  grep Cpus_allowed_list ${statusPath(tid)}`);
    say(`holding the pin for ${HOLD_MS / 1000} s; the kernel's answer meanwhile:`);
    const held = performance.now();
    for (let t = 0; t < HOLD_MS; t += 1000) {
      await new Promise((r) => setTimeout(r, Math.min(1000, HOLD_MS - t)));
      say(`  after ${((performance.now() - held) / 1000).toFixed(1)} s: Cpus_allowed_list: ${threadCpus(tid)}`);
    }

    busy.kill('SIGKILL');
    await busy.result.catch(() => undefined);
    await until('the unpin of vCPU 1', () => !pinned(), 10_000);
    printTable('after: the task exited, vCPU 1 floats again', sched.table());
    const c = sched.counters;
    say(`\nscheduler counters: ${JSON.stringify(c)}`);
    return 0;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await vm.close({ code: EXIT.POWEROFF, reason: 'poweroff', detail: 'demo finished' });
  }
}
