// virtio-mmio's value-only writes stored by vCPU threads (SharedRegister kind 'store', gated):
// a thread stores a queue's descriptor address through serveShared (the code a vCPU worker
// runs) without pause while main makes the queue ready and unready. Each QueueReady = 1 must
// give the queue exactly what the register holds, and no store may land while the queue is
// ready — the gate's CLOSED/OPEN/BUSY protocol (devices/bus.ts) is what guarantees both.
import { fileURLToPath } from 'node:url';
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { Bus, type BusClaim } from '../../../devices/bus';
import { MmioTransport, REG } from '../../../devices/virtio/mmio';
import { serveShared } from '../../../vmm/vcpu/shared';
import { CountingIrq, EchoDevice, SimDriver, fakeMemory } from './sim';

const BASE = 0xd000_0000;
/** ctl cells: STOP (main asks the storer to end), TRIED, STORED (stores attempted and served). */
const STOP = 0;
const TRIED = 1;
const STORED = 2;

interface StorerData { claim: BusClaim; ctl: Int32Array }

function storerSide(): void {
  const { claim, ctl } = workerData as StorerData;
  parentPort!.postMessage('go');
  for (let n = 0; !Atomics.load(ctl, STOP); n++) {
    const d = new Uint8Array(4);
    new DataView(d.buffer).setUint32(0, ((n & 0xffff) + 1) * 0x1000, true);
    Atomics.add(ctl, TRIED, 1);
    if (serveShared(claim, BASE + REG.QueueDescLow, d, true)) Atomics.add(ctl, STORED, 1);
  }
}

/** Spins until cell i has grown by `by` (the other thread made progress), at most 5 s. */
function waitGrowth(ctl: Int32Array, i: number, by: number): void {
  const from = Atomics.load(ctl, i);
  const until = Date.now() + 5000;
  while (Atomics.load(ctl, i) - from < by) if (Date.now() > until) throw new Error(`cell ${i} did not grow by ${by} in 5 s`);
}

if (!isMainThread) {
  storerSide();
} else {
  test('a thread storing a queue address while main readies and unreadies the queue: the queue takes the register\'s value, no store lands while ready', async () => {
    const fake = fakeMemory();
    const t = new MmioTransport(new EchoDevice(), fake.mem, new CountingIrq());
    const drv = new SimDriver(t, fake);
    const bus = new Bus();
    bus.insert(BASE, 0x1000, 'virtio', t);
    assert.ok(drv.negotiate());
    const ctl = new Int32Array(new SharedArrayBuffer(12));
    const storer = new Worker(fileURLToPath(import.meta.url), { workerData: { claim: bus.claims()[0]!, ctl } satisfies StorerData });
    await new Promise((r) => storer.once('message', r));
    const q = t.queues[0]!;
    try {
      for (let i = 0; i < 300; i++) {
        waitGrowth(ctl, STORED, 2); // stores land while the queue is configurable
        drv.w32(REG.QueueReady, 1);
        const atReady = q.descAddr;
        assert.is(drv.r32(REG.QueueDescLow), atReady, `round ${i}: the queue took the register's value`);
        waitGrowth(ctl, TRIED, 2); // a store served before the gate closed has been counted by now
        const stored = Atomics.load(ctl, STORED);
        waitGrowth(ctl, TRIED, 3); // the storer keeps trying
        assert.is(Atomics.load(ctl, STORED), stored, `round ${i}: no store served while ready`);
        assert.is(drv.r32(REG.QueueDescLow), atReady, `round ${i}: the register did not move while ready`);
        drv.w32(REG.QueueReady, 0);
      }
    } finally {
      Atomics.store(ctl, STOP, 1);
      await storer.terminate();
    }
    assert.is(t.counters.errors, 0);
  });

  test.run();
}
