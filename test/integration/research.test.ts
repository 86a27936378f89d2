// The research platform on the stock kernel, one 3-vCPU guest for every test: the `prio`
// policy read from the real vCPU threads (procfs `stat`: policy and rt_priority) before, during
// and after a guest real-time task (policy change, new priority, migration, fork, exit), every
// PRIO record on the hint stream with its vCPU and source, KVM halt polling seen in KVM's own
// statistics, a paused vCPU's thread asleep and its exits frozen, and the affinity program's
// completions (tasks pinned before injection, pins inherited at fork, a vCPU released only with
// its last pinned task) and host writes into a guest program's map.

import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Machine, VCPU_NICE_ABOVE_MAIN } from '../../vmm/machine';
import { DEFAULT_CMDLINE } from '../../vmm/config';
import { MiB } from '../../vmm/layout';
import { ensureDefaultGuest } from '../../vmm/default-guest';
import { AgentClient } from '../../vmm/agent/client';
import { AGENT_PORT, waitForAgent } from '../../vmm/exec';
import { prioPackage } from '../../bpf/programs/prio';
import { affinityPackage } from '../../bpf/programs/affinity';
import type { StreamEntry } from '../../vmm/hints/stream';

/** policy and rt_priority of a host thread, from /proc/self/task/TID/stat (fields 41 and 40). */
function threadClass(tid: number): { policy: number; rtprio: number } {
  const stat = readFileSync(`/proc/self/task/${tid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' '); // f[0] is field 3 (state)
  return { policy: Number(f[41 - 3]), rtprio: Number(f[40 - 3]) };
}
/** The nice value of a host thread (/proc/self/task/TID/stat field 19). */
const threadNice = (tid: number) => {
  const stat = readFileSync(`/proc/self/task/${tid}/stat`, 'utf8');
  return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19 - 3]);
};
const threadState = (tid: number) => readFileSync(`/proc/self/task/${tid}/stat`, 'utf8').split(') ')[1]!.split(' ')[0]!;
const OTHER = { policy: 0, rtprio: 0 };
const fifo = (rtprio: number) => ({ policy: 1, rtprio });

async function until(what: string, cond: () => boolean, ms = 60_000): Promise<void> {
  const t0 = Date.now();
  while (!cond()) {
    if (Date.now() - t0 > ms) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

let m: Machine;
let agent: AgentClient;
let dir: string;
let tids: number[];
const entries: StreamEntry[] = [];

test.before(async () => {
  const guest = await ensureDefaultGuest();
  dir = mkdtempSync(join(tmpdir(), 'tsvmm-research-'));
  m = await Machine.start({
    kernel: guest.kernel, initrd: guest.initrd, cmdline: `${DEFAULT_CMDLINE} quiet`, vcpus: 3, memory: 512 * MiB,
    acpi: true, vsock: { cid: 3, udsPath: join(dir, 'v.sock') }, pin: 'hinted', prio: 'hinted',
  }, { console: () => {}, log: () => {} });
  agent = new AgentClient(() => m.vsock!.connect(AGENT_PORT));
  await waitForAgent(agent, Date.now() + 600_000, () => false, undefined, () => m.diagnose());
  tids = m.vcpuTids;
  // Everything the hint stream carries, as a reader of GET /hints?follow=1 would get it.
  m.paravirt!.stream.subscribe({ write: (l) => (entries.push(JSON.parse(l) as StreamEntry), true), onDrain: () => {}, onClose: () => {} });
});

test.after(async () => {
  m.finish({ code: 0, reason: 'poweroff', detail: 'test done' });
  await m.exited;
  rmSync(dir, { recursive: true, force: true });
});

const sh = (script: string) => agent.exec({ argv: ['sh', '-c', script] });
const cue = async (name: string) => {
  const r = await sh(`touch /tmp/${name}`);
  assert.is(r.exitCode, 0);
};

const pool = /Cpus_allowed_list:\s*(\S+)/.exec(readFileSync('/proc/self/status', 'utf8'))![1]!;
const threadCpus = (tid: number) => /Cpus_allowed_list:\s*(\S+)/.exec(readFileSync(`/proc/self/task/${tid}/status`, 'utf8'))![1]!;
const tasksOn = (vcpu: number) => m.scheduler!.table()[vcpu]!.tasks.map((t) => t.tid).sort((a, b) => a - b);

test('tasks pinned or made real time before injection are reported when the programs load', async () => {
  const pinned = agent.start({ argv: ['taskset', '-c', '2', 'sleep', '600'] });
  const pinnedPid = await pinned.pid;
  let out = '';
  const rt = agent.start({ argv: ['rtlat', 'cpu:0', 'fifo:20', 'wait:/tmp/q1'], onStdout: (b) => (out += b.toString()) });
  await until('the real-time task to be set up', () => out.includes('done fifo:20'));
  assert.equal(threadClass(tids[0]!), OTHER, 'nothing is loaded yet');
  const a = await m.paravirt!.load(affinityPackage());
  assert.ok(a.ok, `affinity load: ${a.outcome} ${a.text}`);
  assert.match(a.text, /replayed [1-9]\d* affinity/);
  await until('vCPU 2 to carry the task pinned before injection', () => tasksOn(2).includes(pinnedPid));
  await until('vCPU 2 thread to be dedicated', () => threadCpus(tids[2]!) !== pool);
  const p = await m.paravirt!.load(prioPackage());
  assert.ok(p.ok, `prio load: ${p.outcome} ${p.text}`);
  assert.match(p.text, /replayed \d+ affinity and [1-9]\d* real-time/);
  await until('vCPU 0 to be boosted for the real-time task started before injection', () => threadClass(tids[0]!).policy === 1);
  assert.equal(threadClass(tids[0]!), fifo(10));
  pinned.kill('SIGKILL');
  await pinned.result.catch(() => undefined);
  await cue('q1');
  await rt.result;
  await until('both to be released', () => tasksOn(2).length === 0 && threadClass(tids[0]!).policy === 0);
  await until('vCPU 2 to float again', () => threadCpus(tids[2]!) === pool);
});

test('a child inherits its parent\'s pin; the vCPU is released only when no pinned task remains', async () => {
  let out = '';
  const parent = agent.start({ argv: ['taskset', '-c', '1', 'sh', '-c', 'sleep 600 & echo child $!; wait'], onStdout: (b) => (out += b.toString()) });
  const parentPid = await parent.pid;
  await until('the child', () => /child \d+/.test(out));
  const child = Number(/child (\d+)/.exec(out)![1]);
  await until('parent and child on vCPU 1', () => tasksOn(1).join() === [parentPid, child].sort((x, y) => x - y).join());
  assert.ok(entries.some((e) => e.name === 'AFFINITY' && (e.fields as { tid: number }).tid === child), 'the child got its own AFFINITY record');
  const dedicated = threadCpus(tids[1]!);
  assert.is.not(dedicated, pool);
  // Only the parent: the agent's kill would signal its whole process group, the child included.
  assert.is((await sh(`kill -9 ${parentPid}`)).exitCode, 0);
  await parent.result.catch(() => undefined);
  await until('the parent to be unpinned', () => tasksOn(1).join() === String(child));
  await new Promise((r) => setTimeout(r, 500));
  assert.is(threadCpus(tids[1]!), dedicated, 'the child still holds vCPU 1');
  assert.is((await sh(`kill ${child}`)).exitCode, 0);
  await until('vCPU 1 to be released with its last pinned task', () => tasksOn(1).length === 0);
  await until('vCPU 1 to float again', () => threadCpus(tids[1]!) === pool);
});

test('prio: a guest SCHED_FIFO task raises its vCPU thread to SCHED_FIFO until no such task remains', async () => {
  for (const t of tids) assert.equal(threadClass(t), OTHER, 'every vCPU thread is SCHED_OTHER');
  // ... and nicer than the main thread, which serves their exits (vmm/machine.ts).
  const vcpuNice = Math.min(19, threadNice(process.pid) + VCPU_NICE_ABOVE_MAIN);
  for (const t of tids) assert.is(threadNice(t), vcpuNice, 'vCPU threads below the main thread');
  const r = { handle: [...m.paravirt!.loaded.values()].find((p) => p.name === 'prio')!.handle };
  let out = '';
  const task = agent.start({
    argv: ['rtlat', 'cpu:1', 'fifo:50', 'wait:/tmp/p1', 'other', 'wait:/tmp/p2', 'fifo:5', 'wait:/tmp/p3', 'cpu:2', 'wait:/tmp/p4', 'fork:600', 'other', 'wait:/tmp/p5'],
    onStdout: (b) => (out += b.toString()),
  });
  await task.pid;
  // Capped by --prio-max (default 10).
  await until('vCPU 1 to become SCHED_FIFO 10', () => threadClass(tids[1]!).policy === 1);
  assert.equal(threadClass(tids[1]!), fifo(10));
  assert.equal(threadClass(tids[0]!), OTHER);
  await cue('p1'); // policy change back to SCHED_OTHER
  await until('vCPU 1 to be restored', () => threadClass(tids[1]!).policy === 0);
  await cue('p2'); // FIFO 5: under the cap, kept as is
  await until('vCPU 1 SCHED_FIFO 5', () => threadClass(tids[1]!).rtprio === 5);
  assert.equal(threadClass(tids[1]!), fifo(5));
  await cue('p3'); // migration to CPU 2
  await until('the boost to follow the task to vCPU 2', () => threadClass(tids[2]!).policy === 1 && threadClass(tids[1]!).policy === 0);
  assert.equal(threadClass(tids[2]!), fifo(5));
  await cue('p4'); // fork: the child inherits FIFO 5 on CPU 2; the parent goes back to OTHER
  await until('the child', () => /child (\d+)/.test(out) && /done other/.test(out.slice(out.indexOf('fork:600'))));
  const child = Number(/child (\d+)/.exec(out)![1]);
  await new Promise((res) => setTimeout(res, 500));
  assert.equal(threadClass(tids[2]!), fifo(5), 'the child keeps vCPU 2 boosted after its parent left real time');
  await sh(`kill ${child}`); // exit
  await until('vCPU 2 to be restored after the child exits', () => threadClass(tids[2]!).policy === 0);
  await cue('p5');
  await task.result;
  for (const t of tids) assert.equal(threadClass(t), OTHER);
  for (const t of tids) assert.is(threadNice(t), vcpuNice, 'a boost ended gives back the nice value the thread had');
  // The stream saw every step, attributed to the prio program, with the delivering vCPU.
  const prio = entries.filter((e) => e.name === 'PRIO');
  const events = prio.map((e) => (e.fields as { event: string; rtprio: number; cpu: number }));
  assert.ok(events.some((e) => e.event === 'SET' && e.rtprio === 50 && e.cpu === 1), JSON.stringify(events));
  for (const ev of ['MIGRATE', 'FORK', 'EXIT']) assert.ok(events.some((e) => e.event === ev), `${ev} in ${JSON.stringify(events)}`);
  assert.ok(prio.every((e) => e.program === 'prio' && e.source === r.handle && typeof e.vcpu === 'number' && e.vcpu < 3));
  assert.ok(m.actuators!.counters.classChanges >= 8);
});

test('host -> guest: writes into the prio program\'s config map switch its reports off, set a threshold, and back', async () => {
  const pv = m.paravirt!;
  const h = [...pv.loaded.values()].find((p) => p.name === 'prio')!.handle;
  const config = async (off: number, minPrio: number) => {
    const v = new Uint8Array(8);
    new DataView(v.buffer).setUint32(0, off, true);
    new DataView(v.buffer).setUint32(4, minPrio, true);
    const r = await pv.mapUpdate(h, 'config', new Uint8Array(4), v);
    assert.ok(r.ok, `${r.outcome} ${r.text}`);
  };
  const rtTask = async (cueName: string) => {
    let out = '';
    const t = agent.start({ argv: ['rtlat', 'cpu:1', 'fifo:30', `wait:/tmp/${cueName}`], onStdout: (b) => (out += b.toString()) });
    await until('the task to become real time', () => out.includes('done fifo:30'));
    return t;
  };
  const ignored = async (cueName: string) => {
    const before = entries.length;
    const t = await rtTask(cueName);
    await new Promise((r) => setTimeout(r, 1500));
    assert.equal(threadClass(tids[1]!), OTHER);
    assert.not.ok(entries.slice(before).some((e) => e.name === 'PRIO' && (e.fields as { rtprio: number }).rtprio === 30));
    await cue(cueName);
    await t.result;
  };
  await config(1, 0); // reporting off
  await ignored('m1');
  await config(0, 40); // on, but only guest priorities >= 40
  await ignored('m2');
  await config(0, 0);
  const t = await rtTask('m3');
  await until('vCPU 1 to be boosted again', () => threadClass(tids[1]!).policy === 1);
  await cue('m3');
  await t.result;
  await until('vCPU 1 restored', () => threadClass(tids[1]!).policy === 0);
  const bad = await pv.mapUpdate(h, 'config', new Uint8Array(4), new Uint8Array(8), 1); // BPF_NOEXIST on an array
  assert.is(bad.outcome, 'FAILED');
});

/** KVM's own per-VM statistics (debugfs): how often halted vCPUs of this VM polled. */
function haltPolls(): number {
  if (!existsSync('/sys/kernel/debug/kvm')) {
    mkdirSync('/sys/kernel/debug', { recursive: true });
    execFileSync('mount', ['-t', 'debugfs', 'debugfs', '/sys/kernel/debug']);
  }
  const vmDir = readdirSync('/sys/kernel/debug/kvm').find((d) => d.startsWith(`${process.pid}-`));
  assert.ok(vmDir, 'this VM has a KVM debugfs directory');
  return Number(readFileSync(`/sys/kernel/debug/kvm/${vmDir}/halt_attempted_poll`, 'utf8'));
}

test('halt polling: 0 ns stops KVM polling halted vCPUs of this VM, a large value brings it back', async () => {
  const a = m.actuators!;
  // Short sleeps in the guest: halts shorter than the limit are what makes KVM poll.
  const ticker = agent.start({ argv: ['rtlat', 'cpu:1', 'measure:100000:200'] });
  await ticker.pid;
  a.setHaltPoll(0, 'test');
  await new Promise((r) => setTimeout(r, 500)); // vCPUs polling right now finish
  const off0 = haltPolls();
  await new Promise((r) => setTimeout(r, 1500));
  assert.is(haltPolls(), off0, 'no poll with halt polling off');
  a.setHaltPoll(10_000_000, 'test');
  await until('halted vCPUs to poll again', () => haltPolls() > off0, 30_000);
  assert.is(a.haltPoll, 10_000_000);
  ticker.kill('SIGKILL');
  await ticker.result.catch(() => undefined);
});

/** utime + stime of a host thread, in clock ticks (/proc/self/task/TID/stat fields 14 and 15). */
function cpuTicks(tid: number): number {
  const stat = readFileSync(`/proc/self/task/${tid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return Number(f[14 - 3]) + Number(f[15 - 3]);
}

test('pause: the vCPU thread sleeps and runs no guest code until resumed', async () => {
  const a = m.actuators!;
  // A guest busy loop on CPU 2 keeps vCPU 2's thread running whenever it may run.
  const busy = agent.start({ argv: ['taskset', '-c', '2', 'sh', '-c', 'while :; do :; done'] });
  await busy.pid;
  const t0 = cpuTicks(tids[2]!);
  await until('vCPU 2 to burn CPU', () => cpuTicks(tids[2]!) > t0 + 10, 30_000);
  await a.pause(2, 'test');
  // pause() resolves once the worker has parked; its last steps into the futex wait may still
  // be ahead of it, and main — which the kernel now prefers (vCPU threads run nicer) — can read
  // /proc before it takes them.
  await until("vCPU 2's thread to sleep", () => threadState(tids[2]!) === 'S', 5_000);
  const frozen = cpuTicks(tids[2]!);
  await new Promise((r) => setTimeout(r, 1500));
  assert.is(cpuTicks(tids[2]!), frozen, 'no CPU time while paused, whatever the guest wants');
  assert.is(threadState(tids[2]!), 'S');
  assert.ok(a.table()[2]!.paused);
  await a.resume(2, 'test');
  await until('vCPU 2 to run the guest again', () => cpuTicks(tids[2]!) > frozen + 10, 30_000);
  busy.kill('SIGKILL');
  await busy.result.catch(() => undefined);
  assert.is((await sh('true')).exitCode, 0, 'the guest lives on');
});

test.run();
