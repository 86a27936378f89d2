// Split virtqueue, device side, driven directly (no transport): well-formed traffic, index
// wraparound, EVENT_IDX, and every malformed ring/chain the queue must refuse.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import {
  Queue,
  QueueError,
  VIRTQ_AVAIL_F_NO_INTERRUPT,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE,
} from '../../../devices/virtio/queue';
import { DATA, HIGH_RAM_END, HOLE_END, HOLE_START, MALICIOUS_CHAINS, Rings, TABLE, fakeMemory, layoutQueue, type FakeMemory, type QueueLayout } from './sim';

const W = VIRTQ_DESC_F_WRITE;
const N = VIRTQ_DESC_F_NEXT;
const I = VIRTQ_DESC_F_INDIRECT;

interface Setup {
  fake: FakeMemory;
  q: Queue;
  d: Rings;
  lay: QueueLayout;
}

function setup(size = 8, opts: { eventIdx?: boolean; indirect?: boolean; max?: number } = {}): Setup {
  const fake = fakeMemory();
  const lay = layoutQueue(0x1000, size);
  const d = new Rings(fake, lay);
  d.clear();
  const q = new Queue(fake.mem, opts.max ?? 256);
  configure(q, lay);
  q.eventIdx = opts.eventIdx ?? false;
  q.indirect = opts.indirect ?? true;
  q.ready = true;
  return { fake, q, d, lay };
}

function configure(q: Queue, lay: QueueLayout): void {
  q.size = lay.size;
  q.descAddr = lay.desc;
  q.availAddr = lay.avail;
  q.usedAddr = lay.used;
}

function throwsQueueError(fn: () => unknown, re: RegExp): void {
  try {
    fn();
  } catch (e) {
    assert.ok(e instanceof QueueError, `expected QueueError, got ${String(e)}`);
    assert.match((e as Error).message, re);
    return;
  }
  assert.unreachable(`expected QueueError matching ${re}`);
}

test('pop returns readable and writable views in order; addUsed fills the used ring', () => {
  const { fake, q, d, lay } = setup();
  fake.backing.set([1, 2, 3, 4], DATA);
  fake.backing.set([5, 6], DATA + 0x100);
  const head = d.addChain([
    { addr: DATA, len: 4 },
    { addr: DATA + 0x100, len: 2 },
    { addr: DATA + 0x200, len: 16, write: true },
    { addr: HOLE_END + 0x10, len: 8, write: true },
  ]);
  d.pushAvail(head);
  const c = q.pop();
  assert.ok(c);
  assert.is(c.head, head);
  assert.equal([...c.readable].map((b) => [...b]), [[1, 2, 3, 4], [5, 6]]);
  assert.is(c.readable.length, 6);
  assert.is(c.writable.length, 24);
  assert.equal([...c.readable.copyOut(0, 6)], [1, 2, 3, 4, 5, 6]);
  assert.equal([...c.readable.copyOut(3, 2)], [4, 5]);
  // Scatter across both writable buffers: 16 in the first, the rest in high RAM.
  const payload = new Uint8Array(20).map((_, i) => i + 1);
  assert.is(c.writable.writeAt(payload), 20);
  assert.equal([...fake.backing.subarray(HOLE_END + 0x10, HOLE_END + 0x14)], [17, 18, 19, 20]);
  assert.is(q.pop(), undefined);
  q.addUsed(c.head, 20);
  assert.equal(d.takeUsed(), [{ id: head, len: 20 }]);
  assert.is(d.usedIdx, 1);
  assert.ok(fake.holeIntact());
  void lay;
});

test('inspect: the driver\'s avail idx and used_event beside what the device took and published; nothing for a queue not ready', () => {
  const { q, d } = setup(8, { eventIdx: true });
  assert.equal(q.inspect(), { size: 8, avail: 0, seen: 0, used: 0, usedEvent: 0 });
  d.pushAvail(d.addChain([{ addr: DATA, len: 4 }]));
  d.pushAvail(d.addChain([{ addr: DATA + 0x10, len: 4 }]));
  d.setUsedEvent(5);
  const c = q.pop()!;
  q.addUsed(c.head, 0);
  assert.equal(q.inspect(), { size: 8, avail: 2, seen: 1, used: 1, usedEvent: 5 });
  q.ready = false;
  assert.is(q.inspect(), undefined);
});

test('a chain\'s buffers: reads and writes at offsets, partial copies, capacity', () => {
  const { fake, q, d } = setup();
  fake.backing.set([1, 2, 3], DATA);
  fake.backing.set([4, 5, 6], DATA + 0x10);
  d.pushAvail(d.addChain([
    { addr: DATA, len: 3 },
    { addr: DATA + 0x10, len: 3 },
    { addr: DATA + 0x20, len: 2, write: true },
    { addr: DATA + 0x30, len: 2, write: true },
  ]));
  const c = q.pop()!;
  assert.equal([...c.readable.copyOut(2, 3)], [3, 4, 5]);
  assert.equal([...c.readable.copyOut(5, 10)], [6]);
  assert.equal([...c.readable.copyOut(6, 1)], []);
  assert.equal([...c.readable.copyOut(-1, 1)], [], 'a negative offset reads nothing');
  assert.is(c.writable.writeAt(new Uint8Array([9, 9, 9, 9, 9]), 1), 3, 'capacity 4, offset 1');
  assert.equal([...fake.backing.subarray(DATA + 0x20, DATA + 0x22)], [0, 9]);
  assert.equal([...fake.backing.subarray(DATA + 0x30, DATA + 0x32)], [9, 9]);
  assert.is(c.writable.writeAt(new Uint8Array([1]), 4), 0);
});

test('a queue that is not ready pops nothing', () => {
  const { q, d } = setup();
  d.pushAvail(d.addChain([{ addr: DATA, len: 1 }]));
  q.ready = false;
  assert.is(q.pop(), undefined);
  q.ready = true;
  assert.ok(q.pop());
});

test('undoPop hands the same chain out again, once', () => {
  const { q, d } = setup();
  const h1 = d.addChain([{ addr: DATA, len: 1 }]);
  const h2 = d.addChain([{ addr: DATA, len: 2 }]);
  d.pushAvail(h1);
  d.pushAvail(h2);
  assert.is(q.pop()?.head, h1);
  q.undoPop();
  q.undoPop(); // second undo without a pop is ignored
  assert.is(q.pop()?.head, h1);
  assert.is(q.pop()?.head, h2);
  assert.is(q.pop(), undefined);
});

test('indices wrap around u16 over 70,000 requests on a 4-entry queue', () => {
  const { q, d, fake } = setup(4);
  for (let i = 0; i < 70_000; i++) {
    const n = (i % 3) + 1;
    const bufs = Array.from({ length: n }, (_, k) => ({ addr: DATA + 64 * k, len: 8, write: k === n - 1 }));
    const head = d.addChain(bufs);
    d.pushAvail(head);
    const c = q.pop();
    assert.ok(c);
    assert.is(c.head, head);
    assert.is(c.readable.segmentCount + c.writable.segmentCount, n);
    q.addUsed(c.head, 8);
    const used = d.takeUsed();
    assert.is(used.length, 1);
    assert.is(used[0]!.id, head);
  }
  assert.is(q.usedIndex, 70_000 & 0xffff);
  assert.is(q.availIndex, 70_000 & 0xffff);
  assert.ok(fake.holeIntact());
});

test('indirect descriptors: buffers come from the table, the head goes back', () => {
  const { q, d, fake } = setup();
  fake.backing.set([9, 8, 7], DATA);
  const head = d.addIndirect(TABLE, [
    { addr: DATA, len: 3 },
    { addr: DATA + 0x40, len: 5, write: true },
  ]);
  d.pushAvail(head);
  const c = q.pop();
  assert.ok(c);
  assert.is(c.head, head);
  assert.equal([...c.readable.copyOut(0, 3)], [9, 8, 7]);
  assert.is(c.writable.length, 5);
});

test('direct descriptors followed by one indirect descriptor', () => {
  const { q, d, lay } = setup();
  d.writeDesc(lay.desc, 0, DATA, 4, N, 1);
  d.writeDesc(lay.desc, 1, TABLE, 32, I);
  d.writeDesc(TABLE, 0, DATA + 0x10, 4, N, 1);
  d.writeDesc(TABLE, 1, DATA + 0x20, 4, W);
  d.pushAvail(0);
  const c = q.pop();
  assert.ok(c);
  assert.is(c.readable.segmentCount, 2);
  assert.is(c.writable.segmentCount, 1);
});

test('NO_INTERRUPT suppresses notification without EVENT_IDX', () => {
  const { q, d } = setup();
  assert.not.ok(q.needsNotification(), 'nothing added yet');
  d.pushAvail(d.addChain([{ addr: DATA, len: 1 }]));
  q.addUsed(q.pop()!.head, 0);
  assert.ok(q.needsNotification());
  assert.not.ok(q.needsNotification(), 'already signalled');
  d.setAvailFlags(VIRTQ_AVAIL_F_NO_INTERRUPT);
  d.pushAvail(d.addChain([{ addr: DATA, len: 1 }]));
  q.addUsed(q.pop()!.head, 0);
  assert.not.ok(q.needsNotification());
});

test('EVENT_IDX: avail_event moves only at an empty ring; used_event decides interrupts', () => {
  const { q, d } = setup(8, { eventIdx: true });
  assert.is(q.pop(), undefined);
  assert.is(d.availEvent, 0, 'empty ring: ask for a kick at the next buffer');
  for (let i = 0; i < 3; i++) d.pushAvail(d.addChain([{ addr: DATA, len: 1 }]));
  const heads = [q.pop()!.head, q.pop()!.head, q.pop()!.head];
  assert.is(d.availEvent, 0, 'still taking chains: no kicks wanted meanwhile');
  q.undoPop();
  assert.is(q.pop()!.head, heads[2], 'undoPop: the chain is still ours to take');
  assert.is(q.pop(), undefined);
  assert.is(d.availEvent, 3, 'drained: kick me at the next buffer');
  d.setUsedEvent(1); // interrupt me once used idx passes 1, i.e. reaches 2
  q.addUsed(heads[0]!, 0);
  assert.not.ok(q.needsNotification(), 'used idx 1 has not passed used_event 1');
  q.addUsed(heads[1]!, 0);
  q.addUsed(heads[2]!, 0);
  assert.ok(q.needsNotification(), 'used idx went 1 -> 3 across used_event 1');
  assert.not.ok(q.needsNotification());
});

test('EVENT_IDX: used_event comparison is u16 arithmetic across the wrap', () => {
  const { q, d } = setup(8, { eventIdx: true });
  // Run the indexes up to just below 0xffff.
  let expectFor = 0;
  for (let i = 0; i < 0xfffe; i++) {
    d.pushAvail(d.addChain([{ addr: DATA, len: 1 }]));
    q.addUsed(q.pop()!.head, 0);
    expectFor++;
  }
  d.setUsedEvent(0xffff);
  q.needsNotification(); // settle: old = new = 0xfffe
  d.pushAvail(d.addChain([{ addr: DATA, len: 1 }]));
  q.addUsed(q.pop()!.head, 0); // used idx 0xffff: has not passed used_event 0xffff
  assert.not.ok(q.needsNotification());
  d.pushAvail(d.addChain([{ addr: DATA, len: 1 }]));
  q.addUsed(q.pop()!.head, 0); // used idx wraps to 0: passed 0xffff
  assert.is(q.usedIndex, 0);
  assert.ok(q.needsNotification());
  d.setUsedEvent(0x0001);
  d.pushAvail(d.addChain([{ addr: DATA, len: 1 }]));
  d.pushAvail(d.addChain([{ addr: DATA, len: 1 }]));
  q.addUsed(q.pop()!.head, 0);
  assert.not.ok(q.needsNotification(), 'used idx 1 has not passed 1');
  q.addUsed(q.pop()!.head, 0);
  assert.ok(q.needsNotification(), 'used idx 2 passed 1');
  assert.ok(expectFor > 0);
});

test('EVENT_IDX: pop rereads the avail idx after finding the ring empty', () => {
  const { q, d } = setup(8, { eventIdx: true });
  assert.is(q.pop(), undefined);
  d.pushAvail(d.addChain([{ addr: DATA, len: 1 }]));
  assert.ok(q.pop(), 'avail idx is reread on every pop');
});

test('EVENT_IDX: a full u16 lap of used entries since the last check always notifies', () => {
  const { q, d } = setup(1, { eventIdx: true });
  d.setUsedEvent(0x7000);
  for (let i = 0; i < 0x10000; i++) q.addUsed(0, 0);
  assert.is(q.usedIndex, 0, 'used idx is back where it was: only the count tells');
  assert.ok(q.needsNotification());
});

// Every malformed ring or chain. Each case arranges memory and expects pop() (or activate) to throw.
const cases: Array<[string, RegExp, (s: Setup) => void, { eventIdx?: boolean; indirect?: boolean; size?: number }?]> = [
  ['queue size not a power of two', /power of two/, ({ q }) => { q.size = 6; q.ready = true; }],
  ['queue size zero', /power of two/, ({ q }) => { q.size = 0; q.ready = true; }],
  ['queue size above the maximum', /power of two/, ({ q }) => { q.size = 512; q.ready = true; }],
  ['descriptor table misaligned', /aligned/, ({ q }) => { q.descAddr += 8; q.ready = true; }],
  ['available ring misaligned', /aligned/, ({ q }) => { q.availAddr += 1; q.ready = true; }],
  ['used ring misaligned', /aligned/, ({ q }) => { q.usedAddr += 2; q.ready = true; }],
  ['descriptor table in the MMIO hole', /not in guest RAM/, ({ q }) => { q.descAddr = HOLE_START; q.ready = true; }],
  ['available ring running into the hole', /not in guest RAM/, ({ q }) => { q.availAddr = HOLE_START - 4; q.ready = true; }],
  ['used ring past the end of RAM', /not in guest RAM/, ({ q }) => { q.usedAddr = HIGH_RAM_END - 8; q.ready = true; }],
  ['used ring beyond 2^53', /not in guest RAM/, ({ q }) => { q.usedAddr = 2 ** 60; q.ready = true; }],
];

for (const c of MALICIOUS_CHAINS) cases.push([c.name, c.reason, ({ d, lay }) => c.arrange(d, lay), { indirect: c.indirect ?? true }]);

for (const [name, re, arrange, opts] of cases) {
  test(`refuses: ${name}`, () => {
    const s = setup(opts?.size ?? 8, opts);
    s.q.ready = false;
    configure(s.q, s.lay);
    s.q.ready = true;
    arrange(s);
    const before = s.d.usedIdx;
    throwsQueueError(() => s.q.pop(), re);
    assert.is(s.d.usedIdx, before, 'nothing was returned');
    assert.ok(s.fake.holeIntact(), 'nothing written into the hole');
  });
}

test('a rejected chain is consumed: the next pop moves on, it never spins', () => {
  const { q, d } = setup();
  d.pushAvail(d.addChain([{ addr: HOLE_START, len: 4 }]));
  d.pushAvail(d.addChain([{ addr: DATA, len: 4 }]));
  throwsQueueError(() => q.pop(), /not in guest RAM/);
  assert.ok(q.pop());
});

test('addUsed refuses a head out of range or a non-u32 length with QueueError', () => {
  const { q } = setup();
  throwsQueueError(() => q.addUsed(8, 0), /out of range/);
  throwsQueueError(() => q.addUsed(0, -1), /not a u32/);
  throwsQueueError(() => q.addUsed(0, 2 ** 32), /not a u32/);
});

test('activate() reports a bad configuration up front', () => {
  const { q } = setup();
  q.ready = false;
  q.descAddr = HOLE_START;
  q.ready = true;
  throwsQueueError(() => q.activate(), /descriptor table/);
});

test('reset() returns the queue to its power-on state', () => {
  const { q, d } = setup(8, { eventIdx: true });
  d.pushAvail(d.addChain([{ addr: DATA, len: 1 }]));
  q.addUsed(q.pop()!.head, 0);
  q.reset();
  assert.is(q.ready, false);
  assert.is(q.size, 256);
  assert.is(q.usedIndex, 0);
  assert.is(q.availIndex, 0);
  assert.is(q.eventIdx, false);
  assert.is(q.pop(), undefined);
});

test('the constructor refuses a max size that is not a power of two', () => {
  assert.throws(() => new Queue(fakeMemory().mem, 100), /power of two/);
  assert.throws(() => new Queue(fakeMemory().mem, 65536), /power of two/);
});

test.run();
