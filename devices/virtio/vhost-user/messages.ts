// The vhost-user wire format (QEMU docs/interop/vhost-user.rst, "Message Specification"), front-end
// side: the header, the payloads tsvmm sends and the replies it reads. This module owns those
// layouts and their codec, each described once with lib/struct.ts; it must not touch sockets
// (channel.ts) or decide what to send when (frontend.ts).
//
// A message is a 12-byte header { request u32, flags u32, size u32 } and `size` bytes of payload,
// little-endian, on a Unix stream socket; file descriptors ride along in SCM_RIGHTS ancillary
// data of the same sendmsg. flags: bits 0-1 the protocol version (1), bit 2 "this is a reply",
// bit 3 "reply with a u64 status, please" (needs REPLY_ACK). The back-end answers only GET_*
// requests, and any request sent with NEED_REPLY once REPLY_ACK is negotiated.

import { struct, u32, u64, type StructValue } from '../../../lib/struct';

export const REQUEST = {
  GET_FEATURES: 1,
  SET_FEATURES: 2,
  SET_OWNER: 3,
  RESET_OWNER: 4,
  SET_MEM_TABLE: 5,
  SET_VRING_NUM: 8,
  SET_VRING_ADDR: 9,
  SET_VRING_BASE: 10,
  GET_VRING_BASE: 11,
  SET_VRING_KICK: 12,
  SET_VRING_CALL: 13,
  SET_VRING_ERR: 14,
  GET_PROTOCOL_FEATURES: 15,
  SET_PROTOCOL_FEATURES: 16,
  GET_QUEUE_NUM: 17,
  SET_VRING_ENABLE: 18,
  GET_CONFIG: 24,
  SET_CONFIG: 25,
} as const;
export type RequestName = keyof typeof REQUEST;

const NAMES = new Map<number, RequestName>(Object.entries(REQUEST).map(([k, v]) => [v, k as RequestName]));
/** GET_FEATURES, … or `request N` for a number this front-end does not speak. */
export const requestName = (r: number): string => NAMES.get(r) ?? `request ${r}`;

export const FLAG_VERSION = 0x1;
export const FLAG_VERSION_MASK = 0x3;
export const FLAG_REPLY = 0x4;
export const FLAG_NEED_REPLY = 0x8;

/** Virtio feature bit 30 in GET/SET_FEATURES: the back-end speaks GET/SET_PROTOCOL_FEATURES. */
export const VHOST_USER_F_PROTOCOL_FEATURES = 1n << 30n;

/** Protocol feature bits (vhost-user.rst, "Protocol features"). */
export const PROTOCOL_F = {
  MQ: 1n << 0n,
  LOG_SHMFD: 1n << 1n,
  RARP: 1n << 2n,
  REPLY_ACK: 1n << 3n,
  MTU: 1n << 4n,
  BACKEND_REQ: 1n << 5n,
  CONFIG: 1n << 9n,
} as const;

/** SET_VRING_KICK/CALL/ERR payload: bits 0-7 the ring index, bit 8 "no fd attached" (polling mode). */
export const VRING_INDEX_MASK = 0xffn;
export const VRING_NOFD = 1n << 8n;

/** At most this many memory regions in SET_MEM_TABLE (without CONFIGURE_MEM_SLOTS). */
export const MAX_MEM_REGIONS = 8;

export const Header = struct('VhostUserHeader', 12, { request: u32(0), flags: u32(4), size: u32(8) });
export const HEADER_SIZE = Header.size;
/** The largest payload tsvmm accepts from a back-end: the biggest message it knows is SET_MEM_TABLE. */
export const MAX_PAYLOAD = 8 + 32 * MAX_MEM_REGIONS;

export const U64 = struct('u64', 8, { value: u64(0) });
/** struct vhost_vring_state: SET_VRING_NUM, SET_VRING_BASE, GET_VRING_BASE, SET_VRING_ENABLE. */
export const VringState = struct('vhost_vring_state', 8, { index: u32(0), num: u32(4) });
/** struct vhost_vring_addr: the ring addresses in the front-end's own address space (see MemRegion.userspaceAddr). */
export const VringAddr = struct('vhost_vring_addr', 40, {
  index: u32(0), flags: u32(4), descUserAddr: u64(8), usedUserAddr: u64(16), availUserAddr: u64(24), logGuestAddr: u64(32),
});
/** One region of SET_MEM_TABLE; the back-end mmaps the region's fd at mmapOffset. */
export const MemRegion = struct('VhostUserMemoryRegion', 32, {
  guestPhysAddr: u64(0), memorySize: u64(8), userspaceAddr: u64(16), mmapOffset: u64(24),
});
export const MemTableHead = struct('VhostUserMemory', 8, { nregions: u32(0), padding: u32(4) });
/** GET_CONFIG/SET_CONFIG payload head; the config bytes follow. */
export const ConfigHead = struct('VhostUserConfig', 12, { offset: u32(0), size: u32(4), flags: u32(8) });

export type MemRegionValue = StructValue<typeof MemRegion.fields>;

/** One message: request, flags and payload (fds travel beside it, in the channel). */
export interface Message {
  request: number;
  flags: number;
  payload: Uint8Array;
}

/** Header + payload as one buffer, flags defaulting to version 1. */
export function encode(request: number, payload: Uint8Array = new Uint8Array(0), flags = FLAG_VERSION): Uint8Array {
  const b = new Uint8Array(HEADER_SIZE + payload.length);
  Header.write(b, { request, flags, size: payload.length });
  b.set(payload, HEADER_SIZE);
  return b;
}

export const u64Payload = (value: bigint): Uint8Array => U64.encode({ value });
export const statePayload = (index: number, num: number): Uint8Array => VringState.encode({ index, num });
/** SET_VRING_KICK/CALL payload: the ring index; the eventfd rides along as SCM_RIGHTS. */
export const vringFilePayload = (index: number): Uint8Array => U64.encode({ value: BigInt(index) & VRING_INDEX_MASK });

export function memTablePayload(regions: readonly MemRegionValue[]): Uint8Array {
  if (regions.length === 0 || regions.length > MAX_MEM_REGIONS) throw new RangeError(`SET_MEM_TABLE with ${regions.length} regions (1..${MAX_MEM_REGIONS})`);
  const b = new Uint8Array(MemTableHead.size + MemRegion.size * regions.length);
  MemTableHead.write(b, { nregions: regions.length, padding: 0 });
  regions.forEach((r, i) => MemRegion.write(b, r, MemTableHead.size + i * MemRegion.size));
  return b;
}

/** Decodes a SET_MEM_TABLE payload (the fake back-end in tests reads what the front-end sent). */
export function decodeMemTable(p: Uint8Array): MemRegionValue[] | undefined {
  if (p.length < MemTableHead.size) return undefined;
  const { nregions } = MemTableHead.read(p);
  if (nregions > MAX_MEM_REGIONS || p.length !== MemTableHead.size + nregions * MemRegion.size) return undefined;
  return Array.from({ length: nregions }, (_, i) => MemRegion.read(p, MemTableHead.size + i * MemRegion.size));
}

/**
 * Splits complete messages off the front of a byte stream. A verdict, not an exception, for a
 * malformed header: `bad` names what was wrong (the channel then closes, as QEMU does).
 */
export type Parsed = { kind: 'message'; message: Message; used: number } | { kind: 'partial' } | { kind: 'bad'; reason: string };

export function parse(buf: Uint8Array): Parsed {
  if (buf.length < HEADER_SIZE) return { kind: 'partial' };
  const h = Header.read(buf);
  if ((h.flags & FLAG_VERSION_MASK) !== FLAG_VERSION) return { kind: 'bad', reason: `${requestName(h.request)}: version ${h.flags & FLAG_VERSION_MASK} (expected 1)` };
  if (h.size > MAX_PAYLOAD) return { kind: 'bad', reason: `${requestName(h.request)}: payload of ${h.size} bytes (at most ${MAX_PAYLOAD})` };
  if (buf.length < HEADER_SIZE + h.size) return { kind: 'partial' };
  return { kind: 'message', message: { request: h.request, flags: h.flags, payload: buf.slice(HEADER_SIZE, HEADER_SIZE + h.size) }, used: HEADER_SIZE + h.size };
}

