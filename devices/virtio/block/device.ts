// The virtio-blk device (virtio 1.x §5.2, device id 2): one request queue, raw images, the
// features RO, FLUSH, SEG_MAX and SIZE_MAX. This module is the device's control plane on the
// main thread — features, config space, activation, reset, close, counters; the data path runs
// on the drive's own I/O thread (thread.ts, worker.ts, serve.ts) and never on the main thread.
//
// How a request flows: the driver kicks; KVM signals the queue's ioeventfd, which is the I/O
// thread's (kickFds); the thread wakes, answers every request in the ring (preadv/pwritev
// straight between the image and the guest's buffers), sets InterruptStatus and writes the
// irqfd. One thread wake-up per request, where the pool path it replaced took four (vCPU →
// main → libuv pool thread → main → vCPU: docs/benchmarks.md, virtio-blk).
//
// A driver reset stops the thread — the main thread waits until it has finished the request
// it was in — before the transport clears InterruptStatus and the queue; close ends the thread
// before the image is closed, so guest memory and the file are never released under a transfer.

import type { VirtioDevice, VirtioDeviceContext } from '../device';
import type { HostRegion } from '../../memory';
import type { DriveImage } from './backend';
import type { DriveGeometry } from './request';
import { readCounters, type BlockCounters } from './serve';
import { BlockIoThread } from './thread';
import { BlkConfig, BlkId, SECTOR_SIZE, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX, VIRTIO_ID_BLOCK } from './spec';

export const QUEUE_SIZE = 256;
/** Data buffers per request: the ring minus the header and status descriptors. */
export const SEG_MAX = QUEUE_SIZE - 2;
/** Largest data buffer the device accepts (Linux caps its segments at this). */
export const SIZE_MAX = 1 << 20;

export interface BlockOptions {
  id: string;
  readOnly: boolean;
  /** Guest RAM by host address: the I/O thread maps its own views of it. */
  ram: readonly HostRegion[];
  /** Host I/O errors (a failing disk, a shrunk image), rate-limited by the caller. */
  log?: (m: string) => void;
}

export class VirtioBlock implements VirtioDevice {
  readonly deviceType = VIRTIO_ID_BLOCK;
  readonly queueMaxSizes: readonly number[] = [QUEUE_SIZE];
  readonly deviceFeatures: bigint;
  readonly geometry: DriveGeometry;
  readonly id: string;
  readonly kickFds: readonly number[];
  private readonly config: Uint8Array;
  private readonly thread: BlockIoThread;
  private ctx: VirtioDeviceContext | undefined;
  private closed = false;

  constructor(
    readonly image: DriveImage,
    opts: BlockOptions,
  ) {
    this.id = opts.id;
    const sectors = Math.floor(image.size / SECTOR_SIZE);
    this.geometry = { sectors, readOnly: opts.readOnly, segMax: SEG_MAX, sizeMax: SIZE_MAX };
    this.deviceFeatures = VIRTIO_BLK_F_FLUSH | VIRTIO_BLK_F_SEG_MAX | VIRTIO_BLK_F_SIZE_MAX | (opts.readOnly ? VIRTIO_BLK_F_RO : 0n);
    this.config = BlkConfig.encode({ capacity: BigInt(sectors), sizeMax: SIZE_MAX, segMax: SEG_MAX, blkSize: SECTOR_SIZE });
    // Spawned now, not at DRIVER_OK: a worker's start takes seconds in a nested guest, and the
    // guest's first read (the partition table) follows DRIVER_OK at once.
    this.thread = new BlockIoThread({
      id: opts.id, image, geometry: this.geometry, idBytes: BlkId.encode({ id: new TextEncoder().encode(opts.id) }), queueSize: QUEUE_SIZE, ram: opts.ram,
      log: (m) => opts.log?.(m),
      needsReset: (reason) => this.ctx?.needsReset(reason),
    });
    this.kickFds = [this.thread.kickFd];
  }

  /** The data path's counters, as of now. */
  get counters(): BlockCounters {
    return readCounters(this.thread.counters);
  }

  readConfig(offset: number, data: Uint8Array): void {
    for (let i = 0; i < data.length; i++) data[i] = this.config[offset + i] ?? 0;
  }

  writeConfig(): void {
    // Every field tsvmm offers is read-only (writeback toggling needs CONFIG_WCE, not offered).
  }

  activate(ctx: VirtioDeviceContext): void {
    if (this.closed) return;
    const irqFd = ctx.irq.fd;
    // The VMM's lines are irqfds; one without an eventfd cannot be raised from the I/O thread.
    if (irqFd === undefined) throw new Error(`virtio-blk ${this.id}: the interrupt line has no eventfd`);
    this.ctx = ctx;
    this.thread.run(ctx.queues[0]!, ctx.interruptStatus, irqFd);
  }

  /** A notification that reached the transport as a register write (no ioeventfd matched). */
  notify(queueIndex: number): void {
    if (queueIndex === 0) this.thread.kick();
  }

  reset(): void {
    this.ctx = undefined;
    this.thread.stop();
  }

  /** Ends the I/O thread, then closes the image. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.ctx = undefined;
    try {
      await this.thread.close();
    } finally {
      await this.image.close();
    }
  }
}
