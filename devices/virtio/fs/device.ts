// virtio-fs (virtio 1.2 §5.11) as a vhost-user device: the guest's FUSE requests are served by
// a virtiofsd process reading guest memory itself. This module owns the device's face to the
// transport (device id, config space with the mount tag, queue sizes, features the back-end
// offers) and the hand-over of the rings at DRIVER_OK; it must not parse the rings (the
// back-end does), start the daemon (daemon.ts) or reach KVM (vmm/ wires the eventfds).
//
// Who does what once the driver is up: a guest write to QueueNotify hits a KVM ioeventfd whose
// eventfd is the ring's kick fd in virtiofsd; virtiofsd writes the used ring and signals the
// call fd, which is the device's KVM irqfd. tsvmm sees neither. The transport keeps the
// InterruptStatus "used buffer" bit set for the device's whole life (MmioTransport's
// backendInterrupts), because nothing else would set it before the guest reads it.

import { eventfdSignal } from '../../../kvm/libc';
import { bytes, struct, u32 } from '../../../lib/struct';
import { TRANSPORT_FEATURES } from '../mmio';
import { VIRTIO_ID_FS, type VirtioDevice, type VirtioDeviceContext } from '../device';
import type { RingSetup, SharedRegion, VhostUserFrontend } from '../vhost-user/frontend';
import { VHOST_USER_F_PROTOCOL_FEATURES } from '../vhost-user/messages';
import { VhostUserError } from '../vhost-user/channel';

/** The virtio-fs configuration space (§5.11.4): the mount tag (NUL padded) and the request queue count. */
export const VirtioFsConfig = struct('virtio_fs_config', 40, { tag: bytes(0, 36), numRequestQueues: u32(36) });
export const MAX_TAG_BYTES = 36;

/** Queue 0 is hiprio (FORGET, INTERRUPT), queue 1 the one request queue. */
export const HIPRIO_QUEUE_SIZE = 128;
export const REQUEST_QUEUE_SIZE = 1024;
export const FS_QUEUES = 2;

/** Back-end feature bits that are vhost-user's business, not the driver's. */
const VHOST_F_LOG_ALL = 1n << 26n;
const VIRTIO_F_NOTIFY_ON_EMPTY = 1n << 24n;

/** Where the device finds guest RAM in this process, and the memfds behind it. */
export interface SharedGuestMemory {
  readonly regions: readonly SharedRegion[];
  /** Host virtual address of guest range [gpa, gpa + len), or undefined if it is not inside one region. */
  hostAddress(gpa: number, len: number): bigint | undefined;
}

export interface VirtioFsOptions {
  tag: string;
  frontend: VhostUserFrontend;
  memory: SharedGuestMemory;
  /** One eventfd per queue, registered by vmm/ as the queue's KVM ioeventfd. */
  kickFds: readonly number[];
  /** The device's KVM irqfd. */
  callFd: number;
  /** Errors the device meets outside a guest access (the back-end refused a ring, …). */
  log: (msg: string) => void;
}

export function encodeTag(tag: string): Uint8Array {
  const b = Buffer.from(tag, 'utf8');
  if (b.length === 0 || b.length > MAX_TAG_BYTES) throw new RangeError(`virtio-fs tag '${tag}' must be 1..${MAX_TAG_BYTES} bytes`);
  return b;
}

export class VirtioFs implements VirtioDevice {
  readonly deviceType = VIRTIO_ID_FS;
  readonly queueMaxSizes = [HIPRIO_QUEUE_SIZE, REQUEST_QUEUE_SIZE] as const;
  readonly deviceFeatures: bigint;
  private readonly config: Uint8Array;
  /** Rings are handed over and taken back in order: one step at a time. */
  private ops: Promise<void> = Promise.resolve();
  private running = false;

  constructor(private readonly o: VirtioFsOptions) {
    if (o.kickFds.length !== this.queueMaxSizes.length) throw new RangeError(`virtio-fs needs ${this.queueMaxSizes.length} kick fds`);
    const offered = o.frontend.backend.features;
    const missing = TRANSPORT_FEATURES & ~offered;
    if (missing) throw new VhostUserError(`virtiofsd does not offer the virtio features 0x${missing.toString(16)} tsvmm's transport always offers`);
    const queues = o.frontend.backend.queueNum;
    if (queues !== undefined && queues < this.queueMaxSizes.length) throw new VhostUserError(`virtiofsd serves ${queues} rings, virtio-fs needs ${this.queueMaxSizes.length}`);
    this.deviceFeatures = offered & ~(VHOST_USER_F_PROTOCOL_FEATURES | VHOST_F_LOG_ALL | VIRTIO_F_NOTIFY_ON_EMPTY) & ~TRANSPORT_FEATURES;
    this.config = VirtioFsConfig.encode({ tag: encodeTag(o.tag), numRequestQueues: this.queueMaxSizes.length - 1 });
  }

  /** Resolves when every hand-over or take-back asked for so far is done (tests, shutdown). */
  settled(): Promise<void> {
    return this.ops;
  }

  readConfig(offset: number, data: Uint8Array): void {
    if (offset < 0 || offset >= this.config.length) return;
    data.set(this.config.subarray(offset, offset + data.length));
  }

  writeConfig(): void {
    // Read-only for the driver (§5.11.4).
  }

  activate(ctx: VirtioDeviceContext): void {
    const rings: RingSetup[] = [];
    for (const [index, q] of ctx.queues.entries()) {
      if (!q.ready) continue;
      const desc = this.o.memory.hostAddress(q.descAddr, 16 * q.size);
      const avail = this.o.memory.hostAddress(q.availAddr, 6 + 2 * q.size);
      const used = this.o.memory.hostAddress(q.usedAddr, 6 + 8 * q.size);
      // The transport checked these are RAM when it activated the queues; a miss here would
      // mean two regions meet inside a ring, which the back-end could not map either.
      if (desc === undefined || avail === undefined || used === undefined) {
        ctx.needsReset(`queue ${index}: a ring straddles two memory regions`);
        return;
      }
      rings.push({ index, size: q.size, desc, avail, used, kickFd: this.o.kickFds[index]!, callFd: this.o.callFd });
    }
    const features = ctx.ackedFeatures;
    this.step(async () => {
      await this.o.frontend.start(features, this.o.memory.regions, rings);
      this.running = true;
    }, (e) => ctx.needsReset(`virtiofsd refused the rings: ${e.message}`));
  }

  /** Only reached when a QueueNotify write missed the ioeventfd (another width or value): pass it on. */
  notify(queueIndex: number): void {
    const fd = this.o.kickFds[queueIndex];
    if (fd !== undefined) eventfdSignal(fd);
  }

  reset(): void {
    if (!this.running) return;
    this.running = false;
    this.step(() => this.o.frontend.stop(), (e) => this.o.log(`virtio-fs ${this.o.tag}: stopping the rings: ${e.message}`));
  }

  private step(fn: () => Promise<void>, onError: (e: Error) => void): void {
    this.ops = this.ops.then(fn).catch((e: unknown) => onError(e instanceof Error ? e : new Error(String(e))));
  }
}
