// The virtio-blk device (virtio 1.x §5.2, device id 2): one request queue, raw images, the
// features RO, FLUSH, SEG_MAX and SIZE_MAX. It owns taking requests off the queue, running them
// against the backend and answering them; it must not parse requests (request.ts) or know files
// (backend.ts).
//
// How a request flows: the driver kicks; the main thread pops chains (at most BATCH per turn),
// parses each into a verdict, and starts its I/O on libuv's pool — preadv/pwritev go straight
// between the image and the guest's buffers, no copy and no blocking. Several requests are in
// flight at once, at most MAX_IN_FLIGHT (the queue size: a driver that reposts descriptors
// before they come back cannot make the device start more). Completions write the status
// byte, go to the used ring in completion order, and share one interrupt per event-loop turn.
//
// A driver reset, or close, ends the device's interest in requests still in flight: their
// completions are dropped (the generation changed); close waits for them, so guest memory is
// never unmapped under a running transfer.

import { QueueError, type DescriptorChain } from '../queue';
import type { VirtioDevice, VirtioDeviceContext } from '../device';
import type { BlockBackend } from './backend';
import { parseBlkRequest, REJECT_REASONS, type BlkRequest, type DriveGeometry, type RejectReason } from './request';
import {
  BlkConfig, BlkId, SECTOR_SIZE, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX, VIRTIO_BLK_S_IOERR,
  VIRTIO_BLK_S_OK, VIRTIO_ID_BLOCK,
} from './spec';

export const QUEUE_SIZE = 256;
/** Requests in flight at once (a guest cannot queue more than the ring holds). */
export const MAX_IN_FLIGHT = QUEUE_SIZE;
/** Chains popped per event-loop turn before yielding to other work. */
export const BATCH = 64;
/** Data buffers per request: the ring minus the header and status descriptors. */
export const SEG_MAX = QUEUE_SIZE - 2;
/** Largest data buffer the device accepts (Linux caps its segments at this). */
export const SIZE_MAX = 1 << 20;

export interface BlockCounters {
  reads: number;
  writes: number;
  flushes: number;
  getIds: number;
  bytesRead: number;
  bytesWritten: number;
  /** Requests answered IOERR/UNSUPP by the parser, by reason. */
  rejected: Record<RejectReason | 'no-status', number>;
  /** Host I/O that failed (answered IOERR). */
  ioErrors: number;
  /** Driver bugs that put the device into NEEDS_RESET. */
  queueErrors: number;
  /** The most requests in flight at once. */
  maxInFlight: number;
}

export function newBlockCounters(): BlockCounters {
  const rejected = Object.fromEntries([...REJECT_REASONS, 'no-status'].map((r) => [r, 0])) as BlockCounters['rejected'];
  return { reads: 0, writes: 0, flushes: 0, getIds: 0, bytesRead: 0, bytesWritten: 0, rejected, ioErrors: 0, queueErrors: 0, maxInFlight: 0 };
}

export interface BlockOptions {
  id: string;
  readOnly: boolean;
  /** Host I/O errors (a failing disk, a shrunk image), rate-limited by the caller. */
  log?: (m: string) => void;
}

export class VirtioBlock implements VirtioDevice {
  readonly deviceType = VIRTIO_ID_BLOCK;
  readonly queueMaxSizes: readonly number[] = [QUEUE_SIZE];
  readonly deviceFeatures: bigint;
  readonly counters = newBlockCounters();
  readonly geometry: DriveGeometry;
  readonly id: string;
  private readonly config: Uint8Array;
  private readonly idBytes: Uint8Array;
  private ctx: VirtioDeviceContext | undefined;
  private broken = false;
  /** Bumped by reset and close: completions of an older generation are dropped. */
  private generation = 0;
  private inFlight = 0;
  private readonly running = new Set<Promise<void>>();
  private processScheduled = false;
  private signalScheduled = false;
  private closed = false;

  constructor(
    readonly backend: BlockBackend,
    private readonly opts: BlockOptions,
  ) {
    this.id = opts.id;
    const sectors = Math.floor(backend.size / SECTOR_SIZE);
    this.geometry = { sectors, readOnly: opts.readOnly, segMax: SEG_MAX, sizeMax: SIZE_MAX };
    this.deviceFeatures = VIRTIO_BLK_F_FLUSH | VIRTIO_BLK_F_SEG_MAX | VIRTIO_BLK_F_SIZE_MAX | (opts.readOnly ? VIRTIO_BLK_F_RO : 0n);
    this.config = BlkConfig.encode({ capacity: BigInt(sectors), sizeMax: SIZE_MAX, segMax: SEG_MAX, blkSize: SECTOR_SIZE });
    this.idBytes = BlkId.encode({ id: new TextEncoder().encode(opts.id) });
  }

  get requestsInFlight(): number {
    return this.inFlight;
  }

  readConfig(offset: number, data: Uint8Array): void {
    for (let i = 0; i < data.length; i++) data[i] = this.config[offset + i] ?? 0;
  }

  writeConfig(): void {
    // Every field tsvmm offers is read-only (writeback toggling needs CONFIG_WCE, not offered).
  }

  activate(ctx: VirtioDeviceContext): void {
    if (this.closed) return;
    this.ctx = ctx;
    this.broken = false;
    this.process();
  }

  notify(queueIndex: number): void {
    if (queueIndex === 0) this.process();
  }

  reset(): void {
    this.ctx = undefined;
    this.broken = false;
    this.generation++;
  }

  /** Stops taking requests, waits for those in flight, closes the image. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.reset();
    while (this.running.size) await Promise.allSettled([...this.running]);
    await this.backend.close();
  }

  /** Pops and starts requests: at most BATCH now, the rest on the next turn. */
  private process(): void {
    const ctx = this.ctx;
    if (!ctx || this.broken) return;
    const q = ctx.queues[0]!;
    let answered = false;
    try {
      for (let n = 0; n < BATCH; n++) {
        if (this.inFlight >= MAX_IN_FLIGHT) return; // a completion brings us back
        const chain = q.pop();
        if (!chain) break;
        if (this.start(chain, parseBlkRequest(chain, this.geometry))) answered = true;
        if (n === BATCH - 1) this.scheduleProcess();
      }
    } catch (e) {
      this.breakOn(e, ctx);
      return;
    } finally {
      if (answered) this.scheduleSignal();
    }
  }

  /** A queue the driver broke (a loop, an address outside RAM) stops the device until reset; anything else is a bug and propagates. */
  private breakOn(e: unknown, ctx: NonNullable<typeof this.ctx>): void {
    if (!(e instanceof QueueError)) throw e;
    this.broken = true;
    this.counters.queueErrors++;
    ctx.needsReset(`virtio-blk ${this.id}: ${e.message}`);
  }

  /** Answers a request at once (true) or starts its I/O (false). */
  private start(chain: DescriptorChain, r: BlkRequest): boolean {
    const c = this.counters;
    switch (r.kind) {
      case 'no-status':
        c.rejected['no-status']++;
        this.ctx!.queues[0]!.addUsed(chain.head, 0);
        return true;
      case 'reject':
        c.rejected[r.reason]++;
        return this.answer(chain.head, r.status, r.code, 1);
      case 'get-id': {
        c.getIds++;
        let at = 0;
        for (const d of r.data) {
          d.set(this.idBytes.subarray(at, at + d.length));
          at += d.length;
        }
        return this.answer(chain.head, r.status, VIRTIO_BLK_S_OK, r.len + 1);
      }
      case 'in':
        c.reads++;
        if (r.len === 0) return this.answer(chain.head, r.status, VIRTIO_BLK_S_OK, 1);
        this.run(chain.head, r.status, r.len + 1, () => this.backend.readv(r.data, r.offset), () => (c.bytesRead += r.len));
        return false;
      case 'out':
        c.writes++;
        if (r.len === 0) return this.answer(chain.head, r.status, VIRTIO_BLK_S_OK, 1);
        this.run(chain.head, r.status, 1, () => this.backend.writev(r.data, r.offset), () => (c.bytesWritten += r.len));
        return false;
      case 'flush':
        c.flushes++;
        // Writes the driver saw complete are in the file: fdatasync makes them durable.
        this.run(chain.head, r.status, 1, () => this.backend.flush(), () => {});
        return false;
    }
  }

  private answer(head: number, status: Uint8Array, code: number, written: number): true {
    status[0] = code;
    this.ctx!.queues[0]!.addUsed(head, written);
    return true;
  }

  private run(head: number, status: Uint8Array, written: number, io: () => Promise<void>, done: () => void): void {
    const gen = this.generation;
    this.inFlight++;
    if (this.inFlight > this.counters.maxInFlight) this.counters.maxInFlight = this.inFlight;
    const p = io().then(
      () => {
        done();
        this.complete(gen, head, status, VIRTIO_BLK_S_OK, written);
      },
      (e: Error) => {
        this.counters.ioErrors++;
        this.opts.log?.(`virtio-blk ${this.id}: host I/O failed: ${e.message}`);
        this.complete(gen, head, status, VIRTIO_BLK_S_IOERR, 1);
      },
    ).finally(() => {
      this.inFlight--;
      this.running.delete(p);
    });
    this.running.add(p);
  }

  private complete(gen: number, head: number, status: Uint8Array, code: number, written: number): void {
    const ctx = this.ctx;
    if (gen !== this.generation || !ctx || this.broken) return;
    const wasFull = this.inFlight >= MAX_IN_FLIGHT;
    try {
      this.answer(head, status, code, written);
    } catch (e) {
      this.breakOn(e, ctx);
      return;
    }
    this.scheduleSignal();
    // Chains left in the ring while the budget was spent get their turn now.
    if (wasFull) this.scheduleProcess();
  }

  /** One interrupt for everything answered in this event-loop turn. */
  private scheduleSignal(): void {
    if (this.signalScheduled) return;
    this.signalScheduled = true;
    setImmediate(() => {
      this.signalScheduled = false;
      if (this.ctx && !this.broken) this.ctx.signalUsed(0);
    });
  }

  private scheduleProcess(): void {
    if (this.processScheduled) return;
    this.processScheduled = true;
    setImmediate(() => {
      this.processScheduled = false;
      this.process();
    });
  }
}
