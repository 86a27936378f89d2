// The virtio-vsock packet: the one place that knows the 44-byte virtio_vsock_hdr layout, how a
// guest TX chain is validated and split into header + payload, and how an RX packet is written
// into a guest RX chain. It owns no connection state and must not touch sockets; it never throws
// on guest input: a malformed packet comes back as a verdict (drop, or answer with RST).
//
//   le64 src_cid   @0     le32 len   @24     le32 flags     @32
//   le64 dst_cid   @8     le16 type  @28     le32 buf_alloc @36
//   le32 src_port  @16    le16 op    @30     le32 fwd_cnt   @40
//   le32 dst_port  @20

import type { IoVecBuffer } from '../iovec';

export const HDR_SIZE = 44;
/** Largest payload one packet may carry (Linux VIRTIO_VSOCK_MAX_PKT_BUF_SIZE, Firecracker too). */
export const MAX_PKT_PAYLOAD = 64 * 1024;
export const HOST_CID = 2n;

export const TYPE_STREAM = 1;

export const OP_REQUEST = 1;
export const OP_RESPONSE = 2;
export const OP_RST = 3;
export const OP_SHUTDOWN = 4;
export const OP_RW = 5;
export const OP_CREDIT_UPDATE = 6;
export const OP_CREDIT_REQUEST = 7;

/** SHUTDOWN flags: the sender will receive no more / send no more. */
export const SHUTDOWN_RCV = 1;
export const SHUTDOWN_SEND = 2;

const OP_NAMES = ['?', 'REQUEST', 'RESPONSE', 'RST', 'SHUTDOWN', 'RW', 'CREDIT_UPDATE', 'CREDIT_REQUEST'];
export function opName(op: number): string {
  return OP_NAMES[op] ?? `op${op}`;
}

export interface VsockHeader {
  srcCid: bigint;
  dstCid: bigint;
  srcPort: number;
  dstPort: number;
  len: number;
  type: number;
  op: number;
  flags: number;
  bufAlloc: number;
  fwdCnt: number;
}

// Headers are decoded from and encoded into this buffer (one thread, never reentrant), then
// copied in or out of the chain in one IoVecBuffer call, so the per-packet path allocates no
// DataView over guest memory and handles a header split across descriptors the same way.
const scratch = new Uint8Array(HDR_SIZE);
const scratchView = new DataView(scratch.buffer);

/** Decodes the first HDR_SIZE bytes of `b` (the caller guarantees the length). */
export function decodeHeader(b: Uint8Array): VsockHeader {
  const v = b === scratch ? scratchView : new DataView(b.buffer, b.byteOffset, HDR_SIZE);
  return {
    srcCid: v.getBigUint64(0, true),
    dstCid: v.getBigUint64(8, true),
    srcPort: v.getUint32(16, true),
    dstPort: v.getUint32(20, true),
    len: v.getUint32(24, true),
    type: v.getUint16(28, true),
    op: v.getUint16(30, true),
    flags: v.getUint32(32, true),
    bufAlloc: v.getUint32(36, true),
    fwdCnt: v.getUint32(40, true),
  };
}

/** Encodes `h` into the first HDR_SIZE bytes of `out` (`len` overrides `h.len`). */
export function encodeHeader(h: VsockHeader, out: Uint8Array, len: number = h.len): void {
  const v = scratchView;
  v.setBigUint64(0, h.srcCid, true);
  v.setBigUint64(8, h.dstCid, true);
  v.setUint32(16, h.srcPort, true);
  v.setUint32(20, h.dstPort, true);
  v.setUint32(24, len, true);
  v.setUint16(28, h.type, true);
  v.setUint16(30, h.op, true);
  v.setUint32(32, h.flags, true);
  v.setUint32(36, h.bufAlloc, true);
  v.setUint32(40, h.fwdCnt, true);
  if (out !== scratch) out.set(scratch);
}

/** Why a TX packet was not delivered; also the key of the drop counters. */
export type DropReason =
  | 'short-header'   // fewer than 44 readable bytes
  | 'len-too-large'  // hdr.len > 64 KiB
  | 'len-past-chain' // hdr.len > readable bytes after the header
  | 'bad-src-cid'    // not the guest's own CID (spoofing, or a stale CID after TRANSPORT_RESET)
  | 'bad-dst-cid'    // not the host: tsvmm only routes guest <-> host
  | 'bad-type';      // not STREAM (e.g. SEQPACKET, which is not offered)

export type TxParse =
  /** The payload is bytes [HDR_SIZE, HDR_SIZE + hdr.len) of `buf`, the chain's readable buffers. */
  | { readonly ok: true; readonly hdr: VsockHeader; readonly buf: IoVecBuffer }
  /** `rstTo` set: answer the sender with an RST for that header (the packet was well-addressed). */
  | { readonly ok: false; readonly reason: DropReason; readonly rstTo?: VsockHeader };

/**
 * Validates a guest TX chain. The header may itself span descriptors (the spec does not promise
 * one descriptor per part); the payload stays in guest memory, valid only until the chain goes
 * back to the used ring — consumers copy what they keep.
 */
export function parseTxChain(readable: IoVecBuffer, guestCid: bigint): TxParse {
  const avail = readable.length;
  if (avail < HDR_SIZE) return { ok: false, reason: 'short-header' };
  readable.readAt(scratch, 0);
  const hdr = decodeHeader(scratch);
  if (hdr.len > MAX_PKT_PAYLOAD) return { ok: false, reason: 'len-too-large' };
  if (hdr.len > avail - HDR_SIZE) return { ok: false, reason: 'len-past-chain' };
  if (hdr.srcCid !== guestCid) return { ok: false, reason: 'bad-src-cid' };
  if (hdr.dstCid !== HOST_CID) return { ok: false, reason: 'bad-dst-cid' };
  if (hdr.type !== TYPE_STREAM) {
    // Never answer an RST with an RST: two peers could bounce them forever.
    return hdr.op === OP_RST ? { ok: false, reason: 'bad-type' } : { ok: false, reason: 'bad-type', rstTo: hdr };
  }
  return { ok: true, hdr, buf: readable };
}

/**
 * Writes one RX packet into the writable buffers of a guest RX chain: payload first (appended in
 * pieces, possibly across descriptors), then the header with the final `len`.
 */
export class RxPacketWriter {
  /** Bytes of payload this chain can take (0 when it cannot even hold a header). */
  readonly payloadCapacity: number;
  /** Whether the chain can hold a header at all (a chain that cannot is returned unused). */
  readonly usable: boolean;
  private filled = 0;
  private hdrWritten = false;

  constructor(private readonly writable: IoVecBuffer) {
    this.usable = writable.length >= HDR_SIZE;
    this.payloadCapacity = this.usable ? Math.min(writable.length - HDR_SIZE, MAX_PKT_PAYLOAD) : 0;
  }

  get payloadLength(): number {
    return this.filled;
  }

  get room(): number {
    return this.payloadCapacity - this.filled;
  }

  /** Appends as much of `src` as fits; returns the number of bytes taken. */
  appendPayload(src: Uint8Array): number {
    const n = Math.min(this.room, src.length);
    if (n === 0) return 0;
    this.writable.writeAt(n === src.length ? src : src.subarray(0, n), HDR_SIZE + this.filled);
    this.filled += n;
    return n;
  }

  /** Writes the header (its `len` is forced to the payload written so far). */
  writeHeader(h: VsockHeader): void {
    encodeHeader(h, scratch, this.filled);
    this.writable.writeAt(scratch, 0);
    this.hdrWritten = true;
  }

  /** Bytes to report in the used ring. */
  get written(): number {
    return this.hdrWritten ? HDR_SIZE + this.filled : 0;
  }
}
