// The Unix socket host clients connect to (`uds_path`) and the first step of Firecracker's
// hybrid vsock: a client sends "CONNECT <port>\n" and, from then on, the socket is the byte
// stream of a connection to guest port <port>. This module owns the socket file (bound
// owner-only through socket-path.ts, removed at close and at exit) and the handshake's limits
// (line length, time to send it); what becomes of a connection is the muxer's business.

import * as net from 'node:net';
import { listenOwned, type OwnSocket } from '../../socket-path';
import { VsockSetupError } from './errors';
import { atExit } from '../../../lib/process-hooks';

export interface HandshakeLimits {
  /** Longest accepted CONNECT line, newline included. */
  readonly maxCommandLength: number;
  /** A host client must complete its CONNECT line within this. */
  readonly commandTimeoutMs: number;
}

export interface ListenerHooks {
  /** Whether one more host fd may be held now (the muxer's connection limit). */
  admit(): boolean;
  /** A client was turned away (limit, bad line, timeout, hang-up). */
  refused(): void;
  /** A client asked for guest `port`; `early` is what it sent after its line. */
  connect(port: number, s: net.Socket, early: Uint8Array): void;
}

export class HostListener {
  private readonly handshakes = new Set<net.Socket>();
  private server: net.Server | undefined;
  private own: OwnSocket | undefined;
  private forgetAtExit: (() => void) | undefined;

  constructor(readonly path: string, private readonly limits: HandshakeLimits, private readonly hooks: ListenerHooks) {}

  /** Clients still sending their CONNECT line (each holds an fd). */
  get handshaking(): number {
    return this.handshakes.size;
  }

  /** Binds `path`, owner-only; an existing path is an error unless it is a stale socket of ours (socket-path.ts). */
  async listen(): Promise<void> {
    if (this.server) return;
    const server = net.createServer({ allowHalfOpen: true, pauseOnConnect: false }, (s) => this.accept(s));
    let own: OwnSocket;
    try {
      own = await listenOwned(server, this.path);
    } catch (e) {
      throw new VsockSetupError(`cannot listen on ${this.path}: ${(e as Error).message}`);
    }
    server.on('error', () => {}); // accept errors (EMFILE) must not kill the VMM
    this.server = server;
    this.own = own;
    this.forgetAtExit = atExit(() => own.remove());
  }

  /** Drops clients still in their handshake, stops listening and removes the path (if still our socket). */
  async close(): Promise<void> {
    for (const s of this.handshakes) s.destroy();
    this.handshakes.clear();
    const server = this.server;
    this.server = undefined;
    if (!server) return;
    await new Promise<void>((resolve) => server.close(() => resolve()));
    this.forgetAtExit?.();
    this.forgetAtExit = undefined;
    this.own?.remove();
    this.own?.release();
  }

  /** A host client connected: read its "CONNECT <port>\n" line, then hand the socket on. */
  private accept(s: net.Socket): void {
    if (!this.hooks.admit()) {
      this.hooks.refused();
      s.destroy();
      return;
    }
    this.handshakes.add(s);
    let line = Buffer.alloc(0);
    const fail = (): void => {
      if (!this.handshakes.delete(s)) return;
      clearTimeout(timer);
      this.hooks.refused();
      s.destroy();
    };
    const timer = setTimeout(fail, this.limits.commandTimeoutMs);
    timer.unref();
    const onData = (chunk: Buffer): void => {
      line = Buffer.concat([line, chunk]);
      const nl = line.indexOf(0x0a);
      if (nl < 0) {
        if (line.length >= this.limits.maxCommandLength) fail();
        return;
      }
      if (nl + 1 > this.limits.maxCommandLength) return fail();
      const m = /^connect\s+(\d{1,10})\s*$/i.exec(line.subarray(0, nl).toString('latin1'));
      const port = m ? Number(m[1]) : -1;
      if (port < 0 || port > 0xffff_ffff) return fail();
      this.handshakes.delete(s);
      clearTimeout(timer);
      s.off('data', onData).off('end', fail).off('close', fail);
      this.hooks.connect(port, s, line.subarray(nl + 1));
    };
    s.on('data', onData).on('end', fail).on('close', fail).on('error', () => {});
  }
}
