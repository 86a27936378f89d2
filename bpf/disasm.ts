// eBPF disassembler in llvm-objdump's syntax (as LLVM 14 prints it, plus the newer forms
// LLVM 14 shows as `<unknown>`): `r0 = *(u32 *)(r1 + 8)`, `if w1 > 3 goto +2`,
// `r1 = 42 ll`, `call 12`, `lock *(u64 *)(r1 + 0) += r2`. Owns only text formatting;
// `bpf/asm.ts` parses the same syntax back. Does not touch the VM.

import { type Insn, type Located, Pseudo, CallSrc, decode } from './insn';
import { helperName } from './helpers';

const ALU_SYM = {
  add: '+=', sub: '-=', mul: '*=', div: '/=', or: '|=', and: '&=', lsh: '<<=', rsh: '>>=',
  neg: '', mod: '%=', xor: '^=', mov: '=', arsh: 's>>=',
} as const;
const JMP_SYM = {
  ja: '', jeq: '==', jgt: '>', jge: '>=', jset: '&', jne: '!=', jsgt: 's>', jsge: 's>=', jlt: '<',
  jle: '<=', jslt: 's<', jsle: 's<=',
} as const;
const C_SIZE = { B: 8, H: 16, W: 32, DW: 64 } as const;

const mem = (base: number, off: number): string => `(r${base} ${off < 0 ? '-' : '+'} ${Math.abs(off)})`;
const rel = (n: number): string => (n < 0 ? `${n}` : `+${n}`);

export interface DisasmOptions {
  /** Map names by relocated slot: `r1 = map[hints] ll` instead of the raw immediate. */
  maps?: ReadonlyMap<number, string>;
  /** Label names by slot, appended to jumps as ` <name>`. */
  labels?: ReadonlyMap<number, string>;
  /** Append `  # helper_name` to helper calls. */
  helperComments?: boolean;
}

/** One instruction, without its slot number. `slot` is only needed to resolve labels and maps. */
export function formatInsn(i: Insn, slot = 0, opts: DisasmOptions = {}): string {
  const R = (w: boolean, n: number): string => `${w ? 'w' : 'r'}${n}`;
  const target = (off: number): string => {
    const name = opts.labels?.get(slot + 1 + off);
    return name === undefined ? '' : ` <${name}>`;
  };
  switch (i.kind) {
    case 'alu': {
      const w = i.width === 32;
      if (i.op === 'neg') return `${R(w, i.dst)} = -${R(w, i.dst)}`;
      if (i.off !== 0 && i.op === 'mov') return `${R(w, i.dst)} = (s${i.off})${R(w, i.src ?? 0)}`;
      const sym = i.off === 1 ? `s${ALU_SYM[i.op]}` : ALU_SYM[i.op];
      return `${R(w, i.dst)} ${sym} ${i.src === null ? i.imm : R(w, i.src)}`;
    }
    case 'end':
      return `r${i.dst} = ${i.order === 'swap' ? 'bswap' : i.order}${i.bits} r${i.dst}`;
    case 'jmp': {
      if (i.op === 'ja') return i.width === 64 ? `goto ${rel(i.off)}${target(i.off)}` : `gotol ${rel(i.imm)}${target(i.imm)}`;
      const w = i.width === 32;
      return `if ${R(w, i.dst)} ${JMP_SYM[i.op]} ${i.src === null ? i.imm : R(w, i.src)} goto ${rel(i.off)}${target(i.off)}`;
    }
    case 'call': {
      if (i.src === CallSrc.PSEUDO_CALL) return `call pc${rel(i.imm)}${target(i.imm)}`;
      if (i.src === CallSrc.KFUNC) return `call kfunc ${i.imm}`;
      const name = opts.helperComments ? helperName(i.imm) : undefined;
      return `call ${i.imm}${name ? `  # ${name}` : ''}`;
    }
    case 'exit':
      return 'exit';
    case 'ldimm64': {
      const map = opts.maps?.get(slot);
      const lo = Number(BigInt.asIntN(32, i.imm));
      const hi = Number(BigInt.asIntN(32, i.imm >> 32n));
      if (i.src === Pseudo.MAP_FD) return map !== undefined ? `r${i.dst} = map[${map}] ll` : `r${i.dst} = map_fd(${lo}) ll`;
      if (i.src === Pseudo.MAP_VALUE) return map !== undefined ? `r${i.dst} = map_value[${map}] + ${hi} ll` : `r${i.dst} = map_value(${lo}) + ${hi} ll`;
      if (i.src !== Pseudo.NONE) return `r${i.dst} = pseudo${i.src}(${lo}, ${hi}) ll`;
      return `r${i.dst} = ${i.imm} ll`;
    }
    case 'ldabs':
      return `r0 = *(u${C_SIZE[i.size]} *)skb[${i.imm}]`;
    case 'ldind':
      return `r0 = *(u${C_SIZE[i.size]} *)skb[r${i.src}${i.imm === 0 ? '' : ` + ${i.imm}`}]`;
    case 'ldx':
      return `r${i.dst} = *(${i.signed ? 's' : 'u'}${C_SIZE[i.size]} *)${mem(i.src, i.off)}`;
    case 'st':
      return `*(u${C_SIZE[i.size]} *)${mem(i.dst, i.off)} = ${i.imm}`;
    case 'stx':
      return `*(u${C_SIZE[i.size]} *)${mem(i.dst, i.off)} = r${i.src}`;
    case 'atomic': {
      const bits = C_SIZE[i.size];
      const w = i.size === 'W';
      const at = `${mem(i.dst, i.off).slice(1, -1)}`;
      if (i.op === 'xchg') return `${R(w, i.src)} = ${w ? 'xchg32_32' : 'xchg_64'}(${at}, ${R(w, i.src)})`;
      if (i.op === 'cmpxchg') return `${R(w, 0)} = ${w ? 'cmpxchg32_32' : 'cmpxchg_64'}(${at}, ${R(w, 0)}, ${R(w, i.src)})`;
      if (i.fetch) return `${R(w, i.src)} = atomic_fetch_${i.op}((u${bits} *)(${at}), ${R(w, i.src)})`;
      return `lock *(u${bits} *)(${at}) ${ALU_SYM[i.op]} r${i.src}`;
    }
    case 'raw': {
      const { code, dst, src, off, imm } = i.raw;
      return `.insn 0x${code.toString(16).padStart(2, '0')}, dst=${dst}, src=${src}, off=${off}, imm=${imm}  # <unknown>`;
    }
  }
}

/** Disassemble a program: one line per instruction, `slot: text` like llvm-objdump without bytes. */
export function disassemble(bytes: Uint8Array, opts: DisasmOptions = {}): string[] {
  return decode(bytes).map(({ slot, insn }: Located) => `${String(slot).padStart(6)}:\t${formatInsn(insn, slot, opts)}`);
}
