// The host side of virtio-vsock: Firecracker's "hybrid vsock" over Unix domain sockets, split as
// Firecracker splits unix/muxer.rs. This module owns the connection table (routing guest packets
// by (host port, guest port)), opening connections (a host client's CONNECT, tsvmm's own
// connect(), a guest's REQUEST to `uds_path_<port>`), host port allocation, the global limits and
// what follows each change of a connection (its OK line, RX turn, deadline, removal). The
// listening socket and handshake are host-listener.ts's, the host ends host-stream.ts's, who
// speaks next muxer-rxq.ts's, deadlines muxer-killq.ts's. It must not touch virtqueues (the
// device hands it parsed packets and RX writers and pulls packets once per turn) nor know the
// per-connection protocol (csm.ts). See docs/vsock.md for the protocol as a host client sees it.
//
//   host-initiated: client connects to PATH, sends "CONNECT <port>\n"; we send the guest a
//     REQUEST from a fresh host port; on its RESPONSE the client reads "OK <host_port>\n" and
//     the socket becomes the byte stream. RST or timeout: the client's socket is closed.
//   guest-initiated to port P: we connect to "PATH_P"; connected -> RESPONSE, else RST.

import type { Duplex } from 'node:stream';
import * as net from 'node:net';
import { type CloseReason, type ConnLimits, type ConnState, Connection, type ByteBudget, type HostStream } from './csm';
import { countDrop, newCounters, type VsockCounters } from './counters';
import { VsockConnectError, VsockSetupError } from './errors';
import { HostListener } from './host-listener';
import { InternalStream, type Lingering, SocketStream } from './host-stream';
import { MuxerKillQueue } from './muxer-killq';
import { MuxerRxQueue } from './muxer-rxq';
import { UDS_PATH_MAX } from './spec';
import type { IoVecBuffer } from '../iovec';
import { HOST_CID, OP_REQUEST, OP_RST, TYPE_STREAM, type RxPacketWriter, type VsockHeader } from './packet';

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

interface Entry {
  readonly key: string;
  readonly conn: Connection;
  /** Host-initiated: its host port came from allocLocalPort and goes back on close. */
  readonly ownsPort: boolean;
  /** The deadline (Connection.deadline) last handed to the kill queue. */
  deadline?: number;
  onEstablished?: () => void;
  onClosed?: (why: CloseReason) => void;
}

const keyOf = (localPort: number, peerPort: number): string => `${localPort}:${peerPort}`;

export class VsockMuxer {
  readonly guestCid: bigint;
  readonly udsPath: string | undefined;
  readonly counters: VsockCounters;
  /** Set by the device: some packet waits for an RX buffer (the device pulls it on its next turn). */
  onRxReady: () => void = () => {};
  /** Set by the device: called when TX may go on after the TX budget was exhausted. */
  onTxReady: () => void = () => {};

  private readonly maxConnections: number;
  private readonly connLimits: Partial<ConnLimits>;
  private readonly rxBudget: ByteBudget;
  private readonly txBudget: ByteBudget;
  private rxBudgetFull = false;
  private txBudgetFull = false;

  private readonly conns = new Map<string, Entry>();
  private readonly listener: HostListener | undefined;
  private readonly rxq = new MuxerRxQueue<Entry>(RST_QUEUE_MAX);
  private readonly killq = new MuxerKillQueue<Entry>((e) => {
    e.deadline = undefined;
    this.mutate(e, () => e.conn.checkExpiry());
  });
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
  private readonly localPorts = new Set<number>();
  private lastLocalPort = LOCAL_PORT_MIN - 1;

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
    this.connLimits = opts.connLimits ?? {};
    this.rxBudget = { used: 0, limit: opts.totalRxBufferLimit ?? 16 * 1024 * 1024 };
    this.txBudget = { used: 0, limit: opts.totalTxBufferLimit ?? 16 * 1024 * 1024 };
    if (opts.udsPath !== undefined) {
      this.listener = new HostListener(opts.udsPath, { maxCommandLength: opts.maxCommandLength ?? 64, commandTimeoutMs: opts.commandTimeoutMs ?? 10_000 }, {
        admit: () => this.connectionCount < this.maxConnections,
        refused: () => { this.counters.connectionsRefused++; },
        connect: (port, s, early) => this.openLocal(port, s, early),
      });
    }
  }

  /**
   * Connections, host clients still sending their CONNECT line, and host sockets of closed
   * connections still flushing: every host fd the guest or host clients make us hold.
   */
  get connectionCount(): number {
    return this.conns.size + (this.listener?.handshaking ?? 0) + this.lingering.size;
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

  /** Binds `udsPath` (host-listener.ts); nothing to do without one. */
  async listen(): Promise<void> {
    await this.listener?.listen();
  }

  /** Drops every connection, stops listening and removes `udsPath` (if it is still our socket). */
  async close(): Promise<void> {
    this.reset();
    for (const s of [...this.lingering]) s.destroy();
    await this.listener?.close();
  }

  // ---- opening connections ----

  /** A host client sent "CONNECT <port>\n": ask the guest, from a fresh host port. */
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

  /** The guest asked for host port P: connect to `${udsPath}_P`; connected -> RESPONSE, else RST. */
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
    if (!this.rxq.pushRst({ localPort, peerPort })) {
      countDrop(this.counters, 'rst-queue-full');
      return;
    }
    this.onRxReady();
  }

  // ---- RX: packets for the guest, pulled by the device ----

  hasPendingRx(): boolean {
    return this.rxq.pending;
  }

  /** Writes the next packet for the guest into `w`; false when nothing fits or nothing waits. */
  fillRx(w: RxPacketWriter): boolean {
    const rst = this.rxq.popRst();
    if (rst) {
      w.writeHeader({
        srcCid: HOST_CID, dstCid: this.guestCid, srcPort: rst.localPort, dstPort: rst.peerPort,
        len: 0, type: TYPE_STREAM, op: OP_RST, flags: 0, bufAlloc: 0, fwdCnt: 0,
      });
      this.counters.rxPackets++;
      return true;
    }
    for (const e of this.rxq.turns()) {
      // mutate() without its closure: this runs once per RX packet.
      if (this.conns.get(e.key) !== e) continue;
      const before = e.conn.state;
      const filled = e.conn.fillRx(w);
      this.settle(e, before);
      if (filled) {
        // Round robin: a connection with more to say goes to the back of the line.
        this.rxq.sent(e, e.conn.hasPendingRx());
        return true;
      }
    }
    return false;
  }

  /** Device reset: every connection is dropped, host sockets closed, nothing sent to the guest. */
  reset(): void {
    for (const e of [...this.conns.values()]) this.mutate(e, () => e.conn.finish('reset', false));
    this.rxq.clear();
    this.killq.clear();
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

  /** Runs `fn` on a connection, then applies what changed. */
  private mutate(e: Entry, fn: () => void): void {
    if (this.conns.get(e.key) !== e) return; // a late socket event for a forgotten connection
    const before = e.conn.state;
    fn();
    this.settle(e, before);
  }

  /** What follows a change of connection `e` (that was in state `before`): its OK line, removal, RX turn, deadline, budgets. */
  private settle(e: Entry, before: ConnState): void {
    const c = e.conn;
    if (before === 'local-init' && c.state === 'established') e.onEstablished?.();
    if (c.state === 'closed') {
      this.retire(e);
    } else {
      this.reschedule(e);
      const more = c.hasPendingRx();
      this.rxq.set(e, more);
      if (more) this.onRxReady();
    }
    this.budgetsChanged();
  }

  /** A closed connection leaves the table, the queues and its port; whoever waited hears why. */
  private retire(e: Entry): void {
    this.conns.delete(e.key);
    this.rxq.remove(e);
    this.killq.schedule(e, undefined);
    if (e.ownsPort) this.localPorts.delete(e.conn.localPort);
    e.onClosed?.(e.conn.closeReason ?? 'reset');
  }

  /** Hands a changed deadline to the kill queue. */
  private reschedule(e: Entry): void {
    const at = e.conn.deadline;
    if (at === e.deadline) return;
    e.deadline = at;
    this.killq.schedule(e, at);
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
