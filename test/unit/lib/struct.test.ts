// lib/struct.ts: one description gives size, offsets, read and write; bad descriptions and
// values that do not fit are refused, never truncated.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { bytes, i32, nested, struct, u16, u32, u64, u8 } from '../../../lib/struct';

const Inner = struct('inner', 4, { a: u16(0), b: u8(2) });
const Outer = struct('outer', 32, {
  tag: u8(0), port: u16(2), count: u32(4), addr: u64(8), fd: i32(16), name: bytes(20, 6), inner: nested(26, Inner),
});

test('offsets and C names come from the one description', () => {
  assert.equal(Outer.offsets, { tag: 0, port: 2, count: 4, addr: 8, fd: 16, name: 20, inner: 26 });
  assert.equal(Outer.layout().map(([k, c, o, w]) => [k, c, o, w]), [
    ['tag', 'tag', 0, 1], ['port', 'port', 2, 2], ['count', 'count', 4, 4], ['addr', 'addr', 8, 8], ['fd', 'fd', 16, 4],
    ['name', 'name', 20, 6], ['inner', 'inner', 26, 4],
  ]);
  assert.equal(struct('s', 8, { bufAlloc: u32(0), fwdCnt: u32(4, 'fwd_count') }).layout().map(([, c]) => c), ['buf_alloc', 'fwd_count']);
});

test('write then read round-trips, little-endian, at a base offset', () => {
  const b = new Uint8Array(40).fill(0xaa);
  const v = { tag: 7, port: 0x1234, count: 0xdeadbeef, addr: 0x0102030405060708n, fd: -1, name: Uint8Array.of(1, 2, 3), inner: { a: 0xbeef, b: 9 } };
  Outer.write(b, v, 8);
  assert.is(b[8], 7);
  assert.equal([...b.subarray(10, 12)], [0x34, 0x12]);
  assert.equal([...b.subarray(16, 24)], [8, 7, 6, 5, 4, 3, 2, 1]);
  assert.is(b[9], 0xaa, 'padding between fields is left alone');
  const r = Outer.read(b, 8);
  assert.equal(r, { ...v, name: Uint8Array.of(1, 2, 3, 0, 0, 0) });
  b[28] = 0x55;
  assert.is(r.name[0], 1, 'byte arrays are copies');
});

test('write leaves fields it is not given as they are; encode starts from zeros', () => {
  const b = Outer.encode({ count: 5 });
  assert.is(b.length, 32);
  Outer.write(b, { port: 1 });
  assert.is(Outer.read(b).count, 5);
  assert.is(Outer.read(b).port, 1);
  Outer.write(b, { inner: { b: 3 } });
  assert.equal(Outer.read(b).inner, { a: 0, b: 3 });
});

const isRange = (e: unknown): boolean => e instanceof RangeError;

test('values that do not fit their field are RangeErrors', () => {
  const b = new Uint8Array(32);
  for (const bad of [{ tag: 256 }, { tag: -1 }, { port: 1.5 }, { count: 2 ** 32 }, { fd: 2 ** 31 }, { addr: -1n }, { addr: 2n ** 64n }, { name: new Uint8Array(7) }]) {
    assert.throws(() => Outer.write(b, bad as never), isRange, JSON.stringify(bad, (_, x) => (typeof x === 'bigint' ? `${x}n` : x)));
  }
  assert.throws(() => Outer.read(new Uint8Array(31)), isRange, 'too short to read');
  assert.throws(() => Outer.write(b, { tag: 1 }, 1), isRange, 'too short to write at 1');
  assert.ok(b.every((x) => x === 0), 'nothing written by a refused call');
});

test('a description whose fields overlap or overrun is refused at definition', () => {
  assert.throws(() => struct('x', 4, { a: u32(0), b: u8(3) }), /overlaps/);
  assert.throws(() => struct('x', 4, { a: u32(1) }), /does not fit/);
  assert.throws(() => struct('x', 4, { 'a-b': u8(0) }), /not an identifier/);
});

test.run();
