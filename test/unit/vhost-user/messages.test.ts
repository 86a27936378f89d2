// The vhost-user codec: header and payload layouts as vhost-user.rst gives them, a stream
// split into messages whatever the chunking, and verdicts (not exceptions) for bad headers.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import {
  FLAG_REPLY, FLAG_VERSION, HEADER_SIZE, MAX_PAYLOAD, MemRegion, REQUEST, VringAddr, VringState, decodeMemTable, encode, memTablePayload,
  parse, requestName, u64Payload, vringFilePayload,
} from '../../../devices/virtio/vhost-user/messages';

test('layouts are the spec\'s: header 12, vring state 8, vring addr 40, memory region 32 bytes', () => {
  assert.is(HEADER_SIZE, 12);
  assert.is(VringState.size, 8);
  assert.is(VringAddr.size, 40);
  assert.equal(VringAddr.offsets, { index: 0, flags: 4, descUserAddr: 8, usedUserAddr: 16, availUserAddr: 24, logGuestAddr: 32 });
  assert.is(MemRegion.size, 32);
});

test('encode writes request, version flag and size, little-endian, payload after', () => {
  const b = encode(REQUEST.SET_FEATURES, u64Payload(0x1_0000_0001n));
  assert.equal([...b], [2, 0, 0, 0, 1, 0, 0, 0, 8, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0]);
});

test('parse splits a stream fed one byte at a time and two messages in one chunk', () => {
  const a = encode(REQUEST.GET_FEATURES, u64Payload(7n), FLAG_VERSION | FLAG_REPLY);
  const b = encode(REQUEST.SET_OWNER);
  const stream = new Uint8Array([...a, ...b]);
  for (let i = 0; i < a.length; i++) assert.is(parse(stream.subarray(0, i)).kind, 'partial');
  const p = parse(stream);
  assert.is(p.kind, 'message');
  if (p.kind !== 'message') return;
  assert.is(p.used, a.length);
  assert.is(p.message.request, REQUEST.GET_FEATURES);
  assert.is(p.message.flags, FLAG_VERSION | FLAG_REPLY);
  assert.equal([...p.message.payload], [...u64Payload(7n)]);
  const q = parse(stream.subarray(p.used));
  assert.is(q.kind === 'message' && q.message.request, REQUEST.SET_OWNER);
});

test('a wrong version or an oversized payload is a verdict, not an exception', () => {
  const v0 = encode(REQUEST.GET_FEATURES, undefined, 0);
  const r = parse(v0);
  assert.is(r.kind, 'bad');
  const big = encode(REQUEST.GET_FEATURES);
  new DataView(big.buffer).setUint32(8, MAX_PAYLOAD + 1, true);
  const r2 = parse(big);
  assert.is(r2.kind, 'bad');
  assert.match(r2.kind === 'bad' ? r2.reason : '', /GET_FEATURES: payload of/);
  const huge = encode(99);
  new DataView(huge.buffer).setUint32(8, 0xffffffff, true);
  assert.is(parse(huge).kind, 'bad');
  assert.is(requestName(99), 'request 99');
});

test('memory table round trip; 0 or 9 regions refused; a short table does not decode', () => {
  const regions = [
    { guestPhysAddr: 0n, memorySize: 0x8000_0000n, userspaceAddr: 0x7f00_0000_0000n, mmapOffset: 0n },
    { guestPhysAddr: 0x1_0000_0000n, memorySize: 0x4000_0000n, userspaceAddr: 0x7e00_0000_0000n, mmapOffset: 0x1000n },
  ];
  const p = memTablePayload(regions);
  assert.is(p.length, 8 + 64);
  assert.equal(decodeMemTable(p), regions);
  assert.throws(() => memTablePayload([]), /1\.\.8/);
  assert.throws(() => memTablePayload(Array(9).fill(regions[0])), /1\.\.8/);
  assert.is(decodeMemTable(p.subarray(0, 40)), undefined);
});

test('vring file payload keeps only the index bits (no NOFD flag: an fd always rides along)', () => {
  assert.equal([...vringFilePayload(1)], [1, 0, 0, 0, 0, 0, 0, 0]);
  assert.equal([...vringFilePayload(0x1ff)], [0xff, 0, 0, 0, 0, 0, 0, 0]);
});

test.run();
