// The program package: what the host sends to the guest agent (docs/bpf.md is the
// normative byte layout; this file is its only TS implementation). Owns the package model,
// its validation, the canonical binary serialisation + SHA-256 digest, and the JSON form.
// Knows nothing about how packages travel (hypercall device) or about the VM.

import { createHash } from 'node:crypto';
import { INSN_SIZE, LD_IMM64_CODE, Pseudo } from './insn';
import type { ElfObject } from './elf';
import { TsvmmError } from '../lib/errors';

export const PACKAGE_MAGIC = 'TSVMMBPF';
export const PACKAGE_VERSION = 1;
export const HEADER_SIZE = 128;
export const MAP_RECORD_SIZE = 64;
export const PROG_HEADER_SIZE = 64;
export const DIGEST_SIZE = 32;
export const RELOC_SIZE = 8;
export const NO_HINT_MAP = 0xffff_ffff;

export const LIMITS = {
  maps: 64, programs: 64, insns: 1_000_000, relocs: 65535, attachLen: 511,
  packageName: 47, license: 47, objName: 31,
} as const;

/** `enum bpf_map_type` values a package may use (the ones Linux 6.1 creates without BTF). */
export const MapType = {
  hash: 1, array: 2, prog_array: 3, perf_event_array: 4, percpu_hash: 5, percpu_array: 6,
  stack_trace: 7, cgroup_array: 8, lru_hash: 9, lru_percpu_hash: 10, lpm_trie: 11,
  array_of_maps: 12, hash_of_maps: 13, queue: 22, stack: 23, ringbuf: 27,
} as const;
export type MapTypeName = keyof typeof MapType;

/** `enum bpf_prog_type`. */
export const ProgType = { kprobe: 2, tracepoint: 5, raw_tracepoint: 17, tracing: 26 } as const;

/** Where a program attaches; the value is the package's `attach_kind`. */
export const AttachKind = { kprobe: 1, kretprobe: 2, tracepoint: 3, raw_tracepoint: 4, fentry: 5, fexit: 6 } as const;
export type AttachKindName = keyof typeof AttachKind;
export const PROG_TYPE_OF: Readonly<Record<AttachKindName, number>> = {
  kprobe: ProgType.kprobe, kretprobe: ProgType.kprobe, tracepoint: ProgType.tracepoint,
  raw_tracepoint: ProgType.raw_tracepoint, fentry: ProgType.tracing, fexit: ProgType.tracing,
};

export const RelocKind = { map_fd: Pseudo.MAP_FD, map_value: Pseudo.MAP_VALUE } as const;
export type RelocKindName = keyof typeof RelocKind;

export interface MapSpec {
  name: string;
  type: number;
  keySize: number;
  valueSize: number;
  maxEntries: number;
  flags: number;
}

/** tracepoint: `category/name`; raw_tracepoint: tracepoint name; the others: kernel function. */
export interface AttachPoint { kind: AttachKindName; target: string }

export interface Relocation {
  /** Slot of the LD_IMM64's first half. */
  insn: number;
  map: number;
  kind: RelocKindName;
}

export interface ProgramSpec {
  name: string;
  attach: AttachPoint;
  /** Kernel `struct bpf_insn` bytes; relocated slots carry src = kind and imm = 0. */
  insns: Uint8Array;
  relocations: Relocation[];
}

export interface Package {
  name: string;
  license: string;
  maps: MapSpec[];
  programs: ProgramSpec[];
  /** Index of the ringbuf map that carries hint records, or null. */
  hintMap: number | null;
}

export class PackageError extends TsvmmError {}

const NAME_RE = /^[A-Za-z0-9_.]+$/;
const PKG_NAME_RE = /^[A-Za-z0-9_.-]+$/;
const LICENSE_RE = /^[\x20-\x7e]+$/;
const u32ok = (v: number): boolean => Number.isInteger(v) && v >= 0 && v <= 0xffff_ffff;
const pad8 = (n: number): number => (n + 7) & ~7;

/** Check everything the binary form relies on; throws PackageError naming the field. */
export function validatePackage(p: Package): void {
  const fail = (msg: string): never => { throw new PackageError(`package '${p.name}': ${msg}`); };
  if (!PKG_NAME_RE.test(p.name) || p.name.length > LIMITS.packageName) fail(`name must be 1..${LIMITS.packageName} chars of [A-Za-z0-9_.-]`);
  if (!LICENSE_RE.test(p.license) || p.license.length > LIMITS.license) fail(`license must be 1..${LIMITS.license} printable ASCII chars`);
  if (p.maps.length > LIMITS.maps) fail(`${p.maps.length} maps, at most ${LIMITS.maps}`);
  if (p.programs.length < 1 || p.programs.length > LIMITS.programs) fail(`${p.programs.length} programs, need 1..${LIMITS.programs}`);
  const mapNames = new Set<string>();
  p.maps.forEach((m, i) => {
    const where = `map ${i} '${m.name}'`;
    if (!NAME_RE.test(m.name) || m.name.length > LIMITS.objName) fail(`${where}: name must be 1..${LIMITS.objName} chars of [A-Za-z0-9_.]`);
    if (mapNames.has(m.name)) fail(`${where}: duplicate map name`);
    mapNames.add(m.name);
    for (const f of ['type', 'keySize', 'valueSize', 'maxEntries', 'flags'] as const) {
      if (!u32ok(m[f])) fail(`${where}: ${f} ${m[f]} is not a u32`);
    }
    if (m.maxEntries === 0) fail(`${where}: max_entries is 0`);
    if (m.type === MapType.ringbuf) {
      if (m.keySize !== 0 || m.valueSize !== 0) fail(`${where}: a ringbuf has no key or value size`);
      if (m.maxEntries % 4096 !== 0 || (m.maxEntries & (m.maxEntries - 1)) !== 0) fail(`${where}: ringbuf size ${m.maxEntries} must be a power of two and a multiple of 4096`);
    }
  });
  if (p.hintMap !== null) {
    const hm = p.maps[p.hintMap];
    if (hm === undefined) fail(`hint map ${p.hintMap} does not exist`);
    else if (hm.type !== MapType.ringbuf) fail(`hint map '${hm.name}' is not a ringbuf (type ${hm.type})`);
  }
  const progNames = new Set<string>();
  p.programs.forEach((g, i) => {
    const where = `program ${i} '${g.name}'`;
    if (!NAME_RE.test(g.name) || g.name.length > LIMITS.objName) fail(`${where}: name must be 1..${LIMITS.objName} chars of [A-Za-z0-9_.]`);
    if (progNames.has(g.name)) fail(`${where}: duplicate program name`);
    progNames.add(g.name);
    if (!(g.attach.kind in AttachKind)) fail(`${where}: unknown attach kind '${String(g.attach.kind)}'`);
    const t = g.attach.target;
    const tLen = Buffer.byteLength(t, 'latin1');
    if (tLen < 1 || tLen > LIMITS.attachLen || !/^[\x21-\x7e]+$/.test(t)) fail(`${where}: attach point must be 1..${LIMITS.attachLen} printable non-space ASCII chars`);
    if (g.attach.kind === 'tracepoint' && !/^[\w.-]+\/[\w.-]+$/.test(t)) fail(`${where}: tracepoint '${t}' must be 'category/name'`);
    if (g.attach.kind !== 'tracepoint' && !/^[\w.]+$/.test(t)) fail(`${where}: ${g.attach.kind} target '${t}' must be a symbol name`);
    validateInsns(g, fail, where, p.maps.length);
  });
}

function validateInsns(g: ProgramSpec, fail: (m: string) => never, where: string, mapCount: number): void {
  const n = g.insns.length / INSN_SIZE;
  if (!Number.isInteger(n) || n < 1 || n > LIMITS.insns) fail(`${where}: ${g.insns.length} instruction bytes, need a multiple of 8, 1..${LIMITS.insns} slots`);
  if (g.relocations.length > LIMITS.relocs) fail(`${where}: ${g.relocations.length} relocations, at most ${LIMITS.relocs}`);
  const dv = new DataView(g.insns.buffer, g.insns.byteOffset, g.insns.byteLength);
  const relocAt = new Map<number, Relocation>();
  for (const r of g.relocations) {
    if (relocAt.has(r.insn)) fail(`${where}: two relocations at slot ${r.insn}`);
    relocAt.set(r.insn, r);
  }
  for (let s = 0; s < n; s++) {
    if (dv.getUint8(s * 8) !== LD_IMM64_CODE) continue;
    if (s + 1 >= n) fail(`${where}: LD_IMM64 at slot ${s} is cut off by the end of the program`);
    const src = dv.getUint8(s * 8 + 1) >> 4;
    const r = relocAt.get(s);
    if ((src === Pseudo.MAP_FD || src === Pseudo.MAP_VALUE) && r === undefined) fail(`${where}: LD_IMM64 at slot ${s} refers to a map (src ${src}) without a relocation`);
    if (src === Pseudo.MAP_IDX || src === Pseudo.MAP_IDX_VALUE) fail(`${where}: LD_IMM64 at slot ${s}: map-index pseudo src ${src} is not supported, use a relocation`);
    relocAt.delete(s);
    if (r !== undefined) {
      if (!(r.kind in RelocKind) || src !== RelocKind[r.kind]) fail(`${where}: relocation at slot ${s}: src ${src} does not match kind ${r.kind}`);
      if (!Number.isInteger(r.map) || r.map < 0 || r.map >= mapCount) fail(`${where}: relocation at slot ${s} names map ${r.map}, package has ${mapCount}`);
      if (dv.getInt32(s * 8 + 4, true) !== 0) fail(`${where}: relocated slot ${s} must have imm 0`);
    }
    s++; // the second half of LD_IMM64 is data, not an instruction
  }
  for (const s of relocAt.keys()) fail(`${where}: relocation at slot ${s} is not on the first slot of an LD_IMM64`);
}

function programRecordSize(g: ProgramSpec): number {
  return PROG_HEADER_SIZE + pad8(g.attach.target.length + 1) + g.insns.length + g.relocations.length * RELOC_SIZE;
}

function putString(out: Uint8Array, off: number, field: number, s: string): void {
  // Validation restricted every string to ASCII; the rest of the field stays 0.
  out.set(Buffer.from(s, 'latin1'), off);
  if (s.length >= field) throw new PackageError(`string '${s}' does not fit its ${field}-byte field`);
}

/** Canonical binary form (docs/bpf.md). Validates first. */
export function serializePackage(p: Package): Uint8Array {
  validatePackage(p);
  const body = HEADER_SIZE + p.maps.length * MAP_RECORD_SIZE + p.programs.reduce((a, g) => a + programRecordSize(g), 0);
  const total = body + DIGEST_SIZE;
  const out = new Uint8Array(total);
  const dv = new DataView(out.buffer);
  out.set(Buffer.from(PACKAGE_MAGIC, 'latin1'), 0);
  dv.setUint16(8, PACKAGE_VERSION, true);
  dv.setUint16(10, HEADER_SIZE, true);
  dv.setUint32(12, total, true);
  dv.setUint16(16, p.maps.length, true);
  dv.setUint16(18, p.programs.length, true);
  dv.setUint32(20, p.hintMap ?? NO_HINT_MAP, true);
  putString(out, 32, 48, p.name);
  putString(out, 80, 48, p.license);
  let o = HEADER_SIZE;
  for (const m of p.maps) {
    putString(out, o, 32, m.name);
    dv.setUint32(o + 32, m.type, true);
    dv.setUint32(o + 36, m.keySize, true);
    dv.setUint32(o + 40, m.valueSize, true);
    dv.setUint32(o + 44, m.maxEntries, true);
    dv.setUint32(o + 48, m.flags, true);
    o += MAP_RECORD_SIZE;
  }
  for (const g of p.programs) {
    const size = programRecordSize(g);
    putString(out, o, 32, g.name);
    dv.setUint32(o + 32, PROG_TYPE_OF[g.attach.kind], true);
    dv.setUint32(o + 36, AttachKind[g.attach.kind], true);
    dv.setUint32(o + 40, g.attach.target.length, true);
    dv.setUint32(o + 44, g.insns.length / INSN_SIZE, true);
    dv.setUint32(o + 48, g.relocations.length, true);
    dv.setUint32(o + 52, size, true);
    out.set(Buffer.from(g.attach.target, 'latin1'), o + PROG_HEADER_SIZE);
    let q = o + PROG_HEADER_SIZE + pad8(g.attach.target.length + 1);
    out.set(g.insns, q);
    q += g.insns.length;
    for (const r of [...g.relocations].sort((a, b) => a.insn - b.insn)) {
      dv.setUint32(q, r.insn, true);
      dv.setUint16(q + 4, r.map, true);
      dv.setUint16(q + 6, RelocKind[r.kind], true);
      q += RELOC_SIZE;
    }
    o += size;
  }
  out.set(createHash('sha256').update(out.subarray(0, body)).digest(), body);
  return out;
}

export interface ParsedPackage { pkg: Package; digest: string }

/** Parse and fully validate the binary form. Throws PackageError saying what and where. */
export function parsePackage(bytes: Uint8Array): ParsedPackage {
  const fail = (off: number, msg: string): never => { throw new PackageError(`package byte ${off}: ${msg}`); };
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const need = (off: number, n: number, what: string): void => {
    if (off + n > bytes.length) fail(off, `truncated: ${what} needs ${n} bytes, ${Math.max(0, bytes.length - off)} left`);
  };
  const zero = (off: number, n: number, what: string): void => {
    for (let i = 0; i < n; i++) if (bytes[off + i] !== 0) fail(off + i, `${what} must be zero`);
  };
  const str = (off: number, field: number, what: string): string => {
    const end = bytes.subarray(off, off + field).indexOf(0);
    if (end < 0) fail(off, `${what} is not NUL-terminated within ${field} bytes`);
    if (end === 0) fail(off, `${what} is empty`);
    zero(off + end, field - end, `padding after ${what}`);
    return Buffer.from(bytes.subarray(off, off + end)).toString('latin1');
  };

  need(0, HEADER_SIZE, 'header');
  if (Buffer.from(bytes.subarray(0, 8)).toString('latin1') !== PACKAGE_MAGIC) fail(0, `bad magic, not a tsvmm program package`);
  const version = dv.getUint16(8, true);
  if (version !== PACKAGE_VERSION) fail(8, `format version ${version}, this parser reads ${PACKAGE_VERSION}`);
  if (dv.getUint16(10, true) !== HEADER_SIZE) fail(10, `header size ${dv.getUint16(10, true)}, expected ${HEADER_SIZE}`);
  const total = dv.getUint32(12, true);
  if (total !== bytes.length) fail(12, `total_size says ${total} bytes, got ${bytes.length}${total > bytes.length ? ' (truncated)' : ''}`);
  const mapCount = dv.getUint16(16, true);
  const progCount = dv.getUint16(18, true);
  if (mapCount > LIMITS.maps) fail(16, `${mapCount} maps, at most ${LIMITS.maps}`);
  if (progCount < 1 || progCount > LIMITS.programs) fail(18, `${progCount} programs, need 1..${LIMITS.programs}`);
  const hint = dv.getUint32(20, true);
  zero(24, 8, 'reserved header field');
  const name = str(32, 48, 'package name');
  const license = str(80, 48, 'license');
  const body = total - DIGEST_SIZE;
  if (body < HEADER_SIZE) fail(12, 'no room for the digest');

  const maps: MapSpec[] = [];
  let o = HEADER_SIZE;
  for (let i = 0; i < mapCount; i++) {
    if (o + MAP_RECORD_SIZE > body) fail(o, `truncated: map record ${i} runs into the digest`);
    maps.push({
      name: str(o, 32, `map ${i} name`),
      type: dv.getUint32(o + 32, true), keySize: dv.getUint32(o + 36, true), valueSize: dv.getUint32(o + 40, true),
      maxEntries: dv.getUint32(o + 44, true), flags: dv.getUint32(o + 48, true),
    });
    zero(o + 52, 12, `map ${i} reserved field`);
    o += MAP_RECORD_SIZE;
  }
  const kindByValue = new Map<number, AttachKindName>(Object.entries(AttachKind).map(([k, v]) => [v, k as AttachKindName]));
  const relocByValue = new Map<number, RelocKindName>(Object.entries(RelocKind).map(([k, v]) => [v as number, k as RelocKindName]));
  const programs: ProgramSpec[] = [];
  for (let i = 0; i < progCount; i++) {
    const start = o;
    if (o + PROG_HEADER_SIZE > body) fail(o, `truncated: program record ${i} header runs into the digest`);
    const pname = str(o, 32, `program ${i} name`);
    const progType = dv.getUint32(o + 32, true);
    const kindV = dv.getUint32(o + 36, true);
    const attachLen = dv.getUint32(o + 40, true);
    const insnCount = dv.getUint32(o + 44, true);
    const relocCount = dv.getUint32(o + 48, true);
    const recordSize = dv.getUint32(o + 52, true);
    zero(o + 56, 8, `program ${i} reserved field`);
    const kind = kindByValue.get(kindV) ?? fail(o + 36, `program ${i}: unknown attach_kind ${kindV}`);
    if (PROG_TYPE_OF[kind] !== progType) fail(o + 32, `program ${i}: prog_type ${progType} does not match attach kind ${kind} (needs ${PROG_TYPE_OF[kind]})`);
    if (attachLen < 1 || attachLen > LIMITS.attachLen) fail(o + 40, `program ${i}: attach_len ${attachLen} out of 1..${LIMITS.attachLen}`);
    if (insnCount < 1 || insnCount > LIMITS.insns) fail(o + 44, `program ${i}: insn_count ${insnCount} out of 1..${LIMITS.insns}`);
    if (relocCount > LIMITS.relocs) fail(o + 48, `program ${i}: reloc_count ${relocCount} above ${LIMITS.relocs}`);
    const attachField = pad8(attachLen + 1);
    const expect = PROG_HEADER_SIZE + attachField + insnCount * INSN_SIZE + relocCount * RELOC_SIZE;
    if (recordSize !== expect) fail(o + 52, `program ${i}: record_size ${recordSize} but its counts make ${expect}`);
    if (o + recordSize > body) fail(o, `truncated: program record ${i} (${recordSize} bytes) runs into the digest`);
    o += PROG_HEADER_SIZE;
    const target = Buffer.from(bytes.subarray(o, o + attachLen)).toString('latin1');
    if (target.includes('\0')) fail(o, `program ${i}: attach point contains NUL`);
    zero(o + attachLen, attachField - attachLen, `program ${i} attach padding`);
    o += attachField;
    const insns = bytes.slice(o, o + insnCount * INSN_SIZE);
    o += insnCount * INSN_SIZE;
    const relocations: Relocation[] = [];
    for (let r = 0; r < relocCount; r++, o += RELOC_SIZE) {
      const k = dv.getUint16(o + 6, true);
      relocations.push({ insn: dv.getUint32(o, true), map: dv.getUint16(o + 4, true), kind: relocByValue.get(k) ?? fail(o + 6, `program ${i} relocation ${r}: unknown kind ${k}`) });
    }
    programs.push({ name: pname, attach: { kind, target }, insns, relocations });
    if (o !== start + recordSize) fail(start, `program ${i}: internal size mismatch`);
  }
  if (o !== body) fail(o, `${body - o} unexpected bytes between the last program and the digest`);
  const digest = createHash('sha256').update(bytes.subarray(0, body)).digest();
  if (!digest.equals(bytes.subarray(body))) fail(body, 'digest mismatch: the package is corrupted');
  const pkg: Package = { name, license, maps, programs, hintMap: hint === NO_HINT_MAP ? null : hint };
  try { validatePackage(pkg); } catch (e) { throw new PackageError(`package: ${(e as Error).message}`); }
  // Canonical form: relocations are stored sorted, so parse → serialise is the identity.
  for (const g of programs) {
    for (let r = 1; r < g.relocations.length; r++) {
      if (g.relocations[r]!.insn <= g.relocations[r - 1]!.insn) throw new PackageError(`package: program '${g.name}': relocations not sorted by slot`);
    }
  }
  return { pkg, digest: digest.toString('hex') };
}

/** Lowercase hex SHA-256 of the canonical serialisation: the package's identity. */
export function packageDigest(p: Package): string {
  const b = serializePackage(p);
  return Buffer.from(b.subarray(b.length - DIGEST_SIZE)).toString('hex');
}

// --- JSON form (CLI, logs) ---------------------------------------------------------------

export interface PackageJson {
  format: number;
  name: string;
  license: string;
  hintMap: string | null;
  maps: MapSpec[];
  programs: Array<{
    name: string;
    attach: AttachPoint;
    /** One 16-hex-digit string per 8-byte slot, bytes in memory order. */
    insns: string[];
    relocations: Array<{ insn: number; map: string; kind: RelocKindName }>;
  }>;
  digest: string;
}

export function packageToJson(p: Package): PackageJson {
  const digest = packageDigest(p);
  return {
    format: PACKAGE_VERSION, name: p.name, license: p.license,
    hintMap: p.hintMap === null ? null : p.maps[p.hintMap]!.name,
    maps: p.maps.map((m) => ({ ...m })),
    programs: p.programs.map((g) => ({
      name: g.name, attach: { ...g.attach },
      insns: Array.from({ length: g.insns.length / INSN_SIZE }, (_, s) => Buffer.from(g.insns.subarray(s * 8, s * 8 + 8)).toString('hex')),
      relocations: g.relocations.map((r) => ({ insn: r.insn, map: p.maps[r.map]!.name, kind: r.kind })),
    })),
    digest,
  };
}

/** Inverse of packageToJson; validates, and checks `digest` when present. */
export function packageFromJson(j: PackageJson): Package {
  if (j.format !== PACKAGE_VERSION) throw new PackageError(`JSON package format ${j.format}, expected ${PACKAGE_VERSION}`);
  const mapIndex = (n: string): number => {
    const i = j.maps.findIndex((m) => m.name === n);
    if (i < 0) throw new PackageError(`JSON package: unknown map '${n}'`);
    return i;
  };
  const p: Package = {
    name: j.name, license: j.license, hintMap: j.hintMap === null ? null : mapIndex(j.hintMap),
    maps: j.maps.map((m) => ({ name: m.name, type: m.type, keySize: m.keySize, valueSize: m.valueSize, maxEntries: m.maxEntries, flags: m.flags })),
    programs: j.programs.map((g) => {
      const hex = g.insns.join('');
      if (!g.insns.every((s) => /^[0-9a-f]{16}$/i.test(s))) throw new PackageError(`JSON package: program '${g.name}': each instruction must be 16 hex digits`);
      return {
        name: g.name, attach: { kind: g.attach.kind, target: g.attach.target },
        insns: new Uint8Array(Buffer.from(hex, 'hex')),
        relocations: g.relocations.map((r) => ({ insn: r.insn, map: mapIndex(r.map), kind: r.kind })),
      };
    }),
  };
  const digest = packageDigest(p);
  if (j.digest && j.digest !== digest) throw new PackageError(`JSON package: digest ${j.digest} does not match the content (${digest})`);
  return p;
}

// --- builders ------------------------------------------------------------------------------

/** A program from assembler output: map references by name become relocations by index. */
export function programFromAsm(
  name: string, attach: AttachPoint,
  asm: { bytes: Uint8Array; relocations: ReadonlyArray<{ slot: number; map: string; kind: number }> },
  maps: readonly MapSpec[],
): ProgramSpec {
  const relocations = asm.relocations.map((r): Relocation => {
    const map = maps.findIndex((m) => m.name === r.map);
    if (map < 0) throw new PackageError(`program '${name}': slot ${r.slot} refers to unknown map '${r.map}'`);
    const kind = r.kind === Pseudo.MAP_FD ? 'map_fd' : r.kind === Pseudo.MAP_VALUE ? 'map_value' : undefined;
    if (kind === undefined) throw new PackageError(`program '${name}': slot ${r.slot}: unsupported relocation kind ${r.kind}`);
    return { insn: r.slot, map, kind };
  });
  return { name, attach, insns: asm.bytes, relocations };
}

/** Build a package from a loaded ELF object: every program with a supported section, all its maps. */
export function packageFromElf(obj: ElfObject, opts: { name: string; hintMap?: string; license?: string }): Package {
  const license = opts.license ?? obj.license;
  if (!license) throw new PackageError(`ELF object for '${opts.name}' has no license section (SEC("license"))`);
  const maps: MapSpec[] = obj.maps.map((m) => ({ name: m.name, type: m.type, keySize: m.keySize, valueSize: m.valueSize, maxEntries: m.maxEntries, flags: m.flags }));
  const programs = obj.programs.map((g): ProgramSpec => {
    if (g.attach === null) throw new PackageError(`program '${g.name}' in section '${g.section}': unsupported section prefix (kprobe/, kretprobe/, tracepoint/, raw_tracepoint/, fentry/, fexit/)`);
    return programFromAsm(g.name, g.attach, { bytes: g.insns, relocations: g.mapRefs.map((r) => ({ slot: r.slot, map: r.map, kind: Pseudo.MAP_FD })) }, maps);
  });
  let hintMap: number | null = null;
  if (opts.hintMap !== undefined) {
    hintMap = maps.findIndex((m) => m.name === opts.hintMap);
    if (hintMap < 0) throw new PackageError(`hint map '${opts.hintMap}' is not in the object (maps: ${maps.map((m) => m.name).join(', ') || 'none'})`);
  }
  const p: Package = { name: opts.name, license, maps, programs, hintMap };
  validatePackage(p);
  return p;
}
