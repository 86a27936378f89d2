// Puts a kernel, its initrd and command line into guest memory and writes the boot structures
// (GDT, page tables, zero page) around them. Picks the format from the image itself: bzImage
// or ELF vmlinux; anything else is refused before any vCPU exists. A bzImage given with its
// unpacked vmlinux (vmm/boot/unpack.ts) is booted through the vmlinux's 64-bit entry, with the
// bzImage's own setup header in the zero page, as its decompressor would have left it.

import type { GuestMemory } from '../../devices/memory';
import { CMDLINE_ADDR, CMDLINE_MAX, GDT_ADDR, KERNEL_ADDR, MMIO_HOLE_START, ZERO_PAGE_ADDR } from '../layout';
import type { RamRange } from '../memory';
import { isBzImage, parseBzImage } from './bzimage';
import { isElf, parseElf } from './elf';
import { KernelImageError } from './errors';
import { bootGdt } from './gdt';
import { identityPageTables } from './page-tables';
import { buildZeroPage, e820Map } from './zero-page';

const PAGE = 0x1000;
/** What an old header without cmdline_size allows. */
const DEFAULT_CMDLINE_SIZE = 255;
/** Headers before 2.03 have no initrd_addr_max; the protocol says 0x37ffffff then. */
const DEFAULT_INITRD_ADDR_MAX = 0x37ffffff;

export interface BootImage {
  kernelPath: string;
  kernel: Uint8Array;
  initrdPath?: string;
  initrd?: Uint8Array;
  cmdline: string;
  /** For a bzImage: its payload unpacked (an ELF vmlinux), to be booted instead of the decompressor. */
  vmlinux?: Uint8Array;
  /**
   * Guest RAM is still all zeros (freshly mapped): an ELF's pages of zeros and its bss are not
   * written, which spares touching (allocating) them — almost half of Debian's vmlinux is zeros
   * (.bss, .brk and .init.scratch are stored in the file).
   */
  ramZeroed?: boolean;
  /**
   * With `ramZeroed`: per segment of `vmlinux`, its non-zero page runs as nonZeroRuns finds
   * them, recorded by an earlier boot (LoadedKernel.runs): only those pages are read, instead of
   * all ~57 MiB of Debian's segments scanned for zeros first (about half of the load's time).
   * Runs that do not fit the segments are not used (the segments are scanned).
   */
  vmlinuxRuns?: PageRuns;
}

/** Per ELF segment, [from, to) byte ranges of its file bytes. */
export type PageRuns = readonly (readonly (readonly [number, number])[])[];

export interface LoadedKernel {
  /** `unpacked`: a bzImage's vmlinux, entered at its 64-bit entry. */
  format: 'bzImage' | 'elf' | 'unpacked';
  entry: number;
  /** First byte after what the kernel needs (decompression included). */
  kernelEnd: number;
  initrd?: { addr: number; size: number };
  /** The vmlinux's non-zero page runs when this load scanned for them (for BootImage.vmlinuxRuns next time). */
  runs?: PageRuns;
}

/** Validates the image without touching memory: used to fail before creating the VM. */
export function probeKernel(path: string, image: Uint8Array): 'bzImage' | 'elf' {
  if (image.length === 0) throw new KernelImageError(path, 'file is empty');
  if (isBzImage(image)) {
    parseBzImage(path, image);
    return 'bzImage';
  }
  if (isElf(image)) {
    parseElf(path, image);
    return 'elf';
  }
  throw new KernelImageError(path, 'not a Linux kernel (neither a bzImage nor an ELF vmlinux)');
}

export function loadKernel(mem: GuestMemory, ram: readonly RamRange[], img: BootImage, rsdpAddr?: number): LoadedKernel {
  const lowEnd = ram[0]!.size;
  let header: Uint8Array | undefined;
  let entry: number;
  let kernelEnd: number;
  let initrdAddrMax = DEFAULT_INITRD_ADDR_MAX;
  let cmdlineSize = DEFAULT_CMDLINE_SIZE;

  const fits = (addr: number, len: number, what: string) => {
    if (addr + len > lowEnd) {
      throw new KernelImageError(img.kernelPath, `${what} needs guest memory up to ${mib(addr + len)}, but RAM below the MMIO hole ends at ${mib(lowEnd)}; use more --memory`);
    }
  };

  let scanned: [number, number][][] | undefined;
  /** `vmlinux`: a bzImage's, whose runs may be given (BootImage.vmlinuxRuns) or are reported. */
  const loadElf = (image: Uint8Array, vmlinux: boolean): { entry: number; end: number } => {
    const elf = parseElf(img.kernelPath, image);
    const segments = elf.segments;
    const known = vmlinux ? img.vmlinuxRuns : undefined;
    const runs = known && runsFit(known, segments.map((s) => s.data.length)) ? known : undefined;
    if (vmlinux && img.ramZeroed && !runs) scanned = [];
    for (const [i, s] of segments.entries()) {
      if (s.paddr < KERNEL_ADDR) throw new KernelImageError(img.kernelPath, `segment at 0x${s.paddr.toString(16)} is below 1 MiB`);
      fits(s.paddr, s.memsz, 'the kernel');
      if (img.ramZeroed) {
        const nonZero = runs?.[i] ?? nonZeroRuns(s.data);
        scanned?.push(nonZero as [number, number][]);
        for (const [from, to] of nonZero) mem.write(s.paddr + from, s.data.subarray(from, to));
      } else {
        mem.write(s.paddr, s.data);
        mem.expect(s.paddr + s.data.length, s.memsz - s.data.length).fill(0);
      }
    }
    return elf;
  };

  if (isBzImage(img.kernel)) {
    const bz = parseBzImage(img.kernelPath, img.kernel);
    if (img.vmlinux) {
      ({ entry, end: kernelEnd } = loadElf(img.vmlinux, true));
    } else {
      fits(KERNEL_ADDR, Math.max(bz.kernel.length, bz.initSize), 'the kernel');
      mem.write(KERNEL_ADDR, bz.kernel);
      entry = KERNEL_ADDR + 0x200;
      kernelEnd = KERNEL_ADDR + Math.max(bz.kernel.length, bz.initSize);
    }
    header = bz.header;
    if (bz.initrdAddrMax) initrdAddrMax = bz.initrdAddrMax;
    if (bz.cmdlineSize) cmdlineSize = bz.cmdlineSize;
  } else if (isElf(img.kernel)) {
    ({ entry, end: kernelEnd } = loadElf(img.kernel, false));
    cmdlineSize = 2048;
  } else {
    throw new KernelImageError(img.kernelPath, 'not a Linux kernel (neither a bzImage nor an ELF vmlinux)');
  }

  const cmdline = new TextEncoder().encode(img.cmdline);
  if (cmdline.length > Math.min(cmdlineSize, CMDLINE_MAX - 1)) {
    throw new KernelImageError(img.kernelPath, `command line is ${cmdline.length} bytes; this kernel accepts at most ${cmdlineSize}`);
  }
  mem.expect(CMDLINE_ADDR, cmdline.length + 1).set([...cmdline, 0]);

  let initrd: { addr: number; size: number } | undefined;
  if (img.initrd) {
    const top = Math.min(lowEnd, initrdAddrMax + 1, MMIO_HOLE_START);
    const addr = Math.floor((top - img.initrd.length) / PAGE) * PAGE;
    if (addr < kernelEnd) {
      throw new KernelImageError(img.initrdPath ?? 'initrd', `does not fit in guest memory above the kernel (${mib(img.initrd.length)} initrd, ${mib(lowEnd)} low RAM); use more --memory`);
    }
    mem.write(addr, img.initrd);
    initrd = { addr, size: img.initrd.length };
  }

  mem.write(GDT_ADDR, bootGdt().bytes);
  for (const t of identityPageTables()) mem.write(t.addr, t.bytes);
  mem.write(ZERO_PAGE_ADDR, buildZeroPage({
    header, cmdlineAddr: CMDLINE_ADDR, cmdlineSize: cmdline.length, initrd, rsdpAddr, e820: e820Map(ram),
  }));
  return { format: !header ? 'elf' : img.vmlinux ? 'unpacked' : 'bzImage', entry, kernelEnd, initrd, ...(scanned ? { runs: scanned } : {}) };
}

/** Whether `runs` describes segments of these lengths: one list each, ordered ranges inside the segment. */
function runsFit(runs: PageRuns, lengths: readonly number[]): boolean {
  if (!Array.isArray(runs) || runs.length !== lengths.length) return false;
  return runs.every((list, i) => Array.isArray(list) && list.every((r, j) => Array.isArray(r) && r.length === 2 &&
    Number.isInteger(r[0]) && Number.isInteger(r[1]) && r[0] >= (j ? list[j - 1]![1] : 0) && r[1] > r[0] && r[1] <= lengths[i]!));
}

const ZERO_PAGE = new Uint8Array(PAGE);

/** Whether `b` (at most a page) is all zeros: Buffer's compare is a native memcmp. */
function isZero(b: Uint8Array): boolean {
  return Buffer.compare(b, ZERO_PAGE.subarray(0, b.length)) === 0;
}

/**
 * [from, to) ranges of `data` that hold a non-zero byte, in page-sized steps from its start
 * (the ranges cover whole pages but never extend past `data`).
 */
export function nonZeroRuns(data: Uint8Array): [number, number][] {
  const runs: [number, number][] = [];
  let start = -1;
  for (let p = 0; p < data.length; p += PAGE) {
    const zero = isZero(data.subarray(p, Math.min(p + PAGE, data.length)));
    if (!zero && start < 0) start = p;
    else if (zero && start >= 0) {
      runs.push([start, p]);
      start = -1;
    }
  }
  if (start >= 0) runs.push([start, data.length]);
  return runs;
}

const mib = (n: number) => `${(n / 0x100000).toFixed(1)} MiB`;
