// Address-range dispatch for port I/O and MMIO exits. This module owns "which device answers
// this address"; it must not know what any device does. One Bus instance per address space
// (PIO, MMIO). Ranges never overlap: inserting an overlapping range is a programming error.

export interface BusDevice {
  /** Fills `data` (1, 2, 4 or 8 bytes) with the value read at `offset` inside the device. */
  read(offset: number, data: Uint8Array): void;
  /** Handles a write of `data` at `offset` inside the device. */
  write(offset: number, data: Uint8Array): void;
}

interface Range {
  readonly base: number;
  readonly len: number;
  readonly name: string;
  readonly device: BusDevice;
}

export class Bus {
  private ranges: Range[] = [];

  insert(base: number, len: number, name: string, device: BusDevice): void {
    if (len <= 0) throw new RangeError(`bus range for ${name} is empty`);
    for (const r of this.ranges) {
      if (base < r.base + r.len && r.base < base + len) {
        throw new RangeError(`bus range ${name} 0x${base.toString(16)}+0x${len.toString(16)} overlaps ${r.name}`);
      }
    }
    this.ranges.push({ base, len, name, device });
    this.ranges.sort((a, b) => a.base - b.base);
  }

  /** The claimed address ranges (what a vCPU worker must forward to this bus). */
  claims(): { base: number; len: number }[] {
    return this.ranges.map((r) => ({ base: r.base, len: r.len }));
  }

  /** The device covering [addr, addr + size), with the offset inside it. */
  find(addr: number, size: number): { device: BusDevice; offset: number; name: string } | undefined {
    // Few ranges (a dozen): a linear scan beats anything clever here.
    for (const r of this.ranges) {
      if (addr >= r.base && addr + size <= r.base + r.len) return { device: r.device, offset: addr - r.base, name: r.name };
    }
    return undefined;
  }

  /** Dispatches a read; unclaimed addresses read as all ones (like an empty ISA bus). */
  read(addr: number, data: Uint8Array): boolean {
    const hit = this.find(addr, data.length);
    if (!hit) {
      data.fill(0xff);
      return false;
    }
    hit.device.read(hit.offset, data);
    return true;
  }

  /** Dispatches a write; writes to unclaimed addresses are dropped. */
  write(addr: number, data: Uint8Array): boolean {
    const hit = this.find(addr, data.length);
    if (!hit) return false;
    hit.device.write(hit.offset, data);
    return true;
  }
}
