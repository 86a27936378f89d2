// The main thread's mailbox server (vmm/vcpu/serve.ts) without KVM: this test plays the vCPU
// worker's side of the mailbox (request, doorbell, wait for the answer). A device that throws
// on a forwarded access must neither end the process (an unhandled rejection did) nor leave
// the vCPU waiting: the access is answered as an unclaimed one, reported, and serving goes on.
// And one vCPU's accesses may take only its share of the main thread's time: past it, that
// vCPU waits while the others are still served.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { Bus, type BusDevice } from '../../../devices/bus';
import {
  type Doorbell, KIND_MMIO, KIND_PIO, MB, STATE_IDLE, STATE_REQUEST, STATE_RESPONSE, closeDoorbell, mailboxData, newDoorbell, newMailbox, postRequest, ringDoorbell,
} from '../../../vmm/vcpu/mailbox';
import { MailboxServer, REGISTER_KEYS, type DeviceFault } from '../../../vmm/vcpu/serve';

/** What a worker's forward() does, then waits (asynchronously: this is the main thread) for the answer. */
async function access(doorbell: Doorbell, mb: Int32Array, kind: number, addr: number, data: Uint8Array, isWrite: boolean): Promise<Uint8Array> {
  postRequest(mb, doorbell, kind, addr, data, isWrite);
  const deadline = Date.now() + 2000;
  while (Atomics.load(mb, MB.STATE) !== STATE_RESPONSE) {
    if (Date.now() > deadline) throw new Error('no answer from the mailbox server');
    await new Promise((r) => setTimeout(r, 1));
  }
  const out = mailboxData(mb).slice(0, data.length);
  Atomics.store(mb, MB.STATE, STATE_IDLE);
  return out;
}

test('a device that throws: the access is answered (reads all ones), reported, and serving goes on', async () => {
  const rejections: unknown[] = [];
  const onRejection = (e: unknown): void => { rejections.push(e); };
  process.on('unhandledRejection', onRejection);
  const pio = new Bus();
  const mmio = new Bus();
  let reads = 0;
  const broken: BusDevice = {
    read: () => { reads++; throw new TypeError('device bug'); },
    write: () => { throw new RangeError('device bug on write'); },
  };
  const good: BusDevice = { read: (_o, d) => d.fill(0x42), write: () => {} };
  pio.insert(0x700, 0x40, 'broken', broken);
  mmio.insert(0xd000_0000, 0x1000, 'good', good);
  const doorbell = newDoorbell();
  const mb = newMailbox();
  const faults: DeviceFault[] = [];
  const server = new MailboxServer(doorbell, pio, mmio, (f) => faults.push(f));
  server.add(mb);
  const running = server.run();
  try {
    assert.equal([...(await access(doorbell, mb, KIND_PIO, 0x704, new Uint8Array(4), false))], [0xff, 0xff, 0xff, 0xff]);
    await access(doorbell, mb, KIND_PIO, 0x720, new Uint8Array([1, 2, 3, 4]), true);
    // The next vCPU access, to another device, is still served.
    assert.equal([...(await access(doorbell, mb, KIND_MMIO, 0xd000_0010, new Uint8Array(4), false))], [0x42, 0x42, 0x42, 0x42]);
    await new Promise((r) => setImmediate(r));
    assert.is(reads, 1);
    assert.is(faults.length, 2);
    assert.equal(faults.map((f) => [f.kind, f.addr, f.size, f.isWrite, f.error.message]), [
      ['pio', 0x704, 4, false, 'device bug'],
      ['pio', 0x720, 4, true, 'device bug on write'],
    ]);
    assert.is(server.faults, 2);
    assert.equal(rejections, [], 'nothing escaped as an unhandled rejection');
  } finally {
    server.stop();
    await running;
    closeDoorbell(doorbell);
    process.off('unhandledRejection', onRejection);
  }
});

test('forwarded accesses are counted by device and by register; a guest picking new addresses names at most REGISTER_KEYS registers', async () => {
  const pio = new Bus();
  const mmio = new Bus();
  const dev: BusDevice = { read: (_o, d) => d.fill(0), write: () => {} };
  pio.insert(0x3f8, 8, 'serial', dev);
  mmio.insert(0xd000_0000, 0x1000, 'vsock', dev);
  const doorbell = newDoorbell();
  const mb = newMailbox();
  const server = new MailboxServer(doorbell, pio, mmio, () => {});
  server.add(mb);
  const running = server.run();
  try {
    await access(doorbell, mb, KIND_PIO, 0x3fd, new Uint8Array(1), false);
    await access(doorbell, mb, KIND_PIO, 0x3fd, new Uint8Array(1), false);
    await access(doorbell, mb, KIND_PIO, 0x3f8, new Uint8Array(1), true);
    await access(doorbell, mb, KIND_MMIO, 0xd000_0064, new Uint8Array(4), true);
    // A PIO port and an MMIO address with the same number are different registers.
    await access(doorbell, mb, KIND_MMIO, 0x3fd, new Uint8Array(1), false);
    assert.equal(server.byDevice, { serial: 3, vsock: 1, unclaimed: 1 });
    assert.equal(server.byRegister, { 'serial+0x5 r': 2, 'serial+0x0 w': 1, 'vsock+0x64 w': 1, 'unclaimed+0x3fd r': 1 });
    // Past REGISTER_KEYS distinct registers, further new ones count by device only.
    for (let i = 0; i < REGISTER_KEYS; i++) await access(doorbell, mb, KIND_MMIO, 0xe000_0000 + i * 4, new Uint8Array(4), false);
    await access(doorbell, mb, KIND_PIO, 0x3fd, new Uint8Array(1), false);
    const byRegister = server.byRegister;
    assert.is(Object.keys(byRegister).length, REGISTER_KEYS + 1);
    assert.is(byRegister.other, 4, 'four were named before');
    assert.is(byRegister['serial+0x5 r'], 3, 'a register named before the cap is still counted');
    assert.equal(server.byDevice, { serial: 4, vsock: 1, unclaimed: 1 + REGISTER_KEYS });
  } finally {
    server.stop();
    await running;
    closeDoorbell(doorbell);
  }
});

test('a fault reporter that throws does not stop the answer either', async () => {
  const pio = new Bus();
  pio.insert(0x10, 1, 'broken', { read: () => { throw new Error('x'); }, write: () => {} });
  const doorbell = newDoorbell();
  const mb = newMailbox();
  const server = new MailboxServer(doorbell, pio, new Bus(), () => { throw new Error('logger died'); });
  server.add(mb);
  const running = server.run();
  assert.equal([...(await access(doorbell, mb, KIND_PIO, 0x10, new Uint8Array(1), false))], [0xff]);
  assert.equal([...(await access(doorbell, mb, KIND_PIO, 0x10, new Uint8Array(1), false))], [0xff]);
  server.stop();
  await running;
  closeDoorbell(doorbell);
});

test("a vCPU past its share of main's time waits for it to refill; another vCPU is served meanwhile", async () => {
  // A clock of the test's own: each write to the slow device takes 30 ms of it.
  let clock = 0;
  const pio = new Bus();
  let writes = 0;
  pio.insert(0x10, 4, 'slow', { read: (_o, d) => d.fill(7), write: () => { writes++; clock += 30; } });
  const doorbell = newDoorbell();
  const [mb0, mb1] = [newMailbox(), newMailbox()];
  const server = new MailboxServer(doorbell, pio, new Bus(), () => {}, { share: 0.25, burstMs: 20, now: () => clock });
  server.add(mb0);
  server.add(mb1);
  const running = server.run();
  try {
    // vCPU 0: 20 ms of share, the write takes 30 (a serve is never cut short): -10 left.
    await access(doorbell, mb0, KIND_PIO, 0x10, new Uint8Array(4), true);
    // 30 ms later by the clock it has 7.5 back: still -2.5, so its next write waits.
    const waiting = access(doorbell, mb0, KIND_PIO, 0x10, new Uint8Array(4), true);
    await new Promise((r) => setTimeout(r, 50));
    assert.is(writes, 1, 'the second write has not reached the device');
    assert.equal(server.deferred, [1, 0], 'counted once, however often it was looked at');
    // vCPU 1 has its own share.
    assert.equal([...(await access(doorbell, mb1, KIND_PIO, 0x10, new Uint8Array(4), false))], [7, 7, 7, 7]);
    assert.is(Atomics.load(mb0, MB.STATE), STATE_REQUEST, 'vCPU 0 still waits');
    clock += 20; // +5 ms of share: 2.5 left
    await waiting;
    assert.is(writes, 2);
    assert.equal(server.deferred, [1, 0]);
  } finally {
    server.stop();
    await running;
    closeDoorbell(doorbell);
  }
});

test('the retry is timed for the vCPU whose share comes back first, not the first one that ran out', async () => {
  let clock = 0;
  const pio = new Bus();
  // A write at 0x10 takes 1000 ms of the test's clock, one at 0x14 30 ms.
  pio.insert(0x10, 8, 'slow', { read: (_o, d) => d.fill(0), write: (o) => { clock += o === 0 ? 1000 : 30; } });
  const doorbell = newDoorbell();
  const [mb0, mb1] = [newMailbox(), newMailbox()];
  const server = new MailboxServer(doorbell, pio, new Bus(), () => {}, { share: 0.25, burstMs: 20, now: () => clock });
  server.add(mb0);
  server.add(mb1);
  const running = server.run();
  try {
    await access(doorbell, mb0, KIND_PIO, 0x10, new Uint8Array(4), true); // vCPU 0: ~1000 ms in debt, ~4 s to repay
    const slow = access(doorbell, mb0, KIND_PIO, 0x10, new Uint8Array(4), true);
    await access(doorbell, mb1, KIND_PIO, 0x14, new Uint8Array(4), true); // vCPU 1: 10 ms in debt
    const quick = access(doorbell, mb1, KIND_PIO, 0x14, new Uint8Array(4), true);
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(server.deferred, [1, 1]);
    clock += 20; // enough for vCPU 1's share, not vCPU 0's
    await quick; // within access()'s 2 s: the retry did not wait for vCPU 0's ~4 s
    assert.is(Atomics.load(mb0, MB.STATE), STATE_REQUEST, 'vCPU 0 still waits');
    clock += 5000;
    ringDoorbell(doorbell);
    await slow;
  } finally {
    server.stop();
    await running;
    closeDoorbell(doorbell);
  }
});

test.run();
