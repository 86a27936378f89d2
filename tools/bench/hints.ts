// Hint path benchmark: boots the default guest (2 vCPUs, --pin hinted), injects `affinity`, and
// measures (1) the hint latency per sample: from the moment the guest's sched_setaffinity
// returned (read in the guest right after the call, by guest/hint-probe.c) to the moment the
// host's own sched_setaffinity of the vCPU thread returned for that same guest task (matched
// by its task id); the guest clock is mapped onto the host's through one clock exchange
// (the one with the smallest round trip of a few), whose half round trip bounds the error.
// (2) VM exits per hint (HINTS hypercalls per hint record) and (3) hint records per second the
// path sustains under a taskset flood. Prints a summary; writes every sample as JSON with --out.
//
//   node dist/bench/hints.js [--samples N] [--flood N] [--out FILE]   (inside tools/sandbox/run.sh without hardware KVM)

import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { parseArgs } from 'node:util';
import { Machine } from '../../vmm/machine';
import { DEFAULT_CMDLINE } from '../../vmm/config';
import { MiB } from '../../vmm/layout';
import { ensureDefaultGuest } from '../../vmm/default-guest';
import { AgentClient } from '../../vmm/agent/client';
import { AGENT_PORT, waitForAgent } from '../../vmm/exec';
import { affinityPackage } from '../../bpf/programs/affinity';

const { values } = parseArgs({ options: { samples: { type: 'string' }, flood: { type: 'string' }, out: { type: 'string' } } });
const samples = Number(values.samples ?? 20);
const flood = Number(values.flood ?? 2000);
for (const [name, n] of [['--samples', samples], ['--flood', flood]] as const) {
  if (!Number.isInteger(n) || n < 1) {
    console.error(`hints: ${name} must be a positive integer`);
    process.exit(2);
  }
}
const pct = (xs: number[], p: number) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.ceil((xs.length * p) / 100) - 1)]!;
const EXCHANGES = 5;
const WAIT_MS = 30_000;

/** Resolves with the first value `take` accepts; fails after WAIT_MS naming `what`. */
function waitFor<T>(what: string, subscribe: (take: (v: T) => void) => () => void): Promise<T> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      stop();
      reject(new Error(`hints: no ${what} within ${WAIT_MS} ms`));
    }, WAIT_MS);
    const stop = subscribe((v) => {
      clearTimeout(timer);
      stop();
      resolve(v);
    });
  });
}

// Host side: the scheduler logs each decision, naming the guest task that caused it, right
// before it applies it with sched_setaffinity on this thread; a microtask queued from the log
// line runs once that synchronous apply has returned.
const applied = new Map<number, number>();
const appliedWaiters = new Set<(tid: number) => void>();
function onLog(line: string): void {
  // One re-plan per event-loop turn: its line names the turn's first task changes ("; ").
  const m = /^scheduler: vcpu \d+: \S+ -> \S+ \(.*?\) after (.*)$/.exec(line);
  if (!m) return;
  for (const [, t] of m[1]!.matchAll(/task (\d+) \(.*?\) pinned to vCPUs /g)) {
    const tid = Number(t);
    queueMicrotask(() => {
      if (!applied.has(tid)) applied.set(tid, performance.now());
      for (const w of appliedWaiters) w(tid);
    });
  }
}

const guest = await ensureDefaultGuest();
const dir = mkdtempSync(join(tmpdir(), 'tsvmm-bench-hints-'));
const m = await Machine.start({
  kernel: guest.kernel, initrd: guest.initrd, cmdline: `${DEFAULT_CMDLINE} quiet`, vcpus: 2, memory: 512 * MiB,
  acpi: true, vsock: { cid: 3, udsPath: join(dir, 'v.sock') }, pin: 'hinted',
}, { console: () => {}, log: onLog });
try {
  const agent = new AgentClient(() => m.vsock!.connect(AGENT_PORT));
  await waitForAgent(agent, Date.now() + 600_000, () => false, undefined, () => m.diagnose());
  const load = await m.paravirt!.load(affinityPackage());
  if (!load.ok) throw new Error(`affinity: ${load.text}`);
  const s = m.scheduler!;
  const dev = m.paravirt!.device;

  // The guest end: one line per command, one line back (guest/hint-probe.c).
  const input = new PassThrough();
  const lineWaiters = new Set<(l: string) => void>();
  let partial = '';
  const probe = agent.start({
    argv: ['hint-probe'],
    stdin: input,
    onStdout: (c) => {
      partial += c.toString();
      for (let nl = partial.indexOf('\n'); nl >= 0; nl = partial.indexOf('\n')) {
        const l = partial.slice(0, nl);
        partial = partial.slice(nl + 1);
        for (const w of lineWaiters) w(l);
      }
    },
  });
  const ask = (cmd: string, prefix: string) =>
    waitFor<string>(`'${prefix}' line from hint-probe`, (take) => {
      const w = (l: string) => l.startsWith(prefix) && take(l);
      lineWaiters.add(w);
      input.write(`${cmd}\n`);
      return () => lineWaiters.delete(w);
    });

  // Clock exchange: guest CLOCK_MONOTONIC (ns) ↔ host performance.now() (ms), taken at the
  // midpoint of the round trip with the smallest round trip.
  let exchange = { offsetMs: 0, rttMs: Number.POSITIVE_INFINITY };
  for (let i = 0; i < EXCHANGES; i++) {
    const t0 = performance.now();
    const l = await ask('clock', 'clock ');
    const t1 = performance.now();
    const guestMs = Number(BigInt(l.split(' ')[1]!)) / 1e6;
    if (t1 - t0 < exchange.rttMs) exchange = { offsetMs: guestMs - (t0 + t1) / 2, rttMs: t1 - t0 };
  }

  const perSample: { tid: number; vcpu: number; latencyMs: number }[] = [];
  for (let i = 0; i < samples; i++) {
    const vcpu = i % 2;
    const hostApplied = (tid: number) =>
      applied.has(tid) ? Promise.resolve(applied.get(tid)!) : waitFor<number>(`host pin for task ${tid}`, (take) => {
        const w = (t: number) => t === tid && take(applied.get(tid)!);
        appliedWaiters.add(w);
        return () => appliedWaiters.delete(w);
      });
    const [, tidText, , nsText] = (await ask(`pin ${vcpu}`, 'pinned ')).split(' ');
    const tid = Number(tidText);
    const hostMs = await hostApplied(tid);
    perSample.push({ tid, vcpu, latencyMs: hostMs - (Number(BigInt(nsText!)) / 1e6 - exchange.offsetMs) });
    // The sample's thread waited, pinned, until the host pinned too: end it, and wait for the
    // host to release it before the next one.
    await ask('release', 'released');
    const released = performance.now();
    while (s.table().some((r) => r.tasks.length > 0)) {
      if (performance.now() - released > WAIT_MS) throw new Error(`hints: task ${tid} was never released`);
      await new Promise((r) => setTimeout(r, 1));
    }
  }
  input.end();
  await probe.result;

  // Throughput and exits per hint: a flood of setaffinity calls in the guest.
  const c0 = dev.counters();
  const t0 = performance.now();
  await agent.exec({ argv: ['sh', '-c', `i=0; while [ $i -lt ${flood} ]; do taskset -p -c $((i % 2)) $$ >/dev/null; i=$((i+1)); done`] });
  const secs = (performance.now() - t0) / 1000;
  const c1 = dev.counters();
  const records = c1.hintRecords - c0.hintRecords;
  const exits = c1.calls.HINTS - c0.calls.HINTS;
  const lat = perSample.map((x) => x.latencyMs);
  const result = {
    samples,
    latencyMs: { n: lat.length, p50: pct(lat, 50), p95: pct(lat, 95), min: Math.min(...lat), max: Math.max(...lat) },
    clockExchange: { rttMs: exchange.rttMs, errorBoundMs: exchange.rttMs / 2 },
    flood: { records, seconds: secs, recordsPerSecond: records / secs, hintHypercalls: exits, exitsPerHint: exits / Math.max(1, records) },
    prototypePollingPeriodMs: 50,
  };
  console.log(JSON.stringify(result, null, 2));
  if (values.out) writeFileSync(values.out, JSON.stringify({ ...result, perSample }, null, 2));
} finally {
  m.finish({ code: 0, reason: 'poweroff', detail: 'bench done' });
  await m.exited;
  rmSync(dir, { recursive: true, force: true });
}
