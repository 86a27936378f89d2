// Register block, shared memory header and wire formats, checked against docs/hypercall.md.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { HypercallDevice } from '../../../devices/hypercall/device';
import { HC_MAGIC, Reg, hypercallCmdline, parseHypercallCmdline } from '../../../devices/hypercall/registers';
import {
  ShmHeader,
  SHM_MAGIC,
  decodeHints,
  decodeReport,
  decodeRequest,
  encodeHints,
  encodeReport,
  encodeRequest,
  mailboxLayout,
  Op,
  sourceRecord,
} from '../../../devices/hypercall/shmem';
import { SimAgent, rig } from './agent';

test('registers: magic spells TSVM in port byte order, placement readable', () => {
  const shm = new Uint8Array(0x10_0000);
  const dev = new HypercallDevice({ shm, shmBase: 0x1_2345_6000, doorbellPort: 1053 });
  const rd = (off: number): number => {
    const b = new Uint8Array(4);
    dev.read(off, b);
    return new DataView(b.buffer).getUint32(0, true);
  };
  const b = new Uint8Array(4);
  dev.read(Reg.MAGIC, b);
  assert.is(new TextDecoder().decode(b), 'TSVM');
  assert.is(rd(Reg.MAGIC), HC_MAGIC);
  assert.is(rd(Reg.VERSION), 1);
  assert.is(rd(Reg.SHM_BASE_LO), 0x2345_6000);
  assert.is(rd(Reg.SHM_BASE_HI), 1);
  assert.is(rd(Reg.SHM_SIZE), 0x10_0000);
  assert.is(rd(Reg.DOORBELL_PORT), 1053);
  assert.is(rd(Reg.PENDING), 0);
  assert.is(rd(Reg.COMMAND), 0);
  assert.is(rd(0x30), 0);
});

test('shared memory header: default layout for 1 MiB is the one in the doc', () => {
  const { h2gOff, h2gSize, g2hOff, g2hSize } = mailboxLayout(0x10_0000);
  assert.equal([h2gOff, h2gSize, g2hOff, g2hSize], [0x1000, 0x7f000, 0x80000, 0x7f000]);
  const shm = new Uint8Array(0x10_0000);
  new HypercallDevice({ shm, shmBase: 0xc000_0000 });
  const v = new DataView(shm.buffer);
  assert.is(new TextDecoder().decode(shm.subarray(0, 4)), 'TSHM');
  assert.is(v.getUint32(ShmHeader.offsets.magic, true), SHM_MAGIC);
  assert.is(v.getUint32(ShmHeader.offsets.version, true), 1);
  assert.is(v.getUint32(ShmHeader.offsets.h2gOff, true), 0x1000);
  assert.is(v.getUint32(ShmHeader.offsets.g2hOff, true), 0x80000);
  assert.is(v.getUint32(ShmHeader.offsets.g2hSize, true), 0x7f000);
  assert.throws(() => mailboxLayout(0x1000), /16 KiB/);
  assert.throws(() => mailboxLayout(0x10_0800), /multiple of 4 KiB/);
  assert.throws(() => new HypercallDevice({ shm, shmBase: 0xc000_0800 }), /page aligned/);
});

test('host-owned header fields are restored after the guest scribbles on them', () => {
  const r = rig();
  const a = new SimAgent(r.bus, r.shm);
  const v = new DataView(r.shm.buffer);
  v.setUint32(ShmHeader.offsets.g2hOff, 0xdead_0000, true);
  v.setUint32(ShmHeader.offsets.magic, 0, true);
  a.call(2); // FETCH before HELLO: rejected, but the header is rewritten
  assert.is(v.getUint32(ShmHeader.offsets.magic, true), SHM_MAGIC);
  assert.is(v.getUint32(ShmHeader.offsets.g2hOff, true), mailboxLayout(r.shm.length).g2hOff);
});

test('kernel command line item round-trips and matches the documented form', () => {
  const p = { ioBase: 0x700, shmBase: 0xc000_0000, shmSize: 0x10_0000, doorbellPort: 53 };
  const s = hypercallCmdline(p);
  assert.is(s, 'tsvmm.hypercall=io@0x700:0x40,mem@0xc0000000:0x100000,vsock@53');
  assert.equal(parseHypercallCmdline(s.slice('tsvmm.hypercall='.length)), p);
  assert.equal(parseHypercallCmdline('mem@0xc0000000:0x100000,io@1792,future@x'), { ...p, ioBase: 1792 });
  assert.is(parseHypercallCmdline('io@0x700'), undefined);
  assert.is(parseHypercallCmdline('io@0xzz,mem@0xc0000000:0x1000'), undefined);
});

test('request encoding: byte offsets of the doc', () => {
  const box = new Uint8Array(4096);
  const digest = new Uint8Array(32).map((_, i) => i);
  const len = encodeRequest({ op: Op.REPLACE, requestId: 7, handle: 3, digest, name: 'affinity-v1', body: new Uint8Array([1, 2, 3]) }, box);
  assert.is(len, 0x53);
  const v = new DataView(box.buffer);
  assert.is(v.getUint32(0x00, true), 3);
  assert.is(v.getUint32(0x04, true), 7);
  assert.is(v.getUint32(0x08, true), 3);
  assert.is(v.getUint32(0x0c, true), 3);
  assert.is(box[0x10 + 31], 31);
  assert.is(new TextDecoder().decode(box.subarray(0x30, 0x3b)), 'affinity-v1');
  assert.is(box[0x3b], 0);
  assert.equal([...box.subarray(0x50, 0x53)], [1, 2, 3]);
  const back = decodeRequest(box.subarray(0, len));
  assert.is(back?.name, 'affinity-v1');
  assert.is(back?.op, Op.REPLACE);
  assert.throws(() => encodeRequest({ op: Op.LOAD, requestId: 1, handle: 1, digest, name: '', body: new Uint8Array(4096) }, box), /does not fit/);
});

test('report and hints encodings decode to what was encoded', () => {
  const rep = { requestId: 9, outcome: 'VERIFIER' as const, errno: 13, progIds: [], text: 'R1 invalid mem access' };
  const rb = encodeReport(rep);
  assert.is(rb.length, 0x18 + 21);
  assert.equal(decodeReport(rb), { ok: true, value: rep });
  const hb = encodeHints({ dropped: 2, records: [{ type: 1, payload: new Uint8Array([9]) }, { type: 2, payload: new Uint8Array(8) }] });
  // 8 header + align8(9) + align8(16)
  assert.is(hb.length, 8 + 16 + 16);
  assert.is(new DataView(hb.buffer).getUint32(8 + 4, true), 9);
  const d = decodeHints(hb, true);
  assert.ok(d.ok);
  if (d.ok) {
    assert.is(d.value.dropped, 2);
    assert.equal(d.value.records.map((r) => [r.type, r.payload.length]), [[1, 1], [2, 8]]);
  }
});

test('SOURCE: 16 bytes {0, 16, handle, 0}; it labels the records after it, or is a plain record without the capability', () => {
  const src = encodeHints({ dropped: 0, records: [sourceRecord(0x1234_5678)] });
  assert.equal([...src.subarray(8)], [0, 0, 0, 0, 16, 0, 0, 0, 0x78, 0x56, 0x34, 0x12, 0, 0, 0, 0]);
  const hb = encodeHints({ dropped: 0, records: [{ type: 1, payload: new Uint8Array(1) }, sourceRecord(7), { type: 2, payload: new Uint8Array(2) }, sourceRecord(9), sourceRecord(8), { type: 1, payload: new Uint8Array(3) }] });
  const on = decodeHints(hb, true);
  assert.equal(on.ok && [on.value.count, on.value.records.map((r) => [r.type, r.source])], [6, [[1, undefined], [2, 7], [1, 8]]]);
  const off = decodeHints(hb, false);
  assert.equal(off.ok && off.value.records.map((r) => [r.type, r.source]), [[1, undefined], [0, undefined], [2, undefined], [0, undefined], [0, undefined], [1, undefined]]);
});

test.run();
