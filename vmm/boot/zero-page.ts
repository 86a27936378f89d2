// The zero page (struct boot_params) tsvmm hands the kernel in rsi: seeded from the image's own
// setup header (bzImage) or a minimal one (ELF), plus loader type, command line, initrd,
// the RSDP address and the e820 map. Owns the e820 layout of a tsvmm guest.

import { EBDA_START, FOUR_GIB, KERNEL_ADDR } from '../layout';
import type { RamRange } from '../memory';
import {
  BOOT_FLAG_MAGIC, BootParams, CAN_USE_HEAP, E820Entry, E820_MAX_ENTRIES_ZEROPAGE, E820_RAM, E820_RESERVED, HDRS_MAGIC,
  LOADED_HIGH, LOADER_TYPE_UNDEFINED, SetupHeader,
} from './setup-header';

export interface E820Range {
  addr: number;
  size: number;
  type: number;
}

/** RAM below 640 KiB, the EBDA/BIOS area reserved up to 1 MiB, RAM from 1 MiB, RAM above 4 GiB. */
export function e820Map(ram: readonly RamRange[]): E820Range[] {
  const map: E820Range[] = [];
  for (const r of ram) {
    if (r.gpa === 0) {
      map.push({ addr: 0, size: EBDA_START, type: E820_RAM });
      map.push({ addr: EBDA_START, size: KERNEL_ADDR - EBDA_START, type: E820_RESERVED });
      if (r.size > KERNEL_ADDR) map.push({ addr: KERNEL_ADDR, size: r.size - KERNEL_ADDR, type: E820_RAM });
    } else {
      if (r.gpa < FOUR_GIB) throw new RangeError('RAM ranges other than the first start at 4 GiB');
      map.push({ addr: r.gpa, size: r.size, type: E820_RAM });
    }
  }
  return map;
}

export interface ZeroPageOptions {
  /** The image's setup header bytes (from 0x1f1), or undefined for an ELF kernel. */
  header?: Uint8Array;
  cmdlineAddr: number;
  cmdlineSize: number;
  initrd?: { addr: number; size: number };
  rsdpAddr?: number;
  e820: readonly E820Range[];
}

export function buildZeroPage(o: ZeroPageOptions): Uint8Array {
  const zp = new Uint8Array(BootParams.size);
  const hdr = BootParams.offsets.hdr;
  if (o.header) zp.set(o.header, hdr);
  else SetupHeader.write(zp, { bootFlag: BOOT_FLAG_MAGIC, header: HDRS_MAGIC, kernelAlignment: 0x100_0000 }, hdr);
  if (o.e820.length > E820_MAX_ENTRIES_ZEROPAGE) throw new RangeError(`too many e820 entries (${o.e820.length})`);
  BootParams.write(zp, {
    hdr: {
      typeOfLoader: LOADER_TYPE_UNDEFINED,
      loadflags: SetupHeader.read(zp, hdr).loadflags | LOADED_HIGH | CAN_USE_HEAP,
      heapEndPtr: 0xfe00,
      cmdLinePtr: o.cmdlineAddr,
      cmdlineSize: o.cmdlineSize,
      ...(o.initrd ? { ramdiskImage: o.initrd.addr, ramdiskSize: o.initrd.size } : {}),
    },
    e820Entries: o.e820.length,
    ...(o.rsdpAddr !== undefined ? { acpiRsdpAddr: BigInt(o.rsdpAddr) } : {}),
  });
  o.e820.forEach((e, i) => E820Entry.write(zp, { addr: BigInt(e.addr), size: BigInt(e.size), type: e.type }, BootParams.offsets.e820Table + i * E820Entry.size));
  return zp;
}
