// Host-side client of the guest agent: exec / put / get / ping, one agent connection per
// request over any Duplex the caller's connector returns (a hybrid-vsock stream from the
// VMM, a Unix socket in tests). Owns the request state machines; frame layouts live in
// ./protocol, connectors in ./connect. Must not know how the stream reaches the guest.
import { createReadStream } from 'node:fs';
import { constants as osConstants } from 'node:os';
import type { Duplex, Readable } from 'node:stream';
import {
  AgentError,
  DATA_CHUNK,
  FrameDecoder,
  Msg,
  decodeError,
  decodeExecStarted,
  decodeExit,
  decodeGetInfo,
  decodeHelloAck,
  decodePong,
  decodeU32,
  decodeU64,
  encodeExec,
  encodeGet,
  encodeHello,
  encodePing,
  encodePut,
  encodePutData,
  encodePutEnd,
  encodeSignal,
  encodeStdin,
  encodeStdinEof,
  FEATURE_PUT_MKDIRS,
  msgName,
  PUT_MKDIRS,
  type Frame,
} from './protocol';

export { AgentError } from './protocol';
export type { AgentErrorCode } from './protocol';

export type Connector = () => Promise<Duplex>;

/** Bounds on what a (possibly hostile) agent can make the client hold or wait for. */
export interface AgentClientOptions {
  /** A send that waits this long for the agent to take data fails with TIMEOUT (default 30 s). */
  stallTimeoutMs?: number;
  /** Frames received but not yet consumed: above this the connection stops reading (default 4 MiB). */
  maxQueuedBytes?: number;
  /** After an exec is aborted, how long the agent has to report the exit (default 10 s). */
  abortGraceMs?: number;
}

/** Per request: aborting closes the connection and rejects with ABORTED. */
export interface RequestOptions {
  signal?: AbortSignal;
}

export interface PutOptions extends RequestOptions {
  /** Create missing parent directories (0755), as mkdir -p. */
  mkdirs?: boolean;
}

export interface ExecOptions {
  argv: string[];
  /** KEY=VALUE pairs (or a record) added to the agent's environment. */
  env?: Record<string, string> | string[];
  /** Start from an empty environment (PATH still gets a default). */
  clearEnv?: boolean;
  cwd?: string;
  stdin?: Readable | Uint8Array | string;
  onStdout?: (chunk: Buffer) => void;
  onStderr?: (chunk: Buffer) => void;
  /** Called once the guest process exists. */
  onSpawn?: (pid: number) => void;
  /**
   * Aborting delivers `abortSignal` (default SIGTERM) to the guest process group; before the
   * process exists, or when the agent does not report its exit within `abortGraceMs`, the
   * request fails with ABORTED instead.
   */
  signal?: AbortSignal;
  abortSignal?: NodeJS.Signals;
}

export interface ExecResult {
  /** Exit status, or null when a signal ended the process. */
  exitCode: number | null;
  /** Name of the terminating signal ('SIGKILL'), or null. */
  signal: string | null;
  coreDumped: boolean;
}

export interface ExecHandle {
  /** Guest pid (rejects like `result` when the process could not start). */
  readonly pid: Promise<number>;
  readonly result: Promise<ExecResult>;
  /** Sends a signal to the guest process group; a no-op once it has exited. */
  kill(signal?: NodeJS.Signals | number): void;
}

const signalNumbers = osConstants.signals as Record<string, number>;
const signalNames = new Map<number, string>(Object.entries(signalNumbers).map(([k, v]) => [v, k]));

function signalNumber(s: NodeJS.Signals | number): number {
  const n = typeof s === 'number' ? s : signalNumbers[s];
  if (n === undefined || !Number.isInteger(n) || n < 1 || n > 64) throw new RangeError(`unknown signal ${String(s)}`);
  return n;
}

const DEFAULT_STALL_TIMEOUT_MS = 30_000;
const DEFAULT_MAX_QUEUED_BYTES = 4 << 20;
const DEFAULT_ABORT_GRACE_MS = 10_000;

/**
 * One agent connection: frames in, frames out, with backpressure both ways. Nothing the agent
 * does makes it hold or wait without bound: frames nobody consumed yet stop the reading past
 * `maxQueuedBytes` (the agent then waits on its own credit), and a send the agent does not
 * take within `stallTimeoutMs` fails the connection.
 */
class Connection {
  private readonly decoder = new FrameDecoder();
  private readonly frames: Frame[] = [];
  private queuedBytes = 0;
  private waiter: { resolve: (f: Frame) => void; reject: (e: Error) => void } | null = null;
  private failure: AgentError | null = null;
  private readonly limits: Required<Omit<AgentClientOptions, 'abortGraceMs'>>;

  constructor(private readonly stream: Duplex, limits: AgentClientOptions = {}) {
    this.limits = { stallTimeoutMs: limits.stallTimeoutMs ?? DEFAULT_STALL_TIMEOUT_MS, maxQueuedBytes: limits.maxQueuedBytes ?? DEFAULT_MAX_QUEUED_BYTES };
    stream.on('data', (chunk: Buffer) => {
      try {
        for (const f of this.decoder.push(chunk)) this.deliver(f);
      } catch (e) {
        this.abort(e as AgentError);
      }
    });
    stream.on('end', () => this.fail(new AgentError('CLOSED', 'agent closed the connection')));
    stream.on('close', () => this.fail(new AgentError('CLOSED', 'agent connection closed')));
    stream.on('error', (e) => this.fail(new AgentError('CLOSED', `agent connection failed: ${e.message}`, false, 0, { cause: e })));
    stream.resume(); // a connector may hand over a paused stream (with bytes unshifted)
    // A stream that ended before we listened will never say so again.
    if (stream.destroyed || stream.readableEnded) this.fail(new AgentError('CLOSED', 'the connector handed over a closed connection'));
  }

  private deliver(f: Frame): void {
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = null;
      w.resolve(f);
      return;
    }
    this.frames.push(f);
    this.queuedBytes += f.payload.length;
    if (this.queuedBytes > this.limits.maxQueuedBytes) this.stream.pause();
  }

  /** Fails the connection with `e` and closes it: every pending recv and send rejects. */
  abort(e: AgentError): void {
    this.fail(e);
    this.stream.destroy();
  }

  /** Aborts the connection when `signal` fires; returns the function that stops listening. */
  abortOn(signal: AbortSignal | undefined, what: string): () => void {
    if (!signal) return () => {};
    const onAbort = (): void => this.abort(new AgentError('ABORTED', `${what} aborted`));
    if (signal.aborted) onAbort();
    else signal.addEventListener('abort', onAbort, { once: true });
    return () => signal.removeEventListener('abort', onAbort);
  }

  private fail(e: AgentError): void {
    if (this.failure) return;
    this.failure = e;
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = null;
      w.reject(e);
    }
  }

  /** Next frame; frames that arrived before the stream ended are still returned first. */
  recv(): Promise<Frame> {
    const f = this.frames.shift();
    if (f) {
      this.queuedBytes -= f.payload.length;
      if (this.queuedBytes <= this.limits.maxQueuedBytes / 2 && this.stream.isPaused()) this.stream.resume();
      return Promise.resolve(f);
    }
    if (this.failure) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => (this.waiter = { resolve, reject }));
  }

  /** Next frame, which must be `type`; an ERROR frame becomes its AgentError. */
  async expect(type: number): Promise<Frame> {
    const f = await this.recv();
    if (f.type === type) return f;
    throw unexpected(f, msgName(type));
  }

  /** Writes a frame; resolves once the stream can take more (an agent that stops reading: TIMEOUT). */
  async send(frame: Buffer): Promise<void> {
    if (this.failure) throw this.failure;
    if (this.stream.write(frame)) return;
    await new Promise<void>((resolve, reject) => {
      const ms = this.limits.stallTimeoutMs;
      const timer = setTimeout(() => this.abort(new AgentError('TIMEOUT', `the agent took no data for ${ms / 1000} s`)), ms);
      const done = (): void => {
        clearTimeout(timer);
        this.stream.off('drain', done);
        this.stream.off('close', done);
        if (this.failure) reject(this.failure);
        else resolve();
      };
      this.stream.on('drain', done);
      this.stream.on('close', done);
    });
  }

  close(): void {
    this.stream.destroy();
  }
}

function unexpected(f: Frame, wanted: string): AgentError {
  if (f.type === Msg.ERROR) return decodeError(f);
  return new AgentError('PROTOCOL', `agent sent ${msgName(f.type)}, expected ${wanted}`);
}

function chunks(data: Uint8Array, size: number): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (let off = 0; off < data.length; off += size) out.push(data.subarray(off, off + size));
  return out;
}

/**
 * One exec request, from EXEC to EXIT: the guest process's stdin sent as its credit allows,
 * its output handed to the caller, signals, and the caller's abort. `result` settles once the
 * agent reports the exit (or the request fails); `pid` once the process exists.
 */
class ExecSession implements ExecHandle {
  readonly pid: Promise<number>;
  readonly result: Promise<ExecResult>;
  private resolvePid!: (pid: number) => void;
  private rejectPid!: (e: Error) => void;
  private conn: Connection | null = null;
  /** The exit was reported or the request failed: stdin stops, signals are no longer sent. */
  private finished = false;
  /** Stdin bytes the agent will take now, and the sender waiting for more. */
  private credit = 0;
  private creditWake: (() => void) | null = null;
  /** After an abort: when the agent's time to report the exit runs out. */
  private grace: NodeJS.Timeout | undefined;

  constructor(
    private readonly open: (signal: AbortSignal | undefined, what: string) => Promise<Connection>,
    private readonly opts: ExecOptions,
    private readonly abortGraceMs: number,
  ) {
    this.pid = new Promise<number>((res, rej) => ((this.resolvePid = res), (this.rejectPid = rej)));
    this.pid.catch(() => {}); // callers may only await `result`
    this.result = this.run();
    this.result.catch((e) => this.rejectPid(e as Error));
  }

  kill(s: NodeJS.Signals | number = 'SIGTERM'): void {
    const n = signalNumber(s);
    void this.pid.then(() => {
      if (!this.finished && this.conn) this.conn.send(encodeSignal(n)).catch(() => {});
    }, () => {});
  }

  private readonly onAbort = (): void => {
    this.kill(this.opts.abortSignal ?? 'SIGTERM');
    // An agent that never reports the exit must not hold the caller: after a grace period
    // the connection goes (the agent kills a job whose host went away).
    const ms = this.abortGraceMs;
    this.grace ??= setTimeout(() => this.conn?.abort(new AgentError('ABORTED', `exec aborted; the agent did not report the exit within ${ms / 1000} s`)), ms);
  };

  private wake(): void {
    const w = this.creditWake;
    this.creditWake = null;
    w?.();
  }

  private async run(): Promise<ExecResult> {
    const { opts } = this;
    if (opts.signal?.aborted) throw new AgentError('ABORTED', 'exec aborted before it started');
    const request = encodeExec({
      argv: opts.argv,
      env: Array.isArray(opts.env) ? opts.env : Object.entries(opts.env ?? {}).map(([k, v]) => `${k}=${v}`),
      cwd: opts.cwd ?? '',
      clearEnv: opts.clearEnv ?? false,
    });
    const c = await this.open(opts.signal, 'exec');
    this.conn = c;
    // Until the process exists, aborting means giving up the request.
    const stopEarlyAbort = c.abortOn(opts.signal, 'exec');
    try {
      await c.send(request);
      const started = decodeExecStarted(await c.expect(Msg.EXEC_STARTED));
      stopEarlyAbort();
      this.credit = started.credit;
      this.resolvePid(started.pid);
      opts.onSpawn?.(started.pid);
      opts.signal?.addEventListener('abort', this.onAbort, { once: true });
      if (opts.signal?.aborted) this.onAbort();
      return await this.pump(c);
    } catch (e) {
      this.rejectPid(e as Error);
      throw e;
    } finally {
      this.finished = true;
      this.wake();
      stopEarlyAbort();
      clearTimeout(this.grace);
      opts.signal?.removeEventListener('abort', this.onAbort);
      c.close();
    }
  }

  /** Feeds stdin while handing output to the caller, until EXIT. */
  private async pump(c: Connection): Promise<ExecResult> {
    let stdinError: unknown = null;
    const stdinDone = this.sendStdin(c).catch((e) => {
      // A send failing because the connection ended is reported by recv() below.
      if (e instanceof AgentError && e.code === 'STDIN') {
        stdinError = e;
        c.close();
      }
    });
    for (;;) {
      let f: Frame;
      try {
        f = await c.recv();
      } catch (e) {
        throw stdinError ?? e;
      }
      switch (f.type) {
        case Msg.STDOUT:
          this.opts.onStdout?.(Buffer.from(f.payload));
          break;
        case Msg.STDERR:
          this.opts.onStderr?.(Buffer.from(f.payload));
          break;
        case Msg.STDIN_CREDIT:
          this.credit += decodeU32(f);
          this.wake();
          break;
        case Msg.EXIT: {
          const st = decodeExit(f);
          this.finished = true;
          this.wake();
          await stdinDone;
          return st.exited
            ? { exitCode: st.code, signal: null, coreDumped: false }
            : { exitCode: null, signal: signalNames.get(st.signo) ?? `SIG${st.signo}`, coreDumped: st.coreDumped };
        }
        default:
          throw unexpected(f, 'output or EXIT');
      }
    }
  }

  private async sendStdin(c: Connection): Promise<void> {
    const input = this.opts.stdin;
    if (typeof input === 'string') await this.sendData(c, Buffer.from(input));
    else if (input instanceof Uint8Array) await this.sendData(c, input);
    else if (input) {
      try {
        for await (const chunk of input.iterator({ destroyOnReturn: false })) {
          await this.sendData(c, typeof chunk === 'string' ? Buffer.from(chunk) : (chunk as Uint8Array));
          if (this.finished) return;
        }
      } catch (e) {
        if (this.finished) return;
        throw new AgentError('STDIN', `reading stdin for the guest failed: ${(e as Error).message}`, false, 0, { cause: e });
      }
    }
    if (!this.finished) await c.send(encodeStdinEof());
  }

  /** Sends `data` as STDIN frames, each no larger than the credit the agent gave. */
  private async sendData(c: Connection, data: Uint8Array): Promise<void> {
    for (let off = 0; off < data.length && !this.finished; ) {
      while (this.credit === 0 && !this.finished) await new Promise<void>((r) => (this.creditWake = r));
      if (this.finished) return;
      const n = Math.min(this.credit, DATA_CHUNK, data.length - off);
      this.credit -= n;
      await c.send(encodeStdin(data.subarray(off, off + n)));
      off += n;
    }
  }
}

export class AgentClient {
  /** Agent identification from the last HELLO_ACK. */
  agentVersion = '';
  /** FEATURE_* bits of the last HELLO_ACK. */
  agentFeatures = 0;

  constructor(private readonly connector: Connector, private readonly limits: AgentClientOptions = {}) {}

  private async open(signal?: AbortSignal, what = 'request'): Promise<Connection> {
    if (signal?.aborted) throw new AgentError('ABORTED', `${what} aborted before it started`);
    let stream: Duplex;
    try {
      stream = await this.connector();
    } catch (e) {
      throw new AgentError('CONNECT', `cannot connect to the agent: ${(e as Error).message}`, false, 0, { cause: e });
    }
    const conn = new Connection(stream, this.limits);
    const stop = conn.abortOn(signal, what);
    try {
      await conn.send(encodeHello());
      const ack = decodeHelloAck(await conn.expect(Msg.HELLO_ACK));
      this.agentVersion = ack.agent;
      this.agentFeatures = ack.features;
      return conn;
    } catch (e) {
      conn.close();
      throw e;
    } finally {
      stop();
    }
  }

  private async request<T>(what: string, opts: RequestOptions, body: (conn: Connection) => Promise<T>): Promise<T> {
    const conn = await this.open(opts.signal, what);
    const stop = conn.abortOn(opts.signal, what);
    try {
      return await body(conn);
    } finally {
      stop();
      conn.close();
    }
  }

  /** Round trip through a fresh connection; returns the agent's version string. */
  ping(opts: RequestOptions = {}): Promise<{ agent: string; ms: number }> {
    return this.request('ping', opts, async (conn) => {
      const t0 = performance.now();
      const nonce = BigInt(Math.floor(Math.random() * 2 ** 48));
      await conn.send(encodePing(nonce));
      const pong = decodePong(await conn.expect(Msg.PONG));
      if (pong.nonce !== nonce) throw new AgentError('PROTOCOL', 'PONG carries a different nonce');
      return { agent: pong.agent, ms: performance.now() - t0 };
    });
  }

  exec(opts: ExecOptions): Promise<ExecResult> {
    return this.start(opts).result;
  }

  start(opts: ExecOptions): ExecHandle {
    return new ExecSession((signal, what) => this.open(signal, what), opts, this.limits.abortGraceMs ?? DEFAULT_ABORT_GRACE_MS);
  }

  /** Writes a local file (path) or bytes to `remotePath` with `mode`, atomically (temp +
   * rename in the same directory). Returns the byte count. With `mkdirs`, missing parent
   * directories are made first: by the agent itself when it announces FEATURE_PUT_MKDIRS, else
   * by `mkdir -p` run through it. */
  put(source: string | Uint8Array, remotePath: string, mode = 0o644, opts: PutOptions = {}): Promise<number> {
    return this.request(`put ${remotePath}`, opts, async (conn) => {
      let flags = 0;
      if (opts.mkdirs && remotePath.lastIndexOf('/') > 0) {
        if (this.agentFeatures & FEATURE_PUT_MKDIRS) flags = PUT_MKDIRS;
        else await this.mkdirParents(remotePath, opts);
      }
      await conn.send(encodePut(mode, remotePath, flags));
      // The agent answers an error at once and then reads on to PUT_END, so a failure
      // shows up as the first frame while we are still sending. Any answer ends the sending,
      // even one that comes while a send waits for an agent that stopped reading.
      const reply: { frame: Frame | null } = { frame: null };
      const answer = conn.recv().then((f) => (reply.frame = f));
      answer.catch(() => {});
      const sendUnlessAnswered = (frame: Buffer): Promise<unknown> => Promise.race([conn.send(frame), answer]);
      let total = 0;
      const parts: AsyncIterable<Uint8Array> | Iterable<Uint8Array> =
        typeof source === 'string' ? createReadStream(source, { highWaterMark: DATA_CHUNK }) : chunks(source, DATA_CHUNK);
      let sendError: unknown = null;
      try {
        for await (const part of parts) {
          if (reply.frame) break;
          total += part.length;
          await sendUnlessAnswered(encodePutData(part));
        }
        if (!reply.frame) await sendUnlessAnswered(encodePutEnd(BigInt(total)));
      } catch (e) {
        sendError = e; // the agent's own answer, if one came, says more
        conn.close();
      }
      const f = await answer.catch((e: unknown) => {
        throw sendError ?? e;
      });
      if (f.type !== Msg.PUT_DONE) throw unexpected(f, 'PUT_DONE');
      const stored = decodeU64(f);
      if (stored !== BigInt(total)) throw new AgentError('PROTOCOL', `agent stored ${stored} bytes of ${total}`);
      return total;
    });
  }

  /** `mkdir -p` of the directory of `path`, through an exec (agents without FEATURE_PUT_MKDIRS). */
  private async mkdirParents(path: string, opts: RequestOptions): Promise<void> {
    const dir = path.slice(0, path.lastIndexOf('/'));
    let err = '';
    const r = await this.exec({ argv: ['mkdir', '-p', '--', dir], signal: opts.signal, onStderr: (b) => (err += b.toString()) });
    if (r.exitCode !== 0) throw new AgentError('IO', `put ${path}: mkdir -p ${dir} failed: ${err.trim() || `status ${r.exitCode ?? r.signal}`}`, true);
  }

  /** Reads a whole guest file (also /proc and /sys files, read to EOF). */
  get(remotePath: string, opts: RequestOptions & { maxBytes?: number } = {}): Promise<Buffer> {
    const max = opts.maxBytes ?? 1 << 30;
    return this.request(`get ${remotePath}`, opts, async (conn) => {
      await conn.send(encodeGet(remotePath));
      decodeGetInfo(await conn.expect(Msg.GET_INFO));
      const parts: Buffer[] = [];
      let total = 0;
      for (;;) {
        const f = await conn.recv();
        if (f.type === Msg.GET_DATA) {
          total += f.payload.length;
          if (total > max) throw new AgentError('TOO_LARGE', `get ${remotePath}: more than ${max} bytes`);
          parts.push(Buffer.from(f.payload));
        } else if (f.type === Msg.GET_END) {
          const end = decodeU64(f);
          if (end !== BigInt(total)) throw new AgentError('PROTOCOL', `GET_END says ${end} bytes, got ${total}`);
          return Buffer.concat(parts, total);
        } else throw unexpected(f, 'GET_DATA or GET_END');
      }
    });
  }
}
