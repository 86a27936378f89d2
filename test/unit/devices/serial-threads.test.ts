// The UART's interrupt state shared between main and a vCPU thread (devices/serial.ts: IER,
// a pending THRE and IIR in cells under one lock). A thread plays the guest through
// serveShared (the code a vCPU worker runs): it clears IER and reads IIR — with IER 0 nothing
// can be pending, so IIR must read "none" — then enables RDA. Main meanwhile receives input,
// reads it back and drains transmitted bytes, rewriting the cells after each change. A cell
// rewrite from a state the thread had already changed (what the lock prevents) shows up as an
// IIR that reports RDA with IER 0. The window is a few instructions wide: without the lock this
// test saw one such read in 500,000 rounds, so it guards against a lock gone missing only now
// and then; the single-threaded cases are in serial.test.ts.
import { fileURLToPath } from 'node:url';
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { Bus, type BusClaim } from '../../../devices/bus';
import { Serial16550 } from '../../../devices/serial';
import { serveShared } from '../../../vmm/vcpu/shared';

const COM1 = 0x3f8;
const IER = 1;
const IIR = 2;

interface GuestData { claim: BusClaim; rounds: number; done: Int32Array }

function guestSide(): void {
  const { claim, rounds, done } = workerData as GuestData;
  let torn = 0;
  let refused = 0;
  for (let i = 0; i < rounds; i++) {
    if (!serveShared(claim, COM1 + IER, Uint8Array.of(0), true)) throw new Error('IER = 0 was not taken');
    const iir = new Uint8Array(1);
    serveShared(claim, COM1 + IIR, iir, false);
    if ((iir[0]! & 0x0f) !== 0x01) torn++;
    if (!serveShared(claim, COM1 + IER, Uint8Array.of(0x01), true)) refused++; // data waiting: the device's
    serveShared(claim, COM1, Uint8Array.of(0x2e), true);
  }
  Atomics.store(done, 0, 1);
  parentPort!.postMessage({ torn, refused });
}

if (!isMainThread) {
  guestSide();
} else {
  test('IIR never reports an interrupt IER has just disabled, while main receives input and drains output', async () => {
    let sent = 0;
    const s = new Serial16550({ trigger() {} }, (b) => (sent += b.length));
    const bus = new Bus();
    bus.insert(COM1, 8, 'com1', s);
    s.write(2, Uint8Array.of(0x01)); // FIFOs on
    const done = new Int32Array(new SharedArrayBuffer(4));
    const rounds = 200_000;
    const w = new Worker(fileURLToPath(import.meta.url), { workerData: { claim: bus.claims()[0]!, rounds, done } satisfies GuestData });
    const result = new Promise<{ torn: number; refused: number }>((resolve, reject) => {
      w.once('message', resolve);
      w.once('error', reject);
    });
    const rbr = new Uint8Array(1);
    const until = Date.now() + 20_000;
    let received = 0;
    while (!Atomics.load(done, 0) && Date.now() < until) {
      s.enqueueInput(Uint8Array.of(0x61));
      s.read(0, rbr);
      received += rbr[0] === 0x61 ? 1 : 0;
      s.flush();
    }
    const r = await result;
    s.flush();
    assert.is(r.torn, 0, 'IIR read "none" every time IER had just been cleared');
    assert.ok(received > 0 && r.refused >= 0);
    assert.is(sent, rounds, 'every transmitted byte came out');
  });

  test.run();
}
