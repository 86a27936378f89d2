// Guest RAM: anonymous host mappings registered as KVM memory slots, laid out around the 32-bit
// MMIO hole. This module owns the host mappings and their slots; device models only ever see
// the bounds-checked GuestMemory view (devices/memory.ts) built from them.

import * as libc from '../kvm/libc';
import type { Vm } from '../kvm/kvm';
import { GuestMemory, MemoryRegion } from '../devices/memory';
import { FOUR_GIB, GiB, MMIO_HOLE_START } from './layout';

/** One koffi view must stay ≤ 4 GiB; 2 GiB chunks keep every region well inside that. */
const MAX_CHUNK = 2 * GiB;

export interface RamRange {
  gpa: number;
  size: number;
}

/** Where `size` bytes of RAM go: below the hole, then above 4 GiB. */
export function ramLayout(size: number): RamRange[] {
  const low = Math.min(size, MMIO_HOLE_START);
  const ranges: RamRange[] = [{ gpa: 0, size: low }];
  if (size > low) ranges.push({ gpa: FOUR_GIB, size: size - low });
  return ranges;
}

export interface HostMapping {
  gpa: number;
  size: number;
  addr: bigint;
}

export class GuestRam {
  readonly memory: GuestMemory;
  readonly ranges: readonly RamRange[];
  private readonly mappings: HostMapping[] = [];
  private nextSlot = 0;

  constructor(vm: Vm, size: number) {
    this.ranges = ramLayout(size);
    const regions: MemoryRegion[] = [];
    try {
      for (const r of this.ranges) {
        for (let off = 0; off < r.size; off += MAX_CHUNK) {
          const chunk = Math.min(MAX_CHUNK, r.size - off);
          regions.push(this.mapSlot(vm, r.gpa + off, chunk));
        }
      }
    } catch (e) {
      this.close();
      throw e;
    }
    this.memory = new GuestMemory(regions);
  }

  /** Maps `size` bytes of fresh host memory as a KVM slot at gpa (also used for non-RAM shared regions). */
  mapSlot(vm: Vm, gpa: number, size: number): MemoryRegion {
    const addr = libc.mmap(size, libc.PROT_READ | libc.PROT_WRITE, libc.MAP_PRIVATE | libc.MAP_ANONYMOUS | libc.MAP_NORESERVE, -1);
    this.mappings.push({ gpa, size, addr });
    // Not inherited by children (tsvmm spawns helpers). Transparent huge pages let KVM map
    // guest RAM 2 MiB at a time: under nested virtualization every 4 KiB nested-paging fault
    // costs ~1 ms, which made a stock kernel's first seconds of boot crawl (measured: the
    // decompressor's 5 MB self-copy took > 3 s without THP).
    libc.madvise(addr, size, libc.MADV_DONTFORK);
    try {
      libc.madvise(addr, size, libc.MADV_HUGEPAGE);
    } catch {
      // THP disabled on this host: correct, only slower.
    }
    vm.setUserMemoryRegion(this.nextSlot++, gpa, size, addr);
    return { gpa, bytes: new Uint8Array(libc.view(addr, size)) };
  }

  close(): void {
    for (const m of this.mappings.splice(0)) libc.munmap(m.addr, m.size);
  }
}
