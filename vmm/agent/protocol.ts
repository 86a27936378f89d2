// Wire protocol of the guest agent (guest/agent.c): frame header, message types, limits,
// error codes, and every payload's byte layout — encoders for what the host sends,
// decoders for what the agent sends. docs/agent-protocol.md is the reference and
// guest/proto.h the C twin; change all three together. No I/O here.

import { TsvmmError } from '../../lib/errors';

export const MAGIC = 0x41565354; // "TSVA" on the wire (little-endian u32)
export const PROTOCOL_VERSION = 1;
export const HEADER_SIZE = 8; // u16 type, u16 reserved (0), u32 payload length
export const MAX_PAYLOAD = 1 << 20;
/** Largest STDIN / PUT_DATA chunk the client sends (any size up to MAX_PAYLOAD is legal). */
export const DATA_CHUNK = 1 << 16;

export const Msg = {
  // host -> agent
  HELLO: 0x0001,
  PING: 0x0002,
  EXEC: 0x0010,
  STDIN: 0x0011,
  STDIN_EOF: 0x0012,
  SIGNAL: 0x0013,
  PUT: 0x0020,
  PUT_DATA: 0x0021,
  PUT_END: 0x0022,
  GET: 0x0030,
  // agent -> host
  HELLO_ACK: 0x8001,
  PONG: 0x8002,
  EXEC_STARTED: 0x8010,
  STDOUT: 0x8011,
  STDERR: 0x8012,
  STDIN_CREDIT: 0x8013,
  EXIT: 0x8014,
  PUT_DONE: 0x8020,
  GET_INFO: 0x8030,
  GET_DATA: 0x8031,
  GET_END: 0x8032,
  ERROR: 0x80ff,
} as const;
export type MsgType = (typeof Msg)[keyof typeof Msg];

const msgNames = new Map<number, string>(Object.entries(Msg).map(([k, v]) => [v, k]));
export function msgName(type: number): string {
  return msgNames.get(type) ?? `0x${type.toString(16).padStart(4, '0')}`;
}

/**
 * HELLO_ACK features: what an agent does beyond protocol version 1 as first published (an
 * agent older than the field sends 0). The client uses a feature only when it was announced.
 */
export const FEATURE_PUT_MKDIRS = 1;
/** PUT flags. */
export const PUT_MKDIRS = 1;

export const EXEC_CLEAR_ENV = 1;
const EXIT_EXITED = 1;
const EXIT_SIGNALED = 2;
const EXIT_CORE_DUMPED = 1;

/** Error codes carried in ERROR frames (agent side), plus host-side ones (>= 100). */
const remoteCodes = {
  1: 'PROTOCOL',
  2: 'UNKNOWN_TYPE',
  3: 'TOO_LARGE',
  4: 'VERSION',
  5: 'SPAWN',
  6: 'IO',
  7: 'BUSY',
  8: 'STATE',
  9: 'INTERNAL',
} as const;
export type AgentErrorCode =
  | (typeof remoteCodes)[keyof typeof remoteCodes]
  | 'REMOTE_UNKNOWN' // an ERROR code this client does not know
  | 'CLOSED' // the connection ended before the answer
  | 'ABORTED' // the caller aborted the request
  | 'TIMEOUT' // the agent stopped taking our data (a send waited longer than the stall timeout)
  | 'STDIN' // reading the caller's stdin stream failed
  | 'CONNECT'; // could not reach the agent

/** Everything the agent client throws. `remote` tells whether the agent reported it. */
export class AgentError extends TsvmmError {
  constructor(
    readonly code: AgentErrorCode,
    message: string,
    readonly remote = false,
    /** The guest's errno for SPAWN / IO errors, else 0. */
    override readonly errno = 0,
    options?: { cause?: unknown },
  ) {
    super(message, { errno, cause: options?.cause });
  }
}

export interface Frame {
  type: number;
  payload: Buffer;
}

export function encodeFrame(type: number, payload: Uint8Array = Buffer.alloc(0)): Buffer {
  if (payload.length > MAX_PAYLOAD) throw new RangeError(`${msgName(type)} payload of ${payload.length} bytes over ${MAX_PAYLOAD}`);
  const b = Buffer.allocUnsafe(HEADER_SIZE + payload.length);
  b.writeUInt16LE(type, 0);
  b.writeUInt16LE(0, 2);
  b.writeUInt32LE(payload.length, 4);
  b.set(payload, HEADER_SIZE);
  return b;
}

/** Incremental frame splitter; refuses a header whose length is over MAX_PAYLOAD before
 * buffering its payload. */
export class FrameDecoder {
  // Chunks are joined only when a whole frame is there, so a 1 MiB frame arriving in
  // 64 KiB pieces is copied once, not once per piece.
  private pending: Buffer[] = [];
  private have = 0;
  private need = HEADER_SIZE;

  push(chunk: Buffer): Frame[] {
    this.pending.push(chunk);
    this.have += chunk.length;
    const out: Frame[] = [];
    while (this.have >= this.need) {
      let buf: Buffer = this.pending.length === 1 ? this.pending[0] : Buffer.concat(this.pending, this.have);
      this.pending = [buf];
      const type = buf.readUInt16LE(0);
      const reserved = buf.readUInt16LE(2);
      const len = buf.readUInt32LE(4);
      if (len > MAX_PAYLOAD) throw new AgentError('PROTOCOL', `agent sent ${msgName(type)} with length ${len} over ${MAX_PAYLOAD}`);
      if (reserved !== 0) throw new AgentError('PROTOCOL', `agent sent a frame with reserved field ${reserved}`);
      this.need = HEADER_SIZE + len;
      if (this.have < this.need) break;
      out.push({ type, payload: buf.subarray(HEADER_SIZE, this.need) });
      buf = buf.subarray(this.need);
      this.pending = buf.length ? [buf] : [];
      this.have = buf.length;
      this.need = HEADER_SIZE;
    }
    return out;
  }
}

// ---- host -> agent payloads ----

function str(s: string): Buffer {
  const b = Buffer.from(s, 'utf8');
  if (b.includes(0)) throw new TypeError(`string contains a NUL byte: ${JSON.stringify(s)}`);
  const out = Buffer.allocUnsafe(4 + b.length);
  out.writeUInt32LE(b.length, 0);
  b.copy(out, 4);
  return out;
}

function u32s(...v: number[]): Buffer {
  const b = Buffer.allocUnsafe(4 * v.length);
  v.forEach((x, i) => b.writeUInt32LE(x, 4 * i));
  return b;
}

function u64(v: bigint): Buffer {
  const b = Buffer.allocUnsafe(8);
  b.writeBigUInt64LE(v, 0);
  return b;
}

export function encodeHello(): Buffer {
  const p = Buffer.allocUnsafe(8);
  p.writeUInt32LE(MAGIC, 0);
  p.writeUInt16LE(PROTOCOL_VERSION, 4); // min
  p.writeUInt16LE(PROTOCOL_VERSION, 6); // max
  return encodeFrame(Msg.HELLO, p);
}

export const encodePing = (nonce: bigint): Buffer => encodeFrame(Msg.PING, u64(nonce));

export interface ExecRequest {
  argv: string[];
  env: string[]; // KEY=VALUE
  cwd: string; // '' = agent's cwd (/)
  clearEnv: boolean;
}

export function encodeExec(r: ExecRequest): Buffer {
  if (r.argv.length === 0) throw new TypeError('exec: argv is empty');
  for (const e of r.env) if (!/^[^=]+=/.test(e)) throw new TypeError(`exec: env entry ${JSON.stringify(e)} is not KEY=VALUE`);
  const parts = [u32s(r.clearEnv ? EXEC_CLEAR_ENV : 0, r.argv.length, r.env.length), str(r.cwd), ...r.argv.map(str), ...r.env.map(str)];
  return encodeFrame(Msg.EXEC, Buffer.concat(parts));
}

export const encodeStdin = (data: Uint8Array): Buffer => encodeFrame(Msg.STDIN, data);
export const encodeStdinEof = (): Buffer => encodeFrame(Msg.STDIN_EOF);
export const encodeSignal = (signo: number): Buffer => encodeFrame(Msg.SIGNAL, u32s(signo));

export function encodePut(mode: number, path: string, flags = 0): Buffer {
  if ((mode & ~0o7777) !== 0) throw new RangeError(`put: mode 0${mode.toString(8)} has bits outside 07777`);
  if ((flags & ~PUT_MKDIRS) !== 0) throw new RangeError(`put: unknown flags 0x${flags.toString(16)}`);
  return encodeFrame(Msg.PUT, Buffer.concat([u32s(mode, flags), str(path)]));
}
export const encodePutData = (data: Uint8Array): Buffer => encodeFrame(Msg.PUT_DATA, data);
export const encodePutEnd = (total: bigint): Buffer => encodeFrame(Msg.PUT_END, u64(total));
export const encodeGet = (path: string): Buffer => encodeFrame(Msg.GET, str(path));

// ---- agent -> host payloads ----

function need(f: Frame, min: number, exact = false): void {
  if (f.payload.length < min || (exact && f.payload.length !== min)) {
    throw new AgentError('PROTOCOL', `agent sent ${msgName(f.type)} with a ${f.payload.length}-byte payload`);
  }
}

export interface HelloAck {
  version: number;
  /** FEATURE_* bits the agent announced. */
  features: number;
  maxPayload: number;
  agent: string;
}
export function decodeHelloAck(f: Frame): HelloAck {
  need(f, 12);
  if (f.payload.readUInt32LE(0) !== MAGIC) throw new AgentError('PROTOCOL', 'HELLO_ACK has a bad magic');
  return { version: f.payload.readUInt16LE(4), features: f.payload.readUInt16LE(6), maxPayload: f.payload.readUInt32LE(8), agent: f.payload.subarray(12).toString('utf8') };
}

export function decodePong(f: Frame): { nonce: bigint; agent: string } {
  need(f, 8);
  return { nonce: f.payload.readBigUInt64LE(0), agent: f.payload.subarray(8).toString('utf8') };
}

export function decodeExecStarted(f: Frame): { pid: number; credit: number } {
  need(f, 8, true);
  return { pid: f.payload.readUInt32LE(0), credit: f.payload.readUInt32LE(4) };
}

export function decodeU32(f: Frame): number {
  need(f, 4, true);
  return f.payload.readUInt32LE(0);
}

export function decodeU64(f: Frame): bigint {
  need(f, 8, true);
  return f.payload.readBigUInt64LE(0);
}

export type ExitStatus = { exited: true; code: number } | { exited: false; signo: number; coreDumped: boolean };
export function decodeExit(f: Frame): ExitStatus {
  need(f, 12, true);
  const kind = f.payload.readUInt32LE(0);
  const value = f.payload.readUInt32LE(4);
  if (kind === EXIT_EXITED) return { exited: true, code: value };
  if (kind === EXIT_SIGNALED) return { exited: false, signo: value, coreDumped: (f.payload.readUInt32LE(8) & EXIT_CORE_DUMPED) !== 0 };
  throw new AgentError('PROTOCOL', `EXIT with unknown kind ${kind}`);
}

export function decodeGetInfo(f: Frame): { size: bigint; mode: number } {
  need(f, 12, true);
  return { size: f.payload.readBigUInt64LE(0), mode: f.payload.readUInt32LE(8) };
}

/** An ERROR frame as the AgentError it reports. */
export function decodeError(f: Frame): AgentError {
  need(f, 8);
  const code = f.payload.readUInt32LE(0);
  const errno = f.payload.readInt32LE(4);
  const msg = f.payload.subarray(8).toString('utf8');
  const name = (remoteCodes as Record<number, AgentErrorCode | undefined>)[code];
  return new AgentError(name ?? 'REMOTE_UNKNOWN', `agent: ${msg}${name ? '' : ` (error code ${code})`}`, true, errno);
}
