// eBPF assembler: a typed builder (registers, labels, named helpers, map references that
// become relocations) and a text assembler for the syntax `bpf/disasm.ts` prints. Owns
// label resolution and the relocation list of one program; the instruction layout itself
// lives in `bpf/insn.ts`, helper ids in `bpf/helpers.ts`. Does not touch the VM.

import {
  type AluOpName, type AtomicOpName, type Insn, type JmpOpName, type SizeName, type Width,
  CallSrc, Pseudo, encode, slots,
} from './insn';
import { type HelperName, helperId } from './helpers';
import { TsvmmError } from '../lib/errors';

export class AsmError extends TsvmmError {}

/** A register seen as 64 bits (`r3`) or as its low 32 bits (`w3`, ALU32/JMP32). */
export interface Reg { readonly n: number; readonly w: boolean }
const reg = (n: number, w: boolean): Reg => Object.freeze({ n, w });
export const r0 = reg(0, false), r1 = reg(1, false), r2 = reg(2, false), r3 = reg(3, false), r4 = reg(4, false),
  r5 = reg(5, false), r6 = reg(6, false), r7 = reg(7, false), r8 = reg(8, false), r9 = reg(9, false), r10 = reg(10, false);
export const w0 = reg(0, true), w1 = reg(1, true), w2 = reg(2, true), w3 = reg(3, true), w4 = reg(4, true),
  w5 = reg(5, true), w6 = reg(6, true), w7 = reg(7, true), w8 = reg(8, true), w9 = reg(9, true), w10 = reg(10, true);
/** Frame pointer (read-only): the stack is the 512 bytes below it. */
export const fp = r10;

export type Operand = Reg | number;
/** C-like access sizes, as the disassembler prints them. */
export type MemSize = 'u8' | 'u16' | 'u32' | 'u64';
export const MEM_SIZE: Readonly<Record<MemSize, SizeName>> = { u8: 'B', u16: 'H', u32: 'W', u64: 'DW' };

/** An instruction slot that needs a map's fd (or value address) patched in at load time. */
export interface MapRef { slot: number; map: string; kind: typeof Pseudo.MAP_FD | typeof Pseudo.MAP_VALUE }

export interface Assembled {
  insns: Insn[];
  bytes: Uint8Array;
  /** Map references, in slot order. */
  relocations: MapRef[];
  /** Label → slot, for disassembly annotations. */
  labels: Map<string, number>;
}

type Pending =
  | { insn: Insn }
  | { insn: Insn; jumpTo: string }
  | { insn: Insn; callTo: string }
  | { insn: Insn; map: string; mapKind: MapRef['kind'] };

const isReg = (o: Operand): o is Reg => typeof o === 'object';

export class Asm {
  private readonly items: Pending[] = [];
  private readonly labelAt = new Map<string, number>();
  private slot = 0;

  private push(p: Pending): this {
    this.items.push(p);
    this.slot += slots(p.insn);
    return this;
  }

  /** Current slot index (where the next instruction goes). */
  get here(): number { return this.slot; }

  label(name: string): this {
    if (this.labelAt.has(name)) throw new AsmError(`label '${name}' defined twice`);
    this.labelAt.set(name, this.slot);
    return this;
  }

  /** Append an already-built instruction (no labels, no relocation). */
  insn(i: Insn): this { return this.push({ insn: i }); }

  alu(op: Exclude<AluOpName, 'neg'>, dst: Reg, src: Operand): this {
    const width: Width = dst.w ? 32 : 64;
    if (isReg(src) && src.w !== dst.w) throw new AsmError(`alu ${op}: mixing ${regName(dst)} and ${regName(src)}`);
    return this.push({ insn: { kind: 'alu', width, op, dst: dst.n, src: isReg(src) ? src.n : null, imm: isReg(src) ? 0 : src, off: 0 } });
  }
  mov(dst: Reg, src: Operand): this { return this.alu('mov', dst, src); }
  add(dst: Reg, src: Operand): this { return this.alu('add', dst, src); }
  sub(dst: Reg, src: Operand): this { return this.alu('sub', dst, src); }
  mul(dst: Reg, src: Operand): this { return this.alu('mul', dst, src); }
  div(dst: Reg, src: Operand): this { return this.alu('div', dst, src); }
  mod(dst: Reg, src: Operand): this { return this.alu('mod', dst, src); }
  or(dst: Reg, src: Operand): this { return this.alu('or', dst, src); }
  and(dst: Reg, src: Operand): this { return this.alu('and', dst, src); }
  xor(dst: Reg, src: Operand): this { return this.alu('xor', dst, src); }
  lsh(dst: Reg, src: Operand): this { return this.alu('lsh', dst, src); }
  rsh(dst: Reg, src: Operand): this { return this.alu('rsh', dst, src); }
  arsh(dst: Reg, src: Operand): this { return this.alu('arsh', dst, src); }
  neg(dst: Reg): this {
    return this.push({ insn: { kind: 'alu', width: dst.w ? 32 : 64, op: 'neg', dst: dst.n, src: null, imm: 0, off: 0 } });
  }
  /** Convert to little/big endian (`r1 = be32 r1`); `swap` is the unconditional ALU64 byte swap. */
  endian(order: 'le' | 'be' | 'swap', dst: Reg, bits: 16 | 32 | 64): this {
    return this.push({ insn: { kind: 'end', order, dst: dst.n, bits } });
  }

  /** 64-bit immediate load (two slots). */
  ld64(dst: Reg, imm: bigint | number): this {
    return this.push({ insn: { kind: 'ldimm64', dst: dst.n, src: Pseudo.NONE, imm: BigInt(imm) } });
  }
  /** `dst = &map` — the loader patches the map's fd in. */
  ldMap(dst: Reg, map: string): this {
    return this.push({ insn: { kind: 'ldimm64', dst: dst.n, src: Pseudo.MAP_FD, imm: 0n }, map, mapKind: Pseudo.MAP_FD });
  }
  /** `dst = &map.value + off` (array maps: global data). */
  ldMapValue(dst: Reg, map: string, off: number): this {
    return this.push({ insn: { kind: 'ldimm64', dst: dst.n, src: Pseudo.MAP_VALUE, imm: BigInt(off) << 32n }, map, mapKind: Pseudo.MAP_VALUE });
  }

  /** `dst = *(size *)(base + off)` */
  load(size: MemSize, dst: Reg, base: Reg, off: number): this {
    return this.push({ insn: { kind: 'ldx', size: MEM_SIZE[size], signed: false, dst: dst.n, src: base.n, off } });
  }
  /** `*(size *)(base + off) = value` (a register: STX, a number: ST). */
  store(size: MemSize, base: Reg, off: number, value: Operand): this {
    const s = MEM_SIZE[size];
    return this.push({ insn: isReg(value) ? { kind: 'stx', size: s, dst: base.n, src: value.n, off } : { kind: 'st', size: s, dst: base.n, off, imm: value } });
  }
  /** Atomic read-modify-write on `*(size *)(base + off)`; fetch ops return the old value in `src` (r0 for cmpxchg). */
  atomic(op: AtomicOpName, size: 'u32' | 'u64', base: Reg, off: number, src: Reg, fetch = op === 'xchg' || op === 'cmpxchg'): this {
    return this.push({ insn: { kind: 'atomic', size: size === 'u32' ? 'W' : 'DW', op, fetch, dst: base.n, src: src.n, off } });
  }

  /** Conditional jump to a label; the width comes from `dst` (w-registers make JMP32). */
  jmp(op: Exclude<JmpOpName, 'ja'>, dst: Reg, src: Operand, label: string): this {
    if (isReg(src) && src.w !== dst.w) throw new AsmError(`jump ${op}: mixing ${regName(dst)} and ${regName(src)}`);
    const insn: Insn = { kind: 'jmp', width: dst.w ? 32 : 64, op, dst: dst.n, src: isReg(src) ? src.n : null, imm: isReg(src) ? 0 : src, off: 0 };
    return this.push({ insn, jumpTo: label });
  }
  jeq(dst: Reg, src: Operand, label: string): this { return this.jmp('jeq', dst, src, label); }
  jne(dst: Reg, src: Operand, label: string): this { return this.jmp('jne', dst, src, label); }
  jgt(dst: Reg, src: Operand, label: string): this { return this.jmp('jgt', dst, src, label); }
  jge(dst: Reg, src: Operand, label: string): this { return this.jmp('jge', dst, src, label); }
  jlt(dst: Reg, src: Operand, label: string): this { return this.jmp('jlt', dst, src, label); }
  jle(dst: Reg, src: Operand, label: string): this { return this.jmp('jle', dst, src, label); }
  jsgt(dst: Reg, src: Operand, label: string): this { return this.jmp('jsgt', dst, src, label); }
  jsge(dst: Reg, src: Operand, label: string): this { return this.jmp('jsge', dst, src, label); }
  jslt(dst: Reg, src: Operand, label: string): this { return this.jmp('jslt', dst, src, label); }
  jsle(dst: Reg, src: Operand, label: string): this { return this.jmp('jsle', dst, src, label); }
  jset(dst: Reg, src: Operand, label: string): this { return this.jmp('jset', dst, src, label); }
  /** Unconditional jump. */
  goto(label: string): this {
    return this.push({ insn: { kind: 'jmp', width: 64, op: 'ja', dst: 0, src: null, imm: 0, off: 0 }, jumpTo: label });
  }

  /** Call a helper by name (`ringbuf_output`) or id. */
  call(helper: HelperName | number): this {
    const id = typeof helper === 'number' ? helper : helperId(helper);
    return this.push({ insn: { kind: 'call', src: CallSrc.HELPER, imm: id } });
  }
  /** bpf-to-bpf call to a label in this program. */
  callLocal(label: string): this {
    return this.push({ insn: { kind: 'call', src: CallSrc.PSEUDO_CALL, imm: 0 }, callTo: label });
  }
  exit(): this { return this.push({ insn: { kind: 'exit' } }); }

  /** Resolve labels and collect relocations. Throws AsmError on an unknown label or an offset that does not fit. */
  assemble(): Assembled {
    const insns: Insn[] = [];
    const relocations: MapRef[] = [];
    let slot = 0;
    for (const p of this.items) {
      let insn = p.insn;
      if ('jumpTo' in p || 'callTo' in p) {
        const name = 'jumpTo' in p ? p.jumpTo : p.callTo;
        const target = this.labelAt.get(name);
        if (target === undefined) throw new AsmError(`slot ${slot}: unknown label '${name}'`);
        const rel = target - (slot + 1);
        if ('callTo' in p) insn = { kind: 'call', src: CallSrc.PSEUDO_CALL, imm: rel };
        else {
          if (rel < -0x8000 || rel > 0x7fff) throw new AsmError(`slot ${slot}: jump to '${name}' is ${rel} slots away, outside the s16 offset range`);
          if (insn.kind === 'jmp') insn = { ...insn, off: rel };
        }
      }
      if ('map' in p) relocations.push({ slot, map: p.map, kind: p.mapKind });
      insns.push(insn);
      slot += slots(insn);
    }
    for (const [name, at] of this.labelAt) {
      if (at > slot) throw new AsmError(`label '${name}' is past the end`);
    }
    return { insns, bytes: encode(insns), relocations, labels: new Map(this.labelAt) };
  }
}

export const regName = (r: Reg): string => `${r.w ? 'w' : 'r'}${r.n}`;

// ---------------------------------------------------------------------------------------
// Text assembler: one instruction per line in the disassembler's (llvm-objdump) syntax;
// `name:` defines a label, `goto name` / `if … goto name` jump to it, `goto +N` is a raw
// offset; `r1 = map[name] ll` is a map reference; `#` and `;` start comments.

const REG = String.raw`([rw])(10|[0-9])`;
const NUM = String.raw`(-?(?:0x[0-9a-fA-F]+|[0-9]+))`;
const TARGET = String.raw`([+-][0-9]+|[A-Za-z_.$][\w.$]*)`;
const ALU_SYM: Record<string, Exclude<AluOpName, 'neg'>> = {
  '+=': 'add', '-=': 'sub', '*=': 'mul', '/=': 'div', '%=': 'mod', '|=': 'or', '&=': 'and', '^=': 'xor',
  '<<=': 'lsh', '>>=': 'rsh', 's>>=': 'arsh', '=': 'mov',
};
const JMP_SYM: Record<string, Exclude<JmpOpName, 'ja'>> = {
  '==': 'jeq', '!=': 'jne', '>': 'jgt', '>=': 'jge', '<': 'jlt', '<=': 'jle', 's>': 'jsgt', 's>=': 'jsge',
  's<': 'jslt', 's<=': 'jsle', '&': 'jset',
};
const LOCK_SYM: Record<string, AtomicOpName> = { '+=': 'add', '|=': 'or', '&=': 'and', '^=': 'xor' };
const sizeOf = (s: string): SizeName => MEM_SIZE[s as MemSize];
const num = (s: string): number => {
  const neg = s.startsWith('-');
  const v = Number(neg ? s.slice(1) : s);
  return neg ? -v : v;
};
const big = (s: string): bigint => (s.startsWith('-') ? -BigInt(s.slice(1)) : BigInt(s));
const escape = (s: string): string => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
const ops = (o: Record<string, string>): string => Object.keys(o).sort((a, b) => b.length - a.length).map(escape).join('|');

const PATTERNS: Array<[RegExp, (m: RegExpMatchArray, a: Asm) => void]> = [
  [/^exit$/, (_m, a) => void a.exit()],
  [new RegExp(`^call ${NUM}$`), (m, a) => void a.call(num(m[1]!))],
  [new RegExp(`^call pc${NUM.replace('(-?', '([+-]')}$`), (m, a) => void a.insn({ kind: 'call', src: CallSrc.PSEUDO_CALL, imm: num(m[1]!) })],
  [new RegExp(`^call kfunc ${NUM}$`), (m, a) => void a.insn({ kind: 'call', src: CallSrc.KFUNC, imm: num(m[1]!) })],
  [new RegExp(`^(goto|gotol) ${TARGET}$`), (m, a) => {
    const t = m[2]!;
    if (/^[+-]/.test(t)) a.insn(m[1] === 'gotol' ? { kind: 'jmp', width: 32, op: 'ja', dst: 0, src: null, imm: num(t), off: 0 } : { kind: 'jmp', width: 64, op: 'ja', dst: 0, src: null, imm: 0, off: num(t) });
    else a.goto(t);
  }],
  [new RegExp(`^if ${REG} (${ops(JMP_SYM)}) (?:${REG}|${NUM}) goto ${TARGET}$`), (m, a) => {
    const dst = reg(Number(m[2]), m[1] === 'w');
    const src: Operand = m[4] !== undefined ? reg(Number(m[5]), m[4] === 'w') : num(m[6]!);
    const op = JMP_SYM[m[3]!]!;
    const t = m[7]!;
    if (/^[+-]/.test(t)) {
      a.insn({ kind: 'jmp', width: dst.w ? 32 : 64, op, dst: dst.n, src: isReg(src) ? src.n : null, imm: isReg(src) ? 0 : src, off: num(t) });
    } else a.jmp(op, dst, src, t);
  }],
  [new RegExp(`^${REG} = ${NUM} ll$`), (m, a) => void a.ld64(reg(Number(m[2]), false), big(m[3]!))],
  [new RegExp(`^${REG} = map\\[([\\w.]+)\\] ll$`), (m, a) => void a.ldMap(reg(Number(m[2]), false), m[3]!)],
  [new RegExp(`^${REG} = map_value\\[([\\w.]+)\\] \\+ ${NUM} ll$`), (m, a) => void a.ldMapValue(reg(Number(m[2]), false), m[3]!, num(m[4]!))],
  [new RegExp(`^${REG} = map_fd\\(${NUM}\\) ll$`), (m, a) => void a.insn({ kind: 'ldimm64', dst: Number(m[2]), src: Pseudo.MAP_FD, imm: big(m[3]!) })],
  [new RegExp(`^${REG} = (le|be|bswap)(16|32|64) ${REG}$`), (m, a) => {
    if (m[2] !== m[6]) throw new AsmError('endianness conversion must use one register');
    a.endian(m[3] === 'bswap' ? 'swap' : (m[3] as 'le' | 'be'), reg(Number(m[2]), false), Number(m[4]) as 16 | 32 | 64);
  }],
  [new RegExp(`^${REG} = -${REG}$`), (m, a) => void a.neg(reg(Number(m[2]), m[1] === 'w'))],
  [new RegExp(`^${REG} = \\*\\(([us])(8|16|32|64) \\*\\)\\(r(10|[0-9]) ([+-]) ([0-9]+)\\)$`), (m, a) => {
    a.insn({ kind: 'ldx', size: sizeOf(`u${m[4]}`), signed: m[3] === 's', dst: Number(m[2]), src: Number(m[5]), off: (m[6] === '-' ? -1 : 1) * Number(m[7]) });
  }],
  [new RegExp(`^r0 = \\*\\(u(8|16|32) \\*\\)skb\\[(?:r(10|[0-9])(?: \\+ ${NUM})?|${NUM})\\]$`), (m, a) => {
    const size = sizeOf(`u${m[1]}`);
    a.insn(m[2] !== undefined ? { kind: 'ldind', size, src: Number(m[2]), imm: m[3] ? num(m[3]) : 0 } : { kind: 'ldabs', size, imm: num(m[4]!) });
  }],
  [new RegExp(`^\\*\\(u(8|16|32|64) \\*\\)\\(r(10|[0-9]) ([+-]) ([0-9]+)\\) = (?:${REG}|${NUM})$`), (m, a) => {
    const off = (m[3] === '-' ? -1 : 1) * Number(m[4]);
    const size = sizeOf(`u${m[1]}`);
    a.insn(m[5] !== undefined ? { kind: 'stx', size, dst: Number(m[2]), src: Number(m[6]), off } : { kind: 'st', size, dst: Number(m[2]), off, imm: num(m[7]!) });
  }],
  [new RegExp(`^lock \\*\\(u(32|64) \\*\\)\\(r(10|[0-9]) ([+-]) ([0-9]+)\\) (${ops(LOCK_SYM)}) ${REG}$`), (m, a) => {
    a.insn({ kind: 'atomic', size: m[1] === '32' ? 'W' : 'DW', op: LOCK_SYM[m[5]!]!, fetch: false, dst: Number(m[2]), src: Number(m[7]), off: (m[3] === '-' ? -1 : 1) * Number(m[4]) });
  }],
  [new RegExp(`^${REG} = atomic_fetch_(add|or|and|xor)\\(\\(u(32|64) \\*\\)\\(r(10|[0-9]) ([+-]) ([0-9]+)\\), ${REG}\\)$`), (m, a) => {
    a.insn({ kind: 'atomic', size: m[4] === '32' ? 'W' : 'DW', op: m[3] as AtomicOpName, fetch: true, dst: Number(m[5]), src: Number(m[2]), off: (m[6] === '-' ? -1 : 1) * Number(m[7]) });
  }],
  [new RegExp(`^${REG} = (xchg_64|xchg32_32)\\(r(10|[0-9]) ([+-]) ([0-9]+), ${REG}\\)$`), (m, a) => {
    a.insn({ kind: 'atomic', size: m[3] === 'xchg_64' ? 'DW' : 'W', op: 'xchg', fetch: true, dst: Number(m[4]), src: Number(m[2]), off: (m[5] === '-' ? -1 : 1) * Number(m[6]) });
  }],
  [new RegExp(`^${REG} = (cmpxchg_64|cmpxchg32_32)\\(r(10|[0-9]) ([+-]) ([0-9]+), ${REG}, ${REG}\\)$`), (m, a) => {
    a.insn({ kind: 'atomic', size: m[3] === 'cmpxchg_64' ? 'DW' : 'W', op: 'cmpxchg', fetch: true, dst: Number(m[4]), src: Number(m[10]), off: (m[5] === '-' ? -1 : 1) * Number(m[6]) });
  }],
  [new RegExp(`^${REG} (s/=|s%=) ${REG}$`), (m, a) => {
    a.insn({ kind: 'alu', width: m[1] === 'w' ? 32 : 64, op: m[3] === 's/=' ? 'div' : 'mod', dst: Number(m[2]), src: Number(m[5]), imm: 0, off: 1 });
  }],
  [new RegExp(`^${REG} (s/=|s%=) ${NUM}$`), (m, a) => {
    a.insn({ kind: 'alu', width: m[1] === 'w' ? 32 : 64, op: m[3] === 's/=' ? 'div' : 'mod', dst: Number(m[2]), src: null, imm: num(m[4]!), off: 1 });
  }],
  [new RegExp(`^${REG} = \\(s(8|16|32)\\)${REG}$`), (m, a) => {
    a.insn({ kind: 'alu', width: m[1] === 'w' ? 32 : 64, op: 'mov', dst: Number(m[2]), src: Number(m[5]), imm: 0, off: Number(m[3]) });
  }],
  [new RegExp(`^${REG} (${ops(ALU_SYM)}) (?:${REG}|${NUM})$`), (m, a) => {
    const dst = reg(Number(m[2]), m[1] === 'w');
    a.alu(ALU_SYM[m[3]!]!, dst, m[4] !== undefined ? reg(Number(m[5]), m[4] === 'w') : num(m[6]!));
  }],
];

/** Assemble text (one instruction or `label:` per line). Errors name the line. */
export function assembleText(text: string): Assembled {
  const a = new Asm();
  text.split('\n').forEach((line, n) => {
    const s = line.replace(/[#;].*$/, '').trim().replace(/\s+/g, ' ');
    if (s === '') return;
    const lbl = /^([A-Za-z_.$][\w.$]*):$/.exec(s);
    if (lbl) { a.label(lbl[1]!); return; }
    for (const [re, build] of PATTERNS) {
      const m = s.match(re);
      if (m) {
        try { build(m, a); } catch (e) { throw new AsmError(`line ${n + 1}: ${(e as Error).message}: '${s}'`); }
        return;
      }
    }
    throw new AsmError(`line ${n + 1}: cannot parse '${s}'`);
  });
  return a.assemble();
}
