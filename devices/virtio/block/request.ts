// Parsing one virtio-blk request (virtio 1.x §5.2.6) out of a descriptor chain: the 16-byte
// header (type, ioprio, sector) at the start of the driver's buffers, the data, and the status
// byte at the very end of the device's buffers. The parser owns every check on what the guest
// asked for — request type, data length, sector range against the image, segment budgets — and
// returns a verdict instead of throwing; it must not touch files or the rings.
//
// The layout is read through IoVecBuffer offsets, never descriptor boundaries: a driver may
// frame a request in any number of descriptors (§2.6.4), so the header may share a buffer with
// data and the status byte may end a data buffer. What a request may touch is decided here,
// once: a request for sectors past the image's end is IOERR before any byte moves.

import type { DescriptorChain } from '../queue';
import {
  BlkReqHeader, SECTOR_SIZE, VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
  VIRTIO_BLK_T_OUT,
} from './spec';

/** What the parser needs to know about the drive. */
export interface DriveGeometry {
  /** Image size in 512-byte sectors (a partial last sector is not part of the drive). */
  readonly sectors: number;
  readonly readOnly: boolean;
  /** Most data segments one request may carry (the SEG_MAX the device offers). */
  readonly segMax: number;
  /** Largest data segment, bytes (the SIZE_MAX the device offers). */
  readonly sizeMax: number;
}

/** Why a request was refused (counted per reason). */
export type RejectReason =
  | 'short-header' // fewer than 16 readable bytes
  | 'unsupported-type' // a type tsvmm does not implement: UNSUPP
  | 'unaligned-length' // IN/OUT data not a multiple of 512 bytes
  | 'out-of-range' // sectors past the end of the image
  | 'read-only' // OUT on a read-only drive
  | 'too-many-segments' // more data buffers than SEG_MAX
  | 'segment-too-large'; // a data buffer larger than SIZE_MAX

export const REJECT_REASONS: readonly RejectReason[] = ['short-header', 'unsupported-type', 'unaligned-length', 'out-of-range', 'read-only', 'too-many-segments', 'segment-too-large'];

export type BlkRequest =
  /** Read `len` bytes at byte `offset` of the image into `data` (views of guest memory). */
  | { kind: 'in'; offset: number; len: number; data: Uint8Array[]; status: Uint8Array }
  /** Write `data` (`len` bytes) at byte `offset`. */
  | { kind: 'out'; offset: number; len: number; data: Uint8Array[]; status: Uint8Array }
  | { kind: 'flush'; status: Uint8Array }
  /** Write the drive id into `data` (up to 20 bytes). */
  | { kind: 'get-id'; data: Uint8Array[]; len: number; status: Uint8Array }
  /** Answer `code` (IOERR or UNSUPP) in the status byte and nothing else. */
  | { kind: 'reject'; code: number; reason: RejectReason; status: Uint8Array }
  /** No writable byte for a status: nothing can be answered; the chain goes back with 0 bytes. */
  | { kind: 'no-status' };

// The header is copied out of guest memory once (the guest may change it meanwhile): into one
// scratch buffer: a thread (each has its own copy of this module) parses one request at a time.
const scratch = new Uint8Array(BlkReqHeader.size);
const scratchView = new DataView(scratch.buffer);
const TYPE_AT = BlkReqHeader.offsets.type;
const SECTOR_AT = BlkReqHeader.offsets.sector;

/** Classifies one chain. Total: any chain gives a verdict, nothing throws. */
export function parseBlkRequest(chain: DescriptorChain, g: DriveGeometry): BlkRequest {
  const w = chain.writable;
  if (w.length === 0) return { kind: 'no-status' };
  const dataLen = w.length - 1;
  const status = w.views(dataLen, 1)[0]!;
  const reject = (reason: RejectReason, code = VIRTIO_BLK_S_IOERR): BlkRequest => ({ kind: 'reject', code, reason, status });

  if (chain.readable.readAt(scratch, 0) < BlkReqHeader.size) return reject('short-header');
  const type = scratchView.getUint32(TYPE_AT, true);
  switch (type) {
    case VIRTIO_BLK_T_IN:
    case VIRTIO_BLK_T_OUT: {
      const out = type === VIRTIO_BLK_T_OUT;
      if (out && g.readOnly) return reject('read-only');
      // OUT data follows the header in the driver's buffers; IN data precedes the status byte.
      const len = out ? chain.readable.length - BlkReqHeader.size : dataLen;
      if (len % SECTOR_SIZE !== 0) return reject('unaligned-length');
      // sector is a u64: above 2^53 / 512 it is past any image anyway.
      const lo = scratchView.getUint32(SECTOR_AT, true);
      const hi = scratchView.getUint32(SECTOR_AT + 4, true);
      if (hi >= 0x100000) return reject('out-of-range');
      const sector = hi * 0x1_0000_0000 + lo;
      if (sector > g.sectors || len / SECTOR_SIZE > g.sectors - sector) return reject('out-of-range');
      const data = out ? chain.readable.views(BlkReqHeader.size, len) : w.views(0, len);
      if (data.length > g.segMax) return reject('too-many-segments');
      for (const d of data) if (d.length > g.sizeMax) return reject('segment-too-large');
      const offset = sector * SECTOR_SIZE;
      return out ? { kind: 'out', offset, len, data, status } : { kind: 'in', offset, len, data, status };
    }
    case VIRTIO_BLK_T_FLUSH:
      return { kind: 'flush', status };
    case VIRTIO_BLK_T_GET_ID: {
      const len = Math.min(dataLen, VIRTIO_BLK_ID_BYTES);
      return { kind: 'get-id', data: w.views(0, len), len, status };
    }
    default:
      return reject('unsupported-type', VIRTIO_BLK_S_UNSUPP);
  }
}
