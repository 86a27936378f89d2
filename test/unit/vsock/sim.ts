// A simulated guest for the vsock tests: a virtio driver writing real split rings (the project's
// Queue reads them from a GuestMemory over an ArrayBuffer) plus a tiny guest vsock stack (listen,
// connect, credit, shutdown) in the style of Linux's virtio_transport_common.

import { GuestMemory } from '../../../devices/memory';
import { Queue } from '../../../devices/virtio/queue';
import type { VirtioDeviceContext } from '../../../devices/virtio/device';
import { EVQ, RXQ, TXQ, type VirtioVsock } from '../../../devices/virtio/vsock/device';
import {
  VsockHdr, HDR_SIZE, HOST_CID, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE,
  OP_RST, OP_RW, OP_SHUTDOWN, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM, type VsockHeader,
} from '../../../devices/virtio/vsock/packet';

const QSIZE = 256;
const RING_AREA = 0x4000;

export interface BufSpec { addr: number; len: number; write: boolean }

/** The driver side of one split ring with one fixed buffer per descriptor. */
export class Ring {
  readonly descAddr: number;
  readonly availAddr: number;
  readonly usedAddr: number;
  private readonly free: number[] = [];
  private availIdx = 0;
  private lastUsed = 0;
  /** Avail idx at the last kick decision (Linux: avail_idx_shadow - num_added). */
  private kickedIdx = 0;
  readonly chains = new Map<number, number[]>();

  /** `eventIdx`: kick only when avail_event asks, ask for interrupts through used_event. */
  constructor(private readonly mem: GuestMemory, base: number, readonly bufBase: number, readonly bufSize: number,
    readonly eventIdx = false) {
    this.descAddr = base;
    this.availAddr = base + QSIZE * 16;
    this.usedAddr = base + 0x2000;
    for (let i = 0; i < QSIZE; i++) this.free.push(i);
  }

  bufAddr(desc: number): number {
    return this.bufBase + desc * this.bufSize;
  }

  get freeCount(): number {
    return this.free.length;
  }

  private dv(addr: number, len: number): DataView {
    const v = this.mem.expect(addr, len);
    return new DataView(v.buffer, v.byteOffset, len);
  }

  /** Adds a chain of `parts` (each one descriptor with its own buffer; `data` written into readable ones). */
  add(parts: { len: number; write: boolean; data?: Uint8Array }[], publish = true): number {
    if (this.free.length < parts.length) throw new Error('ring full');
    const descs = parts.map(() => this.free.shift()!);
    parts.forEach((p, i) => {
      const d = descs[i]!;
      if (p.data) this.mem.write(this.bufAddr(d), p.data);
      const v = this.dv(this.descAddr + d * 16, 16);
      v.setBigUint64(0, BigInt(this.bufAddr(d)), true);
      v.setUint32(8, p.len, true);
      v.setUint16(12, (p.write ? 2 : 0) | (i + 1 < parts.length ? 1 : 0), true);
      v.setUint16(14, descs[i + 1] ?? 0, true);
    });
    this.chains.set(descs[0]!, descs);
    const av = this.dv(this.availAddr, 4 + 2 * QSIZE);
    av.setUint16(4 + 2 * (this.availIdx % QSIZE), descs[0]!, true);
    this.availIdx = (this.availIdx + 1) & 0xffff;
    if (publish) this.publish();
    return descs[0]!;
  }

  publish(): void {
    this.dv(this.availAddr, 4).setUint16(2, this.availIdx, true);
  }

  /** Raw write of an avail entry (for malformed-ring tests). */
  pushRawHead(head: number): void {
    const av = this.dv(this.availAddr, 4 + 2 * QSIZE);
    av.setUint16(4 + 2 * (this.availIdx % QSIZE), head, true);
    this.availIdx = (this.availIdx + 1) & 0xffff;
    this.publish();
  }

  /** Used entries since the last call; their descriptors go back to the free list. */
  takeUsed(): { head: number; len: number; descs: number[] }[] {
    const u = this.dv(this.usedAddr, 4 + 8 * QSIZE);
    const idx = u.getUint16(2, true);
    const out: { head: number; len: number; descs: number[] }[] = [];
    while (this.lastUsed !== idx) {
      const at = 4 + 8 * (this.lastUsed % QSIZE);
      const head = u.getUint32(at, true);
      const len = u.getUint32(at + 4, true);
      const descs = this.chains.get(head) ?? [];
      this.chains.delete(head);
      for (const d of descs) this.free.push(d);
      out.push({ head, len, descs });
      this.lastUsed = (this.lastUsed + 1) & 0xffff;
    }
    // virtqueue_enable_cb(): interrupt me at the next used buffer.
    if (this.eventIdx) this.dv(this.availAddr + 4 + 2 * QSIZE, 2).setUint16(0, this.lastUsed, true);
    return out;
  }

  /** virtqueue_kick_prepare(): whether the device wants a notification for what was published since the last call. */
  needsKick(): boolean {
    const old = this.kickedIdx;
    const now = this.availIdx;
    this.kickedIdx = now;
    if (!this.eventIdx) return true;
    const availEvent = this.dv(this.usedAddr + 4 + 8 * QSIZE, 2).getUint16(0, true);
    return ((now - availEvent - 1) & 0xffff) < ((now - old) & 0xffff);
  }

  configure(q: Queue): void {
    q.size = QSIZE;
    q.descAddr = this.descAddr;
    q.availAddr = this.availAddr;
    q.usedAddr = this.usedAddr;
    q.eventIdx = this.eventIdx;
    q.ready = true;
  }
}

export interface GuestConn {
  readonly port: number;     // guest port
  readonly hostPort: number; // host port
  state: 'connecting' | 'established' | 'closed';
  received: Buffer[];
  receivedBytes: number;
  eof: boolean;               // host sent SHUTDOWN_SEND
  peerShutdown: number;
  rst: boolean;
  bufAlloc: number;
  fwdCnt: number;
  lastFwdSent: number;
  peerBufAlloc: number;
  peerFwdCnt: number;
  txCnt: number;
  shutdownSent: number;
  waiters: (() => void)[];
  onData?: (d: Buffer) => void;
}

export interface SimOptions {
  cid: number;
  rxBufSize?: number;
  /** Guest receive buffer per connection (advertised buf_alloc). */
  bufAlloc?: number;
  /** Answer nothing to host REQUESTs (connect timeout tests). */
  ignoreRequests?: boolean;
  /** Do not consume received data (credit stays used up). */
  stallReader?: boolean;
  /** RX buffers as Linux 6.1 posts them: a 44-byte header descriptor, then the payload one. */
  rxSplitHeader?: boolean;
  /** TX payloads split over two descriptors. */
  txSplitPayload?: boolean;
  /** Keep a connection open after the host's SHUTDOWN(SEND) (default: close, as most apps do on EOF). */
  keepOpenOnEof?: boolean;
  /** Negotiate VIRTIO_F_RING_EVENT_IDX, as Linux does: kicks only when avail_event asks for them. */
  eventIdx?: boolean;
}

/** Driver + guest vsock stack. */
export class SimGuest {
  readonly mem: GuestMemory;
  readonly queues: Queue[];
  readonly rings: Ring[];
  readonly ctx: VirtioDeviceContext;
  readonly cid: bigint;
  irqs = [0, 0, 0];
  /** Notifications (kicks) sent per queue. */
  kicks = [0, 0, 0];
  needsResetReason: string | undefined;
  readonly conns = new Map<string, GuestConn>();
  readonly listeners = new Map<number, (c: GuestConn) => void>();
  readonly events: number[] = [];
  readonly rxLog: VsockHeader[] = [];
  private nextPort = 50000;
  private txWaiters: (() => void)[] = [];

  constructor(readonly dev: VirtioVsock, readonly opts: SimOptions) {
    this.cid = BigInt(opts.cid);
    const rxBuf = opts.rxBufSize ?? 4096;
    const bufs = [rxBuf, 0x10000, 64];
    let at = 0x100000;
    const bases = bufs.map((b) => { const base = at; at += b * QSIZE; return base; });
    this.mem = new GuestMemory([{ gpa: 0, bytes: new Uint8Array(at) }]);
    this.rings = [0, 1, 2].map((i) => new Ring(this.mem, i * RING_AREA, bases[i]!, bufs[i]!, opts.eventIdx));
    this.queues = this.rings.map((r) => {
      const q = new Queue(this.mem, QSIZE);
      r.configure(q);
      return q;
    });
    this.ctx = {
      mem: this.mem,
      queues: this.queues,
      ackedFeatures: (1n << 32n) | (opts.eventIdx ? 1n << 29n : 0n),
      irq: { trigger: () => {} },
      interruptStatus: new Int32Array(new SharedArrayBuffer(4)),
      signalUsed: (i) => {
        if (!this.queues[i]!.needsNotification()) return;
        this.irqs[i]!++;
        setImmediate(() => this.interrupt(i));
      },
      needsReset: (r) => { this.needsResetReason = r; },
    };
  }

  /** Posts RX and event buffers, then DRIVER_OK. */
  start(rxBuffers = 128): void {
    for (let i = 0; i < rxBuffers; i++) this.postRx(true);
    for (let i = 0; i < 4; i++) this.rings[EVQ]!.add([{ len: 8, write: true }]);
    this.dev.activate(this.ctx);
  }

  private interrupt(i: number): void {
    if (i === TXQ) {
      this.rings[TXQ]!.takeUsed();
      const w = this.txWaiters;
      this.txWaiters = [];
      for (const f of w) f();
    } else if (i === RXQ) {
      this.drainRx();
    } else if (i === EVQ) {
      for (const u of this.rings[EVQ]!.takeUsed()) {
        const b = this.mem.expect(this.rings[EVQ]!.bufAddr(u.descs[0]!), 4);
        this.events.push(new DataView(b.buffer, b.byteOffset, 4).getUint32(0, true));
        this.rings[EVQ]!.add([{ len: 8, write: true }]);
      }
    }
  }

  private postRx(publish: boolean): void {
    const r = this.rings[RXQ]!;
    const parts = this.opts.rxSplitHeader
      ? [{ len: HDR_SIZE, write: true }, { len: r.bufSize, write: true }]
      : [{ len: r.bufSize, write: true }];
    r.add(parts, publish);
  }

  /** Reads every used RX buffer, reposts it, and dispatches the packets. */
  drainRx(): void {
    const r = this.rings[RXQ]!;
    const used = r.takeUsed();
    const pkts: [VsockHeader, Buffer][] = [];
    for (const u of used) {
      const base = r.bufAddr(u.descs[0]!);
      if (u.len >= HDR_SIZE) {
        const hdr = VsockHdr.read(this.mem.expect(base, HDR_SIZE));
        const payloadAt = this.opts.rxSplitHeader ? r.bufAddr(u.descs[1]!) : base + HDR_SIZE;
        const payload = Buffer.from(this.mem.expect(payloadAt, u.len - HDR_SIZE));
        pkts.push([hdr, payload]);
      }
      this.postRx(false);
    }
    r.publish();
    for (const [h, p] of pkts) this.dispatch(h, p);
    if (used.length > 0) this.kick(RXQ);
  }

  private kick(i: number): void {
    if (!this.rings[i]!.needsKick()) return;
    this.kicks[i]!++;
    this.dev.notify(i);
  }

  private key(port: number, hostPort: number): string {
    return `${port}:${hostPort}`;
  }

  private newConn(port: number, hostPort: number, state: GuestConn['state'], h?: VsockHeader): GuestConn {
    const c: GuestConn = {
      port, hostPort, state, received: [], receivedBytes: 0, eof: false, peerShutdown: 0, rst: false,
      bufAlloc: this.opts.bufAlloc ?? 256 * 1024, fwdCnt: 0, lastFwdSent: 0,
      peerBufAlloc: h?.bufAlloc ?? 0, peerFwdCnt: h?.fwdCnt ?? 0, txCnt: 0, shutdownSent: 0, waiters: [],
    };
    this.conns.set(this.key(port, hostPort), c);
    return c;
  }

  private wake(c: GuestConn): void {
    const w = c.waiters;
    c.waiters = [];
    for (const f of w) f();
  }

  private dispatch(h: VsockHeader, payload: Buffer): void {
    this.rxLog.push(h);
    if (h.dstCid !== this.cid || h.srcCid !== HOST_CID) throw new Error(`bad cids in RX packet ${h.srcCid}->${h.dstCid}`);
    const c = this.conns.get(this.key(h.dstPort, h.srcPort));
    if (!c) {
      if (h.op === OP_REQUEST) {
        const l = this.listeners.get(h.dstPort);
        if (this.opts.ignoreRequests) return;
        if (!l) { this.sendCtl(h.dstPort, h.srcPort, OP_RST); return; }
        const n = this.newConn(h.dstPort, h.srcPort, 'established', h);
        this.sendCtl(n.port, n.hostPort, OP_RESPONSE, 0, n);
        l(n);
      }
      return;
    }
    c.peerBufAlloc = h.bufAlloc;
    c.peerFwdCnt = h.fwdCnt;
    switch (h.op) {
      case OP_RESPONSE:
        c.state = 'established';
        break;
      case OP_RST:
        c.rst = true;
        c.state = 'closed';
        this.conns.delete(this.key(c.port, c.hostPort));
        break;
      case OP_RW:
        if (payload.length !== h.len) throw new Error('RX len mismatch');
        c.received.push(payload);
        c.receivedBytes += payload.length;
        if (c.receivedBytes - c.fwdCnt > c.bufAlloc) throw new Error('host overran guest credit');
        c.onData?.(payload);
        if (!this.opts.stallReader) this.consume(c, payload.length);
        break;
      case OP_SHUTDOWN:
        c.peerShutdown |= h.flags;
        if (h.flags & SHUTDOWN_SEND) c.eof = true;
        if (c.peerShutdown === SHUTDOWN_SEND && !this.opts.keepOpenOnEof && c.shutdownSent !== (SHUTDOWN_RCV | SHUTDOWN_SEND)) {
          this.shutdown(c, SHUTDOWN_RCV | SHUTDOWN_SEND); // the app read EOF and closed
        } else if (c.peerShutdown === (SHUTDOWN_RCV | SHUTDOWN_SEND)) {
          // As Linux: the peer is done both ways and nothing is left to read -> RST.
          this.sendCtl(c.port, c.hostPort, OP_RST, 0, c);
          c.state = 'closed';
          this.conns.delete(this.key(c.port, c.hostPort));
        }
        break;
      case OP_CREDIT_REQUEST:
        this.sendCtl(c.port, c.hostPort, OP_CREDIT_UPDATE, 0, c);
        break;
    }
    this.wake(c);
  }

  /** The guest application read `n` bytes: credit goes back (update after half the buffer, as Linux). */
  consume(c: GuestConn, n: number): void {
    c.fwdCnt += n;
    if (c.fwdCnt - c.lastFwdSent >= c.bufAlloc / 2) this.sendCtl(c.port, c.hostPort, OP_CREDIT_UPDATE, 0, c);
  }

  /** Sends one raw packet (header built from `h`, payload optionally split over two descriptors). */
  sendRaw(h: Partial<VsockHeader>, payload: Uint8Array = new Uint8Array(0), split = false): void {
    const full: VsockHeader = {
      srcCid: this.cid, dstCid: HOST_CID, srcPort: 0, dstPort: 0, len: payload.length, type: TYPE_STREAM,
      op: OP_RW, flags: 0, bufAlloc: 0, fwdCnt: 0, ...h,
    };
    const hb = VsockHdr.encode(full);
    this.rings[TXQ]!.takeUsed(); // the device consumed earlier chains synchronously in notify
    const parts: { len: number; write: boolean; data?: Uint8Array }[] = [{ len: HDR_SIZE, write: false, data: hb }];
    if (payload.length > 0) {
      if (split && payload.length > 1) {
        const m = payload.length >> 1;
        parts.push({ len: m, write: false, data: payload.subarray(0, m) });
        parts.push({ len: payload.length - m, write: false, data: payload.subarray(m) });
      } else {
        parts.push({ len: payload.length, write: false, data: payload });
      }
    }
    this.rings[TXQ]!.add(parts);
    this.kick(TXQ);
  }

  private sendCtl(port: number, hostPort: number, op: number, flags = 0, c?: GuestConn): void {
    if (c) c.lastFwdSent = c.fwdCnt;
    this.sendRaw({
      srcPort: port, dstPort: hostPort, op, flags,
      bufAlloc: c?.bufAlloc ?? 0, fwdCnt: c?.fwdCnt ?? 0,
    });
  }

  private async txSlot(n: number): Promise<void> {
    while (this.rings[TXQ]!.freeCount < n) await new Promise<void>((r) => this.txWaiters.push(r));
  }

  waitFor(c: GuestConn, cond: () => boolean, what: string, ms = 5000): Promise<void> {
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`timeout waiting for ${what}`)), ms);
      const check = (): void => {
        if (cond()) { clearTimeout(t); resolve(); } else c.waiters.push(check);
      };
      check();
    });
  }

  listen(port: number, onConn: (c: GuestConn) => void = () => {}): void {
    this.listeners.set(port, onConn);
  }

  /** Guest connect() to host port `hostPort`; resolves established or closed (RST). */
  async connect(hostPort: number): Promise<GuestConn> {
    const c = this.newConn(this.nextPort++, hostPort, 'connecting');
    await this.txSlot(1);
    this.sendCtl(c.port, hostPort, OP_REQUEST, 0, c);
    await this.waitFor(c, () => c.state !== 'connecting', 'RESPONSE');
    return c;
  }

  /** Sends `data` honouring the host's credit, in packets of at most `pkt` bytes. */
  async write(c: GuestConn, data: Uint8Array, pkt = 16 * 1024): Promise<void> {
    // As current Linux: at most min(peer's buf_alloc, our own) in flight.
    const credit = (): number => Math.min(c.peerBufAlloc, c.bufAlloc) - (c.txCnt - c.peerFwdCnt);
    let off = 0;
    while (off < data.length) {
      if (c.state !== 'established') throw new Error('connection closed while writing');
      if (credit() <= 0) {
        await this.waitFor(c, () => c.state !== 'established' || credit() > 0, 'credit');
        continue;
      }
      await this.txSlot(3);
      const n = Math.min(pkt, credit(), data.length - off);
      c.lastFwdSent = c.fwdCnt;
      this.sendRaw({ srcPort: c.port, dstPort: c.hostPort, op: OP_RW, bufAlloc: c.bufAlloc, fwdCnt: c.fwdCnt }, data.subarray(off, off + n), this.opts.txSplitPayload);
      c.txCnt += n;
      off += n;
    }
  }

  shutdown(c: GuestConn, flags: number): void {
    c.shutdownSent |= flags;
    this.sendCtl(c.port, c.hostPort, OP_SHUTDOWN, flags, c);
  }

  rst(c: GuestConn): void {
    this.sendCtl(c.port, c.hostPort, OP_RST, 0, c);
    c.state = 'closed';
    this.conns.delete(this.key(c.port, c.hostPort));
  }
}

/** Collects a socket's data until 'end'/'close'. */
export function readAll(s: NodeJS.ReadableStream): Promise<Buffer> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    s.on('data', (d: Buffer) => chunks.push(d));
    s.on('end', () => resolve(Buffer.concat(chunks)));
    s.on('close', () => resolve(Buffer.concat(chunks)));
    s.on('error', () => {}); // EPIPE/ECONNRESET from a refused client: 'close' follows
  });
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Polls `cond` until true (or throws after `ms`). */
export async function until(cond: () => boolean, what: string, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timeout waiting for ${what}`);
    await sleep(5);
  }
}
