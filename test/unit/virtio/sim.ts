// Test support for the virtio tests: a fake guest memory with an MMIO hole, a simulated
// virtio-mmio driver that behaves like Linux's (drivers/virtio/virtio_mmio.c + virtio_ring.c),
// and an echo device. Test-only; nothing in devices/ may import it.

import { GuestMemory } from '../../../devices/memory';
import type { IrqLine } from '../../../devices/irq';
import { VIRTIO_F_INDIRECT_DESC, VIRTIO_F_RING_EVENT_IDX, VIRTIO_F_VERSION_1, type VirtioDevice, type VirtioDeviceContext } from '../../../devices/virtio/device';
import { MmioTransport, REG, STATUS } from '../../../devices/virtio/mmio';
import { VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE } from '../../../devices/virtio/queue';

// Fake guest physical layout: RAM, a hole (backed, filled with a canary, but not RAM), RAM.
export const LOW_RAM_END = 0x40000;
export const HOLE_START = LOW_RAM_END;
export const HOLE_END = 0x50000;
export const HIGH_RAM_END = 0x80000;
const CANARY = 0xa5;

export interface FakeMemory {
  readonly mem: GuestMemory;
  /** The whole backing store, gpa == offset (the hole included). */
  readonly backing: Uint8Array;
  /** True while nothing wrote into the hole's backing bytes. */
  holeIntact(): boolean;
  /** Whether a view lies inside one RAM region of this memory. */
  inRam(v: Uint8Array): boolean;
}

/** `backing` (HIGH_RAM_END bytes) lets a test choose where the bytes live, e.g. mmap'd for another thread. */
export function fakeMemory(backing = new Uint8Array(HIGH_RAM_END)): FakeMemory {
  backing.fill(CANARY, HOLE_START, HOLE_END);
  const mem = new GuestMemory([
    { gpa: 0, bytes: backing.subarray(0, LOW_RAM_END) },
    { gpa: HOLE_END, bytes: backing.subarray(HOLE_END, HIGH_RAM_END) },
  ]);
  return {
    mem,
    backing,
    holeIntact: () => backing.subarray(HOLE_START, HOLE_END).every((b) => b === CANARY),
    inRam: (v) => {
      if (v.buffer !== backing.buffer) return false;
      const start = v.byteOffset - backing.byteOffset;
      const end = start + v.byteLength;
      return (start >= 0 && end <= LOW_RAM_END) || (start >= HOLE_END && end <= HIGH_RAM_END);
    },
  };
}

export class CountingIrq implements IrqLine {
  count = 0;
  trigger(): void {
    this.count++;
  }
}

/**
 * Echo device: queue 0 takes chains and copies their readable bytes into their writable
 * buffers (as much as fits), then returns them. Queue 1 exists but is never used.
 * Config space: 8 bytes, a u32 magic then a u32 the driver may write.
 */
export class EchoDevice implements VirtioDevice {
  readonly deviceType = 0x7e;
  readonly queueMaxSizes: readonly number[];
  readonly deviceFeatures = 1n << 0n;
  readonly config = new Uint8Array([0x78, 0x56, 0x34, 0x12, 0, 0, 0, 0]);
  ctx: VirtioDeviceContext | undefined;
  resets = 0;
  echoed = 0;
  /** When set, the device stops after each chain and puts it back once (exercises undoPop). */
  undoOnce = false;

  constructor(queueSize = 256) {
    this.queueMaxSizes = [queueSize, queueSize];
  }

  readConfig(offset: number, data: Uint8Array): void {
    data.fill(0);
    data.set(this.config.subarray(offset, offset + data.length));
  }
  writeConfig(offset: number, data: Uint8Array): void {
    if (offset >= 4 && offset + data.length <= 8) this.config.set(data, offset);
  }
  activate(ctx: VirtioDeviceContext): void {
    this.ctx = ctx;
  }
  notify(queueIndex: number): void {
    const ctx = this.ctx;
    if (!ctx || queueIndex !== 0) return;
    const q = ctx.queues[0]!;
    for (let chain = q.pop(); chain; chain = q.pop()) {
      if (this.undoOnce) {
        this.undoOnce = false;
        q.undoPop();
        break;
      }
      const written = chain.writable.writeAt(chain.readable.copyOut(0, chain.readable.length));
      q.addUsed(chain.head, written);
      this.echoed++;
    }
    ctx.signalUsed(0);
  }
  reset(): void {
    this.ctx = undefined;
    this.resets++;
  }
}

export interface Buf {
  addr: number | bigint;
  len: number;
  write?: boolean;
}

export interface QueueLayout {
  size: number;
  desc: number;
  avail: number;
  used: number;
}

/** Rings for a queue of `size` entries starting at `base` (16-byte aligned), as Linux lays them out. */
export function layoutQueue(base: number, size: number): QueueLayout {
  const desc = base;
  const avail = desc + 16 * size;
  const used = (avail + 6 + 2 * size + 3) & ~3;
  return { size, desc, avail, used };
}

/** The driver side of one queue's rings in fake guest memory (no registers). */
export class Rings {
  readonly view: DataView;
  lay: QueueLayout;
  protected availIdx = 0;
  protected lastUsed = 0;
  protected nextFree = 0;

  constructor(
    readonly fake: FakeMemory,
    lay: QueueLayout,
  ) {
    this.view = new DataView(fake.backing.buffer, fake.backing.byteOffset, fake.backing.byteLength);
    this.lay = lay;
  }

  /** Zeroes the rings (the parts in RAM) and forgets the driver-side indexes. */
  clear(lay: QueueLayout = this.lay): void {
    this.lay = lay;
    const ram = (a: number, n: number) => this.fake.mem.slice(a, n)?.fill(0);
    ram(lay.desc, 16 * lay.size);
    ram(lay.avail, 6 + 2 * lay.size);
    ram(lay.used, 6 + 8 * lay.size);
    this.availIdx = this.lastUsed = this.nextFree = 0;
  }

  // Raw ring access (the driver side), for well-formed and malicious rings alike.
  writeDesc(table: number, i: number, addr: number | bigint, len: number, flags: number, next = 0): void {
    const at = table + 16 * i;
    this.view.setBigUint64(at, BigInt(addr), true);
    this.view.setUint32(at + 8, len, true);
    this.view.setUint16(at + 12, flags, true);
    this.view.setUint16(at + 14, next, true);
  }
  /**
   * Puts `head` in the next avail slot and publishes it (without notifying); `publish` false
   * leaves avail idx alone (setAvailIdx(published) publishes many at once).
   */
  pushAvail(head: number, publish = true): void {
    const lay = this.lay;
    this.view.setUint16(lay.avail + 4 + 2 * (this.availIdx % lay.size), head, true);
    this.availIdx = (this.availIdx + 1) & 0xffff;
    if (publish) this.view.setUint16(lay.avail + 2, this.availIdx, true);
  }
  /** The avail idx the driver last published. */
  get published(): number {
    return this.availIdx;
  }
  setAvailIdx(v: number): void {
    this.availIdx = v & 0xffff;
    this.view.setUint16(this.lay.avail + 2, this.availIdx, true);
  }
  setAvailFlags(v: number): void {
    this.view.setUint16(this.lay.avail, v, true);
  }
  setUsedEvent(v: number): void {
    this.view.setUint16(this.lay.avail + 4 + 2 * this.lay.size, v & 0xffff, true);
  }
  get availEvent(): number {
    return this.view.getUint16(this.lay.used + 4 + 8 * this.lay.size, true);
  }
  get usedIdx(): number {
    return this.view.getUint16(this.lay.used + 2, true);
  }
  /** Writes a chain into free descriptors (a ring allocator like virtqueue_add_split), returns its head. */
  addChain(bufs: readonly Buf[]): number {
    const lay = this.lay;
    const head = this.nextFree;
    bufs.forEach((b, k) => {
      const i = (head + k) % lay.size;
      const last = k === bufs.length - 1;
      this.writeDesc(lay.desc, i, b.addr, b.len, (b.write ? VIRTQ_DESC_F_WRITE : 0) | (last ? 0 : VIRTQ_DESC_F_NEXT), (i + 1) % lay.size);
    });
    this.nextFree = (head + bufs.length) % lay.size;
    return head;
  }

  /** Writes `bufs` into an indirect table at `table` and one descriptor pointing at it; returns the head. */
  addIndirect(table: number, bufs: readonly Buf[]): number {
    const lay = this.lay;
    bufs.forEach((b, k) => {
      const last = k === bufs.length - 1;
      this.writeDesc(table, k, b.addr, b.len, (b.write ? VIRTQ_DESC_F_WRITE : 0) | (last ? 0 : VIRTQ_DESC_F_NEXT), k + 1);
    });
    const head = this.nextFree;
    this.writeDesc(lay.desc, head, table, 16 * bufs.length, VIRTQ_DESC_F_INDIRECT);
    this.nextFree = (head + 1) % lay.size;
    return head;
  }

  /** New used entries since the last call. */
  takeUsed(): { id: number; len: number }[] {
    const lay = this.lay;
    const out: { id: number; len: number }[] = [];
    const idx = this.usedIdx;
    while (this.lastUsed !== idx) {
      const at = lay.used + 4 + 8 * (this.lastUsed % lay.size);
      out.push({ id: this.view.getUint32(at, true), len: this.view.getUint32(at + 4, true) });
      this.lastUsed = (this.lastUsed + 1) & 0xffff;
    }
    return out;
  }
}

/** A driver talking to one transport through its registers, like Linux's virtio_mmio. */
export class SimDriver extends Rings {
  features = 0n;
  /** How a register access reaches the transport: directly unless a test routes it (a vCPU thread's path). */
  io: (offset: number, data: Uint8Array, isWrite: boolean) => void = (offset, data, isWrite) =>
    isWrite ? this.t.write(offset, data) : this.t.read(offset, data);

  constructor(
    readonly t: MmioTransport,
    fake: FakeMemory,
  ) {
    super(fake, layoutQueue(0, 1));
  }

  r32(off: number): number {
    const d = new Uint8Array(4);
    this.io(off, d, false);
    return new DataView(d.buffer).getUint32(0, true);
  }
  w32(off: number, v: number): void {
    const d = new Uint8Array(4);
    new DataView(d.buffer).setUint32(0, v >>> 0, true);
    this.io(off, d, true);
  }
  get status(): number {
    return this.r32(REG.Status);
  }

  /** vm_reset + virtio_dev_probe up to FEATURES_OK; returns whether the device accepted the features. */
  negotiate(want: bigint = VIRTIO_F_VERSION_1 | VIRTIO_F_RING_EVENT_IDX | VIRTIO_F_INDIRECT_DESC | 1n): boolean {
    if (this.r32(REG.MagicValue) !== 0x74726976 || this.r32(REG.Version) !== 2) throw new Error('not a virtio-mmio v2 device');
    this.w32(REG.Status, 0);
    if (this.status !== 0) throw new Error('reset did not complete');
    this.w32(REG.Status, STATUS.ACKNOWLEDGE);
    this.w32(REG.Status, STATUS.ACKNOWLEDGE | STATUS.DRIVER);
    this.w32(REG.DeviceFeaturesSel, 1);
    let offered = BigInt(this.r32(REG.DeviceFeatures)) << 32n;
    this.w32(REG.DeviceFeaturesSel, 0);
    offered |= BigInt(this.r32(REG.DeviceFeatures));
    this.features = offered & want;
    this.writeDriverFeatures(this.features);
    this.w32(REG.Status, this.status | STATUS.FEATURES_OK);
    return (this.status & STATUS.FEATURES_OK) !== 0;
  }

  writeDriverFeatures(f: bigint): void {
    this.w32(REG.DriverFeaturesSel, 1);
    this.w32(REG.DriverFeatures, Number(f >> 32n));
    this.w32(REG.DriverFeaturesSel, 0);
    this.w32(REG.DriverFeatures, Number(f & 0xffffffffn));
  }

  /** vm_setup_vq: select, check, program the addresses, enable. */
  setupQueue(index: number, lay: QueueLayout): void {
    this.w32(REG.QueueSel, index);
    if (this.r32(REG.QueueReady) !== 0) throw new Error('queue already ready');
    const max = this.r32(REG.QueueNumMax);
    if (max === 0 || lay.size > max) throw new Error(`queue ${index}: size ${lay.size} > max ${max}`);
    if (index === 0) this.clear(lay);
    this.w32(REG.QueueNum, lay.size);
    const w64 = (lo: number, v: number) => {
      this.w32(lo, v % 2 ** 32);
      this.w32(lo + 4, Math.floor(v / 2 ** 32));
    };
    w64(REG.QueueDescLow, lay.desc);
    w64(REG.QueueDriverLow, lay.avail);
    w64(REG.QueueDeviceLow, lay.used);
    this.w32(REG.QueueReady, 1);
  }

  driverOk(): void {
    this.w32(REG.Status, this.status | STATUS.DRIVER_OK);
  }

  notify(queue = 0): void {
    this.w32(REG.QueueNotify, queue);
  }

  /** Submits a chain and notifies. */
  submit(bufs: readonly Buf[]): number {
    const head = this.addChain(bufs);
    this.pushAvail(head);
    this.notify();
    return head;
  }

  /** The whole bring-up: negotiate, queue 0 at `base`, DRIVER_OK. */
  bringUp(base: number, size = 16, want?: bigint): void {
    if (!this.negotiate(want)) throw new Error('FEATURES_OK refused');
    this.setupQueue(0, layoutQueue(base, size));
    this.driverOk();
  }

  /** Interrupt handler (vm_interrupt): read status, ack it, return it. */
  interrupt(): number {
    const s = this.r32(REG.InterruptStatus);
    this.w32(REG.InterruptACK, s);
    return s;
  }
}

// Malformed chains and ring states for a queue of size 8 at any layout: each must make pop()
// throw a QueueError matching `reason`. `indirect: false` cases need INDIRECT_DESC not negotiated.
export const DATA = 0x8000; // data buffers
export const TABLE = 0x6000; // indirect tables
const R = 0;
const N = VIRTQ_DESC_F_NEXT;
const I = VIRTQ_DESC_F_INDIRECT;
export interface MaliciousChain {
  name: string;
  reason: RegExp;
  indirect?: false;
  arrange(d: Rings, lay: QueueLayout): void;
}
export const MALICIOUS_CHAINS: MaliciousChain[] = [
  { name: 'avail idx more than size ahead', reason: /ahead/, arrange: (d) => { d.setAvailIdx(d.published + 9); } },
  { name: 'avail idx far behind (looks 65535 ahead)', reason: /ahead/, arrange: (d) => { d.setAvailIdx(d.published - 1); } },
  { name: 'head index out of range', reason: /head descriptor 8 is out of range/, arrange: (d) => { d.pushAvail(8); } },
  { name: 'next index out of range', reason: /next 200 is out of range/, arrange: (d, lay) => { d.writeDesc(lay.desc, 0, DATA, 1, N, 200); d.pushAvail(0); } },
  { name: 'self loop', reason: /longer than the queue size/, arrange: (d, lay) => { d.writeDesc(lay.desc, 3, DATA, 1, N, 3); d.pushAvail(3); } },
  { name: 'two-descriptor loop', reason: /longer than the queue size/, arrange: (d, lay) => { d.writeDesc(lay.desc, 0, DATA, 1, N, 1); d.writeDesc(lay.desc, 1, DATA, 1, N, 0); d.pushAvail(0); } },
  { name: 'buffer in the hole', reason: /not in guest RAM/, arrange: (d) => { d.pushAvail(d.addChain([{ addr: HOLE_START + 0x100, len: 4 }])); } },
  { name: 'buffer running from RAM into the hole', reason: /not in guest RAM/, arrange: (d) => { d.pushAvail(d.addChain([{ addr: HOLE_START - 4, len: 8, write: true }])); } },
  { name: 'buffer past the end of RAM', reason: /not in guest RAM/, arrange: (d) => { d.pushAvail(d.addChain([{ addr: HIGH_RAM_END - 1, len: 2 }])); } },
  { name: 'huge length', reason: /not in guest RAM/, arrange: (d) => { d.pushAvail(d.addChain([{ addr: DATA, len: 0xffffffff, write: true }])); } },
  { name: 'address whose end overflows 2^64', reason: /beyond 2\^53/, arrange: (d) => { d.pushAvail(d.addChain([{ addr: 0xfffffffffffffff0n, len: 0x20 }])); } },
  { name: 'readable after writable', reason: /readable buffer after a writable/, arrange: (d) => { d.pushAvail(d.addChain([{ addr: DATA, len: 4, write: true }, { addr: DATA, len: 4 }])); } },
  { name: 'indirect without the feature', reason: /INDIRECT without/, indirect: false, arrange: (d) => { d.pushAvail(d.addIndirect(TABLE, [{ addr: DATA, len: 4 }])); } },
  { name: 'indirect with NEXT', reason: /INDIRECT together with NEXT/, arrange: (d, lay) => { d.writeDesc(TABLE, 0, DATA, 4, R); d.writeDesc(lay.desc, 0, TABLE, 16, I | N, 1); d.pushAvail(0); } },
  { name: 'indirect length not a multiple of 16', reason: /multiple of 16/, arrange: (d, lay) => { d.writeDesc(lay.desc, 0, TABLE, 24, I); d.pushAvail(0); } },
  { name: 'indirect length zero', reason: /multiple of 16/, arrange: (d, lay) => { d.writeDesc(lay.desc, 0, TABLE, 0, I); d.pushAvail(0); } },
  { name: 'indirect table in the hole', reason: /indirect table .* not in guest RAM/, arrange: (d, lay) => { d.writeDesc(lay.desc, 0, HOLE_START, 32, I); d.pushAvail(0); } },
  { name: 'indirect table longer than the queue', reason: /longer than the queue size/, arrange: (d, lay) => { d.writeDesc(lay.desc, 0, TABLE, 16 * 9, I); d.pushAvail(0); } },
  { name: 'direct + indirect longer than the queue', reason: /longer than the queue size/, arrange: (d, lay) => {
    d.writeDesc(lay.desc, 0, DATA, 1, N, 1); d.writeDesc(lay.desc, 1, DATA, 1, N, 2); d.writeDesc(lay.desc, 2, TABLE, 16 * 7, I); d.pushAvail(0);
  } },
  { name: 'nested indirect', reason: /nested indirect/, arrange: (d, lay) => { d.writeDesc(TABLE, 0, TABLE + 0x100, 16, I); d.writeDesc(lay.desc, 0, TABLE, 16, I); d.pushAvail(0); } },
  { name: 'loop inside an indirect table', reason: /longer than the queue size/, arrange: (d, lay) => {
    d.writeDesc(TABLE, 0, DATA, 1, N, 1); d.writeDesc(TABLE, 1, DATA, 1, N, 0); d.writeDesc(lay.desc, 0, TABLE, 32, I); d.pushAvail(0);
  } },
  { name: 'indirect next out of range', reason: /next 2 is out of range \(2 entries\)/, arrange: (d, lay) => {
    d.writeDesc(TABLE, 0, DATA, 1, N, 1); d.writeDesc(TABLE, 1, DATA, 1, N, 2); d.writeDesc(lay.desc, 0, TABLE, 32, I); d.pushAvail(0);
  } },
  { name: 'indirect buffer in the hole', reason: /indirect descriptor 0 .* not in guest RAM/, arrange: (d) => { d.pushAvail(d.addIndirect(TABLE, [{ addr: HOLE_START + 8, len: 4 }])); } },
  { name: 'indirect readable after writable', reason: /readable buffer after a writable/, arrange: (d) => {
    d.pushAvail(d.addIndirect(TABLE, [{ addr: DATA, len: 4, write: true }, { addr: DATA, len: 4 }]));
  } },
];
