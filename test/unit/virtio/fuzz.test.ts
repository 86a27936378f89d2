// Seeded, reproducible fuzzing of the split queue and the transport. Set VIRTIO_FUZZ_SEED to
// replay a run (the seed is printed). Asserts: nothing but QueueError escapes the queue, every
// buffer handed out lies in RAM, no chain is longer than the queue, nothing is written into the
// MMIO hole, the transport never throws, and the whole run finishes in bounded time.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { MmioTransport, REG } from '../../../devices/virtio/mmio';
import { Queue, QueueError, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE } from '../../../devices/virtio/queue';
import { CountingIrq, EchoDevice, HIGH_RAM_END, HOLE_END, HOLE_START, Rings, SimDriver, fakeMemory, layoutQueue } from './sim';
import { caseBudget, prng, report, type Rng } from '../fuzz/lib';

const SEED = Number(process.env.VIRTIO_FUZZ_SEED ?? process.env.TSVMM_FUZZ_SEED ?? 0x5eed2024) >>> 0;
/** Chains popped: 100k in CI; TSVMM_FUZZ_CASES for the long run (test/unit/fuzz/lib.ts). */
const CHAINS = caseBudget(100_000);
const TIME_LIMIT_MS = 60_000 * Math.max(1, CHAINS / 100_000);
console.log(`virtio fuzz seed 0x${SEED.toString(16)} (VIRTIO_FUZZ_SEED to replay)`);

const INDIRECT_AREA = 0x30000; // indirect tables in fuzz rounds (inside low RAM)

/** An address that is interesting: plain RAM, near the hole edges, near the end, or anything. */
function address(rng: Rng): number | bigint {
  switch (rng.int(8)) {
    case 0: return HOLE_START - rng.int(64);
    case 1: return HOLE_START + rng.int(HOLE_END - HOLE_START);
    case 2: return HOLE_END - rng.int(64);
    case 3: return HIGH_RAM_END - rng.int(64);
    case 4: return (BigInt(rng.u32()) << 32n) | BigInt(rng.u32());
    case 5: return rng.u32();
    default: return 0x8000 + rng.int(0x30000);
  }
}

function length(rng: Rng): number {
  switch (rng.int(6)) {
    case 0: return 0;
    case 1: return rng.u32();
    case 2: return 0xffffffff - rng.int(16);
    case 3: return 16 * rng.int(20); // plausible indirect table sizes
    default: return 1 + rng.int(512);
  }
}

function flags(rng: Rng): number {
  if (rng.chance(0.05)) return rng.int(0x10000);
  let f = 0;
  if (rng.chance(0.5)) f |= VIRTQ_DESC_F_NEXT;
  if (rng.chance(0.4)) f |= VIRTQ_DESC_F_WRITE;
  if (rng.chance(0.1)) f |= VIRTQ_DESC_F_INDIRECT;
  return f;
}

function randomDesc(rng: Rng, d: Rings, table: number, i: number, entries: number): void {
  const next = rng.chance(0.8) ? rng.int(entries) : rng.int(0x10000);
  const f = flags(rng);
  // Point half of the indirect descriptors at the (random) tables so their contents get parsed.
  if (f & VIRTQ_DESC_F_INDIRECT && rng.chance(0.5)) d.writeDesc(table, i, INDIRECT_AREA + 0x400 * rng.int(4), 16 * (1 + rng.int(16)), f, next);
  else d.writeDesc(table, i, address(rng), length(rng), f, next);
}

test(`queue fuzz: ${CHAINS} chains/ring states, seed 0x${SEED.toString(16)}`, () => {
  const rng = prng(SEED);
  const fake = fakeMemory();
  const q = new Queue(fake.mem, 256);
  const d = new Rings(fake, layoutQueue(0x1000, 8));
  const started = Date.now();
  const stats = { pops: 0, chains: 0, empty: 0, errors: 0, setupErrors: 0, buffers: 0 };
  const reasons = new Map<string, number>();
  const fail = (round: number, what: string) => assert.unreachable(`seed 0x${SEED.toString(16)} round ${round}: ${what}`);

  for (let round = 0; stats.pops < CHAINS; round++) {
    // A fresh queue configuration: usually sane, sometimes hostile.
    const size = 1 << rng.int(7); // 1..64
    const lay = layoutQueue(0x1000 + 16 * rng.int(64), size);
    // Keep the queue's indexes across rounds (so they wrap), but sometimes start from reset.
    if (rng.chance(0.1)) q.reset();
    else q.ready = false;
    d.clear(lay);
    d.setAvailIdx(q.availIndex);
    q.size = rng.chance(0.97) ? size : rng.int(600);
    q.descAddr = rng.chance(0.97) ? lay.desc : Number(address(rng)) || 0;
    q.availAddr = rng.chance(0.97) ? lay.avail : Number(address(rng)) || 0;
    q.usedAddr = rng.chance(0.97) ? lay.used : lay.used + rng.int(4);
    q.eventIdx = rng.chance(0.5);
    q.indirect = rng.chance(0.8);
    q.ready = true;
    try {
      q.activate();
    } catch (e) {
      if (!(e instanceof QueueError)) fail(round, `activate threw ${String(e)}`);
      stats.setupErrors++;
      stats.pops++;
      let threw = false;
      try {
        q.pop();
      } catch (e2) {
        if (!(e2 instanceof QueueError)) fail(round, `pop threw ${String(e2)}`);
        threw = true;
      }
      if (!threw) fail(round, 'pop on a badly configured queue returned');
      continue;
    }
    const hostile = rng.chance(0.5);

    // Descriptor table: well-formed chains then mutated, or random garbage.
    if (hostile) {
      for (let i = 0; i < size; i++) randomDesc(rng, d, lay.desc, i, size);
      for (let t = 0; t < 4; t++) {
        const table = INDIRECT_AREA + 0x400 * t;
        for (let i = 0; i < 16; i++) randomDesc(rng, d, table, i, 16);
      }
    }
    // Available entries: usually up to `size` new heads, sometimes an index far ahead.
    const pending = rng.chance(0.02) ? rng.int(0x10000) : rng.int(size + 1);
    for (let k = 0; k < Math.min(pending, size); k++) {
      if (!hostile) {
        const n = 1 + rng.int(Math.min(4, size));
        const bufs = Array.from({ length: n }, (_, j) => ({ addr: 0x8000 + 0x100 * rng.int(256), len: 1 + rng.int(256), write: j >= n / 2 }));
        if (q.indirect && rng.chance(0.3)) d.pushAvail(d.addIndirect(INDIRECT_AREA + 0x400 * rng.int(4), bufs));
        else d.pushAvail(bufs.length <= size ? d.addChain(bufs) : rng.int(size));
        if (rng.chance(0.1)) randomDesc(rng, d, lay.desc, rng.int(size), size); // one mutation
      } else {
        d.pushAvail(rng.chance(0.9) ? rng.int(size) : rng.int(0x10000));
      }
    }
    if (pending > size) d.setAvailIdx(q.availIndex + pending); // an index too far ahead
    if (rng.chance(0.3)) d.setUsedEvent(rng.int(0x10000));
    if (rng.chance(0.2)) d.setAvailFlags(rng.int(0x10000));

    // Drain it like a device would; every outcome is checked.
    for (let k = 0; k <= size + 1 && stats.pops < CHAINS; k++) {
      stats.pops++;
      let c;
      try {
        c = q.pop();
      } catch (e) {
        if (!(e instanceof QueueError)) fail(round, `pop threw ${String(e)}`);
        stats.errors++;
        const key = (e as Error).message.replace(/0x[0-9a-f]+|\d+/g, 'N');
        reasons.set(key, (reasons.get(key) ?? 0) + 1);
        continue;
      }
      if (!c) {
        stats.empty++;
        break;
      }
      stats.chains++;
      const bufs = [...c.readable, ...c.writable];
      if (c.head >= q.size) fail(round, `head ${c.head} out of range`);
      if (bufs.length > q.size) fail(round, `chain of ${bufs.length} > queue size ${q.size}`);
      if (bufs.length === 0) fail(round, 'empty chain');
      for (const b of bufs) if (!fake.inRam(b)) fail(round, 'buffer outside RAM');
      const sum = (xs: Iterable<Uint8Array>) => [...xs].reduce((n, b) => n + b.length, 0);
      if (sum(c.readable) !== c.readable.length || sum(c.writable) !== c.writable.length) fail(round, 'lengths do not add up');
      stats.buffers += bufs.length;
      if (rng.chance(0.5)) c.writable.writeAt(new Uint8Array(Math.min(c.writable.length, 4096)).fill(0x5a));
      if (rng.chance(0.1)) {
        q.undoPop();
        continue;
      }
      try {
        q.addUsed(c.head, Math.min(c.writable.length, rng.int(4096)));
        q.needsNotification();
      } catch (e) {
        fail(round, `addUsed threw ${String(e)}`);
      }
    }
    if (Date.now() - started > TIME_LIMIT_MS) fail(round, `fuzz ran past ${TIME_LIMIT_MS} ms`);
  }

  assert.ok(fake.holeIntact(), 'nothing written into the hole');
  assert.ok(stats.chains > 10_000, `too few valid chains to mean anything: ${JSON.stringify(stats)}`);
  assert.ok(stats.errors > 10_000, `too few rejected chains to mean anything: ${JSON.stringify(stats)}`);
  console.log(`  ${JSON.stringify(stats)} in ${Date.now() - started} ms; ${reasons.size} distinct rejection reasons`);
  report('virtqueue', stats.pops, SEED, Date.now() - started);
  if (process.env.VIRTIO_FUZZ_VERBOSE) for (const [r, n] of reasons) console.log(`    ${n}\t${r}`);
});

test('transport fuzz: random register traffic and notifications never throw', () => {
  const rng = prng(SEED ^ 0x9e3779b9);
  const fake = fakeMemory();
  const dev = new EchoDevice(16);
  const t = new MmioTransport(dev, fake.mem, new CountingIrq());
  const drv = new SimDriver(t, fake);
  const offsets = [...Object.values(REG), 0x0f0, 0x101, 0x1ff];
  const started = Date.now();
  for (let i = 0; i < 50_000; i++) {
    // Mostly a proper driver session with hostile rings, sometimes raw register noise.
    if (rng.chance(0.01)) {
      drv.bringUp(0x1000 + 16 * rng.int(16), 1 << rng.int(5));
      continue;
    }
    const r = rng.int(10);
    try {
      if (r < 3) {
        const width = rng.pick([1, 2, 4, 8]);
        const data = new Uint8Array(width).map(() => rng.int(256));
        const off = rng.pick(offsets) + (rng.chance(0.1) ? rng.int(4) : 0);
        if (rng.chance(0.5)) t.read(off, data);
        else if (off !== REG.Status || rng.chance(0.1)) t.write(off, data);
      } else if (r < 8) {
        const lay = drv.lay;
        if (lay.size > 1) {
          if (rng.chance(0.5)) randomDesc(rng, drv, lay.desc, rng.int(lay.size), lay.size);
          drv.pushAvail(rng.chance(0.9) ? rng.int(lay.size) : rng.int(0x10000));
        }
      } else {
        t.queueNotify(rng.chance(0.9) ? 0 : rng.int(4) - 1);
      }
    } catch (e) {
      assert.unreachable(`seed 0x${SEED.toString(16)} step ${i}: transport threw ${String(e)}`);
    }
  }
  assert.ok(fake.holeIntact());
  assert.ok(t.counters.needsReset > 0 && dev.echoed > 0, `exercised both outcomes: ${JSON.stringify(t.counters)} echoed ${dev.echoed}`);
  assert.ok(Date.now() - started < TIME_LIMIT_MS);
});

test.run();
