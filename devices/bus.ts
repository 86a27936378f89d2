// Address-range dispatch for port I/O and MMIO exits. This module owns "which device answers
// this address"; it must not know what any device does. One Bus instance per address space
// (PIO, MMIO). Ranges never overlap: inserting an overlapping range is a programming error.
// It also carries each device's shared registers to the vCPU threads (see SharedRegister).

/**
 * A device register whose value lives in shared memory, so that a vCPU thread can answer it
 * without a hop to the device's thread (docs/benchmarks.md, "Exit rate": a forwarded exit
 * costs ~15x one answered in the vCPU thread). `load` serves reads of the register (the
 * cell's value); `clear-bits` serves writes (the cell loses the bits written: write-1-to-clear);
 * `store` serves writes of a register whose write does nothing but set its value (a selector,
 * a queue's address before the queue is enabled): the cell takes the value written, and the
 * device holds no other copy of it — the cell is the register, read when the device needs it.
 * Only an access of exactly `size` bytes at exactly `offset` in that direction qualifies; every
 * other access still reaches the device, which must give the same answer for those that
 * qualify (tests and callers without vCPU threads use it).
 */
export interface SharedRegister {
  readonly offset: number;
  /** 4 for 32-bit registers; 1 for a byte register (a UART's), whose `load` answers the cell's low byte. */
  readonly size: 1 | 4;
  /**
   * `refuse` serves writes of a command register while the device refuses that command (a
   * rate limit): the refusal is answered without the device, as it would answer it (see REFUSE);
   * every other write reaches the device. `push` serves byte writes by pushing the byte into
   * `ring` (devices/tx-ring.ts) while the ring's gate is open; with it shut they reach the device.
   * `uart-ier` (writes) and `uart-iir` (reads) are a 16550's IER and IIR, served by the rules in
   * devices/serial.ts (ierStore, iirRead) over the UART's cells.
   */
  readonly kind: 'load' | 'clear-bits' | 'refuse' | 'push' | 'store' | 'uart-ier' | 'uart-iir';
  /** `clear-bits` only: bits a write never clears (a device that keeps a status bit set for good). */
  readonly keep?: number;
  /**
   * One Int32 (index 0) over a SharedArrayBuffer; the device changes it only with Atomics.
   * `refuse`: REFUSE_CELLS Int32s laid out as REFUSE says. `push`: the ring's control cells (RING).
   * `uart-ier`, `uart-iir`: all of the UART's cells (devices/serial.ts).
   */
  readonly cell: Int32Array;
  /** `push` only: the ring's bytes (a SharedArrayBuffer, a power of two long). */
  readonly ring?: Uint8Array;
  /**
   * `push` only, a UART's THR: the transmitter is empty again as soon as a byte is pushed (the
   * ring is the FIFO; main drains it), so the pushing vCPU thread marks THRE pending in the
   * UART's cells (`uart`, devices/serial.ts threAfterPush) and, when THRE interrupts are
   * enabled, raises one itself by writing the line's eventfd (`irqFd`, a KVM irqfd): the
   * interrupt is set while that vCPU is out of the guest, from its own CPU, as QEMU's UART
   * raises it in the vCPU thread that wrote THR — never from another thread while the vCPU runs.
   */
  readonly thre?: { readonly uart: Int32Array; readonly irqFd: number };
  /**
   * `load` and `store`: the register is one of a bank (one per queue, per feature word) picked
   * by a selector register whose value is this cell's (index 0). `cell` then holds one Int32
   * per entry, and an access uses entry `select` (unsigned); a selector beyond the bank sends
   * the access to the device.
   */
  readonly select?: Int32Array;
  /**
   * `store` only: one cell per entry of `cell` (GATE): a write is stored while its entry is
   * OPEN, and reaches the device (which refuses it, or applies what the vCPU cannot) while
   * CLOSED. The device moves it with openGate and closeGate, the vCPU threads OPEN -> BUSY ->
   * OPEN around their store, so a device that closed the gate can read the cell knowing no
   * store lands after it.
   */
  readonly gate?: Int32Array;
}

/** The states of a `store` register's gate entry (SharedRegister.gate). */
export const GATE = { CLOSED: 0, OPEN: 1, BUSY: 2 } as const;

/** Lets vCPU threads store entry i (device thread). A BUSY entry is open already. */
export function openGate(gate: Int32Array, i: number): void {
  Atomics.compareExchange(gate, i, GATE.CLOSED, GATE.OPEN);
}

/**
 * Stops vCPU threads storing entry i (device thread): when it returns, no store to the entry
 * is under way, and none starts until openGate. A vCPU holds BUSY for a load and two stores;
 * only one descheduled in between makes this wait, and then for a millisecond at a time.
 */
export function closeGate(gate: Int32Array, i: number): void {
  for (let spins = 0; Atomics.compareExchange(gate, i, GATE.OPEN, GATE.CLOSED) === GATE.BUSY; spins++) {
    if (spins >= 100) Atomics.wait(gate, i, GATE.BUSY, 1);
  }
}

/**
 * The cells of a `refuse` register. While ON is non-zero, a write of exactly COMMAND is
 * answered by the vCPU thread: SEQ += 1, STATUS = ANSWER_STATUS, RESULT = ANSWER_RESULT,
 * COUNT += 1 (the device adds COUNT to its own counters). STATUS, RESULT and SEQ are the
 * device's registers of those names (its `load` registers are views of the same cells).
 */
export const REFUSE = { ON: 0, COMMAND: 1, ANSWER_STATUS: 2, ANSWER_RESULT: 3, STATUS: 4, RESULT: 5, SEQ: 6, COUNT: 7 } as const;
export const REFUSE_CELLS = 8;

export interface BusDevice {
  /** Fills `data` (1, 2, 4 or 8 bytes) with the value read at `offset` inside the device. */
  read(offset: number, data: Uint8Array): void;
  /** Handles a write of `data` at `offset` inside the device, made by vCPU `vcpu` when the caller knows. */
  write(offset: number, data: Uint8Array, vcpu?: number): void;
  /** Registers a vCPU thread may serve from shared memory (fixed for the device's lifetime). */
  sharedRegisters?(): readonly SharedRegister[];
}

/** A claimed address range, with the registers in it a vCPU thread serves itself. */
export interface BusClaim {
  readonly base: number;
  readonly len: number;
  readonly shared: readonly SharedRegister[];
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

  /** The claimed address ranges (what a vCPU worker must forward to this bus, or serve from shared registers). */
  claims(): BusClaim[] {
    return this.ranges.map((r) => ({ base: r.base, len: r.len, shared: r.device.sharedRegisters?.() ?? [] }));
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

  /** Dispatches a write (by vCPU `vcpu`, when known); writes to unclaimed addresses are dropped. */
  write(addr: number, data: Uint8Array, vcpu?: number): boolean {
    const hit = this.find(addr, data.length);
    if (!hit) return false;
    hit.device.write(hit.offset, data, vcpu);
    return true;
  }
}
