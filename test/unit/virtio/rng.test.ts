// virtio-rng driven by a simulated driver: buffers filled with random bytes (all of them, in
// any framing), the rate limiter holding a request back until its buckets refill (the request
// stays in the ring, nothing is answered early), and the token bucket arithmetic on a fake clock.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { MmioTransport, STATUS } from '../../../devices/virtio/mmio';
import { MAX_REQUEST, VirtioRng } from '../../../devices/virtio/rng/index';
import { RateLimiter, TokenBucket } from '../../../devices/rate-limiter';
import { CountingIrq, HOLE_START, SimDriver, fakeMemory } from './sim';

const DATA = 0x10000;

function rig(dev = new VirtioRng()) {
  const fake = fakeMemory();
  const irq = new CountingIrq();
  const drv = new SimDriver(new MmioTransport(dev, fake.mem, irq), fake);
  drv.bringUp(0x1000, 64);
  return { fake, dev, drv, irq };
}

test('fills every byte of the writable buffers with random data, one used entry each', () => {
  const { fake, drv, dev, irq } = rig();
  fake.backing.fill(0, DATA, DATA + 0x3000);
  const a = drv.submit([{ addr: DATA, len: 64, write: true }]);
  const b = drv.submit([{ addr: DATA + 0x1000, len: 100, write: true }, { addr: DATA + 0x2000, len: 4000, write: true }]);
  assert.equal(drv.takeUsed(), [{ id: a, len: 64 }, { id: b, len: 4100 }]);
  // 4164 random bytes with no zero run longer than 16 (a zero-filled buffer would have one).
  const runs = (s: Uint8Array) => { let max = 0, cur = 0; for (const x of s) { cur = x === 0 ? cur + 1 : 0; max = Math.max(max, cur); } return max; };
  assert.ok(runs(fake.backing.subarray(DATA, DATA + 64)) < 16);
  assert.ok(runs(fake.backing.subarray(DATA + 0x1000, DATA + 0x1064)) < 16);
  assert.ok(runs(fake.backing.subarray(DATA + 0x2000, DATA + 0x2000 + 4000)) < 16);
  assert.not.equal(fake.backing.slice(DATA, DATA + 64), fake.backing.slice(DATA + 0x2000, DATA + 0x2040));
  assert.is(dev.counters.bytes, 4164);
  assert.ok(irq.count >= 1);
});

test('a request larger than MAX_REQUEST gets MAX_REQUEST bytes', () => {
  const { drv } = rig();
  const h = drv.submit([{ addr: DATA, len: MAX_REQUEST + 4096, write: true }]);
  assert.equal(drv.takeUsed(), [{ id: h, len: MAX_REQUEST }]);
});

test('the rate limiter holds a request in the ring until the bucket refills', async () => {
  const dev = new VirtioRng({ bandwidth: { size: 64, refillTimeMs: 30 } });
  const { drv } = rig(dev);
  const a = drv.submit([{ addr: DATA, len: 64, write: true }]);
  const b = drv.submit([{ addr: DATA + 0x100, len: 64, write: true }]);
  assert.equal(drv.takeUsed(), [{ id: a, len: 64 }], 'the second request waits');
  assert.is(dev.counters.throttled, 1);
  for (let i = 0; i < 500 && drv.usedIdx < 2; i++) await new Promise((r) => setTimeout(r, 5));
  assert.equal(drv.takeUsed(), [{ id: b, len: 64 }]);
  dev.close();
});

test('a malformed chain: NEEDS_RESET, no throw', () => {
  const { drv, dev } = rig();
  drv.submit([{ addr: HOLE_START, len: 16, write: true }]);
  assert.ok(drv.status & STATUS.NEEDS_RESET);
  assert.is(dev.counters.queueErrors, 1);
});

test('token bucket: size, refill over time, one-time burst, waitFor', () => {
  let now = 0;
  const b = new TokenBucket({ size: 1000, refillTimeMs: 100, oneTimeBurst: 500 }, () => now);
  assert.is(b.available(), 1500);
  assert.ok(b.consume(1200)); // the burst first, then 700 of the bucket
  assert.is(b.available(), 300);
  assert.not.ok(b.consume(400));
  assert.is(b.waitFor(400), 10);
  now += 10;
  assert.ok(b.consume(400));
  now += 1000;
  assert.is(b.available(), 1000, 'capped at size; the burst never comes back');
  const r = new RateLimiter({ ops: { size: 2, refillTimeMs: 1000 } }, () => now);
  assert.ok(r.consume(1 << 30) && r.consume(1));
  assert.not.ok(r.consume(1));
  assert.is(r.waitFor(1), 500);
  assert.is(new RateLimiter({ bandwidth: { size: 10, refillTimeMs: 1 } }).maxBytes(100), 10);
});

test.run();
