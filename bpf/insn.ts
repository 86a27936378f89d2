// eBPF instruction layout: the one place that knows the 8-byte `struct bpf_insn`
// (u8 code; u8 dst:4 | src:4 << 4; s16 off; s32 imm), the opcode fields, and how every
// instruction class maps to and from bytes. Knows nothing about programs, maps or the VM.
//
// `decode` is total and `encode(decode(x))` gives back x for any bytes: what is not a
// canonical instruction decodes to `{ kind: 'raw' }`, so a disassembler never throws and
// a round trip never silently changes a program.

import { TsvmmError } from '../lib/errors';

export const INSN_SIZE = 8;

/** Low 3 bits of `code`. */
export const Class = { LD: 0x00, LDX: 0x01, ST: 0x02, STX: 0x03, ALU: 0x04, JMP: 0x05, JMP32: 0x06, ALU64: 0x07 } as const;
/** Bit 3 of ALU/JMP codes: operand is `imm` (K) or `src` (X). For BPF_END: to_le (K) / to_be (X). */
export const Source = { K: 0x00, X: 0x08 } as const;
/** Bits 3-4 of load/store codes. */
export const Size = { W: 0x00, H: 0x08, B: 0x10, DW: 0x18 } as const;
/** Bits 5-7 of load/store codes. */
export const Mode = { IMM: 0x00, ABS: 0x20, IND: 0x40, MEM: 0x60, MEMSX: 0x80, ATOMIC: 0xc0 } as const;

export const AluOp = {
  add: 0x00, sub: 0x10, mul: 0x20, div: 0x30, or: 0x40, and: 0x50, lsh: 0x60, rsh: 0x70,
  neg: 0x80, mod: 0x90, xor: 0xa0, mov: 0xb0, arsh: 0xc0,
} as const;
export const END_OP = 0xd0;
export const JmpOp = {
  ja: 0x00, jeq: 0x10, jgt: 0x20, jge: 0x30, jset: 0x40, jne: 0x50, jsgt: 0x60, jsge: 0x70,
  jlt: 0xa0, jle: 0xb0, jslt: 0xc0, jsle: 0xd0,
} as const;
export const CALL_OP = 0x80;
export const EXIT_OP = 0x90;

/** `imm` of an atomic STX; FETCH (bit 0) returns the old value in `src` (r0 for cmpxchg). */
export const AtomicOp = { add: 0x00, or: 0x40, and: 0x50, xor: 0xa0, xchg: 0xe0, cmpxchg: 0xf0 } as const;
export const ATOMIC_FETCH = 0x01;

/** `src` of the first slot of LD_IMM64 (include/uapi/linux/bpf.h). */
export const Pseudo = { NONE: 0, MAP_FD: 1, MAP_VALUE: 2, BTF_ID: 3, FUNC: 4, MAP_IDX: 5, MAP_IDX_VALUE: 6 } as const;
/** `src` of a CALL: helper id, bpf-to-bpf call (imm = relative slot), kfunc (imm = BTF id). */
export const CallSrc = { HELPER: 0, PSEUDO_CALL: 1, KFUNC: 2 } as const;

export const LD_IMM64_CODE = Class.LD | Mode.IMM | Size.DW; // 0x18
export const CALL_CODE = Class.JMP | CALL_OP; // 0x85
export const MAX_REG = 10; // r10 is the read-only frame pointer

export type AluOpName = keyof typeof AluOp;
export type JmpOpName = keyof typeof JmpOp;
export type AtomicOpName = keyof typeof AtomicOp;
export type SizeName = keyof typeof Size;
export type Width = 32 | 64;

export interface RawInsn { code: number; dst: number; src: number; off: number; imm: number }

/** One decoded instruction. `ldimm64` is the only kind that occupies two slots. */
export type Insn =
  /** `off`: 1 = signed div/mod (sdiv/smod), 8/16/32 = sign-extending mov (movsx); else 0. */
  | { kind: 'alu'; width: Width; op: AluOpName; dst: number; src: number | null; imm: number; off: number }
  /** ALU class: to little/big endian; ALU64 class: unconditional byte swap. */
  | { kind: 'end'; order: 'le' | 'be' | 'swap'; dst: number; bits: 16 | 32 | 64 }
  /** `ja` in JMP32 is `gotol` (offset in imm); `off` is the relative slot offset otherwise. */
  | { kind: 'jmp'; width: Width; op: JmpOpName; dst: number; src: number | null; imm: number; off: number }
  | { kind: 'call'; src: number; imm: number }
  | { kind: 'exit' }
  /** `imm` is the full 64-bit value (low word from slot 1, high word from slot 2). */
  | { kind: 'ldimm64'; dst: number; src: number; imm: bigint }
  | { kind: 'ldabs'; size: SizeName; imm: number }
  | { kind: 'ldind'; size: SizeName; src: number; imm: number }
  | { kind: 'ldx'; size: SizeName; signed: boolean; dst: number; src: number; off: number }
  | { kind: 'st'; size: SizeName; dst: number; off: number; imm: number }
  | { kind: 'stx'; size: SizeName; dst: number; src: number; off: number }
  | { kind: 'atomic'; size: 'W' | 'DW'; op: AtomicOpName; fetch: boolean; dst: number; src: number; off: number }
  /** Anything that is not a canonical instruction, kept verbatim. */
  | { kind: 'raw'; raw: RawInsn };

export class BpfInsnError extends TsvmmError {}

const reverse = <T extends Record<string, number>>(t: T): Map<number, keyof T & string> =>
  new Map(Object.entries(t).map(([k, v]) => [v, k as keyof T & string]));
const ALU_BY_CODE = reverse(AluOp);
const JMP_BY_CODE = reverse(JmpOp);
const SIZE_BY_CODE = reverse(Size);
const ATOMIC_BY_CODE = reverse(AtomicOp);

export const slots = (i: Insn): 1 | 2 => (i.kind === 'ldimm64' ? 2 : 1);

function checkReg(r: number, what: string): void {
  if (!Number.isInteger(r) || r < 0 || r > MAX_REG) throw new BpfInsnError(`${what} register r${r} out of range r0..r10`);
}
function checkS16(v: number, what: string): void {
  if (!Number.isInteger(v) || v < -0x8000 || v > 0x7fff) throw new BpfInsnError(`${what} ${v} does not fit in s16`);
}
function checkImm(v: number, what: string): void {
  // Accept u32 spellings too (0xffffffff) and store them as the s32 they are.
  if (!Number.isInteger(v) || v < -0x8000_0000 || v > 0xffff_ffff) throw new BpfInsnError(`${what} ${v} does not fit in 32 bits`);
}

/** Lower one instruction to its raw slot(s). Validates every field. */
export function toRaw(i: Insn): RawInsn[] {
  const r = (code: number, dst: number, src: number, off: number, imm: number): RawInsn => {
    checkReg(dst, 'dst'); checkReg(src, 'src'); checkS16(off, 'offset'); checkImm(imm, 'immediate');
    return { code, dst, src, off, imm: imm | 0 };
  };
  switch (i.kind) {
    case 'alu': {
      const cls = i.width === 64 ? Class.ALU64 : Class.ALU;
      const okOff = i.off === 0 || ((i.op === 'div' || i.op === 'mod') && i.off === 1)
        || (i.op === 'mov' && i.src !== null && (i.off === 8 || i.off === 16 || (i.off === 32 && i.width === 64)));
      if (!okOff) throw new BpfInsnError(`alu ${i.op}: offset ${i.off} not allowed`);
      if (i.op === 'neg') return [r(cls | AluOp.neg, i.dst, 0, 0, 0)];
      return [i.src === null ? r(cls | AluOp[i.op] | Source.K, i.dst, 0, i.off, i.imm) : r(cls | AluOp[i.op] | Source.X, i.dst, i.src, i.off, 0)];
    }
    case 'end': {
      if (i.bits !== 16 && i.bits !== 32 && i.bits !== 64) throw new BpfInsnError(`endianness width ${String(i.bits)} is not 16/32/64`);
      const code = i.order === 'swap' ? Class.ALU64 | END_OP : Class.ALU | END_OP | (i.order === 'be' ? Source.X : Source.K);
      return [r(code, i.dst, 0, 0, i.bits)];
    }
    case 'jmp': {
      const cls = i.width === 64 ? Class.JMP : Class.JMP32;
      if (i.op === 'ja') return [i.width === 64 ? r(cls | JmpOp.ja, 0, 0, i.off, 0) : r(cls | JmpOp.ja, 0, 0, 0, i.imm)];
      return [i.src === null ? r(cls | JmpOp[i.op] | Source.K, i.dst, 0, i.off, i.imm) : r(cls | JmpOp[i.op] | Source.X, i.dst, i.src, i.off, 0)];
    }
    case 'call':
      if (i.src !== CallSrc.HELPER && i.src !== CallSrc.PSEUDO_CALL && i.src !== CallSrc.KFUNC) throw new BpfInsnError(`call: unknown src ${i.src}`);
      return [r(Class.JMP | CALL_OP, 0, i.src, 0, i.imm)];
    case 'exit':
      return [r(Class.JMP | EXIT_OP, 0, 0, 0, 0)];
    case 'ldimm64': {
      if (i.src < 0 || i.src > Pseudo.MAP_IDX_VALUE) throw new BpfInsnError(`ld_imm64: unknown pseudo src ${i.src}`);
      const v = BigInt.asUintN(64, i.imm);
      if (v !== i.imm && BigInt.asIntN(64, i.imm) !== i.imm) throw new BpfInsnError(`ld_imm64: ${i.imm} does not fit in 64 bits`);
      return [r(LD_IMM64_CODE, i.dst, i.src, 0, Number(BigInt.asIntN(32, v))), r(0, 0, 0, 0, Number(BigInt.asIntN(32, v >> 32n)))];
    }
    case 'ldabs':
      return [r(Class.LD | Mode.ABS | Size[i.size], 0, 0, 0, i.imm)];
    case 'ldind':
      return [r(Class.LD | Mode.IND | Size[i.size], 0, i.src, 0, i.imm)];
    case 'ldx':
      if (i.signed && i.size === 'DW') throw new BpfInsnError('ldx: no sign-extending 64-bit load');
      return [r(Class.LDX | (i.signed ? Mode.MEMSX : Mode.MEM) | Size[i.size], i.dst, i.src, i.off, 0)];
    case 'st':
      return [r(Class.ST | Mode.MEM | Size[i.size], i.dst, 0, i.off, i.imm)];
    case 'stx':
      return [r(Class.STX | Mode.MEM | Size[i.size], i.dst, i.src, i.off, 0)];
    case 'atomic': {
      const fetch = i.op === 'xchg' || i.op === 'cmpxchg' ? true : i.fetch;
      if ((i.op === 'xchg' || i.op === 'cmpxchg') && !i.fetch) throw new BpfInsnError(`atomic ${i.op} always fetches`);
      return [r(Class.STX | Mode.ATOMIC | Size[i.size], i.dst, i.src, i.off, AtomicOp[i.op] | (fetch ? ATOMIC_FETCH : 0))];
    }
    case 'raw': {
      const { code, dst, src, off, imm } = i.raw;
      const nib = (v: number): boolean => Number.isInteger(v) && v >= 0 && v <= 15;
      if (!Number.isInteger(code) || code < 0 || code > 0xff || !nib(dst) || !nib(src)) throw new BpfInsnError(`raw instruction has fields out of range: ${JSON.stringify(i.raw)}`);
      checkS16(off, 'offset'); checkImm(imm, 'immediate');
      return [{ code, dst, src, off, imm: imm | 0 }];
    }
  }
}

/** Decode the instruction at slot `at` of `raws` (it may need slot `at + 1`). */
export function fromRaw(raws: readonly RawInsn[], at: number): Insn {
  const x = raws[at];
  if (x === undefined) throw new BpfInsnError(`no instruction at slot ${at}`);
  const raw: Insn = { kind: 'raw', raw: { ...x } };
  const { code, dst, src, off, imm } = x;
  const cls = code & 0x07;
  const regsOk = dst <= MAX_REG && src <= MAX_REG;
  if (!regsOk) return raw;
  switch (cls) {
    case Class.ALU:
    case Class.ALU64: {
      const width: Width = cls === Class.ALU64 ? 64 : 32;
      const opc = code & 0xf0;
      const x8 = (code & Source.X) !== 0;
      if (opc === END_OP) {
        if (src !== 0 || off !== 0 || (imm !== 16 && imm !== 32 && imm !== 64)) return raw;
        if (cls === Class.ALU64 && x8) return raw;
        return { kind: 'end', order: cls === Class.ALU64 ? 'swap' : x8 ? 'be' : 'le', dst, bits: imm };
      }
      const op = ALU_BY_CODE.get(opc);
      if (op === undefined) return raw;
      if (op === 'neg') return x8 || src !== 0 || off !== 0 || imm !== 0 ? raw : { kind: 'alu', width, op, dst, src: null, imm: 0, off: 0 };
      const okOff = off === 0 || ((op === 'div' || op === 'mod') && off === 1)
        || (op === 'mov' && x8 && (off === 8 || off === 16 || (off === 32 && width === 64)));
      if (!okOff) return raw;
      if (x8) return imm !== 0 ? raw : { kind: 'alu', width, op, dst, src, imm: 0, off };
      return src !== 0 ? raw : { kind: 'alu', width, op, dst, src: null, imm, off };
    }
    case Class.JMP:
    case Class.JMP32: {
      const width: Width = cls === Class.JMP ? 64 : 32;
      const opc = code & 0xf0;
      const x8 = (code & Source.X) !== 0;
      if (cls === Class.JMP && opc === CALL_OP) {
        return x8 || dst !== 0 || off !== 0 || src > CallSrc.KFUNC ? raw : { kind: 'call', src, imm };
      }
      if (cls === Class.JMP && opc === EXIT_OP) return code === (Class.JMP | EXIT_OP) && dst === 0 && src === 0 && off === 0 && imm === 0 ? { kind: 'exit' } : raw;
      const op = JMP_BY_CODE.get(opc);
      if (op === undefined) return raw;
      if (op === 'ja') {
        if (x8 || dst !== 0 || src !== 0) return raw;
        if (width === 64) return imm !== 0 ? raw : { kind: 'jmp', width, op, dst: 0, src: null, imm: 0, off };
        return off !== 0 ? raw : { kind: 'jmp', width, op, dst: 0, src: null, imm, off: 0 };
      }
      if (x8) return imm !== 0 ? raw : { kind: 'jmp', width, op, dst, src, imm: 0, off };
      return src !== 0 ? raw : { kind: 'jmp', width, op, dst, src: null, imm, off };
    }
    case Class.LD: {
      const mode = code & 0xe0;
      const size = SIZE_BY_CODE.get(code & 0x18)!;
      if (code === LD_IMM64_CODE) {
        const hi = raws[at + 1];
        if (off !== 0 || src > Pseudo.MAP_IDX_VALUE || hi === undefined || hi.code !== 0 || hi.dst !== 0 || hi.src !== 0 || hi.off !== 0) return raw;
        const imm64 = (BigInt(hi.imm >>> 0) << 32n) | BigInt(imm >>> 0);
        return { kind: 'ldimm64', dst, src, imm: BigInt.asIntN(64, imm64) };
      }
      if (size === 'DW' || dst !== 0 || off !== 0) return raw;
      if (mode === Mode.ABS) return src !== 0 ? raw : { kind: 'ldabs', size, imm };
      if (mode === Mode.IND) return { kind: 'ldind', size, src, imm };
      return raw;
    }
    case Class.LDX: {
      const mode = code & 0xe0;
      const size = SIZE_BY_CODE.get(code & 0x18)!;
      if (imm !== 0) return raw;
      if (mode === Mode.MEM) return { kind: 'ldx', size, signed: false, dst, src, off };
      if (mode === Mode.MEMSX && size !== 'DW') return { kind: 'ldx', size, signed: true, dst, src, off };
      return raw;
    }
    case Class.ST: {
      const size = SIZE_BY_CODE.get(code & 0x18)!;
      return (code & 0xe0) !== Mode.MEM || src !== 0 ? raw : { kind: 'st', size, dst, off, imm };
    }
    case Class.STX: {
      const mode = code & 0xe0;
      const size = SIZE_BY_CODE.get(code & 0x18)!;
      if (mode === Mode.MEM) return imm !== 0 ? raw : { kind: 'stx', size, dst, src, off };
      if (mode !== Mode.ATOMIC || (size !== 'W' && size !== 'DW')) return raw;
      const op = ATOMIC_BY_CODE.get(imm & ~ATOMIC_FETCH);
      const fetch = (imm & ATOMIC_FETCH) !== 0;
      if (op === undefined || ((op === 'xchg' || op === 'cmpxchg') && !fetch)) return raw;
      return { kind: 'atomic', size, op, fetch, dst, src, off };
    }
  }
  return raw;
}

// The one place a slot's bytes are read or written (the registers share a byte: dst low nibble, src high).
function readSlot(dv: DataView, o: number): RawInsn {
  const regs = dv.getUint8(o + 1);
  return { code: dv.getUint8(o), dst: regs & 0x0f, src: regs >> 4, off: dv.getInt16(o + 2, true), imm: dv.getInt32(o + 4, true) };
}
function writeSlot(dv: DataView, o: number, x: RawInsn): void {
  dv.setUint8(o, x.code);
  dv.setUint8(o + 1, (x.dst & 0x0f) | ((x.src & 0x0f) << 4));
  dv.setInt16(o + 2, x.off, true);
  dv.setInt32(o + 4, x.imm, true);
}
const viewOf = (b: Uint8Array): DataView => new DataView(b.buffer, b.byteOffset, b.byteLength);

/** Write raw slots into bytes, kernel layout (little-endian). */
export function rawToBytes(raws: readonly RawInsn[]): Uint8Array {
  const out = new Uint8Array(raws.length * INSN_SIZE);
  const dv = viewOf(out);
  raws.forEach((x, n) => writeSlot(dv, n * INSN_SIZE, x));
  return out;
}

export function bytesToRaw(bytes: Uint8Array): RawInsn[] {
  if (bytes.length % INSN_SIZE !== 0) throw new BpfInsnError(`instruction bytes: length ${bytes.length} is not a multiple of 8`);
  const dv = viewOf(bytes);
  const out: RawInsn[] = [];
  for (let o = 0; o < bytes.length; o += INSN_SIZE) out.push(readSlot(dv, o));
  return out;
}

function slotOffset(bytes: Uint8Array, slot: number): number {
  if (!Number.isInteger(slot) || slot < 0 || (slot + 1) * INSN_SIZE > bytes.length) throw new BpfInsnError(`slot ${slot} is outside ${bytes.length / INSN_SIZE} instructions`);
  return slot * INSN_SIZE;
}

/** Raw slot `slot` of `bytes`. */
export function rawAt(bytes: Uint8Array, slot: number): RawInsn {
  return readSlot(viewOf(bytes), slotOffset(bytes, slot));
}

/** Rewrites the given fields of raw slot `slot` in place (a loader's relocation); the rest stays. */
export function patchRaw(bytes: Uint8Array, slot: number, fields: Partial<RawInsn>): void {
  const o = slotOffset(bytes, slot);
  const dv = viewOf(bytes);
  writeSlot(dv, o, { ...readSlot(dv, o), ...fields });
}

export const encode = (insns: readonly Insn[]): Uint8Array => rawToBytes(insns.flatMap(toRaw));

/** A decoded program: each instruction with the slot it starts at. */
export interface Located { slot: number; insn: Insn }

export function decode(bytes: Uint8Array): Located[] {
  const raws = bytesToRaw(bytes);
  const out: Located[] = [];
  for (let s = 0; s < raws.length; ) {
    const insn = fromRaw(raws, s);
    out.push({ slot: s, insn });
    s += slots(insn);
  }
  return out;
}
