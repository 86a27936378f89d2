// Bit-field layouts in one small typed helper: a layout (declared by its owner, e.g. the segment
// descriptor in vmm/boot/gdt.ts) names its fields once, and pack/unpack use those names.
// Byte-level struct layouts are lib/struct.ts's.

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
