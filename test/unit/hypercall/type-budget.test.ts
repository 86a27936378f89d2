// Per-type hint budgets: records of a type whose host handler takes at most N a second (AFFINITY:
// the scheduler's VM-wide limit) are dropped by the hypercall device in the exit that carried
// them once that type's budget is spent — never queued for the main thread, decoded or
// dispatched — while other types in the same batch go on; a batch that spent a type's budget
// has the vCPU threads refuse HINTS until part of it is back. Before, a flooding guest had 250
// records a second queued, of which the registry then refused 150 one by one on the main thread.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { PassThrough } from 'node:stream';
import { Bus } from '../../../devices/bus';
import { Cmd, Reg, Status } from '../../../devices/hypercall/registers';
import { HINT_REOPEN_UNITS } from '../../../devices/hypercall/device';
import { mailboxLayout } from '../../../devices/hypercall/shmem';
import { encodeHint, HintType } from '../../../bpf/hints';
import { HINT_PROGRAMS } from '../../../vmm/hints/programs';
import { Paravirt } from '../../../vmm/paravirt';
import { serveShared } from '../../../vmm/vcpu/shared';
import { HYPERCALL_PORT, HYPERCALL_PORT_LEN } from '../../../vmm/layout';
import { fakeHost } from '../hints/fake-host';
import { SimAgent, rig } from './agent';

const u32 = (v: number) => new Uint8Array(new Uint32Array([v]).buffer);

test('over its type budget a record is dropped in the exit (counted by type), other types in the batch still handled; the call says all were taken', () => {
  const r = rig({ hintTypeBudgets: new Map([[1, { perSecond: 10, burst: 3 }]]), hintRecordsPerTurn: Infinity, hintUnitsPerSecond: 1000, hintUnitBurst: 1000 });
  const a = new SimAgent(r.bus, r.shm);
  a.hello();
  const seen: number[] = [];
  r.dev.onAnyHint((_rec, type) => (seen.push(type), true));
  const records = Array.from({ length: 10 }, (_, i) => ({ type: i % 5 === 4 ? 7 : 1, payload: new Uint8Array(8) })); // 8 of type 1, 2 of type 7
  assert.equal(a.hints({ dropped: 0, records }), { status: Status.OK, result: 10 }, 'RESULT: every record taken (the guest must not send them again)');
  assert.equal(seen, [1, 1, 1, 7, 7], 'the burst of 3 of type 1, and both of type 7');
  const c = r.dev.counters();
  assert.equal(c.hintTypeDropped, { 1: 5 });
  assert.is(c.hintRecords, 10, 'counted as read');
  assert.is(c.hintQueued, 0, 'nothing left waiting');
  // 200 ms later (10/s): two of type 1 again.
  r.clock.t += 200;
  seen.length = 0;
  assert.is(a.hints({ dropped: 0, records }).status, Status.OK);
  assert.equal(seen, [1, 1, 7, 7]);
  assert.equal(r.dev.counters().hintTypeDropped, { 1: 11 });
});

test('a batch that spent a type budget has the vCPU threads refuse HINTS until HINT_REOPEN_UNITS of it are back; within the budget nothing is refused', async () => {
  let clock = 0;
  const burst = 4;
  const r = rig({ hintTypeBudgets: new Map([[1, { perSecond: 100, burst }]]), hintRecordsPerTurn: Infinity, hintUnitsPerSecond: 1000, hintUnitBurst: 1000, now: () => clock });
  const a = new SimAgent(r.bus, r.shm);
  a.hello();
  const claim = { base: HYPERCALL_PORT, len: 0x40, shared: r.dev.sharedRegisters() };
  const vcpuWrite = (cmd: number) => serveShared(claim, HYPERCALL_PORT + Reg.COMMAND, u32(cmd), true);
  const batch = (n: number) => ({ dropped: 0, records: Array.from({ length: n }, () => ({ type: 1, payload: new Uint8Array(8) })) });
  assert.is(a.hints(batch(burst)).status, Status.OK, 'exactly the burst');
  assert.not.ok(vcpuWrite(Cmd.HINTS), 'the budget was not exceeded: HINTS still reaches the device');
  assert.is(a.hints(batch(3)).status, Status.OK, 'over the budget: taken and dropped');
  assert.equal(r.dev.counters().hintTypeDropped, { 1: 3 });
  assert.ok(vcpuWrite(Cmd.HINTS), 'now refused in the vCPU thread');
  assert.ok(vcpuWrite(Cmd.HINTS));
  assert.not.ok(vcpuWrite(Cmd.FETCH), 'other commands still reach the device');
  // min(HINT_REOPEN_UNITS, burst) records at 100/s: the device's timer is real, the budget reads the test's clock.
  const ms = (Math.min(HINT_REOPEN_UNITS, burst) * 1000) / 100;
  clock += ms + 10;
  await new Promise((res) => setTimeout(res, ms + 10));
  assert.not.ok(vcpuWrite(Cmd.HINTS), 'reopened');
  assert.is(a.hints(batch(1)).status, Status.OK);
  assert.equal(r.dev.counters().hintTypeDropped, { 1: 3 }, 'and that one was handed on');
  r.dev.close();
});

test("through Paravirt: AFFINITY gets the scheduler's limit as its device budget, so the registry sees no more AFFINITY records than the scheduler can take; UNPIN has none", async () => {
  const shm = new Uint8Array(1024 * 1024);
  const clock = { t: 1000 };
  const now = () => clock.t;
  const host = fakeHost(2, { now }).host;
  const pv = new Paravirt({ shm, host, programs: HINT_PROGRAMS, connect: async () => new PassThrough(), log: () => {}, now });
  const bus = new Bus();
  bus.insert(HYPERCALL_PORT, HYPERCALL_PORT_LEN, 'hypercall', pv.device);
  const a = new SimAgent(bus, shm);
  a.hello();
  // A full mailbox, AFFINITY records for distinct tasks with an UNPIN every 16th.
  const n = Math.floor((mailboxLayout(shm.length).g2hSize - 8) / 64);
  const records = Array.from({ length: n }, (_, i) => {
    const b = i % 16 === 15 ? encodeHint({ type: 'UNPIN', tgid: 1, tid: 1 }) : encodeHint({ type: 'AFFINITY', tgid: 1000 + i, tid: 1000 + i, comm: 'flood', cpus: [i % 2], mask: [] });
    return { type: i % 16 === 15 ? HintType.UNPIN : HintType.AFFINITY, payload: b.subarray(8) };
  });
  const { hintsPerSecond, hintBurst } = host.scheduler.hintLimits;
  // 40 calls 50 ms apart: 2 s of the device's budget (250 records/s after a burst of 64).
  for (let i = 0; i < 40; i++) {
    clock.t += 50;
    a.hints({ dropped: 0, records });
    // Let each call's queued records reach the registry (one slice per event-loop turn) before the next.
    while (pv.device.counters().hintQueued > 0) await new Promise((res) => setImmediate(res));
  }
  const bound = hintBurst + Math.ceil((2000 * hintsPerSecond) / 1000);
  const reg = pv.registry.counters;
  const affinity = (reg.byName.AFFINITY ?? 0) + reg.refused;
  assert.ok(affinity <= bound, `the registry saw ${affinity} AFFINITY records (bound ${bound})`);
  const dev = pv.device.counters();
  assert.ok((dev.hintTypeDropped[HintType.AFFINITY] ?? 0) > 0, 'the surplus was dropped in the device');
  assert.is(dev.hintTypeDropped[HintType.UNPIN], undefined, 'no UNPIN was dropped for a budget');
  assert.is(reg.byName.UNPIN, host.scheduler.counters.unpinHints, 'every UNPIN queued reached the scheduler');
  pv.close();
});

test.run();
