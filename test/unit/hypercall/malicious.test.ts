// A hostile guest: every bad value gets a status and a counter, never an exception, and the
// device keeps serving an honest agent afterwards.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { Cmd, HC_IO_LEN, Reg, Status } from '../../../devices/hypercall/registers';
import { HYPERCALL_PORT as HC_IO_BASE } from '../../../vmm/layout';
import { ShmHeader, SOURCE_TYPE, encodeHello, encodeHints, encodeReport, mailboxLayout, sourceRecord } from '../../../devices/hypercall/shmem';
import { SimAgent, pkg, rig, type Rig } from './agent';

function helloed(opts: Parameters<typeof rig>[0] = {}): Rig & { a: SimAgent } {
  const r = rig(opts);
  const a = new SimAgent(r.bus, r.shm);
  assert.is(a.hello().status, Status.OK);
  return { ...r, a };
}

/** An honest load round trip still works. */
async function stillWorks({ dev, a }: Rig & { a: SimAgent }): Promise<void> {
  const p = dev.submit({ op: 'load', pkg: pkg('after') });
  a.serve(() => ({ outcome: 'OK', errno: 0, progIds: [77], text: '' }));
  assert.equal((await p).progIds, [77]);
}

const u32s = (...v: number[]): Uint8Array => {
  const b = new Uint8Array(v.length * 4);
  v.forEach((x, i) => new DataView(b.buffer).setUint32(i * 4, x >>> 0, true));
  return b;
};

test('g2h_len past the mailbox → E_LENGTH for every message command', async () => {
  const h = helloed();
  const { a, dev, shm } = h;
  const size = mailboxLayout(shm.length).g2hSize;
  for (const cmd of [Cmd.HELLO, Cmd.REPORT, Cmd.HINTS]) {
    for (const len of [size + 1, 0x7fff_ffff, 0xffff_ffff]) {
      assert.is(a.sendRaw(cmd, new Uint8Array(8), len).status, Status.E_LENGTH, `cmd ${cmd} len ${len}`);
    }
  }
  assert.is(dev.counters().errors.E_LENGTH, 9);
  assert.is(dev.agent?.session, 1, 'bad HELLOs did not restart the session');
  await stillWorks(h);
});

test('HINTS: bad record lengths and counts reject the whole batch', () => {
  const { a, dev } = helloed();
  let delivered = 0;
  dev.onHints(1, () => delivered++);
  const good = encodeHints({ dropped: 0, records: [{ type: 1, payload: new Uint8Array(8) }] }); // 8 + 16 bytes
  const cases: [string, Uint8Array, number][] = [
    ['record len 0', new Uint8Array([...good, ...u32s(1, 0)]), Status.E_INVALID],
    ['record len 4', new Uint8Array([...good, ...u32s(1, 4)]), Status.E_INVALID],
    ['record past the batch', new Uint8Array([...good, ...u32s(1, 64)]), Status.E_LENGTH],
    ['record len near 2^32', new Uint8Array([...good, ...u32s(1, 0xffff_fff8)]), Status.E_LENGTH],
    ['count larger than the bytes allow', u32s(0xffff_ffff, 0, 1, 8), Status.E_INVALID],
    ['count says fewer records than sent', u32s(1, 0, 1, 8, 1, 8), Status.E_LENGTH],
    ['length not a multiple of 8', new Uint8Array([...good, 0, 0, 0, 0]), Status.E_LENGTH],
    ['shorter than the header', new Uint8Array(4), Status.E_LENGTH],
  ];
  for (const [name, body, want] of cases) {
    // Patch the record count so the appended (bad) record is counted too.
    const v = new DataView(body.buffer);
    if (body.length > good.length && name.startsWith('record')) v.setUint32(0, 2, true);
    assert.is(a.sendRaw(Cmd.HINTS, body).status, want, name);
    assert.is(a.inl(Reg.RESULT), 0, name);
  }
  assert.is(delivered, 0, 'no record of a bad batch is delivered');
  assert.is(dev.counters().hintBatches, 0);
  assert.equal(a.sendRaw(Cmd.HINTS, good), { status: Status.OK, result: 1 });
  assert.is(delivered, 1);
});

test('HINTS: a SOURCE record of the wrong length rejects the whole batch', () => {
  const { a, dev } = helloed();
  let delivered = 0;
  dev.onHints(1, () => delivered++);
  const hint = { type: 1, payload: new Uint8Array(8) };
  for (const payload of [0, 4, 12, 16, 100]) {
    // The honest record comes first: validation covers the batch before anything is dispatched.
    const body = encodeHints({ dropped: 0, records: [hint, { type: SOURCE_TYPE, payload: new Uint8Array(payload) }, hint] });
    assert.is(a.sendRaw(Cmd.HINTS, body).status, Status.E_INVALID, `SOURCE of ${8 + payload} bytes`);
    assert.is(a.inl(Reg.RESULT), 0);
  }
  assert.is(delivered, 0);
  assert.is(dev.counters().hintBatches, 0);
  assert.equal(a.sendRaw(Cmd.HINTS, encodeHints({ dropped: 0, records: [sourceRecord(1), hint] })), { status: Status.OK, result: 2 });
  assert.is(delivered, 1);
});

test('REPORT: bad fields → E_INVALID / E_LENGTH / E_NOREQ, the request stays in flight', async () => {
  const h = helloed();
  const { a, dev } = h;
  const p = dev.submit({ op: 'load', pkg: pkg('x') });
  const queued = dev.submit({ op: 'load', pkg: pkg('y') });
  const id = a.fetch().req?.requestId ?? 0;
  const rep = (o: Partial<Parameters<typeof encodeReport>[0]>): Uint8Array =>
    encodeReport({ requestId: id, outcome: 'OK', errno: 0, progIds: [1], text: '', ...o });
  const withField = (b: Uint8Array, off: number, val: number): Uint8Array => {
    new DataView(b.buffer).setUint32(off, val, true);
    return b;
  };
  const cases: [string, Uint8Array, number][] = [
    ['unknown outcome', withField(rep({}), 0x04, 6), Status.E_INVALID],
    ['huge prog_count', withField(rep({}), 0x0c, 0xffff_ffff), Status.E_INVALID],
    ['65 programs', rep({ progIds: new Array<number>(65).fill(1) }), Status.E_INVALID],
    ['failure with program ids', rep({ outcome: 'VERIFIER' }), Status.E_INVALID],
    ['OK load without programs', rep({ progIds: [] }), Status.E_INVALID],
    ['text_len past the message', withField(rep({ text: 'abc' }), 0x10, 0xffff_fff0), Status.E_LENGTH],
    ['text_len short of the message', withField(rep({ text: 'abc' }), 0x10, 1), Status.E_LENGTH],
    ['unknown request id', rep({ requestId: 0xdead }), Status.E_NOREQ],
    ['queued, never fetched', rep({ requestId: id + 1 }), Status.E_NOREQ],
    ['shorter than the header', new Uint8Array(0x17), Status.E_LENGTH],
  ];
  for (const [name, body, want] of cases) assert.is(a.sendRaw(Cmd.REPORT, body).status, want, name);
  assert.is(a.report({ requestId: id, outcome: 'OK', errno: 0, progIds: [3], text: '' }).status, Status.OK);
  assert.equal((await p).progIds, [3]);
  assert.is(a.report({ requestId: id, outcome: 'OK', errno: 0, progIds: [3], text: '' }).status, Status.E_NOREQ, 'duplicate');
  a.serve(() => ({ outcome: 'OK', errno: 0, progIds: [4], text: '' }));
  assert.equal((await queued).progIds, [4]);
  await stillWorks(h);
});

test('HELLO: bad name length and mismatched g2h_len', () => {
  const r = rig();
  const a = new SimAgent(r.bus, r.shm);
  const h = encodeHello({ version: 1, caps: 0, pid: 1, name: 'abc' });
  new DataView(h.buffer).setUint32(0x0c, 100_000, true);
  assert.is(a.sendRaw(Cmd.HELLO, h).status, Status.E_INVALID);
  assert.is(a.sendRaw(Cmd.HELLO, encodeHello({ version: 1, caps: 0, pid: 1, name: 'abc' }), 0x10 + 2).status, Status.E_LENGTH);
  assert.is(a.sendRaw(Cmd.HELLO, encodeHello({ version: 1, caps: 0, pid: 1, name: 'x'.repeat(257) })).status, Status.E_INVALID);
  assert.is(r.dev.agent, undefined);
});

test('unknown commands → E_UNKNOWN, counted', () => {
  const { a, dev } = helloed();
  for (const c of [0, 5, 0x100, 0xffff_ffff]) assert.equal(a.call(c), { status: Status.E_UNKNOWN, result: 0 });
  const c = dev.counters();
  assert.is(c.calls.UNKNOWN, 4);
  assert.is(c.errors.E_UNKNOWN, 4);
  assert.equal(dev.lastError, { status: 'E_UNKNOWN', why: 'unknown command 4294967295' });
  assert.is(a.fetch().call.status, Status.OK);
});

test('odd-width or unaligned reads return all ones; bad writes → E_ACCESS and do nothing', () => {
  const { a, dev } = helloed();
  for (const [off, w] of [[Reg.MAGIC, 1], [Reg.STATUS, 2], [Reg.SEQ, 8], [0x02, 4], [0x21, 4]] as const) {
    const b = new Uint8Array(w).fill(0x5a);
    dev.read(off, b);
    assert.ok(b.every((x) => x === 0xff), `read ${w}@${off}`);
  }
  assert.is(dev.counters().badReads, 5);
  const seq = a.inl(Reg.SEQ);
  void dev.submit({ op: 'load', pkg: pkg('q') });
  for (const reg of [Reg.MAGIC, Reg.STATUS, Reg.PENDING, Reg.SHM_BASE_LO, 0x3c]) {
    a.outl(reg, Cmd.FETCH);
    assert.is(a.inl(Reg.STATUS), Status.E_ACCESS, `write to 0x${reg.toString(16)}`);
  }
  dev.write(Reg.COMMAND, new Uint8Array([Cmd.FETCH, 0])); // outw
  dev.write(Reg.COMMAND, new Uint8Array([Cmd.FETCH])); // outb
  dev.write(Reg.COMMAND + 1, new Uint8Array([Cmd.FETCH, 0, 0, 0]));
  assert.is(a.inl(Reg.STATUS), Status.E_ACCESS);
  assert.is(a.inl(Reg.SEQ), seq, 'no command ran');
  assert.is(a.inl(Reg.PENDING), 1, 'nothing was fetched');
  assert.is(a.inl(Reg.MAGIC), 0x4d56_5354, 'read-only registers unchanged');
  const c = dev.counters();
  assert.is(c.badWrites, 8);
  assert.is(c.errors.E_ACCESS, 8);
  assert.is(a.fetch().req?.name, 'q');
});

test('hypercall flood past the rate limit → E_RATE with a retry delay, then recovers', async () => {
  const h = helloed({ ratePerSecond: 100, burst: 10 });
  const { a, dev, clock } = h;
  // HELLO took one token.
  const got = Array.from({ length: 50 }, () => a.call(Cmd.FETCH));
  assert.is(got.filter((g) => g.status === Status.OK).length, 9);
  const limited = got.filter((g) => g.status === Status.E_RATE);
  assert.is(limited.length, 41);
  assert.ok(limited.every((g) => g.result === 10), 'RESULT says to wait 10 ms (one token at 100/s)');
  assert.is(a.inl(Reg.SEQ), 51, 'every write counted in SEQ');
  const c = dev.counters();
  assert.is(c.errors.E_RATE, 41);
  assert.is(c.calls.FETCH, 50);
  // A rejected command had no effect: a limited REPORT does not complete the request.
  clock.t += 10;
  const p = dev.submit({ op: 'load', pkg: pkg('r') });
  const req = a.fetch().req;
  assert.ok(req);
  assert.is(a.report({ requestId: req.requestId, outcome: 'OK', errno: 0, progIds: [1], text: '' }).status, Status.E_RATE);
  clock.t += 1000;
  assert.is(a.report({ requestId: req.requestId, outcome: 'OK', errno: 0, progIds: [1], text: '' }).status, Status.OK);
  await p;
  await stillWorks(h);
});

test('random garbage from the guest never throws and the device keeps working', async () => {
  const h = helloed({ ratePerSecond: 1e9 });
  const { a, dev, shm, bus } = h;
  let seed = 12345;
  const rnd = (): number => {
    seed = (seed * 1103515245 + 12345) >>> 0;
    return seed;
  };
  void dev.submit({ op: 'load', pkg: pkg('victim') });
  dev.onHints(1, () => undefined);
  const box = mailboxLayout(shm.length);
  for (let i = 0; i < 3000; i++) {
    const n = rnd() % 64;
    const body = new Uint8Array(n * 4).map(() => (rnd() % 4 === 0 ? rnd() & 0xff : rnd() % 3));
    const len = rnd() % 3 === 0 ? rnd() : body.length;
    const cmd = [Cmd.REPORT, Cmd.HINTS, Cmd.FETCH, rnd()][rnd() % 4] ?? 0;
    a.sendRaw(cmd, body, len);
    // Random register traffic at random widths too.
    const w = [1, 2, 4, 8][rnd() % 4] ?? 4;
    bus.write(HC_IO_BASE + (rnd() % HC_IO_LEN), new Uint8Array(w).map(() => rnd()));
    bus.read(HC_IO_BASE + (rnd() % HC_IO_LEN), new Uint8Array(w));
  }
  const c = dev.counters();
  const bad = Object.values(c.errors).reduce((x, y) => x + y, 0);
  assert.ok(bad > 2000, `bad calls counted (${bad})`);
  assert.ok(new DataView(shm.buffer).getUint32(ShmHeader.offsets.g2hSize, true) === box.g2hSize, 'header intact');
  // The victim request may have been fetched by the noise: a fresh HELLO requeues it.
  assert.is(a.hello('recovered').status, Status.OK);
  a.serve(() => ({ outcome: 'OK', errno: 0, progIds: [9], text: '' }));
  await stillWorks(h);
});

test.run();
