// AML encoder: the byte encodings of the small subset of ACPI Machine Language that the
// DSDT needs (names, integers, strings, packages, Name/Scope/Device/Method, resource
// templates). Owns AML opcodes and resource-descriptor layouts only; it knows nothing
// about tsvmm's devices or where tables live (vmm/acpi/dsdt.ts and tables.ts do).
// Reference: ACPI 6.5 §20.2 (AML grammar) and §6.4 (resource descriptors).

import { TsvmmError } from '../../lib/errors';

/** An encoded AML term (or resource descriptor): just bytes, concatenated by the builders. */
export type Aml = Uint8Array;

/** A value the encoder cannot represent (bad name, integer out of range, too many elements…). */
export class AmlError extends TsvmmError {}

const enum Op {
  Zero = 0x00,
  One = 0x01,
  Name = 0x08,
  BytePrefix = 0x0a,
  WordPrefix = 0x0b,
  DWordPrefix = 0x0c,
  StringPrefix = 0x0d,
  QWordPrefix = 0x0e,
  Scope = 0x10,
  Buffer = 0x11,
  Package = 0x12,
  Method = 0x14,
  DualNamePrefix = 0x2e,
  MultiNamePrefix = 0x2f,
  ExtPrefix = 0x5b,
  RootChar = 0x5c,
  ParentPrefix = 0x5e,
  Return = 0xa4,
}
const EXT_DEVICE = 0x82;

export function concat(parts: readonly Uint8Array[]): Uint8Array {
  let len = 0;
  for (const p of parts) len += p.length;
  const out = new Uint8Array(len);
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

// ---- PkgLength (§20.2.4) ------------------------------------------------------------

/**
 * Encodes `value` as a PkgLength in the fewest bytes (1–4). The value a package carries
 * counts the PkgLength bytes themselves, so callers usually want {@link withPkgLength}.
 */
export function encodePkgLength(value: number): Uint8Array {
  if (!Number.isInteger(value) || value < 0 || value >= 1 << 28) {
    throw new AmlError(`PkgLength ${value} is outside 0..2^28-1`);
  }
  if (value <= 0x3f) return Uint8Array.of(value);
  // Multi-byte form: bits 7-6 of the lead byte = count of following bytes, bits 3-0 = the
  // low nibble, following bytes = the rest, least significant first.
  const follow = value < 1 << 12 ? 1 : value < 1 << 20 ? 2 : 3;
  const out = new Uint8Array(1 + follow);
  out[0] = (follow << 6) | (value & 0x0f);
  for (let i = 1; i <= follow; i++) out[i] = (value >>> (4 + 8 * (i - 1))) & 0xff;
  return out;
}

/** `body` prefixed by the PkgLength that covers it (and the PkgLength's own bytes). */
export function withPkgLength(body: Uint8Array): Uint8Array {
  for (let n = 1; n <= 4; n++) {
    const total = body.length + n;
    if (encodedPkgLengthSize(total) === n) return concat([encodePkgLength(total), body]);
  }
  throw new AmlError(`AML package of ${body.length} bytes is too large for a PkgLength`);
}

function encodedPkgLengthSize(value: number): number {
  return value <= 0x3f ? 1 : value < 1 << 12 ? 2 : value < 1 << 20 ? 3 : 4;
}

// ---- Names (§20.2.2) -----------------------------------------------------------------

/** One 4-character NameSeg; shorter names are padded with '_' as ASL does ("_S5" → "_S5_"). */
export function nameSeg(seg: string): Uint8Array {
  if (!/^[A-Z_][A-Z0-9_]{0,3}$/.test(seg)) {
    throw new AmlError(`bad AML name segment "${seg}": 1-4 chars of A-Z, 0-9, _ (not leading digit)`);
  }
  const padded = seg.padEnd(4, '_');
  return Uint8Array.from(padded, (c) => c.charCodeAt(0));
}

/** A NameString: optional `\` root or `^` parent prefixes, then dot-separated segments. */
export function nameString(path: string): Uint8Array {
  let i = 0;
  const prefix: number[] = [];
  if (path.startsWith('\\')) {
    prefix.push(Op.RootChar);
    i = 1;
  } else {
    while (path[i] === '^') {
      prefix.push(Op.ParentPrefix);
      i++;
    }
  }
  const rest = path.slice(i);
  const segs = rest === '' ? [] : rest.split('.').map(nameSeg);
  if (segs.length > 255) throw new AmlError(`AML name "${path}" has more than 255 segments`);
  const head = Uint8Array.from(prefix);
  if (segs.length === 0) return concat([head, Uint8Array.of(0x00)]); // NullName
  if (segs.length === 1) return concat([head, segs[0]!]);
  if (segs.length === 2) return concat([head, Uint8Array.of(Op.DualNamePrefix), ...segs]);
  return concat([head, Uint8Array.of(Op.MultiNamePrefix, segs.length), ...segs]);
}

// ---- Data objects (§20.2.3) ----------------------------------------------------------

const U64_MAX = (1n << 64n) - 1n;

/**
 * An Integer in its shortest encoding: ZeroOp / OneOp, else Byte/Word/DWord/QWord const.
 * (OnesOp is avoided: its width depends on the table revision.)
 */
export function integer(value: number | bigint): Uint8Array {
  if (typeof value === 'number' && (!Number.isSafeInteger(value) || value < 0)) {
    throw new AmlError(`AML integer ${value} is not a non-negative safe integer (use a bigint)`);
  }
  const v = BigInt(value);
  if (v < 0n || v > U64_MAX) throw new AmlError(`AML integer ${v} is outside 0..2^64-1`);
  if (v === 0n) return Uint8Array.of(Op.Zero);
  if (v === 1n) return Uint8Array.of(Op.One);
  const [prefix, width] =
    v <= 0xffn ? [Op.BytePrefix, 1] : v <= 0xffffn ? [Op.WordPrefix, 2] : v <= 0xffff_ffffn ? [Op.DWordPrefix, 4] : [Op.QWordPrefix, 8];
  const out = new Uint8Array(1 + width);
  out[0] = prefix;
  for (let i = 0; i < width; i++) out[1 + i] = Number((v >> BigInt(8 * i)) & 0xffn);
  return out;
}

/** A String constant (ASCII, no NUL). */
export function string(s: string): Uint8Array {
  if (!/^[\x01-\x7f]*$/.test(s)) throw new AmlError(`AML string ${JSON.stringify(s)} must be ASCII without NUL`);
  return concat([Uint8Array.of(Op.StringPrefix), Uint8Array.from(s, (c) => c.charCodeAt(0)), Uint8Array.of(0)]);
}

/**
 * The compressed 32-bit EISA id of a 7-character PNP-style id ("PNP0501"), as ASL's
 * EisaId() makes it: three 5-bit letters then four hex digits, stored big-endian.
 */
export function eisaIdValue(id: string): number {
  if (!/^[A-Z]{3}[0-9A-F]{4}$/.test(id)) throw new AmlError(`bad EISA id "${id}": want 3 letters + 4 hex digits`);
  const l = (k: number) => id.charCodeAt(k) - 0x40;
  const vendor = (l(0) << 10) | (l(1) << 5) | l(2);
  const product = parseInt(id.slice(3), 16);
  const bytes = [vendor >> 8, vendor & 0xff, product >> 8, product & 0xff];
  return (bytes[0]! | (bytes[1]! << 8) | (bytes[2]! << 16) | (bytes[3]! << 24)) >>> 0;
}

/** EisaId("PNP0501") as an AML integer (always a DWordConst, as iasl emits it). */
export function eisaId(id: string): Uint8Array {
  const out = new Uint8Array(5);
  out[0] = Op.DWordPrefix;
  new DataView(out.buffer).setUint32(1, eisaIdValue(id), true);
  return out;
}

/** Package(){...}: up to 255 already-encoded elements. */
export function pkg(elements: readonly Uint8Array[]): Uint8Array {
  if (elements.length > 255) throw new AmlError(`AML Package of ${elements.length} elements (max 255)`);
  return concat([Uint8Array.of(Op.Package), withPkgLength(concat([Uint8Array.of(elements.length), ...elements]))]);
}

/** Buffer(){bytes}. */
export function buffer(bytes: Uint8Array): Uint8Array {
  return concat([Uint8Array.of(Op.Buffer), withPkgLength(concat([integer(bytes.length), bytes]))]);
}

// ---- Named objects and statements (§20.2.5) ------------------------------------------

export function name(path: string, value: Uint8Array): Uint8Array {
  return concat([Uint8Array.of(Op.Name), nameString(path), value]);
}

export function scope(path: string, body: readonly Uint8Array[]): Uint8Array {
  return concat([Uint8Array.of(Op.Scope), withPkgLength(concat([nameString(path), ...body]))]);
}

export function device(path: string, body: readonly Uint8Array[]): Uint8Array {
  return concat([Uint8Array.of(Op.ExtPrefix, EXT_DEVICE), withPkgLength(concat([nameString(path), ...body]))]);
}

export interface MethodOptions {
  /** 0..7 */
  args?: number;
  serialized?: boolean;
}

export function method(path: string, body: readonly Uint8Array[], opts: MethodOptions = {}): Uint8Array {
  const args = opts.args ?? 0;
  if (!Number.isInteger(args) || args < 0 || args > 7) throw new AmlError(`AML method ${path}: ${args} arguments (max 7)`);
  const flags = args | (opts.serialized ? 0x08 : 0);
  return concat([Uint8Array.of(Op.Method), withPkgLength(concat([nameString(path), Uint8Array.of(flags), ...body]))]);
}

/** Return(value) where value is an encoded data object. */
export function ret(value: Uint8Array): Uint8Array {
  return concat([Uint8Array.of(Op.Return), value]);
}

// ---- Common device objects -----------------------------------------------------------

/** A device id as ASL writes it: a 7-char PNP id is EisaId(), anything else (e.g. "LNRO0005") a string. */
function deviceId(id: string): Uint8Array {
  return /^[A-Z]{3}[0-9A-F]{4}$/.test(id) ? eisaId(id) : string(id);
}

/** Name(_HID, id). */
export function hid(id: string): Uint8Array {
  return name('_HID', deviceId(id));
}

/** Name(_CID, id): a compatible id. */
export function cid(id: string): Uint8Array {
  return name('_CID', deviceId(id));
}

export function uid(n: number | bigint): Uint8Array {
  return name('_UID', integer(n));
}

/** _STA bits: present, enabled, shown in UI, functioning. */
export const STA_PRESENT_ENABLED = 0x0f;

/** Method(_STA) { Return(status) }. */
export function sta(status: number = STA_PRESENT_ENABLED): Uint8Array {
  return method('_STA', [ret(integer(status))]);
}

/** Name(_CRS, ResourceTemplate(){…}). */
export function crs(descriptors: readonly Uint8Array[]): Uint8Array {
  return name('_CRS', resourceTemplate(descriptors));
}

// ---- Resource descriptors (§6.4) -----------------------------------------------------

function u16(v: number, what: string): number {
  if (!Number.isInteger(v) || v < 0 || v > 0xffff) throw new AmlError(`${what} ${v} is not a 16-bit value`);
  return v;
}
function u8(v: number, what: string): number {
  if (!Number.isInteger(v) || v < 0 || v > 0xff) throw new AmlError(`${what} ${v} is not an 8-bit value`);
  return v;
}
function u32(v: number, what: string): number {
  if (!Number.isInteger(v) || v < 0 || v > 0xffff_ffff) throw new AmlError(`${what} ${v} is not a 32-bit value`);
  return v;
}

/** IO(Decode16 | Decode10, min, max, alignment, length): small item 0x08. */
export function io(opts: { min: number; max?: number; alignment?: number; length: number; decode16?: boolean }): Uint8Array {
  const min = u16(opts.min, 'IO minimum');
  const max = u16(opts.max ?? opts.min, 'IO maximum');
  const out = new Uint8Array(8);
  const dv = new DataView(out.buffer);
  out[0] = 0x47;
  out[1] = opts.decode16 === false ? 0 : 1;
  dv.setUint16(2, min, true);
  dv.setUint16(4, max, true);
  out[6] = u8(opts.alignment ?? 1, 'IO alignment');
  out[7] = u8(opts.length, 'IO length');
  return out;
}

/** FixedIO(base, length): small item 0x09, 10-bit ISA decode. */
export function fixedIo(base: number, length: number): Uint8Array {
  if (!Number.isInteger(base) || base < 0 || base > 0x3ff) throw new AmlError(`FixedIO base ${base} is not a 10-bit port`);
  return Uint8Array.of(0x4b, base & 0xff, base >> 8, u8(length, 'FixedIO length'));
}

export interface InterruptOptions {
  /** Edge-triggered (default) or level-triggered. */
  edge?: boolean;
  /** Active low; default active high. */
  activeLow?: boolean;
  shared?: boolean;
}

/** IRQ(Edge|Level, ActiveHigh|ActiveLow, Exclusive|Shared){irqs}: small item 0x04, ISA IRQs 0-15. */
export function irq(irqs: readonly number[], opts: InterruptOptions = {}): Uint8Array {
  let mask = 0;
  for (const n of irqs) {
    if (!Number.isInteger(n) || n < 0 || n > 15) throw new AmlError(`IRQ descriptor: ${n} is not an ISA IRQ (0-15)`);
    mask |= 1 << n;
  }
  const flags = (opts.edge === false ? 0 : 0x01) | (opts.activeLow ? 0x08 : 0) | (opts.shared ? 0x10 : 0);
  return Uint8Array.of(0x23, mask & 0xff, mask >> 8, flags);
}

/** Memory32Fixed(ReadWrite|ReadOnly, base, length): large item 0x06. */
export function memory32Fixed(base: number, length: number, writable = true): Uint8Array {
  u32(base, 'Memory32Fixed base');
  u32(length, 'Memory32Fixed length');
  if (base + length > 2 ** 32) throw new AmlError(`Memory32Fixed ${base.toString(16)}+${length.toString(16)} crosses 4 GiB`);
  const out = new Uint8Array(12);
  const dv = new DataView(out.buffer);
  out[0] = 0x86;
  dv.setUint16(1, 9, true);
  out[3] = writable ? 1 : 0;
  dv.setUint32(4, base, true);
  dv.setUint32(8, length, true);
  return out;
}

/**
 * QWordMemory(ResourceConsumer, PosDecode, MinFixed, MaxFixed, NonCacheable, ReadWrite,
 * 0, base, base+length-1, 0, length): large item 0x0A, for ranges above 4 GiB.
 */
export function qwordMemory(base: bigint | number, length: bigint | number, writable = true): Uint8Array {
  const b = BigInt(base);
  const l = BigInt(length);
  if (b < 0n || l <= 0n || b + l - 1n > U64_MAX) throw new AmlError(`QWordMemory ${b}+${l} is not a 64-bit range`);
  const out = new Uint8Array(46);
  const dv = new DataView(out.buffer);
  out[0] = 0x8a;
  dv.setUint16(1, 43, true);
  out[3] = 0; // resource type: memory
  out[4] = 0x0d; // consumer, MinFixed, MaxFixed, positive decode
  out[5] = writable ? 1 : 0; // non-cacheable, AddressRangeMemory
  dv.setBigUint64(6, 0n, true); // granularity
  dv.setBigUint64(14, b, true);
  dv.setBigUint64(22, b + l - 1n, true);
  dv.setBigUint64(30, 0n, true); // translation offset
  dv.setBigUint64(38, l, true);
  return out;
}

/** Interrupt(ResourceConsumer, …){gsis}: large item 0x09 (Extended Interrupt), GSI numbers. */
export function extendedInterrupt(gsis: readonly number[], opts: InterruptOptions = {}): Uint8Array {
  if (gsis.length < 1 || gsis.length > 255) throw new AmlError(`Interrupt descriptor with ${gsis.length} interrupts (1-255)`);
  const out = new Uint8Array(5 + 4 * gsis.length);
  const dv = new DataView(out.buffer);
  out[0] = 0x89;
  dv.setUint16(1, 2 + 4 * gsis.length, true);
  out[3] = 0x01 | (opts.edge === false ? 0 : 0x02) | (opts.activeLow ? 0x04 : 0) | (opts.shared ? 0x08 : 0);
  out[4] = gsis.length;
  gsis.forEach((g, i) => dv.setUint32(5 + 4 * i, u32(g, 'interrupt number'), true));
  return out;
}

/**
 * ResourceTemplate(){descriptors}: a Buffer holding the descriptors and an End Tag whose
 * checksum makes the bytes of the whole template sum to zero.
 */
export function resourceTemplate(descriptors: readonly Uint8Array[]): Uint8Array {
  const body = concat([...descriptors, Uint8Array.of(0x79, 0)]);
  let sum = 0;
  for (const b of body) sum += b;
  body[body.length - 1] = (0x100 - (sum & 0xff)) & 0xff;
  return buffer(body);
}
