// Thread-model numbers behind docs/architecture.md: the cost of one register access forwarded
// through V8's own primitives (vCPU worker → main thread → worker, Atomics.wait in the worker and
// Atomics.waitAsync on main: the event-loop path main takes between bursts; the real mailbox
// hands off through a raw futex and, within a burst, epoll on an eventfd — measured with a KVM
// exit by tools/bench/exits.ts), and of one irqfd-style eventfd signal from main. Needs no KVM.
//
//   node dist/bench/mailbox.js [--n 20000]

import { Worker } from 'node:worker_threads';
import { parseArgs } from 'node:util';
import { MB, STATE_REQUEST, STATE_RESPONSE, newMailbox } from '../../vmm/vcpu/mailbox';
import { close, eventfd, eventfdDrain, eventfdSignal } from '../../kvm/libc';

const { values } = parseArgs({ options: { n: { type: 'string' } } });
const n = Number(values.n ?? 20000);
const mb = newMailbox();
// The doorbell's counter word alone: this path rings it with Atomics.notify only.
const doorbell = new Int32Array(new SharedArrayBuffer(8));

// The worker side, inlined: the same steps as forward() in vmm/vcpu/worker.ts.
const worker = new Worker(`
  const { workerData, parentPort } = require('node:worker_threads');
  const { mb, doorbell, n, M } = workerData;
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < n; i++) {
    Atomics.store(mb, M.STATE, 1);
    Atomics.add(doorbell, 0, 1);
    Atomics.notify(doorbell, 0);
    while (Atomics.load(mb, M.STATE) === 1) Atomics.wait(mb, M.STATE, 1, 1000);
    Atomics.store(mb, M.STATE, 0);
  }
  parentPort.postMessage(Number(process.hrtime.bigint() - t0) / 1e3 / n);
`, { eval: true, workerData: { mb, doorbell, n, M: MB } });

let served = 0;
const done = new Promise<number>((resolve) => worker.once('message', resolve));
(async () => {
  while (served < n) {
    const seen = Atomics.load(doorbell, 0);
    if (Atomics.load(mb, MB.STATE) === STATE_REQUEST) {
      Atomics.store(mb, MB.STATE, STATE_RESPONSE);
      Atomics.notify(mb, MB.STATE);
      served++;
      continue;
    }
    const w = Atomics.waitAsync(doorbell, 0, seen);
    if (w.async) await w.value;
  }
})();
const roundTripUs = await done;
await worker.terminate();

const fd = eventfd();
const t0 = process.hrtime.bigint();
for (let i = 0; i < n; i++) eventfdSignal(fd);
const signalUs = Number(process.hrtime.bigint() - t0) / 1e3 / n;
eventfdDrain(fd);
close(fd);
console.log(JSON.stringify({ n, mailboxRoundTripUs: roundTripUs, eventfdSignalUs: signalUs }));
