// The main thread's side of a drive's I/O thread (worker.ts): spawns it, hands it a queue to
// serve when the driver sets DRIVER_OK, stops it — and waits until it has — when the driver
// resets the device, and ends it at close. Owns the control protocol between the two; it must
// not know what a request does (serve.ts).
//
// Commands go through a MessagePort the thread reads synchronously after each wake-up, and
// every command is followed by a write to the thread's eventfd (the same one the guest's kicks
// arrive on), so a sleeping thread wakes for it. A command's generation is also stored in a
// shared cell the thread checks between requests: a stop waits for the requests in flight.

import { MessageChannel, Worker, type MessagePort } from 'node:worker_threads';
import { EFD_CLOEXEC, close as closeFd, eventfd, eventfdSignal } from '../../../kvm/libc';
import { TsvmmError } from '../../../lib/errors';
import { workerScript } from '../../../lib/worker-script';
import type { HostRegion } from '../../memory';
import type { Queue } from '../queue';
import type { DriveGeometry } from './request';
import { newCounterCells } from './serve';

/** The shared control cells: the newest command's generation, and the newest stop the thread acknowledged. */
export const CTL = { GEN: 0, ACK: 1 } as const;
/** ACK once the thread ended on an error: nothing waits for it any more. */
export const THREAD_DEAD = -1;

/** A queue as the driver set it up (copied out of the transport's Queue). */
export interface QueueSetup {
  maxSize: number;
  size: number;
  descAddr: number;
  availAddr: number;
  usedAddr: number;
  eventIdx: boolean;
  indirect: boolean;
}

export type ThreadCommand =
  /** Serve this queue; raise interrupts through `isr` (InterruptStatus) and the irqfd. */
  | { type: 'run'; gen: number; queue: QueueSetup; isr: Int32Array; irqFd: number }
  /** Stop serving (acknowledged through CTL.ACK). */
  | { type: 'stop'; gen: number }
  /** Stop and end the thread. */
  | { type: 'exit'; gen: number };

export type ThreadReport =
  | { type: 'ready' }
  | { type: 'log'; message: string }
  /** The driver broke the ring while the thread served generation `gen`. */
  | { type: 'needs-reset'; gen: number; reason: string }
  /** The thread ended on an error of its own (a bug). */
  | { type: 'failed'; message: string };

export interface ThreadInit {
  id: string;
  fd: number;
  size: number;
  path: string;
  geometry: DriveGeometry;
  idBytes: Uint8Array;
  kickFd: number;
  /** Most requests the queue can hold (the device's queue size): the host I/O's capacity. */
  queueSize: number;
  ram: readonly HostRegion[];
  ctl: Int32Array;
  counters: Float64Array;
  port: MessagePort;
}

export interface ThreadOptions {
  id: string;
  image: { fd: number; size: number; path: string };
  geometry: DriveGeometry;
  idBytes: Uint8Array;
  queueSize: number;
  /** Guest RAM by host address: the thread maps its own views of it. */
  ram: readonly HostRegion[];
  log(m: string): void;
  /** The driver broke the ring: the device must enter NEEDS_RESET. */
  needsReset(reason: string): void;
}

/** How long a reset waits for the thread to finish the requests in flight. */
const STOP_TIMEOUT_MS = 30_000;
/** How long close waits for the thread to end before it terminates it. */
const EXIT_TIMEOUT_MS = 5_000;

export class BlockIoThread {
  /** The queue's notification eventfd (blocking: the thread sleeps in read() on it). */
  readonly kickFd: number;
  readonly counters = newCounterCells();
  private readonly ctl = new Int32Array(new SharedArrayBuffer(8));
  private readonly worker: Worker;
  private readonly port: MessagePort;
  private readonly exited: Promise<void>;
  private gen = 0;
  /** A `run` went out and no `stop` since: stopping must wait for the thread. */
  private running = false;
  private dead = false;
  private closed = false;

  constructor(private readonly o: ThreadOptions) {
    this.kickFd = eventfd(EFD_CLOEXEC);
    const { port1, port2 } = new MessageChannel();
    this.port = port1;
    const init: ThreadInit = {
      id: o.id, fd: o.image.fd, size: o.image.size, path: o.image.path, geometry: o.geometry, idBytes: o.idBytes, kickFd: this.kickFd, queueSize: o.queueSize,
      ram: o.ram, ctl: this.ctl, counters: this.counters, port: port2,
    };
    try {
      this.worker = new Worker(workerScript('blk-worker'), { workerData: init, transferList: [port2], name: `blk-${o.id}` });
    } catch (e) {
      closeFd(this.kickFd);
      throw e;
    }
    this.worker.on('message', (m: ThreadReport) => {
      if (m.type === 'log') o.log(`virtio-blk ${o.id}: ${m.message}`);
      else if (m.type === 'needs-reset' && m.gen === this.gen && this.running) o.needsReset(`virtio-blk ${o.id}: ${m.reason}`);
      else if (m.type === 'failed') this.fail(m.message);
    });
    this.worker.on('error', (e) => this.fail(e.message));
    this.exited = new Promise((resolve) => this.worker.once('exit', () => {
      this.dead = true;
      resolve();
    }));
  }

  private fail(message: string): void {
    if (this.dead) return;
    this.dead = true;
    this.o.log(`virtio-blk ${this.o.id}: the I/O thread failed: ${message}`);
    if (this.running) this.o.needsReset(`virtio-blk ${this.o.id}: the I/O thread failed`);
  }

  private send(cmd: ThreadCommand): void {
    this.port.postMessage(cmd);
    Atomics.store(this.ctl, CTL.GEN, cmd.gen);
    eventfdSignal(this.kickFd);
  }

  /** Starts serving `q` (the transport's, as the driver set it up). */
  run(q: Queue, isr: Int32Array, irqFd: number): void {
    if (this.closed || this.dead) return;
    this.stop();
    this.running = true;
    const queue: QueueSetup = { maxSize: q.maxSize, size: q.size, descAddr: q.descAddr, availAddr: q.availAddr, usedAddr: q.usedAddr, eventIdx: q.eventIdx, indirect: q.indirect };
    this.send({ type: 'run', gen: ++this.gen, queue, isr, irqFd });
  }

  /** Wakes the thread to look at its ring (a notification that came as a register write). */
  kick(): void {
    if (!this.closed) eventfdSignal(this.kickFd);
  }

  /**
   * Stops serving and returns once the thread has: it finishes the requests in flight (their
   * answers may still reach the ring), then touches neither the rings nor InterruptStatus. The
   * main thread blocks meanwhile — as long as those transfers take, and only when a queue was running.
   */
  stop(): void {
    if (!this.running) return;
    this.running = false;
    if (this.dead) return;
    const gen = ++this.gen;
    this.send({ type: 'stop', gen });
    const deadline = performance.now() + STOP_TIMEOUT_MS;
    for (;;) {
      const ack = Atomics.load(this.ctl, CTL.ACK);
      if (ack === gen || ack === THREAD_DEAD) return;
      const left = deadline - performance.now();
      if (left <= 0) throw new TsvmmError(`virtio-blk ${this.o.id}: the I/O thread did not stop within ${STOP_TIMEOUT_MS / 1000} s (host I/O stuck?)`);
      Atomics.wait(this.ctl, CTL.ACK, ack, left);
    }
  }

  /** Stops and ends the thread; the image's descriptor is free to close afterwards. */
  async close(): Promise<void> {
    if (this.closed) return;
    try {
      this.stop();
    } finally {
      this.closed = true;
    }
    if (!this.dead) this.send({ type: 'exit', gen: ++this.gen });
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(true), EXIT_TIMEOUT_MS)));
    if (await Promise.race([this.exited.then(() => false), late])) {
      this.o.log(`virtio-blk ${this.o.id}: the I/O thread did not end within ${EXIT_TIMEOUT_MS / 1000} s; terminating it`);
      await this.worker.terminate();
    }
    clearTimeout(timer);
    this.port.close();
    closeFd(this.kickFd);
  }
}
