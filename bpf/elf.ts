// Loader for eBPF ELF objects as `clang -target bpf -O2 [-g] -c` writes them: program
// sections (kprobe/, kretprobe/, tracepoint/, raw_tracepoint/, fentry/, fexit/), the
// license, maps (legacy `maps` section and BTF-defined `.maps`), symbols, and `.rel*`
// relocations (map references; bpf-to-bpf calls into `.text`, linked like libbpf does), each a
// step of its own as in libbpf. The ELF64 layouts are lib/elf.ts's, the instruction encoding
// bpf/insn.ts's (relocations patch through it); this module owns the steps and the BTF it
// reads. It builds no packages (bpf/package.ts does) and does not touch the VM.

import {
  EI_CLASS, EI_DATA, ELFCLASS64, ELFDATA2LSB, EM_BPF, ET_REL, Elf64Ehdr, Elf64Rel, Elf64Shdr, Elf64Sym, SHF_EXECINSTR, SHN_UNDEF,
  SHT_NOBITS, SHT_REL, SHT_SYMTAB, STB_GLOBAL, STT_FUNC, STT_SECTION, hasElfMagic, relSym, relType, stBind, stType,
} from '../lib/elf';
import { TsvmmError } from '../lib/errors';
import { struct, u16, u32, u8 } from '../lib/struct';
import { CALL_CODE, CallSrc, INSN_SIZE, LD_IMM64_CODE, Pseudo, patchRaw, rawAt } from './insn';
import type { AttachPoint } from './package';

export class ElfError extends TsvmmError {}

/** BPF relocation types (LLVM's BPF.def; <elf.h> names the first two). */
const R_BPF_64_64 = 1; // LD_IMM64 of a map (or global data)
const R_BPF_64_ABS64 = 2; // debug info
const R_BPF_64_ABS32 = 3; // debug info
const R_BPF_64_NODYLD32 = 4; // .BTF.ext line info
const R_BPF_64_32 = 10; // bpf-to-bpf call
const DEBUG_RELOCATIONS: ReadonlySet<number> = new Set([R_BPF_64_ABS64, R_BPF_64_ABS32, R_BPF_64_NODYLD32]);
/** struct bpf_map_def of the legacy `maps` section: five u32. */
const LEGACY_MAP_DEF_SIZE = 20;

export interface ElfSection { index: number; name: string; type: number; flags: number; offset: number; size: number; link: number; info: number }
export interface ElfSymbol { name: string; value: number; size: number; section: number; type: number; bind: number }
export interface ElfMap {
  name: string; type: number; keySize: number; valueSize: number; maxEntries: number; flags: number;
  /** `maps` (struct bpf_map_def) or `.maps` (BTF-defined). */
  source: 'legacy' | 'btf';
}
export interface ElfMapRef { slot: number; map: string }
export interface ElfProgram {
  /** Function symbol name. */
  name: string;
  section: string;
  /** Parsed from the section name; null when the prefix is not one tsvmm attaches. */
  attach: AttachPoint | null;
  /** Instructions (with `.text` appended when the program calls into it); LD_IMM64 map slots have src = BPF_PSEUDO_MAP_FD. */
  insns: Uint8Array;
  mapRefs: ElfMapRef[];
}
export interface ElfObject {
  license: string | null;
  maps: ElfMap[];
  programs: ElfProgram[];
  symbols: ElfSymbol[];
  sections: ElfSection[];
}

/** Section name → attach point (libbpf's spellings, the ones tsvmm supports). */
export function attachFromSection(section: string): AttachPoint | null {
  const m = /^([a-z_]+)\/(.+)$/.exec(section);
  if (!m) return null;
  const [, prefix, rest] = m as unknown as [string, string, string];
  switch (prefix) {
    case 'kprobe': return { kind: 'kprobe', target: rest };
    case 'kretprobe': return { kind: 'kretprobe', target: rest };
    case 'tracepoint': case 'tp': return /^[^/]+\/[^/]+$/.test(rest) ? { kind: 'tracepoint', target: rest } : null;
    case 'raw_tracepoint': case 'raw_tp': return { kind: 'raw_tracepoint', target: rest };
    case 'fentry': return { kind: 'fentry', target: rest };
    case 'fexit': return { kind: 'fexit', target: rest };
    default: return null;
  }
}

/** The object's bytes with bounds-checked access; every error names what was being read. */
class ElfFile {
  constructor(readonly bytes: Uint8Array) {}

  need(off: number, n: number, what: string): void {
    if (off < 0 || n < 0 || off + n > this.bytes.length) throw new ElfError(`truncated ELF: ${what} at ${off}+${n} is past the end of the file (${this.bytes.length} bytes)`);
  }

  /** A u64 field as a safe integer. */
  num(v: bigint, what: string): number {
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new ElfError(`${what}: value ${v} too large`);
    return Number(v);
  }

  cstr(o: number, end: number): string {
    let e = o;
    while (e < end && this.bytes[e] !== 0) e++;
    if (e >= end) throw new ElfError(`string at ${o} is not NUL-terminated within its table`);
    return Buffer.from(this.bytes.subarray(o, e)).toString('latin1');
  }

  data(s: ElfSection): Uint8Array {
    return this.bytes.subarray(s.offset, s.offset + s.size);
  }
}

/** A relocation, by the section it patches. */
interface Reloc { offset: number; type: number; sym: ElfSymbol }

/** What the steps below find, for the linking step. */
interface Parsed {
  file: ElfFile;
  sections: ElfSection[];
  symbols: ElfSymbol[];
  /** `${section}:${offset}` of a map's symbol → the map's name. */
  mapAt: Map<string, string>;
  mapSections: ReadonlySet<number>;
  relocs: Map<number, Reloc[]>;
  text: ElfSection | undefined;
}

/**
 * Loads an eBPF object in libbpf's order: the section table, the symbols, the license, the maps
 * (legacy and BTF-defined), the relocations, then each program linked (map references marked,
 * calls into `.text` resolved by appending it).
 */
export function loadElf(bytes: Uint8Array): ElfObject {
  const file = new ElfFile(bytes);
  const sections = readSections(file);
  const byName = (n: string): ElfSection | undefined => sections.find((s) => s.name === n);
  const symbols = readSymbols(file, sections);
  const licSec = byName('license');
  const license = licSec ? Buffer.from(file.data(licSec)).toString('latin1').replace(/\0[\s\S]*$/, '') : null;
  const { maps, mapAt, mapSections } = collectMaps(file, symbols, byName('maps'), byName('.maps'), byName('.BTF'));
  const relocs = collectRelocations(file, sections, symbols);
  const programs = collectPrograms({ file, sections, symbols, mapAt, mapSections, relocs, text: byName('.text') });
  return { license, maps, programs, symbols, sections };
}

/** The ELF header checks and the section table with names. */
function readSections(file: ElfFile): ElfSection[] {
  const bytes = file.bytes;
  if (!hasElfMagic(bytes)) throw new ElfError('not an ELF file (bad magic)');
  file.need(0, Elf64Ehdr.size, 'ELF header');
  if (bytes[EI_CLASS] !== ELFCLASS64 || bytes[EI_DATA] !== ELFDATA2LSB) {
    throw new ElfError(`not a 64-bit little-endian ELF (class ${bytes[EI_CLASS]}, data ${bytes[EI_DATA]}); use clang -target bpf (bpfel)`);
  }
  const eh = Elf64Ehdr.read(bytes);
  if (eh.machine !== EM_BPF) throw new ElfError(`ELF machine ${eh.machine} is not BPF (${EM_BPF}); compile with clang -target bpf`);
  if (eh.type !== ET_REL) throw new ElfError(`ELF type ${eh.type} is not a relocatable object (clang -c)`);
  const shoff = file.num(eh.shoff, 'e_shoff');
  if (eh.shentsize !== Elf64Shdr.size) throw new ElfError(`section header size ${eh.shentsize}, expected ${Elf64Shdr.size}`);
  file.need(shoff, eh.shnum * Elf64Shdr.size, 'section header table');
  const headers = Array.from({ length: eh.shnum }, (_, index) => Elf64Shdr.read(bytes, shoff + index * Elf64Shdr.size));
  const sections = headers.map((h, index): ElfSection => {
    const s: ElfSection = {
      index, name: '', type: h.type, flags: file.num(h.flags, 'sh_flags'), offset: file.num(h.offset, 'sh_offset'),
      size: file.num(h.size, 'sh_size'), link: h.link, info: h.info,
    };
    if (s.type !== SHT_NOBITS) file.need(s.offset, s.size, `section ${index}`);
    return s;
  });
  const shstr = sections[eh.shstrndx];
  if (shstr === undefined) throw new ElfError('section name table index out of range');
  sections.forEach((s, i) => (s.name = file.cstr(shstr.offset + headers[i]!.name, shstr.offset + shstr.size)));
  return sections;
}

function readSymbols(file: ElfFile, sections: readonly ElfSection[]): ElfSymbol[] {
  const symtab = sections.find((s) => s.type === SHT_SYMTAB);
  if (!symtab) return [];
  const strtab = sections[symtab.link];
  if (strtab === undefined) throw new ElfError('symbol string table index out of range');
  const symbols: ElfSymbol[] = [];
  for (let o = symtab.offset; o + Elf64Sym.size <= symtab.offset + symtab.size; o += Elf64Sym.size) {
    const sym = Elf64Sym.read(file.bytes, o);
    symbols.push({
      name: file.cstr(strtab.offset + sym.name, strtab.offset + strtab.size), value: file.num(sym.value, 'st_value'),
      size: file.num(sym.size, 'st_size'), section: sym.shndx, type: stType(sym.info), bind: stBind(sym.info),
    });
  }
  return symbols;
}

/** Maps of the legacy `maps` section (struct bpf_map_def) and of `.maps` (described in `.BTF`). */
function collectMaps(file: ElfFile, symbols: readonly ElfSymbol[], legacy?: ElfSection, btfMaps?: ElfSection, btf?: ElfSection) {
  const maps: ElfMap[] = [];
  const mapAt = new Map<string, string>();
  const named = (sec: ElfSection) => symbols.filter((x) => x.section === sec.index && x.name !== '' && x.type !== STT_SECTION);
  if (legacy) {
    const d = new DataView(file.bytes.buffer, file.bytes.byteOffset + legacy.offset, legacy.size);
    for (const s of named(legacy)) {
      if (s.value + LEGACY_MAP_DEF_SIZE > legacy.size) throw new ElfError(`legacy map '${s.name}' at ${s.value} overruns the maps section`);
      maps.push({
        name: s.name, type: d.getUint32(s.value, true), keySize: d.getUint32(s.value + 4, true),
        valueSize: d.getUint32(s.value + 8, true), maxEntries: d.getUint32(s.value + 12, true),
        flags: d.getUint32(s.value + 16, true), source: 'legacy',
      });
      mapAt.set(`${legacy.index}:${s.value}`, s.name);
    }
  }
  if (btfMaps) {
    if (!btf) throw new ElfError('object has a .maps section but no .BTF (compile with -g)');
    const defs = btfMapDefs(file.data(btf));
    for (const s of named(btfMaps)) {
      const def = defs.get(s.name);
      if (def === undefined) throw new ElfError(`map '${s.name}' in .maps has no BTF description`);
      maps.push({ name: s.name, ...def, source: 'btf' });
      mapAt.set(`${btfMaps.index}:${s.value}`, s.name);
    }
  }
  const mapSections = new Set([legacy?.index, btfMaps?.index].filter((i): i is number => i !== undefined));
  return { maps, mapAt, mapSections };
}

/** The `.rel*` sections, by the section each patches. */
function collectRelocations(file: ElfFile, sections: readonly ElfSection[], symbols: readonly ElfSymbol[]): Map<number, Reloc[]> {
  const out = new Map<number, Reloc[]>();
  for (const s of sections.filter((x) => x.type === SHT_REL)) {
    const list: Reloc[] = [];
    for (let o = s.offset; o + Elf64Rel.size <= s.offset + s.size; o += Elf64Rel.size) {
      const rel = Elf64Rel.read(file.bytes, o);
      const symIdx = relSym(rel.info);
      const sym = symbols[symIdx];
      if (sym === undefined) throw new ElfError(`relocation in ${s.name} names symbol ${symIdx}, out of range`);
      list.push({ offset: file.num(rel.offset, 'r_offset'), type: relType(rel.info), sym });
    }
    out.set(s.info, list);
  }
  return out;
}

/** One program per global function of every code section but `.text`, linked. */
function collectPrograms(p: Parsed): ElfProgram[] {
  const { file, sections, symbols, text } = p;
  const programs: ElfProgram[] = [];
  for (const sec of sections) {
    if (!(sec.flags & SHF_EXECINSTR) || sec.size === 0 || sec.name === '.text') continue;
    const funcs = symbols.filter((s) => s.section === sec.index && s.type === STT_FUNC && s.bind === STB_GLOBAL && s.section !== SHN_UNDEF);
    if (funcs.length === 0) throw new ElfError(`section ${sec.name} has code but no global function symbol`);
    for (const fn of funcs) {
      if (fn.value % INSN_SIZE || fn.size % INSN_SIZE || fn.value + fn.size > sec.size || fn.size === 0) throw new ElfError(`function ${fn.name} in ${sec.name} has a bad extent ${fn.value}+${fn.size}`);
      const own = file.data(sec).slice(fn.value, fn.value + fn.size);
      const mapRefs: ElfMapRef[] = [];
      const needsText = relocate(p, sec, own, fn.value, fn.value + fn.size, 0, null, mapRefs);
      let insns = own;
      if (needsText && text) {
        // Linked like libbpf: .text appended after the function, calls pointed into it.
        const textBase = own.length / INSN_SIZE;
        insns = new Uint8Array(own.length + text.size);
        insns.set(file.data(sec).subarray(fn.value, fn.value + fn.size)); // unpatched: relocated again below
        insns.set(file.data(text), own.length);
        mapRefs.length = 0;
        relocate(p, sec, insns, fn.value, fn.value + fn.size, 0, textBase, mapRefs);
        relocate(p, text, insns, 0, text.size, textBase, textBase, mapRefs);
      }
      programs.push({ name: fn.name, section: sec.name, attach: attachFromSection(sec.name), insns, mapRefs });
    }
  }
  return programs;
}

/**
 * Applies `sec`'s relocations in [from, to) to `insns`, where that range sits at slot `base`:
 * map loads get src = BPF_PSEUDO_MAP_FD and imm 0 (the agent puts the fd there) and are listed
 * in `refs`; calls into `.text` are resolved once it is placed (`textBase`, else only noted).
 * Returns whether the range calls into `.text`.
 */
function relocate(p: Parsed, sec: ElfSection, insns: Uint8Array, from: number, to: number, base: number, textBase: number | null, refs: ElfMapRef[]): boolean {
  let callsText = false;
  for (const rel of p.relocs.get(sec.index) ?? []) {
    if (rel.offset < from || rel.offset >= to) continue;
    if (rel.offset % INSN_SIZE !== 0) throw new ElfError(`${sec.name}: relocation at byte ${rel.offset} is not on an instruction`);
    const slot = base + (rel.offset - from) / INSN_SIZE;
    const insn = rawAt(insns, slot);
    if (rel.type === R_BPF_64_64) {
      if (insn.code !== LD_IMM64_CODE) throw new ElfError(`${sec.name}: R_BPF_64_64 at slot ${slot} is not on an LD_IMM64`);
      if (!p.mapSections.has(rel.sym.section)) {
        const target = p.sections[rel.sym.section]?.name ?? `section ${rel.sym.section}`;
        throw new ElfError(`${sec.name}: slot ${slot} refers to '${rel.sym.name || target}' in ${target}; only maps are supported (no global variables)`);
      }
      // A section symbol points at the section's start: the map's offset is in imm.
      const key = `${rel.sym.section}:${rel.sym.value + (rel.sym.type === STT_SECTION ? insn.imm : 0)}`;
      const map = p.mapAt.get(key);
      if (map === undefined) throw new ElfError(`${sec.name}: slot ${slot}: no map at ${key}`);
      patchRaw(insns, slot, { src: Pseudo.MAP_FD, imm: 0 });
      refs.push({ slot, map });
    } else if (rel.type === R_BPF_64_32) {
      if (insn.code !== CALL_CODE || insn.src !== CallSrc.PSEUDO_CALL) throw new ElfError(`${sec.name}: R_BPF_64_32 at slot ${slot} is not a bpf-to-bpf call`);
      if (p.text === undefined || rel.sym.section !== p.text.index) throw new ElfError(`${sec.name}: slot ${slot} calls into section ${rel.sym.section}; only calls into .text are supported`);
      if (textBase === null) { callsText = true; continue; } // resolved on the second pass, once .text is placed
      // libbpf's rule: the callee slot is st_value/8 + imm + 1 (clang leaves imm = -1 for a symbol's own start).
      const target = textBase + rel.sym.value / INSN_SIZE + insn.imm + 1;
      patchRaw(insns, slot, { imm: target - (slot + 1) });
    } else if (!DEBUG_RELOCATIONS.has(rel.type)) {
      throw new ElfError(`${sec.name}: unsupported relocation type ${rel.type} at byte ${rel.offset}`);
    }
  }
  return callsText;
}

// --- BTF: just enough to read `.maps` definitions (<linux/btf.h>) ------------------------

export const BTF_MAGIC = 0xeb9f;
export const BtfKind = { INT: 1, PTR: 2, ARRAY: 3, STRUCT: 4, UNION: 5, ENUM: 6, FWD: 7, TYPEDEF: 8, VOLATILE: 9, CONST: 10, RESTRICT: 11, FUNC: 12, FUNC_PROTO: 13, VAR: 14, DATASEC: 15, FLOAT: 16, DECL_TAG: 17, TYPE_TAG: 18, ENUM64: 19 } as const;
const Kind = BtfKind;
/** Offsets in the header are from its end (hdr_len). */
export const BtfHeader = struct('btf_header', 24, {
  magic: u16(0), version: u8(2), flags: u8(3), hdrLen: u32(4), typeOff: u32(8), typeLen: u32(12), strOff: u32(16), strLen: u32(20),
});
/** Every type: name, info (vlen bits 0-15, kind bits 24-28), then size or type; kind-specific data follows. */
export const BtfType = struct('btf_type', 12, { nameOff: u32(0), info: u32(4), sizeOrType: u32(8, 'size') });
export const btfKind = (info: number): number => (info >>> 24) & 0x1f;
export const btfVlen = (info: number): number => info & 0xffff;
export const BtfArray = struct('btf_array', 12, { type: u32(0), indexType: u32(4), nelems: u32(8) });
export const BtfMember = struct('btf_member', 12, { nameOff: u32(0), type: u32(4), offset: u32(8) });
export const BtfVarSecinfo = struct('btf_var_secinfo', 12, { type: u32(0), offset: u32(4), size: u32(8) });
/** Bytes after a btf_type for each kind (with vlen entries where it has them). */
const BTF_EXTRA: Record<number, (vlen: number) => number> = {
  [Kind.INT]: () => 4, [Kind.ARRAY]: () => BtfArray.size, [Kind.STRUCT]: (n) => BtfMember.size * n, [Kind.UNION]: (n) => BtfMember.size * n,
  [Kind.ENUM]: (n) => 8 * n, [Kind.FUNC_PROTO]: (n) => 8 * n, [Kind.VAR]: () => 4, [Kind.DATASEC]: (n) => BtfVarSecinfo.size * n,
  [Kind.DECL_TAG]: () => 4, [Kind.ENUM64]: (n) => 12 * n,
};

interface BtfTypeInfo { kind: number; name: string; vlen: number; sizeOrType: number; extra: number }

type MapDef = Omit<ElfMap, 'name' | 'source'>;

/** Parse `.BTF` and return, for each variable of DATASEC `.maps`, its map definition. */
export function btfMapDefs(btf: Uint8Array): Map<string, MapDef> {
  const dv = new DataView(btf.buffer, btf.byteOffset, btf.byteLength);
  const need = (o: number, n: number, what: string): void => {
    if (o + n > btf.length) throw new ElfError(`truncated .BTF: ${what}`);
  };
  need(0, BtfHeader.size, 'header');
  const h = BtfHeader.read(dv);
  if (h.magic !== BTF_MAGIC) throw new ElfError('.BTF has a bad magic');
  const typeOff = h.hdrLen + h.typeOff, typeLen = h.typeLen;
  const strOff = h.hdrLen + h.strOff, strLen = h.strLen;
  need(typeOff, typeLen, 'type section');
  need(strOff, strLen, 'string section');
  const str = (o: number): string => {
    if (o >= strLen) throw new ElfError(`.BTF string offset ${o} out of range`);
    const s = btf.subarray(strOff + o, strOff + strLen);
    const e = s.indexOf(0);
    return Buffer.from(e < 0 ? s : s.subarray(0, e)).toString('latin1');
  };
  const types: BtfTypeInfo[] = [{ kind: 0, name: '', vlen: 0, sizeOrType: 0, extra: 0 }]; // id 0 = void
  for (let o = typeOff; o < typeOff + typeLen; ) {
    need(o, BtfType.size, 'type');
    const raw = BtfType.read(dv, o);
    const t: BtfTypeInfo = { kind: btfKind(raw.info), name: str(raw.nameOff), vlen: btfVlen(raw.info), sizeOrType: raw.sizeOrType, extra: o + BtfType.size };
    if (t.kind < 1 || t.kind > Kind.ENUM64) throw new ElfError(`.BTF type ${types.length}: unknown kind ${t.kind}`);
    o += BtfType.size + (BTF_EXTRA[t.kind]?.(t.vlen) ?? 0);
    types.push(t);
  }
  const get = (id: number): BtfTypeInfo => {
    const t = types[id];
    if (t === undefined) throw new ElfError(`.BTF type id ${id} out of range`);
    return t;
  };
  const skipMods = (id: number): BtfTypeInfo => {
    let t = get(id);
    for (let n = 0; n < 32 && (t.kind === Kind.TYPEDEF || t.kind === Kind.VOLATILE || t.kind === Kind.CONST || t.kind === Kind.RESTRICT || t.kind === Kind.TYPE_TAG); n++) t = get(t.sizeOrType);
    return t;
  };
  /** The array following an ARRAY type (inside the type section, checked when it was walked). */
  const arrayOf = (t: BtfTypeInfo) => {
    need(t.extra, BtfArray.size, 'array');
    return BtfArray.read(dv, t.extra);
  };
  const sizeOf = (id: number, depth = 0): number => {
    if (depth > 32) throw new ElfError('.BTF type chain too deep');
    const t = skipMods(id);
    switch (t.kind) {
      case Kind.INT: case Kind.STRUCT: case Kind.UNION: case Kind.ENUM: case Kind.ENUM64: case Kind.FLOAT: case Kind.DATASEC: return t.sizeOrType;
      case Kind.PTR: return 8;
      case Kind.ARRAY: {
        const a = arrayOf(t);
        return a.nelems * sizeOf(a.type, depth + 1);
      }
      default: throw new ElfError(`.BTF type '${t.name}' (kind ${t.kind}) has no size`);
    }
  };
  /** `__uint(name, N)` is `int (*name)[N]`: a pointer to an array of N elements. */
  const uintOf = (member: string, id: number): number => {
    const p = skipMods(id);
    const a = p.kind === Kind.PTR ? skipMods(p.sizeOrType) : undefined;
    if (a?.kind !== Kind.ARRAY) throw new ElfError(`.maps member '${member}' is not an __uint() (pointer to array)`);
    return arrayOf(a).nelems;
  };
  /** `__type(name, T)` is `T *name`. */
  const typeSizeOf = (member: string, id: number): number => {
    const p = skipMods(id);
    if (p.kind !== Kind.PTR) throw new ElfError(`.maps member '${member}' is not a __type() (pointer)`);
    return sizeOf(p.sizeOrType);
  };

  const out = new Map<string, MapDef>();
  const sec = types.find((t) => t.kind === Kind.DATASEC && t.name === '.maps');
  if (!sec) return out;
  for (let v = 0; v < sec.vlen; v++) {
    const variable = get(BtfVarSecinfo.read(dv, sec.extra + v * BtfVarSecinfo.size).type);
    if (variable.kind !== Kind.VAR) throw new ElfError(`.maps entry ${v} is not a variable`);
    const st = skipMods(variable.sizeOrType);
    if (st.kind !== Kind.STRUCT) throw new ElfError(`map '${variable.name}' is not a struct`);
    const def: MapDef = { type: 0, keySize: 0, valueSize: 0, maxEntries: 0, flags: 0 };
    for (let m = 0; m < st.vlen; m++) {
      const member = BtfMember.read(dv, st.extra + m * BtfMember.size);
      const name = str(member.nameOff);
      const tid = member.type;
      switch (name) {
        case 'type': def.type = uintOf(name, tid); break;
        case 'max_entries': def.maxEntries = uintOf(name, tid); break;
        case 'map_flags': def.flags = uintOf(name, tid); break;
        case 'key_size': def.keySize = uintOf(name, tid); break;
        case 'value_size': def.valueSize = uintOf(name, tid); break;
        case 'key': def.keySize = typeSizeOf(name, tid); break;
        case 'value': def.valueSize = typeSizeOf(name, tid); break;
        default: throw new ElfError(`map '${variable.name}': unsupported .maps member '${name}'`);
      }
    }
    out.set(variable.name, def);
  }
  return out;
}
