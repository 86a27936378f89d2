// virtio-blk driven in-process by a simulated Linux driver (virtio-mmio registers, split ring)
// against a real image file, through the drive's real I/O thread (dist/blk-worker.js: a
// worker thread over an mmap'd fake guest RAM, its own eventfds; no KVM): round trips through
// several segments, the answers to hostile or impossible requests (past the end, read-only,
// bad types, no status byte), a ring served with all its requests in flight, a kick that never reaches the main
// thread, reset and close while the thread serves, a host I/O error.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { mkdtempSync, readdirSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE, close as closeFd, eventfd, eventfdDrain, eventfdSignal, mmap, munmap, view } from '../../../kvm/libc';
import type { IrqLine } from '../../../devices/irq';
import { INT_USED_BUFFER, MmioTransport, REG, STATUS } from '../../../devices/virtio/mmio';
import {
  BlkConfig, DriveImage, SEG_MAX, SIZE_MAX, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX,
  VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VirtioBlock,
} from '../../../devices/virtio/block/index';
import { HIGH_RAM_END, HOLE_END, HOLE_START, LOW_RAM_END, SimDriver, fakeMemory, type Buf, type FakeMemory } from './sim';

const ALL_FEATURES = (1n << 64n) - 1n;
const SECTORS = 64; // 32 KiB image
const RING = 0x1000;
const HDR = 0x4000; // request headers, 16 bytes apart
const STATUS_AT = 0x5000; // status bytes, one per request slot
const DATA = 0x10000;

/** An interrupt line that is an eventfd, as the VMM's irqfds are: the I/O thread writes it. */
class EventfdIrq implements IrqLine {
  readonly fd = eventfd();
  private seen = 0;
  trigger(): void {
    eventfdSignal(this.fd);
  }
  /** Edges so far. */
  get count(): number {
    this.seen += Number(eventfdDrain(this.fd));
    return this.seen;
  }
}

interface Rig {
  fake: FakeMemory;
  dev: VirtioBlock;
  drv: SimDriver;
  irq: EventfdIrq;
  path: string;
  dir: string;
  logs: string[];
  ramAddr: bigint;
}

async function rig(opts: { readOnly?: boolean; queue?: number } = {}): Promise<Rig> {
  const dir = mkdtempSync(join(tmpdir(), 'tsvmm-blk-'));
  const path = join(dir, 'disk.img');
  const img = new Uint8Array(SECTORS * 512);
  for (let i = 0; i < img.length; i++) img[i] = (i * 13 + (i >> 9)) & 0xff;
  writeFileSync(path, img);
  // Guest RAM the I/O thread can map: host memory by address, as GuestRam's.
  const ramAddr = mmap(HIGH_RAM_END, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1);
  const fake = fakeMemory(new Uint8Array(view(ramAddr, HIGH_RAM_END)));
  const ram = [{ gpa: 0, size: LOW_RAM_END, addr: ramAddr }, { gpa: HOLE_END, size: HIGH_RAM_END - HOLE_END, addr: ramAddr + BigInt(HOLE_END) }];
  const logs: string[] = [];
  const dev = new VirtioBlock(await DriveImage.open(path, opts.readOnly ?? false), { id: 'test-disk', readOnly: opts.readOnly ?? false, ram, log: (m) => logs.push(m) });
  const irq = new EventfdIrq();
  const drv = new SimDriver(new MmioTransport(dev, fake.mem, irq), fake);
  drv.bringUp(RING, opts.queue ?? 256, ALL_FEATURES);
  const r = { fake, dev, drv, irq, path, dir, logs, ramAddr };
  open.add(r);
  return r;
}

/** Rigs not closed yet: a test that fails before its done() must not leave an I/O thread behind. */
const open = new Set<Rig>();
test.after.each(async () => {
  for (const r of open) await done(r);
});

async function done(r: Rig): Promise<void> {
  if (!open.delete(r)) return;
  await r.dev.close();
  closeFd(r.irq.fd);
  munmap(r.ramAddr, HIGH_RAM_END);
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

/** Waits (the I/O thread answers meanwhile) until `n` used entries came back. */
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

test('a ring of 32 requests and one kick: all in flight at once (io_uring), each answered with its data', async () => {
  const r = await rig();
  const irqs = r.irq.count;
  const heads: number[] = [];
  for (let i = 0; i < 32; i++) {
    const s = slot++ % 256;
    const v = new DataView(r.fake.backing.buffer, r.fake.backing.byteOffset);
    v.setUint32(HDR + 16 * (s % 64), VIRTIO_BLK_T_IN, true);
    v.setBigUint64(HDR + 16 * (s % 64) + 8, BigInt(i), true);
    const head = r.drv.addChain([{ addr: HDR + 16 * (s % 64), len: 16 }, { addr: DATA + i * 512, len: 512, write: true }, { addr: STATUS_AT + s, len: 1, write: true }]);
    r.drv.pushAvail(head, false);
    heads.push(head);
  }
  // All 32 at once: a thread awake meanwhile must not see half of them.
  r.drv.setAvailIdx(r.drv.published);
  r.drv.notify();
  const u = await used(r, 32);
  // The used entries are visible before the batch's interrupt (the device publishes each entry,
  // then interrupts once): a driver waits for the interrupt, and so does this test.
  for (let i = 0; i < 5000 && r.irq.count === irqs; i++) await new Promise((res) => setTimeout(res, 1));
  // Completions come in any order (inline ones in ring order, those the kernel hands to its
  // workers as they finish), each pass signalling once.
  assert.equal(u.map((e) => e.id).sort((a, b) => a - b), [...heads].sort((a, b) => a - b));
  assert.ok(u.every((e) => e.len === 513));
  assert.equal(r.fake.backing.slice(DATA, DATA + 32 * 512), new Uint8Array(readFileSync(r.path)).slice(0, 32 * 512));
  assert.is(r.dev.counters.maxInFlight, 32, 'all 32 taken in one pass and started together');
  assert.ok(r.irq.count - irqs >= 1 && r.irq.count - irqs <= 32);
  assert.is(r.drv.r32(REG.InterruptStatus) & INT_USED_BUFFER, INT_USED_BUFFER, 'InterruptStatus set with the interrupt');
  await done(r);
});

test('the I/O thread serves under its seccomp filter (devices/virtio/block/seccomp.ts), io_uring included', async () => {
  const r = await rig();
  // Requests in flight together go through the (locked-down) ring; a sync fallback would say so
  // in the log. They come first: the thread starts, names itself and installs its filter
  // asynchronously, and has done all three once it has answered.
  const reqs = [0, 1, 2, 3].map((i) => request(r, VIRTIO_BLK_T_IN, i, [{ addr: DATA + i * 512, len: 512, write: true }]));
  r.drv.notify();
  await used(r, 4);
  for (const q of reqs) assert.is(r.fake.backing[q.status], VIRTIO_BLK_S_OK);
  assert.equal(r.fake.backing.slice(DATA, DATA + 2048), new Uint8Array(readFileSync(r.path)).slice(0, 2048));
  // The thread names itself tsvmm-blk-<id> (the kernel keeps 15 bytes of it).
  const tasks = readdirSync('/proc/self/task').filter((t) => readFileSync(`/proc/self/task/${t}/comm`, 'utf8').startsWith('tsvmm-blk-test'));
  assert.is(tasks.length, 1, 'one I/O thread');
  const status = readFileSync(`/proc/self/task/${tasks[0]}/status`, 'utf8');
  assert.match(status, /^Seccomp:\t2$/m, 'filter mode');
  assert.not.match(readFileSync('/proc/self/status', 'utf8'), /^Seccomp:\t2$/m, 'only that thread');
  assert.equal(r.logs.filter((l) => /io_uring unavailable|seccomp|EPERM/.test(l)), []);
  await done(r);
});

test('a kick through the queue\'s eventfd reaches the I/O thread alone: the transport never hears of it', async () => {
  const r = await rig();
  const before = r.drv.t.counters.notifications;
  const s = slot++ % 256;
  const v = new DataView(r.fake.backing.buffer, r.fake.backing.byteOffset);
  v.setUint32(HDR, VIRTIO_BLK_T_IN, true);
  v.setBigUint64(HDR + 8, 2n, true);
  const head = r.drv.addChain([{ addr: HDR, len: 16 }, { addr: DATA, len: 512, write: true }, { addr: STATUS_AT + s, len: 1, write: true }]);
  r.drv.pushAvail(head);
  // What KVM does with a QueueNotify write that matches the ioeventfd.
  eventfdSignal(r.dev.kickFds[0]!);
  assert.equal(await used(r, 1), [{ id: head, len: 513 }]);
  assert.equal(r.fake.backing.slice(DATA, DATA + 512), new Uint8Array(readFileSync(r.path)).slice(1024, 1536));
  assert.is(r.drv.t.counters.notifications, before);
  assert.ok(r.dev.counters.wakeups >= 1);
  await done(r);
});

test('a malformed chain puts the device into NEEDS_RESET; reset and a new bring-up work again', async () => {
  const r = await rig();
  r.drv.submit([{ addr: HOLE_START + 0x10, len: 16 }, { addr: STATUS_AT, len: 1, write: true }]);
  for (let i = 0; i < 2000 && !(r.drv.status & STATUS.NEEDS_RESET); i++) await new Promise((res) => setTimeout(res, 1));
  assert.ok(r.drv.status & STATUS.NEEDS_RESET);
  assert.is(r.dev.counters.queueErrors, 1);
  r.drv.bringUp(RING, 256, ALL_FEATURES);
  const q = request(r, VIRTIO_BLK_T_IN, 0, [{ addr: DATA, len: 512, write: true }]);
  assert.equal(await used(r, 1), [{ id: q.head, len: 513 }]);
  await done(r);
});

test('a reset while the thread serves returns only once it stopped: no answer and no InterruptStatus bit after it', async () => {
  const r = await rig();
  for (let lap = 0; lap < 3; lap++) {
    // 200 reads in the ring, one kick, and the reset at once (the thread is in the middle).
    for (let i = 0; i < 200; i++) {
      const s = slot++ % 256;
      const v = new DataView(r.fake.backing.buffer, r.fake.backing.byteOffset);
      v.setUint32(HDR + 16 * (s % 64), VIRTIO_BLK_T_IN, true);
      v.setBigUint64(HDR + 16 * (s % 64) + 8, BigInt(i % SECTORS), true);
      r.drv.pushAvail(r.drv.addChain([{ addr: HDR + 16 * (s % 64), len: 16 }, { addr: DATA + (i % 16) * 512, len: 512, write: true }, { addr: STATUS_AT + s, len: 1, write: true }]));
    }
    r.drv.notify();
    await new Promise((res) => setTimeout(res, lap));
    r.drv.w32(REG.Status, 0);
    const usedAt = r.drv.usedIdx;
    const irqs = r.irq.count;
    assert.is(r.drv.r32(REG.InterruptStatus), 0);
    await new Promise((res) => setTimeout(res, 30));
    assert.is(r.drv.usedIdx, usedAt, 'no answer after the reset');
    assert.is(r.irq.count, irqs, 'no interrupt after the reset');
    assert.is(r.drv.r32(REG.InterruptStatus), 0, 'InterruptStatus stays clear');
    r.drv.bringUp(RING, 256, ALL_FEATURES);
    r.drv.takeUsed();
    const q = request(r, VIRTIO_BLK_T_IN, 1, [{ addr: DATA, len: 512, write: true }]);
    assert.equal(await used(r, 1), [{ id: q.head, len: 513 }], `lap ${lap}: served again after the reset`);
  }
  await done(r);
});

test('host I/O failure (the image shrank under the drive): IOERR for that request, logged; the device keeps working', async () => {
  const r = await rig();
  const img = readFileSync(r.path);
  truncateSync(r.path, 0);
  const bad = request(r, VIRTIO_BLK_T_IN, 0, [{ addr: DATA, len: 512, write: true }]);
  assert.equal(await used(r, 1), [{ id: bad.head, len: 1 }]);
  assert.is(r.fake.backing[bad.status], VIRTIO_BLK_S_IOERR);
  assert.is(r.dev.counters.ioErrors, 1);
  for (let i = 0; i < 1000 && !r.logs.length; i++) await new Promise((res) => setTimeout(res, 1));
  assert.match(r.logs[0] ?? '', /virtio-blk test-disk: host I\/O failed: .*end of file at byte 0/);
  writeFileSync(r.path, img);
  const good = request(r, VIRTIO_BLK_T_IN, 0, [{ addr: DATA, len: 512, write: true }]);
  assert.equal(await used(r, 1), [{ id: good.head, len: 513 }]);
  assert.is(r.fake.backing[good.status], VIRTIO_BLK_S_OK);
  await done(r);
});

test('TSVMM_BLK_IO=sync (as where io_uring is missing): synchronous I/O, the same answers, said in the log', async () => {
  process.env.TSVMM_BLK_IO = 'sync';
  let r: Rig;
  try {
    r = await rig();
  } finally {
    delete process.env.TSVMM_BLK_IO;
  }
  const w = request(r, VIRTIO_BLK_T_OUT, 5, [{ addr: DATA, len: 512 }]);
  const rd = request(r, VIRTIO_BLK_T_IN, 6, [{ addr: DATA + 0x1000, len: 1024, write: true }]);
  const fl = request(r, VIRTIO_BLK_T_FLUSH, 0, []);
  const u = await used(r, 3);
  assert.equal(u.map((e) => e.id).sort((a, b) => a - b), [w.head, rd.head, fl.head].sort((a, b) => a - b));
  assert.equal(r.fake.backing.slice(DATA + 0x1000, DATA + 0x1400), new Uint8Array(readFileSync(r.path)).slice(6 * 512, 8 * 512));
  assert.ok(r.logs.some((l) => l.includes('TSVMM_BLK_IO=sync')));
  await done(r);
});

test('close ends the I/O thread: a second close is harmless, a kick afterwards does nothing', async () => {
  const r = await rig();
  const q = request(r, VIRTIO_BLK_T_IN, 0, [{ addr: DATA, len: 512, write: true }]);
  assert.equal(await used(r, 1), [{ id: q.head, len: 513 }]);
  await r.dev.close();
  await r.dev.close();
  r.dev.notify(0);
  await done(r);
});

test('DriveImage: a missing image is a one-line DriveOpenError naming it', async () => {
  try {
    await DriveImage.open('/no/such/disk.img', false);
    assert.unreachable();
  } catch (e) {
    assert.is((e as Error).name, 'DriveOpenError');
    assert.match((e as Error).message, '/no/such/disk.img: cannot open read-write: ENOENT');
  }
});

test.run();
