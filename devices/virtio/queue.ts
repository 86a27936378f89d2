// Split virtqueue (virtio 1.x §2.7), device side. This module owns the ring layout and every
// check on what the driver put into the rings; it must not know about the transport registers
// (mmio.ts) or what a device does with the buffers.
//
// Everything read from guest memory is hostile. All guest addresses go through
// GuestMemory.slice (never outside RAM), every loop is bounded by the queue size, and the only
// exception that leaves this module is QueueError (the transport turns it into NEEDS_RESET).
// One owner thread uses a queue; the vCPU threads write the rings concurrently, so ring
// fields are reread from memory on every use, never cached.

import { u64ToSafe, type GuestMemory } from '../memory';
import { IoVecBuffer } from './iovec';
import { TsvmmError } from '../../lib/errors';

// Ring layout (§2.7.5–2.7.8): the only place these offsets live.
const DESC_SIZE = 16; // addr u64, len u32, flags u16, next u16
const DESC_ALIGN = 16;
const AVAIL_ALIGN = 2; // flags u16, idx u16, ring[size] u16, used_event u16
const USED_ALIGN = 4; // flags u16, idx u16, ring[size] {id u32, len u32}, avail_event u16
const USED_ELEM_SIZE = 8;
const availBytes = (size: number) => 6 + 2 * size;
const usedBytes = (size: number) => 6 + USED_ELEM_SIZE * size;

export const VIRTQ_DESC_F_NEXT = 1;
export const VIRTQ_DESC_F_WRITE = 2;
export const VIRTQ_DESC_F_INDIRECT = 4;
export const VIRTQ_AVAIL_F_NO_INTERRUPT = 1;
export const VIRTQ_USED_F_NO_NOTIFY = 1;
/** Largest queue size the split ring allows (§2.7). */
export const MAX_QUEUE_SIZE = 32768;

/** What the driver did wrong: a loop, an address outside RAM, a bad ring index, ... */
export class QueueError extends TsvmmError {}

const hex = (n: number) => `0x${n.toString(16)}`;

/** One available request: the head index plus its buffers, already bounds-checked. */
export class DescriptorChain {
  /** Driver->device buffers, in order (views into guest memory). */
  readonly readable = new IoVecBuffer();
  /** Device->driver buffers, in order. */
  readonly writable = new IoVecBuffer();

  constructor(
    /** Index of the head descriptor (goes back in the used ring). */
    public head: number,
  ) {}

  /** Empties the chain for reuse as head `head` (Queue.pop's `into`). */
  reuse(head: number): this {
    this.head = head;
    this.readable.clear();
    this.writable.clear();
    return this;
  }
}

interface Rings {
  readonly desc: DataView;
  readonly avail: DataView;
  readonly used: DataView;
}

function view(mem: GuestMemory, gpa: number, len: number, what: string, align: number): DataView {
  const v = mem.slice(gpa, len);
  if (!v) throw new QueueError(`${what} ${hex(gpa)}+${hex(len)} is not in guest RAM`);
  if (gpa % align !== 0) throw new QueueError(`${what} at ${hex(gpa)} is not ${align}-byte aligned`);
  return new DataView(v.buffer, v.byteOffset, v.byteLength);
}

// The driver writes avail idx, then (after a full barrier) reads avail_event; we write
// avail_event, then read avail idx. Without a barrier on our side too, x86's store buffer may
// let our read pass our write, both sides miss each other, and a queue whose device waits for
// a kick stalls. Guest memory is not a SharedArrayBuffer, so the barrier is a locked RMW on
// one of our own (V8 emits `lock xadd` on x86-64): it orders every store before it.
const fenceCell = new Int32Array(new SharedArrayBuffer(4));
function storeLoadFence(): void {
  Atomics.add(fenceCell, 0, 0);
}

/** An error naming the descriptor being parsed at the time of the throw (no closure per chain). */
function badDescriptor(inIndirect: boolean, index: number, head: number, what: string): QueueError {
  return new QueueError(`${inIndirect ? `indirect descriptor ${index} (chain ${head})` : `descriptor ${index}`}: ${what}`);
}

export class Queue {
  // Configuration, written by the transport (or a test) while `ready` is false.
  /** QueueNum: the size the driver chose (must be a power of two ≤ maxSize). */
  size: number;
  descAddr = 0;
  availAddr = 0;
  usedAddr = 0;
  /** VIRTIO_F_RING_EVENT_IDX negotiated: use used_event / avail_event. */
  eventIdx = false;
  /** VIRTIO_F_INDIRECT_DESC negotiated: indirect descriptors allowed. */
  indirect = false;

  private isReady = false;
  private rings: Rings | undefined;
  /** Our copy of the avail index: the next ring slot to consume (u16, wraps). */
  private nextAvail = 0;
  /** Next used ring slot to fill (u16, wraps); also the used idx we publish. */
  private nextUsed = 0;
  /** Used idx at the last needsNotification() call, and how many were added since. */
  private signalledUsed = 0;
  private addedSinceSignal = 0;
  private canUndo = false;

  constructor(
    private readonly mem: GuestMemory,
    readonly maxSize: number,
  ) {
    if (!Number.isInteger(maxSize) || maxSize < 1 || maxSize > MAX_QUEUE_SIZE || (maxSize & (maxSize - 1)) !== 0) {
      throw new RangeError(`queue max size ${maxSize} is not a power of two in 1..${MAX_QUEUE_SIZE}`);
    }
    this.size = maxSize;
  }

  /** QueueReady. Setting it makes pop() map the rings on first use (checking the configuration). */
  get ready(): boolean {
    return this.isReady;
  }
  set ready(v: boolean) {
    this.isReady = v;
    this.rings = undefined;
  }

  /**
   * Checks the configuration (size, ring addresses in RAM and aligned) and maps the rings.
   * The transport calls this at DRIVER_OK so a bad setup fails early; pop() calls it lazily.
   */
  activate(): void {
    if (!this.isReady) throw new QueueError('queue is not ready');
    this.rings = this.map();
  }

  /** Back to the power-on state (driver wrote 0 to Status). */
  reset(): void {
    this.size = this.maxSize;
    this.descAddr = this.availAddr = this.usedAddr = 0;
    this.eventIdx = this.indirect = false;
    this.isReady = false;
    this.rings = undefined;
    this.nextAvail = this.nextUsed = this.signalledUsed = this.addedSinceSignal = 0;
    this.canUndo = false;
  }

  private map(): Rings {
    const n = this.size;
    if (!Number.isInteger(n) || n < 1 || n > this.maxSize || (n & (n - 1)) !== 0) {
      throw new QueueError(`queue size ${n} is not a power of two in 1..${this.maxSize}`);
    }
    return {
      desc: view(this.mem, this.descAddr, n * DESC_SIZE, 'descriptor table', DESC_ALIGN),
      avail: view(this.mem, this.availAddr, availBytes(n), 'available ring', AVAIL_ALIGN),
      used: view(this.mem, this.usedAddr, usedBytes(n), 'used ring', USED_ALIGN),
    };
  }

  private mapped(): Rings | undefined {
    if (!this.isReady) return undefined;
    return (this.rings ??= this.map());
  }

  /**
   * Next available chain, undefined when the ring is empty. Throws QueueError on a malformed
   * chain or ring. With `into`, that chain object is emptied and filled instead of a new one:
   * for a device that is done with each chain before it pops the next (no per-packet allocation).
   */
  pop(into?: DescriptorChain): DescriptorChain | undefined {
    this.canUndo = false;
    const r = this.mapped();
    if (!r) return undefined;
    const n = this.size;
    let availIdx = r.avail.getUint16(2, true);
    let pending = (availIdx - this.nextAvail) & 0xffff;
    if (pending === 0) {
      if (!this.eventIdx) return undefined;
      // Only an empty ring asks for a notification (on the next buffer), as vhost does: while
      // the device is still taking chains, avail_event stays behind and the driver does not
      // kick (a kick is a VM exit). Every device stops popping either at an empty ring or with
      // its own way back (a batch continued on the next turn, a host stream ready again).
      // Then look again: the driver may have added a buffer after our first read but checked
      // avail_event before our write.
      r.used.setUint16(4 + USED_ELEM_SIZE * n, this.nextAvail, true);
      storeLoadFence();
      availIdx = r.avail.getUint16(2, true);
      pending = (availIdx - this.nextAvail) & 0xffff;
      if (pending === 0) return undefined;
    }
    if (pending > n) throw new QueueError(`available index ${availIdx} is ${pending} entries ahead of ${this.nextAvail} (queue size ${n})`);
    const head = r.avail.getUint16(4 + 2 * (this.nextAvail & (n - 1)), true);
    // Consume the slot before parsing: a device that catches the error must not spin on it.
    this.nextAvail = (this.nextAvail + 1) & 0xffff;
    const chain = this.parse(r.desc, head, into);
    this.canUndo = true;
    return chain;
  }

  /** Puts the chain back so the next pop() returns it again (device had no room to process it now). */
  undoPop(): void {
    if (!this.canUndo) return;
    this.canUndo = false;
    this.nextAvail = (this.nextAvail - 1) & 0xffff;
  }

  private parse(table: DataView, head: number, into: DescriptorChain | undefined): DescriptorChain {
    const n = this.size;
    if (head >= n) throw new QueueError(`head descriptor ${head} is out of range (queue size ${n})`);
    const chain = into ? into.reuse(head) : new DescriptorChain(head);
    let count = 0; // descriptors visited, direct and indirect: bounded by the queue size

    let desc = table;
    let entries = n;
    let index = head;
    let inIndirect = false;
    for (;;) {
      if (++count > n) throw new QueueError(`descriptor chain from ${head} is longer than the queue size ${n} (loop?)`);
      const at = index * DESC_SIZE;
      const addr = u64ToSafe(desc.getUint32(at, true), desc.getUint32(at + 4, true));
      const len = desc.getUint32(at + 8, true);
      const flags = desc.getUint16(at + 12, true);
      const next = desc.getUint16(at + 14, true);
      if (addr === undefined) throw badDescriptor(inIndirect, index, head, `address beyond 2^53`);

      if (flags & VIRTQ_DESC_F_INDIRECT) {
        if (!this.indirect) throw badDescriptor(inIndirect, index, head, `INDIRECT without VIRTIO_F_INDIRECT_DESC`);
        if (inIndirect) throw badDescriptor(inIndirect, index, head, `nested indirect table`);
        if (flags & VIRTQ_DESC_F_NEXT) throw badDescriptor(inIndirect, index, head, `INDIRECT together with NEXT`);
        if (len === 0 || len % DESC_SIZE !== 0) throw badDescriptor(inIndirect, index, head, `indirect table length ${len} is not a non-zero multiple of ${DESC_SIZE}`);
        if (len / DESC_SIZE > n - count + 1) throw badDescriptor(inIndirect, index, head, `indirect table of ${len / DESC_SIZE} entries makes the chain longer than the queue size ${n}`);
        const t = this.mem.slice(addr, len);
        if (!t) throw badDescriptor(inIndirect, index, head, `indirect table ${hex(addr)}+${hex(len)} is not in guest RAM`);
        desc = new DataView(t.buffer, t.byteOffset, t.byteLength);
        entries = len / DESC_SIZE;
        index = 0;
        inIndirect = true;
        count--; // the indirect descriptor itself carries no buffer
        continue;
      }

      const writable = (flags & VIRTQ_DESC_F_WRITE) !== 0;
      if (!writable && chain.writable.segmentCount > 0) throw badDescriptor(inIndirect, index, head, `readable buffer after a writable one`);
      if (!(writable ? chain.writable : chain.readable).append(this.mem, addr, len)) throw badDescriptor(inIndirect, index, head, `buffer ${hex(addr)}+${hex(len)} is not in guest RAM`);
      if (!(flags & VIRTQ_DESC_F_NEXT)) break;
      if (next >= entries) throw badDescriptor(inIndirect, index, head, `next ${next} is out of range (${entries} entries)`);
      index = next;
    }
    // used.len is a u32: a chain whose writable part exceeds it cannot be reported back.
    if (chain.writable.length > 0xffffffff || chain.readable.length > 0xffffffff) {
      throw new QueueError(`descriptor chain from ${head} is longer than 4 GiB`);
    }
    return chain;
  }

  /** Returns a chain to the driver with `written` bytes written into its writable buffers. */
  addUsed(head: number, written: number): void {
    this.canUndo = false;
    const r = this.mapped();
    if (!r) throw new QueueError('addUsed on a queue that is not ready');
    const n = this.size;
    if (!Number.isInteger(head) || head < 0 || head >= n) throw new QueueError(`addUsed: head ${head} out of range (queue size ${n})`);
    if (!Number.isInteger(written) || written < 0 || written > 0xffffffff) throw new QueueError(`addUsed: length ${written} is not a u32`);
    const at = 4 + USED_ELEM_SIZE * (this.nextUsed & (n - 1));
    r.used.setUint32(at, head, true);
    r.used.setUint32(at + 4, written, true);
    this.nextUsed = (this.nextUsed + 1) & 0xffff;
    // The element must be visible before the index (x86 keeps store order; one JS thread writes).
    r.used.setUint16(2, this.nextUsed, true);
    this.addedSinceSignal++;
  }

  /** Whether the driver wants an interrupt for what was added since the last call (EVENT_IDX / NO_INTERRUPT aware). */
  needsNotification(): boolean {
    const r = this.mapped();
    const old = this.signalledUsed;
    const added = this.addedSinceSignal;
    this.signalledUsed = this.nextUsed;
    this.addedSinceSignal = 0;
    if (!r || added === 0) return false;
    if (!this.eventIdx) return (r.avail.getUint16(0, true) & VIRTQ_AVAIL_F_NO_INTERRUPT) === 0;
    // A full u16 lap since the last check: the comparison below would be meaningless.
    if (added >= 0x10000) return true;
    const usedEvent = r.avail.getUint16(4 + 2 * this.size, true);
    // vring_need_event (§2.7.10): did used idx pass used_event in (old, new]?
    return ((this.nextUsed - usedEvent - 1) & 0xffff) < ((this.nextUsed - old) & 0xffff);
  }

  /** Used entries published so far (u16, wraps); for the transport's metrics and tests. */
  get usedIndex(): number {
    return this.nextUsed;
  }

  /** Our position in the available ring (u16, wraps). */
  get availIndex(): number {
    return this.nextAvail;
  }

  /**
   * Both sides of the rings as they stand, for a diagnosis: the driver's avail idx and
   * used_event beside our own positions. Avail ahead of `seen` is work the device has not
   * taken; `used` past `usedEvent` with the interrupt raised is work the driver has not
   * collected. Undefined for a queue that is not ready or whose rings do not map.
   */
  inspect(): QueueState | undefined {
    let r: Rings | undefined;
    try {
      r = this.mapped();
    } catch {
      return undefined;
    }
    if (!r) return undefined;
    return { size: this.size, avail: r.avail.getUint16(2, true), seen: this.nextAvail, used: this.nextUsed, usedEvent: r.avail.getUint16(4 + 2 * this.size, true) };
  }
}

/** Queue.inspect(): u16 ring indices (they wrap). */
export interface QueueState {
  size: number;
  /** The driver's avail idx. */
  avail: number;
  /** How far the device has taken from the avail ring. */
  seen: number;
  /** The used idx the device has published. */
  used: number;
  /** The driver's used_event (meaningful with VIRTIO_F_RING_EVENT_IDX). */
  usedEvent: number;
}
