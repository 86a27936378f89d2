// virtio-blk driven in-process by a simulated Linux driver (virtio-mmio registers, split ring)
// against a real image file: round trips through several segments, the answers to hostile or
// impossible requests (past the end, read-only, bad types, no status byte), several requests
// in flight with the in-flight budget holding against a driver that reposts descriptors, and
// reset/close while transfers run.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MmioTransport, STATUS } from '../../../devices/virtio/mmio';
import {
  BlkConfig, FileBackend, MAX_IN_FLIGHT, SEG_MAX, SIZE_MAX, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX,
  VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VirtioBlock,
  type BlockBackend,
} from '../../../devices/virtio/block/index';
import { CountingIrq, HOLE_START, SimDriver, fakeMemory, type Buf, type FakeMemory } from './sim';

const ALL_FEATURES = (1n << 64n) - 1n;
const SECTORS = 64; // 32 KiB image
const RING = 0x1000;
const HDR = 0x4000; // request headers, 16 bytes apart
const STATUS_AT = 0x5000; // status bytes, one per request slot
const DATA = 0x10000;

interface Rig {
  fake: FakeMemory;
  dev: VirtioBlock;
  drv: SimDriver;
  irq: CountingIrq;
  path: string;
  dir: string;
}

async function rig(opts: { readOnly?: boolean; queue?: number; backend?: (b: BlockBackend) => BlockBackend } = {}): Promise<Rig> {
  const dir = mkdtempSync(join(tmpdir(), 'tsvmm-blk-'));
  const path = join(dir, 'disk.img');
  const img = new Uint8Array(SECTORS * 512);
  for (let i = 0; i < img.length; i++) img[i] = (i * 13 + (i >> 9)) & 0xff;
  writeFileSync(path, img);
  const file = await FileBackend.open(path, opts.readOnly ?? false);
  const dev = new VirtioBlock(opts.backend ? opts.backend(file) : file, { id: 'test-disk', readOnly: opts.readOnly ?? false });
  const fake = fakeMemory();
  const irq = new CountingIrq();
  const drv = new SimDriver(new MmioTransport(dev, fake.mem, irq), fake);
  drv.bringUp(RING, opts.queue ?? 256, ALL_FEATURES);
  return { fake, dev, drv, irq, path, dir };
}

async function done(r: Rig): Promise<void> {
  await r.dev.close();
  rmSync(r.dir, { recursive: true, force: true });
}

let slot = 0;
/** A request: header (type, sector), data buffers, a status byte; returns where its status is. */
function request(r: Rig, type: number, sector: number | bigint, data: Buf[], opts: { noStatus?: boolean } = {}): { head: number; status: number } {
  const s = slot++ % 256;
  const hdr = HDR + 16 * (s % 64);
  const v = new DataView(r.fake.backing.buffer);
  v.setUint32(hdr, type, true);
  v.setUint32(hdr + 4, 0, true);
  v.setBigUint64(hdr + 8, BigInt(sector), true);
  const status = STATUS_AT + s;
  r.fake.backing[status] = 0xee;
  const bufs: Buf[] = [{ addr: hdr, len: 16 }, ...data];
  if (!opts.noStatus) bufs.push({ addr: status, len: 1, write: true });
  return { head: r.drv.submit(bufs), status };
}

/** Lets the event loop run (fs completions, setImmediate) until `n` used entries came back. */
async function used(r: Rig, n: number): Promise<{ id: number; len: number }[]> {
  const out: { id: number; len: number }[] = [];
  for (let i = 0; i < 5000 && out.length < n; i++) {
    out.push(...r.drv.takeUsed());
    if (out.length < n) await new Promise((res) => setTimeout(res, 1));
  }
  await new Promise((res) => setImmediate(res));
  out.push(...r.drv.takeUsed());
  return out;
}

test('config space and features: capacity in sectors, SEG_MAX, SIZE_MAX, FLUSH; RO only for a read-only drive', async () => {
  const r = await rig();
  const cfg = new Uint8Array(BlkConfig.size);
  r.dev.readConfig(0, cfg);
  const c = BlkConfig.read(cfg);
  assert.is(c.capacity, BigInt(SECTORS));
  assert.is(c.segMax, SEG_MAX);
  assert.is(c.sizeMax, SIZE_MAX);
  const f = r.dev.deviceFeatures;
  assert.ok(f & VIRTIO_BLK_F_FLUSH && f & VIRTIO_BLK_F_SEG_MAX && f & VIRTIO_BLK_F_SIZE_MAX);
  assert.is(f & VIRTIO_BLK_F_RO, 0n);
  await done(r);
  const ro = await rig({ readOnly: true });
  assert.is(ro.dev.deviceFeatures & VIRTIO_BLK_F_RO, VIRTIO_BLK_F_RO);
  await done(ro);
});

test('a write through three segments lands in the image; a read through other segments brings it back', async () => {
  const r = await rig();
  const payload = Uint8Array.from({ length: 1536 }, (_, i) => (i * 7 + 1) & 0xff);
  r.fake.backing.set(payload.subarray(0, 100), DATA);
  r.fake.backing.set(payload.subarray(100, 1000), DATA + 0x1000);
  r.fake.backing.set(payload.subarray(1000), DATA + 0x2000);
  const w = request(r, VIRTIO_BLK_T_OUT, 3, [{ addr: DATA, len: 100 }, { addr: DATA + 0x1000, len: 900 }, { addr: DATA + 0x2000, len: 536 }]);
  assert.equal(await used(r, 1), [{ id: w.head, len: 1 }]);
  assert.is(r.fake.backing[w.status], VIRTIO_BLK_S_OK);
  assert.equal(new Uint8Array(readFileSync(r.path)).subarray(3 * 512, 3 * 512 + 1536), payload);

  r.fake.backing.fill(0, DATA + 0x8000, DATA + 0xa000);
  const rd = request(r, VIRTIO_BLK_T_IN, 3, [{ addr: DATA + 0x8000, len: 1024, write: true }, { addr: DATA + 0x9000, len: 512, write: true }]);
  assert.equal(await used(r, 1), [{ id: rd.head, len: 1537 }]);
  assert.is(r.fake.backing[rd.status], VIRTIO_BLK_S_OK);
  assert.equal(r.fake.backing.slice(DATA + 0x8000, DATA + 0x8400), payload.slice(0, 1024));
  assert.equal(r.fake.backing.slice(DATA + 0x9000, DATA + 0x9200), payload.slice(1024));
  assert.is(r.dev.counters.bytesWritten, 1536);
  assert.is(r.dev.counters.bytesRead, 1536);
  await done(r);
});

test('header, data and status framed in one readable and one writable descriptor still parse', async () => {
  const r = await rig();
  // IN: header alone, then the data and the status byte in one writable buffer.
  const v = new DataView(r.fake.backing.buffer);
  v.setUint32(HDR, VIRTIO_BLK_T_IN, true);
  v.setBigUint64(HDR + 8, 1n, true);
  r.fake.backing[DATA + 512] = 0xee;
  const head = r.drv.submit([{ addr: HDR, len: 16 }, { addr: DATA, len: 513, write: true }]);
  assert.equal(await used(r, 1), [{ id: head, len: 513 }]);
  assert.is(r.fake.backing[DATA + 512], VIRTIO_BLK_S_OK);
  assert.equal(r.fake.backing.slice(DATA, DATA + 512), new Uint8Array(readFileSync(r.path)).slice(512, 1024));
  await done(r);
});

test('past the end of the image: IOERR and nothing else (no byte of the image or of guest memory changes)', async () => {
  const r = await rig();
  const before = readFileSync(r.path);
  r.fake.backing.fill(0x5a, DATA, DATA + 0x2000);
  const cases: [number, number | bigint, number][] = [
    [VIRTIO_BLK_T_IN, SECTORS, 512], // first sector past the end
    [VIRTIO_BLK_T_IN, SECTORS - 1, 1024], // straddles the end
    [VIRTIO_BLK_T_OUT, SECTORS - 1, 1024],
    [VIRTIO_BLK_T_IN, 0xffffffffffffffffn, 512], // u64 max
    [VIRTIO_BLK_T_OUT, 1n << 55n, 512],
    [VIRTIO_BLK_T_IN, 2 ** 32, 512],
  ];
  const reqs = cases.map(([type, sector, len]) => request(r, type, sector, [{ addr: DATA, len, write: type === VIRTIO_BLK_T_IN }]));
  const u = await used(r, reqs.length);
  assert.equal(u, reqs.map((q) => ({ id: q.head, len: 1 })));
  for (const q of reqs) assert.is(r.fake.backing[q.status], VIRTIO_BLK_S_IOERR);
  assert.ok(r.fake.backing.subarray(DATA, DATA + 0x2000).every((b) => b === 0x5a), 'guest buffers untouched');
  assert.equal(readFileSync(r.path), before, 'image untouched');
  assert.is(r.dev.counters.rejected['out-of-range'], cases.length);
  assert.is(r.dev.counters.reads + r.dev.counters.writes, 0);
  // The last sector itself is fine.
  const last = request(r, VIRTIO_BLK_T_IN, SECTORS - 1, [{ addr: DATA, len: 512, write: true }]);
  assert.equal(await used(r, 1), [{ id: last.head, len: 513 }]);
  assert.is(r.fake.backing[last.status], VIRTIO_BLK_S_OK);
  await done(r);
});

test('a read-only drive refuses writes with IOERR and keeps its bytes; reads and flushes work', async () => {
  const r = await rig({ readOnly: true });
  const before = readFileSync(r.path);
  r.fake.backing.fill(1, DATA, DATA + 512);
  const w = request(r, VIRTIO_BLK_T_OUT, 0, [{ addr: DATA, len: 512 }]);
  const f = request(r, VIRTIO_BLK_T_FLUSH, 0, []);
  const rd = request(r, VIRTIO_BLK_T_IN, 0, [{ addr: DATA + 0x1000, len: 512, write: true }]);
  const u = await used(r, 3);
  assert.is(u.length, 3);
  assert.is(r.fake.backing[w.status], VIRTIO_BLK_S_IOERR);
  assert.is(r.fake.backing[f.status], VIRTIO_BLK_S_OK);
  assert.is(r.fake.backing[rd.status], VIRTIO_BLK_S_OK);
  assert.equal(readFileSync(r.path), before);
  assert.is(r.dev.counters.rejected['read-only'], 1);
  await done(r);
});

test('GET_ID, FLUSH, an unknown type (UNSUPP), an unaligned length, a short header, no status byte', async () => {
  const r = await rig();
  r.fake.backing.fill(0xff, DATA, DATA + 20);
  const id = request(r, VIRTIO_BLK_T_GET_ID, 0, [{ addr: DATA, len: 20, write: true }]);
  const fl = request(r, VIRTIO_BLK_T_FLUSH, 0, []);
  const unk = request(r, 0x7f, 0, []);
  const odd = request(r, VIRTIO_BLK_T_IN, 0, [{ addr: DATA + 0x100, len: 500, write: true }]);
  const u = await used(r, 4);
  assert.equal(u.find((e) => e.id === id.head), { id: id.head, len: 21 });
  assert.is(new TextDecoder().decode(r.fake.backing.subarray(DATA, DATA + 9)), 'test-disk');
  assert.ok(r.fake.backing.subarray(DATA + 9, DATA + 20).every((b) => b === 0), 'id NUL padded');
  assert.is(r.fake.backing[id.status], VIRTIO_BLK_S_OK);
  assert.is(r.fake.backing[fl.status], VIRTIO_BLK_S_OK);
  assert.is(r.fake.backing[unk.status], VIRTIO_BLK_S_UNSUPP);
  assert.is(r.fake.backing[odd.status], VIRTIO_BLK_S_IOERR);
  // A header of 8 bytes.
  r.fake.backing[STATUS_AT + 255] = 0xee;
  const short = r.drv.submit([{ addr: HDR, len: 8 }, { addr: STATUS_AT + 255, len: 1, write: true }]);
  assert.equal(await used(r, 1), [{ id: short, len: 1 }]);
  assert.is(r.fake.backing[STATUS_AT + 255], VIRTIO_BLK_S_IOERR);
  // Nowhere to put a status: the chain comes back with 0 bytes, nothing written.
  const none = request(r, VIRTIO_BLK_T_IN, 0, [], { noStatus: true });
  assert.equal(await used(r, 1), [{ id: none.head, len: 0 }]);
  assert.is(r.dev.counters.flushes, 1);
  assert.is(r.dev.counters.getIds, 1);
  assert.is(r.dev.counters.rejected['no-status'], 1);
  assert.is(r.dev.counters.rejected['short-header'], 1);
  await done(r);
});

test('several requests in flight at once; answers as they complete, in one interrupt per turn', async () => {
  const r = await rig();
  const reqs = Array.from({ length: 32 }, (_, i) => request(r, VIRTIO_BLK_T_IN, i, [{ addr: DATA + i * 512, len: 512, write: true }]));
  // The notifies started every read; none can have completed before the event loop ran.
  assert.is(r.dev.requestsInFlight, 32);
  const u = await used(r, 32);
  assert.is(u.length, 32);
  assert.equal(new Set(u.map((e) => e.id)), new Set(reqs.map((q) => q.head)));
  assert.equal(r.fake.backing.slice(DATA, DATA + 32 * 512), new Uint8Array(readFileSync(r.path)).slice(0, 32 * 512));
  assert.is(r.dev.counters.maxInFlight, 32);
  assert.ok(r.irq.count < 32, `${r.irq.count} interrupts for 32 completions`);
  await done(r);
});

test('in-flight budget: a driver that reposts one descriptor without waiting cannot start more than MAX_IN_FLIGHT transfers', async () => {
  // A backend that holds every transfer until released shows what the device started.
  const held: (() => void)[] = [];
  const r = await rig({
    backend: (b) => ({
      size: b.size,
      readv: (bufs, pos) => new Promise<void>((res) => held.push(() => void b.readv(bufs, pos).then(res)))
      ,
      writev: (bufs, pos) => b.writev(bufs, pos),
      flush: () => b.flush(),
      close: () => b.close(),
    }),
  });
  const v = new DataView(r.fake.backing.buffer);
  v.setUint32(HDR, VIRTIO_BLK_T_IN, true);
  v.setBigUint64(HDR + 8, 0n, true);
  const head = r.drv.addChain([{ addr: HDR, len: 16 }, { addr: DATA, len: 512, write: true }, { addr: STATUS_AT, len: 1, write: true }]);
  const settle = async () => {
    for (let k = 0; k < 10; k++) await new Promise((res) => setImmediate(res));
  };
  // The ring's worth, then (as soon as the device took them) another: 512 requests posted
  // while none came back.
  for (let i = 0; i < 256; i++) r.drv.pushAvail(head);
  r.drv.notify();
  await settle();
  assert.is(r.dev.requestsInFlight, MAX_IN_FLIGHT);
  for (let i = 0; i < 256; i++) r.drv.pushAvail(head);
  r.drv.notify();
  await settle();
  assert.is(r.dev.requestsInFlight, MAX_IN_FLIGHT, 'the second lap waits in the ring');
  // Completions let the device take more, never beyond the budget.
  for (const f of held.splice(0, 100)) f();
  for (let k = 0; k < 50 && r.dev.requestsInFlight < MAX_IN_FLIGHT; k++) await new Promise((res) => setTimeout(res, 2));
  assert.is(r.dev.requestsInFlight, MAX_IN_FLIGHT, 'refilled up to the budget');
  for (let k = 0; k < 5000 && r.drv.usedIdx !== 512; k++) {
    for (const f of held.splice(0)) f();
    await new Promise((res) => setTimeout(res, 1));
  }
  const u = r.drv.takeUsed();
  assert.is(u.length, 512);
  assert.ok(r.dev.counters.maxInFlight <= MAX_IN_FLIGHT);
  assert.is(r.drv.status & STATUS.NEEDS_RESET, 0);
  await done(r);
});

test('a malformed chain puts the device into NEEDS_RESET without throwing; reset and a new bring-up work again', async () => {
  const r = await rig();
  r.drv.submit([{ addr: HOLE_START + 0x10, len: 16 }, { addr: STATUS_AT, len: 1, write: true }]);
  assert.ok(r.drv.status & STATUS.NEEDS_RESET);
  assert.is(r.dev.counters.queueErrors, 1);
  r.drv.bringUp(RING, 256, ALL_FEATURES);
  const q = request(r, VIRTIO_BLK_T_IN, 0, [{ addr: DATA, len: 512, write: true }]);
  assert.equal(await used(r, 1), [{ id: q.head, len: 513 }]);
  await done(r);
});

test('a reset while reads are in flight drops their answers; close waits for them', async () => {
  const r = await rig();
  for (let i = 0; i < 8; i++) request(r, VIRTIO_BLK_T_IN, i, [{ addr: DATA + i * 512, len: 512, write: true }]);
  assert.is(r.dev.requestsInFlight, 8);
  r.drv.w32(0x070, 0); // Status = 0: reset
  const usedBefore = r.drv.usedIdx;
  await r.dev.close();
  assert.is(r.dev.requestsInFlight, 0);
  assert.is(r.drv.usedIdx, usedBefore, 'no answer after the reset');
  rmSync(r.dir, { recursive: true, force: true });
});

test('host I/O failure: IOERR for that request, the device keeps working', async () => {
  let fail = true;
  const r = await rig({
    backend: (b) => ({
      size: b.size,
      readv: (bufs, pos) => (fail ? Promise.reject(new Error('EIO (simulated)')) : b.readv(bufs, pos)),
      writev: (bufs, pos) => b.writev(bufs, pos),
      flush: () => b.flush(),
      close: () => b.close(),
    }),
  });
  const bad = request(r, VIRTIO_BLK_T_IN, 0, [{ addr: DATA, len: 512, write: true }]);
  assert.equal(await used(r, 1), [{ id: bad.head, len: 1 }]);
  assert.is(r.fake.backing[bad.status], VIRTIO_BLK_S_IOERR);
  assert.is(r.dev.counters.ioErrors, 1);
  fail = false;
  const good = request(r, VIRTIO_BLK_T_IN, 0, [{ addr: DATA, len: 512, write: true }]);
  assert.equal(await used(r, 1), [{ id: good.head, len: 513 }]);
  assert.is(r.fake.backing[good.status], VIRTIO_BLK_S_OK);
  await done(r);
});

test('FileBackend: a missing image is a one-line DriveOpenError naming it', async () => {
  try {
    await FileBackend.open('/no/such/disk.img', false);
    assert.unreachable();
  } catch (e) {
    assert.is((e as Error).name, 'DriveOpenError');
    assert.match((e as Error).message, '/no/such/disk.img: cannot open read-write: ENOENT');
  }
});

test.run();
