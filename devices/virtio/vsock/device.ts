// The virtio-vsock device (virtio 1.x §5.10, device id 19): queues rx/tx/event, config space =
// guest_cid (le64), no device features (no SEQPACKET). It owns moving packets between the
// virtqueues and the muxer: TX chains are parsed (packet.ts) and handed to the muxer, RX chains are
// filled from it, and the event queue carries TRANSPORT_RESET. It must not know sockets or the
// per-connection protocol. Runs on the Node main thread; each turn does a bounded amount of work
// and continues with setImmediate, so a flooding guest or host cannot starve the event loop.

import type { Duplex } from 'node:stream';
import { struct, u32, u64 } from '../../../lib/struct';
import { VIRTIO_ID_VSOCK, type VirtioDevice, type VirtioDeviceContext } from '../device';
import { IoVecBuffer } from '../iovec';
import { DescriptorChain, QueueError } from '../queue';
import { countDrop, type VsockCounters } from './counters';
import { VsockMuxer, type MuxerOptions } from './muxer';
import { parseTxChain, RxPacketWriter } from './packet';

export const RXQ = 0;
export const TXQ = 1;
export const EVQ = 2;
export const QUEUE_SIZE = 256;
/** Chains handled per queue per event-loop turn. */
export const BATCH = 64;
/** Device configuration space (struct virtio_vsock_config) and event queue element (struct virtio_vsock_event). */
export const VsockConfig = struct('virtio_vsock_config', 8, { guestCid: u64(0) });
export const VsockEvent = struct('virtio_vsock_event', 4, { id: u32(0) });
export const VIRTIO_VSOCK_EVENT_TRANSPORT_RESET = 0;

export type VsockDeviceOptions = MuxerOptions;

export class VirtioVsock implements VirtioDevice {
  readonly deviceType = VIRTIO_ID_VSOCK;
  readonly queueMaxSizes: readonly number[] = [QUEUE_SIZE, QUEUE_SIZE, QUEUE_SIZE];
  readonly deviceFeatures = 0n; // VIRTIO_VSOCK_F_SEQPACKET (bit 1) deliberately not offered
  readonly muxer: VsockMuxer;
  readonly counters: VsockCounters;
  readonly guestCid: bigint;

  private ctx: VirtioDeviceContext | undefined;
  private broken = false;
  private rxScheduled = false;
  private txScheduled = false;
  private transportResetPending = false;
  /** When an RX turn last found packets waiting and no RX buffer (counters.rxNoBufferUs). */
  private noBufferSince: number | undefined;
  // Reused for every packet (each chain is done with before the next pop): the per-packet path
  // allocates no chain, buffer list or writer.
  private readonly rxChain = new DescriptorChain(0);
  private readonly txChain = new DescriptorChain(0);
  private readonly rxWriter = new RxPacketWriter(new IoVecBuffer());

  constructor(opts: VsockDeviceOptions) {
    this.muxer = new VsockMuxer(opts);
    this.counters = this.muxer.counters;
    this.guestCid = this.muxer.guestCid;
    this.muxer.onRxReady = () => this.scheduleRx();
    this.muxer.onTxReady = () => this.scheduleTx();
  }

  /** Creates the device and binds its Unix socket (if any). */
  static async create(opts: VsockDeviceOptions): Promise<VirtioVsock> {
    const d = new VirtioVsock(opts);
    await d.muxer.listen();
    return d;
  }

  /** Closes every connection and the listening socket, and removes the socket file. */
  close(): Promise<void> {
    this.ctx = undefined;
    return this.muxer.close();
  }

  /** Host-initiated connection from inside tsvmm (agent client, doorbell). */
  connect(port: number): Promise<Duplex> {
    return this.muxer.connect(port);
  }

  readConfig(offset: number, data: Uint8Array): void {
    const cfg = VsockConfig.encode({ guestCid: this.guestCid });
    for (let i = 0; i < data.length; i++) data[i] = cfg[offset + i] ?? 0;
  }

  writeConfig(): void {
    this.counters.configWrites++; // guest_cid is read-only
  }

  activate(ctx: VirtioDeviceContext): void {
    this.ctx = ctx;
    this.broken = false;
    this.guard(() => {
      this.processTx();
      this.processRx();
      if (this.transportResetPending) this.sendTransportReset();
    });
  }

  notify(queueIndex: number): void {
    this.guard(() => {
      if (queueIndex === TXQ) this.processTx();
      else if (queueIndex === RXQ) this.processRx();
      else if (queueIndex === EVQ && this.transportResetPending) this.sendTransportReset();
    });
  }

  /** Driver reset: all connections are dropped (host sockets closed), nothing is kept. */
  reset(): void {
    this.ctx = undefined;
    this.broken = false;
    this.transportResetPending = false;
    this.noBufferSince = undefined;
    this.muxer.reset();
  }

  /**
   * Host-side loss of all connections while the driver keeps running (virtio §5.10.6.6): drops
   * every connection and posts TRANSPORT_RESET on the event queue, after which the driver
   * closes its connections and rereads guest_cid. Sent when an event buffer is available.
   */
  transportReset(): void {
    this.muxer.reset();
    this.transportResetPending = true;
    this.guard(() => this.sendTransportReset());
  }

  private sendTransportReset(): void {
    const ctx = this.ctx;
    if (!ctx || this.broken) return;
    const q = ctx.queues[EVQ]!;
    const chain = q.pop();
    if (!chain) return; // stays pending until the driver posts an event buffer
    const ev = VsockEvent.encode({ id: VIRTIO_VSOCK_EVENT_TRANSPORT_RESET });
    const written = chain.writable.length >= ev.length ? chain.writable.writeAt(ev) : 0;
    q.addUsed(chain.head, written);
    this.transportResetPending = false;
    ctx.signalUsed(EVQ);
  }

  /**
   * Guest -> host: at most BATCH chains, then RX (replies), then the rest on the next turn. While
   * the host streams hold the whole TX budget, chains stay in the ring (the muxer's onTxReady
   * brings us back): guest data waits in guest memory, not ours.
   *
   * The TX chains' interrupt goes after the RX fill, not before it: the guest's CREDIT_UPDATE
   * that reopens a host -> guest window is a TX packet, and the RX packets it enables are what
   * the guest waits for. Signalled first, the TX interrupt's eventfd write delayed the fill (our
   * part of that hop, creditHopUs, was 1.75 ms a window in the nested sandbox, 0.9 ms after);
   * signalled after, it usually finds InterruptStatus still set by the RX one and merges with
   * it (vm_interrupt walks every queue).
   */
  private processTx(): void {
    const ctx = this.ctx;
    if (!ctx || this.broken) return;
    const q = ctx.queues[TXQ]!;
    let n = 0;
    for (; n < BATCH && !this.muxer.txBlocked; n++) {
      const chain = q.pop(this.txChain);
      if (!chain) break;
      this.counters.txPackets++;
      const p = parseTxChain(chain.readable, this.guestCid);
      if (p.ok) {
        this.muxer.handleTx(p.hdr, p.buf);
      } else {
        countDrop(this.counters, p.reason);
        if (p.rstTo) this.muxer.enqueueRst(p.rstTo.dstPort, p.rstTo.srcPort);
      }
      q.addUsed(chain.head, 0);
    }
    if (n === BATCH) this.scheduleTx();
    this.processRx();
    if (n > 0) ctx.signalUsed(TXQ);
  }

  /**
   * Host -> guest: fill at most BATCH RX chains while the muxer has packets; one interrupt for
   * all. The device pulls: a packet that becomes ready meanwhile (the muxer's onRxReady) only
   * asks for a turn, which setImmediate coalesces, so nothing here runs inside itself.
   */
  private processRx(): void {
    const ctx = this.ctx;
    if (!ctx || this.broken) return;
    if (!this.muxer.hasPendingRx()) return;
    const q = ctx.queues[RXQ]!;
    const t0 = performance.now(); // once per turn, for the counters
    let n = 0;
    for (; n < BATCH && this.muxer.hasPendingRx(); n++) {
      const chain = q.pop(this.rxChain);
      if (!chain) {
        // No buffers: the driver's next RX notify brings us back.
        if (this.noBufferSince === undefined) {
          this.noBufferSince = t0;
          this.counters.rxNoBuffer++;
        }
        break;
      }
      if (this.noBufferSince !== undefined) {
        this.counters.rxNoBufferUs += Math.round((t0 - this.noBufferSince) * 1000);
        this.noBufferSince = undefined;
      }
      const w = this.rxWriter.reset(chain.writable);
      if (!w.usable) {
        countDrop(this.counters, 'rx-too-small');
      } else if (!this.muxer.fillRx(w)) {
        q.undoPop();
        break;
      }
      q.addUsed(chain.head, w.written);
    }
    if (n > 0) {
      ctx.signalUsed(RXQ);
      this.counters.rxBatches++;
      this.counters.rxBatchUs += Math.round((performance.now() - t0) * 1000);
    }
    if (n === BATCH && this.muxer.hasPendingRx()) this.scheduleRx();
  }

  private scheduleRx(): void {
    if (this.rxScheduled || !this.ctx) return;
    this.rxScheduled = true;
    setImmediate(() => {
      this.rxScheduled = false;
      this.guard(() => this.processRx());
    });
  }

  private scheduleTx(): void {
    if (this.txScheduled || !this.ctx) return;
    this.txScheduled = true;
    setImmediate(() => {
      this.txScheduled = false;
      this.guard(() => this.processTx());
    });
  }

  /** A driver that breaks a ring puts the device into NEEDS_RESET; it stays idle until reset. */
  private guard(fn: () => void): void {
    try {
      fn();
    } catch (e) {
      if (!(e instanceof QueueError)) throw e;
      this.broken = true;
      this.counters.queueErrors++;
      this.ctx?.needsReset(`vsock: ${e.message}`);
    }
  }
}
