// Shared memory layout of the hypercall device (docs/hypercall.md §3, §4): the header, the two
// mailboxes, and the byte layout of every message. This module owns encoding and validating
// those bytes; it must not hold device state or touch registers. Decoders take a private copy
// of guest bytes (never the live mapping) and return a status instead of throwing: whatever
// the guest wrote, the answer is a status code.

import { bytes, struct, u32, u64 } from '../../lib/struct';
import { Status, type StatusCode } from './registers';

/** 'T' 'S' 'H' 'M' as a little-endian u32. */
export const SHM_MAGIC = 0x4d48_5354;
export const SHM_VERSION = 1;
export const PAGE = 0x1000;
export const SHM_MIN_SIZE = 4 * PAGE;
export const SHM_MAX_SIZE = 256 * 1024 * 1024;

/** The header at offset 0 (the rest of its 64 bytes is reserved). guest/hypercall.h: SHM_H_*. */
export const ShmHeader = struct('hypercall shared memory header', 0x40, {
  magic: u32(0x00), version: u32(0x04), h2gOff: u32(0x08), h2gSize: u32(0x0c), g2hOff: u32(0x10), g2hSize: u32(0x14),
  h2gLen: u32(0x18), h2gSeq: u32(0x1c), g2hLen: u32(0x20), g2hSeq: u32(0x24), g2hAck: u32(0x28),
});

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

export const DIGEST_LEN = 32;
export const NAME_LEN = 32;
/** A request's header; its body (the package) follows. guest/hypercall.h: REQ_*. */
export const RequestHeader = struct('hypercall request', 0x50, {
  op: u32(0x00), requestId: u32(0x04), handle: u32(0x08), bodyLen: u32(0x0c), digest: bytes(0x10, DIGEST_LEN), name: bytes(0x30, NAME_LEN),
});

export interface WireRequest {
  op: OpCode;
  requestId: number;
  handle: number;
  digest: Uint8Array;
  name: string;
  body: Uint8Array;
}

/** Request size on the wire (header + body). */
export const requestSize = (bodyLen: number): number => RequestHeader.size + bodyLen;

/** Writes a request at the start of `dst` (the h2g mailbox); returns its length. */
export function encodeRequest(r: WireRequest, dst: Uint8Array): number {
  const len = requestSize(r.body.length);
  if (len > dst.length) throw new RangeError(`request ${r.requestId} (${len} bytes) does not fit the ${dst.length}-byte mailbox`);
  RequestHeader.write(dst, {
    op: r.op, requestId: r.requestId, handle: r.handle, bodyLen: r.body.length,
    digest: r.digest.subarray(0, DIGEST_LEN), name: new TextEncoder().encode(r.name).subarray(0, NAME_LEN),
  });
  dst.set(r.body, RequestHeader.size);
  return len;
}

/**
 * MAP_UPDATE body (§4.2): the request's `name` field names the map; the body is this header
 * (flags: BPF_ANY 0, BPF_NOEXIST 1, BPF_EXIST 2), then the key and the value.
 * guest/hypercall.h: MU_*.
 */
export const MapUpdateHeader = struct('MAP_UPDATE', 0x10, { keyLen: u32(0x00), valueLen: u32(0x04), flags: u64(0x08) });
export const MAP_UPDATE_FLAGS = { any: 0, noexist: 1, exist: 2 } as const;

export function encodeMapUpdate(key: Uint8Array, value: Uint8Array, flags: number): Uint8Array {
  const data = MapUpdateHeader.size;
  const b = new Uint8Array(data + key.length + value.length);
  MapUpdateHeader.write(b, { keyLen: key.length, valueLen: value.length, flags: BigInt(flags) });
  b.set(key, data);
  b.set(value, data + key.length);
  return b;
}

/** The guest side's reading of a MAP_UPDATE body (the simulated agent in tests). */
export function decodeMapUpdate(b: Uint8Array): { key: Uint8Array; value: Uint8Array; flags: number } | undefined {
  const data = MapUpdateHeader.size;
  if (b.length < data) return undefined;
  const h = MapUpdateHeader.read(b);
  if (b.length !== data + h.keyLen + h.valueLen) return undefined;
  return { key: b.slice(data, data + h.keyLen), value: b.slice(data + h.keyLen), flags: Number(h.flags) };
}

/** Reads a request (the guest side's view; used by the simulated agent in tests). */
export function decodeRequest(b: Uint8Array): WireRequest | undefined {
  if (b.length < RequestHeader.size) return undefined;
  const h = RequestHeader.read(b);
  const op = h.op;
  if (b.length !== RequestHeader.size + h.bodyLen || (op !== Op.LOAD && op !== Op.UNLOAD && op !== Op.REPLACE && op !== Op.MAP_UPDATE)) return undefined;
  const nul = h.name.indexOf(0);
  return {
    op,
    requestId: h.requestId,
    handle: h.handle,
    digest: h.digest,
    name: new TextDecoder().decode(nul < 0 ? h.name : h.name.subarray(0, nul)),
    body: b.slice(RequestHeader.size),
  };
}

// ---- guest → host: HELLO, REPORT, HINTS ------------------------------------------------

export type Decoded<T> = { ok: true; value: T } | { ok: false; status: StatusCode; why: string };
const fail = (status: StatusCode, why: string): { ok: false; status: StatusCode; why: string } => ({ ok: false, status, why });
const view = (b: Uint8Array): DataView => new DataView(b.buffer, b.byteOffset, b.length);
const text = (b: Uint8Array): string => new TextDecoder('utf-8').decode(b);

/** HELLO: this header, then `nameLen` bytes of name. guest/hypercall.h: HELLO_HDR. */
export const HelloHeader = struct('HELLO', 0x10, { version: u32(0x00), caps: u32(0x04), pid: u32(0x08), nameLen: u32(0x0c) });
export const HELLO_MAX_NAME = 256;

export interface HelloMsg {
  version: number;
  caps: number;
  pid: number;
  name: string;
}

export function encodeHello(m: HelloMsg): Uint8Array {
  const name = new TextEncoder().encode(m.name);
  const b = new Uint8Array(HelloHeader.size + name.length);
  HelloHeader.write(b, { version: m.version, caps: m.caps, pid: m.pid, nameLen: name.length });
  b.set(name, HelloHeader.size);
  return b;
}

export function decodeHello(b: Uint8Array, hostVersion: number): Decoded<HelloMsg> {
  if (b.length < HelloHeader.size) return fail(Status.E_LENGTH, `HELLO of ${b.length} bytes is shorter than its header`);
  const { version, caps, pid, nameLen } = HelloHeader.read(b);
  if (version !== hostVersion) return fail(Status.E_VERSION, `agent speaks version ${version}, host ${hostVersion}`);
  if (nameLen > HELLO_MAX_NAME) return fail(Status.E_INVALID, `HELLO name_len ${nameLen} > ${HELLO_MAX_NAME}`);
  if (b.length !== HelloHeader.size + nameLen) return fail(Status.E_LENGTH, `HELLO g2h_len ${b.length} != ${HelloHeader.size + nameLen}`);
  return { ok: true, value: { version, caps, pid, name: text(b.subarray(HelloHeader.size)) } };
}

export const Outcome = { OK: 0, REFUSED: 1, VERIFIER: 2, BADPKG: 3, NOENT: 4, FAILED: 5 } as const;
export type OutcomeName = keyof typeof Outcome;
const outcomeNames = Object.keys(Outcome) as OutcomeName[];
/** REPORT: this header, `progCount` u32 program ids, then `textLen` bytes of text. guest/hypercall.h: REPORT_HDR. */
export const ReportHeader = struct('REPORT', 0x18, {
  requestId: u32(0x00), outcome: u32(0x04), errno: u32(0x08), progCount: u32(0x0c), textLen: u32(0x10), reserved: u32(0x14),
});
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
  const ids = ReportHeader.size;
  const b = new Uint8Array(ids + 4 * m.progIds.length + t.length);
  ReportHeader.write(b, { requestId: m.requestId, outcome: Outcome[m.outcome], errno: m.errno, progCount: m.progIds.length, textLen: t.length });
  const v = view(b);
  m.progIds.forEach((id, i) => v.setUint32(ids + 4 * i, id, true));
  b.set(t, ids + 4 * m.progIds.length);
  return b;
}

export function decodeReport(b: Uint8Array): Decoded<ReportMsg> {
  const ids = ReportHeader.size;
  if (b.length < ids) return fail(Status.E_LENGTH, `REPORT of ${b.length} bytes is shorter than its header`);
  const h = ReportHeader.read(b);
  const outcome = outcomeNames[h.outcome];
  if (outcome === undefined) return fail(Status.E_INVALID, `REPORT outcome ${h.outcome} is unknown`);
  const progCount = h.progCount;
  if (progCount > REPORT_MAX_PROGS) return fail(Status.E_INVALID, `REPORT prog_count ${progCount} > ${REPORT_MAX_PROGS}`);
  if (outcome !== 'OK' && progCount !== 0) return fail(Status.E_INVALID, `REPORT ${outcome} carries ${progCount} program ids`);
  const want = ids + 4 * progCount + h.textLen;
  if (b.length !== want) return fail(Status.E_LENGTH, `REPORT g2h_len ${b.length} != ${want}`);
  const v = view(b);
  const progIds: number[] = [];
  for (let i = 0; i < progCount; i++) progIds.push(v.getUint32(ids + 4 * i, true));
  return {
    ok: true,
    value: { requestId: h.requestId, outcome, errno: h.errno, progIds, text: text(b.subarray(ids + 4 * progCount)) },
  };
}

/** HINTS: this header, then `recordCount` records, each padded to 8 bytes. guest/hypercall.h: HINTS_HDR. */
export const HintsHeader = struct('HINTS', 0x08, { recordCount: u32(0x00), dropped: u32(0x04) });
/** Every record starts with this (bpf/hints.ts describes the hint records themselves). guest/hypercall.h: RECORD_HDR. */
export const RecordHeader = struct('hint record', 0x08, { type: u32(0x00), len: u32(0x04) });
const align8 = (n: number): number => Math.ceil(n / 8) * 8;

/**
 * SOURCE record (§4.4): written by the agent, never by a hint program (type 0 is reserved).
 * The hint records after it, up to the next SOURCE or the end of the batch, came from the ring
 * buffer of the package loaded under `handle`; `reserved` is written 0 and ignored.
 * guest/hypercall.h: SOURCE_TYPE, SOURCE_LEN.
 */
export const SourceRecord = struct('SOURCE record', 0x10, { type: u32(0x00), len: u32(0x04), handle: u32(0x08), reserved: u32(0x0c) });
export const SOURCE_TYPE = 0;

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
export const hintsPrefixBytes = (units: number): number => HintsHeader.size + units * HINT_UNIT_BYTES;

/** A SOURCE record for `encodeHints` (tests, and tools that replay batches). */
export function sourceRecord(handle: number): HintRecord {
  const rec = SourceRecord.encode({ type: SOURCE_TYPE, len: SourceRecord.size, handle });
  return { type: SOURCE_TYPE, payload: rec.subarray(RecordHeader.size) };
}

export function encodeHints(m: HintsMsg): Uint8Array {
  const size = m.records.reduce((n, r) => n + align8(RecordHeader.size + r.payload.length), HintsHeader.size);
  const b = new Uint8Array(size);
  HintsHeader.write(b, { recordCount: m.records.length, dropped: m.dropped });
  let off = HintsHeader.size;
  for (const r of m.records) {
    const len = RecordHeader.size + r.payload.length;
    RecordHeader.write(b, { type: r.type, len }, off);
    b.set(r.payload, off + RecordHeader.size);
    off += align8(len);
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
  if (length < HintsHeader.size || length % 8 !== 0) return fail(Status.E_LENGTH, `HINTS g2h_len ${length} is not a multiple of 8 of at least 8`);
  if (b.length < Math.min(length, HintsHeader.size) || b.length > length) throw new RangeError(`HINTS copy of ${b.length} bytes for a ${length}-byte batch`);
  const hdr = HintsHeader.size;
  const rec = RecordHeader.size;
  const { recordCount: count, dropped } = HintsHeader.read(b);
  const v = view(b);
  // Each record takes at least 8 bytes: a bigger count cannot be honest (and must not drive a loop).
  if (count > (length - hdr) / rec) return fail(Status.E_INVALID, `HINTS record_count ${count} cannot fit ${length} bytes`);
  const records: DecodedHintRecord[] = [];
  let source: number | undefined;
  let off = hdr;
  let units = 0;
  let taken = 0;
  for (; taken < count; taken++) {
    const i = taken;
    if (off + rec > length) return fail(Status.E_LENGTH, `HINTS record ${i} header at ${off} runs past ${length}`);
    if (units + 1 > maxUnits || off + rec > b.length) break; // the budget ends here
    const { type, len } = RecordHeader.read(v, off);
    if (len < rec) return fail(Status.E_INVALID, `HINTS record ${i} len ${len} < ${rec}`);
    if (off + len > length) return fail(Status.E_LENGTH, `HINTS record ${i} (${len} bytes at ${off}) runs past ${length}`);
    const cost = hintUnits(len);
    // Within the budget a record always fits the copy (hintsPrefixBytes); past it, it is not read.
    if (units + cost > maxUnits || off + len > b.length) break;
    if (sources && type === SOURCE_TYPE) {
      if (len !== SourceRecord.size) return fail(Status.E_INVALID, `HINTS record ${i} is a SOURCE of ${len} bytes, not ${SourceRecord.size}`);
      source = SourceRecord.read(v, off).handle;
    } else {
      records.push({ type, payload: b.subarray(off + rec, off + len), record: b.subarray(off, off + len), source });
    }
    units += cost;
    off += align8(len);
  }
  if (taken === count && off !== length) return fail(Status.E_LENGTH, `HINTS has ${length - off} bytes after its ${count} records`);
  return { ok: true, value: { dropped, records, count, taken, units } };
}
