// The virtio-vsock packet: the one place that knows the 44-byte virtio_vsock_hdr layout, how a
// guest TX chain is validated and split into header + payload, and how an RX packet is written
// into a guest RX chain. It owns no connection state and must not touch sockets; it never throws
// on guest input: a malformed packet comes back as a verdict (drop, or answer with RST).
//
//   le64 src_cid   @0     le32 len   @24     le32 flags     @32
//   le64 dst_cid   @8     le16 type  @28     le32 buf_alloc @36
//   le32 src_port  @16    le16 op    @30     le32 fwd_cnt   @40
//   le32 dst_port  @20

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

/** Decodes the first HDR_SIZE bytes of `b` (the caller guarantees the length). */
export function decodeHeader(b: Uint8Array): VsockHeader {
  const v = new DataView(b.buffer, b.byteOffset, HDR_SIZE);
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

// Every RX packet gets a header: encoded here (one thread, never reentrant) and copied out, so
// the per-packet path allocates no DataView over guest memory.
const scratch = new Uint8Array(HDR_SIZE);
const scratchView = new DataView(scratch.buffer);

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
  out.set(scratch);
}


/** The buffers of a descriptor chain, as devices/virtio/queue.ts hands them out. */
export interface ChainBuffers {
  readonly readable: readonly Uint8Array[];
  readonly writable: readonly Uint8Array[];
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
  | { readonly ok: true; readonly hdr: VsockHeader; readonly payload: readonly Uint8Array[] }
  /** `rstTo` set: answer the sender with an RST for that header (the packet was well-addressed). */
  | { readonly ok: false; readonly reason: DropReason; readonly rstTo?: VsockHeader };

/** Gathers `len` bytes starting at byte `start` of the concatenation of `bufs`, as views (no copy). */
export function gatherViews(bufs: readonly Uint8Array[], start: number, len: number): Uint8Array[] {
  const out: Uint8Array[] = [];
  let skip = start;
  let left = len;
  for (const b of bufs) {
    if (left === 0) break;
    if (skip >= b.length) {
      skip -= b.length;
      continue;
    }
    const n = Math.min(b.length - skip, left);
    out.push(b.subarray(skip, skip + n));
    left -= n;
    skip = 0;
  }
  return out;
}

/** Copies `len` bytes from the start of the concatenation of `parts` into one new Buffer (not zero-filled first). */
export function concatViews(parts: readonly Uint8Array[], len: number): Buffer {
  const out = Buffer.allocUnsafe(len);
  let at = 0;
  for (const p of parts) {
    if (at === len) break;
    const n = Math.min(p.length, len - at);
    out.set(n === p.length ? p : p.subarray(0, n), at);
    at += n;
  }
  return out;
}

function totalLength(bufs: readonly Uint8Array[]): number {
  let n = 0;
  for (const b of bufs) n += b.length;
  return n;
}

/**
 * Validates a guest TX chain. The header may itself span descriptors (the spec does not promise
 * one descriptor per part); the payload is returned as views into guest memory, which stay valid
 * only until the chain goes back to the used ring — consumers copy what they keep.
 */
export function parseTxChain(chain: ChainBuffers, guestCid: bigint): TxParse {
  const readable = chain.readable;
  const avail = totalLength(readable);
  if (avail < HDR_SIZE) return { ok: false, reason: 'short-header' };
  let hdrBytes: Uint8Array;
  if (readable[0]!.length >= HDR_SIZE) {
    hdrBytes = readable[0]!;
  } else {
    hdrBytes = new Uint8Array(HDR_SIZE);
    let at = 0;
    for (const v of gatherViews(readable, 0, HDR_SIZE)) {
      hdrBytes.set(v, at);
      at += v.length;
    }
  }
  const hdr = decodeHeader(hdrBytes);
  if (hdr.len > MAX_PKT_PAYLOAD) return { ok: false, reason: 'len-too-large' };
  if (hdr.len > avail - HDR_SIZE) return { ok: false, reason: 'len-past-chain' };
  if (hdr.srcCid !== guestCid) return { ok: false, reason: 'bad-src-cid' };
  if (hdr.dstCid !== HOST_CID) return { ok: false, reason: 'bad-dst-cid' };
  if (hdr.type !== TYPE_STREAM) {
    // Never answer an RST with an RST: two peers could bounce them forever.
    return hdr.op === OP_RST ? { ok: false, reason: 'bad-type' } : { ok: false, reason: 'bad-type', rstTo: hdr };
  }
  return { ok: true, hdr, payload: hdr.len === 0 ? [] : gatherViews(readable, HDR_SIZE, hdr.len) };
}

/**
 * Writes one RX packet into the writable buffers of a guest RX chain: payload first (appended in
 * pieces, possibly across descriptors), then the header with the final `len`.
 */
export class RxPacketWriter {
  private readonly payloadViews: Uint8Array[];
  /** Bytes of payload this chain can take (0 when it cannot even hold a header). */
  readonly payloadCapacity: number;
  /** Whether the chain can hold a header at all (a chain that cannot is returned unused). */
  readonly usable: boolean;
  private filled = 0;
  private hdrWritten = false;

  constructor(private readonly writable: readonly Uint8Array[]) {
    const total = totalLength(writable);
    this.usable = total >= HDR_SIZE;
    this.payloadCapacity = this.usable ? Math.min(total - HDR_SIZE, MAX_PKT_PAYLOAD) : 0;
    this.payloadViews = this.usable ? gatherViews(writable, HDR_SIZE, this.payloadCapacity) : [];
  }

  get payloadLength(): number {
    return this.filled;
  }

  get room(): number {
    return this.payloadCapacity - this.filled;
  }

  /** Appends as much of `src` as fits; returns the number of bytes taken. */
  appendPayload(src: Uint8Array): number {
    const views = this.payloadViews;
    if (views.length === 1) {
      // The usual shape (Linux: header and payload in separate descriptors): one copy, no loop.
      const n = Math.min(this.payloadCapacity - this.filled, src.length);
      views[0]!.set(n === src.length ? src : src.subarray(0, n), this.filled);
      this.filled += n;
      return n;
    }
    let taken = 0;
    let pos = this.filled;
    for (const v of this.payloadViews) {
      if (taken === src.length) break;
      if (pos >= v.length) {
        pos -= v.length;
        continue;
      }
      const n = Math.min(v.length - pos, src.length - taken);
      v.set(src.subarray(taken, taken + n), pos);
      taken += n;
      pos = 0;
    }
    this.filled += taken;
    return taken;
  }

  /** Writes the header (its `len` is forced to the payload written so far). */
  writeHeader(h: VsockHeader): void {
    const first = this.writable[0]!;
    if (first.length >= HDR_SIZE) {
      encodeHeader(h, first, this.filled);
    } else {
      const tmp = new Uint8Array(HDR_SIZE);
      encodeHeader(h, tmp, this.filled);
      let at = 0;
      for (const v of gatherViews(this.writable, 0, HDR_SIZE)) {
        v.set(tmp.subarray(at, at + v.length));
        at += v.length;
      }
    }
    this.hdrWritten = true;
  }

  /** Bytes to report in the used ring. */
  get written(): number {
    return this.hdrWritten ? HDR_SIZE + this.filled : 0;
  }
}
