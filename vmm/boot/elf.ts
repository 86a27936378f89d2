// ELF vmlinux loader: copies PT_LOAD segments to their physical addresses and returns the
// entry point. An x86-64 vmlinux's e_entry is physical (its linker script says
// ENTRY(phys_startup_64)), so it is entered in long mode like a bzImage, rsi = zero page.
// A PVH note (XEN_ELFNOTE_PHYS32_ENTRY) is reported but not used: the 64-bit entry needs no
// 32-bit trampoline and works for every kernel that has one.

import {
  EI_CLASS, EI_DATA, ELFCLASS64, ELFDATA2LSB, EM_X86_64, ET_EXEC, Elf64Ehdr, Elf64Nhdr, Elf64Phdr, PT_LOAD, PT_NOTE, hasElfMagic,
} from '../../lib/elf';
import { KernelImageError } from './errors';

const XEN_ELFNOTE_PHYS32_ENTRY = 18;

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
  return hasElfMagic(image);
}

export function parseElf(path: string, image: Uint8Array): ElfKernel {
  if (image.length < Elf64Ehdr.size || !hasElfMagic(image)) throw new KernelImageError(path, 'not an ELF file');
  if (image[EI_CLASS] !== ELFCLASS64 || image[EI_DATA] !== ELFDATA2LSB) throw new KernelImageError(path, 'not a 64-bit little-endian ELF');
  const eh = Elf64Ehdr.read(image);
  if (eh.machine !== EM_X86_64) throw new KernelImageError(path, `ELF machine ${eh.machine} is not x86-64`);
  if (eh.type !== ET_EXEC) throw new KernelImageError(path, 'ELF is not an executable (ET_EXEC)');
  const phoff = Number(eh.phoff);
  const { phentsize, phnum } = eh;
  if (phentsize < Elf64Phdr.size || phnum === 0 || phoff + phnum * phentsize > image.length) {
    throw new KernelImageError(path, 'truncated or invalid ELF program headers');
  }
  const segments: ElfSegment[] = [];
  let pvhEntry: number | undefined;
  let end = 0;
  for (let i = 0; i < phnum; i++) {
    const ph = Elf64Phdr.read(image, phoff + i * phentsize);
    const { type } = ph;
    const offset = Number(ph.offset);
    const filesz = Number(ph.filesz);
    if (type !== PT_LOAD && type !== PT_NOTE) continue;
    if (offset + filesz > image.length) throw new KernelImageError(path, `truncated: segment ${i} ends past the file`);
    if (type === PT_NOTE) {
      pvhEntry ??= findPvhEntry(image.subarray(offset, offset + filesz));
      continue;
    }
    const paddr = Number(ph.paddr);
    const memsz = Number(ph.memsz);
    if (memsz < filesz || !Number.isSafeInteger(paddr + memsz)) throw new KernelImageError(path, `segment ${i} has bad sizes`);
    segments.push({ paddr, data: image.subarray(offset, offset + filesz), memsz });
    end = Math.max(end, paddr + memsz);
  }
  if (segments.length === 0) throw new KernelImageError(path, 'ELF has no loadable segments');
  const entry = Number(eh.entry);
  if (!segments.some((s) => entry >= s.paddr && entry < s.paddr + s.memsz)) {
    throw new KernelImageError(path, `entry point 0x${entry.toString(16)} is not a physical address inside a segment (not a vmlinux?)`);
  }
  return pvhEntry === undefined ? { entry, segments, end } : { entry, segments, end, pvhEntry };
}

/** Walks Elf64_Nhdr records (header, name, desc; 4-byte aligned). */
function findPvhEntry(notes: Uint8Array): number | undefined {
  const dv = new DataView(notes.buffer, notes.byteOffset, notes.byteLength);
  const align4 = (n: number) => (n + 3) & ~3;
  const hdr = Elf64Nhdr.size;
  for (let o = 0; o + hdr <= notes.length; ) {
    const { namesz, descsz, type } = Elf64Nhdr.read(dv, o);
    const desc = o + hdr + align4(namesz);
    if (desc + descsz > notes.length) return undefined;
    const name = new TextDecoder().decode(notes.subarray(o + hdr, o + hdr + Math.max(0, namesz - 1)));
    if (name === 'Xen' && type === XEN_ELFNOTE_PHYS32_ENTRY && descsz >= 4) return dv.getUint32(desc, true);
    o = desc + align4(descsz);
  }
  return undefined;
}
