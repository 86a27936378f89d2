// Address dispatch (devices/bus.ts) and guest-address bounds checking (devices/memory.ts).
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { Bus, type BusDevice } from '../../../devices/bus';
import { GuestMemory, u64ToSafe } from '../../../devices/memory';

class Recorder implements BusDevice {
  log: string[] = [];
  constructor(private readonly fill: number) {}
  read(offset: number, data: Uint8Array): void {
    this.log.push(`r${offset}/${data.length}`);
    data.fill(this.fill);
  }
  write(offset: number, data: Uint8Array): void {
    this.log.push(`w${offset}=${[...data].join(',')}`);
  }
}

test('bus: overlapping ranges are refused, adjacent ones accepted', () => {
  const bus = new Bus();
  bus.insert(0x3f8, 8, 'com1', new Recorder(0));
  for (const [base, len] of [[0x3f8, 8], [0x3f0, 9], [0x3ff, 1], [0x3fa, 2], [0x3f0, 0x20]] as const) {
    assert.throws(() => bus.insert(base, len, 'x', new Recorder(0)), /overlaps com1/, `0x${base.toString(16)}+${len}`);
  }
  bus.insert(0x3f0, 8, 'below', new Recorder(0));
  bus.insert(0x400, 8, 'above', new Recorder(0));
  assert.throws(() => bus.insert(0x500, 0, 'empty', new Recorder(0)), /empty/);
});

test('bus: dispatch with offsets inside the device; accesses must fit in one range', () => {
  const bus = new Bus();
  const a = new Recorder(0x11);
  const c = new Recorder(0x22);
  bus.insert(0x1000, 0x100, 'a', a);
  bus.insert(0x60, 1, 'c', c);
  const d = new Uint8Array(4);
  assert.ok(bus.read(0x1010, d));
  assert.equal([...d], [0x11, 0x11, 0x11, 0x11]);
  assert.ok(bus.write(0x10fc, Uint8Array.of(1, 2, 3, 4)));
  assert.ok(bus.read(0x60, d.subarray(0, 1)));
  assert.equal(a.log, ['r16/4', 'w252=1,2,3,4']);
  assert.equal(c.log, ['r0/1']);
  assert.is(bus.find(0x10fe, 4), undefined, 'crosses the end of a');
  assert.is(bus.find(0x1000 - 1, 2), undefined, 'starts before a');
});

test('bus: unclaimed reads are all ones, unclaimed writes dropped', () => {
  const bus = new Bus();
  const a = new Recorder(0);
  bus.insert(0x1000, 0x10, 'a', a);
  const d = new Uint8Array(4);
  assert.not.ok(bus.read(0x2000, d));
  assert.equal([...d], [0xff, 0xff, 0xff, 0xff]);
  d.fill(0);
  assert.not.ok(bus.read(0x100e, d));
  assert.equal([...d], [0xff, 0xff, 0xff, 0xff], 'straddling the end is unclaimed');
  assert.not.ok(bus.write(0x2000, d));
  assert.equal(a.log, []);
});

const GiB = 0x4000_0000;
/** Two regions like a guest with RAM below 3 GiB and above 4 GiB, scaled down to pages. */
function mem() {
  const low = new Uint8Array(0x2000).map((_, i) => i & 0xff);
  const high = new Uint8Array(0x1000).fill(0x77);
  return new GuestMemory([{ gpa: 4 * GiB, bytes: high }, { gpa: 0, bytes: low }]);
}

test('memory: slices inside a region are views at the right place', () => {
  const m = mem();
  assert.is(m.size, 0x3000);
  assert.equal(m.layout.map((r) => r.gpa), [0, 4 * GiB], 'sorted');
  const v = m.slice(0x10, 4)!;
  assert.equal([...v], [0x10, 0x11, 0x12, 0x13]);
  v[0] = 0xee;
  assert.is(m.slice(0x10, 1)![0], 0xee, 'a view, not a copy');
  assert.is(m.slice(4 * GiB + 0xfff, 1)![0], 0x77);
  assert.is(m.slice(0, 0x2000)!.length, 0x2000, 'a whole region');
});

test('memory: len 0 is valid inside and at the end of a region, not in a hole', () => {
  const m = mem();
  assert.is(m.slice(0x100, 0)!.length, 0);
  assert.is(m.slice(0x2000, 0)!.length, 0, 'at the end');
  assert.is(m.slice(4 * GiB + 0x1000, 0)!.length, 0);
  assert.is(m.slice(0x3000, 0), undefined, 'in the hole');
});

test('memory: out-of-range slices are undefined', () => {
  const m = mem();
  const bad: [number, number, string][] = [
    [-1, 1, 'negative address'],
    [0, -1, 'negative length'],
    [0.5, 1, 'non-integer address'],
    [0, 1.5, 'non-integer length'],
    [NaN, 1, 'NaN'],
    [0x1fff, 2, 'past the end of a region'],
    [0x2000, 1, 'at the end of a region'],
    [3 * GiB, 1, 'the hole'],
    [4 * GiB - 1, 2, 'crossing from the hole into a region'],
    [0, 0x3000, 'crossing the hole into the next region'],
    [4 * GiB + 0x1000, 1, 'past the last region'],
    [2 ** 53, 1, 'unsafe integer'],
    [4 * GiB, Number.MAX_SAFE_INTEGER, 'overflowing length'],
  ];
  for (const [gpa, len, why] of bad) assert.is(m.slice(gpa, len), undefined, why);
});

test('memory: expect/write throw RangeError naming the range', () => {
  const m = mem();
  assert.throws(() => m.write(0x1fff, Uint8Array.of(1, 2)), /0x1fff\+0x2 is not RAM/);
  assert.throws(() => m.expect(3 * GiB, 1), RangeError);
  m.write(0x1ffe, Uint8Array.of(9, 8));
  assert.equal([...m.expect(0x1ffe, 2)], [9, 8]);
});

test('memory: u64ToSafe', () => {
  assert.is(u64ToSafe(5, 0), 5);
  assert.is(u64ToSafe(0, 1), 2 ** 32);
  assert.is(u64ToSafe(0xffffffff, 0x1fffff), Number.MAX_SAFE_INTEGER);
  assert.is(u64ToSafe(0, 0x200000), undefined);
});

test.run();
