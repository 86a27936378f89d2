// Loader for eBPF ELF objects as `clang -target bpf -O2 [-g] -c` writes them: program
// sections (kprobe/, kretprobe/, tracepoint/, raw_tracepoint/, fentry/, fexit/), the
// license, maps (legacy `maps` section and BTF-defined `.maps`), symbols, and `.rel*`
// relocations (map references; bpf-to-bpf calls into `.text`, linked like libbpf does).
// Owns the ELF64 and BTF byte layouts it reads; builds no packages (bpf/package.ts does)
// and does not touch the VM.

import { CallSrc, INSN_SIZE, LD_IMM64_CODE, Pseudo } from './insn';
import type { AttachPoint } from './package';
import { TsvmmError } from '../lib/errors';

export class ElfError extends TsvmmError {}

const EM_BPF = 247;
const ET_REL = 1;
const SHT_SYMTAB = 2;
const SHT_REL = 9;
const SHF_EXECINSTR = 0x4;
const STT_FUNC = 2;
const STB_GLOBAL = 1;
const SHN_UNDEF = 0;
const R_BPF_64_64 = 1;
const R_BPF_64_32 = 10;
const ELF_HEADER = { size: 64, machine: 18, type: 16, shoff: 40, shentsize: 58, shnum: 60, shstrndx: 62 } as const;
const SHDR = { size: 64, name: 0, type: 4, flags: 8, offset: 24, size_: 32, link: 40, info: 44, entsize: 56 } as const;
const SYM_SIZE = 24;
const REL_SIZE = 16;

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

class Reader {
  readonly dv: DataView;
  constructor(readonly bytes: Uint8Array) { this.dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength); }
  need(off: number, n: number, what: string): void {
    if (off < 0 || n < 0 || off + n > this.bytes.length) throw new ElfError(`truncated ELF: ${what} at ${off}+${n} is past the end of the file (${this.bytes.length} bytes)`);
  }
  u16(o: number): number { return this.dv.getUint16(o, true); }
  u32(o: number): number { return this.dv.getUint32(o, true); }
  u64(o: number, what: string): number {
    const v = this.dv.getBigUint64(o, true);
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new ElfError(`${what}: value ${v} too large`);
    return Number(v);
  }
  cstr(o: number, end: number): string {
    let e = o;
    while (e < end && this.bytes[e] !== 0) e++;
    if (e >= end) throw new ElfError(`string at ${o} is not NUL-terminated within its table`);
    return Buffer.from(this.bytes.subarray(o, e)).toString('latin1');
  }
}

export function loadElf(bytes: Uint8Array): ElfObject {
  const r = new Reader(bytes);
  if (bytes.length < 4 || bytes[0] !== 0x7f || bytes[1] !== 0x45 || bytes[2] !== 0x4c || bytes[3] !== 0x46) throw new ElfError('not an ELF file (bad magic)');
  r.need(0, ELF_HEADER.size, 'ELF header');
  if (bytes[4] !== 2 || bytes[5] !== 1) throw new ElfError(`not a 64-bit little-endian ELF (class ${bytes[4]}, data ${bytes[5]}); use clang -target bpf (bpfel)`);
  const machine = r.u16(ELF_HEADER.machine);
  if (machine !== EM_BPF) throw new ElfError(`ELF machine ${machine} is not BPF (${EM_BPF}); compile with clang -target bpf`);
  if (r.u16(ELF_HEADER.type) !== ET_REL) throw new ElfError(`ELF type ${r.u16(ELF_HEADER.type)} is not a relocatable object (clang -c)`);
  const shoff = r.u64(ELF_HEADER.shoff, 'e_shoff');
  const shnum = r.u16(ELF_HEADER.shnum);
  if (r.u16(ELF_HEADER.shentsize) !== SHDR.size) throw new ElfError(`section header size ${r.u16(ELF_HEADER.shentsize)}, expected ${SHDR.size}`);
  r.need(shoff, shnum * SHDR.size, 'section header table');
  const raw = Array.from({ length: shnum }, (_, index): ElfSection => {
    const o = shoff + index * SHDR.size;
    const s: ElfSection = {
      index, name: '', type: r.u32(o + SHDR.type), flags: r.u64(o + SHDR.flags, 'sh_flags'),
      offset: r.u64(o + SHDR.offset, 'sh_offset'), size: r.u64(o + SHDR.size_, 'sh_size'),
      link: r.u32(o + SHDR.link), info: r.u32(o + SHDR.info),
    };
    if (s.type !== 8 /* NOBITS */) r.need(s.offset, s.size, `section ${index}`);
    return s;
  });
  const shstr = raw[r.u16(ELF_HEADER.shstrndx)];
  if (shstr === undefined) throw new ElfError('section name table index out of range');
  raw.forEach((s, i) => {
    const o = shoff + i * SHDR.size;
    s.name = r.cstr(shstr.offset + r.u32(o + SHDR.name), shstr.offset + shstr.size);
  });
  const sections = raw;
  const byName = (n: string): ElfSection | undefined => sections.find((s) => s.name === n);
  const data = (s: ElfSection): Uint8Array => bytes.subarray(s.offset, s.offset + s.size);

  // Symbols.
  const symtab = sections.find((s) => s.type === SHT_SYMTAB);
  const symbols: ElfSymbol[] = [];
  if (symtab) {
    const strtab = sections[symtab.link];
    if (strtab === undefined) throw new ElfError('symbol string table index out of range');
    for (let o = symtab.offset; o + SYM_SIZE <= symtab.offset + symtab.size; o += SYM_SIZE) {
      const info = bytes[o + 4]!;
      symbols.push({
        name: r.cstr(strtab.offset + r.u32(o), strtab.offset + strtab.size), value: r.u64(o + 8, 'st_value'),
        size: r.u64(o + 16, 'st_size'), section: r.u16(o + 6), type: info & 0xf, bind: info >> 4,
      });
    }
  }

  const licSec = byName('license');
  const license = licSec ? Buffer.from(data(licSec)).toString('latin1').replace(/\0[\s\S]*$/, '') : null;

  // Maps.
  const maps: ElfMap[] = [];
  const mapBySym = new Map<string, string>(); // `${section}:${offset}` → map name
  const legacy = byName('maps');
  if (legacy) {
    const d = new DataView(bytes.buffer, bytes.byteOffset + legacy.offset, legacy.size);
    for (const s of symbols.filter((x) => x.section === legacy.index && x.name !== '' && x.type !== 3 /* SECTION */)) {
      if (s.value + 20 > legacy.size) throw new ElfError(`legacy map '${s.name}' at ${s.value} overruns the maps section`);
      maps.push({
        name: s.name, type: d.getUint32(s.value, true), keySize: d.getUint32(s.value + 4, true),
        valueSize: d.getUint32(s.value + 8, true), maxEntries: d.getUint32(s.value + 12, true),
        flags: d.getUint32(s.value + 16, true), source: 'legacy',
      });
      mapBySym.set(`${legacy.index}:${s.value}`, s.name);
    }
  }
  const btfMapsSec = byName('.maps');
  if (btfMapsSec) {
    const btfSec = byName('.BTF');
    if (!btfSec) throw new ElfError('object has a .maps section but no .BTF (compile with -g)');
    const defs = btfMapDefs(data(btfSec));
    for (const s of symbols.filter((x) => x.section === btfMapsSec.index && x.name !== '' && x.type !== 3)) {
      const def = defs.get(s.name);
      if (def === undefined) throw new ElfError(`map '${s.name}' in .maps has no BTF description`);
      maps.push({ name: s.name, ...def, source: 'btf' });
      mapBySym.set(`${btfMapsSec.index}:${s.value}`, s.name);
    }
  }
  const isMapSection = (i: number): boolean => i === legacy?.index || i === btfMapsSec?.index;

  // Relocations by target section.
  interface Rel { offset: number; type: number; sym: ElfSymbol }
  const relsOf = new Map<number, Rel[]>();
  for (const s of sections.filter((x) => x.type === SHT_REL)) {
    const list: Rel[] = [];
    for (let o = s.offset; o + REL_SIZE <= s.offset + s.size; o += REL_SIZE) {
      const info = r.dv.getBigUint64(o + 8, true);
      const symIdx = Number(info >> 32n);
      const sym = symbols[symIdx];
      if (sym === undefined) throw new ElfError(`relocation in ${s.name} names symbol ${symIdx}, out of range`);
      list.push({ offset: r.u64(o, 'r_offset'), type: Number(info & 0xffff_ffffn), sym });
    }
    relsOf.set(s.info, list);
  }

  const text = byName('.text');
  /** Apply a section's relocations to a copy of `insns` (a slice [from, to) of the section placed at `base`). */
  const link = (sec: ElfSection, insns: Uint8Array, from: number, to: number, base: number, textBase: number | null, refs: ElfMapRef[]): boolean => {
    const dv = new DataView(insns.buffer, insns.byteOffset, insns.byteLength);
    let callsText = false;
    for (const rel of relsOf.get(sec.index) ?? []) {
      if (rel.offset < from || rel.offset >= to) continue;
      if (rel.offset % INSN_SIZE !== 0) throw new ElfError(`${sec.name}: relocation at byte ${rel.offset} is not on an instruction`);
      const slot = base + (rel.offset - from) / INSN_SIZE;
      const at = slot * INSN_SIZE;
      const code = dv.getUint8(at);
      if (rel.type === R_BPF_64_64) {
        if (code !== LD_IMM64_CODE) throw new ElfError(`${sec.name}: R_BPF_64_64 at slot ${slot} is not on an LD_IMM64`);
        if (!isMapSection(rel.sym.section)) {
          const target = sections[rel.sym.section]?.name ?? `section ${rel.sym.section}`;
          throw new ElfError(`${sec.name}: slot ${slot} refers to '${rel.sym.name || target}' in ${target}; only maps are supported (no global variables)`);
        }
        const key = `${rel.sym.section}:${rel.sym.value + (rel.sym.type === 3 ? dv.getInt32(at + 4, true) : 0)}`;
        const map = mapBySym.get(key);
        if (map === undefined) throw new ElfError(`${sec.name}: slot ${slot}: no map at ${key}`);
        dv.setUint8(at + 1, (dv.getUint8(at + 1) & 0x0f) | (Pseudo.MAP_FD << 4));
        dv.setInt32(at + 4, 0, true);
        refs.push({ slot, map });
      } else if (rel.type === R_BPF_64_32) {
        if (code !== 0x85 || dv.getUint8(at + 1) >> 4 !== CallSrc.PSEUDO_CALL) throw new ElfError(`${sec.name}: R_BPF_64_32 at slot ${slot} is not a bpf-to-bpf call`);
        if (text === undefined || rel.sym.section !== text.index) throw new ElfError(`${sec.name}: slot ${slot} calls into section ${rel.sym.section}; only calls into .text are supported`);
        if (textBase === null) { callsText = true; continue; } // resolved on the second pass, once .text is placed
        // libbpf's rule: the callee slot is st_value/8 + imm + 1 (clang leaves imm = -1 for a symbol's own start).
        const target = textBase + rel.sym.value / INSN_SIZE + dv.getInt32(at + 4, true) + 1;
        dv.setInt32(at + 4, target - (slot + 1), true);
      } else if (rel.type === 2 || rel.type === 3 || rel.type === 4) {
        continue; // ABS64/ABS32/NODYLD32: debug info, not code
      } else {
        throw new ElfError(`${sec.name}: unsupported relocation type ${rel.type} at byte ${rel.offset}`);
      }
    }
    return callsText;
  };

  const programs: ElfProgram[] = [];
  for (const sec of sections) {
    if (!(sec.flags & SHF_EXECINSTR) || sec.size === 0 || sec.name === '.text') continue;
    const funcs = symbols.filter((s) => s.section === sec.index && s.type === STT_FUNC && s.bind === STB_GLOBAL && s.section !== SHN_UNDEF);
    if (funcs.length === 0) throw new ElfError(`section ${sec.name} has code but no global function symbol`);
    for (const fn of funcs) {
      if (fn.value % INSN_SIZE || fn.size % INSN_SIZE || fn.value + fn.size > sec.size || fn.size === 0) throw new ElfError(`function ${fn.name} in ${sec.name} has a bad extent ${fn.value}+${fn.size}`);
      const own = data(sec).slice(fn.value, fn.value + fn.size);
      const mapRefs: ElfMapRef[] = [];
      const needsText = link(sec, own, fn.value, fn.value + fn.size, 0, null, mapRefs);
      let insns = own;
      if (needsText && text) {
        const textBase = own.length / INSN_SIZE;
        insns = new Uint8Array(own.length + text.size);
        insns.set(data(sec).subarray(fn.value, fn.value + fn.size)); // unpatched: linked again below
        insns.set(data(text), own.length);
        mapRefs.length = 0;
        link(sec, insns, fn.value, fn.value + fn.size, 0, textBase, mapRefs);
        link(text, insns, 0, text.size, textBase, textBase, mapRefs);
      }
      programs.push({ name: fn.name, section: sec.name, attach: attachFromSection(sec.name), insns, mapRefs });
    }
  }
  return { license, maps, programs, symbols, sections };
}

// --- BTF: just enough to read `.maps` definitions -----------------------------------------

const BTF_MAGIC = 0xeb9f;
const Kind = { INT: 1, PTR: 2, ARRAY: 3, STRUCT: 4, UNION: 5, ENUM: 6, FWD: 7, TYPEDEF: 8, VOLATILE: 9, CONST: 10, RESTRICT: 11, FUNC: 12, FUNC_PROTO: 13, VAR: 14, DATASEC: 15, FLOAT: 16, DECL_TAG: 17, TYPE_TAG: 18, ENUM64: 19 } as const;

interface BtfType { kind: number; name: string; vlen: number; sizeOrType: number; extra: number }

type MapDef = Omit<ElfMap, 'name' | 'source'>;

/** Parse `.BTF` and return, for each variable of DATASEC `.maps`, its map definition. */
export function btfMapDefs(btf: Uint8Array): Map<string, MapDef> {
  const dv = new DataView(btf.buffer, btf.byteOffset, btf.byteLength);
  const need = (o: number, n: number, what: string): void => {
    if (o + n > btf.length) throw new ElfError(`truncated .BTF: ${what}`);
  };
  need(0, 24, 'header');
  if (dv.getUint16(0, true) !== BTF_MAGIC) throw new ElfError('.BTF has a bad magic');
  const hdrLen = dv.getUint32(4, true);
  const typeOff = hdrLen + dv.getUint32(8, true), typeLen = dv.getUint32(12, true);
  const strOff = hdrLen + dv.getUint32(16, true), strLen = dv.getUint32(20, true);
  need(typeOff, typeLen, 'type section');
  need(strOff, strLen, 'string section');
  const str = (o: number): string => {
    if (o >= strLen) throw new ElfError(`.BTF string offset ${o} out of range`);
    const s = btf.subarray(strOff + o, strOff + strLen);
    const e = s.indexOf(0);
    return Buffer.from(e < 0 ? s : s.subarray(0, e)).toString('latin1');
  };
  const types: BtfType[] = [{ kind: 0, name: '', vlen: 0, sizeOrType: 0, extra: 0 }]; // id 0 = void
  for (let o = typeOff; o < typeOff + typeLen; ) {
    need(o, 12, 'type');
    const info = dv.getUint32(o + 4, true);
    const t: BtfType = { kind: (info >>> 24) & 0x1f, name: str(dv.getUint32(o, true)), vlen: info & 0xffff, sizeOrType: dv.getUint32(o + 8, true), extra: o + 12 };
    const extra: Record<number, number> = {
      [Kind.INT]: 4, [Kind.ARRAY]: 12, [Kind.STRUCT]: 12 * t.vlen, [Kind.UNION]: 12 * t.vlen, [Kind.ENUM]: 8 * t.vlen,
      [Kind.FUNC_PROTO]: 8 * t.vlen, [Kind.VAR]: 4, [Kind.DATASEC]: 12 * t.vlen, [Kind.DECL_TAG]: 4, [Kind.ENUM64]: 12 * t.vlen,
    };
    if (t.kind < 1 || t.kind > Kind.ENUM64) throw new ElfError(`.BTF type ${types.length}: unknown kind ${t.kind}`);
    o += 12 + (extra[t.kind] ?? 0);
    types.push(t);
  }
  const get = (id: number): BtfType => {
    const t = types[id];
    if (t === undefined) throw new ElfError(`.BTF type id ${id} out of range`);
    return t;
  };
  const skipMods = (id: number): BtfType => {
    let t = get(id);
    for (let n = 0; n < 32 && (t.kind === Kind.TYPEDEF || t.kind === Kind.VOLATILE || t.kind === Kind.CONST || t.kind === Kind.RESTRICT || t.kind === Kind.TYPE_TAG); n++) t = get(t.sizeOrType);
    return t;
  };
  const sizeOf = (id: number, depth = 0): number => {
    if (depth > 32) throw new ElfError('.BTF type chain too deep');
    const t = skipMods(id);
    switch (t.kind) {
      case Kind.INT: case Kind.STRUCT: case Kind.UNION: case Kind.ENUM: case Kind.ENUM64: case Kind.FLOAT: case Kind.DATASEC: return t.sizeOrType;
      case Kind.PTR: return 8;
      case Kind.ARRAY: return dv.getUint32(t.extra + 8, true) * sizeOf(dv.getUint32(t.extra, true), depth + 1);
      default: throw new ElfError(`.BTF type '${t.name}' (kind ${t.kind}) has no size`);
    }
  };
  /** `__uint(name, N)` is `int (*name)[N]`: a pointer to an array of N elements. */
  const uintOf = (member: string, id: number): number => {
    const p = skipMods(id);
    const a = p.kind === Kind.PTR ? skipMods(p.sizeOrType) : undefined;
    if (a?.kind !== Kind.ARRAY) throw new ElfError(`.maps member '${member}' is not an __uint() (pointer to array)`);
    return dv.getUint32(a.extra + 8, true);
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
    const variable = get(dv.getUint32(sec.extra + v * 12, true));
    if (variable.kind !== Kind.VAR) throw new ElfError(`.maps entry ${v} is not a variable`);
    const st = skipMods(variable.sizeOrType);
    if (st.kind !== Kind.STRUCT) throw new ElfError(`map '${variable.name}' is not a struct`);
    const def: MapDef = { type: 0, keySize: 0, valueSize: 0, maxEntries: 0, flags: 0 };
    for (let m = 0; m < st.vlen; m++) {
      const mo = st.extra + m * 12;
      const name = str(dv.getUint32(mo, true));
      const tid = dv.getUint32(mo + 4, true);
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
