// The contract between a virtio device model (vsock, test devices) and the virtio-mmio
// transport, plus the device-independent feature bits. This module owns that contract; it must
// not know register layouts (mmio.ts) or ring layouts (queue.ts).

import type { GuestMemory } from '../memory';
import type { IrqLine } from '../irq';
import type { Queue } from './queue';

/** Device-independent feature bits (virtio 1.x §6). */
export const VIRTIO_F_INDIRECT_DESC = 1n << 28n;
export const VIRTIO_F_RING_EVENT_IDX = 1n << 29n;
export const VIRTIO_F_VERSION_1 = 1n << 32n;

/** Device type ids used by tsvmm (virtio 1.x §5). */
export const VIRTIO_ID_VSOCK = 19;
export const VIRTIO_ID_FS = 26;

/** What the transport hands a device when the driver sets DRIVER_OK. */
export interface VirtioDeviceContext {
  readonly mem: GuestMemory;
  readonly queues: readonly Queue[];
  readonly ackedFeatures: bigint;
  /**
   * The device's interrupt line and the InterruptStatus cell vCPU threads serve (shared
   * memory). A device that answers requests on a thread of its own raises its interrupt there:
   * raiseInterrupt(interruptStatus, INT_USED_BUFFER, …) through the line's eventfd (`irq.fd`),
   * never by calling the line's trigger() from another thread.
   */
  readonly irq: IrqLine;
  readonly interruptStatus: Int32Array;
  /** Signal used buffers on queue i: raises the interrupt if queues[i].needsNotification(). */
  signalUsed(queueIndex: number): void;
  /** The device found the driver broken: transport sets DEVICE_NEEDS_RESET and raises a config interrupt. */
  needsReset(reason: string): void;
}

export interface VirtioDevice {
  /** Virtio device id (19 = vsock). */
  readonly deviceType: number;
  /** One entry per queue: its maximum size, a power of two ≤ 32768. */
  readonly queueMaxSizes: readonly number[];
  /** Device-specific feature bits; the transport adds VERSION_1, RING_EVENT_IDX and INDIRECT_DESC. */
  readonly deviceFeatures: bigint;
  /** Fills `data` from device config space at `offset` (any width the driver uses). */
  readConfig(offset: number, data: Uint8Array): void;
  writeConfig(offset: number, data: Uint8Array): void;
  /** DRIVER_OK was set with valid queues. */
  activate(ctx: VirtioDeviceContext): void;
  /**
   * The driver notified queue i (via ioeventfd or a QueueNotify write). A QueueError thrown
   * from here (e.g. out of Queue.pop) puts the device into NEEDS_RESET; so does
   * ctx.needsReset() for errors found outside notify (e.g. when host data arrives).
   */
  notify(queueIndex: number): void;
  /**
   * The driver wrote 0 to Status; drop all device state. Also called before any activate().
   * Called before the transport clears InterruptStatus and the queues: when it returns, the
   * device must no longer touch either.
   */
  reset(): void;
  /**
   * Eventfds the device reads its queues' notifications from itself (one per queue, on a
   * thread of its own): the VMM registers them as the queues' ioeventfds and does not watch
   * them. Absent: the VMM watches its own and calls notify().
   */
  readonly kickFds?: readonly number[];
}
