// A 16550A UART (COM1), enough of it for Linux's 8250 driver to detect a 16550A with FIFOs,
// print the console, and read input. Owns the UART registers and its receive FIFO; output and
// the interrupt line are handed in. Transmit never makes the guest wait: LSR always says THR
// and the transmitter are empty.
// What a vCPU thread answers itself (SharedRegister, bus.ts; a forwarded access costs ~15x):
// every register read without a side effect (IER, LCR, MCR, LSR, MSR, SCR) from cells this
// device rewrites after each change of its state; IIR reads, acknowledging THRE in the cells
// (iirRead); IER writes that raise no interrupt (ierStore: Linux's console clears IER and
// restores it around every line, its transmitter turns THRE off whenever it runs dry); and THR
// writes, pushed into a shared ring (tx-ring.ts) that main drains into `output` (start()). The
// interrupt state those two change (IER, a pending THRE, IIR) lives in the cells, guarded by a
// lock (CELL.LOCK) the device takes for every change of its own, so neither side ever acts on
// a state the other has half changed. Only RBR reads, IER writes that enable THRE (or RDA with
// data waiting), the other writes, and THR writes in DLAB or loopback reach the device.
// THRE interrupts: a THR write the device sees raises one at once. Bytes that went through the
// ring: with an irqfd line (a VM's), the vCPU thread that pushed them marks THRE pending and
// raises it itself, one edge per acknowledged THRE (threAfterPush), as QEMU's UART raises it in
// the vCPU thread that wrote THR: never an interrupt from main's CPU into a running vCPU (in the
// nested sandbox ~900 of those a second preceded guest triple faults), and main drains the ring
// in batches (DRAIN_INTERVAL_MS); without one (unit tests' lines), main raises THRE once it has
// drained them (a real UART raises it when its FIFO has emptied), so Linux's 8250 driver, which
// sends tx_loadsz bytes per THRE interrupt, sends its next batch once the last one is out.
// A break (sendBreak) is received as a 16550 does: a NUL character whose LSR has BI set, with a
// receiver line status interrupt; Linux's 8250 driver reads it as the SysRq prefix on a console.

import type { BusDevice, SharedRegister } from './bus';
import { DRAIN_INTERVAL_MS, RING, TxRing } from './tx-ring';
import type { IrqLine } from './irq';

const DATA = 0; // RBR (read) / THR (write); DLL with DLAB
const IER = 1; // DLM with DLAB
const IIR_FCR = 2;
const LCR = 3;
const MCR = 4;
const LSR = 5;
const MSR = 6;
const SCR = 7;

/**
 * The cells beyond the registers' read values (indexes 0..7, by offset): LOCK (1 while the
 * device or a vCPU thread changes the interrupt state), the interrupt enables as written (IER
 * reads DLM in DLAB), whether a THRE interrupt is pending (until IIR reports it or IER drops it).
 */
const CELL = { LOCK: 8, IER: 9, THRE: 10 } as const;
const CELLS = 11;

const IER_RDA = 0x01;
const IER_THRE = 0x02;
const IIR_NONE = 0x01;
const IIR_THRE = 0x02;
const IIR_RDA = 0x04;
const IIR_RLS = 0x06;
const IER_RLS = 0x04;
const IIR_FIFO_ENABLED = 0xc0;
const FCR_ENABLE = 0x01;
const FCR_CLEAR_RX = 0x02;
const LCR_DLAB = 0x80;
const MCR_LOOP = 0x10;
const LSR_DR = 0x01;
const LSR_BI = 0x10;
const LSR_THRE = 0x20;
const LSR_TEMT = 0x40;

/** Receive FIFO depth: a 16550A has 16 bytes; a deeper buffer lets pasted input survive. */
export const RX_FIFO_SIZE = 64;
/** A FIFO entry that is a break: read as NUL, with LSR.BI while it is at the head. */
const BREAK = 0x100;

function lock(c: Int32Array): void {
  // Held for a few loads and stores; only a holder descheduled meanwhile makes this wait.
  for (let spins = 0; Atomics.compareExchange(c, CELL.LOCK, 0, 1) !== 0; spins++) {
    if (spins >= 100) Atomics.wait(c, CELL.LOCK, 1, 1);
  }
}

function unlock(c: Int32Array): void {
  Atomics.store(c, CELL.LOCK, 0);
  Atomics.notify(c, CELL.LOCK, 1);
}

/**
 * An IER write in a vCPU thread (SharedRegister kind 'uart-ier'): taken when it raises no
 * interrupt — not in DLAB (it would be DLM), THRE not enabled (enabling it raises one at once),
 * RDA/RLS not enabled while data waits. Then no interrupt can be pending afterwards: IIR reads
 * "none", and a pending THRE is dropped as the device drops it. False: the device must do it.
 */
export function ierStore(c: Int32Array, v: number): boolean {
  const ier = v & 0x0f;
  if (ier & IER_THRE) return false;
  lock(c);
  const ok = !(Atomics.load(c, LCR) & LCR_DLAB) && !(ier & (IER_RDA | IER_RLS) && Atomics.load(c, LSR) & LSR_DR);
  if (ok) {
    Atomics.store(c, CELL.IER, ier);
    Atomics.store(c, IER, ier);
    Atomics.store(c, CELL.THRE, 0);
    Atomics.store(c, IIR_FCR, IIR_NONE | (Atomics.load(c, IIR_FCR) & IIR_FIFO_ENABLED));
  }
  unlock(c);
  return ok;
}

/**
 * An IIR read in a vCPU thread (kind 'uart-iir'): what IIR says now; reading THRE acknowledges
 * it, as on the device (THRE is the lowest priority, so once it is read nothing is pending).
 */
export function iirRead(c: Int32Array): number {
  lock(c);
  const v = Atomics.load(c, IIR_FCR);
  if ((v & 0x0f) === IIR_THRE) {
    Atomics.store(c, CELL.THRE, 0);
    Atomics.store(c, IIR_FCR, IIR_NONE | (v & IIR_FIFO_ENABLED));
  }
  unlock(c);
  return v;
}

/**
 * A THR byte a vCPU thread pushed into the transmit ring (SharedRegister kind 'push' with
 * `thre`): the transmitter is empty again, so THRE is pending; IIR says so unless an interrupt
 * of higher priority (receive, line status) is showing. True when that makes THRE interrupts
 * start to pend — enabled, and not pending already: the caller raises the interrupt (after the
 * lock is released, as the device does). As a level line into the IOAPIC's edge-triggered ISA
 * pin: one edge when THRE becomes pending (after the guest's IIR read acknowledged the last),
 * not one per byte — the driver's interrupt loop sees the rest in IIR.
 */
export function threAfterPush(c: Int32Array): boolean {
  lock(c);
  const was = Atomics.load(c, CELL.THRE) !== 0;
  Atomics.store(c, CELL.THRE, 1);
  const enabled = (Atomics.load(c, CELL.IER) & IER_THRE) !== 0;
  const iir = Atomics.load(c, IIR_FCR);
  if (enabled && (iir & 0x0f) === IIR_NONE) Atomics.store(c, IIR_FCR, IIR_THRE | (iir & IIR_FIFO_ENABLED));
  unlock(c);
  return enabled && !was;
}

export class Serial16550 implements BusDevice {
  private lcr = 0x03; // 8N1
  private mcr = 0x08; // OUT2
  private scr = 0;
  private fcr = 0;
  private dll = 0x0c; // 9600 baud
  private dlm = 0;
  private rx: number[] = [];
  /**
   * What each register (by offset) reads now, as the vCPU threads serve it (syncCells()), and
   * the interrupt state they share with the device (CELL): changed only under CELL.LOCK.
   */
  private readonly cells = new Int32Array(new SharedArrayBuffer(CELLS * 4));
  /** Set while the lock is held when the interrupt must be raised once it is released. */
  private raise = false;
  /** Transmitted bytes the vCPU threads pushed, for main to drain (start()). */
  readonly tx = new TxRing();
  private draining?: Promise<void>;

  constructor(
    private readonly irq: IrqLine,
    private readonly output: (bytes: Uint8Array) => void,
  ) {
    this.locked(() => {});
  }

  sharedRegisters(): readonly SharedRegister[] {
    const cell = (reg: number) => new Int32Array(this.cells.buffer, reg * 4, 1);
    const fd = this.irq.fd;
    return [
      { offset: DATA, size: 1, kind: 'push', cell: this.tx.ctl, ring: this.tx.data, ...(fd === undefined ? {} : { thre: { uart: this.cells, irqFd: fd } }) },
      ...[IER, LCR, MCR, LSR, MSR, SCR].map((reg): SharedRegister => ({ offset: reg, size: 1, kind: 'load', cell: cell(reg) })),
      { offset: IIR_FCR, size: 1, kind: 'uart-iir', cell: this.cells },
      { offset: IER, size: 1, kind: 'uart-ier', cell: this.cells },
    ];
  }

  private get ier(): number {
    return Atomics.load(this.cells, CELL.IER);
  }
  private set ier(v: number) {
    Atomics.store(this.cells, CELL.IER, v);
  }
  private get threPending(): boolean {
    return Atomics.load(this.cells, CELL.THRE) !== 0;
  }
  private set threPending(v: boolean) {
    Atomics.store(this.cells, CELL.THRE, v ? 1 : 0);
  }

  /**
   * Runs a change of state under the lock, rewrites the cells before releasing it, and raises
   * the interrupt (if the change asked for it) after: the guest's handler reads the new state.
   */
  private locked<T>(change: () => T): T {
    lock(this.cells);
    let r: T;
    try {
      r = change();
    } finally {
      this.syncCells();
      unlock(this.cells);
    }
    if (this.raise) {
      this.raise = false;
      this.irq.trigger();
    }
    return r;
  }

  /**
   * Drains the transmit ring into `output` as vCPU threads fill it, until stop(); a failing
   * `output` rejects the promise.
   */
  start(): Promise<void> {
    // Batched only when the vCPU threads raise THRE themselves (an irqfd line): when THRE
    // waits for the drain, a batching delay would pace the guest's transmitter.
    this.draining ??= this.tx.run((b) => this.transmitted(b), this.irq.fd === undefined ? 0 : DRAIN_INTERVAL_MS);
    return this.draining;
  }

  /** Stops draining (vCPU threads that find the ring full drop instead of wait) and flushes what is left. */
  stop(): void {
    this.tx.stop();
    this.flush();
  }

  /** Sends what the ring holds to `output` now (before output of the device's own, and at the end). */
  flush(): void {
    const b = this.tx.drain();
    if (b) this.transmitted(b);
  }

  private transmitted(bytes: Uint8Array): void {
    this.output(bytes);
    // With an irqfd the vCPU thread that pushed the bytes raised THRE already (threAfterPush).
    if (this.irq.fd === undefined) this.locked(() => this.raiseThre());
  }

  /** Queues input for the guest; returns how many bytes fit (the rest is the caller's to retry). */
  enqueueInput(bytes: Uint8Array): number {
    return this.locked(() => this.receive(bytes));
  }

  private receive(bytes: Uint8Array): number {
    const n = Math.min(bytes.length, RX_FIFO_SIZE - this.rx.length);
    for (let i = 0; i < n; i++) this.rx.push(bytes[i]!);
    if (n > 0 && this.ier & IER_RDA) this.raise = true;
    return n;
  }

  /**
   * Receives a break condition (what a serial line's sender does by holding it low): queued
   * after the pending input; false when the FIFO is full.
   */
  sendBreak(): boolean {
    return this.locked(() => {
      if (this.rx.length >= RX_FIFO_SIZE) return false;
      this.rx.push(BREAK);
      if (this.ier & (IER_RDA | IER_RLS)) this.raise = true;
      return true;
    });
  }

  /**
   * The interrupt state the vCPU threads and the device share, read as is (for a diagnosis of
   * a console that stopped: THRE enabled and pending with IIR saying so, but no interrupt
   * taken, is a lost edge; THRE enabled and not pending with bytes to send, a THRE never raised).
   */
  get interruptState(): { ier: number; iir: number; threPending: boolean; locked: boolean; rxBytes: number } {
    const c = this.cells;
    return { ier: Atomics.load(c, CELL.IER), iir: Atomics.load(c, IIR_FCR), threPending: this.threPending, locked: Atomics.load(c, CELL.LOCK) !== 0, rxBytes: this.rx.length };
  }

  get rxSpace(): number {
    return RX_FIFO_SIZE - this.rx.length;
  }

  read(offset: number, data: Uint8Array): void {
    data.fill(0);
    data[0] = this.locked(() => this.readReg(offset));
  }

  write(offset: number, data: Uint8Array): void {
    this.locked(() => this.writeReg(offset, data[0]!));
  }

  /**
   * Rewrites what the vCPU threads serve: each register's side-effect-free read, and the ring's
   * gate (THR writes go to the ring unless DLAB or loopback make them something else). Called
   * under the lock after every change of state, before any interrupt it raises (locked()).
   */
  private syncCells(): void {
    for (const reg of [IER, LCR, MCR, LSR, MSR, SCR]) Atomics.store(this.cells, reg, this.peek(reg));
    Atomics.store(this.cells, IIR_FCR, this.iir());
    Atomics.store(this.tx.ctl, RING.GATE, this.lcr & LCR_DLAB || this.mcr & MCR_LOOP ? 0 : 1);
  }

  /** IIR as a read would return it now (reading THRE acknowledges it: readReg). */
  private iir(): number {
    const fifo = this.fcr & FCR_ENABLE ? IIR_FIFO_ENABLED : 0;
    if (this.ier & IER_RLS && this.rx[0] === BREAK) return IIR_RLS | fifo;
    if (this.ier & IER_RDA && this.rx.length > 0) return IIR_RDA | fifo;
    if (this.ier & IER_THRE && this.threPending) return IIR_THRE | fifo;
    return IIR_NONE | fifo;
  }

  /** A register's read without side effects (not RBR, whose read takes a byte, nor IIR). */
  private peek(reg: number): number {
    const dlab = (this.lcr & LCR_DLAB) !== 0;
    switch (reg) {
      case IER:
        return dlab ? this.dlm : this.ier;
      case LCR:
        return this.lcr;
      case MCR:
        return this.mcr;
      case LSR:
        return (this.rx.length > 0 ? LSR_DR : 0) | (this.rx[0] === BREAK ? LSR_BI : 0) | LSR_THRE | LSR_TEMT;
      case MSR:
        if (this.mcr & MCR_LOOP) {
          // Loopback: DTR→DSR, RTS→CTS, OUT1→RI, OUT2→DCD (what the 8250 probe checks).
          const m = this.mcr;
          return ((m & 0x01) << 5) | ((m & 0x02) << 3) | ((m & 0x04) << 4) | ((m & 0x08) << 4);
        }
        return 0xb0; // DCD, DSR, CTS
      case SCR:
        return this.scr;
      default:
        return 0;
    }
  }

  private readReg(reg: number): number {
    switch (reg) {
      case DATA:
        if (this.lcr & LCR_DLAB) return this.dll;
        return (this.rx.shift() ?? 0) & 0xff;
      case IIR_FCR: {
        const v = this.iir();
        if ((v & 0x0f) === IIR_THRE) this.threPending = false; // reading IIR acknowledges THRE
        return v;
      }
      default:
        return this.peek(reg);
    }
  }

  private writeReg(reg: number, v: number): void {
    const dlab = (this.lcr & LCR_DLAB) !== 0;
    switch (reg) {
      case DATA:
        if (dlab) {
          this.dll = v;
          return;
        }
        if (this.mcr & MCR_LOOP) {
          this.receive(Uint8Array.of(v));
        } else {
          // Bytes the vCPU threads pushed come first (the THRE they raise is this write's).
          const pushed = this.tx.drain();
          if (pushed) this.output(pushed);
          this.output(Uint8Array.of(v));
        }
        this.raiseThre();
        return;
      case IER:
        if (dlab) {
          this.dlm = v;
          return;
        }
        this.ier = v & 0x0f;
        if (this.ier & IER_THRE) this.raiseThre();
        else this.threPending = false;
        // As on a real 16550, enabling RDA with data already waiting interrupts at once: Linux
        // turns RDA off to throttle input and back on later, and the data must not sit unseen.
        if (this.ier & (IER_RDA | IER_RLS) && this.rx.length > 0) this.raise = true;
        return;
      case IIR_FCR:
        this.fcr = v & FCR_ENABLE;
        if (v & FCR_CLEAR_RX) this.rx = [];
        return;
      case LCR:
        this.lcr = v;
        return;
      case MCR:
        this.mcr = v & 0x1f;
        return;
      case SCR:
        this.scr = v;
        return;
    }
  }

  /** Under the lock: THR is empty again; the interrupt is raised when the lock is released. */
  private raiseThre(): void {
    this.threPending = true;
    if (this.ier & IER_THRE) this.raise = true;
  }
}
