// ELF vmlinux loader: copies PT_LOAD segments to their physical addresses and returns the
// entry point. An x86-64 vmlinux's e_entry is physical (its linker script says
// ENTRY(phys_startup_64)), so it is entered in long mode like a bzImage, rsi = zero page.
// A PVH note (XEN_ELFNOTE_PHYS32_ENTRY) is reported but not used: the 64-bit entry needs no
// 32-bit trampoline and works for every kernel that has one.

import { KernelImageError } from './errors';

const ELF_MAGIC = 0x464c457f;
const ELFCLASS64 = 2;
const ELFDATA2LSB = 1;
const EM_X86_64 = 62;
const ET_EXEC = 2;
const PT_LOAD = 1;
const PT_NOTE = 4;
const XEN_ELFNOTE_PHYS32_ENTRY = 18;

/** Elf64_Ehdr / Elf64_Phdr offsets. */
const Ehdr = { ident: 0, type: 16, machine: 18, entry: 24, phoff: 32, phentsize: 54, phnum: 56, size: 64 } as const;
const Phdr = { type: 0, offset: 8, paddr: 24, filesz: 32, memsz: 40, size: 56 } as const;

export interface ElfSegment {
  paddr: number;
  data: Uint8Array;
  memsz: number;
}

export interface ElfKernel {
  entry: number;
  segments: ElfSegment[];
  /** The PVH 32-bit entry, when the image has one. */
  pvhEntry?: number;
  /** Highest physical address used by the segments. */
  end: number;
}

export function isElf(image: Uint8Array): boolean {
  return image.length >= 4 && new DataView(image.buffer, image.byteOffset).getUint32(0, true) === ELF_MAGIC;
}

export function parseElf(path: string, image: Uint8Array): ElfKernel {
  const dv = new DataView(image.buffer, image.byteOffset, image.byteLength);
  if (image.length < Ehdr.size || dv.getUint32(0, true) !== ELF_MAGIC) throw new KernelImageError(path, 'not an ELF file');
  if (image[4] !== ELFCLASS64 || image[5] !== ELFDATA2LSB) throw new KernelImageError(path, 'not a 64-bit little-endian ELF');
  if (dv.getUint16(Ehdr.machine, true) !== EM_X86_64) throw new KernelImageError(path, `ELF machine ${dv.getUint16(Ehdr.machine, true)} is not x86-64`);
  if (dv.getUint16(Ehdr.type, true) !== ET_EXEC) throw new KernelImageError(path, 'ELF is not an executable (ET_EXEC)');
  const phoff = Number(dv.getBigUint64(Ehdr.phoff, true));
  const phentsize = dv.getUint16(Ehdr.phentsize, true);
  const phnum = dv.getUint16(Ehdr.phnum, true);
  if (phentsize < Phdr.size || phnum === 0 || phoff + phnum * phentsize > image.length) {
    throw new KernelImageError(path, 'truncated or invalid ELF program headers');
  }
  const segments: ElfSegment[] = [];
  let pvhEntry: number | undefined;
  let end = 0;
  for (let i = 0; i < phnum; i++) {
    const o = phoff + i * phentsize;
    const type = dv.getUint32(o + Phdr.type, true);
    const offset = Number(dv.getBigUint64(o + Phdr.offset, true));
    const filesz = Number(dv.getBigUint64(o + Phdr.filesz, true));
    if (type !== PT_LOAD && type !== PT_NOTE) continue;
    if (offset + filesz > image.length) throw new KernelImageError(path, `truncated: segment ${i} ends past the file`);
    if (type === PT_NOTE) {
      pvhEntry ??= findPvhEntry(image.subarray(offset, offset + filesz));
      continue;
    }
    const paddr = Number(dv.getBigUint64(o + Phdr.paddr, true));
    const memsz = Number(dv.getBigUint64(o + Phdr.memsz, true));
    if (memsz < filesz || !Number.isSafeInteger(paddr + memsz)) throw new KernelImageError(path, `segment ${i} has bad sizes`);
    segments.push({ paddr, data: image.subarray(offset, offset + filesz), memsz });
    end = Math.max(end, paddr + memsz);
  }
  if (segments.length === 0) throw new KernelImageError(path, 'ELF has no loadable segments');
  const entry = Number(dv.getBigUint64(Ehdr.entry, true));
  if (!segments.some((s) => entry >= s.paddr && entry < s.paddr + s.memsz)) {
    throw new KernelImageError(path, `entry point 0x${entry.toString(16)} is not a physical address inside a segment (not a vmlinux?)`);
  }
  return pvhEntry === undefined ? { entry, segments, end } : { entry, segments, end, pvhEntry };
}

/** Walks Elf64_Nhdr records (namesz, descsz, type, name, desc; 4-byte aligned). */
function findPvhEntry(notes: Uint8Array): number | undefined {
  const dv = new DataView(notes.buffer, notes.byteOffset, notes.byteLength);
  const align4 = (n: number) => (n + 3) & ~3;
  for (let o = 0; o + 12 <= notes.length; ) {
    const namesz = dv.getUint32(o, true);
    const descsz = dv.getUint32(o + 4, true);
    const type = dv.getUint32(o + 8, true);
    const desc = o + 12 + align4(namesz);
    if (desc + descsz > notes.length) return undefined;
    const name = new TextDecoder().decode(notes.subarray(o + 12, o + 12 + Math.max(0, namesz - 1)));
    if (name === 'Xen' && type === XEN_ELFNOTE_PHYS32_ENTRY && descsz >= 4) return dv.getUint32(desc, true);
    o = desc + align4(descsz);
  }
  return undefined;
}
