// virtio-mmio transport, version 2 (virtio 1.x §4.2): the register block, the device status
// state machine, feature negotiation and queue setup. This module owns the register layout and
// the decision to enter NEEDS_RESET; it must not parse rings (queue.ts) or know what the device
// does. It never throws out of read/write/queueNotify: invalid accesses are ignored and counted.
// InterruptStatus lives in a shared cell, so vCPU threads can serve InterruptStatus reads and
// InterruptACK writes themselves (sharedRegisters()): those are two exits per interrupt. So
// do the registers a driver reads while probing and setting up queues (CELL_REGS: magic,
// version, ids, status; the banks of DeviceFeatures, QueueNumMax, QueueNum, QueueReady), from
// cells the transport rewrites after each change. And the writes that only set a value: the
// selectors, DriverFeatures while features are negotiated, and a queue's size and ring
// addresses until it is made ready (QUEUE_CONFIG): a vCPU thread stores them in cells that
// are those registers — the transport reads them when a Status or QueueReady write (which still
// reaches it) needs them. A quiet boot sets up three queues of virtio-vsock and one of
// virtio-rng: ~44 exits that no longer wait for the main thread.

import { closeGate, openGate, type BusDevice, type SharedRegister } from '../bus';
import type { IrqLine } from '../irq';
import { u64ToSafe, type GuestMemory } from '../memory';
import {
  VIRTIO_F_INDIRECT_DESC,
  VIRTIO_F_RING_EVENT_IDX,
  VIRTIO_F_VERSION_1,
  type VirtioDevice,
  type VirtioDeviceContext,
} from './device';
import { Queue, QueueError } from './queue';

/**
 * Registers whose reads vCPU threads serve from one cell each (what readRegister returns now):
 * none has a read side effect, and each changes only through a register write, a reset,
 * NEEDS_RESET or a config change — all of which syncCells() follows.
 */
const CELL_REGS = [
  0x000, 0x004, 0x008, 0x00c, // MagicValue, Version, DeviceID, VendorID
  0x070, 0x0fc, // Status, ConfigGeneration
] as const;

/**
 * A queue's registers the driver programs before it sets QueueReady (§4.2.3.2), one cell per
 * queue each: the transport's only copy of them until QueueReady = 1 copies them into the Queue.
 */
const QUEUE_CONFIG = [0x038, 0x080, 0x084, 0x090, 0x094, 0x0a0, 0x0a4] as const; // QueueNum, Desc, Driver, Device (low, high)
type QueueConfigReg = (typeof QUEUE_CONFIG)[number];

// Register offsets (§4.2.2): the only place they live.
export const REG = {
  MagicValue: 0x000,
  Version: 0x004,
  DeviceID: 0x008,
  VendorID: 0x00c,
  DeviceFeatures: 0x010,
  DeviceFeaturesSel: 0x014,
  DriverFeatures: 0x020,
  DriverFeaturesSel: 0x024,
  QueueSel: 0x030,
  QueueNumMax: 0x034,
  QueueNum: 0x038,
  QueueReady: 0x044,
  QueueNotify: 0x050,
  InterruptStatus: 0x060,
  InterruptACK: 0x064,
  Status: 0x070,
  QueueDescLow: 0x080,
  QueueDescHigh: 0x084,
  QueueDriverLow: 0x090,
  QueueDriverHigh: 0x094,
  QueueDeviceLow: 0x0a0,
  QueueDeviceHigh: 0x0a4,
  SHMSel: 0x0ac,
  SHMLenLow: 0x0b0,
  SHMLenHigh: 0x0b4,
  SHMBaseLow: 0x0b8,
  SHMBaseHigh: 0x0bc,
  ConfigGeneration: 0x0fc,
  Config: 0x100,
} as const;

export const MMIO_MAGIC = 0x74726976; // "virt"
export const MMIO_VERSION = 2;
/** "TSVM" in little-endian ASCII. */
export const VENDOR_ID = 0x4d565354;
/** Size of one device's register window on the MMIO bus. */
export const MMIO_WINDOW = 0x1000;

export const STATUS = {
  ACKNOWLEDGE: 0x01,
  DRIVER: 0x02,
  DRIVER_OK: 0x04,
  FEATURES_OK: 0x08,
  NEEDS_RESET: 0x40,
  FAILED: 0x80,
} as const;

export const INT_USED_BUFFER = 0x1;
export const INT_CONFIG_CHANGE = 0x2;

/** Features the transport itself implements and always offers. */
export const TRANSPORT_FEATURES = VIRTIO_F_VERSION_1 | VIRTIO_F_RING_EVENT_IDX | VIRTIO_F_INDIRECT_DESC;

/** Where the VMM registers a KVM ioeventfd for queue i: base + offset, `length` bytes, datamatch. */
export interface NotifyAddress {
  readonly offset: number;
  readonly length: 4;
  readonly datamatch: number;
}

export interface TransportCounters {
  /** Queue notifications delivered to the device (ioeventfd or register write). */
  notifications: number;
  /** Interrupts raised (used buffer or config change). */
  interrupts: number;
  /** Interrupts not raised because the driver had not yet acked the same InterruptStatus bit. */
  interruptsCoalesced: number;
  /** Invalid register accesses, refused status/feature writes, queue errors. */
  errors: number;
  /** Times the device entered NEEDS_RESET. */
  needsReset: number;
  /** Resets by the driver (Status = 0). */
  resets: number;
}

export interface TransportOptions {
  /**
   * Another process raises the used-buffer interrupt through the device's irqfd (a vhost-user
   * back-end): the transport never learns of it, so it cannot set InterruptStatus first, and
   * Linux's vm_interrupt() ignores an interrupt whose InterruptStatus lacks the bit. The bit
   * then stays set for good (Firecracker does the same for its vhost-user devices): each
   * interrupt makes the driver look at its used rings, which costs nothing when they are
   * empty. The alternative, a resampling irqfd whose EOI tells the VMM to re-check, would
   * bring every interrupt back through this process.
   */
  backendInterrupts?: boolean;
}

/**
 * Sets `bit` in a shared InterruptStatus cell and fires the line unless the bit was already set
 * (the driver has not read and acked it yet: see MmioTransport.interrupt). The bit is set
 * before the edge, so a driver woken by it sees the bit. True when the line fired. The one
 * place this rule lives: the transport and any thread that raises a device's interrupt itself
 * (a drive's I/O thread) use it.
 */
export function raiseInterrupt(isr: Int32Array, bit: number, fire: () => void): boolean {
  if (Atomics.or(isr, 0, bit) & bit) return false;
  fire();
  return true;
}

const MAX_FEATURE_WORDS = 2; // bits 0..63: all features virtio defines today

/** n Int32 cells vCPU threads share. */
const cells = (n: number) => new Int32Array(new SharedArrayBuffer(4 * n));

export class MmioTransport implements BusDevice {
  readonly counters: TransportCounters = { notifications: 0, interrupts: 0, interruptsCoalesced: 0, errors: 0, needsReset: 0, resets: 0 };
  /** Why the device last entered NEEDS_RESET (for logs); undefined until it does. */
  lastError: string | undefined;
  /** Called with every reason the device enters NEEDS_RESET (the VMM logs it). */
  onError: ((reason: string) => void) | undefined;

  readonly queues: readonly Queue[];
  private readonly offered: bigint;
  private status = 0;
  /** DeviceFeaturesSel, DriverFeaturesSel, QueueSel: one cell each, stored by vCPU threads too. */
  private readonly deviceFeaturesSel = cells(1);
  private readonly driverFeaturesSel = cells(1);
  private readonly queueSel = cells(1);
  /** DeviceFeatures by DeviceFeaturesSel (constant). */
  private readonly offeredWords = cells(MAX_FEATURE_WORDS);
  /** DriverFeatures by DriverFeaturesSel, and their gate: open between DRIVER and FEATURES_OK. */
  private readonly driverWords = cells(MAX_FEATURE_WORDS);
  private readonly driverGate = cells(MAX_FEATURE_WORDS);
  private acked = 0n;
  /** QueueNumMax (constant) and QueueReady by queue. */
  private readonly queueNumMax: Int32Array;
  private readonly queueReady: Int32Array;
  /** QUEUE_CONFIG's cells by queue, and their gate: open while that queue may be configured. */
  private readonly queueConfig: ReadonlyMap<QueueConfigReg, Int32Array>;
  private readonly queueGate: Int32Array;
  /**
   * InterruptStatus, shared with the vCPU threads, which read and acknowledge it concurrently:
   * every change is atomic. Bits are set before the irqfd is signalled, so a driver woken by
   * the interrupt sees them; an ACK clears only the bits written, so a bit set after the
   * driver's read survives its ACK.
   */
  private readonly isr = new Int32Array(new SharedArrayBuffer(4));
  private configGeneration = 0;
  /** One Int32 per CELL_REGS entry: what a read of that register returns now. */
  private readonly cells = new Int32Array(new SharedArrayBuffer(CELL_REGS.length * 4));
  private activated = false;
  /** InterruptStatus bits no ACK and no reset clears (see TransportOptions.backendInterrupts). */
  private readonly sticky: number;

  constructor(
    readonly device: VirtioDevice,
    private readonly mem: GuestMemory,
    private readonly irq: IrqLine,
    opts: TransportOptions = {},
  ) {
    this.queues = device.queueMaxSizes.map((max) => new Queue(mem, max));
    this.offered = device.deviceFeatures | TRANSPORT_FEATURES;
    this.offeredWords.forEach((_, i) => (this.offeredWords[i] = Number((this.offered >> BigInt(32 * i)) & 0xffffffffn) | 0));
    const n = this.queues.length;
    this.queueNumMax = cells(n);
    this.queues.forEach((q, i) => (this.queueNumMax[i] = q.maxSize));
    this.queueReady = cells(n);
    this.queueConfig = new Map(QUEUE_CONFIG.map((reg) => [reg, cells(n)]));
    this.queueGate = cells(n);
    this.resetQueueConfig();
    this.sticky = opts.backendInterrupts ? INT_USED_BUFFER : 0;
    Atomics.store(this.isr, 0, this.sticky);
    this.syncCells();
  }

  /**
   * Rewrites what vCPU threads serve (after every change of state): the CELL_REGS, QueueReady,
   * and which stores they may make — DriverFeatures between DRIVER and FEATURES_OK, a queue's
   * configuration while it is not ready and the status allows (§4.2.3.2).
   */
  private syncCells(): void {
    CELL_REGS.forEach((reg, i) => Atomics.store(this.cells, i, (this.readRegister(reg) ?? 0) | 0));
    this.queues.forEach((q, i) => Atomics.store(this.queueReady, i, q.ready ? 1 : 0));
    const setGate = (gate: Int32Array, i: number, open: boolean) => (open ? openGate(gate, i) : closeGate(gate, i));
    const negotiating = (this.status & STATUS.DRIVER) !== 0 && (this.status & STATUS.FEATURES_OK) === 0;
    for (let i = 0; i < MAX_FEATURE_WORDS; i++) setGate(this.driverGate, i, negotiating);
    this.queues.forEach((q, i) => setGate(this.queueGate, i, this.queueConfigurable() && !q.ready));
  }

  /** Closes every gate: while main handles a write, what it reads of the stored cells stays put. */
  private closeGates(): void {
    for (let i = 0; i < MAX_FEATURE_WORDS; i++) closeGate(this.driverGate, i);
    for (let i = 0; i < this.queues.length; i++) closeGate(this.queueGate, i);
  }

  /** QUEUE_CONFIG's power-on values: QueueNum = QueueNumMax (as Queue.reset), addresses 0. */
  private resetQueueConfig(): void {
    for (const [reg, c] of this.queueConfig) this.queues.forEach((q, i) => Atomics.store(c, i, reg === REG.QueueNum ? q.maxSize : 0));
  }

  private queueConfigCell(reg: QueueConfigReg, i: number): number {
    return Atomics.load(this.queueConfig.get(reg)!, i) >>> 0;
  }

  /** The ioeventfd registration for queue i (QueueNotify, datamatch = queue index). */
  notifyAddress(queueIndex: number): NotifyAddress {
    return { offset: REG.QueueNotify, length: 4, datamatch: queueIndex };
  }

  /**
   * InterruptStatus (read) and InterruptACK (write), the CELL_REGS and the banks' reads, the
   * selectors, DriverFeatures and QUEUE_CONFIG writes (behind their gates).
   */
  sharedRegisters(): readonly SharedRegister[] {
    const q = this.queueSel;
    return [
      { offset: REG.InterruptStatus, size: 4, kind: 'load', cell: this.isr },
      { offset: REG.InterruptACK, size: 4, kind: 'clear-bits', cell: this.isr, keep: this.sticky },
      ...CELL_REGS.map((offset, i): SharedRegister => ({ offset, size: 4, kind: 'load', cell: new Int32Array(this.cells.buffer, i * 4, 1) })),
      { offset: REG.DeviceFeatures, size: 4, kind: 'load', cell: this.offeredWords, select: this.deviceFeaturesSel },
      { offset: REG.QueueNumMax, size: 4, kind: 'load', cell: this.queueNumMax, select: q },
      { offset: REG.QueueNum, size: 4, kind: 'load', cell: this.queueConfig.get(REG.QueueNum)!, select: q },
      { offset: REG.QueueReady, size: 4, kind: 'load', cell: this.queueReady, select: q },
      { offset: REG.DeviceFeaturesSel, size: 4, kind: 'store', cell: this.deviceFeaturesSel },
      { offset: REG.DriverFeaturesSel, size: 4, kind: 'store', cell: this.driverFeaturesSel },
      { offset: REG.QueueSel, size: 4, kind: 'store', cell: q },
      { offset: REG.DriverFeatures, size: 4, kind: 'store', cell: this.driverWords, select: this.driverFeaturesSel, gate: this.driverGate },
      ...QUEUE_CONFIG.map((offset): SharedRegister => ({ offset, size: 4, kind: 'store', cell: this.queueConfig.get(offset)!, select: q, gate: this.queueGate })),
    ];
  }

  /** Current device status register (for tests and metrics). */
  get deviceStatus(): number {
    return this.status;
  }

  /** InterruptStatus as the guest would read it now (for diagnoses). */
  get interruptStatus(): number {
    return Atomics.load(this.isr, 0);
  }

  get ackedFeatures(): bigint {
    return this.acked;
  }

  /** The driver notified queue i: called by the VMM when that queue's ioeventfd fires. */
  queueNotify(queueIndex: number): void {
    if (!this.activated || queueIndex < 0 || queueIndex >= this.queues.length || !Number.isInteger(queueIndex)) {
      this.counters.errors++;
      return;
    }
    this.counters.notifications++;
    this.guard(() => this.device.notify(queueIndex));
  }

  /** The device's configuration changed: bump ConfigGeneration and tell the driver. */
  configChanged(): void {
    this.configGeneration = (this.configGeneration + 1) >>> 0;
    this.syncCells();
    if (this.status & STATUS.DRIVER_OK) this.interrupt(INT_CONFIG_CHANGE);
  }

  /** Puts the device into DEVICE_NEEDS_RESET and stops delivering notifications to it. */
  needsReset(reason: string): void {
    this.counters.errors++;
    this.lastError = reason;
    this.onError?.(reason);
    if (this.status & STATUS.NEEDS_RESET) return;
    this.counters.needsReset++;
    this.status |= STATUS.NEEDS_RESET;
    this.activated = false;
    this.syncCells();
    if (this.status & STATUS.DRIVER_OK) this.interrupt(INT_CONFIG_CHANGE);
  }

  read(offset: number, data: Uint8Array): void {
    if (offset >= REG.Config) {
      data.fill(0);
      this.guard(() => this.device.readConfig(offset - REG.Config, data));
      return;
    }
    data.fill(0);
    if (data.length !== 4 || offset % 4 !== 0) {
      this.counters.errors++;
      return;
    }
    const v = this.readRegister(offset);
    if (v === undefined) {
      this.counters.errors++;
      return;
    }
    new DataView(data.buffer, data.byteOffset, 4).setUint32(0, v >>> 0, true);
  }

  write(offset: number, data: Uint8Array): void {
    if (offset >= REG.Config) {
      // A driver writes config only once it has claimed the device (DRIVER, §3.1.1 step 5).
      if (!(this.status & STATUS.DRIVER)) {
        this.counters.errors++;
        return;
      }
      this.guard(() => this.device.writeConfig(offset - REG.Config, data));
      return;
    }
    if (data.length !== 4 || offset % 4 !== 0) {
      this.counters.errors++;
      return;
    }
    const v = new DataView(data.buffer, data.byteOffset, 4).getUint32(0, true);
    this.closeGates();
    if (!this.writeRegister(offset, v)) this.counters.errors++;
    this.syncCells();
  }

  /** A selector register's value (unsigned). */
  private static sel(cell: Int32Array): number {
    return Atomics.load(cell, 0) >>> 0;
  }

  private readRegister(offset: number): number | undefined {
    const qi = MmioTransport.sel(this.queueSel);
    const q = this.queues[qi];
    switch (offset) {
      case REG.MagicValue: return MMIO_MAGIC;
      case REG.Version: return MMIO_VERSION;
      case REG.DeviceID: return this.device.deviceType;
      case REG.VendorID: return VENDOR_ID;
      case REG.DeviceFeatures: {
        const w = MmioTransport.sel(this.deviceFeaturesSel);
        return w < MAX_FEATURE_WORDS ? this.offeredWords[w]! >>> 0 : 0;
      }
      case REG.QueueNumMax: return q ? q.maxSize : 0;
      case REG.QueueReady: return q?.ready ? 1 : 0;
      case REG.InterruptStatus: return Atomics.load(this.isr, 0);
      case REG.Status: return this.status;
      case REG.QueueNum:
      case REG.QueueDescLow:
      case REG.QueueDescHigh:
      case REG.QueueDriverLow:
      case REG.QueueDriverHigh:
      case REG.QueueDeviceLow:
      case REG.QueueDeviceHigh: return q ? this.queueConfigCell(offset, qi) : 0;
      // No shared memory regions: length all ones means "absent" (§4.2.2).
      case REG.SHMLenLow:
      case REG.SHMLenHigh:
      case REG.SHMBaseLow:
      case REG.SHMBaseHigh: return 0xffffffff;
      case REG.ConfigGeneration: return this.configGeneration;
      default: return undefined;
    }
  }

  /** Applies a register write; false when it was invalid (and therefore ignored). */
  private writeRegister(offset: number, v: number): boolean {
    switch (offset) {
      case REG.DeviceFeaturesSel:
        Atomics.store(this.deviceFeaturesSel, 0, v | 0);
        return true;
      case REG.DriverFeaturesSel:
        Atomics.store(this.driverFeaturesSel, 0, v | 0);
        return true;
      case REG.DriverFeatures: {
        // Only between DRIVER and FEATURES_OK (§3.1.1).
        if (!(this.status & STATUS.DRIVER) || this.status & STATUS.FEATURES_OK) return false;
        const w = MmioTransport.sel(this.driverFeaturesSel);
        if (w >= MAX_FEATURE_WORDS) return v === 0;
        Atomics.store(this.driverWords, w, v | 0);
        return true;
      }
      case REG.QueueSel:
        // Selecting a queue that does not exist is legal: QueueNumMax then reads 0.
        Atomics.store(this.queueSel, 0, v | 0);
        return true;
      case REG.QueueNum:
      case REG.QueueDescLow:
      case REG.QueueDescHigh:
      case REG.QueueDriverLow:
      case REG.QueueDriverHigh:
      case REG.QueueDeviceLow:
      case REG.QueueDeviceHigh:
        return this.writeQueueConfig(offset, v);
      case REG.QueueReady: {
        const i = MmioTransport.sel(this.queueSel);
        const q = this.queues[i];
        if (!q) return false;
        if (v === 0) {
          q.ready = false;
          return true;
        }
        if (!this.queueConfigurable() || v !== 1) return false;
        if (!q.ready) this.loadQueueConfig(q, i);
        q.ready = true;
        return true;
      }
      case REG.QueueNotify:
        this.queueNotify(v);
        return true;
      case REG.InterruptACK:
        Atomics.and(this.isr, 0, ~(v & ~this.sticky));
        return true;
      case REG.Status:
        return this.writeStatus(v);
      case REG.SHMSel:
        return true;
      default:
        return false;
    }
  }

  /** Queue registers are writable after FEATURES_OK, before DRIVER_OK, while the queue is not ready (§4.2.3.2). */
  private queueConfigurable(): boolean {
    const s = this.status;
    return (s & STATUS.FEATURES_OK) !== 0 && (s & (STATUS.DRIVER_OK | STATUS.FAILED | STATUS.NEEDS_RESET)) === 0;
  }

  /** A QUEUE_CONFIG write that reached the transport (no vCPU threads, or the gate was closed). */
  private writeQueueConfig(offset: QueueConfigReg, v: number): boolean {
    const i = MmioTransport.sel(this.queueSel);
    const q = this.queues[i];
    if (!q || q.ready || !this.queueConfigurable()) return false;
    Atomics.store(this.queueConfig.get(offset)!, i, v | 0);
    return true;
  }

  /** QueueReady = 1: the queue takes the size and ring addresses the driver stored (gates closed). */
  private loadQueueConfig(q: Queue, i: number): void {
    const cell = (reg: QueueConfigReg) => this.queueConfigCell(reg, i);
    // Addresses beyond 2^53 can never be RAM: an invalid value makes activation fail.
    const addr = (lo: QueueConfigReg, hi: QueueConfigReg) => u64ToSafe(cell(lo), cell(hi)) ?? Number.MAX_SAFE_INTEGER;
    q.size = cell(REG.QueueNum);
    q.descAddr = addr(REG.QueueDescLow, REG.QueueDescHigh);
    q.availAddr = addr(REG.QueueDriverLow, REG.QueueDriverHigh);
    q.usedAddr = addr(REG.QueueDeviceLow, REG.QueueDeviceHigh);
  }

  private writeStatus(v: number): boolean {
    if (v === 0) {
      this.reset();
      return true;
    }
    // The driver rewrites the whole register (Linux: read, OR, write), so it echoes our
    // NEEDS_RESET back; it may neither clear a bit (§2.1.2) nor set NEEDS_RESET itself.
    const s = this.status;
    if ((v & s) !== s) return false;
    const added = v & ~s;
    if (added & STATUS.FAILED) {
      this.status = v;
      return true;
    }
    const needs = (bit: number, before: number) => !(added & bit) || (v & before) !== 0;
    if (
      !needs(STATUS.DRIVER, STATUS.ACKNOWLEDGE) ||
      !needs(STATUS.FEATURES_OK, STATUS.DRIVER) ||
      !needs(STATUS.DRIVER_OK, STATUS.FEATURES_OK) ||
      added & ~(STATUS.ACKNOWLEDGE | STATUS.DRIVER | STATUS.FEATURES_OK | STATUS.DRIVER_OK)
    ) {
      return false;
    }
    if (added & STATUS.FEATURES_OK) {
      // Refuse features we did not offer, and the legacy interface (no VERSION_1): the driver
      // reads FEATURES_OK back and gives up when it is clear (§3.1.1 step 6).
      const driverFeatures = this.driverWords.reduce((f, w, i) => f | (BigInt(w >>> 0) << BigInt(32 * i)), 0n);
      const ok = (driverFeatures & ~this.offered) === 0n && (driverFeatures & VIRTIO_F_VERSION_1) !== 0n;
      if (!ok) {
        this.status = v & ~STATUS.FEATURES_OK;
        return false;
      }
      this.acked = driverFeatures;
      for (const q of this.queues) {
        q.eventIdx = (this.acked & VIRTIO_F_RING_EVENT_IDX) !== 0n;
        q.indirect = (this.acked & VIRTIO_F_INDIRECT_DESC) !== 0n;
      }
    }
    this.status = v;
    if (added & STATUS.DRIVER_OK) this.activate();
    return true;
  }

  private activate(): void {
    if (this.status & STATUS.NEEDS_RESET) return;
    for (const [i, q] of this.queues.entries()) {
      if (!q.ready) continue;
      try {
        q.activate();
      } catch (e) {
        this.needsReset(`queue ${i}: ${e instanceof Error ? e.message : String(e)}`);
        return;
      }
    }
    const ctx: VirtioDeviceContext = {
      mem: this.mem,
      queues: this.queues,
      ackedFeatures: this.acked,
      irq: this.irq,
      interruptStatus: this.isr,
      signalUsed: (i) => {
        const q = this.queues[i];
        if (q && this.activated && q.needsNotification()) this.interrupt(INT_USED_BUFFER);
      },
      needsReset: (reason) => this.needsReset(reason),
    };
    this.activated = true;
    this.guard(() => this.device.activate(ctx));
  }

  private reset(): void {
    // The device first: one whose data path runs on a thread of its own stops it here, so
    // nothing sets InterruptStatus or touches a ring after they are cleared below.
    this.guard(() => this.device.reset());
    this.counters.resets++;
    this.status = 0;
    this.activated = false;
    for (const c of [this.deviceFeaturesSel, this.driverFeaturesSel, this.queueSel, this.driverWords]) c.forEach((_, i) => Atomics.store(c, i, 0));
    this.acked = 0n;
    Atomics.store(this.isr, 0, this.sticky);
    for (const q of this.queues) q.reset();
    this.resetQueueConfig();
  }

  // The irqfd is edge-triggered, so the line behaves like QEMU's level model (high while
  // InterruptStatus has bits): a bit that is still set means the driver has not yet read and
  // acked it, and Linux's vm_interrupt() acks before it walks every queue, so it will see
  // what was just added without another edge. Each skipped edge saves an eventfd write here
  // and a guest interrupt there (an exit, an EOI, the ISR read and ACK); under load the guest
  // takes its interrupt slower than the device produces used buffers.
  private interrupt(bit: number): void {
    if (raiseInterrupt(this.isr, bit, () => this.irq.trigger())) this.counters.interrupts++;
    else this.counters.interruptsCoalesced++;
  }

  /** Runs device code; any error it throws means the device cannot go on: NEEDS_RESET. */
  private guard(fn: () => void): void {
    try {
      fn();
    } catch (e) {
      const kind = e instanceof QueueError ? 'queue error' : 'device error';
      this.needsReset(`${kind}: ${e instanceof Error ? e.message : String(e)}`);
    }
  }
}
