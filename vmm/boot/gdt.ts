// The boot GDT and the segment registers that match it. Selectors follow the Linux boot
// protocol (__BOOT_CS = 0x10, __BOOT_DS = 0x18); the kernel loads its own GDT right away.

import type { Segment } from '../../kvm/layout';
import { type BitLayout, pack, unpack } from '../../lib/bits';

/** A code/data/system segment descriptor in the GDT (Intel SDM vol. 3, 3.4.5). */
const SegmentDescriptor = {
  limitLow: [0, 16], baseLow: [16, 24], type: [40, 4], s: [44, 1], dpl: [45, 2], present: [47, 1],
  limitHigh: [48, 4], avl: [52, 1], l: [53, 1], db: [54, 1], g: [55, 1], baseHigh: [56, 8],
} as const satisfies BitLayout<string>;

export interface GdtEntry {
  base: number;
  limit: number; // 20 bits, in pages when g = 1
  type: number;
  s: number;
  l: number;
  db: number;
  g: number;
}

const CODE64: GdtEntry = { base: 0, limit: 0xfffff, type: 0xb, s: 1, l: 1, db: 0, g: 1 };
const DATA: GdtEntry = { base: 0, limit: 0xfffff, type: 0x3, s: 1, l: 0, db: 1, g: 1 };
const TSS: GdtEntry = { base: 0, limit: 0xfffff, type: 0xb, s: 0, l: 0, db: 0, g: 1 };

export const BOOT_CS = 0x10;
export const BOOT_DS = 0x18;
export const BOOT_TSS = 0x20;

export function descriptor(e: GdtEntry): bigint {
  return pack(SegmentDescriptor, {
    limitLow: e.limit & 0xffff, limitHigh: e.limit >>> 16,
    baseLow: e.base & 0xffffff, baseHigh: e.base >>> 24,
    type: e.type, s: e.s, dpl: 0, present: 1, avl: 0, l: e.l, db: e.db, g: e.g,
  });
}

/** The hidden part of a segment register as KVM wants it, derived from the descriptor. */
export function segmentFromDescriptor(selector: number, d: bigint): Segment {
  const f = unpack(SegmentDescriptor, d);
  const rawLimit = f.limitLow | (f.limitHigh << 16);
  return {
    base: BigInt(f.baseLow | (f.baseHigh << 24)),
    limit: f.g ? rawLimit * 0x1000 + 0xfff : rawLimit,
    selector, type: f.type, present: f.present, dpl: f.dpl, db: f.db, s: f.s, l: f.l, g: f.g, avl: f.avl,
    unusable: 0,
  };
}

/** GDT bytes (null, null, code64, data, tss) and the segments loaded from it. */
export function bootGdt(): { bytes: Uint8Array; cs: Segment; ds: Segment; tr: Segment } {
  const entries = [0n, 0n, descriptor(CODE64), descriptor(DATA), descriptor(TSS)];
  return {
    bytes: new Uint8Array(new BigUint64Array(entries).buffer),
    cs: segmentFromDescriptor(BOOT_CS, entries[2]!),
    ds: segmentFromDescriptor(BOOT_DS, entries[3]!),
    tr: segmentFromDescriptor(BOOT_TSS, entries[4]!),
  };
}
