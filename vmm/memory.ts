// Guest RAM: host mappings registered as KVM memory slots, laid out around the 32-bit MMIO hole.
// This module owns the host mappings and their slots; device models only ever see the
// bounds-checked GuestMemory view (devices/memory.ts) built from them.
//
// RAM is anonymous private memory, unless another process must map it (a vhost-user back-end
// such as virtiofsd): then each chunk is a memfd mapped MAP_SHARED, and its fd goes to the
// back-end in SET_MEM_TABLE. Shared RAM is only chosen when needed because shmem gets
// transparent huge pages only where /sys/kernel/mm/transparent_hugepage/shmem_enabled allows
// it (Debian's default: never), and THP is what keeps a nested guest's boot fast (below).

import * as libc from '../kvm/libc';
import type { Vm } from '../kvm/kvm';
import { GuestMemory, type HostRegion, type MemoryRegion } from '../devices/memory';
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


/** A RAM chunk another process can map: its memfd (owned by GuestRam) and where it lives. */
export interface SharedRamRegion {
  guestPhysAddr: number;
  size: number;
  userAddr: bigint;
  fd: number;
  fdOffset: number;
}

export class GuestRam {
  readonly memory: GuestMemory;
  readonly ranges: readonly RamRange[];
  private readonly mappings: (HostRegion & { fd?: number })[] = [];
  /** The RAM chunks by host address, for threads of this process that make their own views (a drive's I/O thread). */
  readonly hostRegions: HostRegion[] = [];
  private nextSlot = 0;
  /** The RAM chunks as memfds, when RAM is shared (else empty). */
  readonly shared: SharedRamRegion[] = [];

  constructor(vm: Vm, size: number, opts: { shared?: boolean } = {}) {
    this.ranges = ramLayout(size);
    const regions: MemoryRegion[] = [];
    try {
      for (const r of this.ranges) {
        for (let off = 0; off < r.size; off += MAX_CHUNK) {
          const chunk = Math.min(MAX_CHUNK, r.size - off);
          regions.push(this.mapSlot(vm, r.gpa + off, chunk, opts.shared));
          const { addr } = this.mappings.at(-1)!;
          this.hostRegions.push({ gpa: r.gpa + off, size: chunk, addr });
        }
      }
    } catch (e) {
      this.close();
      throw e;
    }
    this.memory = new GuestMemory(regions);
  }

  /** Host virtual address of guest RAM [gpa, gpa + len) when it lies inside one shared chunk. */
  hostAddress(gpa: number, len: number): bigint | undefined {
    for (const r of this.shared) {
      if (gpa >= r.guestPhysAddr && gpa + len <= r.guestPhysAddr + r.size) return r.userAddr + BigInt(gpa - r.guestPhysAddr);
    }
    return undefined;
  }

  /**
   * Maps `size` bytes of fresh host memory as a KVM slot at gpa (also used for non-RAM shared
   * regions); `shared`: backed by a memfd another process can map.
   */
  mapSlot(vm: Vm, gpa: number, size: number, shared = false): MemoryRegion {
    let fd: number | undefined;
    let addr: bigint;
    if (shared) {
      fd = libc.memfdCreate(`tsvmm-ram-${gpa.toString(16)}`, size);
      try {
        addr = libc.mmap(size, libc.PROT_READ | libc.PROT_WRITE, libc.MAP_SHARED | libc.MAP_NORESERVE, fd);
      } catch (e) {
        libc.close(fd);
        throw e;
      }
      this.shared.push({ guestPhysAddr: gpa, size, userAddr: addr, fd, fdOffset: 0 });
    } else {
      addr = libc.mmap(size, libc.PROT_READ | libc.PROT_WRITE, libc.MAP_PRIVATE | libc.MAP_ANONYMOUS | libc.MAP_NORESERVE, -1);
    }
    this.mappings.push({ gpa, size, addr, fd });
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
    for (const m of this.mappings.splice(0)) {
      libc.munmap(m.addr, m.size);
      if (m.fd !== undefined) libc.close(m.fd);
    }
    this.shared.length = 0;
  }
}
