// Exit-rate benchmark: how many VM exits per second tsvmm's real vCPU path handles, against a
// C program running the same KVM_RUN loop on the same guest code (the C twin,
// tools/bench/exit-loop.c). The guest executes N port writes, then HLT. tsvmm runs it with the
// kvm/ layer and the real dist/vcpu-worker.js started through VcpuThreads, in two modes:
// `local` (the port is unclaimed, the worker answers each exit itself) and `forwarded` (a bus
// device claims the port, so every exit crosses the mailbox to this thread and back). Each
// tsvmm mode has its own C peer: `c` answers every exit on the KVM_RUN thread, `c-forwarded`
// hands every exit to a second thread through a futex and waits for the answer (the hand-off
// tsvmm's forwarded mode makes, without an event loop). Rounds alternate the order; prints
// medians and the ratio tsvmm/peer of exits per second.
//
//   node dist/bench/exits.js [--exits N] [--runs N] [--local-only] [--out FILE]
//   (inside tools/sandbox/run.sh without hardware KVM)

import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { Kvm } from '../../kvm/kvm';
import { Bus } from '../../devices/bus';
import { GuestRam } from '../../vmm/memory';
import { VcpuExit, VcpuThreads } from '../../vmm/vcpu/threads';
import { projectRoot } from '../../vmm/default-guest';
import { machine, stats } from './lib.mjs';
import { GUEST, USAGE, exitLoopCode, parseExitsArgs, toHex, twinBinary } from './exits/lib';
import { UsageError } from '../../lib/errors';

type Impl = 'c' | 'c-forwarded' | 'local' | 'forwarded';

/** The C run each tsvmm mode is measured against. */
const PEER = { local: 'c', forwarded: 'c-forwarded' } as const;

interface Run {
  round: number;
  impl: Impl;
  /** The guest's loop count. */
  n: number;
  /** Exits inside the timed window (tsvmm: those after the worker reported it started). */
  exits: number;
  seconds: number;
  exitsPerSec: number;
}

/** Generous: 10 ms per exit is ~4x a forwarded exit in the nested sandbox. */
const timeoutMs = (n: number) => 60_000 + 10 * n;

function runTwin(bin: string, n: number, forwarding: boolean): Omit<Run, 'round' | 'impl' | 'n'> {
  const code = toHex(exitLoopCode(n));
  const r = spawnSync(bin, [...(forwarding ? ['--forward'] : []), String(GUEST.memBytes), String(GUEST.loadAddr), code], { encoding: 'utf8', timeout: timeoutMs(n) });
  if (r.error || r.status !== 0) throw new Error(`C twin failed (status ${r.status}): ${r.error?.message ?? r.stderr.trim()}`);
  const j = JSON.parse(r.stdout.trim()) as { exits: number; seconds: number; exits_per_sec: number };
  if (j.exits !== n) throw new Error(`C twin counted ${j.exits} port exits, expected ${n}`);
  return { exits: j.exits, seconds: j.seconds, exitsPerSec: j.exits_per_sec };
}

/**
 * One VM on tsvmm's vCPU path. The worker starts its loop on its own, so the clock starts when
 * main learns it runs, and only the exits counted from then on are timed.
 */
async function runTsvmm(n: number, forwarded: boolean): Promise<Omit<Run, 'round' | 'impl' | 'n'>> {
  const kvm = new Kvm();
  const vm = kvm.createVm();
  const ram = new GuestRam(vm, GUEST.memBytes);
  const vcpu = vm.createVcpu(0);
  const pio = new Bus();
  let halt: (e: VcpuExit) => void = () => {};
  const ended = new Promise<VcpuExit>((r) => (halt = r));
  const threads = new VcpuThreads(pio, new Bus(), (e) => halt(e), (f) => halt({ vcpu: 0, reason: 'internal-error', detail: `device fault: ${f.error.message}` }));
  try {
    ram.memory.write(GUEST.loadAddr, exitLoopCode(n));
    const sregs = vcpu.getSregs();
    sregs.cs = { ...sregs.cs, base: 0n, selector: 0 };
    vcpu.setSregs(sregs);
    vcpu.setRegs({ rip: BigInt(GUEST.loadAddr), rflags: 2n });
    if (forwarded) pio.insert(GUEST.port, 1, 'bench-sink', { read: (_o, d) => d.fill(0), write: () => {} });

    await threads.start([vcpu], kvm.vcpuMmapSize(), { pio: pio.claims(), mmio: [] });
    const counts = () => threads.exitCounts()[0]!;
    const c0 = counts().io ?? 0;
    const t0 = performance.now();
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`no HLT after ${timeoutMs(n) / 1000} s (${counts().io ?? 0} of ${n} exits done)`)), timeoutMs(n));
    });
    const exit = await Promise.race([ended, timeout]).finally(() => clearTimeout(timer));
    const seconds = (performance.now() - t0) / 1000;
    const c = counts();
    if (exit.reason !== 'hlt') throw new Error(`vCPU ended with ${exit.reason}: ${exit.detail}`);
    if (c.io !== n) throw new Error(`the worker counted ${c.io} port exits, expected ${n}`);
    if ((c.forwarded ?? 0) !== (forwarded ? n : 0)) throw new Error(`${c.forwarded ?? 0} exits forwarded, expected ${forwarded ? n : 0}`);
    return { exits: n - c0, seconds, exitsPerSec: (n - c0) / seconds };
  } finally {
    await threads.stop();
    vcpu.close();
    vm.close();
    ram.close();
    kvm.close();
  }
}

async function main(argv: string[]): Promise<number> {
  let opts;
  try {
    opts = parseExitsArgs(argv);
  } catch (e) {
    if (!(e instanceof UsageError)) throw e;
    console.error(`exits: ${e.message}\n${USAGE}`);
    return 2;
  }
  if (opts.help) {
    console.log(USAGE);
    return 0;
  }
  const twin = twinBinary(projectRoot());
  const impls: Impl[] = opts.localOnly ? ['c', 'local'] : ['c', 'local', 'c-forwarded', 'forwarded'];
  const runs: Run[] = [];
  const count = (impl: Impl) => (impl === 'forwarded' || impl === 'c-forwarded' ? opts.forwardedExits : opts.exits);
  for (let round = 0; round < opts.runs; round++) {
    for (const impl of round % 2 ? [...impls].reverse() : impls) {
      const n = count(impl);
      const r = impl === 'c' || impl === 'c-forwarded' ? runTwin(twin, n, impl === 'c-forwarded') : await runTsvmm(n, impl === 'forwarded');
      runs.push({ round, impl, n, ...r });
      console.error(`round ${round + 1}/${opts.runs} ${impl}: ${Math.round(r.exitsPerSec)} exits/s (${r.exits} exits in ${r.seconds.toFixed(3)} s)`);
    }
  }
  const spread = Object.fromEntries(impls.map((impl) => [impl, stats(runs.filter((r) => r.impl === impl).map((r) => r.exitsPerSec))]));
  // Every mode ran --runs (>= 1) times, or the loop above threw: the medians exist.
  const med = (impl: Impl) => spread[impl]!.median!;
  const peerOf = (impl: Impl): Impl | undefined => (impl === 'local' || impl === 'forwarded' ? PEER[impl] : undefined);
  const summary = Object.fromEntries(impls.map((impl) => {
    const peer = peerOf(impl);
    return [impl, { exits: count(impl), exitsPerSec: spread[impl], ...(peer ? { peer, ratioToPeer: med(impl) / med(peer) } : {}) }];
  }));
  const label: Record<Impl, string> = {
    c: 'C twin (KVM_RUN loop)', 'c-forwarded': 'C twin, to a 2nd thread', local: 'tsvmm, answered in worker', forwarded: 'tsvmm, forwarded to main',
  };
  console.log(`exits/s, median of ${opts.runs} run(s); the guest loops N times over \`out 0x${GUEST.port.toString(16)}, al\`, then halts:`);
  for (const impl of impls) {
    const peer = peerOf(impl);
    const ratio = peer ? `  tsvmm/${peer} ${(med(impl) / med(peer)).toFixed(2)}` : '';
    console.log(`  ${label[impl].padEnd(27)} N=${String(count(impl)).padEnd(8)} ${Math.round(med(impl)).toString().padStart(9)}${ratio}`);
  }
  if (opts.out) {
    const config = { exits: opts.exits, forwardedExits: opts.forwardedExits, runs: opts.runs, guest: { ...GUEST, code: toHex(exitLoopCode(opts.exits)) }, twin };
    writeFileSync(opts.out, `${JSON.stringify({ config, env: machine(), runs, summary }, null, 2)}\n`);
  }
  return 0;
}

main(process.argv.slice(2)).then(
  (code) => (process.exitCode = code),
  (e: unknown) => {
    console.error(`exits: ${e instanceof Error ? e.message : String(e)}`);
    process.exitCode = 1;
  },
);
