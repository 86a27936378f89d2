// Guest physical memory as the device models see it: a set of host-backed regions at guest
// physical addresses. This module owns bounds checking of guest addresses; it must not know
// how the backing was obtained (mmap + KVM slot in vmm/memory.ts, a plain ArrayBuffer in tests).
//
// Every address that comes from the guest goes through `slice`, which returns a view only when
// the whole range lies inside one RAM region. Anything else (MMIO hole, past the end, overflow,
// negative, non-integer) yields undefined: callers treat that as a malformed request.

/**
 * A region of guest RAM by its host address: how RAM reaches another thread of this process (a
 * view cannot cross threads, the address can; the thread makes its own view of the same pages).
 */
export interface HostRegion {
  readonly gpa: number;
  readonly size: number;
  readonly addr: bigint;
}

export interface MemoryRegion {
  /** Guest physical address of the first byte. */
  readonly gpa: number;
  /** Host view of the region; its length is the region size (at most 4 GiB: a larger koffi view aborts the process). */
  readonly bytes: Uint8Array;
}

export class GuestMemory {
  private readonly regions: readonly MemoryRegion[];

  constructor(regions: readonly MemoryRegion[]) {
    this.regions = [...regions].sort((a, b) => a.gpa - b.gpa);
  }

  /** The regions, sorted by address. */
  get layout(): readonly MemoryRegion[] {
    return this.regions;
  }

  /** Total bytes of guest RAM. */
  get size(): number {
    let n = 0;
    for (const r of this.regions) n += r.bytes.length;
    return n;
  }

  /**
   * A view of [gpa, gpa + len) if that range lies entirely inside one region, else undefined.
   * `len` may be 0 (a valid empty view when gpa is inside or at the end of a region).
   */
  slice(gpa: number, len: number): Uint8Array | undefined {
    if (!Number.isSafeInteger(gpa) || !Number.isSafeInteger(len) || gpa < 0 || len < 0) return undefined;
    for (const r of this.regions) {
      const off = gpa - r.gpa;
      if (off < 0) return undefined; // sorted: no later region can contain gpa
      if (off + len <= r.bytes.length) return r.bytes.subarray(off, off + len);
    }
    return undefined;
  }

  /** Like slice, but throws a RangeError naming the range (for VMM-side writes, never guest input). */
  expect(gpa: number, len: number): Uint8Array {
    const v = this.slice(gpa, len);
    if (!v) throw new RangeError(`guest range 0x${gpa.toString(16)}+0x${len.toString(16)} is not RAM`);
    return v;
  }

  /** Copies `data` into guest memory at gpa (VMM-side; throws when out of range). */
  write(gpa: number, data: Uint8Array): void {
    this.expect(gpa, data.length).set(data);
  }
}

/** An 64-bit guest-supplied value (as two u32 halves) as a safe integer, or undefined if larger. */
export function u64ToSafe(lo: number, hi: number): number | undefined {
  if (hi >= 0x200000) return undefined;
  return hi * 0x1_0000_0000 + lo;
}
