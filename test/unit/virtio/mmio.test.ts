// virtio-mmio transport driven through its registers by a simulated Linux driver: bring-up,
// feature negotiation, the status state machine, interrupts, config space, invalid accesses,
// and malicious drivers (NEEDS_RESET, with a second device on the same memory unaffected);
// InterruptStatus/ACK served from the shared cell the way a vCPU worker serves them.
import { Worker } from 'node:worker_threads';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { Bus } from '../../../devices/bus';
import { serveShared } from '../../../vmm/vcpu/shared';
import { VIRTIO_F_INDIRECT_DESC, VIRTIO_F_RING_EVENT_IDX, VIRTIO_F_VERSION_1 } from '../../../devices/virtio/device';
import { INT_CONFIG_CHANGE, INT_USED_BUFFER, MmioTransport, REG, STATUS, VENDOR_ID } from '../../../devices/virtio/mmio';
import { CountingIrq, DATA, EchoDevice, HOLE_START, MALICIOUS_CHAINS, SimDriver, fakeMemory, layoutQueue, type FakeMemory } from './sim';

const ALL = VIRTIO_F_VERSION_1 | VIRTIO_F_RING_EVENT_IDX | VIRTIO_F_INDIRECT_DESC | 1n;

interface Rig {
  fake: FakeMemory;
  dev: EchoDevice;
  irq: CountingIrq;
  t: MmioTransport;
  drv: SimDriver;
}

function rig(fake = fakeMemory()): Rig {
  const dev = new EchoDevice();
  const irq = new CountingIrq();
  const t = new MmioTransport(dev, fake.mem, irq);
  return { fake, dev, irq, t, drv: new SimDriver(t, fake) };
}

/** Sends one request through a working device and checks the echo came back. */
function roundTrip(r: Rig, bufBase: number): void {
  const msg = Array.from({ length: 12 }, (_, i) => (i * 7 + bufBase) & 0xff);
  r.fake.backing.set(msg, bufBase);
  r.fake.backing.fill(0, bufBase + 0x100, bufBase + 0x110);
  const head = r.drv.submit([{ addr: bufBase, len: 12 }, { addr: bufBase + 0x100, len: 16, write: true }]);
  const used = r.drv.takeUsed();
  assert.equal(used, [{ id: head, len: 12 }]);
  assert.equal([...r.fake.backing.subarray(bufBase + 0x100, bufBase + 0x10c)], msg);
}

test('identification registers', () => {
  const { drv } = rig();
  assert.is(drv.r32(REG.MagicValue), 0x74726976);
  assert.is(drv.r32(REG.Version), 2);
  assert.is(drv.r32(REG.DeviceID), 0x7e);
  assert.is(drv.r32(REG.VendorID), VENDOR_ID);
  drv.w32(REG.QueueSel, 1);
  assert.is(drv.r32(REG.QueueNumMax), 256);
  drv.w32(REG.QueueSel, 2);
  assert.is(drv.r32(REG.QueueNumMax), 0, 'no queue 2: max 0 tells Linux it does not exist');
  assert.is(drv.r32(REG.SHMLenLow), 0xffffffff);
});

test('offers the device bits plus VERSION_1, EVENT_IDX and INDIRECT_DESC', () => {
  const { drv, t, dev } = rig();
  assert.ok(drv.negotiate());
  assert.is(drv.features, ALL);
  drv.setupQueue(0, layoutQueue(0x1000, 16));
  drv.driverOk();
  assert.is(t.ackedFeatures, ALL);
  assert.is(dev.ctx?.ackedFeatures, ALL);
  assert.ok(t.queues[0]!.eventIdx);
  assert.ok(t.queues[0]!.indirect);
});

test('Linux-style bring-up, echo traffic, used-buffer interrupts', () => {
  const r = rig();
  r.drv.bringUp(0x1000, 16, VIRTIO_F_VERSION_1);
  assert.is(r.drv.status, STATUS.ACKNOWLEDGE | STATUS.DRIVER | STATUS.FEATURES_OK | STATUS.DRIVER_OK);
  assert.ok(r.dev.ctx, 'device activated');
  for (let i = 0; i < 40; i++) {
    roundTrip(r, DATA + 0x200 * (i % 4));
    assert.is(r.drv.interrupt(), INT_USED_BUFFER, 'the driver reads and acks each interrupt');
    assert.is(r.drv.r32(REG.InterruptStatus), 0, 'ACK cleared it');
  }
  assert.is(r.dev.echoed, 40);
  assert.is(r.t.counters.notifications, 40);
  assert.is(r.irq.count, 40);
  assert.is(r.t.counters.interrupts, 40);
  assert.is(r.t.counters.interruptsCoalesced, 0);
  assert.is(r.t.counters.errors, 0);
  assert.ok(r.fake.holeIntact());
});

test('no new edge while the driver has not acked the same bit; the driver still sees every buffer', () => {
  const r = rig();
  r.drv.bringUp(0x1000, 16, VIRTIO_F_VERSION_1);
  const req = () => r.drv.submit([{ addr: DATA, len: 4 }, { addr: DATA + 0x100, len: 4, write: true }]);
  req();
  assert.is(r.irq.count, 1);
  // The driver is slow to take its interrupt: more used buffers, no more edges.
  req();
  req();
  assert.is(r.irq.count, 1);
  assert.is(r.t.counters.interruptsCoalesced, 2);
  // vm_interrupt(): read, ack, then walk the rings, which hold all three.
  assert.is(r.drv.interrupt(), INT_USED_BUFFER);
  assert.is(r.drv.takeUsed().length, 3);
  req();
  assert.is(r.irq.count, 2, 'acked: the next used buffer raises a new edge');
  // A config change is another bit: its own edge even while bit 0 is pending.
  r.t.configChanged();
  assert.is(r.irq.count, 3);
  assert.is(r.drv.interrupt(), INT_USED_BUFFER | INT_CONFIG_CHANGE);
  // A bit set between the driver's read and its ack of a different bit keeps its own edge.
  req();
  const seen = r.drv.r32(REG.InterruptStatus);
  r.t.configChanged();
  r.drv.w32(REG.InterruptACK, seen);
  assert.is(r.irq.count, 5);
  assert.is(r.drv.r32(REG.InterruptStatus), INT_CONFIG_CHANGE, 'still pending, and it had its edge');
});

test('indirect chains through the transport', () => {
  const r = rig();
  r.drv.bringUp(0x1000, 16);
  r.fake.backing.set([1, 2, 3], DATA);
  const head = r.drv.addIndirect(0x6000, [{ addr: DATA, len: 3 }, { addr: DATA + 0x40, len: 3, write: true }]);
  r.drv.pushAvail(head);
  r.drv.notify();
  assert.equal(r.drv.takeUsed(), [{ id: head, len: 3 }]);
  assert.equal([...r.fake.backing.subarray(DATA + 0x40, DATA + 0x43)], [1, 2, 3]);
});

test('EVENT_IDX: used_event suppresses interrupts; avail_event tracks consumption', () => {
  const r = rig();
  r.drv.bringUp(0x1000, 16);
  r.drv.setUsedEvent(2); // interrupt when used idx passes 2
  for (let i = 0; i < 2; i++) r.drv.submit([{ addr: DATA, len: 4 }, { addr: DATA + 0x100, len: 4, write: true }]);
  assert.is(r.irq.count, 0);
  assert.is(r.drv.availEvent, 2);
  r.drv.submit([{ addr: DATA, len: 4 }, { addr: DATA + 0x100, len: 4, write: true }]);
  assert.is(r.irq.count, 1);
  assert.is(r.drv.usedIdx, 3);
});

test('undoPop through a device: the chain is served on the next notify', () => {
  const r = rig();
  r.drv.bringUp(0x1000, 16);
  r.dev.undoOnce = true;
  const head = r.drv.submit([{ addr: DATA, len: 4 }, { addr: DATA + 0x100, len: 4, write: true }]);
  assert.equal(r.drv.takeUsed(), []);
  r.t.queueNotify(0);
  assert.equal(r.drv.takeUsed(), [{ id: head, len: 4 }]);
});

test('FEATURES_OK is refused for features not offered, and without VERSION_1', () => {
  const r = rig();
  // A driver that acks exactly what is offered is fine; here the sets are written by hand.
  r.drv.w32(REG.Status, STATUS.ACKNOWLEDGE | STATUS.DRIVER);
  r.drv.writeDriverFeatures(VIRTIO_F_VERSION_1 | (1n << 5n));
  r.drv.w32(REG.Status, STATUS.ACKNOWLEDGE | STATUS.DRIVER | STATUS.FEATURES_OK);
  assert.is(r.drv.status & STATUS.FEATURES_OK, 0, 'bit 5 was not offered');
  r.drv.writeDriverFeatures(1n);
  r.drv.w32(REG.Status, STATUS.ACKNOWLEDGE | STATUS.DRIVER | STATUS.FEATURES_OK);
  assert.is(r.drv.status & STATUS.FEATURES_OK, 0, 'legacy (no VERSION_1) refused');
  r.drv.w32(REG.DriverFeaturesSel, 2);
  r.drv.w32(REG.DriverFeatures, 1);
  r.drv.writeDriverFeatures(VIRTIO_F_VERSION_1);
  r.drv.w32(REG.Status, STATUS.ACKNOWLEDGE | STATUS.DRIVER | STATUS.FEATURES_OK);
  assert.is(r.drv.status & STATUS.FEATURES_OK, STATUS.FEATURES_OK);
  assert.is(r.t.ackedFeatures, VIRTIO_F_VERSION_1);
  assert.ok(r.t.counters.errors >= 3);
});

test('status state machine: out-of-order and clearing writes are ignored and counted', () => {
  const r = rig();
  const errs = () => r.t.counters.errors;
  let e = errs();
  r.drv.w32(REG.Status, STATUS.DRIVER);
  assert.is(r.drv.status, 0, 'DRIVER before ACKNOWLEDGE');
  r.drv.w32(REG.Status, STATUS.ACKNOWLEDGE);
  r.drv.w32(REG.Status, STATUS.ACKNOWLEDGE | STATUS.DRIVER_OK);
  assert.is(r.drv.status, STATUS.ACKNOWLEDGE, 'DRIVER_OK before FEATURES_OK');
  r.drv.w32(REG.Status, STATUS.ACKNOWLEDGE | STATUS.DRIVER);
  r.drv.w32(REG.Status, STATUS.DRIVER);
  assert.is(r.drv.status, STATUS.ACKNOWLEDGE | STATUS.DRIVER, 'clearing ACKNOWLEDGE');
  r.drv.w32(REG.Status, STATUS.ACKNOWLEDGE | STATUS.DRIVER | 0x20);
  assert.is(r.drv.status, STATUS.ACKNOWLEDGE | STATUS.DRIVER, 'unknown bit');
  r.drv.w32(REG.Status, STATUS.ACKNOWLEDGE | STATUS.DRIVER | STATUS.NEEDS_RESET);
  assert.is(r.drv.status, STATUS.ACKNOWLEDGE | STATUS.DRIVER, 'NEEDS_RESET is set by the device only');
  assert.is(errs() - e, 5);
  r.drv.w32(REG.Status, STATUS.ACKNOWLEDGE | STATUS.DRIVER | STATUS.FAILED);
  assert.is(r.drv.status, STATUS.ACKNOWLEDGE | STATUS.DRIVER | STATUS.FAILED, 'FAILED is always accepted');
  e = errs();
  r.drv.w32(REG.Status, 0);
  assert.is(r.drv.status, 0);
  assert.is(errs(), e);
});

test('invalid register accesses are ignored, counted, never thrown', () => {
  const r = rig();
  r.drv.bringUp(0x1000, 16);
  const before = r.t.counters.errors;
  const two = new Uint8Array(2).fill(0xee);
  r.t.read(REG.Status, two);
  assert.equal([...two], [0, 0], 'wrong width reads as zero');
  r.t.write(REG.Status, new Uint8Array(2));
  const one = new Uint8Array(4);
  r.t.read(REG.Status + 1, one); // unaligned
  r.t.read(0x0f0, one); // unknown
  r.t.read(REG.QueueNotify, one); // write-only
  r.t.write(REG.MagicValue, new Uint8Array(4)); // read-only
  r.t.write(0x0f4, new Uint8Array(4)); // unknown
  r.t.write(REG.QueueNum, new Uint8Array([8, 0, 0, 0])); // after DRIVER_OK
  r.drv.w32(REG.DriverFeatures, 0); // after FEATURES_OK
  r.drv.w32(REG.QueueSel, 9); // no such queue: legal to select, nothing to configure
  r.drv.w32(REG.QueueReady, 1); // ... so this is refused too
  r.drv.w32(REG.QueueReady, 2); // not 0/1
  r.t.queueNotify(5); // no such queue
  r.t.queueNotify(-1);
  assert.is(r.t.counters.errors - before, 13);
  assert.is(r.t.queues[0]!.size, 16, 'QueueNum write after DRIVER_OK ignored');
  assert.is(r.drv.status & STATUS.NEEDS_RESET, 0, 'register misuse is not a reason to reset');
  r.drv.w32(REG.QueueSel, 0);
  roundTrip(r, DATA);
});

test('queue registers are refused before FEATURES_OK and while the queue is ready', () => {
  const r = rig();
  r.drv.w32(REG.Status, STATUS.ACKNOWLEDGE | STATUS.DRIVER);
  r.drv.w32(REG.QueueNum, 8);
  assert.is(r.t.queues[0]!.size, 256);
  r.drv.bringUp(0x1000, 16);
  r.drv.w32(REG.QueueSel, 0);
  r.drv.w32(REG.QueueDescLow, 0x3000);
  assert.is(r.t.queues[0]!.descAddr, 0x1000);
  assert.is(r.drv.r32(REG.QueueDescLow), 0x1000);
  assert.is(r.drv.r32(REG.QueueNum), 16);
});

test('config space: any width, writes reach the device, generation and config interrupt', () => {
  const r = rig();
  const b = new Uint8Array(1);
  r.t.read(REG.Config + 1, b);
  assert.is(b[0], 0x56);
  const w = new Uint8Array(2);
  r.t.read(REG.Config + 2, w);
  assert.equal([...w], [0x34, 0x12]);
  r.t.write(REG.Config + 4, new Uint8Array([1, 2]));
  assert.equal([...r.dev.config.subarray(4, 6)], [0, 0], 'config write before DRIVER is ignored');
  r.drv.bringUp(0x1000, 16);
  r.t.write(REG.Config + 4, new Uint8Array([1, 2]));
  assert.equal([...r.dev.config.subarray(4, 6)], [1, 2]);
  const g = r.drv.r32(REG.ConfigGeneration);
  r.t.configChanged();
  assert.is(r.drv.r32(REG.ConfigGeneration), g + 1);
  assert.is(r.irq.count, 1);
  assert.is(r.drv.interrupt(), INT_CONFIG_CHANGE);
});

test('reset (Status = 0) clears queues and device; the driver can start over', () => {
  const r = rig();
  r.drv.bringUp(0x1000, 16);
  roundTrip(r, DATA);
  const resets = r.dev.resets;
  r.drv.w32(REG.Status, 0);
  assert.is(r.dev.resets, resets + 1);
  assert.is(r.dev.ctx, undefined);
  assert.is(r.t.queues[0]!.ready, false);
  assert.is(r.drv.r32(REG.QueueReady), 0);
  assert.is(r.drv.r32(REG.InterruptStatus), 0);
  const n = r.t.counters.notifications;
  r.t.queueNotify(0);
  assert.is(r.t.counters.notifications, n, 'no notifications to a reset device');
  r.drv.bringUp(0x3000, 8);
  roundTrip(r, DATA);
});

test('notifyAddress describes the QueueNotify ioeventfd; queueNotify() is the same as the register', () => {
  const r = rig();
  assert.equal(r.t.notifyAddress(1), { offset: 0x50, length: 4, datamatch: 1 });
  r.drv.bringUp(0x1000, 16);
  const head = r.drv.addChain([{ addr: DATA, len: 4 }, { addr: DATA + 0x100, len: 4, write: true }]);
  r.drv.pushAvail(head);
  r.t.queueNotify(0);
  assert.equal(r.drv.takeUsed(), [{ id: head, len: 4 }]);
});

// Malicious drivers. Device A misbehaves; device B (own transport, same guest memory, rings
// elsewhere) must keep working, and nothing may touch the hole.
function pair(want?: bigint): { a: Rig; b: Rig } {
  const fake = fakeMemory();
  const a = rig(fake);
  const b = rig(fake);
  a.drv.bringUp(0x1000, 8, want);
  b.drv.bringUp(0x20000, 8);
  return { a, b };
}

function assertNeedsReset(a: Rig, b: Rig, re?: RegExp): void {
  assert.is(a.drv.status & STATUS.NEEDS_RESET, STATUS.NEEDS_RESET, 'device A needs reset');
  assert.is(a.t.counters.needsReset, 1);
  if (re) assert.match(a.t.lastError ?? '', re);
  assert.is(a.drv.interrupt() & INT_CONFIG_CHANGE, INT_CONFIG_CHANGE, 'config interrupt raised');
  // A is dead until reset: notifications no longer reach the device.
  const echoed = a.dev.echoed;
  a.drv.submit([{ addr: DATA, len: 4 }, { addr: DATA + 0x100, len: 4, write: true }]);
  assert.is(a.dev.echoed, echoed);
  // NEEDS_RESET survives the driver echoing the status register back.
  a.drv.w32(REG.Status, a.drv.status);
  assert.is(a.drv.status & STATUS.NEEDS_RESET, STATUS.NEEDS_RESET);
  roundTrip(b, DATA + 0x4000);
  assert.is(b.drv.status & STATUS.NEEDS_RESET, 0);
  assert.ok(a.fake.holeIntact(), 'nothing written into the hole');
}

for (const c of MALICIOUS_CHAINS) {
  test(`malicious chain puts the device into NEEDS_RESET: ${c.name}`, () => {
    const want = c.indirect === false ? VIRTIO_F_VERSION_1 | VIRTIO_F_RING_EVENT_IDX : undefined;
    const { a, b } = pair(want);
    roundTrip(a, DATA); // a working device first
    const usedBefore = a.drv.usedIdx;
    c.arrange(a.drv, a.drv.lay);
    a.drv.notify();
    assert.is(a.drv.usedIdx, usedBefore, 'the bad chain was not returned');
    assertNeedsReset(a, b, c.reason);
    // A reset brings A back.
    a.drv.bringUp(0x1000, 8);
    roundTrip(a, DATA);
  });
}

const badSetups: Array<[string, RegExp, (a: Rig) => void]> = [
  ['queue size 3', /power of two/, (a) => a.drv.w32(REG.QueueNum, 3)],
  ['queue size above QueueNumMax', /power of two/, (a) => a.drv.w32(REG.QueueNum, 512)],
  ['descriptor table misaligned', /aligned/, (a) => a.drv.w32(REG.QueueDescLow, 0x1008)],
  ['available ring in the hole', /not in guest RAM/, (a) => a.drv.w32(REG.QueueDriverLow, HOLE_START)],
  ['used ring above 4 GiB', /not in guest RAM/, (a) => a.drv.w32(REG.QueueDeviceHigh, 1)],
  ['used ring beyond 2^53', /not in guest RAM/, (a) => a.drv.w32(REG.QueueDeviceHigh, 0xffffffff)],
];

for (const [name, re, spoil] of badSetups) {
  test(`bad queue setup is caught at DRIVER_OK: ${name}`, () => {
    const fake = fakeMemory();
    const a = rig(fake);
    const b = rig(fake);
    b.drv.bringUp(0x20000, 8);
    assert.ok(a.drv.negotiate());
    const lay = layoutQueue(0x1000, 8);
    a.drv.clear(lay);
    a.drv.w32(REG.QueueSel, 0);
    a.drv.w32(REG.QueueNum, 8);
    a.drv.w32(REG.QueueDescLow, lay.desc);
    a.drv.w32(REG.QueueDriverLow, lay.avail);
    a.drv.w32(REG.QueueDeviceLow, lay.used);
    spoil(a);
    a.drv.w32(REG.QueueReady, 1);
    a.drv.driverOk();
    assert.is(a.dev.ctx, undefined, 'device not activated');
    assert.is(a.drv.status & STATUS.NEEDS_RESET, STATUS.NEEDS_RESET);
    assert.match(a.t.lastError ?? '', re);
    roundTrip(b, DATA + 0x4000);
    assert.ok(fake.holeIntact());
  });
}

test('a device that throws something else also ends in NEEDS_RESET, not an exception', () => {
  const { a, b } = pair();
  a.dev.notify = () => {
    throw new TypeError('device bug');
  };
  const reasons: string[] = [];
  a.t.onError = (r) => reasons.push(r);
  a.drv.notify();
  assert.equal(reasons, ['device error: device bug']);
  assertNeedsReset(a, b);
});

test('ctx.needsReset from the device (errors found outside notify)', () => {
  const { a, b } = pair();
  a.dev.ctx!.needsReset('vsock: bad packet header');
  assertNeedsReset(a, b, /bad packet header/);
});

// --- InterruptStatus / InterruptACK served by a vCPU thread from the shared cell ---

const BASE = 0xd000_0000;

/**
 * A machine's MMIO bus with one transport, accessed the way the vCPU worker does it; the
 * simulated driver's own accesses go the same way, and each forwarded one is logged.
 */
function vcpuRig(fake?: FakeMemory) {
  const r = rig(fake);
  const bus = new Bus();
  bus.insert(BASE, 0x1000, 'virtio', r.t);
  const claims = bus.claims();
  const forwarded: string[] = [];
  /** One guest access: served from a shared register, or forwarded to the bus. */
  const access = (offset: number, data: Uint8Array, isWrite: boolean): 'shared' | 'forwarded' => {
    const claim = claims.find((c) => BASE + offset >= c.base && BASE + offset + data.length <= c.base + c.len)!;
    if (serveShared(claim, BASE + offset, data, isWrite)) return 'shared';
    forwarded.push(`0x${offset.toString(16)} ${isWrite ? 'w' : 'r'}`);
    if (isWrite) bus.write(BASE + offset, data);
    else bus.read(BASE + offset, data);
    return 'forwarded';
  };
  r.drv.io = (offset, data, isWrite) => void access(offset, data, isWrite);
  const u32 = (v: number) => new Uint8Array(new Uint32Array([v >>> 0]).buffer);
  const isr = () => {
    const d = new Uint8Array(4);
    assert.is(access(REG.InterruptStatus, d, false), 'shared');
    return new DataView(d.buffer).getUint32(0, true);
  };
  const ack = (v: number) => assert.is(access(REG.InterruptACK, u32(v), true), 'shared');
  return { ...r, bus, claims, access, isr, ack, u32, forwarded };
}

test('the bus hands vCPU threads the transport\'s shared registers (InterruptStatus/ACK, reads, value-only writes); other devices have none', () => {
  const v = vcpuRig();
  v.bus.insert(0x3f8, 8, 'plain', { read: (_o, d) => d.fill(0), write: () => {} });
  const [plain, virtio] = v.bus.claims();
  assert.equal(plain!.shared, []);
  assert.equal(virtio!.shared.slice(0, 2).map((s) => [s.offset, s.size, s.kind]), [[REG.InterruptStatus, 4, 'load'], [REG.InterruptACK, 4, 'clear-bits']]);
  const rest = virtio!.shared.slice(2);
  assert.ok(rest.every((s) => (s.kind === 'load' || s.kind === 'store') && s.size === 4), 'the rest are reads and stores');
  const stores = rest.filter((s) => s.kind === 'store').map((s) => s.offset).sort((a, b) => a - b);
  assert.equal(stores, [
    REG.DeviceFeaturesSel, REG.DriverFeatures, REG.DriverFeaturesSel, REG.QueueSel, REG.QueueNum,
    REG.QueueDescLow, REG.QueueDescHigh, REG.QueueDriverLow, REG.QueueDriverHigh, REG.QueueDeviceLow, REG.QueueDeviceHigh,
  ]);
  for (const s of rest.filter((s) => s.kind === 'store' && s.select)) assert.ok(s.gate, `0x${s.offset.toString(16)}: a banked store is gated`);
  for (const s of [REG.Status, REG.QueueReady, REG.QueueNotify, REG.InterruptACK + 0x100]) {
    assert.not.ok(rest.some((r) => r.offset === s && r.kind === 'store'), `0x${s.toString(16)} is never a store: it acts`);
  }
  assert.ok(virtio!.shared.every((s) => s.cell.buffer instanceof SharedArrayBuffer), 'workers must see the same memory');
});

test('interrupt bits set by the device are read and acknowledged in the vCPU thread', () => {
  const v = vcpuRig();
  v.drv.bringUp(0x1000, 16);
  assert.is(v.isr(), 0);
  roundTrip(v, DATA);
  assert.is(v.irq.count, 1);
  assert.is(v.isr(), INT_USED_BUFFER);
  assert.is(v.drv.r32(REG.InterruptStatus), INT_USED_BUFFER, 'the transport reads the same cell');
  v.ack(INT_USED_BUFFER);
  assert.is(v.isr(), 0);
  assert.is(v.drv.r32(REG.InterruptStatus), 0);
  v.t.configChanged();
  assert.is(v.isr(), INT_CONFIG_CHANGE);
  v.drv.w32(REG.InterruptACK, INT_CONFIG_CHANGE); // an ACK that reaches the transport works the same
  assert.is(v.isr(), 0);
  assert.is(v.t.counters.errors, 0);
});

test('acknowledging bits that are not set is harmless', () => {
  const v = vcpuRig();
  v.drv.bringUp(0x1000, 16);
  v.ack(0xffff_ffff);
  assert.is(v.isr(), 0);
  v.t.configChanged();
  v.ack(0);
  v.ack(INT_USED_BUFFER | 0xffff_fffc);
  assert.is(v.isr(), INT_CONFIG_CHANGE, 'only the bits written are cleared');
  v.ack(0xffff_ffff);
  assert.is(v.isr(), 0);
  assert.is(v.t.counters.errors, 0);
  roundTrip(v, DATA);
  assert.is(v.isr(), INT_USED_BUFFER, 'the device keeps working');
});

test('reset (Status = 0) clears the shared interrupt status', () => {
  const v = vcpuRig();
  v.drv.bringUp(0x1000, 16);
  roundTrip(v, DATA);
  v.t.configChanged();
  assert.is(v.isr(), INT_USED_BUFFER | INT_CONFIG_CHANGE);
  v.drv.w32(REG.Status, 0);
  assert.is(v.isr(), 0);
});

test('a bit the device sets between the driver\'s read and its ACK is not lost', () => {
  const v = vcpuRig();
  v.drv.bringUp(0x1000, 16);
  roundTrip(v, DATA);
  const seen = v.isr();
  v.t.configChanged(); // main thread, while the vCPU handles the interrupt
  v.ack(seen);
  assert.is(v.isr(), INT_CONFIG_CHANGE);
  assert.is(v.irq.count, 2, 'and it came with its own interrupt');
});

test('sets racing acks on another thread: every bit set is seen exactly once', async () => {
  const v = vcpuRig();
  const cell = v.claims[0]!.shared[0]!.cell;
  const ctl = new Int32Array(new SharedArrayBuffer(4));
  const rounds = 20_000;
  // The "device" thread sets one of 30 bits at a time, each only once the driver acked it.
  const setter = new Worker(`
    const { workerData: { cell, ctl, rounds } } = require('node:worker_threads');
    for (let i = 0; i < rounds; i++) {
      const bit = 1 << (i % 30);
      while (Atomics.load(cell, 0) & bit);
      Atomics.or(cell, 0, bit);
    }
    Atomics.store(ctl, 0, 1);
  `, { eval: true, workerData: { cell, ctl, rounds } });
  let seen = 0;
  const deadline = Date.now() + 20_000;
  for (;;) {
    const done = Atomics.load(ctl, 0);
    const s = v.isr();
    if (s) {
      v.ack(s);
      for (let b = s; b; b &= b - 1) seen++;
    } else if (done || Date.now() > deadline) {
      break;
    }
  }
  await setter.terminate();
  assert.is(seen, rounds);
});

test('wrong-width, misaligned and wrong-direction accesses are not served from the cell: they go to the transport', () => {
  const v = vcpuRig();
  v.drv.bringUp(0x1000, 16);
  v.t.configChanged();
  const errors = v.t.counters.errors;
  const cases: [number, Uint8Array, boolean][] = [
    [REG.InterruptStatus, new Uint8Array(2).fill(0xee), false],
    [REG.InterruptStatus, new Uint8Array(1).fill(0xee), false],
    [REG.InterruptStatus, new Uint8Array(8).fill(0xee), false],
    [REG.InterruptStatus + 1, new Uint8Array(4).fill(0xee), false],
    [REG.InterruptACK, new Uint8Array(4).fill(0xee), false], // ACK is write-only
    [REG.InterruptStatus, v.u32(0xffff_ffff), true], // Status is read-only
    [REG.InterruptACK, new Uint8Array([0xff, 0xff]), true],
    [REG.InterruptACK + 2, v.u32(0xffff_ffff), true],
    [REG.InterruptACK - 1, v.u32(0xffff_ffff), true],
  ];
  for (const [offset, data, isWrite] of cases) {
    assert.is(v.access(offset, data, isWrite), 'forwarded', `0x${offset.toString(16)}+${data.length} ${isWrite ? 'write' : 'read'}`);
    if (!isWrite) assert.ok(data.every((b) => b === 0), 'invalid reads read 0');
  }
  assert.is(v.t.counters.errors, errors + cases.length, 'each one ignored and counted');
  assert.is(v.isr(), INT_CONFIG_CHANGE, 'none of them cleared a bit');
});

test('the registers a driver reads to probe and set up queues are served in the vCPU thread, equal to the transport\'s answer through bring-up, selectors, NEEDS_RESET, a config change and a reset', () => {
  const v = vcpuRig();
  const served = [REG.MagicValue, REG.Version, REG.DeviceID, REG.VendorID, REG.DeviceFeatures, REG.QueueNumMax, REG.QueueNum, REG.QueueReady, REG.Status, REG.ConfigGeneration];
  const check = (what: string) => {
    for (const reg of served) {
      const d = new Uint8Array(4).fill(0xee);
      assert.is(v.access(reg, d, false), 'shared', `${what}: 0x${reg.toString(16)} served`);
      const direct = new Uint8Array(4);
      v.t.read(reg, direct);
      assert.equal([...d], [...direct], `${what}: 0x${reg.toString(16)} as the transport reads it`);
    }
  };
  /** Reads a bank's register with the selector beyond the bank: it reaches the transport (which answers 0). */
  const beyond = (reg: number) => {
    const d = new Uint8Array(4).fill(0xee);
    assert.is(v.access(reg, d, false), 'forwarded', `0x${reg.toString(16)} beyond its bank`);
    assert.equal([...d], [0, 0, 0, 0]);
  };
  check('reset');
  for (const sel of [1, 2, 0]) {
    assert.is(v.access(REG.DeviceFeaturesSel, v.u32(sel), true), 'shared', 'the selector is stored in the vCPU thread');
    if (sel < 2) check(`features word ${sel}`);
    else beyond(REG.DeviceFeatures);
  }
  v.drv.bringUp(0x1000, 16);
  check('running');
  for (const sel of [1, 5, 0xffff_ffff, 0]) {
    assert.is(v.access(REG.QueueSel, v.u32(sel), true), 'shared');
    if (sel < 2) check(`queue ${sel} selected`);
    else for (const reg of [REG.QueueNumMax, REG.QueueNum, REG.QueueReady]) beyond(reg);
  }
  v.t.configChanged();
  check('config changed');
  v.t.needsReset('test');
  check('needs reset');
  assert.is(v.access(REG.Status, v.u32(0), true), 'forwarded');
  check('reset by the driver');
  // Wider, narrower or misaligned reads of them still reach the transport.
  assert.is(v.access(REG.MagicValue, new Uint8Array(2), false), 'forwarded');
  assert.is(v.access(REG.DeviceID + 1, new Uint8Array(4), false), 'forwarded');
});

test('a bring-up through the vCPU path forwards only Status and QueueReady writes, and the device works as one set up by main', () => {
  const v = vcpuRig();
  v.drv.bringUp(0x1000, 16);
  assert.equal(v.forwarded, ['0x70 w', '0x70 w', '0x70 w', '0x70 w', '0x44 w', '0x70 w'], 'reset, ACKNOWLEDGE, DRIVER, FEATURES_OK, QueueReady, DRIVER_OK');
  assert.is(v.t.counters.errors, 0);
  assert.is(v.t.ackedFeatures, ALL, 'the features the vCPU thread stored were the ones accepted');
  const q = v.t.queues[0]!;
  const lay = layoutQueue(0x1000, 16);
  assert.equal([q.size, q.descAddr, q.availAddr, q.usedAddr], [16, lay.desc, lay.avail, lay.used], 'QueueReady took the stored configuration');
  for (const [reg, want] of [[REG.QueueNum, 16], [REG.QueueDescLow, lay.desc], [REG.QueueDriverLow, lay.avail], [REG.QueueDeviceLow, lay.used], [REG.QueueDescHigh, 0]] as const) {
    assert.is(v.drv.r32(reg), want, `0x${reg.toString(16)} reads back what was stored`);
  }
  roundTrip(v, DATA);
  roundTrip(v, DATA + 0x200);
});

test('stores outside their window reach the transport, which refuses and counts them; the cells stay as they were', () => {
  const v = vcpuRig();
  const shared = (reg: number, val: number) => v.access(reg, v.u32(val), true);
  assert.is(shared(REG.DriverFeatures, 1), 'forwarded', 'DriverFeatures before DRIVER');
  assert.is(v.t.counters.errors, 1);
  assert.is(shared(REG.QueueNum, 8), 'forwarded', 'queue registers before FEATURES_OK');
  assert.is(v.t.counters.errors, 2);
  assert.ok(v.drv.negotiate());
  assert.is(shared(REG.DriverFeatures, 0), 'forwarded', 'DriverFeatures after FEATURES_OK');
  assert.is(v.t.ackedFeatures, ALL, 'the accepted features are unchanged');
  assert.is(v.t.counters.errors, 3);
  assert.is(shared(REG.QueueSel, 7), 'shared');
  assert.is(shared(REG.QueueNum, 8), 'forwarded', 'no queue 7: beyond the bank');
  assert.is(v.t.counters.errors, 4);
  v.drv.setupQueue(0, layoutQueue(0x1000, 16));
  const errors = v.t.counters.errors;
  for (const reg of [REG.QueueNum, REG.QueueDescLow, REG.QueueDriverHigh, REG.QueueDeviceLow]) {
    assert.is(shared(reg, 0x40), 'forwarded', `0x${reg.toString(16)} while the queue is ready`);
  }
  assert.is(v.t.counters.errors, errors + 4);
  assert.is(v.drv.r32(REG.QueueNum), 16);
  assert.is(v.drv.r32(REG.QueueDeviceLow), layoutQueue(0x1000, 16).used);
  // Queue 1 is still configurable until DRIVER_OK, then no longer.
  assert.is(shared(REG.QueueSel, 1), 'shared');
  assert.is(shared(REG.QueueNum, 4), 'shared');
  v.drv.driverOk();
  assert.is(shared(REG.QueueNum, 8), 'forwarded', 'after DRIVER_OK');
  assert.is(v.drv.r32(REG.QueueNum), 4);
  roundTrip(v, DATA);
});

test('a driver that changes its mind mid-way: a queue unreadied and moved, features rewritten, a reset in the middle of a setup', () => {
  const v = vcpuRig();
  assert.ok(v.drv.negotiate());
  v.drv.setupQueue(0, layoutQueue(0x3000, 8));
  v.drv.w32(REG.QueueReady, 0);
  v.drv.setupQueue(0, layoutQueue(0x1000, 16)); // QueueReady 0, program again through the vCPU path, ready
  assert.equal([v.t.queues[0]!.size, v.t.queues[0]!.descAddr], [16, layoutQueue(0x1000, 16).desc], 'the second setup is the one in force');
  v.drv.driverOk();
  roundTrip(v, DATA);
  // Reset half-way through a new setup: every stored value goes back to its power-on value.
  v.drv.w32(REG.Status, 0);
  v.drv.w32(REG.Status, STATUS.ACKNOWLEDGE | STATUS.DRIVER);
  v.drv.w32(REG.QueueSel, 1);
  v.drv.writeDriverFeatures(VIRTIO_F_VERSION_1 | 1n);
  v.drv.w32(REG.DriverFeaturesSel, 1);
  v.drv.w32(REG.Status, 0);
  assert.is(v.drv.r32(REG.Status), 0);
  assert.is(v.drv.r32(REG.QueueNumMax), 256, 'QueueSel back to 0');
  assert.is(v.drv.r32(REG.QueueNum), 256, 'QueueNum back to QueueNumMax');
  assert.is(v.drv.r32(REG.QueueDescLow), 0);
  assert.is(v.t.queues[0]!.ready, false);
  // Features rewritten before FEATURES_OK: the last words written count.
  v.drv.w32(REG.Status, STATUS.ACKNOWLEDGE);
  v.drv.w32(REG.Status, STATUS.ACKNOWLEDGE | STATUS.DRIVER);
  v.drv.writeDriverFeatures(ALL);
  v.drv.writeDriverFeatures(VIRTIO_F_VERSION_1);
  v.drv.w32(REG.Status, STATUS.ACKNOWLEDGE | STATUS.DRIVER | STATUS.FEATURES_OK);
  assert.is(v.t.ackedFeatures, VIRTIO_F_VERSION_1);
  // A selector beyond the feature words: a 0 is accepted (by the transport), anything else refused.
  const errors = v.t.counters.errors;
  v.drv.w32(REG.Status, 0);
  v.drv.w32(REG.Status, STATUS.ACKNOWLEDGE | STATUS.DRIVER);
  v.drv.w32(REG.DriverFeaturesSel, 2);
  assert.is(v.access(REG.DriverFeatures, v.u32(0), true), 'forwarded');
  assert.is(v.t.counters.errors, errors);
  v.drv.w32(REG.DriverFeatures, 1);
  assert.is(v.t.counters.errors, errors + 1);
});

test('a queue address beyond 2^53 written through the vCPU path fails activation (NEEDS_RESET), as one written to main', () => {
  const v = vcpuRig();
  assert.ok(v.drv.negotiate());
  v.drv.setupQueue(0, layoutQueue(0x1000, 16));
  v.drv.w32(REG.QueueReady, 0);
  v.drv.w32(REG.QueueDescHigh, 0x0020_0000); // 2^53
  v.drv.w32(REG.QueueReady, 1);
  assert.is(v.drv.r32(REG.QueueDescHigh), 0x0020_0000, 'the register reads what was written');
  v.drv.driverOk();
  assert.ok(v.drv.status & STATUS.NEEDS_RESET);
  assert.match(v.t.lastError ?? '', /queue 0/);
});

test.run();
