// Hint records reach their handlers in slices, HINT_RECORDS_PER_TURN per event-loop turn, so
// a HINTS exit with a burst of records does not hold the main thread for the whole burst: the
// API and vsock get their I/O in between. The queue between decode and handlers is bounded:
// with it full a call is refused before a byte is read, a larger batch is cut at the room left.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { createConnection, createServer } from 'node:net';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Status } from '../../../devices/hypercall/registers';
import { HINT_QUEUE_MAX, HINT_RECORDS_PER_TURN, HINT_UNIT_BURST } from '../../../devices/hypercall/device';
import { sourceRecord } from '../../../devices/hypercall/shmem';
import { SimAgent, rig, pkg } from './agent';

const rec = (tag: number): { type: number; payload: Uint8Array } => ({ type: 1, payload: new Uint8Array([tag & 0xff, tag >> 8]) });
const batch = (n: number, from = 0) => ({ dropped: 0, records: Array.from({ length: n }, (_, i) => rec(from + i)) });
const tagOf = (r: Uint8Array) => r[8]! | (r[9]! << 8);

/** A rig whose later turns run only when the test says (`turn()`). */
function stepped(opts: Parameters<typeof rig>[0] = {}) {
  const turns: (() => void)[] = [];
  const r = rig({ shm: new Uint8Array(1024 * 1024), hintUnitsPerSecond: 10_000, hintUnitBurst: 10_000, defer: (fn) => turns.push(fn), ...opts });
  const a = new SimAgent(r.bus, r.shm);
  a.hello();
  const got: number[] = [];
  r.dev.onHints(1, (record) => got.push(tagOf(record)));
  const turn = (): boolean => {
    const fn = turns.shift();
    fn?.();
    return fn !== undefined;
  };
  return { r, a, got, turn, turns };
}

test('defaults: 8 records a turn, a queue of four bursts', () => {
  assert.is(HINT_RECORDS_PER_TURN, 8);
  assert.is(HINT_QUEUE_MAX, 4 * HINT_UNIT_BURST);
});

test('a burst of 64 records: the first 8 in the exit, then 8 per turn, in order, one turn scheduled at a time', () => {
  const { r, a, got, turn, turns } = stepped();
  assert.equal(a.hints(batch(64)), { status: Status.OK, result: 64 }, 'RESULT: all 64 taken');
  assert.is(got.length, 8, 'one slice in the exit itself');
  assert.is(r.dev.counters().hintQueued, 56);
  assert.is(turns.length, 1);
  for (let k = 2; k <= 8; k++) {
    assert.ok(turn());
    assert.is(got.length, 8 * k);
    assert.ok(turns.length <= 1, 'never more than one turn pending');
  }
  assert.is(turns.length, 0, 'nothing left: no turn scheduled');
  assert.equal(got, Array.from({ length: 64 }, (_, i) => i));
  const c = r.dev.counters();
  assert.is(c.hintQueued, 0);
  assert.is(c.hintRecords, 64);
  assert.equal(c.hintsByType, { 1: 64 });
});

test('a batch while records wait joins the queue behind them; an honest small batch on an empty queue is handled at once', () => {
  const { a, got, turn, turns } = stepped();
  a.hints(batch(12));
  assert.is(got.length, 8);
  a.hints(batch(3, 100));
  assert.is(got.length, 8, 'behind the 4 waiting, not before them');
  assert.is(turns.length, 1);
  turn();
  assert.equal(got, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 100, 101, 102]);
  assert.is(turns.length, 0);
  a.hints(batch(5, 200));
  assert.equal(got.slice(-5), [200, 201, 202, 203, 204], 'in the exit');
  assert.is(turns.length, 0);
});

test('with the queue full a call is refused before a byte is read; a larger batch is cut at the room left', () => {
  const { r, a, got, turn } = stepped({ hintQueueMax: 20 });
  // At most the room is decoded: 20 taken (8 of them handled in the exit), 10 dropped unread.
  assert.equal(a.hints(batch(30)), { status: Status.OK, result: 20 });
  let c = r.dev.counters();
  assert.is(c.hintQueued, 12);
  assert.is(c.hintQueueDropped, 10);
  assert.is(c.hintBudgetDropped, 0);
  // 8 slots left: the next batch is cut there, and waits behind the first.
  assert.equal(a.hints(batch(30, 100)), { status: Status.OK, result: 8 });
  c = r.dev.counters();
  assert.is(c.hintQueued, 20);
  assert.is(c.hintQueueDropped, 32);
  const g2h = c.g2hBytes;
  const refused = a.hints(batch(5, 500));
  assert.is(refused.status, Status.E_RATE, 'queue full: retry later');
  assert.ok(refused.result >= 1);
  c = r.dev.counters();
  assert.is(c.g2hBytes, g2h, 'nothing copied');
  assert.is(c.hintQueueDropped, 37);
  assert.is(c.errors.E_RATE, 1);
  while (turn());
  assert.equal(got, [...Array.from({ length: 20 }, (_, i) => i), ...Array.from({ length: 8 }, (_, i) => 100 + i)]);
  assert.is(a.hints(batch(5, 500)).status, Status.OK, 'room again once the handlers caught up');
});

test('the cut at the room left is counted as a queue drop, the cut at the budget as a budget drop', () => {
  const { r, a } = stepped({ hintQueueMax: 100, hintUnitBurst: 10, hintUnitsPerSecond: 10 });
  assert.equal(a.hints(batch(30)), { status: Status.OK, result: 10 });
  const c = r.dev.counters();
  assert.is(c.hintBudgetDropped, 20);
  assert.is(c.hintQueueDropped, 0);
});

test('the source is the one loaded when the batch was decoded, whatever happens before its turn', async () => {
  const { r, a, turn } = stepped();
  const load = r.dev.submit({ op: 'load', pkg: pkg('one') });
  a.serve(() => ({ outcome: 'OK', errno: 0, progIds: [7], text: '' }));
  const { handle } = await load;
  const sources: (number | undefined)[] = [];
  r.dev.onHints(1, (_rec, _type, source) => sources.push(source));
  a.hints({ dropped: 0, records: [sourceRecord(handle), ...batch(10).records] });
  const un = r.dev.submit({ op: 'unload', handle });
  a.serve(() => ({ outcome: 'OK', errno: 0, progIds: [], text: '' }));
  await un;
  while (turn());
  assert.equal(sources, Array(10).fill(handle));
  assert.is(r.dev.counters().hintUnattributed, 0);
});

test('close() drops the records waiting; a turn after it does nothing', () => {
  const { r, a, got, turn } = stepped();
  a.hints(batch(40));
  r.dev.close();
  assert.is(r.dev.counters().hintQueued, 0);
  while (turn());
  assert.is(got.length, 8);
});

test('with the real event loop, I/O that is ready runs between two slices of one burst', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'tsvmm-slices-'));
  const r = rig({ shm: new Uint8Array(1024 * 1024), hintUnitsPerSecond: 10_000, hintUnitBurst: 10_000 });
  const a = new SimAgent(r.bus, r.shm);
  a.hello();
  let handled = 0;
  r.dev.onHints(1, () => handled++);
  const server = createServer();
  try {
    const path = join(dir, 's');
    await new Promise<void>((res) => server.listen(path, res));
    const accepted = new Promise<import('node:net').Socket>((res) => server.once('connection', res));
    const client = createConnection(path);
    const s = await accepted;
    let handledAtData = -1;
    const data = new Promise<void>((res) => s.once('data', () => {
      handledAtData = handled;
      res();
    }));
    await new Promise<void>((res) => client.write('x', () => res())); // in the kernel's buffer now
    a.hints(batch(64));
    assert.is(handled, 8);
    await data;
    const drained = new Promise<void>((res) => {
      const check = () => (r.dev.counters().hintQueued === 0 ? res() : setImmediate(check));
      check();
    });
    await drained;
    assert.is(handled, 64);
    assert.ok(handledAtData >= 8 && handledAtData < 64, `the socket's data came when ${handledAtData} of 64 records were handled`);
    client.destroy();
    s.destroy();
  } finally {
    server.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test.run();
