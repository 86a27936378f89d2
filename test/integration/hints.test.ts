// The eBPF hint path on the stock kernel, driven in-process like a researcher's script would:
// inject `affinity`, pin guest tasks with taskset, and check what the host scheduler did to the
// real vCPU threads. Also: masks over several vCPUs, bogus and flooding hints, per-program
// hint counts with two programs loaded, a program the verifier rejects, a package the guest's
// policy refuses, and an agent that dies and restarts.

import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
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

const pool = /Cpus_allowed_list:\s*(\S+)/.exec(readFileSync('/proc/self/status', 'utf8'))![1]!;
const threadCpus = (tid: number) => /Cpus_allowed_list:\s*(\S+)/.exec(readFileSync(`/proc/self/task/${tid}/status`, 'utf8'))![1]!;

async function boot(vcpus: number, append = ''): Promise<{ m: Machine; agent: AgentClient; done: () => Promise<void> }> {
  const guest = await ensureDefaultGuest();
  const dir = mkdtempSync(join(tmpdir(), 'tsvmm-hints-'));
  const m = await Machine.start({
    kernel: guest.kernel, initrd: guest.initrd, cmdline: `${DEFAULT_CMDLINE} quiet ${append}`, vcpus, memory: 512 * MiB,
    acpi: true, vsock: { cid: 3, udsPath: join(dir, 'v.sock') }, pin: 'hinted',
  }, { console: () => {}, log: () => {} });
  const agent = new AgentClient(() => m.vsock!.connect(AGENT_PORT));
  await waitForAgent(agent, Date.now() + 600_000, () => false);
  return {
    m, agent,
    done: async () => {
      m.finish({ code: 0, reason: 'poweroff', detail: 'test done' });
      await m.exited;
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

async function until(what: string, cond: () => boolean, ms = 20_000): Promise<void> {
  const t0 = Date.now();
  while (!cond()) {
    if (Date.now() - t0 > ms) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

const sh = (agent: AgentClient, script: string) => agent.exec({ argv: ['sh', '-c', script] });

let vm: Awaited<ReturnType<typeof boot>>;

test.before(async () => {
  vm = await boot(4);
  const r = await vm.m.paravirt!.load(affinityPackage());
  assert.ok(r.ok, `affinity load: ${r.outcome} ${r.text}`);
});

test.after(async () => {
  await vm.done();
});

test('a task confined to vCPUs 1 and 2 confines both threads; others never leave the pool', async () => {
  const s = vm.m.scheduler!;
  const busy = vm.agent.start({ argv: ['taskset', '-c', '1,2', 'sleep', '30'] });
  await busy.pid;
  await until('vCPUs 1 and 2 to carry the task', () => s.table().filter((r) => r.tasks.length > 0).map((r) => r.vcpu).join() === '1,2');
  for (const row of s.table()) {
    const cpus = threadCpus(row.tid!);
    assert.ok(row.cpus.length > 0, `vCPU ${row.vcpu} has CPUs`);
    assert.is(cpus.split(',').length <= pool.split(',').length, true);
  }
  busy.kill('SIGKILL');
  await busy.result.catch(() => undefined);
  await until('the group to be released', () => s.table().every((r) => r.tasks.length === 0));
  for (const row of s.table()) assert.is(threadCpus(row.tid!), pool, `vCPU ${row.vcpu} floats again`);
});

test('bits for vCPUs that do not exist are ignored and counted; floods are rate limited', async () => {
  const s = vm.m.scheduler!;
  const ignored = s.counters.ignoredVcpuBits;
  // 0xff names vCPUs 4-7 too; the guest kernel accepts it (it ANDs with its online CPUs).
  await sh(vm.agent, 'taskset 0xff true');
  await until('the bogus bits to be counted', () => s.counters.ignoredVcpuBits > ignored);
  const limited = s.counters.rateLimited + s.counters.rateLimitedTask;
  await sh(vm.agent, 'i=0; while [ $i -lt 400 ]; do taskset -p -c $((i % 4)) $$ >/dev/null; i=$((i+1)); done');
  await until('the flood to hit the rate limit', () => s.counters.rateLimited + s.counters.rateLimitedTask > limited);
  for (const row of s.table()) assert.ok(row.cpus.every((c) => pool.includes(String(c)) || pool.includes('-')), `vCPU ${row.vcpu} inside the pool`);
});

test('with two programs loaded, hints count only against the one that produced them', async () => {
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

test('a program the verifier rejects comes back with its log', async () => {
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

test('an agent that dies is restarted and its programs are reloaded', async () => {
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

test('a package the guest policy does not allow is refused, with the reason', async () => {
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
