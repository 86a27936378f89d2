// One vhost-user connection's socket: whole messages out (with their descriptors), whole
// messages in, delivered on the main event loop. This module owns the byte stream and the
// descriptors that come with it; it must not know what a request means (frontend.ts).
//
// The socket is non-blocking and watched by libuv (no thread): a back-end that stops answering
// never blocks Node. A message and its descriptors leave in one sendmsg.

import * as libc from '../../../kvm/libc';
import { TsvmmError } from '../../../lib/errors';
import { HEADER_SIZE, Header, encode, parse, type Message } from './messages';

export class VhostUserError extends TsvmmError {}

export interface Incoming {
  message: Message;
  fds: number[];
}

export class Channel {
  private buf = new Uint8Array(0);
  private fds: number[] = [];
  private readonly queue: Incoming[] = [];
  private waiter?: { resolve: (m: Incoming) => void; reject: (e: Error) => void };
  private watch?: { close(): void };
  private closedWith?: Error;
  /** Called once when the peer hangs up or sends garbage (after pending receives failed). */
  onClose?: (why: Error) => void;

  /** Takes ownership of `fd` (a connected, non-blocking Unix stream socket). */
  constructor(readonly fd: number, private readonly peer: string) {
    // A socket error (the peer closed with our requests unread) is read out by recvmsg.
    this.watch = libc.watchReadable(fd, () => this.readable(), () => this.readable());
  }

  /** Connects to a back-end listening on `path`. */
  static connect(path: string, peer = path): Channel {
    return new Channel(libc.connectUnix(path), peer);
  }

  /** Sends one message with `fds` attached; throws VhostUserError when the peer is gone. */
  send(request: number, payload?: Uint8Array, fds: readonly number[] = [], flags?: number): void {
    if (this.closedWith) throw this.closedWith;
    const bytes = encode(request, payload, flags);
    let off = 0;
    try {
      while (off < bytes.length) {
        // The descriptors travel with the first byte only.
        const n = libc.sendWithFds(this.fd, bytes.subarray(off), off === 0 ? fds : []);
        // vhost-user messages are a few hundred bytes and the peer answers each before the
        // next: a full socket buffer means the peer is wedged, not merely slow.
        if (n < 0) throw new VhostUserError(`${this.peer}: socket buffer full (the back-end is not reading)`);
        off += n;
      }
    } catch (e) {
      if (e instanceof VhostUserError) throw e;
      throw new VhostUserError(`${this.peer}: ${(e as Error).message}`, { cause: e, call: 'sendmsg', errno: (e as { errno?: number }).errno });
    }
  }

  /** The next message from the peer (rejects when the channel closes first). */
  receive(): Promise<Incoming> {
    const m = this.queue.shift();
    if (m) return Promise.resolve(m);
    if (this.closedWith) return Promise.reject(this.closedWith);
    if (this.waiter) return Promise.reject(new VhostUserError(`${this.peer}: two receives at once`));
    return new Promise((resolve, reject) => (this.waiter = { resolve, reject }));
  }

  get closed(): boolean {
    return this.closedWith !== undefined;
  }

  // Reads exactly one header, then exactly its payload, as libvhost-user does: every recvmsg
  // starts inside the message being assembled, so the descriptors it returns are that
  // message's (Linux would otherwise hand back a previous message's bytes and the next one's
  // descriptors in one recvmsg).
  private readable(): void {
    for (;;) {
      const need = this.needed();
      let r: libc.Received | undefined;
      try {
        r = libc.recvWithFds(this.fd, need - this.buf.length);
      } catch (e) {
        const reset = (e as { code?: string }).code === 'ECONNRESET';
        this.fail(new VhostUserError(reset ? `${this.peer} closed the connection` : `${this.peer}: ${(e as Error).message}`, { cause: e }));
        return;
      }
      if (!r) return;
      this.fds.push(...r.fds);
      if (r.data.length === 0) {
        this.fail(new VhostUserError(`${this.peer} closed the connection`));
        return;
      }
      const merged = new Uint8Array(this.buf.length + r.data.length);
      merged.set(this.buf);
      merged.set(r.data, this.buf.length);
      this.buf = merged;
      const p = parse(this.buf);
      if (p.kind === 'partial') continue;
      if (p.kind === 'bad') {
        this.fail(new VhostUserError(`${this.peer} sent a malformed message: ${p.reason}`));
        return;
      }
      this.buf = new Uint8Array(0);
      const m: Incoming = { message: p.message, fds: this.fds.splice(0) };
      const w = this.waiter;
      this.waiter = undefined;
      if (w) w.resolve(m);
      else this.queue.push(m);
    }
  }

  /** Bytes of the message being assembled: the header, then header plus payload. */
  private needed(): number {
    if (this.buf.length < HEADER_SIZE) return HEADER_SIZE;
    return HEADER_SIZE + Header.read(this.buf).size;
  }

  private fail(why: Error): void {
    if (this.closedWith) return;
    this.closedWith = why;
    this.stopWatching();
    const w = this.waiter;
    this.waiter = undefined;
    w?.reject(why);
    this.onClose?.(why);
  }

  private stopWatching(): void {
    this.watch?.close();
    this.watch = undefined;
  }

  /** Closes the socket and every descriptor received but not taken. */
  close(): void {
    this.onClose = undefined; // closing on purpose is not the peer's death
    this.fail(new VhostUserError(`${this.peer}: channel closed`));
    for (const f of this.fds.splice(0)) libc.close(f);
    for (const m of this.queue.splice(0)) for (const f of m.fds) libc.close(f);
    try {
      libc.close(this.fd);
    } catch {
      // already closed
    }
  }
}
