// The transmit ring (devices/tx-ring.ts) vCPU threads push a UART's bytes into and main drains:
// wrap-around, a full ring (the producer waits, then drops and counts), and two producer threads
// at once against a consumer draining at once or in batches — every byte arrives, each
// thread's in its order. The producers run the code a vCPU worker runs (serveShared over the
// UART's claim).
import { fileURLToPath } from 'node:url';
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { Bus, type BusClaim } from '../../../devices/bus';
import { Serial16550 } from '../../../devices/serial';
import { DRAIN_INTERVAL_MS, RING, TxRing, ringPush } from '../../../devices/tx-ring';
import { serveShared } from '../../../vmm/vcpu/shared';

const COM1 = 0x3f8;

interface ProducerData { claim: BusClaim; id: number; count: number; go: Int32Array }

/** A producer thread: `count` THR writes of (id, sequence number mod 128) through serveShared. */
function producerSide(): void {
  const { claim, id, count, go } = workerData as ProducerData;
  while (!Atomics.load(go, 0)) Atomics.wait(go, 0, 0, 100);
  let forwarded = 0;
  for (let i = 0; i < count; i++) {
    if (!serveShared(claim, COM1, Uint8Array.of((id << 7) | (i & 0x7f)), true)) forwarded++;
  }
  parentPort!.postMessage({ forwarded });
}

function drainAll(r: TxRing): number[] {
  return [...(r.drain() ?? [])];
}

if (!isMainThread) {
  producerSide();
} else {
  test('bytes come out in push order across the wrap-around, and the byte counters wrap at 2^32 too', () => {
    const r = new TxRing(8);
    r.gate = true;
    const out: number[] = [];
    let next = 0;
    for (let round = 0; round < 40; round++) {
      const n = 1 + (round % 8); // 1..8 bytes: every phase of the ring
      for (let i = 0; i < n; i++) assert.ok(ringPush(r.ctl, r.data, next++ & 0xff));
      out.push(...drainAll(r));
    }
    assert.equal(out, Array.from({ length: next }, (_, i) => i & 0xff));
    // Counters near the Int32 edge: HEAD - TAIL stays right when HEAD wraps.
    Atomics.store(r.ctl, RING.HEAD, 0x7ffffffd);
    Atomics.store(r.ctl, RING.TAIL, 0x7ffffffd);
    for (let i = 0; i < 6; i++) ringPush(r.ctl, r.data, 0x40 + i);
    assert.is(r.pending, 6);
    assert.equal(drainAll(r), [0x40, 0x41, 0x42, 0x43, 0x44, 0x45]);
    assert.is(r.pending, 0);
    assert.is(r.drain(), undefined);
  });

  test('a shut gate takes nothing: the access goes to the device', () => {
    const r = new TxRing(8);
    assert.not.ok(ringPush(r.ctl, r.data, 1), 'a new ring is shut until its device opens it');
    r.gate = true;
    assert.ok(ringPush(r.ctl, r.data, 2));
    r.gate = false;
    assert.not.ok(ringPush(r.ctl, r.data, 3));
    assert.equal(drainAll(r), [2]);
  });

  test('a full ring: the push waits for room, and drops (counted) only after its wait runs out or the consumer stopped', () => {
    const r = new TxRing(4);
    r.gate = true;
    for (let i = 0; i < 4; i++) ringPush(r.ctl, r.data, i);
    const t0 = Date.now();
    assert.ok(ringPush(r.ctl, r.data, 9, 50), 'served (dropped), not forwarded');
    assert.ok(Date.now() - t0 >= 45, 'it waited for room first');
    assert.is(r.fullWaits, 1);
    assert.is(r.dropped, 1);
    r.stop();
    const t1 = Date.now();
    ringPush(r.ctl, r.data, 10, 5_000);
    assert.ok(Date.now() - t1 < 1_000, 'a stopped consumer: no wait');
    assert.is(r.dropped, 2);
    assert.equal(drainAll(r), [0, 1, 2, 3], 'what was in the ring is still drained, in order');
  });

  /**
   * Two producer threads against main's drain, at `intervalMs` between batches: 0 drains as
   * soon as bytes come (a UART whose THRE waits for the drain), DRAIN_INTERVAL_MS is a VM's
   * (producers that fill the ring meanwhile wait on TAIL while main sleeps in a timer, not in
   * its wait on HEAD).
   */
  const twoProducers = async (intervalMs: number): Promise<void> => {
    const out: number[] = [];
    const s = new Serial16550({ trigger() {} }, (b) => out.push(...b));
    // A small ring makes the producers wait on a full ring over and over.
    const bus = new Bus();
    bus.insert(COM1, 8, 'com1', s);
    const small = new TxRing(64);
    const claim0 = bus.claims()[0]!;
    const claim: BusClaim = { ...claim0, shared: claim0.shared.map((r) => (r.kind === 'push' ? { ...r, cell: small.ctl, ring: small.data } : r)) };
    small.gate = true;
    const count = 20_000;
    const go = new Int32Array(new SharedArrayBuffer(4));
    const script = fileURLToPath(import.meta.url);
    const results = [0, 1].map((id) => new Promise<{ forwarded: number }>((resolve, reject) => {
      const w = new Worker(script, { workerData: { claim, id, count, go } satisfies ProducerData });
      w.once('message', resolve);
      w.once('error', reject);
    }));
    const drained = small.run((b) => out.push(...b), intervalMs);
    Atomics.store(go, 0, 1);
    Atomics.notify(go, 0);
    const done = await Promise.all(results);
    small.stop();
    await drained;
    out.push(...drainAll(small));
    assert.equal(done.map((d) => d.forwarded), [0, 0], 'every THR write was served in its thread');
    assert.is(small.dropped, 0);
    assert.is(out.length, 2 * count, 'every byte arrived');
    for (const id of [0, 1]) {
      const mine = out.filter((b) => b >> 7 === id).map((b) => b & 0x7f);
      assert.is(mine.length, count);
      assert.ok(mine.every((v, i) => v === (i & 0x7f)), `thread ${id}'s bytes in its order`);
    }
    assert.ok(small.fullWaits > 0, 'the ring was full at times (the test exercised the wait)');
  };

  test('two producer threads fill a small ring while main drains it at once: nothing lost, each thread\'s bytes in order, producers waited for room', () => twoProducers(0));

  test('the same with main draining in batches (DRAIN_INTERVAL_MS apart): nothing lost, each thread\'s bytes in order, producers waited for room', () => twoProducers(DRAIN_INTERVAL_MS));

  test.run();
}
