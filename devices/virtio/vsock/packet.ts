// The virtio-vsock packet: the one place that knows the 44-byte virtio_vsock_hdr layout (checked
// against <linux/virtio_vsock.h> by test/unit/vsock/abi.test.ts), how a guest TX chain is
// validated and split into header + payload, and how an RX packet is written into a guest RX
// chain. It owns no connection state and must not touch sockets; it never throws on guest
// input: a malformed packet comes back as a verdict (drop, or answer with RST).

import { struct, u16, u32, u64, type ValueOf } from '../../../lib/struct';
import type { IoVecBuffer } from '../iovec';

/** struct virtio_vsock_hdr (packed, little-endian). */
export const VsockHdr = struct('virtio_vsock_hdr', 44, {
  srcCid: u64(0), dstCid: u64(8), srcPort: u32(16), dstPort: u32(20), len: u32(24), type: u16(28), op: u16(30),
  flags: u32(32), bufAlloc: u32(36), fwdCnt: u32(40),
});
export type VsockHeader = ValueOf<typeof VsockHdr>;
export const HDR_SIZE = VsockHdr.size;
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

// Headers are decoded from and encoded into this buffer (one thread, never reentrant), then
// copied in or out of the chain in one IoVecBuffer call: the per-packet path makes no DataView
// over guest memory and handles a header split across descriptors the same way.
const scratch = new Uint8Array(HDR_SIZE);
const scratchView = new DataView(scratch.buffer);

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
  const hdr = VsockHdr.read(scratchView);
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
 * pieces, possibly across descriptors), then the header with the final `len`. The device reuses
 * one writer for every chain (reset).
 */
export class RxPacketWriter {
  /** Bytes of payload this chain can take (0 when it cannot even hold a header). */
  payloadCapacity = 0;
  /** Whether the chain can hold a header at all (a chain that cannot is returned unused). */
  usable = false;
  private writable!: IoVecBuffer;
  private filled = 0;
  private hdrWritten = false;

  constructor(writable: IoVecBuffer) {
    this.reset(writable);
  }

  /** Starts a new packet in `writable` (the next chain's buffers). */
  reset(writable: IoVecBuffer): this {
    this.writable = writable;
    this.usable = writable.length >= HDR_SIZE;
    this.payloadCapacity = this.usable ? Math.min(writable.length - HDR_SIZE, MAX_PKT_PAYLOAD) : 0;
    this.filled = 0;
    this.hdrWritten = false;
    return this;
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

  /** Writes the header; its `len` is set to the payload written so far (in `h` too). */
  writeHeader(h: VsockHeader): void {
    h.len = this.filled;
    VsockHdr.write(scratchView, h);
    this.writable.writeAt(scratch, 0);
    this.hdrWritten = true;
  }

  /** Bytes to report in the used ring. */
  get written(): number {
    return this.hdrWritten ? HDR_SIZE + this.filled : 0;
  }
}
