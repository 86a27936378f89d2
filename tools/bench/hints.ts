// Hint path benchmark: boots the default guest (2 vCPUs, --pin hinted), injects `affinity`,
// then measures (1) hint-to-pin latency — from the host sending the guest a `taskset` command
// to the host scheduler having re-pinned the vCPU thread (an upper bound of the guest
// sched_setaffinity → host sched_setaffinity path: it includes the agent's exec round trip,
// which the same run measures alone and subtracts), (2) VM exits per hint (HINTS hypercalls
// per hint record), and (3) hint records per second the path sustains under a taskset flood.
// Prints a summary; writes every sample as JSON with --out FILE.
//
//   node dist/bench/hints.js [--samples N] [--flood N] [--out FILE]   (inside tools/sandbox/run.sh without hardware KVM)

import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
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
const pct = (xs: number[], p: number) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor((xs.length * p) / 100))]!;

const guest = await ensureDefaultGuest();
const dir = mkdtempSync(join(tmpdir(), 'tsvmm-bench-hints-'));
const m = await Machine.start({
  kernel: guest.kernel, initrd: guest.initrd, cmdline: `${DEFAULT_CMDLINE} quiet`, vcpus: 2, memory: 512 * MiB,
  acpi: true, vsock: { cid: 3, udsPath: join(dir, 'v.sock') }, pin: 'hinted',
}, { console: () => {}, log: () => {} });
try {
  const agent = new AgentClient(() => m.vsock!.connect(AGENT_PORT));
  await waitForAgent(agent, Date.now() + 600_000, () => false);
  const load = await m.paravirt!.load(affinityPackage());
  if (!load.ok) throw new Error(`affinity: ${load.text}`);
  const s = m.scheduler!;
  const dev = m.paravirt!.device;

  // Baseline: the exec round trip of a command that makes no hint.
  const base: number[] = [];
  for (let i = 0; i < samples; i++) {
    const t0 = performance.now();
    await agent.exec({ argv: ['true'] });
    base.push(performance.now() - t0);
  }
  // Pin latency: applied counter moves when the host re-pins after the hint.
  const lat: number[] = [];
  for (let i = 0; i < samples; i++) {
    const applied = s.counters.applied;
    const t0 = performance.now();
    const run = agent.exec({ argv: ['taskset', '-c', String(i % 2), 'sleep', '0.3'] });
    while (s.counters.applied === applied) await new Promise((r) => setImmediate(r));
    lat.push(performance.now() - t0);
    await run;
  }
  // Throughput and exits per hint: a flood of setaffinity calls in the guest.
  const c0 = dev.counters();
  const t0 = performance.now();
  await agent.exec({ argv: ['sh', '-c', `i=0; while [ $i -lt ${flood} ]; do taskset -p -c $((i % 2)) $$ >/dev/null; i=$((i+1)); done`] });
  const secs = (performance.now() - t0) / 1000;
  const c1 = dev.counters();
  const records = c1.hintRecords - c0.hintRecords;
  const exits = c1.calls.HINTS - c0.calls.HINTS;
  const result = {
    samples,
    execRoundTripMs: { p50: pct(base, 50), p90: pct(base, 90) },
    hintToPinUpperBoundMs: { p50: pct(lat, 50), p90: pct(lat, 90), max: Math.max(...lat) },
    hintToPinMinusExecMs: { p50: pct(lat, 50) - pct(base, 50) },
    flood: { records, seconds: secs, recordsPerSecond: records / secs, hintHypercalls: exits, exitsPerHint: exits / Math.max(1, records) },
    originalPollingPeriodMs: 50,
  };
  console.log(JSON.stringify(result, null, 2));
  if (values.out) writeFileSync(values.out, JSON.stringify({ ...result, base, lat }, null, 2));
} finally {
  m.finish({ code: 0, reason: 'poweroff', detail: 'bench done' });
  await m.exited;
  rmSync(dir, { recursive: true, force: true });
}
