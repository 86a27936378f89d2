// Boot GDT descriptors (vmm/boot/gdt.ts) against the well-known flat 64-bit values, and the
// segment registers derived from them.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { BOOT_CS, BOOT_DS, bootGdt, descriptor, segmentFromDescriptor } from '../../../vmm/boot/gdt';

const gdt = bootGdt();
const desc = (sel: number) => new DataView(gdt.bytes.buffer, gdt.bytes.byteOffset).getBigUint64(sel, true);

test('code64 and data descriptors are the well-known flat values', () => {
  assert.is(desc(BOOT_CS), 0x00af9b000000ffffn);
  assert.is(desc(BOOT_DS), 0x00cf93000000ffffn);
  assert.is(desc(0), 0n, 'null descriptor');
  assert.is(BOOT_CS, 0x10);
  assert.is(BOOT_DS, 0x18);
});

test('code segment: long mode, flat, 4 GiB limit with G', () => {
  const cs = gdt.cs;
  assert.is(cs.selector, 0x10);
  assert.is(cs.base, 0n);
  assert.is(cs.limit, 0xffffffff);
  assert.is(cs.l, 1);
  assert.is(cs.db, 0, 'D must be 0 when L is 1');
  assert.is(cs.g, 1);
  assert.is(cs.type, 0xb);
  assert.is(cs.s, 1);
  assert.is(cs.present, 1);
  assert.is(cs.dpl, 0);
});

test('data segment: writable, 32-bit default size, flat', () => {
  const ds = gdt.ds;
  assert.is(ds.selector, 0x18);
  assert.is(ds.limit, 0xffffffff);
  assert.is(ds.l, 0);
  assert.is(ds.db, 1);
  assert.is(ds.type, 0x3);
  assert.is(ds.present, 1);
});

test('TSS is a system segment (S=0, busy 64-bit TSS type)', () => {
  assert.is(gdt.tr.s, 0);
  assert.is(gdt.tr.type, 0xb);
  assert.is(gdt.tr.present, 1);
});

test('descriptor/segmentFromDescriptor round trip with base and byte-granular limit', () => {
  const d = descriptor({ base: 0x12345678, limit: 0xabcde, type: 0x3, s: 1, l: 0, db: 1, g: 0 });
  // base[31:24]=12 flags=4 (D) limit[19:16]=a access=93 base[23:0]=345678 limit[15:0]=bcde
  assert.is(d, 0x124a93345678bcden);
  const s = segmentFromDescriptor(0x28, d);
  assert.is(s.base, 0x12345678n);
  assert.is(s.limit, 0xabcde, 'G=0: the limit is in bytes');
  assert.is(s.g, 0);
});

test.run();
