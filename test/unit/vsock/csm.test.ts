import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { type ByteBudget, Connection, DEFAULT_CONN_LIMITS, type HostStream } from '../../../devices/virtio/vsock/csm';
import { newCounters } from '../../../devices/virtio/vsock/counters';
import {
  VsockHdr, HDR_SIZE, HOST_CID, MAX_PKT_PAYLOAD, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RST, OP_RW,
  OP_SHUTDOWN, RxPacketWriter, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM, type VsockHeader,
} from '../../../devices/virtio/vsock/packet';
import type { IoVecBuffer } from '../../../devices/virtio/iovec';
import { iovOf } from '../virtio/iov';

const GUEST = 3n;

/** A host stream that records what the connection does; flushes are manual. */
class FakeStream implements HostStream {
  written: Uint8Array[] = [];
  pendingFlush: (() => void)[] = [];
  ended = false;
  closed: 'graceful' | 'abort' | undefined;
  paused = false;
  autoFlush = true;
  write(data: IoVecBuffer, offset: number, len: number, flushed: () => void): void {
    this.written.push(data.copyOut(offset, len)); // the views die with the call, as guest memory would be reused
    if (this.autoFlush) flushed();
    else this.pendingFlush.push(flushed);
  }
  flushAll(): void {
    const f = this.pendingFlush;
    this.pendingFlush = [];
    for (const cb of f) cb();
  }
  end(): void { this.ended = true; }
  close(graceful: boolean): void { this.closed = graceful ? 'graceful' : 'abort'; }
  pause(): void { this.paused = true; }
  resume(): void { this.paused = false; }
  get bytes(): number { return this.written.reduce((n, b) => n + b.length, 0); }
}

function setup(kind: 'local' | 'peer' = 'peer', over: { rxBufferLimit?: number; budget?: ByteBudget; txBudget?: ByteBudget } = {}) {
  let now = 1000;
  const stream = new FakeStream();
  const counters = newCounters();
  const budget = over.budget ?? { used: 0, limit: 1 << 30 };
  const txBudget = over.txBudget ?? { used: 0, limit: 1 << 30 };
  const p = {
    localPort: 1 << 30, peerPort: 777, guestCid: GUEST, stream, counters, rxBudget: budget, txBudget, clock: () => now,
    limits: { connectTimeoutMs: 100, shutdownTimeoutMs: 50, ...(over.rxBufferLimit ? { rxBufferLimit: over.rxBufferLimit } : {}) },
  };
  const conn = kind === 'local' ? Connection.localInit(p) : Connection.peerInit(p, gh({ op: OP_REQUEST, bufAlloc: 8192 }));
  return { conn, stream, counters, budget, txBudget, advance: (ms: number) => { now += ms; return now; } };
}

const gh = (h: Partial<VsockHeader>): VsockHeader => ({
  srcCid: GUEST, dstCid: HOST_CID, srcPort: 777, dstPort: 1 << 30, len: 0, type: TYPE_STREAM, op: OP_RW,
  flags: 0, bufAlloc: 8192, fwdCnt: 0, ...h,
});

/** Pulls the next packet out of the connection into a buffer of `size` bytes. */
function rx(conn: Connection, size = 4096): { hdr: VsockHeader; payload: Buffer } | undefined {
  const buf = new Uint8Array(size);
  const w = new RxPacketWriter(iovOf(buf));
  if (!conn.fillRx(w)) return undefined;
  return { hdr: VsockHdr.read(buf), payload: Buffer.from(buf.subarray(HDR_SIZE, w.written)) };
}

function established() {
  const s = setup('peer');
  s.conn.hostConnected();
  const r = rx(s.conn)!;
  assert.is(r.hdr.op, OP_RESPONSE);
  assert.is(s.conn.state, 'established');
  return s;
}

/** A TX packet's readable buffers: header descriptor (its bytes are not read here), payload descriptor. */
const pkt = (...payload: Uint8Array[]): IoVecBuffer => iovOf(new Uint8Array(HDR_SIZE), ...payload);
const rw = (data: Uint8Array, h: Partial<VsockHeader> = {}) => [gh({ op: OP_RW, len: data.length, ...h }), pkt(data)] as const;

/** The guest sends `n` bytes in packets of at most MAX_PKT_PAYLOAD (as Linux does). */
function send(conn: Connection, n: number, h: Partial<VsockHeader> = {}): void {
  for (let left = n; left > 0; left -= MAX_PKT_PAYLOAD) conn.handleTx(...rw(new Uint8Array(Math.min(left, MAX_PKT_PAYLOAD)), h));
}

test('peer-init: RESPONSE only after the host connect, addressed back to the guest', () => {
  const { conn } = setup('peer');
  assert.is(conn.state, 'peer-init');
  assert.is(conn.hasPendingRx(), false);
  conn.hostConnected();
  const r = rx(conn)!;
  assert.is(r.hdr.op, OP_RESPONSE);
  assert.is(r.hdr.srcCid, HOST_CID);
  assert.is(r.hdr.dstCid, GUEST);
  assert.is(r.hdr.srcPort, 1 << 30);
  assert.is(r.hdr.dstPort, 777);
  assert.is(r.hdr.type, TYPE_STREAM);
  assert.is(r.hdr.bufAlloc, conn.limits.bufAlloc);
  assert.is(conn.state, 'established');
});

test('local-init: REQUEST, then RESPONSE establishes; connect timeout resets a silent guest', () => {
  const a = setup('local');
  assert.is(rx(a.conn)!.hdr.op, OP_REQUEST);
  assert.ok(a.conn.expiry !== undefined);
  a.conn.handleTx(gh({ op: OP_RESPONSE }), pkt());
  assert.is(a.conn.state, 'established');
  assert.is(a.conn.expiry, undefined);

  const b = setup('local');
  assert.is(rx(b.conn)!.hdr.op, OP_REQUEST);
  assert.is(b.conn.checkExpiry(b.advance(99)), false);
  assert.is(b.conn.checkExpiry(b.advance(1)), true);
  assert.is(b.conn.state, 'killed');
  assert.is(b.stream.closed, 'abort');
  assert.is(rx(b.conn)!.hdr.op, OP_RST);
  assert.is(b.conn.state, 'closed');
  assert.is(b.conn.closeReason, 'timeout');
  assert.is(b.counters.connectionsReset, 1);
});

test('local-init: a guest with no RX buffers (driver not up) still times the connect out', () => {
  const c = setup('local');
  // The REQUEST never leaves: no rx() call. The host client must not wait forever.
  assert.ok(c.conn.expiry !== undefined);
  assert.is(c.conn.checkExpiry(c.advance(100)), true);
  assert.is(c.stream.closed, 'abort');
  assert.is(c.conn.closeReason, 'timeout');
});

test('local-init: guest RST (no listener) closes the host stream; other ops are invalid', () => {
  const a = setup('local');
  rx(a.conn);
  a.conn.handleTx(gh({ op: OP_RW, len: 0 }), pkt());
  assert.is(a.counters.dropped['invalid-for-state'], 1);
  a.conn.handleTx(gh({ op: OP_RST }), pkt());
  assert.is(a.conn.state, 'closed');
  assert.is(a.stream.closed, 'abort');
  assert.is(a.conn.hasPendingRx(), false);
});

test('guest -> host data: forwarded, credit accounted, overrun resets', () => {
  const s = established();
  const { bufAlloc, creditUpdateFreed } = s.conn.limits;
  const g = { bufAlloc }; // a guest whose own buf_alloc does not shrink the window
  s.stream.autoFlush = false;
  const n = creditUpdateFreed + 1000;
  send(s.conn, n, g);
  assert.is(s.stream.bytes, n);
  assert.is(s.conn.ourFreeCredit, bufAlloc - n);
  // Not flushed yet: no credit update to give.
  assert.is(s.conn.hasPendingRx(), false);
  s.stream.flushAll();
  assert.is(s.conn.ourFreeCredit, bufAlloc);
  const u = rx(s.conn)!; // freed >= creditUpdateFreed: proactive update
  assert.is(u.hdr.op, OP_CREDIT_UPDATE);
  assert.is(u.hdr.fwdCnt, n);
  assert.is(s.counters.bytesFromGuest, n);
  // Overrun: the whole window in flight is fine, one byte more is not.
  send(s.conn, bufAlloc, g);
  assert.is(s.conn.state, 'established');
  s.conn.handleTx(...rw(new Uint8Array(1), g));
  assert.is(s.conn.state, 'killed');
  assert.is(rx(s.conn)!.hdr.op, OP_RST);
});

test('guest -> host bytes not yet flushed count against the shared TX budget', () => {
  const txBudget = { used: 0, limit: 1 << 30 };
  const s = setup('peer', { txBudget });
  s.conn.hostConnected();
  rx(s.conn);
  s.stream.autoFlush = false;
  s.conn.handleTx(...rw(new Uint8Array(3000)));
  s.conn.handleTx(...rw(new Uint8Array(2000)));
  assert.is(txBudget.used, 5000);
  s.stream.pendingFlush.shift()!();
  assert.is(txBudget.used, 2000);
  s.stream.flushAll();
  assert.is(txBudget.used, 0);
  // Torn down with bytes unflushed: the stream's buffer went with it, so does its share.
  s.conn.handleTx(...rw(new Uint8Array(700)));
  assert.is(txBudget.used, 700);
  s.conn.kill();
  assert.is(txBudget.used, 0);
  s.stream.flushAll(); // a late flush changes nothing
  assert.is(txBudget.used, 0);

  const h = established();
  h.stream.autoFlush = false;
  h.conn.handleTx(...rw(new Uint8Array(900)));
  assert.is(h.txBudget.used, 900);
  h.conn.hostClosed();
  assert.is(h.txBudget.used, 0);
  h.conn.handleTx(...rw(new Uint8Array(100))); // absorbed: the host is gone
  assert.is(h.txBudget.used, 0);

  const g = established();
  g.stream.autoFlush = false;
  g.conn.handleTx(...rw(new Uint8Array(50)));
  g.conn.handleTx(gh({ op: OP_RST }), pkt());
  assert.is(g.txBudget.used, 0);
});

test('guest CREDIT_REQUEST is answered with our fwd_cnt', () => {
  const s = established();
  s.conn.handleTx(...rw(new Uint8Array(100)));
  assert.is(s.conn.hasPendingRx(), false);
  s.conn.handleTx(gh({ op: OP_CREDIT_REQUEST }), pkt());
  const u = rx(s.conn)!;
  assert.is(u.hdr.op, OP_CREDIT_UPDATE);
  assert.is(u.hdr.fwdCnt, 100);
  assert.is(s.conn.hasPendingRx(), false);
});

test('credit update after creditUpdateFreed bytes, or near exhaustion (threshold); counters wrap at 2^32', () => {
  const s = established();
  const { bufAlloc, creditUpdateFreed, creditUpdateThreshold } = s.conn.limits;
  const g = { bufAlloc }; // a guest whose own buf_alloc does not shrink the window
  s.stream.autoFlush = false;
  // Freed one byte short of creditUpdateFreed while the guest still sees plenty of room: no update.
  send(s.conn, creditUpdateFreed - 1, g);
  s.stream.flushAll();
  assert.ok(bufAlloc - (creditUpdateFreed - 1) >= creditUpdateThreshold);
  assert.is(s.conn.hasPendingRx(), false);
  s.conn.handleTx(...rw(new Uint8Array(1), g));
  s.stream.flushAll();
  const u = rx(s.conn)!;
  assert.is(u.hdr.op, OP_CREDIT_UPDATE);
  assert.is(u.hdr.fwdCnt, creditUpdateFreed);

  // Near exhaustion: the guest sees less than the threshold free; a little freed is worth telling.
  const small = 3000;
  assert.ok(small < creditUpdateFreed);
  s.conn.handleTx(...rw(new Uint8Array(small), g));
  send(s.conn, bufAlloc - small - creditUpdateThreshold / 2, g);
  assert.is(s.conn.hasPendingRx(), false); // nothing freed yet
  s.stream.pendingFlush.shift()!(); // only the small packet reached the host
  assert.is(rx(s.conn)!.hdr.op, OP_CREDIT_UPDATE);
  assert.is(s.conn.hasPendingRx(), false);

  // Wrap: start counters near 2^32 by sending 2^32 - small bytes worth of packets is too slow;
  // instead check the modular arithmetic on a fresh connection with a huge peer fwd_cnt.
  const w = established();
  w.conn.handleTx(gh({ op: OP_CREDIT_UPDATE, bufAlloc: 1000, fwdCnt: 0xfffffff0 }), pkt());
  // rx_cnt is 0, peer fwd_cnt is 2^32-16: in flight = (0 - (2^32-16)) mod 2^32 = 16
  assert.is(w.conn.peerCredit, 1000 - 16);
});

test('a guest that keeps at most its own buf_alloc in flight (current Linux) is paced by that window', () => {
  // Linux (2025 fix, also in Debian's 6.1) sends at most min(our buf_alloc, its buf_alloc).
  for (const guestBuf of [256 * 1024, 48 * 1024, 4096]) {
    const s = established();
    const { bufAlloc, creditUpdateFreed } = s.conn.limits;
    assert.ok(guestBuf / 4 < creditUpdateFreed && guestBuf < bufAlloc);
    const g = { bufAlloc: guestBuf };
    s.stream.autoFlush = false;
    // The guest fills its whole window and waits; we flush it all, one packet at a time.
    const pkt = Math.min(MAX_PKT_PAYLOAD, guestBuf / 4);
    for (let sent = 0; sent < guestBuf; sent += pkt) s.conn.handleTx(...rw(new Uint8Array(pkt), g));
    let updates = 0;
    let told = 0;
    while (s.stream.pendingFlush.length > 0) {
      s.stream.pendingFlush.shift()!();
      const u = rx(s.conn);
      if (!u) continue;
      assert.is(u.hdr.op, OP_CREDIT_UPDATE);
      updates++;
      told = u.hdr.fwdCnt;
    }
    // Paced by ours (1 MiB, an update per 256 KiB freed) the guest would never hear of the
    // freed bytes and wait forever; paced by its window it hears at least every quarter of it.
    assert.is(told, guestBuf, `guest buf_alloc ${guestBuf}: told everything was consumed`);
    assert.ok(updates >= 1 && updates <= 4, `${updates} updates`);
  }
});

test('host -> guest data: bounded by guest credit, CREDIT_REQUEST once when out of credit and the guest stays silent', () => {
  const s = established(); // guest advertised buf_alloc 8192, fwd_cnt 0
  s.conn.hostData(new Uint8Array(10000).fill(7));
  const a = rx(s.conn, HDR_SIZE + 6000)!;
  assert.is(a.hdr.op, OP_RW);
  assert.is(a.hdr.len, 6000);
  const b = rx(s.conn)!;
  assert.is(b.hdr.len, 2192); // only the remaining credit
  assert.is(s.conn.peerCredit, 0);
  // Not at once: a Linux guest sends its own CREDIT_UPDATE as its reader catches up.
  assert.is(rx(s.conn), undefined);
  assert.is(s.conn.hasPendingRx(), false);
  const due = s.conn.deadline!;
  assert.is(due, s.advance(0) + DEFAULT_CONN_LIMITS.creditRequestDelayMs);
  s.advance(DEFAULT_CONN_LIMITS.creditRequestDelayMs - 1);
  assert.is(s.conn.checkExpiry(), false);
  assert.is(rx(s.conn), undefined);
  s.advance(1);
  assert.is(s.conn.checkExpiry(), false); // a request became due; nothing was killed
  assert.is(s.conn.state, 'established');
  assert.is(s.conn.deadline, undefined);
  assert.is(rx(s.conn)!.hdr.op, OP_CREDIT_REQUEST);
  assert.is(rx(s.conn), undefined); // asked once; the guest's reader may be asleep
  // The same zero credit again does not re-arm the request (no ping-pong).
  s.conn.handleTx(gh({ op: OP_CREDIT_UPDATE, bufAlloc: 8192, fwdCnt: 0 }), pkt());
  assert.is(rx(s.conn), undefined);
  // The guest read 4096 bytes.
  s.conn.handleTx(gh({ op: OP_CREDIT_UPDATE, bufAlloc: 8192, fwdCnt: 4096 }), pkt());
  const c = rx(s.conn)!;
  assert.is(c.hdr.op, OP_RW);
  assert.is(c.hdr.len, 10000 - 8192);
  assert.is(s.counters.bytesToGuest, 10000);
});

test('counters: data packets full / short at a window\'s tail / short of host data; a credit stall and our part of the hop timed', () => {
  const s = established(); // guest advertised buf_alloc 8192, fwd_cnt 0
  s.conn.hostData(new Uint8Array(10000).fill(7));
  assert.is(rx(s.conn, HDR_SIZE + 4096)!.hdr.len, 4096); // fills its buffer
  assert.is(rx(s.conn, HDR_SIZE + 6000)!.hdr.len, 4096); // the rest of the guest's credit
  assert.is(s.conn.peerCredit, 0);
  const c = s.counters;
  assert.equal([c.rxDataFull, c.rxDataShortCredit, c.rxDataShortData, c.creditStalls], [1, 1, 0, 0]);
  s.advance(7);
  // A packet that moves nothing ends no stall.
  s.conn.handleTx(gh({ op: OP_CREDIT_UPDATE, bufAlloc: 8192, fwdCnt: 0 }), pkt());
  assert.is(c.creditStalls, 0);
  s.conn.handleTx(gh({ op: OP_CREDIT_UPDATE, bufAlloc: 8192, fwdCnt: 8192 }), pkt());
  assert.equal([c.creditStalls, c.creditStallUs, c.creditHopUs], [1, 7000, 0]);
  s.advance(2);
  assert.is(rx(s.conn, HDR_SIZE + 4096)!.hdr.len, 10000 - 8192); // all we have
  assert.equal([c.rxDataFull, c.rxDataShortCredit, c.rxDataShortData, c.creditHopUs], [1, 1, 1, 2000]);
  // The guest still has credit: no stall while the host is silent, nor once it sends again.
  s.advance(5);
  s.conn.hostData(new Uint8Array(100));
  assert.is(rx(s.conn)!.hdr.len, 100);
  assert.equal([c.creditStalls, c.creditStallUs, c.creditHopUs, c.rxDataShortData], [1, 7000, 2000, 2]);
  // Host data that arrives while the credit is used up starts a stall there.
  s.conn.hostData(new Uint8Array(8192));
  while (rx(s.conn, HDR_SIZE + 8192)) { /* use up the credit */ }
  s.advance(3);
  s.conn.handleTx(gh({ op: OP_CREDIT_UPDATE, bufAlloc: 8192, fwdCnt: 16384 }), pkt());
  assert.equal([c.creditStalls, c.creditStallUs], [2, 10000]);
});

test('host -> guest data: the guest\'s own CREDIT_UPDATE within the delay means no CREDIT_REQUEST at all', () => {
  const s = established();
  s.conn.hostData(new Uint8Array(20000).fill(1));
  while (rx(s.conn, HDR_SIZE + 8192)) { /* send what the credit allows */ }
  assert.is(s.conn.peerCredit, 0);
  assert.ok(s.conn.deadline !== undefined);
  s.advance(DEFAULT_CONN_LIMITS.creditRequestDelayMs / 2);
  s.conn.handleTx(gh({ op: OP_CREDIT_UPDATE, bufAlloc: 8192, fwdCnt: 8192 }), pkt());
  const d = rx(s.conn, HDR_SIZE + 8192)!;
  assert.equal([d.hdr.op, d.hdr.len], [OP_RW, 8192]);
  // Out of credit again: a new delay from now, and still no request before it ends.
  assert.is(s.conn.deadline, s.advance(0) + DEFAULT_CONN_LIMITS.creditRequestDelayMs);
  s.advance(DEFAULT_CONN_LIMITS.creditRequestDelayMs / 2);
  s.conn.checkExpiry();
  assert.is(rx(s.conn), undefined);
});

test('a pending credit request leaves no deadline behind when the connection ends (guest RST, device reset)', () => {
  for (const end of ['rst', 'reset'] as const) {
    const s = established();
    s.conn.hostData(new Uint8Array(9000));
    while (rx(s.conn, HDR_SIZE + 8192)) { /* use up the guest's credit */ }
    assert.ok(s.conn.deadline !== undefined, 'the request is armed');
    if (end === 'rst') s.conn.handleTx(gh({ op: OP_RST }), pkt());
    else s.conn.finish('reset', false); // what the muxer's reset does to every connection
    assert.is(s.conn.state, 'closed');
    assert.is(s.conn.deadline, undefined, end);
    s.advance(DEFAULT_CONN_LIMITS.creditRequestDelayMs);
    assert.is(s.conn.checkExpiry(), false);
    assert.is(rx(s.conn), undefined, `${end}: nothing more for the guest`);
  }
});

test('host data waits for the RESPONSE; a zero-room RX buffer never carries an empty RW', () => {
  const s = setup('local');
  s.conn.hostData(new Uint8Array([1, 2, 3]));
  assert.is(rx(s.conn)!.hdr.op, OP_REQUEST);
  assert.is(rx(s.conn), undefined);
  s.conn.handleTx(gh({ op: OP_RESPONSE }), pkt());
  assert.is(rx(s.conn, HDR_SIZE), undefined);
  const r = rx(s.conn)!;
  assert.equal([...r.payload], [1, 2, 3]);
});

test('host stream paused when the connection buffer is full, resumed when drained', () => {
  const s = setup('peer', { rxBufferLimit: 1000 });
  s.conn.hostConnected();
  rx(s.conn);
  s.conn.hostData(new Uint8Array(600));
  assert.is(s.stream.paused, false);
  s.conn.hostData(new Uint8Array(600));
  assert.is(s.stream.paused, true);
  assert.is(s.budget.used, 1200);
  rx(s.conn, HDR_SIZE + 500);
  assert.is(s.stream.paused, false);
  assert.is(s.budget.used, 700);
});

test('global budget pauses a connection even below its own limit', () => {
  const budget = { used: 0, limit: 100 };
  const s = setup('peer', { budget });
  s.conn.hostConnected();
  rx(s.conn);
  s.conn.hostData(new Uint8Array(150));
  assert.is(s.stream.paused, true);
  rx(s.conn);
  assert.is(budget.used, 0);
  assert.is(s.stream.paused, false);
});

test('host half-close: SHUTDOWN(SEND) after the buffered data; guest keeps sending', () => {
  const s = established();
  s.conn.hostData(new Uint8Array(10));
  s.conn.hostEnd();
  assert.is(rx(s.conn)!.hdr.op, OP_RW);
  const sh = rx(s.conn)!;
  assert.is(sh.hdr.op, OP_SHUTDOWN);
  assert.is(sh.hdr.flags, SHUTDOWN_SEND);
  assert.is(s.conn.state, 'established');
  s.conn.handleTx(...rw(new Uint8Array(5)));
  assert.is(s.stream.bytes, 5);
  // Guest now shuts its sending side: both directions done -> full SHUTDOWN, then the guest RSTs.
  s.conn.handleTx(gh({ op: OP_SHUTDOWN, flags: SHUTDOWN_SEND }), pkt());
  assert.ok(s.stream.ended);
  const fin = rx(s.conn)!;
  assert.is(fin.hdr.op, OP_SHUTDOWN);
  assert.is(fin.hdr.flags, SHUTDOWN_RCV | SHUTDOWN_SEND);
  assert.is(s.conn.state, 'closing');
  s.conn.handleTx(gh({ op: OP_RST }), pkt());
  assert.is(s.conn.state, 'closed');
  assert.is(s.conn.closeReason, 'clean');
  assert.is(s.stream.closed, 'graceful');
  assert.is(s.counters.connectionsReset, 0);
  assert.is(s.counters.connectionsClosed, 1);
});

test('guest half-close: host stream ended once flushed, host keeps sending', () => {
  const s = established();
  s.stream.autoFlush = false;
  s.conn.handleTx(...rw(new Uint8Array(5)));
  s.conn.handleTx(gh({ op: OP_SHUTDOWN, flags: SHUTDOWN_SEND }), pkt());
  assert.is(s.stream.ended, false); // data still unflushed
  s.stream.flushAll();
  assert.is(s.stream.ended, true);
  s.conn.hostData(new Uint8Array(3));
  assert.is(rx(s.conn)!.hdr.len, 3);
  // Data after the promise not to send is a protocol violation.
  s.conn.handleTx(...rw(new Uint8Array(1)));
  assert.is(s.conn.state, 'killed');
});

test('guest full shutdown: RST after the host got everything; timeout if it never drains', () => {
  const s = established();
  s.stream.autoFlush = false;
  s.conn.handleTx(...rw(new Uint8Array(5)));
  s.conn.handleTx(gh({ op: OP_SHUTDOWN, flags: SHUTDOWN_RCV | SHUTDOWN_SEND }), pkt());
  assert.is(s.conn.hasPendingRx(), false);
  s.stream.flushAll();
  const r = rx(s.conn)!;
  assert.is(r.hdr.op, OP_RST);
  assert.is(s.conn.state, 'closed');
  assert.is(s.conn.closeReason, 'clean');
  assert.is(s.stream.closed, 'graceful');

  const t = established();
  t.stream.autoFlush = false;
  t.conn.handleTx(...rw(new Uint8Array(5)));
  t.conn.handleTx(gh({ op: OP_SHUTDOWN, flags: SHUTDOWN_RCV }), pkt());
  t.conn.handleTx(gh({ op: OP_SHUTDOWN, flags: SHUTDOWN_SEND }), pkt()); // flags accumulate
  assert.is(t.conn.guestShutdown, SHUTDOWN_RCV | SHUTDOWN_SEND);
  assert.ok(t.conn.expiry !== undefined);
  assert.ok(t.conn.checkExpiry(t.advance(50)));
  assert.is(rx(t.conn)!.hdr.op, OP_RST);
  assert.is(t.conn.closeReason, 'timeout');
});

test('guest SHUTDOWN(RCV): buffered and later host data is discarded', () => {
  const s = established();
  s.conn.hostData(new Uint8Array(100));
  s.conn.handleTx(gh({ op: OP_SHUTDOWN, flags: SHUTDOWN_RCV }), pkt());
  assert.is(s.conn.rxBufferedBytes, 0);
  s.conn.hostData(new Uint8Array(100));
  assert.is(s.conn.rxBufferedBytes, 0);
  assert.is(s.budget.used, 0);
  assert.is(rx(s.conn), undefined);
});

test('host death: remaining data, then SHUTDOWN(RCV|SEND), then RST on timeout', () => {
  const s = established();
  s.conn.hostData(new Uint8Array(10));
  s.conn.hostClosed();
  assert.is(rx(s.conn)!.hdr.op, OP_RW);
  const sh = rx(s.conn)!;
  assert.is(sh.hdr.op, OP_SHUTDOWN);
  assert.is(sh.hdr.flags, SHUTDOWN_RCV | SHUTDOWN_SEND);
  assert.is(s.conn.state, 'closing');
  // Data the guest had in flight is absorbed, not an error.
  s.conn.handleTx(...rw(new Uint8Array(4)));
  assert.is(s.conn.state, 'closing');
  assert.ok(s.conn.checkExpiry(s.advance(50)));
  assert.is(rx(s.conn)!.hdr.op, OP_RST);
  assert.is(s.conn.state, 'closed');
});

test('a killed connection whose RST never finds an RX buffer is forgotten after the timeout', () => {
  const s = established();
  s.conn.kill();
  assert.is(s.conn.state, 'killed');
  assert.is(s.conn.checkExpiry(s.advance(49)), false);
  assert.ok(s.conn.checkExpiry(s.advance(1)));
  assert.is(s.conn.state, 'closed');
  assert.is(s.conn.hasPendingRx(), false);
  assert.is(s.counters.connectionsClosed, 1);
});

test('host death before the handshake completes: RST', () => {
  const s = setup('local');
  rx(s.conn);
  s.conn.hostClosed();
  assert.is(rx(s.conn)!.hdr.op, OP_RST);
  assert.is(s.conn.closeReason, 'reset');
});

test('guest RST on an established connection: abortive close, counted as reset', () => {
  const s = established();
  s.conn.handleTx(gh({ op: OP_RST }), pkt());
  assert.is(s.stream.closed, 'abort');
  assert.is(s.conn.closeReason, 'reset');
  assert.is(s.counters.connectionsReset, 1);
  // Nothing more happens on a closed connection.
  s.conn.hostData(new Uint8Array(5));
  assert.is(rx(s.conn), undefined);
});

test('REQUEST/RESPONSE on an established connection are dropped, not fatal', () => {
  const s = established();
  s.conn.handleTx(gh({ op: OP_REQUEST }), pkt());
  s.conn.handleTx(gh({ op: OP_RESPONSE }), pkt());
  assert.is(s.conn.state, 'established');
  assert.is(s.counters.dropped['invalid-for-state'], 2);
});

test.run();
