// The control API's HTTP/1.1 server over a Unix socket, main thread's side. HTTP itself runs
// on a thread of its own (worker.ts, as Firecracker's api_server thread): the socket file
// (mode 0600, a stale one of ours replaced: devices/socket-path.ts), node:http's parsing, the
// limits against slow, many or malformed clients and JSON bodies with a size limit are all
// there, so no client costs the main thread — where the devices and the vCPUs' forwarded exits
// are served — more than one message per request and one per answer. Here: each request the
// thread has read whole goes to the handler (resources.ts: what a path means), its answer or
// Firecracker-style error ({"fault_message": …}) goes back; the socket file is removed at close
// and at process exit while it is still ours (exit hooks run on this thread).
// One request is not HTTP after its headers: POST /agent with `Upgrade: tsvmm-agent` (as Docker
// attaches to exec) turns the connection into a byte pipe to the guest agent, for the peer
// whose uid is this process's only (SO_PEERCRED, checked by the thread), whatever the socket's
// mode. The thread hands such a connection over as a duplicate descriptor: the pipe runs here.
//
// The describe GETs (GET /, /machine-config, /vm/config, /version: `describe`, the controller's
// documents made of its own state) are answered by the thread itself, from a snapshot of their
// answers main publishes, so a main thread busy with the guest does not delay them either.
// Consistency rule: an answer from the thread is never older than the last publication main
// made before the thread took the request (read it whole), and main publishes every change of
// those documents before anything of the change is visible: the request that made the change
// is answered only after its publication (publish() runs after each request main handles and
// before its answer is posted), and attach() (a machine started from the command line) is
// published before Control.attach returns. So a client that saw a change done (its PUT's 204,
// another client's) and asks afterwards sees that change or a later one; a GET racing a
// change in flight (an InstanceStart whose machine is still starting) may see the state before
// it, as it could from main. How: main posts each new snapshot (version n+1) on a port of its
// own, then stores n+1 in a shared cell (STAT_SNAPSHOT); the thread, before answering, reads
// the cell and takes snapshots off the port synchronously (receiveMessageOnPort) until it has
// that version — the post is in the port's queue before the store, so it is always there. A
// snapshot is posted only when an answer changed; one that cannot be made (describe() threw)
// is published empty, and the thread then sends those GETs to main.

import type { Duplex } from 'node:stream';
import { Socket } from 'node:net';
import { MessageChannel, type MessagePort, Worker } from 'node:worker_threads';
import { OwnSocket } from '../../devices/socket-path';
import { ApiError, BODY_LIMITS, type ApiRequest, type ApiResponse } from './resources';
import { AGENT_UPGRADE, faultAnswer, jsonAnswer, rawFaultText, STAT_CELLS, STAT_CONNECTIONS, STAT_SNAPSHOT, STREAM_CREDIT, type ApiThreadInit, type BodyLimits, type MainMessage, type Snapshot, type ThreadMessage, type WireAnswer, type WireRequest } from './wire';
import { TsvmmError } from '../../lib/errors';
import { atExit } from '../../lib/process-hooks';
import { workerScript } from '../../lib/worker-script';
import type { StreamSink } from '../hints/stream';

export class ApiSocketError extends TsvmmError {}

export interface ApiServerOptions {
  path: string;
  handle: (req: ApiRequest) => Promise<ApiResponse>;
  /** Time a client has to send its request headers (default 10 s). */
  headersTimeoutMs?: number;
  /** Time a client has to send its whole request (default 30 s). */
  requestTimeoutMs?: number;
  /** Concurrent connections; more are closed at once (default 64). */
  maxConnections?: number;
  /** Body size limits by path (default resources.BODY_LIMITS). */
  bodyLimits?: BodyLimits;
  log?: (message: string) => void;
  /** The other end of an upgraded POST /agent: a fresh connection to the guest agent. */
  agent?: () => Promise<Duplex>;
  /**
   * The describe documents by path (VmController.describe): their GETs are answered by the HTTP
   * thread from the last publication. Absent: every request goes to `handle`.
   */
  describe?: () => Record<string, unknown>;
  /**
   * The HTTP thread ended after it listened without close() asking it to (an uncaught error
   * there, or it was terminated): `why` in words. The socket is then not served any more; close()
   * still removes it.
   */
  onDeath?: (why: string) => void;
}

/** The describe documents as the thread sends them; none (every GET to main) if they cannot be made. */
function describeAnswers(describe: (() => Record<string, unknown>) | undefined, log?: (m: string) => void): Record<string, WireAnswer> {
  if (!describe) return {};
  try {
    return Object.fromEntries(Object.entries(describe()).map(([path, doc]) => [path, jsonAnswer(doc)]));
  } catch (e) {
    log?.(`api: the describe answers could not be made (their GETs go to the main thread): ${(e as Error).stack ?? (e as Error).message}`);
    return {};
  }
}

/** How long close() waits for the HTTP thread to end before it terminates it. */
const EXIT_TIMEOUT_MS = 5_000;

/** A streamed answer's writer on this side: the thread gives credit back as the bytes leave. */
class WireSink implements StreamSink {
  private outstanding = 0;
  private blocked = false;
  closed = false;
  private readonly drains: (() => void)[] = [];
  private readonly closes: (() => void)[] = [];

  constructor(private readonly id: number, private readonly post: (m: MainMessage) => void) {}

  write(line: string): boolean {
    if (this.closed) return true;
    this.outstanding += line.length;
    this.post({ type: 'chunk', id: this.id, data: line });
    if (this.outstanding >= STREAM_CREDIT) this.blocked = true;
    return !this.blocked;
  }
  onDrain(cb: () => void): void {
    this.drains.push(cb);
  }
  onClose(cb: () => void): void {
    this.closes.push(cb);
  }
  credit(bytes: number): void {
    this.outstanding -= bytes;
    if (this.blocked && this.outstanding < STREAM_CREDIT && !this.closed) {
      this.blocked = false;
      for (const cb of this.drains) cb();
    }
  }
  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const cb of this.closes) cb();
  }
}

export class ApiServer {
  private readonly agentSockets = new Set<Socket>();
  private readonly sinks = new Map<number, WireSink>();
  private own?: OwnSocket;
  private forgetAtExit?: () => void;
  private closing?: Promise<void>;
  private readonly exited: Promise<void>;
  private dead = false;
  private listening = false;
  private readonly started: Promise<void>;
  private start!: { resolve: () => void; reject: (e: Error) => void };

  /** The last published snapshot's answers (as posted) and version. */
  private snapshot: Snapshot;

  private constructor(
    private readonly worker: Worker, readonly path: string, private readonly opts: ApiServerOptions,
    private readonly stats: Int32Array, private readonly snapshotPort: MessagePort, first: Snapshot,
  ) {
    this.snapshot = first;
    this.started = new Promise((resolve, reject) => (this.start = { resolve, reject }));
    this.worker.on('message', (m: ThreadMessage) => this.onThread(m));
    let failure: string | undefined;
    this.worker.on('error', (e) => {
      opts.log?.(`api: the HTTP thread failed: ${e.stack ?? e.message}`);
      failure = e.message;
      this.start.reject(e);
    });
    this.exited = new Promise((resolve) => this.worker.once('exit', (code) => {
      this.dead = true;
      // Not asked to end (close() was not called) after it listened: the API is gone.
      if (this.listening && !this.closing) opts.onDeath?.(failure ?? `it exited with code ${code}`);
      this.start.reject(new Error('the HTTP thread ended before it listened'));
      for (const s of this.sinks.values()) s.close();
      this.sinks.clear();
      this.snapshotPort.close();
      resolve();
    }));
  }

  static async listen(opts: ApiServerOptions): Promise<ApiServer> {
    const headersTimeoutMs = opts.headersTimeoutMs ?? 10_000;
    const stats = new Int32Array(new SharedArrayBuffer(4 * STAT_CELLS));
    const channel = new MessageChannel();
    const snapshot: Snapshot = { version: 0, answers: describeAnswers(opts.describe, opts.log) };
    const init: ApiThreadInit = {
      path: opts.path, headersTimeoutMs, requestTimeoutMs: opts.requestTimeoutMs ?? 30_000, maxConnections: opts.maxConnections ?? 64,
      bodyLimits: opts.bodyLimits ?? BODY_LIMITS, agent: opts.agent !== undefined, uid: process.getuid?.(), stats,
      snapshot, snapshotPort: channel.port2,
    };
    const worker = new Worker(workerScript('api-worker'), { workerData: init, transferList: [channel.port2], name: 'tsvmm-api' });
    const server = new ApiServer(worker, opts.path, opts, stats, channel.port1, snapshot);
    try {
      await server.started;
    } catch (e) {
      await server.close();
      throw new ApiSocketError(`--api-sock ${opts.path}: ${(e as Error).message}`);
    }
    return server;
  }

  /** Connections the HTTP thread holds open now (upgraded agent pipes are counted apart). */
  get connections(): number {
    return Atomics.load(this.stats, STAT_CONNECTIONS);
  }

  /** The version of the last snapshot published (0: the one the thread started with). */
  get snapshotVersion(): number {
    return this.snapshot.version;
  }

  /**
   * Publishes the describe answers if one changed since the last publication (the consistency
   * rule in the module comment): runs after every request main handles, before its answer, and
   * must be called by whoever changes the described state outside a request (Control.attach).
   */
  publish(): void {
    if (!this.opts.describe || this.dead) return;
    const answers = describeAnswers(this.opts.describe, this.opts.log);
    const last = this.snapshot.answers;
    const same = Object.keys(answers).length === Object.keys(last).length
      && Object.entries(answers).every(([p, a]) => last[p] !== undefined && last[p].body === a.body);
    if (same) return;
    this.snapshot = { version: this.snapshot.version + 1, answers };
    // The post first: once the thread reads the version, the snapshot is in its port's queue.
    this.snapshotPort.postMessage(this.snapshot);
    Atomics.store(this.stats, STAT_SNAPSHOT, this.snapshot.version);
  }

  private post(m: MainMessage): void {
    if (!this.dead) this.worker.postMessage(m);
  }

  private onThread(m: ThreadMessage): void {
    switch (m.type) {
      case 'request':
        void this.onRequest(m);
        return;
      case 'agent':
        void this.onAgent(m.fd, m.head);
        return;
      case 'ack':
        this.sinks.get(m.id)?.credit(m.bytes);
        return;
      case 'stream-closed': {
        const s = this.sinks.get(m.id);
        this.sinks.delete(m.id);
        s?.close();
        return;
      }
      case 'log':
        this.opts.log?.(m.message);
        return;
      case 'listening':
        this.listening = true;
        this.own = new OwnSocket(this.path, undefined, { dev: m.dev, ino: m.ino });
        this.forgetAtExit = atExit(() => this.own?.remove());
        this.start.resolve();
        return;
      case 'listen-failed':
        this.start.reject(new Error(m.message));
        return;
      case 'closed':
        return;
    }
  }

  private async onRequest(m: WireRequest): Promise<void> {
    const { id } = m;
    const r = await this.answer(m);
    // Whatever the request changed is published before its answer leaves (the consistency rule).
    this.publish();
    if ('stream' in r) {
      const sink = new WireSink(id, (x) => this.post(x));
      this.sinks.set(id, sink);
      this.post({ type: 'stream', id, contentType: r.contentType });
      r.stream(sink);
      return;
    }
    this.post({ type: 'response', id, ...r });
  }

  /** The handler's answer to a request, or the fault it ended with. */
  private async answer(m: WireRequest): Promise<WireAnswer | Extract<ApiResponse, { stream: unknown }>> {
    const { method, path } = m;
    try {
      const r = await this.opts.handle({ method, path, query: new URLSearchParams(m.search), body: m.body, accept: m.accept });
      if (r.status === 204) return { status: 204, headers: {} };
      if ('stream' in r) return r;
      if ('text' in r) return { status: 200, headers: { 'Content-Type': r.contentType }, body: r.text };
      return jsonAnswer(r.json);
    } catch (e) {
      const err = e as Error;
      if (e instanceof ApiError) return faultAnswer(e.status, e.message, e.allow ? { Allow: e.allow } : {});
      // tsvmm's own errors say in words what failed (bad input, a refused check, a failed step):
      // 400 with that message, as Firecracker answers a failed request; anything else is a bug.
      if (e instanceof TsvmmError) return faultAnswer(400, err.message);
      this.opts.log?.(`api: ${method} ${path}: internal error: ${err.stack ?? err.message}`);
      return faultAnswer(500, `internal error: ${err.message}`);
    }
  }

  /**
   * POST /agent from the owner (the thread checked it) → 101, then the bytes flow both ways
   * between the client and a new agent connection (the agent protocol, docs/agent-protocol.md,
   * one request per connection); a JSON fault when the VM's agent cannot be reached.
   */
  private async onAgent(fd: number, head: Uint8Array): Promise<void> {
    const socket = new Socket({ fd, readable: true, writable: true });
    socket.on('error', () => socket.destroy());
    if (this.closing) return void socket.destroy();
    this.agentSockets.add(socket);
    socket.on('close', () => this.agentSockets.delete(socket));
    let agent: Duplex;
    try {
      agent = await this.opts.agent!();
    } catch (e) {
      const status = e instanceof ApiError ? e.status : 502;
      socket.end(rawFaultText(status, (e as Error).message));
      return;
    }
    if (socket.destroyed) return void agent.destroy();
    socket.write(`HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: ${AGENT_UPGRADE}\r\n\r\n`);
    if (head.length) agent.write(head);
    // Either end going away ends the other: the agent kills a command whose host left.
    socket.on('error', () => agent.destroy());
    agent.on('error', () => socket.destroy());
    socket.on('close', () => agent.destroy());
    agent.on('close', () => socket.destroy());
    socket.pipe(agent);
    agent.pipe(socket);
  }

  /** Stops listening, drops open connections, ends the HTTP thread and removes the socket file. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      for (const s of this.agentSockets) s.destroy();
      this.post({ type: 'close' });
      let timer: NodeJS.Timeout | undefined;
      const late = new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(true), EXIT_TIMEOUT_MS)));
      if (await Promise.race([this.exited.then(() => false), late])) {
        this.opts.log?.(`api: the HTTP thread did not end within ${EXIT_TIMEOUT_MS / 1000} s; terminating it`);
        await this.worker.terminate();
      }
      clearTimeout(timer);
      this.own?.remove();
      this.forgetAtExit?.();
    })();
    return this.closing;
  }
}
