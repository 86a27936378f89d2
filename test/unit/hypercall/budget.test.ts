// The hint record budget: a guest that floods HINTS batches gets only the VM's budget decoded
// (one unit per 64-byte record), the rest dropped unread; with the budget spent a call costs
// nothing but E_RATE. Before the budget, one call with ~8,000 AFFINITY records cost 0.1-0.3 s of
// main-thread time, all decoded before the scheduler's rate limiter dropped 99 % of them.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { PassThrough } from 'node:stream';
import { Bus } from '../../../devices/bus';
import { Status } from '../../../devices/hypercall/registers';
import { HINT_UNITS_PER_SECOND, HINT_UNIT_BURST } from '../../../devices/hypercall/device';
import { HINT_UNIT_BYTES, hintsPrefixBytes, mailboxLayout, sourceRecord } from '../../../devices/hypercall/shmem';
import { decodeHints as decodeHintRecords, encodeHint, HintType } from '../../../bpf/hints';
import { decodeMask } from '../../../vmm/scheduler/scheduler';
import { HINT_PROGRAMS } from '../../../vmm/hints/programs';
import { fakeHost } from '../hints/fake-host';
import { Paravirt } from '../../../vmm/paravirt';
import { HYPERCALL_PORT, HYPERCALL_PORT_LEN } from '../../../vmm/layout';
import { SimAgent, rig } from './agent';

const SHM = 1024 * 1024;

/** A full mailbox of AFFINITY records (~8,000 with 1 MiB of shared memory). */
function flood(shm: number): { type: number; payload: Uint8Array }[] {
  const n = Math.floor((mailboxLayout(shm).g2hSize - 8) / 64);
  return Array.from({ length: n }, (_, i) => {
    const b = encodeHint({ type: 'AFFINITY', tgid: 1000 + i, tid: 1000 + i, comm: 'flood', cpus: [i % 2], mask: [] });
    return { type: HintType.AFFINITY, payload: b.subarray(8) };
  });
}

test('a mailbox of ~8,000 AFFINITY records: only the budget is read and decoded, the rest dropped unread', () => {
  // All records handled in the exit (slices.test.ts tests the slicing), with room for all.
  const r = rig({ shm: new Uint8Array(SHM), hintUnitsPerSecond: 1000, hintUnitBurst: 1000, hintRecordsPerTurn: Infinity, hintQueueMax: 1000 });
  const a = new SimAgent(r.bus, r.shm);
  assert.is(a.hello().status, Status.OK);
  let handled = 0;
  r.dev.onHints(HintType.AFFINITY, () => handled++);
  const records = flood(SHM);
  assert.ok(records.length > 8000, `${records.length} records`);
  const g2hBefore = r.dev.counters().g2hBytes;
  const res = a.hints({ dropped: 0, records });
  assert.is(res.status, Status.OK);
  assert.is(res.result, 1000, 'RESULT: the records taken');
  assert.is(handled, 1000);
  const c = r.dev.counters();
  assert.is(c.hintRecords, 1000);
  assert.is(c.hintBudgetDropped, records.length - 1000);
  assert.ok(c.g2hBytes - g2hBefore <= hintsPrefixBytes(1000), `copied ${c.g2hBytes - g2hBefore} bytes`);
  // The budget is spent: the next call is refused before anything is read (the agent retries later).
  const again = a.hints({ dropped: 0, records });
  assert.is(again.status, Status.E_RATE);
  assert.ok(again.result >= 1 && again.result <= 1000, `retry in ${again.result} ms`);
  assert.is(handled, 1000);
  assert.is(r.dev.counters().g2hBytes, c.g2hBytes, 'nothing copied');
  // Half a second later, half the budget.
  r.clock.t += 500;
  assert.is(a.hints({ dropped: 0, records }).result, 500);
  assert.is(handled, 1500);
});

test('a record costs one unit per 64 bytes, SOURCE records one each; an honest batch within the budget is whole', () => {
  const r = rig({ shm: new Uint8Array(SHM), hintUnitsPerSecond: 10 });
  const a = new SimAgent(r.bus, r.shm);
  a.hello();
  let got = 0;
  r.dev.onHints(7, () => got++);
  const big = { type: 7, payload: new Uint8Array(4 * HINT_UNIT_BYTES - 8) }; // 4 units
  let res = a.hints({ dropped: 0, records: [big, big, big] }); // 12 units: two fit
  assert.equal([res.status, res.result, got], [Status.OK, 2, 2]);
  r.clock.t += 10_000;
  res = a.hints({ dropped: 0, records: [sourceRecord(1), { type: 7, payload: new Uint8Array(8) }, sourceRecord(2), { type: 7, payload: new Uint8Array(8) }] });
  assert.equal([res.status, res.result, got], [Status.OK, 4, 4]);
  assert.is(r.dev.counters().hintBudgetDropped, 1);
});

test('the scheduler sees at most the budget from a flooding guest', () => {
  const shm = new Uint8Array(SHM);
  const { scheduler } = fakeHost(2).host;
  const pv = new Paravirt({ shm, host: { ...fakeHost(2).host, scheduler }, programs: HINT_PROGRAMS, connect: async () => new PassThrough(), log: () => {} });
  const bus = new Bus();
  bus.insert(HYPERCALL_PORT, HYPERCALL_PORT_LEN, 'hypercall', pv.device);
  const a = new SimAgent(bus, shm);
  a.hello();
  const records = flood(SHM);
  const t0 = performance.now();
  for (let i = 0; i < 20; i++) a.hints({ dropped: 0, records });
  const bound = HINT_UNIT_BURST + Math.ceil(((performance.now() - t0) * HINT_UNITS_PER_SECOND) / 1000); // the burst, then the rate
  assert.ok(scheduler.counters.hints <= bound, `the scheduler saw ${scheduler.counters.hints} hints (bound ${bound})`);
  pv.close();
});

test('masks are decoded with integer maths, identical to the BigInt reference', () => {
  let seed = 12345;
  const rnd = (): bigint => {
    seed = (seed * 1103515245 + 12345) >>> 0;
    const hi = seed;
    seed = (seed * 1103515245 + 12345) >>> 0;
    return (BigInt(hi) << 32n) | BigInt(seed);
  };
  for (let n = 0; n < 500; n++) {
    const words = [rnd(), n % 3 ? rnd() : 0n, n % 5 ? 0n : rnd(), n % 7 ? rnd() : 1n << 63n];
    const ref: number[] = [];
    words.forEach((w, i) => { for (let b = 0; b < 64; b++) if ((w >> BigInt(b)) & 1n) ref.push(i * 64 + b); });
    const rec = encodeHint({ type: 'AFFINITY', tgid: 1, tid: 1, comm: 'x', cpus: ref, mask: [] });
    const [h] = decodeHintRecords(rec);
    assert.equal(h!.type === 'AFFINITY' && h!.cpus, ref);
    const vcpus = 1 + (n % 254);
    const m = decodeMask(words, vcpus)!;
    assert.equal(m.vcpus, ref.filter((c) => c < vcpus));
    assert.is(m.extra, ref.some((c) => c >= vcpus));
    const one = words.reduce((acc, w, i) => acc | (w << BigInt(64 * i)), 0n);
    assert.equal(decodeMask(one, vcpus), m);
  }
});

test.run();
