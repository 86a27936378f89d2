// The priority policy under host contention (docs/benchmarks.md "Guest real-time latency"): a
// guest real-time task's wake-up latency, measured in the guest by guest/rtlat (cyclictest's
// loop: SCHED_FIFO 50, pinned to vCPU 1, clock_nanosleep every --interval µs), while busy
// processes run on every host CPU, with `--prio none` and `--prio hinted` (the `prio` program
// loaded in both, so the guest side is identical and only the host's reaction differs). Runs
// alternate between the two modes; each run boots its own guest (same kernel and image).
// Prints p50/p99/max per run and the medians per mode, and writes them as JSON with --out,
// with every wake-up's lateness (rtlat -v) so the tail can be looked at sample by sample.
// Beside the guest's numbers each run records the host's side of the same interval for the
// vCPU 1 thread (/proc/self/task/TID/schedstat and status): how long it waited runnable on a
// run queue, how long it ran, and how often it was preempted — where the latency is made.
//
//   node dist/bench/prio.js [--runs N] [--samples N] [--interval US] [--load-per-cpu N]
//                           [--vcpus N] [--prio-max N] [--initrd FILE] [--out FILE]
//
// Needs KVM (hardware, or the nested sandbox: tools/sandbox/run.sh). Owns its temp dir and
// the load processes it spawns (killed after each run).

import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { AgentClient } from '../../vmm/agent/client';
import { prioPackage } from '../../bpf/programs/prio';
import { checkKvm, machineConfig } from '../../vmm/cli-options';
import { AGENT_PORT, waitForAgent } from '../../vmm/exec';
import { Machine, VCPU_NICE_ABOVE_MAIN } from '../../vmm/machine';
import { lateBy, parseRtlat } from './rtlat/output';

const log = (m: string) => process.stderr.write(`prio-bench: ${m}\n`);

interface Run {
  mode: 'none' | 'hinted';
  run: number;
  p50: number;
  p99: number;
  max: number;
  samples: number;
  /** Periods the task missed because a wake-up came later than the next one (skipped, as cyclictest does). */
  overruns: number;
  /** Wake-ups at least one period late (each skipped at least one period). */
  lateByPeriod: number;
  /** Every wake-up's lateness in µs, in the order measured. */
  latencies: number[];
  /** The vCPU thread's class the host applied while the task ran (from the actuators). */
  vcpuClass: string;
  /** The vCPU 1 thread over the measurement (host side): see threadSched. */
  host: ThreadSched;
}

/**
 * A host thread's scheduling so far: CPU time and time spent runnable but waiting for a CPU
 * (schedstat: sum_exec_runtime, run_delay, timeslices), and its context switches (status).
 */
interface ThreadSched { cpuMs: number; runDelayMs: number; slices: number; voluntary: number; involuntary: number }

function threadSched(tid: number): ThreadSched {
  const [exec, delay, slices] = readFileSync(`/proc/self/task/${tid}/schedstat`, 'utf8').trim().split(/\s+/).map(Number) as [number, number, number];
  const status = readFileSync(`/proc/self/task/${tid}/status`, 'utf8');
  const field = (name: string) => Number(new RegExp(`^${name}:\\s*(\\d+)`, 'm').exec(status)?.[1] ?? NaN);
  return { cpuMs: exec / 1e6, runDelayMs: delay / 1e6, slices, voluntary: field('voluntary_ctxt_switches'), involuntary: field('nonvoluntary_ctxt_switches') };
}

const since = (a: ThreadSched, b: ThreadSched): ThreadSched => ({
  cpuMs: b.cpuMs - a.cpuMs, runDelayMs: b.runDelayMs - a.runDelayMs, slices: b.slices - a.slices, voluntary: b.voluntary - a.voluntary, involuntary: b.involuntary - a.involuntary,
});

/**
 * The busy processes, at the vCPU threads' own nice value (tsvmm runs them VCPU_NICE_ABOVE_MAIN
 * nicer than its main thread, and these share our autogroup): with `--prio none` the vCPU 1
 * thread competes with them at equal weight, as a guest's vCPU would with host work of its rank.
 */
function startLoad(n: number): ChildProcess[] {
  return Array.from({ length: n }, () => spawn('nice', ['-n', String(VCPU_NICE_ABOVE_MAIN), 'sh', '-c', 'while :; do :; done'], { stdio: 'ignore' }));
}

async function stopLoad(procs: ChildProcess[]): Promise<void> {
  await Promise.all(procs.map((p) => new Promise<void>((r) => {
    if (p.exitCode !== null || p.signalCode !== null) return r();
    p.once('exit', () => r());
    p.kill('SIGKILL');
  })));
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.floor((s.length - 1) / 2)]! : NaN;
};

async function oneRun(mode: Run['mode'], run: number, o: { samples: number; interval: number; load: number; vcpus: number; prioMax: number; initrd?: string }): Promise<Run> {
  const dir = mkdtempSync(join(tmpdir(), 'tsvmm-prio-bench-'));
  const base = await machineConfig({ vcpus: String(o.vcpus), memory: '512M', append: ['quiet'], initrd: o.initrd }, log);
  const m = await Machine.start({ ...base, vsock: { cid: 3, udsPath: join(dir, 'v.sock') }, prio: mode, prioMax: o.prioMax }, { console: () => {}, log: () => {} });
  let load: ChildProcess[] = [];
  try {
    const agent = new AgentClient(() => m.vsock!.connect(AGENT_PORT));
    await waitForAgent(agent, Date.now() + 600_000, () => false, undefined, () => m.diagnose());
    const r = await m.paravirt!.load(prioPackage());
    if (!r.ok) throw new Error(`prio load: ${r.outcome} ${r.text}`);
    load = startLoad(o.load);
    await new Promise((res) => setTimeout(res, 1000)); // let the load settle on every CPU
    let vcpuClass = '';
    const sample = setInterval(() => {
      const s = m.actuators!.table()[1]?.sched;
      if (s && s.policy !== 'other') vcpuClass = `${s.policy} ${s.priority}`;
    }, 200);
    let out = '';
    const tid = m.vcpuTids[1]!;
    const before = threadSched(tid);
    const res = await agent.exec({ argv: ['rtlat', '-v', 'cpu:1', 'fifo:50', `measure:${o.samples}:${o.interval}`], onStdout: (b) => (out += b.toString()), onStderr: (b) => (out += b.toString()) });
    clearInterval(sample);
    const host = since(before, threadSched(tid));
    if (res.exitCode !== 0) throw new Error(`rtlat failed (${res.exitCode}): ${out.slice(-2000)}`);
    const rt = parseRtlat(out, true);
    return { mode, run, samples: rt.samples, p50: rt.p50, p99: rt.p99, max: rt.max, overruns: rt.overruns, lateByPeriod: lateBy(rt.latencies, o.interval), latencies: rt.latencies, vcpuClass: vcpuClass || 'other', host };
  } finally {
    await stopLoad(load);
    m.finish({ code: 0, reason: 'poweroff', detail: 'bench run done' });
    await m.exited;
    rmSync(dir, { recursive: true, force: true });
  }
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    strict: true,
    options: {
      runs: { type: 'string' }, samples: { type: 'string' }, interval: { type: 'string' }, 'load-per-cpu': { type: 'string' },
      vcpus: { type: 'string' }, 'prio-max': { type: 'string' }, initrd: { type: 'string' }, out: { type: 'string' },
    },
  });
  const num = (v: string | undefined, d: number) => (v === undefined ? d : Number(v));
  const o = {
    runs: num(values.runs, 3), samples: num(values.samples, 2000), interval: num(values.interval, 1000),
    load: num(values['load-per-cpu'], 2) * availableParallelism(), vcpus: num(values.vcpus, 2), prioMax: num(values['prio-max'], 10),
  };
  for (const [k, v] of Object.entries(o)) if (!Number.isInteger(v) || v < 1) throw new Error(`--${k} must be a positive integer`);
  const opts = { ...o, initrd: values.initrd };
  checkKvm();
  log(`${o.runs} run(s) per mode, ${o.samples} wake-ups every ${o.interval} µs, ${o.load} busy host processes, ${o.vcpus} vCPUs`);
  const runs: Run[] = [];
  for (let i = 0; i < o.runs; i++) {
    for (const mode of ['none', 'hinted'] as const) {
      const r = await oneRun(mode, i, opts);
      const h = r.host;
      log(`run ${i} --prio ${mode}: p50 ${r.p50} µs, p99 ${r.p99} µs, max ${r.max} µs, ${r.overruns} overruns, ${r.lateByPeriod} wake-ups a period late or more (vCPU 1 thread: ${r.vcpuClass}; over the measurement ran ${h.cpuMs.toFixed(0)} ms, waited runnable ${h.runDelayMs.toFixed(0)} ms in ${h.slices} slices, ${h.involuntary} preemptions, ${h.voluntary} sleeps)`);
      runs.push(r);
    }
  }
  const summary = (['none', 'hinted'] as const).map((mode) => {
    const rs = runs.filter((r) => r.mode === mode);
    return { mode, p50: median(rs.map((r) => r.p50)), p99: median(rs.map((r) => r.p99)), max: median(rs.map((r) => r.max)) };
  });
  const [none, hinted] = summary as [typeof summary[0], typeof summary[0]];
  process.stdout.write('| --prio | p50 µs (median of runs) | p99 µs | max µs |\n|---|---:|---:|---:|\n');
  for (const s of summary) process.stdout.write(`| ${s.mode} | ${s.p50} | ${s.p99} | ${s.max} |\n`);
  process.stdout.write(`hinted/none p99: ${(hinted.p99 / none.p99).toFixed(3)}, p50: ${(hinted.p50 / none.p50).toFixed(3)}\n`);
  if (values.out) writeFileSync(values.out, JSON.stringify({ options: o, runs, summary }, null, 2) + '\n');
  return 0;
}

main().then((c) => process.exit(c), (e: Error) => {
  log(e.stack ?? e.message);
  process.exit(1);
});
