// virtio-mmio transport, version 2 (virtio 1.x §4.2): the register block, the device status
// state machine, feature negotiation and queue setup. This module owns the register layout and
// the decision to enter NEEDS_RESET; it must not parse rings (queue.ts) or know what the device
// does. It never throws out of read/write/queueNotify: invalid accesses are ignored and counted.
// InterruptStatus lives in a shared cell, so vCPU threads can serve InterruptStatus reads and
// InterruptACK writes themselves (sharedRegisters()): those are two exits per interrupt. So
// do the registers a driver reads while probing and setting up queues (CELL_REGS: magic,
// version, ids, features, QueueNumMax, ...), from cells the transport rewrites after each change.

import type { BusDevice, SharedRegister } from '../bus';
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
 * Registers whose reads vCPU threads serve from cells (what readRegister returns now): none
 * has a read side effect, and each changes only through a register write, a reset, NEEDS_RESET
 * or a config change — all of which syncCells() follows.
 */
const CELL_REGS = [
  0x000, 0x004, 0x008, 0x00c, // MagicValue, Version, DeviceID, VendorID
  0x010, 0x034, 0x038, 0x044, // DeviceFeatures, QueueNumMax, QueueNum, QueueReady
  0x070, 0x0fc, // Status, ConfigGeneration
] as const;

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

const MAX_FEATURE_WORDS = 2; // bits 0..63: all features virtio defines today

export class MmioTransport implements BusDevice {
  readonly counters: TransportCounters = { notifications: 0, interrupts: 0, interruptsCoalesced: 0, errors: 0, needsReset: 0, resets: 0 };
  /** Why the device last entered NEEDS_RESET (for logs); undefined until it does. */
  lastError: string | undefined;
  /** Called with every reason the device enters NEEDS_RESET (the VMM logs it). */
  onError: ((reason: string) => void) | undefined;

  readonly queues: readonly Queue[];
  private readonly offered: bigint;
  private status = 0;
  private deviceFeaturesSel = 0;
  private driverFeaturesSel = 0;
  private driverFeatures = 0n;
  private acked = 0n;
  private queueSel = 0;
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
    this.sticky = opts.backendInterrupts ? INT_USED_BUFFER : 0;
    Atomics.store(this.isr, 0, this.sticky);
    this.syncCells();
  }

  /** Rewrites what vCPU threads serve for CELL_REGS (after every change of those registers). */
  private syncCells(): void {
    CELL_REGS.forEach((reg, i) => Atomics.store(this.cells, i, (this.readRegister(reg) ?? 0) | 0));
  }

  /** The ioeventfd registration for queue i (QueueNotify, datamatch = queue index). */
  notifyAddress(queueIndex: number): NotifyAddress {
    return { offset: REG.QueueNotify, length: 4, datamatch: queueIndex };
  }

  /** InterruptStatus (read) and InterruptACK (write), served from the shared cell. */
  sharedRegisters(): readonly SharedRegister[] {
    return [
      { offset: REG.InterruptStatus, size: 4, kind: 'load', cell: this.isr },
      { offset: REG.InterruptACK, size: 4, kind: 'clear-bits', cell: this.isr, keep: this.sticky },
      ...CELL_REGS.map((offset, i): SharedRegister => ({ offset, size: 4, kind: 'load', cell: new Int32Array(this.cells.buffer, i * 4, 1) })),
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
    if (!this.writeRegister(offset, v)) this.counters.errors++;
    this.syncCells();
  }

  private readRegister(offset: number): number | undefined {
    const q = this.queues[this.queueSel];
    switch (offset) {
      case REG.MagicValue: return MMIO_MAGIC;
      case REG.Version: return MMIO_VERSION;
      case REG.DeviceID: return this.device.deviceType;
      case REG.VendorID: return VENDOR_ID;
      case REG.DeviceFeatures:
        return this.deviceFeaturesSel < MAX_FEATURE_WORDS ? Number((this.offered >> BigInt(32 * this.deviceFeaturesSel)) & 0xffffffffn) : 0;
      case REG.QueueNumMax: return q ? q.maxSize : 0;
      case REG.QueueNum: return q ? q.size : 0;
      case REG.QueueReady: return q?.ready ? 1 : 0;
      case REG.InterruptStatus: return Atomics.load(this.isr, 0);
      case REG.Status: return this.status;
      case REG.QueueDescLow: return q ? q.descAddr % 2 ** 32 : 0;
      case REG.QueueDescHigh: return q ? Math.floor(q.descAddr / 2 ** 32) : 0;
      case REG.QueueDriverLow: return q ? q.availAddr % 2 ** 32 : 0;
      case REG.QueueDriverHigh: return q ? Math.floor(q.availAddr / 2 ** 32) : 0;
      case REG.QueueDeviceLow: return q ? q.usedAddr % 2 ** 32 : 0;
      case REG.QueueDeviceHigh: return q ? Math.floor(q.usedAddr / 2 ** 32) : 0;
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
        this.deviceFeaturesSel = v;
        return true;
      case REG.DriverFeaturesSel:
        this.driverFeaturesSel = v;
        return true;
      case REG.DriverFeatures: {
        // Only between DRIVER and FEATURES_OK (§3.1.1).
        if (!(this.status & STATUS.DRIVER) || this.status & STATUS.FEATURES_OK) return false;
        if (this.driverFeaturesSel >= MAX_FEATURE_WORDS) return v === 0;
        const shift = BigInt(32 * this.driverFeaturesSel);
        this.driverFeatures = (this.driverFeatures & ~(0xffffffffn << shift)) | (BigInt(v) << shift);
        return true;
      }
      case REG.QueueSel:
        // Selecting a queue that does not exist is legal: QueueNumMax then reads 0.
        this.queueSel = v;
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
        const q = this.queues[this.queueSel];
        if (!q) return false;
        if (v === 0) {
          q.ready = false;
          return true;
        }
        if (!this.queueConfigurable() || v !== 1) return false;
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

  private writeQueueConfig(offset: number, v: number): boolean {
    const q = this.queues[this.queueSel];
    if (!q || q.ready || !this.queueConfigurable()) return false;
    const lo = (a: number) => Math.floor(a / 2 ** 32) * 2 ** 32 + v;
    const hi = (a: number) => u64ToSafe(a % 2 ** 32, v);
    // Addresses beyond 2^53 can never be RAM: store an invalid value so activation fails.
    const setHi = (a: number) => hi(a) ?? Number.MAX_SAFE_INTEGER;
    switch (offset) {
      case REG.QueueNum: q.size = v; break;
      case REG.QueueDescLow: q.descAddr = lo(q.descAddr); break;
      case REG.QueueDescHigh: q.descAddr = setHi(q.descAddr); break;
      case REG.QueueDriverLow: q.availAddr = lo(q.availAddr); break;
      case REG.QueueDriverHigh: q.availAddr = setHi(q.availAddr); break;
      case REG.QueueDeviceLow: q.usedAddr = lo(q.usedAddr); break;
      case REG.QueueDeviceHigh: q.usedAddr = setHi(q.usedAddr); break;
    }
    return true;
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
      const ok = (this.driverFeatures & ~this.offered) === 0n && (this.driverFeatures & VIRTIO_F_VERSION_1) !== 0n;
      if (!ok) {
        this.status = v & ~STATUS.FEATURES_OK;
        return false;
      }
      this.acked = this.driverFeatures;
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
    this.counters.resets++;
    this.status = 0;
    this.activated = false;
    this.deviceFeaturesSel = this.driverFeaturesSel = this.queueSel = 0;
    this.driverFeatures = this.acked = 0n;
    Atomics.store(this.isr, 0, this.sticky);
    for (const q of this.queues) q.reset();
    this.guard(() => this.device.reset());
  }

  // The irqfd is edge-triggered, so the line behaves like QEMU's level model (high while
  // InterruptStatus has bits): a bit that is still set means the driver has not yet read and
  // acked it, and Linux's vm_interrupt() acks before it walks every queue, so it will see
  // what was just added without another edge. Each skipped edge saves an eventfd write here
  // and a guest interrupt there (an exit, an EOI, the ISR read and ACK); under load the guest
  // takes its interrupt slower than the device produces used buffers.
  private interrupt(bit: number): void {
    if (Atomics.or(this.isr, 0, bit) & bit) {
      this.counters.interruptsCoalesced++;
      return;
    }
    this.counters.interrupts++;
    this.irq.trigger();
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
