// Shared memory layout of the hypercall device (docs/hypercall.md §3, §4): the header, the two
// mailboxes, and the byte layout of every message. This module owns encoding and validating
// those bytes; it must not hold device state or touch registers. Decoders take a private copy
// of guest bytes (never the live mapping) and return a status instead of throwing: whatever
// the guest wrote, the answer is a status code.

import { Status, type StatusCode } from './registers';

/** 'T' 'S' 'H' 'M' as a little-endian u32. */
export const SHM_MAGIC = 0x4d48_5354;
export const SHM_VERSION = 1;
export const SHM_HDR_SIZE = 0x40;
export const PAGE = 0x1000;
export const SHM_MIN_SIZE = 4 * PAGE;
export const SHM_MAX_SIZE = 256 * 1024 * 1024;

/** Header field offsets (u32 each). */
export const Hdr = {
  MAGIC: 0x00,
  VERSION: 0x04,
  H2G_OFF: 0x08,
  H2G_SIZE: 0x0c,
  G2H_OFF: 0x10,
  G2H_SIZE: 0x14,
  H2G_LEN: 0x18,
  H2G_SEQ: 0x1c,
  G2H_LEN: 0x20,
  G2H_SEQ: 0x24,
  G2H_ACK: 0x28,
} as const;

export interface MailboxLayout {
  readonly h2gOff: number;
  readonly h2gSize: number;
  readonly g2hOff: number;
  readonly g2hSize: number;
}

/** The default split: two equal page-aligned mailboxes after the header page. */
export function mailboxLayout(shmSize: number): MailboxLayout {
  if (!Number.isSafeInteger(shmSize) || shmSize < SHM_MIN_SIZE || shmSize > SHM_MAX_SIZE || shmSize % PAGE !== 0) {
    throw new RangeError(`hypercall shared memory size 0x${shmSize.toString(16)} must be a multiple of 4 KiB in [16 KiB, 256 MiB]`);
  }
  const half = Math.floor((shmSize - PAGE) / 2 / PAGE) * PAGE;
  return { h2gOff: PAGE, h2gSize: half, g2hOff: PAGE + half, g2hSize: half };
}

// ---- host → guest: requests -------------------------------------------------------------

export const Op = { LOAD: 1, UNLOAD: 2, REPLACE: 3, MAP_UPDATE: 4 } as const;
export type OpCode = (typeof Op)[keyof typeof Op];

export const Req = {
  OP: 0x00,
  REQUEST_ID: 0x04,
  HANDLE: 0x08,
  BODY_LEN: 0x0c,
  DIGEST: 0x10,
  NAME: 0x30,
  BODY: 0x50,
} as const;
export const DIGEST_LEN = 32;
export const NAME_LEN = 32;

export interface WireRequest {
  op: OpCode;
  requestId: number;
  handle: number;
  digest: Uint8Array;
  name: string;
  body: Uint8Array;
}

/** Request size on the wire (header + body). */
export const requestSize = (bodyLen: number): number => Req.BODY + bodyLen;

/** Writes a request at the start of `dst` (the h2g mailbox); returns its length. */
export function encodeRequest(r: WireRequest, dst: Uint8Array): number {
  const len = requestSize(r.body.length);
  if (len > dst.length) throw new RangeError(`request ${r.requestId} (${len} bytes) does not fit the ${dst.length}-byte mailbox`);
  const v = new DataView(dst.buffer, dst.byteOffset, len);
  v.setUint32(Req.OP, r.op, true);
  v.setUint32(Req.REQUEST_ID, r.requestId, true);
  v.setUint32(Req.HANDLE, r.handle, true);
  v.setUint32(Req.BODY_LEN, r.body.length, true);
  dst.fill(0, Req.DIGEST, Req.BODY);
  dst.set(r.digest.subarray(0, DIGEST_LEN), Req.DIGEST);
  const name = new TextEncoder().encode(r.name).subarray(0, NAME_LEN);
  dst.set(name, Req.NAME);
  dst.set(r.body, Req.BODY);
  return len;
}

/**
 * MAP_UPDATE body (§4.2): the request's `name` field names the map; the body is
 * u32 key_len, u32 value_len, u64 flags (BPF_ANY 0, BPF_NOEXIST 1, BPF_EXIST 2), key, value.
 */
export const MapUpdateMsg = { KEY_LEN: 0x00, VALUE_LEN: 0x04, FLAGS: 0x08, DATA: 0x10 } as const;
export const MAP_UPDATE_FLAGS = { any: 0, noexist: 1, exist: 2 } as const;

export function encodeMapUpdate(key: Uint8Array, value: Uint8Array, flags: number): Uint8Array {
  const b = new Uint8Array(MapUpdateMsg.DATA + key.length + value.length);
  const v = new DataView(b.buffer);
  v.setUint32(MapUpdateMsg.KEY_LEN, key.length, true);
  v.setUint32(MapUpdateMsg.VALUE_LEN, value.length, true);
  v.setBigUint64(MapUpdateMsg.FLAGS, BigInt(flags), true);
  b.set(key, MapUpdateMsg.DATA);
  b.set(value, MapUpdateMsg.DATA + key.length);
  return b;
}

/** The guest side's reading of a MAP_UPDATE body (the simulated agent in tests). */
export function decodeMapUpdate(b: Uint8Array): { key: Uint8Array; value: Uint8Array; flags: number } | undefined {
  if (b.length < MapUpdateMsg.DATA) return undefined;
  const v = new DataView(b.buffer, b.byteOffset, b.length);
  const kl = v.getUint32(MapUpdateMsg.KEY_LEN, true);
  const vl = v.getUint32(MapUpdateMsg.VALUE_LEN, true);
  if (b.length !== MapUpdateMsg.DATA + kl + vl) return undefined;
  return { key: b.slice(MapUpdateMsg.DATA, MapUpdateMsg.DATA + kl), value: b.slice(MapUpdateMsg.DATA + kl), flags: Number(v.getBigUint64(MapUpdateMsg.FLAGS, true)) };
}

/** Reads a request (the guest side's view; used by the simulated agent in tests). */
export function decodeRequest(b: Uint8Array): WireRequest | undefined {
  if (b.length < Req.BODY) return undefined;
  const v = new DataView(b.buffer, b.byteOffset, b.length);
  const bodyLen = v.getUint32(Req.BODY_LEN, true);
  const op = v.getUint32(Req.OP, true);
  if (b.length !== Req.BODY + bodyLen || (op !== Op.LOAD && op !== Op.UNLOAD && op !== Op.REPLACE && op !== Op.MAP_UPDATE)) return undefined;
  const rawName = b.subarray(Req.NAME, Req.NAME + NAME_LEN);
  const nul = rawName.indexOf(0);
  return {
    op,
    requestId: v.getUint32(Req.REQUEST_ID, true),
    handle: v.getUint32(Req.HANDLE, true),
    digest: b.slice(Req.DIGEST, Req.DIGEST + DIGEST_LEN),
    name: new TextDecoder().decode(nul < 0 ? rawName : rawName.subarray(0, nul)),
    body: b.slice(Req.BODY),
  };
}

// ---- guest → host: HELLO, REPORT, HINTS ------------------------------------------------

export type Decoded<T> = { ok: true; value: T } | { ok: false; status: StatusCode; why: string };
const fail = (status: StatusCode, why: string): { ok: false; status: StatusCode; why: string } => ({ ok: false, status, why });
const view = (b: Uint8Array): DataView => new DataView(b.buffer, b.byteOffset, b.length);
const text = (b: Uint8Array): string => new TextDecoder('utf-8').decode(b);

export const HELLO_HDR = 0x10;
export const HELLO_MAX_NAME = 256;

export interface HelloMsg {
  version: number;
  caps: number;
  pid: number;
  name: string;
}

export function encodeHello(m: HelloMsg): Uint8Array {
  const name = new TextEncoder().encode(m.name);
  const b = new Uint8Array(HELLO_HDR + name.length);
  const v = view(b);
  v.setUint32(0x00, m.version, true);
  v.setUint32(0x04, m.caps, true);
  v.setUint32(0x08, m.pid, true);
  v.setUint32(0x0c, name.length, true);
  b.set(name, HELLO_HDR);
  return b;
}

export function decodeHello(b: Uint8Array, hostVersion: number): Decoded<HelloMsg> {
  if (b.length < HELLO_HDR) return fail(Status.E_LENGTH, `HELLO of ${b.length} bytes is shorter than its header`);
  const v = view(b);
  const version = v.getUint32(0x00, true);
  if (version !== hostVersion) return fail(Status.E_VERSION, `agent speaks version ${version}, host ${hostVersion}`);
  const nameLen = v.getUint32(0x0c, true);
  if (nameLen > HELLO_MAX_NAME) return fail(Status.E_INVALID, `HELLO name_len ${nameLen} > ${HELLO_MAX_NAME}`);
  if (b.length !== HELLO_HDR + nameLen) return fail(Status.E_LENGTH, `HELLO g2h_len ${b.length} != ${HELLO_HDR + nameLen}`);
  return { ok: true, value: { version, caps: v.getUint32(0x04, true), pid: v.getUint32(0x08, true), name: text(b.subarray(HELLO_HDR)) } };
}

export const Outcome = { OK: 0, REFUSED: 1, VERIFIER: 2, BADPKG: 3, NOENT: 4, FAILED: 5 } as const;
export type OutcomeName = keyof typeof Outcome;
const outcomeNames = Object.keys(Outcome) as OutcomeName[];
export const REPORT_HDR = 0x18;
export const REPORT_MAX_PROGS = 64;

export interface ReportMsg {
  requestId: number;
  outcome: OutcomeName;
  errno: number;
  progIds: number[];
  text: string;
}

export function encodeReport(m: ReportMsg): Uint8Array {
  const t = new TextEncoder().encode(m.text);
  const b = new Uint8Array(REPORT_HDR + 4 * m.progIds.length + t.length);
  const v = view(b);
  v.setUint32(0x00, m.requestId, true);
  v.setUint32(0x04, Outcome[m.outcome], true);
  v.setUint32(0x08, m.errno, true);
  v.setUint32(0x0c, m.progIds.length, true);
  v.setUint32(0x10, t.length, true);
  m.progIds.forEach((id, i) => v.setUint32(REPORT_HDR + 4 * i, id, true));
  b.set(t, REPORT_HDR + 4 * m.progIds.length);
  return b;
}

export function decodeReport(b: Uint8Array): Decoded<ReportMsg> {
  if (b.length < REPORT_HDR) return fail(Status.E_LENGTH, `REPORT of ${b.length} bytes is shorter than its header`);
  const v = view(b);
  const code = v.getUint32(0x04, true);
  const outcome = outcomeNames[code];
  if (outcome === undefined) return fail(Status.E_INVALID, `REPORT outcome ${code} is unknown`);
  const progCount = v.getUint32(0x0c, true);
  if (progCount > REPORT_MAX_PROGS) return fail(Status.E_INVALID, `REPORT prog_count ${progCount} > ${REPORT_MAX_PROGS}`);
  if (outcome !== 'OK' && progCount !== 0) return fail(Status.E_INVALID, `REPORT ${outcome} carries ${progCount} program ids`);
  const textLen = v.getUint32(0x10, true);
  const want = REPORT_HDR + 4 * progCount + textLen;
  if (b.length !== want) return fail(Status.E_LENGTH, `REPORT g2h_len ${b.length} != ${want}`);
  const progIds: number[] = [];
  for (let i = 0; i < progCount; i++) progIds.push(v.getUint32(REPORT_HDR + 4 * i, true));
  return {
    ok: true,
    value: { requestId: v.getUint32(0x00, true), outcome, errno: v.getUint32(0x08, true), progIds, text: text(b.subarray(REPORT_HDR + 4 * progCount)) },
  };
}

export const HINTS_HDR = 0x08;
export const RECORD_HDR = 0x08;
const align8 = (n: number): number => Math.ceil(n / 8) * 8;

/**
 * SOURCE record (§4.4): written by the agent, never by a hint program (type 0 is reserved).
 * Layout: u32 type = 0, u32 len = 16, u32 handle, u32 reserved (written 0, ignored). The hint
 * records after it, up to the next SOURCE or the end of the batch, came from the ring buffer
 * of the package loaded under `handle`.
 */
export const SOURCE = { type: 0, len: 0x10, handle: 0x08 } as const;

export interface HintRecord {
  type: number;
  /** The bytes after the 8-byte record header (padding excluded). */
  payload: Uint8Array;
}

export interface DecodedHintRecord extends HintRecord {
  /** The whole record, header included, `len` bytes (what bpf/hints.ts decodes). */
  record: Uint8Array;
  /** The handle the last SOURCE record before it named, as the guest wrote it; undefined without one. */
  source: number | undefined;
}

export interface HintsMsg {
  dropped: number;
  records: HintRecord[];
}

export interface DecodedHints {
  dropped: number;
  /** The hint records: SOURCE records are consumed by the decoder. */
  records: DecodedHintRecord[];
  /** `record_count`: every record of the batch, SOURCE records included. */
  count: number;
  /** Records decoded (SOURCE included): `count`, unless the budget ended the batch early. */
  taken: number;
  /** Budget units the taken records cost (hintUnits). */
  units: number;
}

/**
 * What a record costs against the host's hint budget: one unit per 64 bytes (an AFFINITY
 * record), so a guest cannot buy large copies with few records.
 */
export const HINT_UNIT_BYTES = 64;
export const hintUnits = (len: number): number => Math.max(1, Math.ceil(align8(len) / HINT_UNIT_BYTES));

/** The bytes of a HINTS batch that `units` budget units can cover (the host copies no more). */
export const hintsPrefixBytes = (units: number): number => HINTS_HDR + units * HINT_UNIT_BYTES;

/** A SOURCE record for `encodeHints` (tests, and tools that replay batches). */
export function sourceRecord(handle: number): HintRecord {
  const payload = new Uint8Array(SOURCE.len - RECORD_HDR);
  view(payload).setUint32(SOURCE.handle - RECORD_HDR, handle, true);
  return { type: SOURCE.type, payload };
}

export function encodeHints(m: HintsMsg): Uint8Array {
  const size = m.records.reduce((n, r) => n + align8(RECORD_HDR + r.payload.length), HINTS_HDR);
  const b = new Uint8Array(size);
  const v = view(b);
  v.setUint32(0x00, m.records.length, true);
  v.setUint32(0x04, m.dropped, true);
  let off = HINTS_HDR;
  for (const r of m.records) {
    v.setUint32(off, r.type, true);
    v.setUint32(off + 4, RECORD_HDR + r.payload.length, true);
    b.set(r.payload, off + RECORD_HDR);
    off += align8(RECORD_HDR + r.payload.length);
  }
  return b;
}

/**
 * Decodes a HINTS batch from `b`, a private copy of its first bytes (all of them, or the
 * hintsPrefixBytes(maxUnits) a budget covers) of a batch `length` bytes long. Records are
 * taken while the budget lasts (hintUnits each); the rest is not read at all, so the work a
 * guest causes is bounded by the budget, not by what it wrote. Everything taken is validated
 * before any record is returned: a bad batch delivers nothing.
 * `sources`: the agent announced HINT_SOURCE, so type 0 records are SOURCE records; without
 * it type 0 is an ordinary record and no record has a source.
 */
export function decodeHints(b: Uint8Array, sources: boolean, budget: { length?: number; maxUnits?: number } = {}): Decoded<DecodedHints> {
  const length = budget.length ?? b.length;
  const maxUnits = budget.maxUnits ?? Infinity;
  if (length < HINTS_HDR || length % 8 !== 0) return fail(Status.E_LENGTH, `HINTS g2h_len ${length} is not a multiple of 8 of at least 8`);
  if (b.length < Math.min(length, HINTS_HDR) || b.length > length) throw new RangeError(`HINTS copy of ${b.length} bytes for a ${length}-byte batch`);
  const v = view(b);
  const count = v.getUint32(0x00, true);
  // Each record takes at least 8 bytes: a bigger count cannot be honest (and must not drive a loop).
  if (count > (length - HINTS_HDR) / RECORD_HDR) return fail(Status.E_INVALID, `HINTS record_count ${count} cannot fit ${length} bytes`);
  const records: DecodedHintRecord[] = [];
  let source: number | undefined;
  let off = HINTS_HDR;
  let units = 0;
  let taken = 0;
  for (; taken < count; taken++) {
    const i = taken;
    if (off + RECORD_HDR > length) return fail(Status.E_LENGTH, `HINTS record ${i} header at ${off} runs past ${length}`);
    if (units + 1 > maxUnits || off + RECORD_HDR > b.length) break; // the budget ends here
    const type = v.getUint32(off, true);
    const len = v.getUint32(off + 4, true);
    if (len < RECORD_HDR) return fail(Status.E_INVALID, `HINTS record ${i} len ${len} < ${RECORD_HDR}`);
    if (off + len > length) return fail(Status.E_LENGTH, `HINTS record ${i} (${len} bytes at ${off}) runs past ${length}`);
    const cost = hintUnits(len);
    // Within the budget a record always fits the copy (hintsPrefixBytes); past it, it is not read.
    if (units + cost > maxUnits || off + len > b.length) break;
    if (sources && type === SOURCE.type) {
      if (len !== SOURCE.len) return fail(Status.E_INVALID, `HINTS record ${i} is a SOURCE of ${len} bytes, not ${SOURCE.len}`);
      source = v.getUint32(off + SOURCE.handle, true);
    } else {
      records.push({ type, payload: b.subarray(off + RECORD_HDR, off + len), record: b.subarray(off, off + len), source });
    }
    units += cost;
    off += align8(len);
  }
  if (taken === count && off !== length) return fail(Status.E_LENGTH, `HINTS has ${length - off} bytes after its ${count} records`);
  return { ok: true, value: { dropped: v.getUint32(0x04, true), records, count, taken, units } };
}
