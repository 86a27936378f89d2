// The host ends of vsock connections (csm.ts's HostStream): a Unix socket (a host client, or
// the socket tsvmm connects for a guest), and an in-process Duplex (VsockMuxer.connect, for
// tsvmm's own clients). They move bytes and report what the host side did through the
// connection; the muxer decides what that means. They know no packets and no other connection.

import type * as net from 'node:net';
import { Duplex } from 'node:stream';
import type { IoVecBuffer } from '../iovec';
import type { Connection, HostStream } from './csm';
import { VsockResetError } from './errors';

/**
 * Where a closed connection's host socket lingers: the bytes it still holds were the guest's,
 * so they stay counted (TX budget, a connection slot for the fd) until they leave the process.
 */
export interface Lingering {
  start(s: net.Socket, bytes: number): void;
  end(s: net.Socket, bytes: number): void;
}

/** A Unix socket as a connection's host end. */
export class SocketStream implements HostStream {
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
export class InternalStream implements HostStream {
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
