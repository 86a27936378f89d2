// Binary struct layouts, each described once: a struct names its fields with their offsets and
// widths, and that one description gives `size`, `offsets` (for ABI tests and for hot paths that
// read with a DataView of their own), `read` and `write`, with the value types inferred (u64 →
// bigint, byte arrays → Uint8Array, nested structs → objects, the rest → number). Everything is
// little-endian: x86-64, virtio and every wire format tsvmm speaks. This module owns the
// encoding; it knows no particular struct (kvm/layout.ts, vmm/boot/setup-header.ts, … do).

interface FieldBase {
  readonly offset: number;
  /** The field's name in the C header, when it is not the snake_case of its TS name. */
  readonly c?: string;
}
export interface IntField extends FieldBase {
  readonly kind: 'u8' | 'u16' | 'u32' | 'i32';
}
export interface BigField extends FieldBase {
  readonly kind: 'u64';
}
export interface BytesField extends FieldBase {
  readonly kind: 'bytes';
  readonly length: number;
}
export interface NestedField<F extends Fields> extends FieldBase {
  readonly kind: 'struct';
  readonly struct: Struct<F>;
}
export type Field = IntField | BigField | BytesField | NestedField<Fields>;
export interface Fields {
  readonly [name: string]: Field;
}

export type FieldValue<T extends Field> = T extends BigField
  ? bigint
  : T extends BytesField
    ? Uint8Array
    : T extends NestedField<infer F>
      ? StructValue<F>
      : number;
/** The decoded value of a struct with fields F. */
export type StructValue<F extends Fields> = { -readonly [K in keyof F]: FieldValue<F[K]> };
/** What `write` takes: any subset of the fields, nested structs included. */
export type StructInput<F extends Fields> = {
  [K in keyof F]?: F[K] extends NestedField<infer G> ? StructInput<G> : FieldValue<F[K]>;
};
/** The value type of a Struct constant: `ValueOf<typeof KvmSegment>`. */
export type ValueOf<S> = S extends Struct<infer F> ? StructValue<F> : never;

export const u8 = (offset: number, c?: string): IntField => ({ kind: 'u8', offset, c });
export const u16 = (offset: number, c?: string): IntField => ({ kind: 'u16', offset, c });
export const u32 = (offset: number, c?: string): IntField => ({ kind: 'u32', offset, c });
export const i32 = (offset: number, c?: string): IntField => ({ kind: 'i32', offset, c });
export const u64 = (offset: number, c?: string): BigField => ({ kind: 'u64', offset, c });
export const bytes = (offset: number, length: number, c?: string): BytesField => ({ kind: 'bytes', offset, length, c });
export const nested = <F extends Fields>(offset: number, struct: Struct<F>, c?: string): NestedField<F> => ({ kind: 'struct', offset, struct, c });

const INT_RANGE = { u8: [0, 0xff], u16: [0, 0xffff], u32: [0, 0xffff_ffff], i32: [-0x8000_0000, 0x7fff_ffff] } as const;

function widthOf(f: Field): number {
  switch (f.kind) {
    case 'u8': return 1;
    case 'u16': return 2;
    case 'u32': case 'i32': return 4;
    case 'u64': return 8;
    case 'bytes': return f.length;
    case 'struct': return f.struct.size;
  }
}

const snake = (name: string): string => name.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);

const viewOf = (b: Uint8Array | DataView): DataView => (b instanceof DataView ? b : new DataView(b.buffer, b.byteOffset, b.byteLength));

export class Struct<F extends Fields> {
  /** Field name → byte offset from the start of the struct. */
  readonly offsets: { readonly [K in keyof F]: number };
  private readonly list: readonly (readonly [keyof F & string, Field])[];
  /**
   * read's and write's compiled code, made on first use: compiling them for every struct when
   * the modules load took ~9 ms of a ~150 ms start natively (a CPU profile of \`tsvmm run\`),
   * mostly for structs a given command never touches.
   */
  private codec?: [reader: (dv: DataView, base: number) => StructValue<F>, writer: (dv: DataView, value: StructInput<F>, base: number) => void];

  /** Checks that every field lies inside `size` and that no two fields overlap. */
  constructor(
    /** The C struct this describes (e.g. "kvm_sregs"), for messages and ABI tests. */
    readonly name: string,
    readonly size: number,
    readonly fields: F,
  ) {
    this.list = Object.entries(fields) as [keyof F & string, Field][];
    const offsets = {} as { [K in keyof F]: number };
    const taken = [...this.list].sort((a, b) => a[1].offset - b[1].offset);
    let end = 0;
    let prev = '';
    for (const [k, f] of taken) {
      // compile() puts field names into code: checked here, not only when it first runs.
      if (!/^[A-Za-z_$][\w$]*$/.test(k)) throw new RangeError(`struct ${name}: field name ${k} is not an identifier`);
      const w = widthOf(f);
      if (!Number.isInteger(f.offset) || f.offset < 0 || f.offset + w > size) throw new RangeError(`struct ${name}: field ${k} (${f.offset}+${w}) does not fit in ${size} bytes`);
      if (f.offset < end) throw new RangeError(`struct ${name}: field ${k} at ${f.offset} overlaps ${prev}`);
      end = f.offset + w;
      prev = k;
      offsets[k] = f.offset;
    }
    this.offsets = offsets;
  }

  /** Field name → [C field name, offset, width], in declaration order (ABI tests iterate this). */
  layout(): [field: keyof F & string, cName: string, offset: number, width: number][] {
    return this.list.map(([k, f]) => [k, f.c ?? snake(k), f.offset, widthOf(f)]);
  }

  /** Decodes the struct at byte `base` of `src`; byte arrays are copied, never aliased. */
  read(src: Uint8Array | DataView, base = 0): StructValue<F> {
    const dv = viewOf(src);
    if (!(base >= 0 && base + this.size <= dv.byteLength)) throw new RangeError(`struct ${this.name}: ${this.size} bytes at ${base} run past ${dv.byteLength}`);
    return (this.codec ??= compile(this))[0](dv, base);
  }

  /**
   * Encodes the given fields at byte `base` of `dst`; fields left out keep their bytes. A number
   * outside its field's range is a RangeError (never silently truncated); a byte array shorter
   * than its field is zero padded, a longer one an error.
   */
  write(dst: Uint8Array | DataView, value: StructInput<F>, base = 0): void {
    const dv = viewOf(dst);
    if (!(base >= 0 && base + this.size <= dv.byteLength)) throw new RangeError(`struct ${this.name}: ${this.size} bytes at ${base} run past ${dv.byteLength}`);
    (this.codec ??= compile(this))[1](dv, value, base);
  }

  /** A new zeroed `size`-byte buffer holding `value`. */
  encode(value: StructInput<F>): Uint8Array {
    const b = new Uint8Array(this.size);
    this.write(b, value);
    return b;
  }
}

// read and write are compiled once per struct (on first use) into straight-line DataView code (as a hand-written
// codec would be): a generic loop over the fields with dynamic property names measured 5-16x
// slower per call (docs/architecture.md), too slow for a per-packet header. The generated source
// contains only field names (checked to be identifiers) and integer offsets from the struct's
// own description, never data.
type Reader = (dv: DataView, base: number) => never;
type Writer = (dv: DataView, value: object, base: number) => void;

function compile<F extends Fields>(s: Struct<F>): [Reader, Writer] {
  const nestedStructs: Struct<Fields>[] = [];
  const reads: string[] = [];
  const writes: string[] = [];
  for (const [k, , offset] of s.layout()) {
    const f = s.fields[k]!;
    const at = `b + ${offset}`;
    const check = (cond: string) => `if (!(${cond})) bad(${JSON.stringify(k)}, x);`;
    switch (f.kind) {
      case 'u8': case 'u16': case 'u32': case 'i32': {
        const [min, max] = INT_RANGE[f.kind];
        const get = { u8: `dv.getUint8(${at})`, u16: `dv.getUint16(${at}, true)`, u32: `dv.getUint32(${at}, true)`, i32: `dv.getInt32(${at}, true)` }[f.kind];
        const set = { u8: `dv.setUint8(${at}, x)`, u16: `dv.setUint16(${at}, x, true)`, u32: `dv.setUint32(${at}, x, true)`, i32: `dv.setInt32(${at}, x, true)` }[f.kind];
        reads.push(`${k}: ${get}`);
        writes.push(`x = v.${k}; if (x !== undefined) { ${check(`Number.isInteger(x) && x >= ${min} && x <= ${max}`)} ${set}; }`);
        break;
      }
      case 'u64':
        reads.push(`${k}: dv.getBigUint64(${at}, true)`);
        writes.push(`x = v.${k}; if (x !== undefined) { ${check(`typeof x === 'bigint' && x >= 0n && x <= 0xffffffffffffffffn`)} dv.setBigUint64(${at}, x, true); }`);
        break;
      case 'bytes':
        reads.push(`${k}: new Uint8Array(dv.buffer, dv.byteOffset + ${at}, ${f.length}).slice()`);
        writes.push(`x = v.${k}; if (x !== undefined) { ${check(`x instanceof Uint8Array && x.length <= ${f.length}`)} const t = new Uint8Array(dv.buffer, dv.byteOffset + ${at}, ${f.length}); t.set(x); t.fill(0, x.length); }`);
        break;
      case 'struct': {
        const i = nestedStructs.push(f.struct) - 1;
        reads.push(`${k}: nested[${i}].read(dv, ${at})`);
        writes.push(`x = v.${k}; if (x !== undefined) nested[${i}].write(dv, x, ${at});`);
        break;
      }
    }
  }
  const bad = (k: string, x: unknown): never => {
    throw new RangeError(`struct ${s.name}: ${k} = ${String(x)} does not fit the field`);
  };
  const make = (body: string): unknown => new Function('nested', 'bad', body)(nestedStructs, bad);
  return [
    make(`return (dv, b) => ({ ${reads.join(', ')} });`) as Reader,
    make(`return (dv, v, b) => { let x; ${writes.join(' ')} };`) as Writer,
  ];
}

/** Describes C struct `name` of `size` bytes. */
export function struct<F extends Fields>(name: string, size: number, fields: F): Struct<F> {
  return new Struct(name, size, fields);
}
