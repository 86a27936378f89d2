// The vsock connection state machine: one guest AF_VSOCK stream <-> one host byte stream. It owns
// the connection's state, both directions of credit-based flow control, the bounded host->guest
// buffer, shutdown/RST handling and the timeouts. It knows nothing of sockets (a HostStream does
// the I/O), of virtqueues (it fills an RxPacketWriter) or of other connections (the muxer routes).
//
// Flow control, in one paragraph (virtio spec 5.10.6.3): each side tells the other, in every
// packet, `buf_alloc` (its receive buffer size) and `fwd_cnt` (bytes it has consumed so far). A
// sender may have at most `peer_buf_alloc - (bytes_sent - peer_fwd_cnt)` bytes in flight. Counters
// are u32 and wrap, so all differences are taken mod 2^32.
//   guest -> host: our buffer is the host stream's unflushed bytes; fwd_cnt advances when the
//     host stream accepts data (write callback). A guest that overruns our credit is reset.
//     Unflushed bytes also count against a budget shared by all connections (the muxer's): past
//     it the device stops taking TX packets, so the guest's data waits in its own memory.
//   host -> guest: we read from the host only while the guest has credit and our own bounded
//     buffer has room; otherwise the host stream is paused (backpressure onto the host peer).

import type { IoVecBuffer } from '../iovec';
import type { VsockCounters } from './counters';
import {
  HDR_SIZE, HOST_CID, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RST, OP_RW, OP_SHUTDOWN,
  SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM, type RxPacketWriter, type VsockHeader,
} from './packet';

/** The host end of a connection: a Unix socket, or an in-process stream (muxer.connect). */
export interface HostStream {
  /**
   * Sends bytes [offset, offset + len) of `data`: guest memory, valid only during this call (the
   * chain goes back to the guest right after), so the stream copies what it cannot pass on at
   * once. `flushed` runs once the host side accepted all of it, possibly before write returns.
   */
  write(data: IoVecBuffer, offset: number, len: number, flushed: () => void): void;
  /** Half-close: the host peer reads EOF after what was written. */
  end(): void;
  /** Releases the stream: gracefully (end after pending writes) or abortively (now). */
  close(graceful: boolean): void;
  pause(): void;
  resume(): void;
}

export interface ConnLimits {
  /** Our receive buffer (guest -> host bytes in flight), advertised as buf_alloc. */
  bufAlloc: number;
  /**
   * Send CREDIT_UPDATE once this much (or a quarter of the guest's usable window, if less) was
   * freed since the guest last heard our fwd_cnt.
   */
  creditUpdateFreed: number;
  /** Also send it when the guest believes less than this (or half its window) is free, and some was freed. */
  creditUpdateThreshold: number;
  /** Host -> guest bytes buffered before the host stream is paused. */
  rxBufferLimit: number;
  /** A guest that does not answer REQUEST (or a host connect that hangs) within this is reset. */
  connectTimeoutMs: number;
  /** After a full SHUTDOWN, the other side has this long to finish before we send RST. */
  shutdownTimeoutMs: number;
  /**
   * Out of the guest's credit with data waiting: how long we wait for the guest's own
   * CREDIT_UPDATE before we send CREDIT_REQUEST (see creditAskDue).
   */
  creditRequestDelayMs: number;
}

// Why these sizes (docs/vsock.md, "Flow control and memory"): a credit round trip (our
// CREDIT_UPDATE through the RX queue, the guest's interrupt, its sender waking up) is long next
// to moving a packet, so a 64 KiB window made guest -> host stop-and-wait. 1 MiB keeps a guest
// that uses our whole window sending across a round trip (current Linux uses at most its own
// buf_alloc, 256 KiB by default: see guestNeedsCreditUpdate); the update at a quarter of the
// window leaves the guest 3/4 of it while the update travels; below 64 KiB of room (one full
// packet) any freed byte is worth an update, since a guest short of room sends short packets.
// What tsvmm really holds is only what the host socket did not accept yet (its kernel buffer
// takes ~200 KiB first), and all connections together are capped by the muxer's TX budget.
// Host -> guest: 256 KiB is Linux's default buf_alloc, the most the guest
// takes in flight: buffering more could not be sent sooner, less leaves the guest's window
// unfilled while the host socket is paused.
export const DEFAULT_CONN_LIMITS: Readonly<ConnLimits> = {
  bufAlloc: 1024 * 1024,
  creditUpdateFreed: 256 * 1024,
  creditUpdateThreshold: 64 * 1024,
  rxBufferLimit: 256 * 1024,
  connectTimeoutMs: 2000,
  shutdownTimeoutMs: 2000,
  creditRequestDelayMs: 50,
};

/** Bytes buffered across all connections in one direction (the muxer owns one per direction). */
export interface ByteBudget {
  used: number;
  readonly limit: number;
}

export type ConnState =
  | 'local-init'  // host-initiated: REQUEST queued/sent, waiting for the guest's RESPONSE
  | 'peer-init'   // guest-initiated: connecting to the host listener, RESPONSE not sent yet
  | 'established' // data flows; half-closes show in guestShutdown / hostShutdown
  | 'closing'     // we sent SHUTDOWN(RCV|SEND); waiting for the guest's RST (or the timeout)
  | 'killed'      // RST queued for the guest
  | 'closed';     // over: the muxer forgets it

export type CloseReason = 'clean' | 'reset' | 'timeout' | 'refused';

export interface ConnectionParams {
  readonly localPort: number;
  readonly peerPort: number;
  readonly guestCid: bigint;
  readonly stream: HostStream;
  readonly counters: VsockCounters;
  /** Host -> guest bytes buffered (paused beyond the limit). */
  readonly rxBudget: ByteBudget;
  /** Guest -> host bytes not yet accepted by the host streams (the device stops TX beyond). */
  readonly txBudget: ByteBudget;
  readonly limits?: Partial<ConnLimits>;
  readonly clock?: () => number;
}

const u32 = (x: number): number => x >>> 0;

export class Connection {
  readonly localPort: number;
  readonly peerPort: number;
  private readonly guestCid: bigint;
  private readonly stream: HostStream;
  private readonly counters: VsockCounters;
  private readonly rxBudget: ByteBudget;
  private readonly txBudget: ByteBudget;
  readonly limits: Readonly<ConnLimits>;
  private readonly clock: () => number;

  private st: ConnState;
  private why: CloseReason | undefined;
  /** When the connection is killed if still not progressed (ms on `clock`). */
  expiry: number | undefined;
  /** When a CREDIT_REQUEST becomes due, if the guest's credit has not moved by then. */
  private creditAskAt: number | undefined;

  // Guest -> host.
  private txCnt = 0;          // bytes accepted from the guest
  private fwdCnt = 0;         // of those, bytes the host stream accepted
  private lastFwdCntSent = 0; // fwd_cnt as last told to the guest
  private creditUpdateAsked = false;
  private txHeld = 0;         // unflushed bytes counted in txBudget
  private hostEnded = false;  // we half-closed the host stream (guest said SHUTDOWN_SEND)

  // Host -> guest.
  private rxChunks: Uint8Array[] = [];
  private rxOffset = 0;       // consumed bytes of rxChunks[0]
  private rxBuffered = 0;
  private rxCnt = 0;          // bytes sent to the guest
  private peerBufAlloc = 0;
  private peerFwdCnt = 0;
  private creditRequested = false;
  // A Linux guest sends CREDIT_UPDATE by itself once it has read all but 64 KiB of what we
  // have in flight (virtio_transport_stream_do_dequeue), as Linux's own host side relies on:
  // asking at once, on every exhausted window, made each window a request/update round trip
  // through both event loops, two extra packets and a short data packet per ~32 KiB in the
  // nested sandbox (docs/benchmarks.md, vsock). So we ask only when the guest stayed silent for
  // creditRequestDelayMs: a guest that waits to be asked still gets asked.
  private creditAskDue = false;
  private paused = false;
  /**
   * For the counters (creditStalls): when the guest's credit ran out with host data waiting,
   * and when the guest's packet that gave credit back was handled (clock reads only at these
   * transitions, a few per window, not per packet).
   */
  private stalledAt: number | undefined;
  private reopenedAt: number | undefined;

  /** The header of our next packet, reused (header()): no allocation per packet. */
  private readonly hdr: VsockHeader;

  private pendingRequest = false;
  private pendingResponse = false;
  private pendingRst = false;
  /** SHUTDOWN flags the guest sent (ORed, never undone). */
  guestShutdown = 0;
  /** SHUTDOWN flags we sent the guest. */
  hostShutdown = 0;
  private hostEof = false;    // the host peer will send no more
  private hostGone = false;   // the host stream is dead: nothing more can be written to it

  private constructor(p: ConnectionParams, state: ConnState) {
    this.localPort = p.localPort;
    this.peerPort = p.peerPort;
    this.guestCid = p.guestCid;
    this.stream = p.stream;
    this.counters = p.counters;
    this.rxBudget = p.rxBudget;
    this.txBudget = p.txBudget;
    this.limits = { ...DEFAULT_CONN_LIMITS, ...p.limits };
    this.clock = p.clock ?? (() => performance.now());
    this.st = state;
    this.hdr = {
      srcCid: HOST_CID, dstCid: this.guestCid, srcPort: this.localPort, dstPort: this.peerPort,
      len: 0, type: TYPE_STREAM, op: 0, flags: 0, bufAlloc: this.limits.bufAlloc, fwdCnt: 0,
    };
    p.counters.connectionsOpened++;
  }

  /** Host-initiated: a REQUEST goes to the guest next; established on its RESPONSE. */
  static localInit(p: ConnectionParams): Connection {
    const c = new Connection(p, 'local-init');
    c.pendingRequest = true;
    // The deadline runs from the host's CONNECT, not from when the REQUEST leaves: a guest
    // that never posts RX buffers (driver not up yet) must not leave the client hanging.
    c.expiry = c.clock() + c.limits.connectTimeoutMs;
    return c;
  }

  /** Guest-initiated (from its REQUEST header): RESPONSE once hostConnected() is called. */
  static peerInit(p: ConnectionParams, request: VsockHeader): Connection {
    const c = new Connection(p, 'peer-init');
    c.peerBufAlloc = request.bufAlloc;
    c.peerFwdCnt = request.fwdCnt;
    c.expiry = c.clock() + c.limits.connectTimeoutMs;
    return c;
  }

  get state(): ConnState {
    return this.st;
  }

  /** The earliest time checkExpiry has something to do: a timeout, or a CREDIT_REQUEST becoming due. */
  get deadline(): number | undefined {
    if (this.creditAskAt === undefined) return this.expiry;
    return this.expiry === undefined ? this.creditAskAt : Math.min(this.expiry, this.creditAskAt);
  }

  get closeReason(): CloseReason | undefined {
    return this.why;
  }

  /** Bytes the guest may still send before overrunning our buffer. */
  get ourFreeCredit(): number {
    return this.limits.bufAlloc - u32(this.txCnt - this.fwdCnt);
  }

  /** Bytes we may still send the guest. */
  get peerCredit(): number {
    return Math.max(0, this.peerBufAlloc - u32(this.rxCnt - this.peerFwdCnt));
  }

  get rxBufferedBytes(): number {
    return this.rxBuffered;
  }

  get hostPaused(): boolean {
    return this.paused;
  }

  // ---- events from the host stream ----

  /** The guest-initiated connect to the host listener succeeded. */
  hostConnected(): void {
    if (this.st !== 'peer-init') return;
    this.pendingResponse = true;
    this.expiry = undefined;
  }

  /** Data from the host peer (the connection keeps the buffer). */
  hostData(data: Uint8Array): void {
    if (data.length === 0) return;
    if (this.st === 'closed' || this.st === 'killed' || this.st === 'closing' || (this.guestShutdown & SHUTDOWN_RCV)) {
      return; // nobody will read it: discard, as a socket shut for reading does
    }
    this.rxChunks.push(data);
    this.rxBuffered += data.length;
    this.rxBudget.used += data.length;
    this.updateFlow();
    this.noteStall();
    this.armCreditAsk();
  }

  /** The host peer half-closed: it will send no more. */
  hostEnd(): void {
    this.hostEof = true;
    this.advance();
  }

  /** The host stream died (closed, errored). */
  hostClosed(): void {
    if (this.hostGone) return;
    this.hostGone = true;
    this.hostEof = true;
    this.syncTxBudget();
    if (this.st === 'local-init' || this.st === 'peer-init') {
      this.kill('reset');
      return;
    }
    this.advance();
  }

  // ---- packets from the guest ----

  /**
   * A guest packet for this connection (already validated and routed by the muxer); its payload
   * is bytes [HDR_SIZE, HDR_SIZE + hdr.len) of `buf`.
   */
  handleTx(hdr: VsockHeader, buf: IoVecBuffer): void {
    if (this.st === 'closed') return;
    // Ask again only once the guest's credit moved: a guest whose reader sleeps would otherwise
    // answer every CREDIT_REQUEST with the same zero credit, forever.
    if (hdr.bufAlloc !== this.peerBufAlloc || hdr.fwdCnt !== this.peerFwdCnt) {
      this.creditRequested = this.creditAskDue = false;
      this.creditAskAt = undefined;
    }
    this.peerBufAlloc = hdr.bufAlloc;
    this.peerFwdCnt = hdr.fwdCnt;
    if (this.stalledAt !== undefined && this.peerCredit > 0) {
      const now = this.clock();
      this.counters.creditStalls++;
      this.counters.creditStallUs += Math.round((now - this.stalledAt) * 1000);
      this.stalledAt = undefined;
      this.reopenedAt = now;
    }

    if (hdr.op === OP_RST) {
      const clean = this.st === 'closing' || this.guestShutdown === (SHUTDOWN_RCV | SHUTDOWN_SEND);
      this.finish(clean ? 'clean' : 'reset', clean);
      return;
    }
    switch (this.st) {
      case 'killed':
        return;
      case 'local-init':
        if (hdr.op === OP_RESPONSE) {
          this.st = 'established';
          this.expiry = undefined;
        } else {
          this.invalid();
        }
        break;
      case 'peer-init':
        if (hdr.op === OP_CREDIT_UPDATE) break;
        if (hdr.op === OP_CREDIT_REQUEST) this.creditUpdateAsked = true;
        else this.invalid();
        break;
      case 'established':
        this.established(hdr, buf);
        break;
      case 'closing':
        // Only the guest's RST matters now; credit and stray data are absorbed.
        if (hdr.op === OP_RW) this.counters.bytesFromGuest += hdr.len;
        break;
    }
    this.advance();
  }

  private established(hdr: VsockHeader, buf: IoVecBuffer): void {
    switch (hdr.op) {
      case OP_RW: {
        if (hdr.len === 0) return;
        if (this.guestShutdown & SHUTDOWN_SEND) return this.kill('reset'); // data after a promise not to send
        if (hdr.len > this.ourFreeCredit) return this.kill('reset');      // overran our credit
        this.counters.bytesFromGuest += hdr.len;
        this.txCnt = u32(this.txCnt + hdr.len);
        if (this.hostGone) {
          this.fwdCnt = this.txCnt; // the host is dead: the bytes go nowhere, the guest need not wait
          return;
        }
        this.syncTxBudget();
        const n = hdr.len;
        this.stream.write(buf, HDR_SIZE, n, () => this.flushed(n));
        return;
      }
      case OP_SHUTDOWN: {
        const add = hdr.flags & (SHUTDOWN_RCV | SHUTDOWN_SEND);
        this.guestShutdown |= add;
        if (add & SHUTDOWN_RCV) this.dropRx();
        return;
      }
      case OP_CREDIT_UPDATE:
        return; // the credit fields were taken above
      case OP_CREDIT_REQUEST:
        this.creditUpdateAsked = true;
        return;
      default:
        this.invalid(); // REQUEST/RESPONSE on an established connection
    }
  }

  private invalid(): void {
    this.counters.packetsDropped++;
    this.counters.dropped['invalid-for-state']++;
  }

  private flushed(n: number): void {
    if (this.st === 'closed') return;
    this.fwdCnt = u32(this.fwdCnt + n);
    this.syncTxBudget();
    this.advance();
  }

  /**
   * Brings this connection's share of the TX budget up to date: its unflushed bytes while the
   * host stream lives; nothing once the stream is gone or torn down (its buffer went with it;
   * what a graceful close still flushes is counted by the stream until it leaves the process).
   */
  private syncTxBudget(): void {
    const gone = this.hostGone || this.st === 'closed' || this.st === 'killed';
    const held = gone ? 0 : u32(this.txCnt - this.fwdCnt);
    this.txBudget.used += held - this.txHeld;
    this.txHeld = held;
  }

  // ---- lifecycle ----

  /** Timers: makes a CREDIT_REQUEST due, kills the connection if its deadline passed. Returns whether it killed it. */
  checkExpiry(now: number = this.clock()): boolean {
    if (this.creditAskAt !== undefined && now >= this.creditAskAt) {
      this.creditAskAt = undefined;
      this.creditAskDue = true;
    }
    if (this.expiry === undefined || now < this.expiry) return false;
    this.expiry = undefined;
    if (this.st === 'closed') return false;
    // A guest that posts no RX buffer never gets its RST: forget the connection anyway.
    if (this.st === 'killed') this.finish(this.why ?? 'reset', false);
    else this.kill('timeout');
    return true;
  }

  /** Resets the connection: RST to the guest, the host stream torn down now. */
  kill(reason: CloseReason = 'reset'): void {
    if (this.st === 'closed' || this.st === 'killed') return;
    this.st = 'killed';
    this.why = reason;
    this.pendingRst = true;
    this.pendingRequest = this.pendingResponse = false;
    this.expiry = this.clock() + this.limits.shutdownTimeoutMs;
    this.dropRx();
    this.syncTxBudget();
    this.stream.close(false);
  }

  /** Forgets the connection without telling the guest (device reset, guest RST). */
  finish(reason: CloseReason, graceful: boolean): void {
    if (this.st === 'closed') return;
    const wasKilled = this.st === 'killed';
    this.st = 'closed';
    this.why ??= reason;
    this.expiry = this.creditAskAt = undefined;
    this.pendingRst = this.pendingRequest = this.pendingResponse = false;
    this.dropRx();
    this.syncTxBudget();
    if (!wasKilled && !this.hostGone) this.stream.close(graceful);
    this.hostGone = true;
    this.counters.connectionsClosed++;
    if (this.why !== 'clean') this.counters.connectionsReset++;
  }

  /** Moves the connection along after any event: half-closes, final RST, shutdown timers. */
  private advance(): void {
    if (this.st !== 'established') return;
    const unflushed = u32(this.txCnt - this.fwdCnt);
    if ((this.guestShutdown & SHUTDOWN_SEND) && unflushed === 0 && !this.hostEnded && !this.hostGone) {
      this.hostEnded = true;
      this.stream.end();
    }
    if (this.guestShutdown === (SHUTDOWN_RCV | SHUTDOWN_SEND)) {
      // The guest is done both ways: once its data reached the host, we end it with RST.
      if (unflushed === 0 || this.hostGone) {
        this.why = 'clean';
        this.pendingRst = true;
        this.st = 'killed';
        this.expiry = this.clock() + this.limits.shutdownTimeoutMs;
        if (!this.hostGone) this.stream.close(true);
        this.hostGone = true;
        this.syncTxBudget();
      } else if (this.expiry === undefined) {
        this.expiry = this.clock() + this.limits.shutdownTimeoutMs;
      }
    }
    this.updateFlow();
    this.armCreditAsk(); // the guest's packet may have left its credit at zero
  }

  /** Flags of the SHUTDOWN we owe the guest, or 0. Data already buffered goes out first. */
  private shutdownToSend(): number {
    if (this.st !== 'established' || this.rxBuffered > 0) return 0;
    let f = 0;
    if (this.hostEof) f |= SHUTDOWN_SEND;
    const guestToHostDone = (this.guestShutdown & SHUTDOWN_SEND) !== 0 && u32(this.txCnt - this.fwdCnt) === 0;
    if (this.hostGone || (this.hostEof && guestToHostDone)) f |= SHUTDOWN_RCV;
    return f & ~this.hostShutdown ? f | this.hostShutdown : 0;
  }

  // Linux guests with the 2025 credit fix (in stable kernels, Debian's 6.1 among them) keep at
  // most min(our buf_alloc, their own buf_alloc) in flight, so the window the guest really has
  // is the smaller one. The update pace follows that window: paced by ours alone, a guest at
  // Linux's default 256 KiB would send its window and wait for an update due only after 1 MiB
  // was freed, forever. Older guests use our whole buf_alloc; they just hear from us sooner.
  private guestNeedsCreditUpdate(): boolean {
    if (this.st !== 'established' || (this.guestShutdown & SHUTDOWN_SEND)) return false;
    const freed = u32(this.fwdCnt - this.lastFwdCntSent);
    if (freed === 0) return false;
    const window = Math.min(this.limits.bufAlloc, this.peerBufAlloc);
    const guestSeesFree = window - u32(this.txCnt - this.lastFwdCntSent);
    return guestSeesFree < Math.min(this.limits.creditUpdateThreshold, window / 2) ||
      freed >= Math.min(this.limits.creditUpdateFreed, window / 4);
  }

  /**
   * The op of the next packet this connection would send the guest, or 0 when it has none.
   * `room` is the payload the RX buffer at hand can take (data needs at least one byte).
   */
  private nextOp(room: number): number {
    if (this.pendingRst) return OP_RST;
    if (this.pendingResponse) return OP_RESPONSE;
    if (this.pendingRequest) return OP_REQUEST;
    // Before our RESPONSE the guest socket is still connecting: anything else would reset it.
    if (this.st !== 'established') return 0;
    if (this.rxBuffered > 0 && room > 0) {
      if (this.peerCredit > 0) return OP_RW;
      if (!this.creditRequested && this.creditAskDue) return OP_CREDIT_REQUEST;
    }
    if (this.shutdownToSend()) return OP_SHUTDOWN;
    if (this.creditUpdateAsked || this.guestNeedsCreditUpdate()) return OP_CREDIT_UPDATE;
    return 0;
  }

  hasPendingRx(): boolean {
    return this.nextOp(Infinity) !== 0;
  }

  /** Writes the next packet into `w`; false when there is nothing to send. */
  fillRx(w: RxPacketWriter): boolean {
    const op = this.nextOp(w.room);
    if (op === 0) return false;
    let flags = 0;
    switch (op) {
      case OP_RST:
        this.pendingRst = false;
        this.finish(this.why ?? 'reset', false);
        break;
      case OP_RESPONSE:
        this.pendingResponse = false;
        this.st = 'established';
        break;
      case OP_REQUEST:
        this.pendingRequest = false;
        this.expiry = this.clock() + this.limits.connectTimeoutMs;
        break;
      case OP_RW:
        if (this.reopenedAt !== undefined) {
          this.counters.creditHopUs += Math.round((this.clock() - this.reopenedAt) * 1000);
          this.reopenedAt = undefined;
        }
        this.copyRx(w);
        this.noteStall();
        break;
      case OP_CREDIT_REQUEST:
        this.creditRequested = true;
        break;
      case OP_SHUTDOWN:
        flags = this.shutdownToSend();
        this.hostShutdown = flags;
        if (flags === (SHUTDOWN_RCV | SHUTDOWN_SEND)) {
          this.st = 'closing';
          this.expiry = this.clock() + this.limits.shutdownTimeoutMs;
        }
        break;
      case OP_CREDIT_UPDATE:
        this.creditUpdateAsked = false;
        break;
    }
    this.lastFwdCntSent = this.fwdCnt;
    w.writeHeader(this.header(op, flags));
    this.counters.rxPackets++;
    this.updateFlow();
    this.armCreditAsk();
    return true;
  }

  /** Out of the guest's credit with data waiting and nothing asked yet: the request's clock starts. */
  private armCreditAsk(): void {
    if (this.rxBuffered === 0 || this.peerCredit > 0 || this.creditRequested || this.creditAskDue || this.creditAskAt !== undefined) return;
    if (this.st !== 'established') return;
    this.creditAskAt = this.clock() + this.limits.creditRequestDelayMs;
  }

  /** Our packet's header; valid until the next call (the writer encodes it at once). */
  private header(op: number, flags: number): VsockHeader {
    const h = this.hdr;
    h.len = 0;
    h.op = op;
    h.flags = flags;
    h.fwdCnt = this.fwdCnt;
    return h;
  }

  /** Out of the guest's credit with host data waiting: the stall's clock starts (counters only). */
  private noteStall(): void {
    if (this.stalledAt === undefined && this.rxBuffered > 0 && this.peerCredit === 0 && this.st === 'established') {
      this.stalledAt = this.clock();
    }
  }

  /** One RW packet: as much as the guest's credit, the RX buffer and our buffered data allow. */
  private copyRx(w: RxPacketWriter): void {
    const room = w.room;
    const credit = this.peerCredit;
    const max = Math.min(credit, room);
    let left = max;
    while (left > 0 && this.rxChunks.length > 0) {
      const chunk = this.rxChunks[0]!;
      const n = w.appendPayload(chunk.subarray(this.rxOffset, this.rxOffset + left));
      if (n === 0) break;
      left -= n;
      this.rxOffset += n;
      if (this.rxOffset === chunk.length) {
        this.rxChunks.shift();
        this.rxOffset = 0;
      }
    }
    const sent = max - left;
    if (sent === room) this.counters.rxDataFull++;
    else if (sent === credit) this.counters.rxDataShortCredit++;
    else this.counters.rxDataShortData++;
    this.rxBuffered -= sent;
    this.rxBudget.used -= sent;
    this.rxCnt = u32(this.rxCnt + sent);
    this.counters.bytesToGuest += sent;
  }

  private dropRx(): void {
    this.stalledAt = this.reopenedAt = undefined;
    this.rxBudget.used -= this.rxBuffered;
    this.rxChunks = [];
    this.rxOffset = 0;
    this.rxBuffered = 0;
  }

  /** Pauses the host stream while our buffer (or everyone's) is full, resumes it otherwise. */
  updateFlow(): void {
    if (this.hostGone || this.st === 'closed' || this.st === 'killed') return;
    const full = this.rxBuffered >= this.limits.rxBufferLimit || this.rxBudget.used >= this.rxBudget.limit;
    if (full && !this.paused) {
      this.paused = true;
      this.stream.pause();
    } else if (!full && this.paused) {
      this.paused = false;
      this.stream.resume();
    }
  }
}
