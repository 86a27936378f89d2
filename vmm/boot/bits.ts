// Bit-field layouts of x86 boot structures (segment descriptors, page-table entries), in one
// small typed helper: each layout names its fields once, and pack/unpack use those names.

export type BitLayout<K extends string> = Record<K, readonly [shift: number, width: number]>;

export function pack<K extends string>(layout: BitLayout<K>, fields: Partial<Record<K, bigint | number>>): bigint {
  let v = 0n;
  for (const k of Object.keys(fields) as K[]) {
    const [shift, width] = layout[k];
    const f = BigInt(fields[k]!);
    const mask = (1n << BigInt(width)) - 1n;
    if (f < 0n || f > mask) throw new RangeError(`bit field ${k} = ${f} does not fit in ${width} bits`);
    v |= f << BigInt(shift);
  }
  return v;
}

export function unpack<K extends string>(layout: BitLayout<K>, v: bigint): Record<K, number> {
  const out = {} as Record<K, number>;
  for (const k of Object.keys(layout) as K[]) {
    const [shift, width] = layout[k];
    out[k] = Number((v >> BigInt(shift)) & ((1n << BigInt(width)) - 1n));
  }
  return out;
}

/** A code/data/system segment descriptor in the GDT (Intel SDM vol. 3, 3.4.5). */
export const SegmentDescriptor = {
  limitLow: [0, 16], baseLow: [16, 24], type: [40, 4], s: [44, 1], dpl: [45, 2], present: [47, 1],
  limitHigh: [48, 4], avl: [52, 1], l: [53, 1], db: [54, 1], g: [55, 1], baseHigh: [56, 8],
} as const satisfies BitLayout<string>;

/** A page-directory entry mapping a 2 MiB page, or a table entry pointing at the next level. */
export const PageEntry = {
  present: [0, 1], writable: [1, 1], user: [2, 1], pageSize: [7, 1], addr: [12, 40],
} as const satisfies BitLayout<string>;
