// IoVecBuffer (devices/virtio/iovec.ts): scatter-gather over guest memory. Every copy is checked
// against a flat reference at every offset and length, in any order (the cursor must never
// change a result), with empty segments in between.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GuestMemory } from '../../../devices/memory';
import { IoVecBuffer } from '../../../devices/virtio/iovec';
import { iovOf } from './iov';

/** Segments of these sizes over one flat array 1, 2, 3, …; returns the buffer and the reference bytes. */
function shaped(sizes: number[]): { iov: IoVecBuffer; flat: Uint8Array } {
  const total = sizes.reduce((a, b) => a + b, 0);
  const flat = Uint8Array.from({ length: total }, (_, i) => (i + 1) & 0xff);
  let at = 0;
  const parts = sizes.map((n) => flat.subarray(at, (at += n)));
  return { iov: iovOf(...parts), flat };
}

const SHAPES = [[7], [3, 4], [1, 0, 5, 0, 0, 2], [0, 4, 4, 4], [2, 2, 2, 2, 2, 2, 2]];

test('append: a range that is not all RAM is refused and adds nothing', () => {
  const ram = new Uint8Array(0x100);
  const mem = new GuestMemory([{ gpa: 0x1000, bytes: ram }]);
  const iov = new IoVecBuffer();
  assert.ok(iov.append(mem, 0x1000, 0x10));
  assert.not.ok(iov.append(mem, 0x10f8, 0x10), 'runs past the region');
  assert.not.ok(iov.append(mem, 0x800, 4), 'below RAM');
  assert.not.ok(iov.append(mem, -1, 1), 'negative');
  assert.not.ok(iov.append(mem, 0x1000, Number.NaN), 'NaN length');
  assert.is(iov.length, 0x10);
  assert.is(iov.segmentCount, 1);
  assert.ok(iov.append(mem, 0x10ff, 1), 'the last byte');
  assert.ok(iov.append(mem, 0x1100, 0), 'an empty range at the end');
  assert.is(iov.length, 0x11);
});

test('readAt and copyOut match the flat bytes at every offset and length, in any order', () => {
  for (const sizes of SHAPES) {
    const { iov, flat } = shaped(sizes);
    const cases: [number, number][] = [];
    for (let off = 0; off <= flat.length + 1; off++) for (let len = 0; len <= flat.length + 1; len++) cases.push([off, len]);
    // Forward, then backward: a stale cursor would show up in the second pass.
    for (const [off, len] of [...cases, ...cases.reverse()]) {
      const want = [...flat.subarray(off, off + len)];
      const dst = new Uint8Array(len).fill(0xee);
      const n = iov.readAt(dst, off);
      assert.is(n, want.length, `${sizes} readAt(${off}, ${len})`);
      assert.equal([...dst.subarray(0, n)], want);
      assert.ok(dst.subarray(n).every((b) => b === 0xee), 'nothing past what was read');
      assert.equal([...iov.copyOut(off, len)], want, `${sizes} copyOut(${off}, ${len})`);
    }
  }
});

test('writeAt scatters into the right bytes at every offset and length, in any order', () => {
  for (const sizes of SHAPES) {
    const { iov, flat } = shaped(sizes);
    const ref = [...flat];
    const cases: [number, number][] = [];
    for (let off = 0; off <= flat.length + 1; off++) for (let len = 0; len <= flat.length + 1; len++) cases.push([off, len]);
    let stamp = 0;
    for (const [off, len] of [...cases, ...cases.reverse()]) {
      const src = Uint8Array.from({ length: len }, (_, i) => (stamp + i) & 0xff);
      stamp = (stamp + 7) & 0xff;
      const n = iov.writeAt(src, off);
      for (let i = 0; i < len && off + i < ref.length; i++) ref[off + i] = src[i]!;
      assert.is(n, Math.max(0, Math.min(len, flat.length - off)), `${sizes} writeAt(${off}, ${len})`);
      assert.equal([...flat], ref, `${sizes} after writeAt(${off}, ${len})`);
    }
  }
});

test('sequential appends (an RX payload in pieces) land back to back across segments', () => {
  const { iov, flat } = shaped([44, 10, 3, 0, 50]);
  flat.fill(0);
  let at = 44;
  for (const piece of [5, 5, 1, 2, 40, 30]) {
    const n = iov.writeAt(new Uint8Array(piece).fill(piece), at);
    at += n;
  }
  assert.is(at, flat.length, 'filled to the end, the last piece clipped');
  assert.equal([...flat.subarray(44, 58)], [5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 1, 2, 2, 40]);
  assert.ok(flat.subarray(0, 44).every((b) => b === 0), 'the header area is untouched');
});

test('views alias guest memory; copyOut does not', () => {
  const { iov, flat } = shaped([3, 4, 5]);
  const v = iov.views(2, 6);
  assert.equal(v.map((x) => x.length), [1, 4, 1]);
  const c = iov.copyOut(2, 6);
  flat[2] = 99;
  assert.is(v[0]![0], 99);
  assert.is(c[0], 3);
  const out: Uint8Array[] = [new Uint8Array(1)];
  assert.is(iov.views(0, 100, out), out, 'appends to the caller\'s array');
  assert.equal(out.map((x) => x.length), [1, 3, 4, 5]);
  assert.equal(iov.views(12, 1), []);
});

test('offsets outside the buffer (negative, NaN, past the end) copy nothing', () => {
  const { iov, flat } = shaped([4, 4]);
  const before = [...flat];
  for (const off of [-1, Number.NaN, 8, 9, Infinity]) {
    assert.is(iov.readAt(new Uint8Array(4), off), 0);
    assert.is(iov.writeAt(new Uint8Array(4).fill(7), off), 0);
    assert.is(iov.copyOut(off, 4).length, 0);
    assert.equal(iov.views(off, 4), []);
  }
  assert.equal([...flat], before);
  assert.is(new IoVecBuffer().readAt(new Uint8Array(1)), 0);
});

test('writeTo: one write from a single segment, writev across segments, straight from the views', () => {
  const dir = mkdtempSync(join(tmpdir(), 'tsvmm-iovec-'));
  try {
    const { iov, flat } = shaped([44, 3, 0, 9]);
    const file = join(dir, 'out');
    const fd = openSync(file, 'w');
    try {
      assert.is(iov.writeTo(fd, 10, 20), 20, 'inside the first segment');
      assert.is(iov.writeTo(fd, 40, 100), 16, 'across segments, clipped');
      assert.is(iov.writeTo(fd, 56, 1), 0);
    } finally {
      closeSync(fd);
    }
    assert.equal([...readFileSync(file)], [...flat.subarray(10, 30), ...flat.subarray(40)]);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test.run();
