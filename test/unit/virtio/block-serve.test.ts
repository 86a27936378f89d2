// The virtio-blk data path's order rules with several requests in flight (devices/virtio/block/
// serve.ts), on this thread, over the transport's real queue and a backend the test finishes by
// hand: completions in any order answer the right requests; a request past the image's end is
// IOERR and reaches no backend; a FLUSH starts only after the writes before it finished and
// holds back the requests after it until it started; the backend's capacity bounds what is in
// flight; drain() waits for everything before a stop.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { MmioTransport } from '../../../devices/virtio/mmio';
import type { VirtioDevice, VirtioDeviceContext } from '../../../devices/virtio/device';
import {
  BlkId, BlockRequestServer, QUEUE_SIZE, SEG_MAX, SIZE_MAX, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
  VIRTIO_ID_BLOCK, newCounterCells, readCounters, type BlockIo, type IoOp,
} from '../../../devices/virtio/block/index';
import type { Queue } from '../../../devices/virtio/queue';
import { CountingIrq, SimDriver, fakeMemory, type FakeMemory } from './sim';

const SECTORS = 64;
const HDR = 0x3000;
const STATUS_AT = 0x3800;
const DATA = 0x8000;

interface Started {
  tag: number;
  op: IoOp;
  position: number;
  bytes: number;
}

/** A backend whose operations finish when the test says so (finish()), in the order it says. */
class ManualIo implements BlockIo {
  readonly size = SECTORS * 512;
  started: Started[] = [];
  /** Every start, in order, never cleared. */
  readonly log: Started[] = [];
  private ready: [number, string | undefined][] = [];
  constructor(readonly capacity = 32) {}
  get inFlight(): number {
    return this.started.length;
  }
  start(tag: number, op: IoOp, bufs: Uint8Array[], position: number): void {
    const s = { tag, op, position, bytes: bufs.reduce((n, b) => n + b.length, 0) };
    this.started.push(s);
    this.log.push(s);
  }
  submit(): void {}
  reap(done: (tag: number, error: string | undefined) => void): void {
    for (const [tag, error] of this.ready.splice(0)) {
      this.started = this.started.filter((s) => s.tag !== tag);
      done(tag, error);
    }
  }
  /** Marks the operation at `position` (and op) finished; it is reaped at the next pass. */
  finish(op: IoOp, position: number, error?: string): void {
    const s = this.started.find((x) => x.op === op && x.position === position && !this.ready.some(([t]) => t === x.tag));
    if (!s) throw new Error(`no ${op} at ${position} in flight`);
    this.ready.push([s.tag, error]);
  }
  wait(): void {
    // drain() sleeps here: everything in flight finishes, in reverse order.
    for (const s of [...this.started].reverse()) if (!this.ready.some(([t]) => t === s.tag)) this.ready.push([s.tag, undefined]);
  }
  close(): void {}
}

class Capture implements VirtioDevice {
  readonly deviceType = VIRTIO_ID_BLOCK;
  readonly queueMaxSizes = [QUEUE_SIZE];
  readonly deviceFeatures = 0n;
  queue: Queue | undefined;
  readConfig(_: number, data: Uint8Array): void {
    data.fill(0);
  }
  writeConfig(): void {}
  activate(ctx: VirtioDeviceContext): void {
    this.queue = ctx.queues[0];
  }
  notify(): void {}
  reset(): void {}
}

interface Rig {
  fake: FakeMemory;
  drv: SimDriver;
  io: ManualIo;
  server: BlockRequestServer;
  counters: Float64Array;
  irq: CountingIrq;
  serve(): void;
  /** Submits a request of `sectors` 512-byte sectors at `sector`; returns its head and status byte's address. */
  req(type: number, sector: number, sectors?: number): { head: number; status: number };
}

function rig(capacity?: number): Rig {
  const fake = fakeMemory();
  const dev = new Capture();
  const irq = new CountingIrq();
  const drv = new SimDriver(new MmioTransport(dev, fake.mem, irq), fake);
  drv.bringUp(0x1000, 64, (1n << 64n) - 1n);
  const io = new ManualIo(capacity);
  const counters = newCounterCells();
  const server = new BlockRequestServer(dev.queue!, {
    geometry: { sectors: SECTORS, readOnly: false, segMax: SEG_MAX, sizeMax: SIZE_MAX }, idBytes: BlkId.encode({ id: new Uint8Array(0) }), io, counters,
    interrupt: () => irq.trigger(), log: () => {},
  });
  let n = 0;
  const req = (type: number, sector: number, sectors = 1) => {
    const slot = n++;
    const hdr = HDR + 16 * slot;
    const v = new DataView(fake.backing.buffer);
    v.setUint32(hdr, type, true);
    v.setBigUint64(hdr + 8, BigInt(sector), true);
    const status = STATUS_AT + slot;
    fake.backing[status] = 0xee;
    const data = type === VIRTIO_BLK_T_FLUSH ? [] : [{ addr: DATA + 0x1000 * slot, len: 512 * sectors, write: type === VIRTIO_BLK_T_IN }];
    return { head: drv.submit([{ addr: hdr, len: 16 }, ...data, { addr: status, len: 1, write: true }]), status };
  };
  return { fake, drv, io, server, counters, irq, serve: () => server.serve(() => false), req };
}

test('completions in any order answer the right requests, each with its own length and status', () => {
  const r = rig();
  const a = r.req(VIRTIO_BLK_T_IN, 0, 2);
  const b = r.req(VIRTIO_BLK_T_OUT, 8);
  const c = r.req(VIRTIO_BLK_T_IN, 16, 4);
  r.serve();
  assert.equal(r.io.started.map((s) => [s.op, s.position, s.bytes]), [['read', 0, 1024], ['write', 4096, 512], ['read', 8192, 2048]], 'all three in flight at once');
  assert.equal(r.drv.takeUsed(), [], 'nothing answered before the host finished');
  r.io.finish('read', 8192);
  r.serve();
  assert.equal(r.drv.takeUsed(), [{ id: c.head, len: 2048 + 1 }]);
  r.io.finish('write', 4096, 'EIO');
  r.io.finish('read', 0);
  r.serve();
  assert.equal(r.drv.takeUsed(), [{ id: b.head, len: 1 }, { id: a.head, len: 1024 + 1 }]);
  assert.is(r.fake.backing[a.status], VIRTIO_BLK_S_OK);
  assert.is(r.fake.backing[b.status], VIRTIO_BLK_S_IOERR);
  assert.is(r.fake.backing[c.status], VIRTIO_BLK_S_OK);
  const k = readCounters(r.counters);
  assert.is(k.maxInFlight, 3);
  assert.is(k.ioErrors, 1);
  assert.is(k.bytesRead, 3072);
  assert.is(k.bytesWritten, 0, 'a failed write moved no bytes');
});

test('a request past the image\'s end: IOERR at once, and the backend never hears of it', () => {
  const r = rig();
  const inside = r.req(VIRTIO_BLK_T_IN, SECTORS - 1);
  const past = r.req(VIRTIO_BLK_T_IN, SECTORS - 1, 2);
  const beyond = r.req(VIRTIO_BLK_T_OUT, SECTORS);
  const data = r.fake.backing.slice(DATA, DATA + 0x4000);
  r.serve();
  assert.equal(r.drv.takeUsed(), [{ id: past.head, len: 1 }, { id: beyond.head, len: 1 }]);
  assert.is(r.fake.backing[past.status], VIRTIO_BLK_S_IOERR);
  assert.is(r.fake.backing[beyond.status], VIRTIO_BLK_S_IOERR);
  assert.equal(r.io.log.map((s) => s.position), [(SECTORS - 1) * 512], 'only the request inside the image started');
  assert.equal(r.fake.backing.slice(DATA, DATA + 0x4000), data, 'no guest byte changed');
  r.io.finish('read', (SECTORS - 1) * 512);
  r.serve();
  assert.equal(r.drv.takeUsed(), [{ id: inside.head, len: 513 }]);
  assert.is(readCounters(r.counters).rejected['out-of-range'], 2);
});

test('FLUSH starts only after the writes before it finished; requests after it wait until it started', () => {
  const r = rig();
  const w1 = r.req(VIRTIO_BLK_T_OUT, 0);
  const w2 = r.req(VIRTIO_BLK_T_OUT, 1);
  const fl = r.req(VIRTIO_BLK_T_FLUSH, 0);
  const after = r.req(VIRTIO_BLK_T_OUT, 2);
  r.serve();
  assert.equal(r.io.log.map((s) => s.op), ['write', 'write'], 'the flush waits, and the write after it is not taken');
  r.io.finish('write', 512);
  r.serve();
  assert.equal(r.io.log.map((s) => s.op), ['write', 'write'], 'one write still in flight: the flush still waits');
  assert.equal(r.drv.takeUsed(), [{ id: w2.head, len: 1 }]);
  r.io.finish('write', 0);
  r.serve();
  assert.equal(r.io.log.map((s) => [s.op, s.position]), [['write', 0], ['write', 512], ['flush', 0], ['write', 1024]], 'the flush started, then the write after it');
  assert.equal(r.drv.takeUsed(), [{ id: w1.head, len: 1 }]);
  r.io.finish('flush', 0);
  r.io.finish('write', 1024);
  r.serve();
  assert.equal(r.drv.takeUsed(), [{ id: fl.head, len: 1 }, { id: after.head, len: 1 }]);
  assert.is(r.fake.backing[fl.status], VIRTIO_BLK_S_OK);
});

test('a FLUSH with nothing in flight starts at once', () => {
  const r = rig();
  const fl = r.req(VIRTIO_BLK_T_FLUSH, 0);
  r.serve();
  assert.equal(r.io.log.map((s) => s.op), ['flush']);
  r.io.finish('flush', 0);
  r.serve();
  assert.equal(r.drv.takeUsed(), [{ id: fl.head, len: 1 }]);
});

test('the backend\'s capacity bounds what is in flight; the rest is taken as slots free up', () => {
  const r = rig(2);
  const heads = [0, 1, 2, 3, 4].map((i) => r.req(VIRTIO_BLK_T_IN, i).head);
  r.serve();
  assert.is(r.io.started.length, 2);
  r.io.finish('read', 0);
  r.serve();
  assert.equal(r.io.started.map((s) => s.position), [512, 1024]);
  r.io.wait();
  r.serve();
  r.io.wait();
  r.serve();
  r.io.wait();
  r.serve();
  assert.equal(r.drv.takeUsed().map((u) => u.id).sort(), [...heads].sort());
  assert.is(readCounters(r.counters).maxInFlight, 2);
});

test('drain waits for every request in flight (a waiting FLUSH too) and answers them', () => {
  const r = rig();
  const w = r.req(VIRTIO_BLK_T_OUT, 0);
  const fl = r.req(VIRTIO_BLK_T_FLUSH, 0);
  r.serve();
  assert.is(r.server.pending, 2);
  const irqs = r.irq.count;
  r.server.drain(true);
  assert.is(r.server.pending, 0);
  assert.is(r.io.inFlight, 0);
  assert.equal(r.io.log.map((s) => s.op), ['write', 'flush']);
  assert.equal(r.drv.takeUsed(), [{ id: w.head, len: 1 }, { id: fl.head, len: 1 }]);
  assert.ok(r.irq.count > irqs, 'the answers were signalled');
  const r2 = rig();
  r2.req(VIRTIO_BLK_T_IN, 0);
  r2.serve();
  r2.server.drain(false);
  assert.is(r2.io.inFlight, 0);
  assert.equal(r2.drv.takeUsed(), [], 'a broken ring gets no answers');
});

test.run();
