// The vsock device behind its virtio-mmio transport, reset by its driver in the middle of host ->
// guest traffic — what Linux's virtio_vsock_remove does on an unbind, and guest/hostile.c in a
// loop. The driver frees its rings and RX buffers once Status = 0 has been written, so from then
// on no byte of guest memory may change until it sets the device up again, and afterwards only
// the new rings and the buffers posted in them: a device write at an old address lands in
// memory the guest has reused (a page table, a stack) — a guest crash at best, a security bug.
// A driver that withdraws one queue (QueueReady = 0) while the device runs must be treated the
// same way for that queue. Real Unix sockets, real split rings, every register access through
// the transport.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import * as net from 'node:net';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GuestMemory } from '../../../devices/memory';
import { VIRTIO_F_VERSION_1 } from '../../../devices/virtio/device';
import { MmioTransport, REG, STATUS } from '../../../devices/virtio/mmio';
import { VIRTQ_DESC_F_WRITE } from '../../../devices/virtio/queue';
import { EVQ, RXQ, TXQ, VirtioVsock } from '../../../devices/virtio/vsock/device';
import { HDR_SIZE, HOST_CID, OP_REQUEST, OP_RESPONSE, OP_RST, OP_RW, TYPE_STREAM, VsockHdr, type VsockHeader } from '../../../devices/virtio/vsock/packet';
import { layoutQueue, Rings, SimDriver, type FakeMemory, type QueueLayout } from '../virtio/sim';
import { sleep, until } from './sim';

const CID = 3;
const HOST_PORT = 5000;
const RAM = 1024 * 1024;
/** Queue size the driver picks (≤ the device's 256): 64, as many RX buffers as one device batch. */
const QN = 64;
const RX_BUF = 2048;
/** Advertised receive window: large enough that the test never needs a credit update. */
const BUF_ALLOC = 64 * 1024 * 1024;

/** One set-up of the device: three rings and their buffers, all inside [base, base + SPAN). */
const SPAN = 0x30000;
interface Generation {
  readonly base: number;
  readonly lay: readonly QueueLayout[];
  readonly rx: Rings;
  readonly tx: Rings;
  readonly ev: Rings;
  readonly rxBufs: number;
  readonly txBufs: number;
  readonly evBufs: number;
}

/**
 * A guest: memory, the transport in front of the device, a driver that sets it up as Linux does
 * (virtio_mmio + virtio_transport), and just enough of a vsock stack to open one connection to
 * the host and count the bytes that come back. Interrupts reach it a turn later, as they would
 * reach a vCPU.
 */
class Guest {
  readonly backing = new Uint8Array(RAM);
  readonly mem = new GuestMemory([{ gpa: 0, bytes: this.backing }]);
  readonly fake: FakeMemory = { mem: this.mem, backing: this.backing, holeIntact: () => true, inRam: () => true };
  readonly t: MmioTransport;
  readonly drv: SimDriver;
  gen: Generation | undefined;
  irqs = 0;
  received = 0;
  established = false;
  /**
   * Called from the interrupt handler after the used RX buffers were read, before they are
   * reposted; true: the driver gave the queue up (reset, withdrew it), so they are not.
   */
  onRx: (() => boolean) | undefined;
  private txSlot = 0;
  private srcPort = 1000;

  constructor(readonly dev: VirtioVsock) {
    this.t = new MmioTransport(dev, this.mem, {
      trigger: () => {
        this.irqs++;
        setImmediate(() => this.interrupt());
      },
    });
    this.drv = new SimDriver(this.t, this.fake);
  }

  /** virtio_vsock_probe at `base`: rings, 64 RX buffers and 4 event buffers posted, DRIVER_OK. */
  bringUp(base: number): void {
    const lay = [0, 1, 2].map((i) => layoutQueue(base + i * 0x1000, QN));
    const g: Generation = {
      base, lay,
      rx: new Rings(this.fake, lay[RXQ]!), tx: new Rings(this.fake, lay[TXQ]!), ev: new Rings(this.fake, lay[EVQ]!),
      txBufs: base + 0x3000, evBufs: base + 0x4000, rxBufs: base + 0x10000,
    };
    if (!this.drv.negotiate(VIRTIO_F_VERSION_1)) throw new Error('FEATURES_OK refused');
    for (const i of [RXQ, TXQ, EVQ]) {
      (i === RXQ ? g.rx : i === TXQ ? g.tx : g.ev).clear(lay[i]!);
      this.drv.setupQueue(i, lay[i]!);
    }
    // One descriptor per buffer, for good: descriptor i is buffer i (Linux's RX refill, simplified).
    for (let i = 0; i < QN; i++) {
      g.rx.writeDesc(lay[RXQ]!.desc, i, g.rxBufs + i * RX_BUF, RX_BUF, VIRTQ_DESC_F_WRITE);
      g.rx.pushAvail(i);
    }
    for (let i = 0; i < 4; i++) {
      g.ev.writeDesc(lay[EVQ]!.desc, i, g.evBufs + i * 8, 8, VIRTQ_DESC_F_WRITE);
      g.ev.pushAvail(i);
    }
    this.gen = g;
    this.established = false;
    this.drv.driverOk();
  }

  /** Sends one header-only packet on the TX queue and notifies (the device takes it at once). */
  send(h: Partial<VsockHeader>): void {
    const g = this.gen!;
    const slot = this.txSlot++ % QN;
    const at = g.txBufs + slot * 64;
    this.mem.write(at, VsockHdr.encode({
      srcCid: BigInt(CID), dstCid: HOST_CID, srcPort: this.srcPort, dstPort: HOST_PORT, len: 0, type: TYPE_STREAM,
      op: OP_RW, flags: 0, bufAlloc: BUF_ALLOC, fwdCnt: 0, ...h,
    }));
    g.tx.writeDesc(g.lay[TXQ]!.desc, slot, at, HDR_SIZE, 0);
    g.tx.pushAvail(slot);
    this.drv.notify(TXQ);
    g.tx.takeUsed();
  }

  /** A new connection from a fresh guest port to the host's HOST_PORT. */
  connect(): void {
    this.srcPort++;
    this.received = 0;
    this.send({ op: OP_REQUEST });
  }

  /** vm_interrupt + virtio_transport_rx_work: ack, read used RX buffers, repost them, kick. */
  private interrupt(): void {
    const g = this.gen;
    if (!g) return; // no handler while unbound (a real line would count a spurious interrupt)
    this.drv.interrupt();
    const used = g.rx.takeUsed();
    for (const u of used) {
      const h = VsockHdr.read(this.mem.expect(g.rxBufs + u.id * RX_BUF, HDR_SIZE));
      if (h.dstPort !== this.srcPort) continue;
      if (h.op === OP_RESPONSE) this.established = true;
      if (h.op === OP_RW) this.received += h.len;
    }
    if (this.onRx?.()) return;
    for (const u of used) g.rx.pushAvail(u.id);
    if (used.length) this.drv.notify(RXQ);
  }

  /** vm_reset (Status = 0), then the rings and buffers are the guest's again. */
  reset(): void {
    this.gen = undefined;
    this.drv.w32(REG.Status, 0);
  }
}

/** Offsets of the bytes that differ between `a` and `b` outside [from, to), at most 8. */
function changedOutside(a: Uint8Array, b: Uint8Array, from = 0, to = 0): number[] {
  const out: number[] = [];
  for (let i = 0; i < a.length && out.length < 8; i++) if (a[i] !== b[i] && (i < from || i >= to)) out.push(i);
  return out;
}

let dir = '';
test.before(() => { dir = mkdtempSync(join(tmpdir(), 'tsvmm-vsock-reset-')); });
test.after(() => { rmSync(dir, { recursive: true, force: true }); });

/** A host service at PATH_5000 that streams bytes to every connection as fast as it is read. */
interface World {
  uds: string;
  dev: VirtioVsock;
  g: Guest;
  server: net.Server;
  sockets: net.Socket[];
}

async function world(): Promise<World> {
  const uds = join(dir, `v${Math.random().toString(36).slice(2)}.sock`);
  const dev = await VirtioVsock.create({ guestCid: CID, udsPath: uds });
  const sockets: net.Socket[] = [];
  const chunk = Buffer.alloc(64 * 1024, 0x5a);
  const server = net.createServer((s) => {
    sockets.push(s);
    s.on('error', () => {});
    const pump = (): void => {
      while (!s.destroyed && s.write(chunk));
    };
    s.on('drain', pump);
    pump();
  });
  await new Promise<void>((r) => server.listen(`${uds}_${HOST_PORT}`, r));
  return { uds, dev, g: new Guest(dev), server, sockets };
}

/** Runs `body` in a fresh world and tears it down whatever happens (a failed check must not leave sockets open). */
async function inWorld(body: (w: World) => Promise<void>): Promise<void> {
  const w = await world();
  try {
    await body(w);
  } finally {
    for (const s of w.sockets) s.destroy();
    w.server.close();
    await w.dev.close();
  }
}

/** A host client asking for guest port `port` and writing to it: traffic the device has for the guest whenever it runs. */
function hostClient(w: World, port: number): net.Socket {
  const s = net.connect(w.uds);
  w.sockets.push(s);
  s.on('error', () => {});
  s.write(`CONNECT ${port}\n`);
  s.write(Buffer.alloc(4096, 0x33));
  return s;
}

test('a reset in the middle of host -> guest traffic: no guest byte changes after Status = 0, then only the new rings and buffers', () => inWorld(async (w) => {
  const { g, dev } = w;
  g.bringUp(0);
  g.connect();
  await until(() => g.established, 'RESPONSE');
  // Reset from the interrupt handler with the device mid-stream: the RX ring was just filled
  // (a full batch), more host data waits in the muxer, the device's next RX turn is scheduled.
  let snapshot: Uint8Array | undefined;
  let pendingAtReset = false;
  let irqsAtReset = 0;
  g.onRx = () => {
    if (g.received < 256 * 1024) return false;
    g.onRx = undefined;
    pendingAtReset = dev.muxer.hasPendingRx();
    g.reset();
    snapshot = g.backing.slice();
    irqsAtReset = g.irqs;
    return true;
  };
  await until(() => snapshot !== undefined, 'the reset');
  assert.ok(pendingAtReset, 'the muxer still had data for the guest when the driver reset the device');
  assert.is(g.t.deviceStatus, 0);
  assert.is(dev.muxer.connectionCount, 0, 'the reset dropped the connection');

  // The device's scheduled turns come and go, timers run, and a host client asks for a guest
  // port: the muxer has a REQUEST for the guest that must wait for a driver.
  hostClient(w, 7000);
  await sleep(200);
  assert.equal(changedOutside(snapshot!, g.backing), [], 'guest bytes written after the reset');
  assert.is(g.irqs, irqsAtReset, 'interrupts raised after the reset');

  // Set up again elsewhere (the freed pages went back to the guest): the device works there and
  // touches nothing outside the new generation's rings and buffers.
  const base = 0x80000;
  g.bringUp(base);
  g.connect();
  await until(() => g.established && g.received >= 256 * 1024, 'a stream over the new rings');
  assert.equal(changedOutside(snapshot!, g.backing, base, base + SPAN), [], 'bytes written outside the new rings and buffers');
}));

test('the reset loop of guest/hostile.c: unbound, DRIVER_OK with a ring outside RAM 20 times, rebound — guest memory untouched until the rebind', () => inWorld(async (w) => {
  const { g } = w;
  g.bringUp(0);
  g.connect();
  await until(() => g.received >= 64 * 1024, 'traffic');
  g.reset();
  const snapshot = g.backing.slice();
  const d = g.drv;
  for (let k = 0; k < 20; k++) {
    d.w32(REG.Status, 0);
    d.w32(REG.Status, STATUS.ACKNOWLEDGE | STATUS.DRIVER);
    d.writeDriverFeatures(VIRTIO_F_VERSION_1);
    d.w32(REG.Status, STATUS.ACKNOWLEDGE | STATUS.DRIVER | STATUS.FEATURES_OK);
    d.w32(REG.QueueSel, RXQ);
    d.w32(REG.QueueNum, QN);
    for (const lo of [REG.QueueDescLow, REG.QueueDriverLow, REG.QueueDeviceLow]) {
      d.w32(lo, 0);
      d.w32(lo + 4, 0xfff00000);
    }
    d.w32(REG.QueueReady, 1);
    d.w32(REG.Status, STATUS.ACKNOWLEDGE | STATUS.DRIVER | STATUS.FEATURES_OK | STATUS.DRIVER_OK);
    assert.ok(g.t.deviceStatus & STATUS.NEEDS_RESET, `poke ${k}: the device refused the ring`);
    await sleep(5);
  }
  d.w32(REG.Status, 0);
  hostClient(w, 7000);
  await sleep(100);
  assert.equal(changedOutside(snapshot, g.backing), [], 'guest bytes written during the poke loop');
  g.bringUp(0x80000);
  g.connect();
  await until(() => g.received >= 64 * 1024, 'a stream after the rebind');
  assert.equal(changedOutside(snapshot, g.backing, 0x80000, 0x80000 + SPAN), [], 'bytes written outside the new rings and buffers');
}));

test('QueueReady = 0 on the RX queue with buffers posted: that ring and its buffers are never written again', () => inWorld(async (w) => {
  const { g } = w;
  g.bringUp(0);
  g.connect();
  await until(() => g.received >= 64 * 1024, 'traffic');
  // The guest ends its stream (RST) and leaves every RX buffer posted, then withdraws the queue.
  g.send({ op: OP_RST });
  await sleep(50);
  const rx = g.gen!;
  g.drv.w32(REG.QueueSel, RXQ);
  g.drv.w32(REG.QueueReady, 0);
  const before = g.backing.slice();
  // A host client asks for a guest port (a REQUEST for the RX queue) and the guest kicks it.
  hostClient(w, 7000);
  await sleep(100);
  g.drv.notify(RXQ);
  await sleep(100);
  const lay = rx.lay[RXQ]!;
  const changed = changedOutside(before, g.backing).filter((i) => (i >= lay.desc && i < lay.used + 6 + 8 * QN) || (i >= rx.rxBufs && i < rx.rxBufs + QN * RX_BUF));
  assert.equal(changed, [], 'RX ring or buffer bytes written after QueueReady = 0');
}));

test.run();
