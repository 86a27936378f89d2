// The hint registry and stream without a guest: records dispatched to their kind's handler
// (real scheduler / prio policy / actuators over fake threads), unknown and short records
// published raw, a throwing handler contained, duplicate types refused, and a slow stream
// reader that loses records (counted, reported in its stream) without holding anything up.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { encodeHint, HintType } from '../../../bpf/hints';
import { HINT_PROGRAMS } from '../../../vmm/hints/programs';
import { HintRegistry, HintRegistryError, hintKind, type HintHost, type HintMeta } from '../../../vmm/hints/registry';
import { HintStream, type StreamSink } from '../../../vmm/hints/stream';
import { fakeHost } from './fake-host';

const meta = (type: number, extra: Partial<HintMeta> = {}): HintMeta => ({ type, source: 1, program: 'affinity', vcpu: 0, time: 1, ...extra });

test('AFFINITY and UNPIN reach the scheduler, PRIO the priority policy and the vCPU thread', () => {
  const f = fakeHost(4);
  const reg = new HintRegistry(HINT_PROGRAMS);
  const err = (e: Error) => assert.unreachable(e.message);
  const a = reg.dispatch(encodeHint({ type: 'AFFINITY', tgid: 7, tid: 8, comm: 'spscq', cpus: [2], mask: [] }), meta(HintType.AFFINITY), f.host, err)!;
  assert.is(a.name, 'AFFINITY');
  assert.equal((a.fields as { cpus: number[] }).cpus, [2]);
  assert.equal(f.host.scheduler.table()[2]!.tasks.map((t) => t.tid), [8]);
  reg.dispatch(encodeHint({ type: 'UNPIN', tid: 8, tgid: 7 }), meta(HintType.UNPIN), f.host, err);
  assert.equal(f.host.scheduler.table()[2]!.tasks, []);

  reg.dispatch(encodeHint({ type: 'PRIO', tid: 50, cpu: 3, rtprio: 40, policy: 1, event: 'SET' }), meta(HintType.PRIO, { program: 'prio' }), f.host, err);
  assert.equal(f.threads.get(f.tids[3]!), { policy: 1, priority: 10, nice: 0 }, 'SCHED_FIFO capped at --prio-max 10');
  reg.dispatch(encodeHint({ type: 'PRIO', tid: 50, cpu: 3, rtprio: 0, policy: 1, event: 'EXIT' }), meta(HintType.PRIO), f.host, err);
  assert.equal(f.threads.get(f.tids[3]!), { policy: 0, priority: 0, nice: 0 }, 'restored');
  assert.equal(reg.counters.byName, { AFFINITY: 1, UNPIN: 1, PRIO: 2 });
});

test('unknown types and short records are published raw; a throwing handler is contained', () => {
  const f = fakeHost(2);
  const boom = { name: 'boom', description: '', package: HINT_PROGRAMS[0]!.package, kinds: [hintKind({ type: 900, name: 'BOOM', size: 8, decode: () => 1, handle: () => { throw new Error('bug'); } })] };
  const reg = new HintRegistry([...HINT_PROGRAMS, boom]);
  const rec = (type: number, len: number) => {
    const b = new Uint8Array(len);
    new DataView(b.buffer).setUint32(0, type, true);
    new DataView(b.buffer).setUint32(4, len, true);
    return b;
  };
  const errors: string[] = [];
  const u = reg.dispatch(rec(777, 16), meta(777, { source: undefined, program: undefined }), f.host, (e) => errors.push(e.message))!;
  assert.is(u.name, undefined);
  assert.is(u.raw, '0903000010000000' + '00'.repeat(8));
  const s = reg.dispatch(rec(HintType.AFFINITY, 16), meta(HintType.AFFINITY), f.host, (e) => errors.push(e.message))!;
  assert.match(s.error!, /16-byte record, AFFINITY needs 64/);
  const b = reg.dispatch(rec(900, 8), meta(900), f.host, (e) => errors.push(e.message))!;
  assert.match(b.error!, /handler failed: bug/);
  assert.equal(errors, ['bug']);
  assert.equal({ ...reg.counters, byName: undefined }, { records: 3, decoded: 0, unknown: 1, short: 1, handlerErrors: 1, refused: 0, byName: undefined });
});

test('AFFINITY records over the scheduler\'s rate are refused from their header: not decoded, counted, on the stream marked refused', () => {
  const f = fakeHost(2, { now: () => 0 }); // a clock that stands still: the burst (200), no refill
  const reg = new HintRegistry(HINT_PROGRAMS);
  let decodes = 0;
  const real = HINT_PROGRAMS[0]!.kinds.find((k) => k.type === HintType.AFFINITY)!;
  const counting = { ...HINT_PROGRAMS[0]!, kinds: [{ ...real, run: (r: Uint8Array, h: HintHost, m: HintMeta) => (decodes++, real.run(r, h, m)) }] };
  const reg2 = new HintRegistry([counting]);
  const entries = [];
  for (let i = 0; i < 300; i++) {
    entries.push(reg2.dispatch(encodeHint({ type: 'AFFINITY', tgid: 1, tid: 1000 + i, comm: 'flood', cpus: [i % 2], mask: [] }), meta(HintType.AFFINITY), f.host, (e) => assert.unreachable(e.message)));
  }
  assert.is(decodes, 200, 'only the admitted ones are decoded');
  const refusedEntries = entries.filter((e) => e.refused);
  assert.is(refusedEntries.length, 100, 'the refused ones are on the stream, marked');
  assert.equal(refusedEntries[0], { time: 1, vcpu: 0, source: 1, program: 'affinity', type: HintType.AFFINITY, name: 'AFFINITY', refused: true }, 'without fields or bytes');
  assert.is(reg2.counters.refused, 100);
  assert.is(reg2.counters.decoded, 200);
  const c = f.host.scheduler.counters;
  assert.equal([c.hints, c.rateLimited, c.pins], [300, 100, 200]);
  // The tid is read from the raw record: a task over its own limit (10/s, burst 20) is refused too.
  const g = fakeHost(2, { now: () => 0 });
  let refused = 0;
  for (let i = 0; i < 25; i++) if (reg.dispatch(encodeHint({ type: 'AFFINITY', tgid: 1, tid: 0xfffffff0, comm: 'x', cpus: [i % 2], mask: [] }), meta(HintType.AFFINITY), g.host, () => {}).refused) refused++;
  assert.is(refused, 5);
  assert.is(g.host.scheduler.counters.rateLimitedTask, 5);
  assert.is(reg.counters.refused, 5);
});

test('two programs cannot claim one hint type, and type 0 is the transport\'s', () => {
  const dup = { name: 'dup', description: '', package: HINT_PROGRAMS[0]!.package, kinds: [hintKind({ type: HintType.PRIO, name: 'X', size: 8, decode: () => 0 })] };
  assert.throws(() => new HintRegistry([...HINT_PROGRAMS, dup]), (e: unknown) => e instanceof HintRegistryError && /already PRIO/.test((e as Error).message));
  const zero = { ...dup, kinds: [hintKind({ type: 0, name: 'Z', size: 8, decode: () => 0 })] };
  assert.throws(() => new HintRegistry([zero]), /SOURCE/);
});

/** A sink whose socket buffer holds `room` lines before it says "full". */
function sink(room: number) {
  const lines: string[] = [];
  let drain = () => {};
  let close = () => {};
  let held = 0;
  const s: StreamSink & { lines: string[]; flush(): void; hangUp(): void } = {
    lines,
    write(l) {
      lines.push(l);
      return ++held < room;
    },
    onDrain: (cb) => (drain = cb),
    onClose: (cb) => (close = cb),
    flush() {
      held = 0;
      drain();
    },
    hangUp: () => close(),
  };
  return s;
}

test('a slow reader loses what does not fit its queue, is told how much, and never blocks others', () => {
  const st = new HintStream(4);
  const slow = sink(2);
  const fast = sink(1e9);
  st.subscribe(slow, { maxQueued: 3 });
  const only = st.subscribe(fast, { types: new Set([5]) });
  for (let i = 0; i < 10; i++) st.publish({ time: i, vcpu: 0, source: 1, program: 'p', type: i % 2 ? 5 : 6, name: undefined, raw: String(i) });
  // slow: 2 written before its buffer filled, 3 queued, 5 lost.
  assert.is(slow.lines.length, 2);
  assert.is(st.counters.lost, 5);
  slow.flush(); // the loss notice and record 2 fill the buffer again
  slow.flush();
  const after = slow.lines.slice(2).map((l) => JSON.parse(l) as { lost?: number; raw?: string });
  assert.is(after[0]!.lost, 5, 'the loss is reported in the stream first');
  assert.equal(after.slice(1).map((e) => e.raw), ['2', '3', '4']);
  assert.equal(fast.lines.map((l) => (JSON.parse(l) as { raw: string }).raw), ['1', '3', '5', '7', '9'], 'type filter');
  assert.is(only.lost(), 0);
  assert.equal(st.recent().map((e) => e.raw), ['6', '7', '8', '9'], 'history is bounded');
  slow.hangUp();
  fast.hangUp();
  assert.is(st.counters.readers, 0);
  st.publish({ time: 11, vcpu: 0, source: 1, program: 'p', type: 5, name: undefined, raw: 'x' });
  assert.is(fast.lines.length, 5, 'nothing goes to a closed reader');
});

test.run();
