// The device + muxer end to end: real Unix sockets in a temp dir, a simulated guest driving
// real split rings (test/unit/vsock/sim.ts).
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, linkSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import * as net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BATCH, VirtioVsock } from '../../../devices/virtio/vsock/device';
import { LOCAL_PORT_MIN, type MuxerOptions } from '../../../devices/virtio/vsock/muxer';
import { VsockConnectError, VsockSetupError } from '../../../devices/virtio/vsock/errors';
import { DEFAULT_CONN_LIMITS } from '../../../devices/virtio/vsock/csm';
import { MAX_PKT_PAYLOAD, OP_CREDIT_REQUEST, OP_RST, OP_RW, SHUTDOWN_RCV, SHUTDOWN_SEND } from '../../../devices/virtio/vsock/packet';
import { readAll, SimGuest, sleep, until, type GuestConn, type SimOptions } from './sim';

const CID = 7;
let dir = '';
let n = 0;

async function world(sim: Partial<SimOptions> = {}, mux: Partial<MuxerOptions> = {}) {
  const uds = join(dir, `v${n++}.sock`);
  const dev = await VirtioVsock.create({ guestCid: CID, udsPath: uds, ...mux });
  const g = new SimGuest(dev, { cid: CID, ...sim });
  g.start();
  return { uds, dev, g };
}

/** Host client: connect to the UDS and send CONNECT; resolves with the socket and the OK line. */
function hostConnect(uds: string, port: number): Promise<{ s: net.Socket; ok: string; rest: Buffer }> {
  return new Promise((resolve, reject) => {
    const s = net.connect(uds);
    let buf = Buffer.alloc(0);
    const onData = (d: Buffer): void => {
      buf = Buffer.concat([buf, d]);
      const nl = buf.indexOf(10);
      if (nl < 0) return;
      s.off('data', onData).off('close', onClose);
      s.pause();
      resolve({ s, ok: buf.subarray(0, nl).toString(), rest: buf.subarray(nl + 1) });
    };
    const onClose = (): void => reject(new Error('closed before OK'));
    s.on('data', onData).on('close', onClose).on('error', () => {});
    s.write(`CONNECT ${port}\n`);
  });
}

/** What one connection may buffer host -> guest: its limit plus the one socket read that crossed it. */
const RX_BOUND = DEFAULT_CONN_LIMITS.rxBufferLimit + 64 * 1024;

const closed = (s: net.Socket): Promise<void> => new Promise((r) => (s.destroyed ? r() : s.once('close', () => r())));

test.before(() => { dir = mkdtempSync(join(tmpdir(), 'tsvmm-vsock-')); });
test.after(() => { rmSync(dir, { recursive: true, force: true }); });

test('listen: socket is 0600, removed on close; an in-use path is refused, a stale one replaced', async () => {
  const { uds, dev } = await world();
  assert.is(statSync(uds).mode & 0o777, 0o600);
  assert.ok(statSync(uds).isSocket());
  const other = new VirtioVsock({ guestCid: CID, udsPath: uds });
  try {
    await other.muxer.listen();
    assert.unreachable('second listen on a live path must fail');
  } catch (e) {
    assert.instance(e, VsockSetupError);
  }
  await dev.close();
  assert.is(existsSync(uds), false);
  // A stale socket (its server died without removing it): a second name for a socket whose
  // server then closes stays behind, and connecting to it is refused.
  const live = join(dir, 'live.sock');
  const stale = join(dir, 'stale.sock');
  const srv = net.createServer();
  await new Promise<void>((r) => srv.listen(live, r));
  linkSync(live, stale);
  await new Promise<void>((r) => srv.close(() => r()));
  assert.ok(statSync(stale).isSocket());
  const d2 = await VirtioVsock.create({ guestCid: CID, udsPath: stale });
  assert.is(statSync(stale).mode & 0o777, 0o600);
  const probe = net.connect(stale);
  await new Promise<void>((resolve, reject) => probe.once('connect', resolve).once('error', reject));
  probe.destroy();
  await d2.close();
  assert.is(existsSync(stale), false);
  assert.equal(await readdirSafe(dir).then((f) => f.filter((x) => x.startsWith('.tsvmm'))), []);
});

async function readdirSafe(d: string): Promise<string[]> {
  const { readdir } = await import('node:fs/promises');
  return readdir(d);
}

test('host-initiated: CONNECT/OK, data both ways, clean close from the host', async () => {
  const { uds, dev, g } = await world();
  let gc: GuestConn | undefined;
  g.listen(1234, (c) => { gc = c; });
  const { s, ok, rest } = await hostConnect(uds, 1234);
  const m = /^OK (\d+)$/.exec(ok);
  assert.ok(m, ok);
  const hostPort = Number(m![1]);
  assert.ok(hostPort >= LOCAL_PORT_MIN && hostPort < 2 ** 31);
  assert.is(rest.length, 0);
  assert.ok(gc);
  assert.is(gc!.hostPort, hostPort);
  s.resume();
  const got: Buffer[] = [];
  s.on('data', (d: Buffer) => got.push(d));
  s.write('hello guest');
  await g.waitFor(gc!, () => gc!.receivedBytes === 11, 'host data');
  assert.is(Buffer.concat(gc!.received).toString(), 'hello guest');
  await g.write(gc!, Buffer.from('hello host'));
  await until(() => Buffer.concat(got).toString() === 'hello host', 'guest data');
  // Host closes: the guest reads EOF (SHUTDOWN_SEND) and closes (SHUTDOWN both); we answer RST.
  const gone = closed(s);
  s.end();
  await g.waitFor(gc!, () => gc!.state === 'closed', 'guest close');
  assert.is(gc!.peerShutdown, SHUTDOWN_SEND);
  assert.ok(gc!.rst);
  await gone;
  await until(() => dev.muxer.connectionCount === 0, 'connection removed');
  assert.is(dev.counters.connectionsOpened, 1);
  assert.is(dev.counters.connectionsClosed, 1);
  assert.is(dev.counters.connectionsReset, 0);
  assert.is(dev.counters.bytesToGuest, 11);
  assert.is(dev.counters.bytesFromGuest, 10);
  await dev.close();
});

test('host-initiated: data sent right after the CONNECT line is not lost', async () => {
  const { uds, dev, g } = await world();
  let gc: GuestConn | undefined;
  g.listen(9, (c) => { gc = c; });
  const s = net.connect(uds);
  s.write('connect 9\nearly bytes');
  await until(() => gc !== undefined && gc.receivedBytes === 11, 'early data');
  assert.is(Buffer.concat(gc!.received).toString(), 'early bytes');
  s.destroy();
  await dev.close();
});

test('host-initiated to a guest port nobody listens on: RST, client closed without OK', async () => {
  const { uds, dev, g } = await world();
  const s = net.connect(uds);
  const data = readAll(s);
  s.write('CONNECT 4321\n');
  assert.is((await data).length, 0);
  await until(() => dev.muxer.connectionCount === 0, 'removed');
  assert.is(dev.counters.connectionsReset, 1);
  assert.ok(g.rxLog.some((h) => h.op === 1 && h.dstPort === 4321));
  await dev.close();
});

test('host-initiated: a guest that never answers is timed out, the client closed', async () => {
  const { uds, dev } = await world({ ignoreRequests: true }, { connLimits: { connectTimeoutMs: 100 } });
  const s = net.connect(uds);
  const t0 = Date.now();
  const data = readAll(s);
  s.write('CONNECT 5\n');
  assert.is((await data).length, 0);
  assert.ok(Date.now() - t0 >= 90, 'closed too early');
  await until(() => dev.muxer.connectionCount === 0, 'removed');
  assert.is(dev.counters.connectionsReset, 1);
  await dev.close();
});

test('bad clients: death before the newline, garbage, overlong line, silence; others unaffected', async () => {
  const { uds, dev, g } = await world({}, { commandTimeoutMs: 150 });
  let gc: GuestConn | undefined;
  g.listen(77, (c) => { gc = c; });
  const good = await hostConnect(uds, 77);
  assert.match(good.ok, /^OK /);

  const dying = net.connect(uds);
  dying.on('error', () => {});
  dying.write('CONN');
  await sleep(20);
  dying.destroy();

  for (const line of ['HELLO 5\n', 'connect\n', 'connect -1\n', 'connect 4294967296\n', 'connect 12x\n', 'x'.repeat(100)]) {
    const s = net.connect(uds);
    const all = readAll(s);
    s.write(line);
    assert.is((await all).length, 0, `${JSON.stringify(line)} must be refused`);
  }
  const silent = net.connect(uds);
  const silentData = readAll(silent);
  assert.is((await silentData).length, 0); // command timeout
  await until(() => dev.muxer.connectionCount === 1, 'only the good one left');
  // The good connection still works.
  good.s.resume();
  good.s.write('still here');
  await g.waitFor(gc!, () => gc!.receivedBytes === 10, 'data on the good connection');
  assert.ok(dev.counters.connectionsRefused >= 8);
  good.s.destroy();
  await dev.close();
});

test('guest-initiated: connects to PATH_P, data both ways, guest close', async () => {
  const { uds, dev, g } = await world();
  const got: Buffer[] = [];
  let hostSide: net.Socket | undefined;
  const srv = net.createServer((s) => {
    hostSide = s;
    s.on('data', (d: Buffer) => got.push(d));
    s.write('welcome');
  });
  await new Promise<void>((r) => srv.listen(`${uds}_5000`, r));
  const c = await g.connect(5000);
  assert.is(c.state, 'established');
  await g.write(c, Buffer.from('from guest'));
  await until(() => Buffer.concat(got).toString() === 'from guest', 'guest data at host');
  await g.waitFor(c, () => c.receivedBytes === 7, 'welcome');
  assert.is(Buffer.concat(c.received).toString(), 'welcome');
  // Guest closes (as Linux close(): SHUTDOWN both) -> host gets EOF, guest gets RST.
  const hostClosed = closed(hostSide!);
  g.shutdown(c, SHUTDOWN_RCV | SHUTDOWN_SEND);
  await g.waitFor(c, () => c.rst, 'RST after shutdown');
  await hostClosed;
  await until(() => dev.muxer.connectionCount === 0, 'removed');
  assert.is(dev.counters.connectionsReset, 0);
  srv.close();
  await dev.close();
});

test('guest-initiated: half-close each way keeps the other direction open', async () => {
  const { uds, dev, g } = await world({ keepOpenOnEof: true });
  let hostSide: net.Socket | undefined;
  const hostGot: Buffer[] = [];
  let hostEof = false;
  const srv = net.createServer({ allowHalfOpen: true }, (s) => {
    hostSide = s;
    s.on('data', (d: Buffer) => hostGot.push(d));
    s.on('end', () => { hostEof = true; });
  });
  await new Promise<void>((r) => srv.listen(`${uds}_6000`, r));
  const c = await g.connect(6000);
  await until(() => hostSide !== undefined, 'accepted');
  // Guest shuts its sending side: host reads EOF, but can still send.
  await g.write(c, Buffer.from('last words'));
  g.shutdown(c, SHUTDOWN_SEND);
  await until(() => hostEof, 'host EOF');
  assert.is(Buffer.concat(hostGot).toString(), 'last words');
  hostSide!.write('reply after EOF');
  await g.waitFor(c, () => c.receivedBytes === 15, 'reply');
  // Host ends too: guest gets the full SHUTDOWN and resets.
  hostSide!.end();
  await g.waitFor(c, () => c.state === 'closed', 'closed');
  await until(() => dev.muxer.connectionCount === 0, 'removed');
  srv.close();
  await dev.close();
});

test('guest-initiated with no listener at PATH_P: RST', async () => {
  const { dev, g } = await world();
  const c = await g.connect(5555);
  assert.is(c.state, 'closed');
  assert.ok(c.rst);
  assert.is(dev.counters.connectionsRefused, 1);
  assert.is(dev.muxer.connectionCount, 0);
  await dev.close();
});

test('unroutable guest packets are answered with RST; malformed ones dropped and counted', async () => {
  const { dev, g } = await world();
  g.sendRaw({ srcPort: 1, dstPort: 2, op: 5 }, new Uint8Array(3));
  await until(() => g.rxLog.some((h) => h.op === OP_RST && h.dstPort === 1 && h.srcPort === 2), 'RST');
  g.sendRaw({ srcPort: 1, dstPort: 2, op: OP_RST }); // never answer an RST
  g.sendRaw({ srcPort: 1, dstPort: 2, type: 2, op: 1 }); // SEQPACKET request -> RST
  g.sendRaw({ srcPort: 1, dstPort: 2, srcCid: 99n });
  g.sendRaw({ srcPort: 1, dstPort: 2, dstCid: 5n });
  g.sendRaw({ srcPort: 1, dstPort: 2, len: 100 }); // len past chain
  g.sendRaw({ srcPort: 1, dstPort: 2, len: 70000 }, new Uint8Array(10)); // len > 64 KiB
  await sleep(20);
  assert.is(dev.counters.dropped.unroutable, 2);
  assert.is(dev.counters.dropped['bad-type'], 1);
  assert.is(dev.counters.dropped['bad-src-cid'], 1);
  assert.is(dev.counters.dropped['bad-dst-cid'], 1);
  assert.is(dev.counters.dropped['len-past-chain'], 1);
  assert.is(dev.counters.dropped['len-too-large'], 1);
  assert.is(g.rxLog.filter((h) => h.op === OP_RST).length, 2);
  assert.is(g.needsResetReason, undefined);
  await dev.close();
});

for (const eventIdx of [false, true]) test(`a TX flood is handled BATCH chains per event-loop turn${eventIdx ? ' (EVENT_IDX driver: one kick)' : ''}`, async () => {
  const { dev, g } = await world({ eventIdx });
  const ring = g.rings[1]!;
  const { VsockHdr, HDR_SIZE, HOST_CID } = await import('../../../devices/virtio/vsock/packet');
  for (let i = 0; i < 200; i++) {
    const h = VsockHdr.encode({ srcCid: 7n, dstCid: HOST_CID, srcPort: i, dstPort: 9, len: 0, type: 1, op: OP_RST, flags: 0, bufAlloc: 0, fwdCnt: 0 });
    ring.add([{ len: HDR_SIZE, write: false, data: h }], false);
  }
  ring.publish();
  assert.ok(ring.needsKick());
  dev.notify(1);
  assert.is(g.queues[1]!.usedIndex, BATCH);
  if (eventIdx) {
    // Still draining: avail_event stays behind, so more chains need no kick.
    const h = VsockHdr.encode({ srcCid: 7n, dstCid: HOST_CID, srcPort: 200, dstPort: 9, len: 0, type: 1, op: OP_RST, flags: 0, bufAlloc: 0, fwdCnt: 0 });
    ring.add([{ len: HDR_SIZE, write: false, data: h }]);
    assert.not.ok(ring.needsKick(), 'no kick while the device drains');
  }
  const total = eventIdx ? 201 : 200;
  await until(() => g.queues[1]!.usedIndex === total, 'the rest on later turns');
  assert.is(dev.counters.dropped.unroutable, total);
  if (eventIdx) {
    // Drained: the device asks for a kick at the next buffer.
    ring.add([{ len: HDR_SIZE, write: false, data: new Uint8Array(HDR_SIZE) }]);
    assert.ok(ring.needsKick(), 'empty ring: the next buffer is kicked');
  }
  await dev.close();
});

test('a broken ring puts the device into NEEDS_RESET instead of throwing', async () => {
  const { dev, g } = await world();
  g.rings[1]!.pushRawHead(999); // head index beyond the queue size
  dev.notify(1);
  assert.match(g.needsResetReason ?? '', /out of range/);
  assert.is(dev.counters.queueErrors, 1);
  await dev.close();
});

test('connect(port) from inside tsvmm: a Duplex without the UDS; refusal is a typed error', async () => {
  const { dev, g } = await world();
  let gc: GuestConn | undefined;
  g.listen(42, (c) => { gc = c; });
  const d = await dev.connect(42);
  d.write('ping');
  await g.waitFor(gc!, () => gc!.receivedBytes === 4, 'ping');
  const got = readAll(d);
  await g.write(gc!, Buffer.from('pong'));
  g.shutdown(gc!, SHUTDOWN_SEND);
  assert.is((await got).toString(), 'pong');
  d.end();
  await g.waitFor(gc!, () => gc!.state === 'closed', 'closed');
  try {
    await dev.connect(43);
    assert.unreachable();
  } catch (e) {
    assert.instance(e, VsockConnectError);
    assert.is((e as VsockConnectError).reason, 'reset');
  }
  await dev.close();
});

test('connection limit: the client beyond it is closed, the others keep working', async () => {
  const { uds, dev, g } = await world({}, { maxConnections: 3 });
  g.listen(1);
  const cs = [];
  for (let i = 0; i < 3; i++) cs.push(await hostConnect(uds, 1));
  const extra = net.connect(uds);
  const data = readAll(extra);
  extra.write('CONNECT 1\n');
  assert.is((await data).length, 0);
  try {
    await dev.connect(1);
    assert.unreachable();
  } catch (e) {
    assert.is((e as VsockConnectError).reason, 'limit');
  }
  for (const c of cs) c.s.destroy();
  await until(() => dev.muxer.connectionCount === 0, 'all gone');
  cs.push(await hostConnect(uds, 1)); // room again
  cs[3]!.s.destroy();
  await dev.close();
});

test('200 concurrent host-initiated connections, each echoed by the guest', async () => {
  const { uds, dev, g } = await world();
  g.listen(7, (c) => {
    c.onData = (d) => { void g.write(c, d); };
  });
  const clients = await Promise.all(Array.from({ length: 200 }, () => hostConnect(uds, 7)));
  assert.is(dev.muxer.connectionCount, 200);
  const ports = new Set(clients.map((c) => c.ok));
  assert.is(ports.size, 200);
  const results = await Promise.all(clients.map(({ s }, i) => new Promise<string>((resolve) => {
    const msg = `client ${i} says hi`;
    let acc = '';
    s.on('data', (d: Buffer) => { acc += d.toString(); if (acc.length >= msg.length) resolve(acc); });
    s.resume();
    s.write(msg);
  })));
  results.forEach((r, i) => assert.is(r, `client ${i} says hi`));
  for (const { s } of clients) s.destroy();
  await until(() => dev.muxer.connectionCount === 0, 'all closed');
  assert.is(dev.counters.connectionsOpened, 200);
  assert.is(dev.counters.connectionsClosed, 200);
  await dev.close();
});

for (const eventIdx of [false, true]) test(`4 MiB each way through the simulated guest, SHA-256 matches, buffers stay bounded${eventIdx ? ' (EVENT_IDX driver)' : ''}`, async () => {
  const { uds, dev, g } = await world({ rxBufSize: 4096, eventIdx });
  const SIZE = 4 * 1024 * 1024;
  const toGuest = randomBytes(SIZE);
  const toHost = randomBytes(SIZE);
  let gc: GuestConn | undefined;
  const guestHash = createHash('sha256');
  let guestBytes = 0;
  g.listen(1000, (c) => {
    gc = c;
    c.onData = (d) => { guestHash.update(d); guestBytes += d.length; };
  });
  const { s } = await hostConnect(uds, 1000);
  const hostHash = createHash('sha256');
  let hostBytes = 0;
  let maxBuffered = 0;
  let maxTxBuffered = 0;
  s.on('data', (d: Buffer) => {
    hostHash.update(d);
    hostBytes += d.length;
    maxBuffered = Math.max(maxBuffered, dev.muxer.rxBufferedBytes);
    maxTxBuffered = Math.max(maxTxBuffered, dev.muxer.txBufferedBytes);
  });
  s.resume();
  s.write(toGuest);
  await g.write(gc!, toHost, 64 * 1024);
  await until(() => guestBytes === SIZE && hostBytes === SIZE, `transfer (guest ${guestBytes}, host ${hostBytes})`, 30_000);
  assert.is(guestHash.digest('hex'), createHash('sha256').update(toGuest).digest('hex'));
  assert.is(hostHash.digest('hex'), createHash('sha256').update(toHost).digest('hex'));
  assert.ok(maxBuffered <= RX_BOUND, `muxer buffered ${maxBuffered} bytes`);
  assert.ok(maxTxBuffered <= DEFAULT_CONN_LIMITS.bufAlloc, `muxer held ${maxTxBuffered} bytes for the host`);
  assert.is(dev.counters.bytesToGuest, SIZE);
  assert.is(dev.counters.bytesFromGuest, SIZE);
  s.destroy();
  await dev.close();
});

test('guest -> host from a guest with a small buf_alloc (current Linux caps its window to it): no stall', async () => {
  const { uds, dev, g } = await world({ bufAlloc: 24 * 1024 });
  const hostHash = createHash('sha256');
  let hostBytes = 0;
  const srv = net.createServer((s) => s.on('data', (d: Buffer) => { hostHash.update(d); hostBytes += d.length; }));
  await new Promise<void>((r) => srv.listen(`${uds}_7100`, r));
  const c = await g.connect(7100);
  const data = randomBytes(1024 * 1024);
  await g.write(c, data, MAX_PKT_PAYLOAD);
  await until(() => hostBytes === data.length, `all data (${hostBytes})`, 30_000);
  assert.is(hostHash.digest('hex'), createHash('sha256').update(data).digest('hex'));
  srv.close();
  await dev.close();
});

test('counters: RX turns, data packets by fill, turns that found packets waiting and no RX buffer', async () => {
  // One RX buffer: every packet needs its own turn, and the turn after it finds the ring empty.
  const uds = join(dir, `v${n++}.sock`);
  const dev = await VirtioVsock.create({ guestCid: CID, udsPath: uds });
  const g = new SimGuest(dev, { cid: CID });
  g.start(1);
  let gc: GuestConn | undefined;
  g.listen(9, (c) => { gc = c; });
  const { s } = await hostConnect(uds, 9);
  const data = randomBytes(64 * 1024);
  s.write(data);
  await g.waitFor(gc!, () => gc!.receivedBytes === data.length, 'data');
  const c = dev.counters;
  const rws = g.rxLog.filter((h) => h.op === OP_RW).length;
  assert.ok(rws >= 16, `${rws} data packets`);
  assert.is(c.rxDataFull + c.rxDataShortCredit + c.rxDataShortData, rws);
  assert.ok(c.rxDataFull >= rws - 2, `${c.rxDataFull} of ${rws} full`);
  assert.ok(c.rxBatches >= rws + 1, `${c.rxBatches} turns`); // + the REQUEST's
  assert.ok(c.rxBatchUs > 0);
  assert.ok(c.rxNoBuffer >= rws - 1 && c.rxNoBuffer <= c.rxBatches, `${c.rxNoBuffer} turns without a buffer`);
  assert.ok(c.rxNoBufferUs > 0);
  s.destroy();
  await dev.close();
  // With the ring full of buffers, no turn goes without.
  const w = await world();
  let wc: GuestConn | undefined;
  w.g.listen(9, (x) => { wc = x; });
  const h = await hostConnect(w.uds, 9);
  h.s.write(data);
  await w.g.waitFor(wc!, () => wc!.receivedBytes === data.length, 'data');
  assert.equal([w.dev.counters.rxNoBuffer, w.dev.counters.rxNoBufferUs], [0, 0]);
  assert.ok(w.dev.counters.rxBatches > 0);
  h.s.destroy();
  await w.dev.close();
});

for (const eventIdx of [false, true]) test(`the guest packet that reopens its window: the RX fill in the same turn, the TX completion signalled after it${eventIdx ? ' (EVENT_IDX)' : ''}`, async () => {
  const WINDOW = 128 * 1024;
  const { uds, dev, g } = await world({ stallReader: true, bufAlloc: WINDOW, eventIdx });
  let gc: GuestConn | undefined;
  g.listen(12, (c) => { gc = c; });
  const { s } = await hostConnect(uds, 12);
  s.write(randomBytes(4 * WINDOW));
  await g.waitFor(gc!, () => gc!.receivedBytes === WINDOW, 'a full window');
  await sleep(20); // every interrupt of that window taken
  // Each signalUsed the device makes from here, with the RX used index at the time.
  const log: [number, number][] = [];
  const signal = g.ctx.signalUsed;
  (g.ctx as { signalUsed: (i: number) => void }).signalUsed = (i) => {
    log.push([i, g.queues[0]!.usedIndex]);
    signal(i);
  };
  const before = g.queues[0]!.usedIndex;
  g.consume(gc!, WINDOW); // the reader catches up: the guest's CREDIT_UPDATE goes out (TX kick)
  const packets = g.queues[0]!.usedIndex - before;
  assert.ok(packets >= 16, `${packets} RX packets in the turn`); // the whole new window (~128 KiB)
  // One RX signal for the fill, then the TX chain's: after the whole fill, not before it.
  assert.equal(log, [[0, before + packets], [1, before + packets]]);
  (g.ctx as { signalUsed: (i: number) => void }).signalUsed = signal;
  s.destroy();
  await dev.close();
});

test('Linux 6.1 buffer shapes: RX header in its own descriptor, TX payload over two', async () => {
  const { uds, dev, g } = await world({ rxSplitHeader: true, txSplitPayload: true });
  const SIZE = 1024 * 1024 + 7;
  const toGuest = randomBytes(SIZE);
  const toHost = randomBytes(SIZE);
  let gc: GuestConn | undefined;
  const guestGot: Buffer[] = [];
  g.listen(11, (c) => { gc = c; c.onData = (d) => guestGot.push(d); });
  const { s } = await hostConnect(uds, 11);
  const hostGot: Buffer[] = [];
  s.on('data', (d: Buffer) => hostGot.push(d));
  s.resume();
  s.write(toGuest);
  await g.write(gc!, toHost, 30000);
  await until(() => gc!.receivedBytes === SIZE && Buffer.concat(hostGot).length === SIZE, 'transfer', 30_000);
  assert.ok(Buffer.concat(guestGot).equals(toGuest));
  assert.ok(Buffer.concat(hostGot).equals(toHost));
  s.destroy();
  await dev.close();
});

test('a guest that stops reading pauses the host socket (backpressure), no overrun', async () => {
  const { uds, dev, g } = await world({ stallReader: true, bufAlloc: 32 * 1024 });
  let gc: GuestConn | undefined;
  g.listen(3, (c) => { gc = c; });
  const { s } = await hostConnect(uds, 3);
  const big = Buffer.alloc(8 * 1024 * 1024, 1);
  let drained = false;
  s.write(big, () => { drained = true; });
  const requests = () => g.rxLog.filter((h) => h.op === OP_CREDIT_REQUEST).length;
  // Out of credit: no CREDIT_REQUEST before the guest had creditRequestDelayMs to update by itself...
  await sleep(DEFAULT_CONN_LIMITS.creditRequestDelayMs / 2);
  assert.is(requests(), 0);
  await sleep(300);
  // ...then one, through the muxer's timer (the stalled guest's answer moves nothing: no second).
  assert.is(requests(), 1);
  assert.is(gc!.receivedBytes, 32 * 1024); // exactly the guest's credit
  // Bound: the connection's limit plus the one socket read that crossed it.
  assert.ok(dev.muxer.rxBufferedBytes <= RX_BOUND, `buffered ${dev.muxer.rxBufferedBytes}`);
  assert.is(drained, false); // the host writer is held back
  // The reader wakes up: everything flows.
  g.opts.stallReader = false;
  g.consume(gc!, gc!.receivedBytes);
  await until(() => gc!.receivedBytes === big.length, 'all data', 30_000);
  s.destroy();
  await dev.close();
});

test('the total host -> guest budget pauses every socket at once, overshooting by one read at most', async () => {
  const limit = 100 * 1024;
  const { uds, dev, g } = await world({ stallReader: true, bufAlloc: 16 * 1024 }, { totalRxBufferLimit: limit });
  g.listen(4);
  const clients = await Promise.all([0, 1, 2].map(() => hostConnect(uds, 4)));
  const big = Buffer.alloc(4 * 1024 * 1024, 2);
  for (const { s } of clients) s.write(big);
  await sleep(300);
  assert.ok(dev.muxer.rxBufferedBytes >= limit, `buffered ${dev.muxer.rxBufferedBytes}`);
  assert.ok(dev.muxer.rxBufferedBytes <= limit + 64 * 1024, `buffered ${dev.muxer.rxBufferedBytes}`);
  for (const { s } of clients) s.destroy();
  await dev.close();
  assert.is(dev.muxer.rxBufferedBytes, 0);
});

for (const eventIdx of [false, true]) test(`a host reader that stops: past the total TX budget the guest packets wait in its ring${eventIdx ? ' (EVENT_IDX driver)' : ''}`, async () => {
  const limit = 128 * 1024;
  assert.ok(limit < DEFAULT_CONN_LIMITS.bufAlloc); // one connection's window could exceed it
  const { uds, dev, g } = await world({ eventIdx }, { totalTxBufferLimit: limit });
  let hostSide: net.Socket | undefined;
  const hostHash = createHash('sha256');
  let hostBytes = 0;
  const srv = net.createServer((s) => {
    hostSide = s;
    s.pause();
    s.on('data', (d: Buffer) => { hostHash.update(d); hostBytes += d.length; });
  });
  await new Promise<void>((r) => srv.listen(`${uds}_7000`, r));
  const c = await g.connect(7000);
  const data = randomBytes(4 * 1024 * 1024);
  const writing = g.write(c, data, MAX_PKT_PAYLOAD);
  await until(() => dev.muxer.txBlocked, 'TX budget exhausted');
  await sleep(200);
  // At most one packet past the budget; the rest of the guest's window waits in its TX ring.
  assert.ok(dev.muxer.txBufferedBytes <= limit + MAX_PKT_PAYLOAD, `held ${dev.muxer.txBufferedBytes}`);
  const ring = g.rings[1]!;
  const published = new DataView(g.mem.expect(ring.availAddr, 4).slice().buffer).getUint16(2, true);
  assert.ok(published !== g.queues[1]!.availIndex, 'TX chains left in the ring');
  assert.is(g.needsResetReason, undefined);
  // The reader wakes up: everything arrives, in order.
  hostSide!.resume();
  await writing;
  await until(() => hostBytes === data.length, `all data (${hostBytes})`, 30_000);
  assert.is(hostHash.digest('hex'), createHash('sha256').update(data).digest('hex'));
  assert.is(dev.muxer.txBufferedBytes, 0);
  // The packets left in the ring while TX was held back needed no kicks: the device came back by itself.
  if (eventIdx) assert.ok(g.kicks[1]! < dev.counters.txPackets, `${g.kicks[1]} kicks for ${dev.counters.txPackets} TX packets`);
  srv.close();
  await dev.close();
});

test('bytes a closed connection leaves in a slow host socket stay counted until they leave the process', async () => {
  // The guest's clean close (SHUTDOWN both, then RST) while the host reader sleeps: the socket
  // keeps the unflushed bytes for the linger time. They must stay in the TX budget and the fd
  // in the connection count, or churning connections parks unbounded data on the host.
  const limit = 1024 * 1024;
  // A guest that uses our whole 1 MiB window (older Linux does) parks the most per connection.
  const { uds, dev, g } = await world({ bufAlloc: 1024 * 1024 }, { totalTxBufferLimit: limit, connLimits: { shutdownTimeoutMs: 400 } });
  const hostSides: net.Socket[] = [];
  const srv = net.createServer((s) => { hostSides.push(s); s.pause(); });
  await new Promise<void>((r) => srv.listen(`${uds}_8000`, r));
  const parked = 900 * 1024;
  const a = await g.connect(8000);
  await g.write(a, randomBytes(parked), MAX_PKT_PAYLOAD);
  await until(() => dev.counters.bytesFromGuest === parked, 'all of it accepted');
  g.shutdown(a, SHUTDOWN_RCV | SHUTDOWN_SEND);
  g.rst(a);
  await until(() => dev.counters.connectionsClosed === 1, 'the connection is closed');
  // The kernel took what fits its socket buffer; the rest is still ours, and so is the fd.
  const held = dev.muxer.txBufferedBytes;
  assert.ok(held >= parked - 512 * 1024, `only ${held} of ${parked} bytes still counted`);
  assert.is(dev.muxer.connectionCount, 1);
  assert.is(dev.muxer.lingeringCount, 1);
  // The next connection's data meets the exhausted budget: it waits in the guest's ring.
  const b = await g.connect(8000);
  void g.write(b, randomBytes(parked), MAX_PKT_PAYLOAD).catch(() => {});
  await until(() => dev.muxer.txBlocked, 'TX budget exhausted by the lingering bytes');
  // The linger time ends: the bytes are dropped with the socket, the budget is free again.
  await until(() => dev.muxer.lingeringCount === 0, 'linger over', 5000);
  await until(() => !dev.muxer.txBlocked, 'TX resumes');
  for (const s of hostSides) s.resume();
  await until(() => dev.counters.bytesFromGuest === 2 * parked, 'second connection done', 10_000);
  srv.close();
  await dev.close();
  assert.is(dev.muxer.txBufferedBytes, 0);
});

test('lingering host sockets hold connection slots: a churning guest cannot pile up fds', async () => {
  const { uds, dev, g } = await world({ bufAlloc: 1024 * 1024 }, { maxConnections: 2, connLimits: { shutdownTimeoutMs: 400 } });
  const srv = net.createServer((s) => s.pause());
  await new Promise<void>((r) => srv.listen(`${uds}_8100`, r));
  for (let i = 0; i < 2; i++) {
    const c = await g.connect(8100);
    assert.is(c.state, 'established');
    await g.write(c, randomBytes(800 * 1024), MAX_PKT_PAYLOAD);
    await until(() => dev.counters.bytesFromGuest === (i + 1) * 800 * 1024, 'accepted');
    g.shutdown(c, SHUTDOWN_RCV | SHUTDOWN_SEND);
    g.rst(c);
  }
  await until(() => dev.counters.connectionsClosed === 2, 'both closed');
  assert.is(dev.muxer.connectionCount, 2, 'their sockets still linger');
  const refused = await g.connect(8100);
  assert.is(refused.state, 'closed', 'no slot while two sockets linger');
  await until(() => dev.muxer.connectionCount === 0, 'linger over', 5000);
  const ok = await g.connect(8100);
  assert.is(ok.state, 'established');
  srv.close();
  await dev.close();
});

test('device reset drops every connection and closes the host sockets', async () => {
  const { uds, dev, g } = await world();
  g.listen(8);
  const a = await hostConnect(uds, 8);
  const b = await hostConnect(uds, 8);
  const both = Promise.all([closed(a.s), closed(b.s)]);
  a.s.resume();
  b.s.resume();
  dev.reset();
  await both;
  assert.is(dev.muxer.connectionCount, 0);
  assert.is(dev.counters.connectionsClosed, 2);
  await dev.close();
});

test('transportReset: TRANSPORT_RESET event posted, connections dropped', async () => {
  const { uds, dev, g } = await world();
  g.listen(8);
  const a = await hostConnect(uds, 8);
  const gone = closed(a.s);
  a.s.resume();
  dev.transportReset();
  await gone;
  await until(() => g.events.length === 1, 'event');
  assert.equal(g.events, [0]);
  assert.is(dev.muxer.connectionCount, 0);
  await dev.close();
});

test('config space: guest_cid little endian, read-only, no features', async () => {
  const dev = new VirtioVsock({ guestCid: 0x12345678 });
  const b = new Uint8Array(8);
  dev.readConfig(0, b);
  assert.equal([...b], [0x78, 0x56, 0x34, 0x12, 0, 0, 0, 0]);
  const hi = new Uint8Array(4);
  dev.readConfig(4, hi);
  assert.equal([...hi], [0, 0, 0, 0]);
  const past = new Uint8Array(4).fill(9);
  dev.readConfig(8, past);
  assert.equal([...past], [0, 0, 0, 0]);
  dev.writeConfig();
  dev.readConfig(0, b);
  assert.is(b[0], 0x78);
  assert.is(dev.deviceType, 19);
  assert.is(dev.deviceFeatures, 0n);
  assert.equal(dev.queueMaxSizes, [256, 256, 256]);
});

test.run();
