// The host side of virtio-vsock: Firecracker's "hybrid vsock" over Unix domain sockets. It owns
// the listening socket at `uds_path`, the CONNECT handshake of host clients, outgoing connects to
// `uds_path_<port>`, the connection table (routing guest packets by (host port, guest port)),
// host port allocation, the RX schedule (which connection speaks next) and the global limits.
// It must not touch virtqueues (the device hands it parsed packets and RX writers) nor know the
// per-connection protocol (csm.ts). See docs/vsock.md for the protocol as a host client sees it.
//
//   host-initiated: client connects to PATH, sends "CONNECT <port>\n"; we send the guest a
//     REQUEST from a fresh host port; on its RESPONSE the client reads "OK <host_port>\n" and
//     the socket becomes the byte stream. RST or timeout: the client's socket is closed.
//   guest-initiated to port P: we connect to "PATH_P"; connected -> RESPONSE, else RST.

import { Duplex } from 'node:stream';
import * as net from 'node:net';
import { type CloseReason, type ConnLimits, Connection, type ByteBudget, type HostStream } from './csm';
import { countDrop, newCounters, type VsockCounters } from './counters';
import { listenOwned, type OwnSocket } from '../../socket-path';
import { UDS_PATH_MAX } from './spec';
import type { IoVecBuffer } from '../iovec';
import { HOST_CID, OP_REQUEST, OP_RST, TYPE_STREAM, type RxPacketWriter, type VsockHeader } from './packet';
import { TsvmmError } from '../../../lib/errors';

export const MAX_CONNECTIONS = 1023;
/** Host ports for host-initiated connections: [2^30, 2^31), round robin (as Firecracker). */
export const LOCAL_PORT_MIN = 2 ** 30;
export const LOCAL_PORT_END = 2 ** 31;
/** RSTs for unknown connections waiting for an RX buffer; more are dropped (the guest times out). */
export const RST_QUEUE_MAX = 256;

export interface MuxerOptions {
  readonly guestCid: number;
  /** Where host clients connect; guest connects go to `${udsPath}_${port}`. None: connect() only. */
  readonly udsPath?: string;
  readonly maxConnections?: number;
  /** Host -> guest bytes buffered across all connections before every host stream pauses. */
  readonly totalRxBufferLimit?: number;
  /** Guest -> host bytes the host streams have not accepted, across all connections, before TX stops. */
  readonly totalTxBufferLimit?: number;
  /** Longest accepted CONNECT line, newline included. */
  readonly maxCommandLength?: number;
  /** A host client must complete its CONNECT line within this. */
  readonly commandTimeoutMs?: number;
  readonly connLimits?: Partial<ConnLimits>;
  readonly counters?: VsockCounters;
}

export class VsockSetupError extends TsvmmError {}

export class VsockConnectError extends TsvmmError {
  constructor(readonly port: number, readonly reason: CloseReason | 'limit' | 'inactive') {
    super(`vsock connect to guest port ${port} failed: ${reason}`);
  }
}

/** An established in-process connection was reset (guest RST, timeout, device reset). */
export class VsockResetError extends TsvmmError {
  constructor() {
    super('vsock connection reset');
  }
}

interface Entry {
  readonly key: string;
  readonly conn: Connection;
  /** Host-initiated: its host port came from allocLocalPort and goes back on close. */
  readonly ownsPort: boolean;
  timer?: NodeJS.Timeout;
  timerAt?: number;
  onEstablished?: () => void;
  onClosed?: (why: CloseReason) => void;
}

const keyOf = (localPort: number, peerPort: number): string => `${localPort}:${peerPort}`;

/**
 * Where a closed connection's host socket lingers: the bytes it still holds were the guest's,
 * so they stay counted (TX budget, a connection slot for the fd) until they leave the process.
 */
interface Lingering {
  start(s: net.Socket, bytes: number): void;
  end(s: net.Socket, bytes: number): void;
}

/** A Unix socket as a connection's host end. */
class SocketStream implements HostStream {
  /** Set by the muxer: runs a late callback as a connection mutation (so the RX schedule sees it). */
  mutate: (fn: () => void) => void = (fn) => fn();
  constructor(private readonly s: net.Socket, private readonly lingerMs: number, private readonly lingering: Lingering) {}

  // Guest -> host data goes straight from guest memory into the socket with one write(2) when
  // the socket has nothing queued, as libuv's own first try would, but without first copying
  // the payload into a Buffer and without a write request and callback per packet (a CPU
  // profile in the nested sandbox put those at about a fifth of the main thread's time per
  // packet). Whatever the socket does not take now (EAGAIN, a short write) is copied and queued
  // on the stream, and so is any error, which the stream then reports as usual.
  write(data: IoVecBuffer, offset: number, len: number, flushed: () => void): void {
    let done = 0;
    const fd = this.directFd();
    if (fd >= 0) {
      try {
        done = data.writeTo(fd, offset, len);
      } catch {
        done = 0; // EAGAIN: the socket is full; any other error: the stream reports it below
      }
    }
    if (done >= len) {
      flushed();
      return;
    }
    const rest = data.copyOut(offset + done, len - done);
    this.s.write(rest, (err) => { if (!err) this.mutate(flushed); });
  }

  /** The socket's fd when a direct write keeps the byte order (nothing queued, open, connected); else -1. */
  private directFd(): number {
    const s = this.s;
    if (s.writableLength > 0 || s.destroyed || s.writableEnded || s.connecting) return -1;
    // A net.Socket's fd is not public API; every Unix socket libuv opens is non-blocking.
    const fd = (s as unknown as { _handle?: { fd?: unknown } })._handle?.fd;
    return typeof fd === 'number' && fd >= 0 ? fd : -1;
  }
  end(): void {
    this.s.end();
  }
  close(graceful: boolean): void {
    if (!graceful || this.s.writableFinished) {
      this.s.destroy();
      return;
    }
    // Let written data reach the peer, but never hold the fd for a peer that stopped reading.
    // What the socket still queues (the write in flight included) is released only when the
    // socket is gone: its connection no longer counts it.
    const held = this.s.writableLength;
    this.lingering.start(this.s, held);
    const t = setTimeout(() => this.s.destroy(), this.lingerMs);
    t.unref();
    this.s.once('finish', () => this.s.destroy());
    this.s.once('close', () => {
      clearTimeout(t);
      this.lingering.end(this.s, held);
    });
    this.s.end();
  }
  pause(): void {
    this.s.pause();
  }
  resume(): void {
    this.s.resume();
  }
}

/** An in-process host end (muxer.connect): the caller gets the Duplex, the connection this. */
class InternalStream implements HostStream {
  readonly duplex: Duplex;
  conn: Connection | undefined;
  mutate: (fn: () => void) => void = (fn) => fn();
  private heldWrite: (() => void) | undefined;
  private heldFlushes: (() => void)[] = [];
  private paused = false;
  private closedByUs = false;

  constructor() {
    this.duplex = new Duplex({
      read: () => {
        const f = this.heldFlushes;
        if (f.length === 0) return;
        this.heldFlushes = [];
        this.mutate(() => { for (const cb of f) cb(); });
      },
      write: (chunk: Buffer, _enc, cb) => {
        this.mutate(() => this.conn?.hostData(new Uint8Array(chunk)));
        if (this.paused) this.heldWrite = cb;
        else cb();
      },
      final: (cb) => {
        this.mutate(() => this.conn?.hostEnd());
        cb();
      },
      destroy: (err, cb) => {
        if (!this.closedByUs) this.mutate(() => this.conn?.hostClosed());
        cb(err);
      },
    });
  }
  write(data: IoVecBuffer, offset: number, len: number, flushed: () => void): void {
    if (this.duplex.push(data.copyOut(offset, len))) flushed();
    else this.heldFlushes.push(flushed);
  }
  end(): void {
    this.duplex.push(null);
  }
  close(graceful: boolean): void {
    if (this.closedByUs) return;
    this.closedByUs = true;
    if (graceful) {
      this.duplex.push(null);
      this.duplex.end();
    } else if (this.duplex.listenerCount('error') > 0) {
      this.duplex.destroy(new VsockResetError());
    } else {
      // Nobody listens for errors (e.g. the connect() promise was rejected instead): an
      // unhandled 'error' would take the whole VMM down for one guest's RST.
      this.duplex.destroy();
    }
  }
  pause(): void {
    this.paused = true;
  }
  resume(): void {
    this.paused = false;
    const cb = this.heldWrite;
    this.heldWrite = undefined;
    cb?.();
  }
}

export class VsockMuxer {
  readonly guestCid: bigint;
  readonly udsPath: string | undefined;
  readonly counters: VsockCounters;
  /** Set by the device: called when some packet waits for an RX buffer. */
  onRxReady: () => void = () => {};
  /** Set by the device: called when TX may go on after the TX budget was exhausted. */
  onTxReady: () => void = () => {};

  private readonly maxConnections: number;
  private readonly maxCommandLength: number;
  private readonly commandTimeoutMs: number;
  private readonly connLimits: Partial<ConnLimits>;
  private readonly rxBudget: ByteBudget;
  private readonly txBudget: ByteBudget;
  private rxBudgetFull = false;
  private txBudgetFull = false;

  private readonly conns = new Map<string, Entry>();
  private readonly handshakes = new Set<net.Socket>();
  /** Host sockets of closed connections still flushing (SocketStream.close): fds and TX bytes we hold. */
  private readonly lingering = new Set<net.Socket>();
  private readonly lingerHooks: Lingering = {
    start: (s, bytes) => {
      this.lingering.add(s);
      this.txBudget.used += bytes;
    },
    end: (s, bytes) => {
      if (!this.lingering.delete(s)) return;
      this.txBudget.used -= bytes;
      this.budgetsChanged();
    },
  };
  private readonly rxReady = new Set<Entry>();
  private readonly rstQueue: { localPort: number; peerPort: number }[] = [];
  private readonly localPorts = new Set<number>();
  private lastLocalPort = LOCAL_PORT_MIN - 1;
  private server: net.Server | undefined;
  private exitHook: (() => void) | undefined;
  private own: OwnSocket | undefined;

  constructor(opts: MuxerOptions) {
    this.guestCid = BigInt(opts.guestCid);
    // Whatever door the path came through: libuv would silently truncate a longer
    // `${udsPath}_${port}`, and a truncated guest connect can reach our own listener.
    if (opts.udsPath !== undefined && Buffer.byteLength(opts.udsPath) > UDS_PATH_MAX) {
      throw new VsockSetupError(`uds path ${opts.udsPath} is over ${UDS_PATH_MAX} bytes: "_<port>" would not fit a Unix socket address`);
    }
    this.udsPath = opts.udsPath;
    this.counters = opts.counters ?? newCounters();
    this.maxConnections = opts.maxConnections ?? MAX_CONNECTIONS;
    this.maxCommandLength = opts.maxCommandLength ?? 64;
    this.commandTimeoutMs = opts.commandTimeoutMs ?? 10_000;
    this.connLimits = opts.connLimits ?? {};
    this.rxBudget = { used: 0, limit: opts.totalRxBufferLimit ?? 16 * 1024 * 1024 };
    this.txBudget = { used: 0, limit: opts.totalTxBufferLimit ?? 16 * 1024 * 1024 };
  }

  /**
   * Connections, host clients still sending their CONNECT line, and host sockets of closed
   * connections still flushing: every host fd the guest or host clients make us hold.
   */
  get connectionCount(): number {
    return this.conns.size + this.handshakes.size + this.lingering.size;
  }

  /** Host sockets of closed connections still flushing the guest's last bytes. */
  get lingeringCount(): number {
    return this.lingering.size;
  }

  get rxBufferedBytes(): number {
    return this.rxBudget.used;
  }

  /**
   * Guest -> host bytes accepted from the guest that have not left the process yet: not taken
   * by the host streams, or queued in the socket of a closed connection that still flushes.
   */
  get txBufferedBytes(): number {
    return this.txBudget.used;
  }

  /**
   * Whether the device must leave TX packets in the ring for now: the host streams hold the
   * TX budget. The guest's data then waits in its own memory; onTxReady says when to go on.
   */
  get txBlocked(): boolean {
    return this.txBudget.used >= this.txBudget.limit;
  }

  // ---- the listening socket ----

  /** Binds `udsPath`, owner-only; an existing path is an error unless it is a stale socket of ours (socket-path.ts). */
  async listen(): Promise<void> {
    const path = this.udsPath;
    if (path === undefined || this.server) return;
    const server = net.createServer({ allowHalfOpen: true, pauseOnConnect: false }, (s) => this.accept(s));
    let own: OwnSocket;
    try {
      own = await listenOwned(server, path);
    } catch (e) {
      throw new VsockSetupError(`cannot listen on ${path}: ${(e as Error).message}`);
    }
    server.on('error', () => {}); // accept errors (EMFILE) must not kill the VMM
    this.server = server;
    this.own = own;
    this.exitHook = () => own.remove();
    process.once('exit', this.exitHook);
  }

  /** Drops every connection, stops listening and removes `udsPath` (if it is still our socket). */
  async close(): Promise<void> {
    this.reset();
    for (const s of this.handshakes) s.destroy();
    this.handshakes.clear();
    for (const s of [...this.lingering]) s.destroy();
    const server = this.server;
    this.server = undefined;
    if (!server) return;
    await new Promise<void>((resolve) => server.close(() => resolve()));
    if (this.exitHook) {
      process.off('exit', this.exitHook);
      this.exitHook = undefined;
    }
    this.own?.remove();
    this.own?.release();
  }

  /** A host client connected: read its "CONNECT <port>\n" line, then open the connection. */
  private accept(s: net.Socket): void {
    if (this.connectionCount >= this.maxConnections) {
      this.counters.connectionsRefused++;
      s.destroy();
      return;
    }
    this.handshakes.add(s);
    let line = Buffer.alloc(0);
    const fail = (): void => {
      if (!this.handshakes.delete(s)) return;
      clearTimeout(timer);
      this.counters.connectionsRefused++;
      s.destroy();
    };
    const timer = setTimeout(fail, this.commandTimeoutMs);
    timer.unref();
    const onData = (chunk: Buffer): void => {
      line = Buffer.concat([line, chunk]);
      const nl = line.indexOf(0x0a);
      if (nl < 0) {
        if (line.length >= this.maxCommandLength) fail();
        return;
      }
      if (nl + 1 > this.maxCommandLength) return fail();
      const m = /^connect\s+(\d{1,10})\s*$/i.exec(line.subarray(0, nl).toString('latin1'));
      const port = m ? Number(m[1]) : -1;
      if (port < 0 || port > 0xffff_ffff) return fail();
      this.handshakes.delete(s);
      clearTimeout(timer);
      s.off('data', onData).off('end', fail).off('close', fail);
      this.openLocal(port, s, line.subarray(nl + 1));
    };
    s.on('data', onData).on('end', fail).on('close', fail).on('error', () => {});
  }

  private openLocal(peerPort: number, s: net.Socket, early: Uint8Array): void {
    const localPort = this.allocLocalPort(peerPort);
    const stream = new SocketStream(s, this.lingerMs(), this.lingerHooks);
    const conn = Connection.localInit(this.params(localPort, peerPort, stream));
    const e: Entry = { key: keyOf(localPort, peerPort), conn, ownsPort: true };
    stream.mutate = (fn) => this.mutate(e, fn);
    e.onEstablished = () => { s.write(`OK ${localPort}\n`); };
    this.add(e);
    this.wireSocket(e, s);
    if (early.length > 0) this.mutate(e, () => conn.hostData(new Uint8Array(early)));
  }

  private wireSocket(e: Entry, s: net.Socket): void {
    s.on('data', (d: Buffer) => this.mutate(e, () => e.conn.hostData(new Uint8Array(d.buffer, d.byteOffset, d.length))));
    s.on('end', () => this.mutate(e, () => e.conn.hostEnd()));
    s.on('close', () => this.mutate(e, () => e.conn.hostClosed()));
    s.on('error', () => {}); // 'close' follows
  }

  /**
   * Opens a host-initiated connection to guest `port` from inside tsvmm (no UDS round trip).
   * Resolves once the guest accepted; rejects with VsockConnectError on RST, timeout or limit.
   */
  connect(port: number): Promise<Duplex> {
    if (!Number.isInteger(port) || port < 0 || port > 0xffff_ffff) {
      return Promise.reject(new RangeError(`vsock port ${port} is not a u32`));
    }
    if (this.connectionCount >= this.maxConnections) {
      this.counters.connectionsRefused++;
      return Promise.reject(new VsockConnectError(port, 'limit'));
    }
    const stream = new InternalStream();
    const localPort = this.allocLocalPort(port);
    const conn = Connection.localInit(this.params(localPort, port, stream));
    const e: Entry = { key: keyOf(localPort, port), conn, ownsPort: true };
    stream.conn = conn;
    stream.mutate = (fn) => this.mutate(e, fn);
    return new Promise((resolve, reject) => {
      e.onEstablished = () => resolve(stream.duplex);
      e.onClosed = (why) => reject(new VsockConnectError(port, why));
      this.add(e);
    });
  }

  // ---- packets from the guest (already validated by packet.ts) ----

  handleTx(hdr: VsockHeader, buf: IoVecBuffer): void {
    const e = this.conns.get(keyOf(hdr.dstPort, hdr.srcPort));
    if (e) {
      this.mutate(e, () => e.conn.handleTx(hdr, buf));
      return;
    }
    if (hdr.op === OP_REQUEST) {
      this.peerRequest(hdr);
      return;
    }
    countDrop(this.counters, 'unroutable');
    if (hdr.op !== OP_RST) this.enqueueRst(hdr.dstPort, hdr.srcPort);
  }

  /** Answers a packet nobody owns with RST (host port `localPort` -> guest port `peerPort`). */
  enqueueRst(localPort: number, peerPort: number): void {
    if (this.rstQueue.length >= RST_QUEUE_MAX) {
      countDrop(this.counters, 'rst-queue-full');
      return;
    }
    this.rstQueue.push({ localPort, peerPort });
    this.onRxReady();
  }

  private peerRequest(hdr: VsockHeader): void {
    if (this.udsPath === undefined || this.connectionCount >= this.maxConnections) {
      this.counters.connectionsRefused++;
      this.enqueueRst(hdr.dstPort, hdr.srcPort);
      return;
    }
    const s = net.connect({ path: `${this.udsPath}_${hdr.dstPort}`, allowHalfOpen: true });
    const stream = new SocketStream(s, this.lingerMs(), this.lingerHooks);
    const conn = Connection.peerInit(this.params(hdr.dstPort, hdr.srcPort, stream), hdr);
    const e: Entry = { key: keyOf(hdr.dstPort, hdr.srcPort), conn, ownsPort: false };
    stream.mutate = (fn) => this.mutate(e, fn);
    let connected = false;
    s.once('connect', () => {
      connected = true;
      this.mutate(e, () => conn.hostConnected());
    });
    // Nobody listening at PATH_P: refuse before the generic 'close' handler sees it.
    s.once('close', () => {
      if (connected) return;
      this.counters.connectionsRefused++;
      this.mutate(e, () => conn.kill('refused'));
    });
    this.add(e);
    this.wireSocket(e, s);
  }

  // ---- RX: packets for the guest ----

  hasPendingRx(): boolean {
    return this.rstQueue.length > 0 || this.rxReady.size > 0;
  }

  /** Writes the next packet for the guest into `w`; false when nothing fits or nothing waits. */
  fillRx(w: RxPacketWriter): boolean {
    const rst = this.rstQueue.shift();
    if (rst) {
      w.writeHeader({
        srcCid: HOST_CID, dstCid: this.guestCid, srcPort: rst.localPort, dstPort: rst.peerPort,
        len: 0, type: TYPE_STREAM, op: OP_RST, flags: 0, bufAlloc: 0, fwdCnt: 0,
      });
      this.counters.rxPackets++;
      return true;
    }
    for (const e of this.rxReady) {
      let filled = false;
      this.mutate(e, () => { filled = e.conn.fillRx(w); });
      if (filled) {
        // Round robin: a connection with more to say goes to the back of the line.
        if (this.rxReady.delete(e) && e.conn.hasPendingRx()) this.rxReady.add(e);
        return true;
      }
    }
    return false;
  }

  /** Device reset: every connection is dropped, host sockets closed, nothing sent to the guest. */
  reset(): void {
    for (const e of [...this.conns.values()]) this.mutate(e, () => e.conn.finish('reset', false));
    this.rstQueue.length = 0;
    this.rxReady.clear();
    this.localPorts.clear();
    this.lastLocalPort = LOCAL_PORT_MIN - 1;
  }

  // ---- bookkeeping ----

  private params(localPort: number, peerPort: number, stream: HostStream) {
    return {
      localPort, peerPort, stream, guestCid: this.guestCid, counters: this.counters,
      rxBudget: this.rxBudget, txBudget: this.txBudget, limits: this.connLimits,
    };
  }

  private lingerMs(): number {
    return this.connLimits.shutdownTimeoutMs ?? 2000;
  }

  /** A free host port for a connection to guest `peerPort` (at most 1023 are in use: this ends). */
  private allocLocalPort(peerPort: number): number {
    for (;;) {
      this.lastLocalPort = this.lastLocalPort + 1 >= LOCAL_PORT_END ? LOCAL_PORT_MIN : this.lastLocalPort + 1;
      // A guest-initiated connection may sit on the same (port, port) pair: skip that too.
      if (!this.localPorts.has(this.lastLocalPort) && !this.conns.has(keyOf(this.lastLocalPort, peerPort))) break;
    }
    this.localPorts.add(this.lastLocalPort);
    return this.lastLocalPort;
  }

  private add(e: Entry): void {
    this.conns.set(e.key, e);
    this.mutate(e, () => {});
  }

  /** Runs `fn` on a connection, then applies what changed: OK line, RX schedule, timer, removal. */
  private mutate(e: Entry, fn: () => void): void {
    if (this.conns.get(e.key) !== e) return; // a late socket event for a forgotten connection
    const before = e.conn.state;
    fn();
    const c = e.conn;
    if (before === 'local-init' && c.state === 'established') e.onEstablished?.();
    if (c.state === 'closed') {
      this.conns.delete(e.key);
      this.rxReady.delete(e);
      if (e.ownsPort) this.localPorts.delete(c.localPort);
      clearTimeout(e.timer);
      e.onClosed?.(c.closeReason ?? 'reset');
    } else {
      if (c.expiry !== e.timerAt) {
        clearTimeout(e.timer);
        e.timerAt = c.expiry;
        e.timer = undefined;
        if (c.expiry !== undefined) {
          e.timer = setTimeout(() => {
            // Timers may fire a hair early: forget this one so the mutation re-arms it if needed.
            e.timerAt = undefined;
            this.mutate(e, () => c.checkExpiry());
          }, Math.max(0, c.expiry - performance.now()) + 1);
          e.timer.unref();
        }
      }
      if (c.hasPendingRx()) {
        if (!this.rxReady.has(e)) this.rxReady.add(e);
        this.onRxReady();
      } else {
        this.rxReady.delete(e);
      }
    }
    this.budgetsChanged();
  }

  /**
   * The total crossed its limit either way: every host stream pauses (or resumes) now, not at
   * its own next read, so the total overshoots by at most the read that crossed it.
   */
  private budgetsChanged(): void {
    const rxFull = this.rxBudget.used >= this.rxBudget.limit;
    if (this.rxBudgetFull !== rxFull) for (const o of this.conns.values()) o.conn.updateFlow();
    this.rxBudgetFull = rxFull;
    const txFull = this.txBlocked;
    if (this.txBudgetFull && !txFull) this.onTxReady();
    this.txBudgetFull = txFull;
  }
}
