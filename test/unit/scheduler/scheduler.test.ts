import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { decodeCpus, decodeMask, SchedulerError, VcpuScheduler, type SchedulerLimits } from '../../../vmm/scheduler/scheduler';
import type { Policy } from '../../../vmm/scheduler/policy';
import type { HostCpu } from '../../../vmm/scheduler/topology';

const cpu = (n: number, core = n): HostCpu => ({ cpu: n, core, coreId: core, packageId: 0, dieId: 0, siblings: [n] });
const flat = (n: number): HostCpu[] => Array.from({ length: n }, (_, i) => cpu(i));

interface Rig {
  s: VcpuScheduler;
  calls: { vcpu: number; cpus: number[]; tid: number }[];
  logs: string[];
  clock: { t: number };
  /** Ends the event-loop turn: runs the re-plan the turn's hints deferred. */
  turn(): void;
}

function rig(opts: { pool?: HostCpu[]; vcpus?: number; policy?: Policy; limits?: Partial<SchedulerLimits>; threads?: boolean; fail?: Set<number> } = {}): Rig {
  const calls: Rig['calls'] = [];
  const logs: string[] = [];
  const clock = { t: 1000 };
  const deferred: (() => void)[] = [];
  const vcpus = opts.vcpus ?? 4;
  const s = new VcpuScheduler({
    pool: opts.pool ?? flat(4),
    vcpus,
    policy: opts.policy ?? 'hinted',
    apply: (vcpu, cpus, tid) => {
      if (opts.fail?.has(vcpu)) throw new Error('ESRCH');
      calls.push({ vcpu, cpus: [...cpus], tid });
    },
    now: () => clock.t,
    log: (l) => logs.push(l),
    limits: opts.limits,
    defer: (fn) => deferred.push(fn),
  });
  if (opts.threads !== false) s.setVcpuThreads(Array.from({ length: vcpus }, (_, i) => 500 + i));
  calls.length = 0;
  logs.length = 0;
  const turn = () => {
    for (const fn of deferred.splice(0)) fn();
  };
  return { s, calls, logs, clock, turn };
}

const pin = (s: VcpuScheduler, tid: number, mask: bigint | bigint[], comm = 'spscq'): void =>
  s.onAffinityHint({ tgid: tid, tid, comm, mask });
const cpusOf = (s: VcpuScheduler): number[][] => s.table().map((r) => [...r.cpus]);
const vcpusApplied = (r: Rig): number[] => r.calls.map((c) => c.vcpu);

test('nothing is applied before the threads are known; then every vCPU once, with its tid', () => {
  const r = rig({ threads: false });
  pin(r.s, 7, 0b10n);
  assert.equal(r.calls, []);
  r.s.setVcpuThreads([11, 12, 13, 14]);
  assert.equal(r.calls, [
    { vcpu: 0, cpus: [1, 2, 3], tid: 11 },
    { vcpu: 1, cpus: [0], tid: 12 },
    { vcpu: 2, cpus: [1, 2, 3], tid: 13 },
    { vcpu: 3, cpus: [1, 2, 3], tid: 14 },
  ]);
  r.calls.length = 0;
  r.s.setVcpuThreads([11, 99, 13, 14]); // vCPU 1 got a new thread: only it is re-applied
  assert.equal(r.calls, [{ vcpu: 1, cpus: [0], tid: 99 }]);
  assert.throws(() => r.s.setVcpuThreads([1, 2]), (e: unknown) => e instanceof SchedulerError);
});

test('only changed vCPUs are applied; each change logged with old -> new and the reason', () => {
  const r = rig();
  pin(r.s, 100, 0b0010n);
  assert.equal(r.calls, [], 'applied at the end of the turn, not per hint');
  r.turn();
  assert.equal(vcpusApplied(r), [0, 1, 2, 3]);
  r.calls.length = 0;
  r.logs.length = 0;
  pin(r.s, 101, 0b0100n);
  r.turn();
  assert.equal(vcpusApplied(r), [0, 2, 3]); // vCPU 1 keeps CPU 0 and is not touched
  assert.equal(cpusOf(r.s), [[2, 3], [0], [1], [2, 3]]);
  assert.is(r.logs.length, 3);
  assert.match(r.logs[1]!, /^scheduler: vcpu 2: 1-3 -> 1 \(hinted: tasks 101 pinned here; dedicated CPU 1\) after task 101 \(spscq\) pinned to vCPUs 2$/);
  r.calls.length = 0;
  pin(r.s, 101, 0b0100n); // the same hint again changes nothing
  r.turn();
  assert.equal(r.calls, []);
  const c = r.s.counters;
  assert.is(c.pins, 2);
  assert.is(c.hints, 3);
  assert.is(c.applied, 4 + 4 + 3); // setVcpuThreads applied all four first
  assert.is(c.decisions, 4 + 3);
});

test('two tasks share a vCPU: it stays pinned until the last one goes', () => {
  const r = rig();
  pin(r.s, 1, 0b1000n);
  pin(r.s, 2, 0b1000n);
  assert.equal(r.s.table()[3]!.tasks.map((t) => t.tid), [1, 2]);
  r.calls.length = 0;
  r.s.onUnpinHint({ tid: 1 });
  r.turn();
  assert.equal(r.calls, []);
  assert.equal(r.s.table()[3]!.cpus, [0]);
  assert.equal(r.s.table()[3]!.tasks.map((t) => t.tid), [2]);
  r.s.onUnpinHint({ tid: 2 });
  assert.equal(cpusOf(r.s), [[0, 1, 2, 3], [0, 1, 2, 3], [0, 1, 2, 3], [0, 1, 2, 3]]);
  assert.is(r.s.table()[3]!.kind, 'float');
  r.s.onUnpinHint({ tid: 2 }); // already gone: nothing
  r.s.onUnpinHint({ tid: 12345 });
  const c = r.s.counters;
  assert.is(c.unpins, 2);
  assert.is(c.unpinHints, 4);
});

test('a task widening its mask: one vCPU, then a group, then all vCPUs (released)', () => {
  const r = rig();
  pin(r.s, 9, 0b0010n);
  assert.equal(cpusOf(r.s), [[1, 2, 3], [0], [1, 2, 3], [1, 2, 3]]);
  pin(r.s, 9, 0b0110n);
  assert.equal(cpusOf(r.s), [[2, 3], [0, 1], [0, 1], [2, 3]]);
  assert.match(r.s.table()[1]!.reason, 'confined to vCPUs 1-2');
  pin(r.s, 9, 0b1111n);
  assert.equal(cpusOf(r.s), [[0, 1, 2, 3], [0, 1, 2, 3], [0, 1, 2, 3], [0, 1, 2, 3]]);
  assert.equal(r.s.table()[1]!.tasks, []);
  const c = r.s.counters;
  assert.is(c.pins, 2);
  assert.is(c.unpins, 1);
  pin(r.s, 10, 0b1111n); // an untracked task allowed everywhere: nothing to do
  assert.is(r.s.counters.unpins, 1);
});

test('mask bits for nonexistent vCPUs are ignored and counted', () => {
  const r = rig({ vcpus: 2 });
  pin(r.s, 5, 0b10010n); // vCPU 1 and a vCPU 4 that does not exist
  assert.equal(r.s.table()[1]!.tasks.map((t) => t.tid), [5]);
  assert.is(r.s.counters.ignoredVcpuBits, 1);
  assert.is(r.s.counters.pins, 1);
  pin(r.s, 6, [0b1n, 0b1n]); // word form: vCPU 0 and vCPU 64
  assert.equal(r.s.table()[0]!.tasks.map((t) => t.tid), [6]);
  assert.is(r.s.counters.ignoredVcpuBits, 2);
});

test('empty masks (after dropping nonexistent vCPUs) are rejected and change nothing', () => {
  const r = rig();
  pin(r.s, 5, 0b0001n);
  r.turn();
  r.calls.length = 0;
  pin(r.s, 5, 0n);
  pin(r.s, 5, 1n << 10n);
  pin(r.s, 5, [0n, 1n]);
  pin(r.s, 5, []);
  r.turn();
  assert.equal(r.calls, []);
  assert.equal(r.s.table()[0]!.cpus, [0]);
  assert.is(r.s.counters.rejectedEmpty, 4);
  assert.ok(r.logs.some((l) => /hint rejected: task 5 \(spscq\): mask names no existing vCPU/.test(l)));
});

test('malformed hints are rejected, never thrown', () => {
  const r = rig();
  pin(r.s, 0, 1n);
  pin(r.s, -3, 1n);
  pin(r.s, Number.NaN, 1n);
  pin(r.s, 5, -1n);
  pin(r.s, 5, [1n << 64n]);
  pin(r.s, 5, [-1n]);
  pin(r.s, 5, new Array<bigint>(129).fill(1n));
  pin(r.s, 5, 1n << 9000n);
  r.s.onAffinityHint({ tgid: 1, tid: 5, comm: 'x', mask: [1 as unknown as bigint] });
  r.s.onAffinityHint({ tgid: 1, tid: 5, comm: 'x', cpus: [1, 1] });
  r.s.onAffinityHint({ tgid: 1, tid: 5, comm: 'x', cpus: [2, 1] });
  r.s.onAffinityHint({ tgid: 1, tid: 5, comm: 'x', cpus: [-1] });
  r.s.onAffinityHint({ tgid: 1, tid: 5, comm: 'x', cpus: [8192] });
  r.s.onAffinityHint({ tgid: 1, tid: 5, comm: 'x', cpus: [0.5] });
  r.turn();
  assert.is(r.s.counters.rejectedInvalid, 14);
  assert.is(r.s.counters.pins, 0);
  assert.equal(r.calls, []);
  // A mask using many words is fine when it stays in range: vCPU 70 of 72.
  const big = rig({ vcpus: 72, pool: flat(8) });
  pin(big.s, 5, [0n, 1n << 6n]);
  assert.equal(big.s.table()[70]!.tasks.map((t) => t.tid), [5]);
});

test('decodeMask', () => {
  assert.equal(decodeCpus([0, 1, 3], 4), { vcpus: [0, 1, 3], extra: false });
  assert.equal(decodeCpus([0, 1, 3, 70], 2), { vcpus: [0, 1], extra: true });
  assert.equal(decodeCpus([], 2), { vcpus: [], extra: false });
  assert.equal(decodeMask(0b1011n, 4), { vcpus: [0, 1, 3], extra: false });
  assert.equal(decodeMask(0b1011n, 2), { vcpus: [0, 1], extra: true });
  assert.equal(decodeMask([0n, 0n, 1n], 130), { vcpus: [128], extra: false });
  assert.equal(decodeMask([0xffff_ffff_ffff_ffffn], 3), { vcpus: [0, 1, 2], extra: true });
  assert.is(decodeMask(-1n, 4), undefined);
});

test('guest comm is sanitised before it reaches logs and the table', () => {
  const r = rig();
  pin(r.s, 5, 0b1n, 'evil\n\x1b[31mred-and-very-long-name');
  assert.is(r.s.table()[0]!.tasks[0]!.comm, 'evil??[31mred-an');
  assert.ok(r.logs.every((l) => !l.includes('\n') && !l.includes('\x1b')));
});

test('VM-wide flood: burst 200, then 100/s; dropped hints are counted, logged once', () => {
  const r = rig({ policy: 'none' });
  for (let i = 0; i < 250; i++) pin(r.s, 1000 + i, 0b1n);
  let c = r.s.counters;
  assert.is(c.pins, 200);
  assert.is(c.rateLimited, 50);
  assert.is(r.logs.filter((l) => /rate limit reached/.test(l)).length, 1);
  r.clock.t += 500; // 50 tokens back
  for (let i = 0; i < 60; i++) pin(r.s, 2000 + i, 0b1n);
  c = r.s.counters;
  assert.is(c.pins, 250);
  assert.is(c.rateLimited, 60);
  assert.ok(r.logs.some((l) => /back under the limit; 50 hints were dropped/.test(l)));
  r.clock.t += 60_000; // refills to the burst, not beyond
  for (let i = 0; i < 300; i++) pin(r.s, 3000 + i, 0b1n);
  assert.is(r.s.counters.pins, 450);
  // The clock going backwards must not mint tokens.
  r.clock.t -= 10_000;
  pin(r.s, 9999, 0b1n);
  assert.is(r.s.counters.pins, 450);
});

test('per-task flood: one task is limited without draining the VM budget', () => {
  const r = rig({ limits: { taskHintsPerSecond: 10, taskHintBurst: 20 } });
  for (let i = 0; i < 30; i++) pin(r.s, 42, i % 2 ? 0b01n : 0b10n);
  let c = r.s.counters;
  assert.is(c.pins, 20);
  assert.is(c.rateLimitedTask, 10);
  assert.is(c.rateLimited, 0);
  for (let i = 0; i < 180; i++) pin(r.s, 100 + i, 0b1n); // the VM still has 180 tokens
  c = r.s.counters;
  assert.is(c.pins, 200);
  assert.is(c.rateLimited, 0);
  pin(r.s, 999, 0b1n);
  assert.is(r.s.counters.rateLimited, 1);
  r.clock.t += 1000;
  for (let i = 0; i < 15; i++) pin(r.s, 42, i % 2 ? 0b01n : 0b10n);
  assert.is(r.s.counters.rateLimitedTask, 15); // 10 refilled for task 42, 5 more dropped
});

test('unpin hints are not rate-limited (a dropped exit would leak a pin)', () => {
  const r = rig({ limits: { hintBurst: 1, hintsPerSecond: 1 } });
  pin(r.s, 7, 0b1n);
  pin(r.s, 8, 0b10n);
  assert.is(r.s.counters.rateLimited, 1);
  for (let i = 0; i < 1000; i++) r.s.onUnpinHint({ tid: 5000 + i });
  r.s.onUnpinHint({ tid: 7 });
  assert.is(r.s.counters.unpins, 1);
  assert.is(r.s.table()[0]!.kind, 'float');
});

test('per-task buckets stay bounded: idle ones are forgotten, a crowd of mid-burst tasks is dropped', () => {
  const r = rig({ policy: 'none', limits: { maxTasks: 2, taskHintBurst: 2, taskHintsPerSecond: 1 } });
  for (const tid of [1, 2, 3, 4]) pin(r.s, tid, 0b1111n); // four buckets, none full
  pin(r.s, 5, 0b1111n);
  assert.is(r.s.counters.rateLimited, 1);
  assert.ok(r.logs.some((l) => /too many active tasks/.test(l)));
  r.clock.t += 1000; // all four refilled: forgettable
  pin(r.s, 5, 0b1111n);
  assert.is(r.s.counters.rateLimited, 1);
});

test('bounded number of tracked tasks', () => {
  const r = rig({ limits: { maxTasks: 3 } });
  for (const tid of [1, 2, 3, 4]) pin(r.s, tid, 0b1n);
  assert.is(r.s.counters.rejectedTaskLimit, 1);
  assert.equal(r.s.table()[0]!.tasks.map((t) => t.tid), [1, 2, 3]);
  pin(r.s, 2, 0b10n); // a tracked task may still change its mask
  assert.equal(r.s.table()[1]!.tasks.map((t) => t.tid), [2]);
  r.s.onUnpinHint({ tid: 3 });
  pin(r.s, 4, 0b100n);
  assert.equal(r.s.table()[2]!.tasks.map((t) => t.tid), [4]);
  assert.is(r.s.counters.rejectedTaskLimit, 1);
});

test('policy changes re-pin; hints are tracked under every policy', () => {
  const r = rig({ policy: 'none' });
  pin(r.s, 1, 0b100n);
  assert.equal(r.calls, []);
  assert.equal(cpusOf(r.s), [[0, 1, 2, 3], [0, 1, 2, 3], [0, 1, 2, 3], [0, 1, 2, 3]]);
  r.s.setPolicy('hinted');
  assert.equal(cpusOf(r.s), [[1, 2, 3], [1, 2, 3], [0], [1, 2, 3]]);
  assert.equal(vcpusApplied(r), [0, 1, 2, 3]);
  r.calls.length = 0;
  r.s.setPolicy('static');
  assert.equal(cpusOf(r.s), [[0], [1], [2], [3]]);
  assert.equal(vcpusApplied(r), [0, 1, 2, 3]);
  assert.ok(r.logs.some((l) => /after policy hinted -> static/.test(l)));
  r.calls.length = 0;
  r.s.setPolicy('static');
  assert.equal(r.calls, []);
  assert.is(r.s.currentPolicy, 'static');
  assert.throws(() => r.s.setPolicy('fast' as Policy), (e: unknown) => e instanceof SchedulerError);
});

test('static wraparound through the scheduler', () => {
  const r = rig({ pool: flat(2), policy: 'static' });
  assert.equal(cpusOf(r.s), [[0], [1], [0], [1]]);
  assert.match(r.s.table()[2]!.reason, 'wraps around');
});

test('a new pool re-places everything inside it', () => {
  const r = rig({ pool: flat(8) });
  pin(r.s, 1, 0b1n);
  r.calls.length = 0;
  r.s.setPool([cpu(6), cpu(7)]);
  assert.equal(cpusOf(r.s), [[6], [7], [7], [7]]);
  assert.ok(r.calls.every((c) => c.cpus.every((x) => x === 6 || x === 7)));
  assert.throws(() => r.s.setPool([]), (e: unknown) => e instanceof SchedulerError);
  assert.throws(() => r.s.setPool([cpu(1), cpu(1)]), (e: unknown) => e instanceof SchedulerError);
  assert.equal(cpusOf(r.s), [[6], [7], [7], [7]]); // a refused pool changes nothing
});

test('a failing apply is counted, logged, and retried on the next change', () => {
  const fail = new Set([1]);
  const r = rig({ fail });
  assert.is(r.s.counters.applyErrors, 1); // setVcpuThreads already tried vCPU 1
  assert.equal(r.s.table().map((x) => x.applied), [true, false, true, true]);
  fail.clear();
  pin(r.s, 3, 0b1000n);
  r.turn();
  assert.ok(r.calls.some((c) => c.vcpu === 1));
  assert.equal(r.s.table().map((x) => x.applied), [true, true, true, true]);
  const r2 = rig({ fail: new Set([2]) });
  pin(r2.s, 3, 0b100n);
  r2.turn();
  assert.ok(r2.logs.some((l) => /vcpu 2 \(tid 502\): applying 0 failed after task 3 \(spscq\) pinned to vCPUs 2: ESRCH/.test(l)));
});

test('N hints in one turn: one re-plan, one apply per changed vCPU, the same pins as one turn each', () => {
  // The same 40 hints (20 tasks pinned, some moved, some widened, one unpinned) once all in
  // one turn and once a turn each: the plans must end the same.
  const hints: (() => [number, bigint] | number)[] = [];
  for (let i = 0; i < 20; i++) hints.push(() => [100 + i, 1n << BigInt(i % 4)]);
  for (let i = 0; i < 10; i++) hints.push(() => [100 + i, 0b11n << BigInt(i % 3)]);
  for (let i = 10; i < 15; i++) hints.push(() => [100 + i, 0b1111n]); // widened: released
  for (let i = 15; i < 19; i++) hints.push(() => [200 + i, 0b0100n]);
  hints.push(() => 119); // unpinned
  const send = (r: Rig, h: [number, bigint] | number) => (typeof h === 'number' ? r.s.onUnpinHint({ tid: h }) : pin(r.s, h[0], h[1]));
  const batched = rig({ pool: flat(8) });
  const stepped = rig({ pool: flat(8) });
  for (const h of hints) send(batched, h());
  assert.equal(batched.calls, [], 'nothing planned or applied before the turn ends');
  batched.turn();
  for (const h of hints) {
    send(stepped, h());
    stepped.turn();
  }
  const b = batched.s.counters;
  const st = stepped.s.counters;
  assert.is(b.replans, 1);
  assert.is(st.replans, st.pins + st.unpins, 'one turn each: a plan per change');
  assert.equal([b.pins, b.unpins], [st.pins, st.unpins]);
  assert.equal(batched.s.table(), stepped.s.table());
  assert.ok(batched.calls.length <= 4, `${batched.calls.length} applies for 4 vCPUs`);
  assert.equal(new Set(batched.calls.map((c) => c.vcpu)).size, batched.calls.length, 'each vCPU applied at most once');
  const changed = batched.logs.filter((l) => /^scheduler: vcpu /.test(l));
  assert.ok(changed.length > 0 && changed.every((l) => / after task 100 \(spscq\) pinned to vCPUs 0; task 101 \(spscq\) pinned to vCPUs 1; task 102 \(spscq\) pinned to vCPUs 2 and 37 more task changes$/.test(l)), changed.join('\n'));
  // Reading the table plans first: nobody sees a stale placement.
  pin(batched.s, 300, 0b1000n);
  assert.ok(batched.s.table()[3]!.tasks.some((t) => t.tid === 300));
  assert.is(batched.s.counters.replans, 2);
  batched.turn(); // the deferred re-plan finds nothing left to do
  assert.is(batched.s.counters.replans, 2);
});

test('counters are a snapshot', () => {
  const r = rig();
  const before = r.s.counters;
  pin(r.s, 1, 0b1n);
  assert.is(before.pins, 0);
  assert.is(r.s.counters.pins, 1);
});

test.run();
