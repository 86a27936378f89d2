// The eBPF hint path on the stock kernel, driven in-process like a researcher's script would:
// inject `affinity` into a 4-vCPU guest, pin guest tasks with taskset, and read what the host
// scheduler did to the real vCPU threads (their Cpus_allowed_list in /proc). Masks of one and
// of two vCPUs; a release is only checked after the pin itself was seen. Also: bogus and
// flooding hints, per-program hint counts with two programs loaded, a program the verifier
// rejects, a package the guest's policy refuses, and an agent that dies and restarts.
// Needs 4 host CPUs so that a dedicated CPU leaves others to float on: tools/test.mjs gives it
// a 4-CPU sandbox.
// runs: sandbox --smp 4

import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Machine } from '../../vmm/machine';
import { DEFAULT_CMDLINE } from '../../vmm/config';
import { MiB } from '../../vmm/layout';
import { ensureDefaultGuest } from '../../vmm/default-guest';
import { AgentClient } from '../../vmm/agent/client';
import { AGENT_PORT, waitForAgent } from '../../vmm/exec';
import { affinityPackage } from '../../bpf/programs/affinity';
import { Asm, r0, r1 } from '../../bpf/asm';
import { programFromAsm, type Package } from '../../bpf/package';
import { needs } from '../needs';
import { cpusAllowed } from '../procfs';
import { until } from './helpers';

const VCPUS = 4;
const pool = cpusAllowed();
const hintTest = needs(pool.length >= VCPUS ? undefined : `needs ${VCPUS} host CPUs, this one has ${pool.length} (tools/test.mjs runs it in a ${VCPUS}-CPU sandbox)`);

async function boot(vcpus: number, append = ''): Promise<{ m: Machine; agent: AgentClient; done: () => Promise<void> }> {
  const guest = await ensureDefaultGuest();
  const dir = mkdtempSync(join(tmpdir(), 'tsvmm-hints-'));
  const m = await Machine.start({
    kernel: guest.kernel, initrd: guest.initrd, cmdline: `${DEFAULT_CMDLINE} quiet ${append}`, vcpus, memory: 512 * MiB,
    acpi: true, vsock: { cid: 3, udsPath: join(dir, 'v.sock') }, pin: 'hinted',
  }, { console: () => {}, log: () => {} });
  const agent = new AgentClient(() => m.vsock!.connect(AGENT_PORT));
  await waitForAgent(agent, Date.now() + 600_000, () => false, undefined, () => m.diagnose());
  return {
    m, agent,
    done: async () => {
      m.finish({ code: 0, reason: 'poweroff', detail: 'test done' });
      await m.exited;
      rmSync(dir, { recursive: true, force: true });
    },
  };
}


/** What the kernel says each vCPU thread may run on, vCPU by vCPU. */
function realAffinity(m: Machine): number[][] {
  return m.scheduler!.table().map((row) => cpusAllowed(row.tid!));
}

const same = (a: readonly number[], b: readonly number[]) => a.length === b.length && a.every((x, i) => x === b[i]);
const minus = (a: readonly number[], b: readonly number[]) => a.filter((x) => !b.includes(x));
const show = (rows: number[][]) => rows.map((c, v) => `vCPU ${v}: ${c.join(',')}`).join('; ');

/**
 * Runs `taskset -c <vcpus> sleep 60` in the guest and waits until the kernel shows the pin on
 * the host threads: the vCPUs named get `want` CPUs between them. Returns the real affinity
 * then, and a function that kills the task and waits until every thread floats over the pool.
 */
async function pinAndSee(vm: { m: Machine; agent: AgentClient }, vcpus: number[], want: number) {
  const task = vm.agent.start({ argv: ['taskset', '-c', vcpus.join(','), 'sleep', '60'] });
  await task.pid;
  let rows: number[][] = [];
  await until(`the real affinity of vCPU(s) ${vcpus.join(',')} to narrow to ${want} CPU(s)`, () => {
    rows = realAffinity(vm.m);
    return vcpus.every((v) => rows[v]!.length === want);
  });
  const release = async () => {
    task.kill('SIGKILL');
    await task.result.catch(() => undefined);
    await until('every vCPU thread to float over the whole pool again', () => realAffinity(vm.m).every((c) => same(c, pool)));
  };
  return { rows, release };
}

const sh = (agent: AgentClient, script: string) => agent.exec({ argv: ['sh', '-c', script] });

let vm: Awaited<ReturnType<typeof boot>>;

test.before(async () => {
  if (pool.length < VCPUS) return;
  vm = await boot(VCPUS);
  const r = await vm.m.paravirt!.load(affinityPackage());
  assert.ok(r.ok, `affinity load: ${r.outcome} ${r.text}`);
});

test.after(async () => {
  await vm?.done();
});

hintTest('a task pinned to vCPU 1: its thread gets one CPU of its own, the others float over the rest; released on exit', async () => {
  const before = realAffinity(vm.m);
  assert.ok(before.every((c) => same(c, pool)), `before any hint every thread floats over the pool ${pool}: ${show(before)}`);
  const { rows, release } = await pinAndSee(vm, [1], 1);
  const own = rows[1]!;
  assert.ok(pool.includes(own[0]!), `vCPU 1's CPU ${own} is in the pool ${pool}`);
  for (const v of [0, 2, 3]) assert.equal(rows[v], minus(pool, own), `vCPU ${v} floats over the pool without vCPU 1's CPU (${show(rows)})`);
  // The scheduler's own table says the same as the kernel.
  assert.equal(vm.m.scheduler!.table().map((r) => [...r.cpus]), rows);
  await release();
});

hintTest('a task confined to vCPUs 1 and 2: both threads share two CPUs of their own, 0 and 3 float over the other two; released on exit', async () => {
  const { rows, release } = await pinAndSee(vm, [1, 2], 2);
  const group = rows[1]!;
  assert.equal(rows[2], group, `vCPUs 1 and 2 float over the same two CPUs (${show(rows)})`);
  assert.ok(group.every((c) => pool.includes(c)), `the group's CPUs ${group} are in the pool ${pool}`);
  for (const v of [0, 3]) assert.equal(rows[v], minus(pool, group), `vCPU ${v} floats over the pool without the group's CPUs (${show(rows)})`);
  await release();
});

hintTest('bits for vCPUs that do not exist are ignored and counted; floods are rate limited', async () => {
  const s = vm.m.scheduler!;
  const ignored = s.counters.ignoredVcpuBits;
  // 0xff names vCPUs 4-7 too; the guest kernel accepts it (it ANDs with its online CPUs).
  await sh(vm.agent, 'taskset 0xff true');
  await until('the bogus bits to be counted', () => s.counters.ignoredVcpuBits > ignored);
  const limited = s.counters.rateLimited + s.counters.rateLimitedTask;
  await sh(vm.agent, 'i=0; while [ $i -lt 400 ]; do taskset -p -c $((i % 4)) $$ >/dev/null; i=$((i+1)); done');
  await until('the flood to hit the rate limit', () => s.counters.rateLimited + s.counters.rateLimitedTask > limited);
  for (const [v, cpus] of realAffinity(vm.m).entries()) assert.ok(cpus.length > 0 && cpus.every((c) => pool.includes(c)), `vCPU ${v}'s thread may run on ${cpus}, outside the pool ${pool}`);
});

hintTest('with two programs loaded, hints count only against the one that produced them', async () => {
  const pv = vm.m.paravirt!;
  // Attached to the same tracepoint as affinity's UNPIN program, but without a ring buffer.
  const quiet: Package = {
    name: 'quiet', license: 'GPL', maps: [], hintMap: null,
    programs: [programFromAsm('quiet', { kind: 'tracepoint', target: 'sched/sched_process_exit' }, new Asm().mov(r0, 0).exit().assemble(), [])],
  };
  const q = await pv.load(quiet);
  assert.ok(q.ok, `quiet load: ${q.outcome} ${q.text}`);
  const affinity = [...pv.loaded.values()].find((p) => p.name === 'affinity')!;
  const before = affinity.hints;
  await sh(vm.agent, 'taskset -c 1 true');
  await until('affinity to count the hint', () => affinity.hints > before);
  assert.is(pv.loaded.get(q.handle)!.hints, 0, 'the quiet program produced no hints');
  assert.is(pv.device.counters().hintUnattributed, 0);
  assert.ok((await pv.unload(q.handle)).ok);
});

hintTest('a program the verifier rejects comes back with its log', async () => {
  const maps = affinityPackage().maps.map((m) => ({ ...m }));
  // Reads r1's pointee without a null check on a map lookup result: the verifier must refuse.
  const bad: Package = {
    name: 'bad', license: 'GPL', maps, hintMap: 0,
    programs: [programFromAsm('bad', { kind: 'tracepoint', target: 'sched/sched_process_exit' },
      new Asm().load('u64', r0, r1, 0).mov(r1, 0).load('u64', r0, r1, 0).exit().assemble(), maps)],
  };
  const r = await vm.m.paravirt!.load(bad);
  assert.is(r.ok, false);
  assert.is(r.outcome, 'VERIFIER');
  assert.match(r.text, /R1|invalid|access/);
});

hintTest('an agent that dies is restarted and its programs are reloaded', async () => {
  const dev = vm.m.paravirt!.device;
  const before = dev.agent!;
  await sh(vm.agent, `kill -9 ${before.pid}`);
  await until('a new agent session', () => (dev.agent?.session ?? 0) > before.session, 60_000);
  await until('affinity to be loaded again', () => [...vm.m.paravirt!.loaded.values()].some((p) => p.name === 'affinity'), 60_000);
  const s = vm.m.scheduler!;
  const pins = s.counters.pins;
  const busy = vm.agent.start({ argv: ['taskset', '-c', '3', 'sleep', '30'] });
  await until('pins to work again', () => s.counters.pins > pins);
  busy.kill('SIGKILL');
  await busy.result.catch(() => undefined);
});

hintTest('a package the guest policy does not allow is refused, with the reason', async () => {
  const other = await boot(2, `tsvmm.allow=${'0'.repeat(64)}`);
  try {
    const r = await other.m.paravirt!.load(affinityPackage());
    assert.is(r.ok, false);
    assert.is(r.outcome, 'REFUSED');
    assert.match(r.text, /digest|allow/i);
  } finally {
    await other.done();
  }
});

test.run();
