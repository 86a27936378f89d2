// Fuzz target: virtio-blk requests from a hostile driver, through the parser alone and through
// the device's whole data path (BlockRequestServer, the code the drive's I/O thread runs, here
// on this thread over the transport's queue, with an in-memory image behind a backend that
// checks every transfer). Chains are
// random but aimed: valid headers mutated, sectors at the image's edges and at u64 extremes,
// data split into random segments (some empty, some huge, some in the MMIO hole), status byte
// present or not, readable and writable parts swapped. Invariants: the parser never throws; a
// verdict that moves data stays inside the image, inside guest RAM, within SEG_MAX/SIZE_MAX,
// sector-aligned, and never writes a read-only drive; the device never touches the image
// outside a request's range, never enters NEEDS_RESET from request contents (only from ring
// errors, which these chains do not make), and answers every chain.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { DescriptorChain } from '../../../devices/virtio/queue';
import { MmioTransport, STATUS } from '../../../devices/virtio/mmio';
import type { VirtioDevice, VirtioDeviceContext } from '../../../devices/virtio/device';
import {
  BlkId, BlkReqHeader, BlockRequestServer, QUEUE_SIZE, SEG_MAX, SIZE_MAX, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
  VIRTIO_ID_BLOCK, newCounterCells, parseBlkRequest, readCounters, type BlockIo, type DriveGeometry, type IoOp,
} from '../../../devices/virtio/block/index';
import { CountingIrq, HIGH_RAM_END, HOLE_END, HOLE_START, LOW_RAM_END, SimDriver, fakeMemory, type Buf } from '../virtio/sim';
import { edgeU32, fuzz, mutate, type Rng } from './lib';

const SECTORS = 40;
const HDR = 0x3000;

function sector(rng: Rng): bigint {
  return rng.pick([0n, 1n, BigInt(SECTORS - 2), BigInt(SECTORS - 1), BigInt(SECTORS), BigInt(SECTORS + 1), BigInt(edgeU32(rng)), 1n << 32n, (1n << 53n) / 512n, 1n << 54n, (1n << 64n) - 1n]);
}

/** Random data segments in RAM (mostly), lengths around sector multiples. */
function segments(rng: Rng, write: boolean): Buf[] {
  const n = rng.pick([0, 1, 1, 2, 3, 8, SEG_MAX + 1]);
  const out: Buf[] = [];
  for (let i = 0; i < n; i++) {
    const len = rng.pick([0, 1, 511, 512, 513, 1024, 4096, 8192, SIZE_MAX + 512]);
    const addr = rng.chance(0.02) ? HOLE_START - 256 : rng.chance(0.5) ? 0x8000 + rng.int(0x30000 - 0x8000) : HOLE_END + rng.int(0x28000);
    out.push({ addr, len: Math.min(len, 0x8000), write });
  }
  return out;
}

function header(rng: Rng): Uint8Array {
  const h = BlkReqHeader.encode({ type: rng.pick([VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, edgeU32(rng)]), sector: sector(rng) });
  return rng.chance(0.1) ? mutate(rng, h) : h;
}

test('block request parser: verdicts stay inside the image, RAM and the budgets', async () => {
  const fake = fakeMemory();
  const ro: DriveGeometry = { sectors: SECTORS, readOnly: true, segMax: SEG_MAX, sizeMax: SIZE_MAX };
  const rw: DriveGeometry = { ...ro, readOnly: false };
  await fuzz('block-parser', 20_000, (rng) => {
    const g = rng.chance(0.3) ? ro : rw;
    const h = header(rng);
    fake.backing.set(h.subarray(0, Math.min(h.length, 64)), HDR);
    const chain = new DescriptorChain(0);
    const hdrLen = rng.chance(0.9) ? 16 : rng.int(Math.min(h.length, 64) + 1);
    const write = rng.chance(0.5);
    const bufs: Buf[] = [{ addr: HDR, len: hdrLen }, ...segments(rng, write)];
    if (rng.chance(0.9)) bufs.push({ addr: 0x7000 + rng.int(0x100), len: 1, write: true });
    for (const b of bufs) {
      // What Queue.parse does: writable after readable, every buffer in RAM or not at all.
      const side = b.write ? chain.writable : chain.readable;
      if (!b.write && chain.writable.segmentCount) continue;
      side.append(fake.mem, Number(b.addr), b.len);
    }
    const v = parseBlkRequest(chain, g);
    if (v.kind === 'no-status') {
      assert.is(chain.writable.length, 0);
      return;
    }
    assert.ok(fake.inRam(v.status) && v.status.length === 1);
    if (v.kind === 'in' || v.kind === 'out') {
      assert.ok(v.len % 512 === 0);
      assert.ok(v.offset >= 0 && v.offset + v.len <= SECTORS * 512, `${v.kind} ${v.offset}+${v.len}`);
      assert.ok(v.data.length <= SEG_MAX);
      assert.is(v.data.reduce((n, d) => n + d.length, 0), v.len);
      for (const d of v.data) assert.ok(fake.inRam(d) && d.length <= SIZE_MAX);
      if (v.kind === 'out') assert.not.ok(g.readOnly);
    }
    if (v.kind === 'get-id') assert.ok(v.len <= 20);
  });
});

/**
 * An image in memory; every transfer is checked against its bounds. Transfers finish at the next
 * reap in the reverse of their start order: out of order, as io_uring's may.
 */
function memBackend(img: Uint8Array): BlockIo & { outside: number } {
  let started: { tag: number; run: () => void }[] = [];
  const copy = (bufs: Uint8Array[], pos: number, write: boolean) => () => {
    let at = pos;
    for (const x of bufs) {
      if (at + x.length > img.length) b.outside++;
      else if (write) img.set(x, at);
      else x.set(img.subarray(at, at + x.length));
      at += x.length;
    }
  };
  const b = {
    size: img.length,
    capacity: 32,
    outside: 0,
    get inFlight() {
      return started.length;
    },
    start: (tag: number, op: IoOp, bufs: Uint8Array[], pos: number) => {
      started.push({ tag, run: op === 'flush' ? () => {} : copy(bufs, pos, op === 'write') });
    },
    submit: () => {},
    reap: (done: (tag: number, error: string | undefined) => void) => {
      const now = started.reverse();
      started = [];
      for (const s of now) {
        s.run();
        done(s.tag, undefined);
      }
    },
    wait: () => {},
    close: () => {},
  };
  return b;
}

/** The data path on this thread: each kick serves the transport's queue as the I/O thread would. */
class InlineBlock implements VirtioDevice {
  readonly deviceType = VIRTIO_ID_BLOCK;
  readonly queueMaxSizes = [QUEUE_SIZE];
  readonly deviceFeatures = 0n;
  readonly counters = newCounterCells();
  private server: BlockRequestServer | undefined;
  constructor(private readonly io: BlockIo, private readonly geometry: DriveGeometry) {}
  readConfig(_: number, data: Uint8Array): void {
    data.fill(0);
  }
  writeConfig(): void {}
  activate(ctx: VirtioDeviceContext): void {
    this.server = new BlockRequestServer(ctx.queues[0]!, {
      geometry: this.geometry, idBytes: BlkId.encode({ id: new TextEncoder().encode('fuzz') }), io: this.io, counters: this.counters,
      interrupt: () => ctx.irq.trigger(), log: () => {},
    });
  }
  notify(): void {
    this.server?.serve(() => false);
  }
  reset(): void {
    this.server = undefined;
  }
}

test('block device: hostile requests through the rings', async () => {
  const fake = fakeMemory();
  const img = new Uint8Array(SECTORS * 512);
  const backend = memBackend(img);
  const dev = new InlineBlock(backend, { sectors: SECTORS, readOnly: false, segMax: SEG_MAX, sizeMax: SIZE_MAX });
  const drv = new SimDriver(new MmioTransport(dev, fake.mem, new CountingIrq()), fake);
  drv.bringUp(0x1000, 256, (1n << 64n) - 1n);
  let posted = 0;
  let answered = 0;
  await fuzz('block-device', 3_000, async (rng, i) => {
    // Keep the ring's descriptors free: at most 16 requests of at most 12 descriptors out.
    const h = header(rng);
    const slot = i % 16;
    fake.backing.set(h.subarray(0, Math.min(16, h.length)), HDR + 16 * slot);
    const write = rng.chance(0.5);
    const bufs: Buf[] = [{ addr: HDR + 16 * slot, len: 16 }, ...segments(rng, write).filter((b) => b.addr < HOLE_START - 0x8000 || b.addr >= HOLE_END).slice(0, 10)];
    if (rng.chance(0.95)) bufs.push({ addr: 0x7000 + slot, len: 1, write: true });
    // Readable after writable is a ring error, not a request error: keep the order valid.
    bufs.sort((a, b) => Number(a.write ?? false) - Number(b.write ?? false));
    if (bufs.some((b) => Number(b.addr) + b.len > (Number(b.addr) < LOW_RAM_END ? LOW_RAM_END : HIGH_RAM_END))) return;
    drv.submit(bufs);
    posted++;
    if (i % 8 === 7) {
      for (let k = 0; k < 4 && answered < posted; k++) {
        await new Promise((r) => setImmediate(r));
        answered += drv.takeUsed().length;
      }
    }
    assert.is(drv.status & STATUS.NEEDS_RESET, 0, 'requests never break the device');
    assert.is(backend.outside, 0, 'no transfer outside the image');
  });
  for (let k = 0; k < 100 && answered < posted; k++) {
    await new Promise((r) => setImmediate(r));
    answered += drv.takeUsed().length;
  }
  assert.is(answered, posted, 'every chain answered');
  const c = readCounters(dev.counters);
  console.log(`  reads ${c.reads}, writes ${c.writes}, rejected ${JSON.stringify(c.rejected)}`);
  assert.ok(c.reads > 0 && c.writes > 0 && c.rejected['out-of-range'] > 0);
});

test.run();
