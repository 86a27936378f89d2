import { test } from 'uvu';
import * as assert from 'uvu/assert';
import {
  VsockHdr, HDR_SIZE, HOST_CID, MAX_PKT_PAYLOAD, OP_REQUEST, OP_RST, OP_RW, parseTxChain,
  RxPacketWriter, TYPE_STREAM, type VsockHeader,
} from '../../../devices/virtio/vsock/packet';
import { iovOf } from '../virtio/iov';

const GUEST = 3n;
const hdr = (h: Partial<VsockHeader> = {}): VsockHeader => ({
  srcCid: GUEST, dstCid: HOST_CID, srcPort: 1000, dstPort: 2000, len: 0, type: TYPE_STREAM, op: OP_RW,
  flags: 0, bufAlloc: 65536, fwdCnt: 7, ...h,
});
const enc = (h: VsockHeader): Uint8Array => VsockHdr.encode(h);

test('header layout is the 44-byte little-endian virtio_vsock_hdr', () => {
  const b = enc(hdr({ srcCid: 0x0102030405060708n, dstCid: 2n, srcPort: 0xaabbccdd, dstPort: 5, len: 9, type: 1, op: 5, flags: 3, bufAlloc: 0x11223344, fwdCnt: 0x55667788 }));
  const v = new DataView(b.buffer);
  assert.is(b.length, 44);
  assert.is(v.getBigUint64(0, true), 0x0102030405060708n);
  assert.is(b[0], 0x08);
  assert.is(v.getBigUint64(8, true), 2n);
  assert.is(v.getUint32(16, true), 0xaabbccdd);
  assert.is(v.getUint32(20, true), 5);
  assert.is(v.getUint32(24, true), 9);
  assert.is(v.getUint16(28, true), 1);
  assert.is(v.getUint16(30, true), 5);
  assert.is(v.getUint32(32, true), 3);
  assert.is(v.getUint32(36, true), 0x11223344);
  assert.is(v.getUint32(40, true), 0x55667788);
  assert.equal(VsockHdr.read(b), hdr({ srcCid: 0x0102030405060708n, dstCid: 2n, srcPort: 0xaabbccdd, dstPort: 5, len: 9, type: 1, op: 5, flags: 3, bufAlloc: 0x11223344, fwdCnt: 0x55667788 }));
});

test('parse: header and payload in separate descriptors, payload spanning two', () => {
  const payload = Uint8Array.from({ length: 10 }, (_, i) => i + 1);
  const r = parseTxChain(iovOf(enc(hdr({ len: 10 })), payload.slice(0, 4), payload.slice(4)), GUEST);
  assert.ok(r.ok);
  if (!r.ok) return;
  assert.is(r.hdr.len, 10);
  assert.equal(r.buf.copyOut(HDR_SIZE, r.hdr.len), Buffer.from(payload));
});

test('parse: header split across descriptors, payload in the same buffer as the header tail', () => {
  const all = new Uint8Array(HDR_SIZE + 5);
  all.set(enc(hdr({ len: 5 })));
  all.set([9, 8, 7, 6, 5], HDR_SIZE);
  const r = parseTxChain(iovOf(all.subarray(0, 10), all.subarray(10, 30), all.subarray(30)), GUEST);
  assert.ok(r.ok);
  if (!r.ok) return;
  assert.is(r.hdr.srcPort, 1000);
  assert.equal([...r.buf.copyOut(HDR_SIZE, r.hdr.len)], [9, 8, 7, 6, 5]);
});

test('parse: payload views alias guest memory (no copy), extra chain bytes ignored', () => {
  const all = new Uint8Array(HDR_SIZE + 100);
  all.set(enc(hdr({ len: 3 })));
  const r = parseTxChain(iovOf(all), GUEST);
  assert.ok(r.ok);
  if (!r.ok) return;
  const views = r.buf.views(HDR_SIZE, r.hdr.len);
  assert.is(views.length, 1);
  assert.is(views[0]!.length, 3);
  all[HDR_SIZE] = 42;
  assert.is(views[0]![0], 42);
});

test('malformed: short header (nothing readable, 43 bytes in one or two descriptors)', () => {
  for (const readable of [iovOf(), iovOf(enc(hdr()).subarray(0, 43)), iovOf(new Uint8Array(20), new Uint8Array(23))]) {
    const r = parseTxChain(readable, GUEST);
    assert.equal(r, { ok: false, reason: 'short-header' });
  }
});

test('malformed: len above 64 KiB, len past the chain', () => {
  const big = new Uint8Array(HDR_SIZE + MAX_PKT_PAYLOAD + 1);
  big.set(enc(hdr({ len: MAX_PKT_PAYLOAD + 1 })));
  assert.equal(parseTxChain(iovOf(big), GUEST), { ok: false, reason: 'len-too-large' });
  big.set(enc(hdr({ len: 0xffffffff })));
  assert.equal(parseTxChain(iovOf(big), GUEST), { ok: false, reason: 'len-too-large' });
  const r = parseTxChain(iovOf(enc(hdr({ len: 10 })), new Uint8Array(9)), GUEST);
  assert.equal(r, { ok: false, reason: 'len-past-chain' });
  // Exactly 64 KiB is fine.
  const max = new Uint8Array(HDR_SIZE + MAX_PKT_PAYLOAD);
  max.set(enc(hdr({ len: MAX_PKT_PAYLOAD })));
  assert.ok(parseTxChain(iovOf(max), GUEST).ok);
});

test('malformed: wrong src cid, dst cid not the host: dropped without RST', () => {
  assert.equal(parseTxChain(iovOf(enc(hdr({ srcCid: 4n }))), GUEST), { ok: false, reason: 'bad-src-cid' });
  assert.equal(parseTxChain(iovOf(enc(hdr({ srcCid: GUEST + (1n << 32n) }))), GUEST), { ok: false, reason: 'bad-src-cid' });
  assert.equal(parseTxChain(iovOf(enc(hdr({ dstCid: 1n }))), GUEST), { ok: false, reason: 'bad-dst-cid' });
  assert.equal(parseTxChain(iovOf(enc(hdr({ dstCid: GUEST }))), GUEST), { ok: false, reason: 'bad-dst-cid' });
});

test('malformed: wrong type is answered with RST, except an RST', () => {
  const r = parseTxChain(iovOf(enc(hdr({ type: 2, op: OP_REQUEST }))), GUEST);
  assert.is(r.ok, false);
  if (r.ok) return;
  assert.is(r.reason, 'bad-type');
  assert.is(r.rstTo?.srcPort, 1000);
  assert.is(r.rstTo?.dstPort, 2000);
  const r2 = parseTxChain(iovOf(enc(hdr({ type: 2, op: OP_RST }))), GUEST);
  assert.equal(r2, { ok: false, reason: 'bad-type' });
});

test('rx writer: header + payload across three writable descriptors', () => {
  const bufs = [new Uint8Array(20), new Uint8Array(30), new Uint8Array(50)];
  const w = new RxPacketWriter(iovOf(...bufs));
  assert.ok(w.usable);
  assert.is(w.payloadCapacity, 100 - HDR_SIZE);
  const data = Uint8Array.from({ length: 60 }, (_, i) => 200 - i);
  assert.is(w.appendPayload(data.subarray(0, 10)), 10);
  assert.is(w.appendPayload(data.subarray(10)), 46); // only 56 fit
  assert.is(w.room, 0);
  w.writeHeader(hdr({ op: OP_RW, len: 999 }));
  assert.is(w.written, 100);
  const all = Buffer.concat(bufs.map((b) => Buffer.from(b)));
  const h = VsockHdr.read(all);
  assert.is(h.len, 56); // the writer's count wins over the caller's
  assert.equal([...all.subarray(HDR_SIZE)], [...data.subarray(0, 56)]);
});

test('rx writer: a chain shorter than a header is unusable; payload capped at 64 KiB', () => {
  const w = new RxPacketWriter(iovOf(new Uint8Array(43)));
  assert.is(w.usable, false);
  assert.is(w.payloadCapacity, 0);
  assert.is(w.written, 0);
  const big = new RxPacketWriter(iovOf(new Uint8Array(HDR_SIZE + MAX_PKT_PAYLOAD + 1000)));
  assert.is(big.payloadCapacity, MAX_PKT_PAYLOAD);
  const ctl = new RxPacketWriter(iovOf(new Uint8Array(HDR_SIZE)));
  assert.ok(ctl.usable);
  assert.is(ctl.room, 0);
  ctl.writeHeader(hdr({ op: OP_RST }));
  assert.is(ctl.written, HDR_SIZE);
});

test.run();
