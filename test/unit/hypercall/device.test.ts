// End-to-end behaviour of the hypercall device driven by a simulated agent: requests, reports,
// doorbells, hint dispatch, agent restarts.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { HypercallError, type HypercallResult, type LostProgram } from '../../../devices/hypercall/device';
import { Caps, Cmd, Features, Reg, Status } from '../../../devices/hypercall/registers';
import { ShmHeader, Op, SOURCE_TYPE, sourceRecord } from '../../../devices/hypercall/shmem';
import { HintType, decodeHints as decodeHintRecords, encodeHint, type Hint } from '../../../bpf/hints';
import { SimAgent, pkg, rig, tick } from './agent';

test('HELLO → FETCH → REPORT resolves submit() with the prog ids', async () => {
  const r = rig();
  const a = new SimAgent(r.bus, r.shm);
  assert.equal(a.probe(), { base: 0xc000_0000, size: 64 * 1024, port: 53 });
  const p = r.dev.submit({ op: 'load', pkg: pkg('affinity', 300) });
  assert.is(a.inl(Reg.PENDING), 1);
  const hello = a.hello('agent 0.1');
  assert.equal(hello, { status: Status.OK, result: 1 });
  assert.is(r.dev.agent?.name, 'agent 0.1');
  assert.is(r.dev.agent?.caps, 0b111111);

  const { call, req } = a.fetch();
  assert.is(call.result, 0x50 + 300);
  assert.ok(req);
  assert.is(req.op, Op.LOAD);
  assert.is(req.name, 'affinity');
  assert.is(req.body.length, 300);
  assert.is(req.body[299], 0xab);
  assert.is(new DataView(r.shm.buffer).getUint32(ShmHeader.offsets.h2gSeq, true), 1);
  assert.is(a.inl(Reg.PENDING), 0);

  assert.equal(a.report({ requestId: req.requestId, outcome: 'OK', errno: 0, progIds: [17, 18], text: '' }), { status: 0, result: 0 });
  const res = await p;
  assert.equal(res, { requestId: req.requestId, op: 'load', handle: req.handle, ok: true, outcome: 'OK', errno: 0, progIds: [17, 18], text: '' });
  assert.is(new DataView(r.shm.buffer).getUint32(ShmHeader.offsets.g2hAck, true), 2); // HELLO was g2h message 1
  assert.equal(a.fetch().call, { status: 0, result: 0 });
  const c = r.dev.counters();
  assert.equal(c.calls, { HELLO: 1, FETCH: 2, REPORT: 1, HINTS: 0, UNKNOWN: 0 });
  assert.is(c.requestsCompleted, 1);
  assert.is(c.h2gBytes, 0x50 + 300);
});

test('verifier failure carries the full log; refusal carries the reason; both free the handle', async () => {
  const r = rig({ shm: new Uint8Array(0x10_0000) });
  const a = new SimAgent(r.bus, r.shm);
  a.hello();
  const log = '0: (b7) r0 = 0\n'.repeat(2000) + 'R1 invalid mem access \'scalar\'\n';
  const bad = r.dev.submit({ op: 'load', pkg: pkg('bad') });
  const evil = r.dev.submit({ op: 'load', pkg: pkg('evil') });
  a.serve((req) =>
    req.name === 'bad'
      ? { outcome: 'VERIFIER', errno: 13, progIds: [], text: log }
      : { outcome: 'REFUSED', errno: 0, progIds: [], text: 'digest not in allowlist' },
  );
  const [b, e] = await Promise.all([bad, evil]);
  assert.is(b.ok, false);
  assert.is(b.outcome, 'VERIFIER');
  assert.is(b.errno, 13);
  assert.is(b.text, log);
  assert.is(e.outcome, 'REFUSED');
  assert.is(e.text, 'digest not in allowlist');
  await assert_rejects(r.dev.submit({ op: 'unload', handle: b.handle }), 'unknown-handle');
});

test('unload and replace act on a handle; failed replace keeps the old programs', async () => {
  const r = rig();
  const a = new SimAgent(r.bus, r.shm);
  a.hello();
  const loaded = r.dev.submit({ op: 'load', pkg: pkg('v1') });
  a.serve(() => ({ outcome: 'OK', errno: 0, progIds: [5], text: '' }));
  const { handle } = await loaded;

  const rep = r.dev.submit({ op: 'replace', handle, pkg: pkg('v2', 10, 0x22) });
  let seen = a.serve(() => ({ outcome: 'VERIFIER', errno: 22, progIds: [], text: 'nope' }));
  assert.is(seen[0]?.op, Op.REPLACE);
  assert.is(seen[0]?.handle, handle);
  assert.is((await rep).ok, false);

  const rep2 = r.dev.submit({ op: 'replace', handle, pkg: pkg('v3') });
  a.serve(() => ({ outcome: 'OK', errno: 0, progIds: [6, 7], text: '' }));
  assert.equal((await rep2).progIds, [6, 7]);

  const un = r.dev.submit({ op: 'unload', handle });
  seen = a.serve(() => ({ outcome: 'OK', errno: 0, progIds: [], text: '' }));
  assert.is(seen[0]?.op, Op.UNLOAD);
  assert.is(seen[0]?.body.length, 0);
  assert.is((await un).ok, true);
  await assert_rejects(r.dev.submit({ op: 'unload', handle }), 'unknown-handle');
});

test('submit rejects what cannot be sent', async () => {
  const r = rig();
  await assert_rejects(r.dev.submit({ op: 'load', pkg: pkg('huge', r.dev.maxPackageSize + 1) }), 'too-large');
  await assert_rejects(r.dev.submit({ op: 'load', pkg: { id: 'x', digest: new Uint8Array(20), bytes: new Uint8Array(1) } }), 'bad-digest');
  const fits = r.dev.submit({ op: 'load', pkg: pkg('fits', r.dev.maxPackageSize) });
  r.dev.close();
  await assert_rejects(fits, 'closed');
  await assert_rejects(r.dev.submit({ op: 'load', pkg: pkg('late') }), 'closed');
});

test('doorbell: none before HELLO, one per FETCH cycle after', () => {
  const r = rig();
  const a = new SimAgent(r.bus, r.shm);
  let rings = 0;
  r.dev.onDoorbellNeeded(() => rings++);
  void r.dev.submit({ op: 'load', pkg: pkg('a') });
  assert.is(rings, 0, 'nobody listens before HELLO');
  a.hello();
  assert.is(rings, 0, 'HELLO reports the pending count itself');
  void r.dev.submit({ op: 'load', pkg: pkg('b') });
  assert.is(rings, 1);
  void r.dev.submit({ op: 'load', pkg: pkg('c') });
  assert.is(rings, 1, 'coalesced until the agent fetches');
  a.fetch();
  void r.dev.submit({ op: 'load', pkg: pkg('d') });
  assert.is(rings, 2);
  const seen = a.serve(() => ({ outcome: 'OK', errno: 0, progIds: [1], text: '' }));
  assert.equal(seen.map((s) => s.name), ['b', 'c', 'd']);
});

test('HINTS: records dispatched in order by type; unknown types counted', () => {
  const r = rig();
  const a = new SimAgent(r.bus, r.shm);
  a.hello();
  const got: string[] = [];
  // Handlers get the whole record (header included, padding stripped); show its payload.
  const show = (rec: Uint8Array, t: number): void => {
    assert.is(new DataView(rec.buffer, rec.byteOffset).getUint32(4, true), rec.length, 'len field = record length');
    got.push(`${t}:${[...rec.subarray(8)].join(',')}`);
  };
  r.dev.onHints(1, show);
  const off = r.dev.onHints(2, show);
  r.dev.onHints(3, () => {
    throw new Error('handler bug');
  });
  const res = a.hints({
    dropped: 4,
    records: [
      { type: 1, payload: new Uint8Array([1]) },
      { type: 2, payload: new Uint8Array([2, 2]) },
      { type: 99, payload: new Uint8Array(16) },
      { type: 3, payload: new Uint8Array(0) },
      { type: 1, payload: new Uint8Array([3, 3, 3, 3, 3, 3, 3, 3, 3]) },
    ],
  });
  assert.equal(res, { status: Status.OK, result: 5 });
  assert.equal(got, ['1:1', '2:2,2', '1:3,3,3,3,3,3,3,3,3']);
  off();
  a.hints({ dropped: 0, records: [{ type: 2, payload: new Uint8Array(1) }] });
  assert.is(got.length, 3);
  const c = r.dev.counters();
  assert.is(c.hintBatches, 2);
  assert.is(c.hintRecords, 6);
  assert.is(c.hintDropped, 4);
  assert.is(c.hintUnknown, 2);
  assert.equal(c.hintsByType, { 1: 2, 2: 1, 3: 1 });
  assert.is(c.handlerErrors, 1);
  assert.is(c.hintBytes, 8 + 16 + 16 + 24 + 8 + 24 + 8 + 16);
});

test('HINTS: bpf hint records forwarded verbatim reach their handlers decodable by bpf/hints', () => {
  const r = rig();
  const a = new SimAgent(r.bus, r.shm);
  a.hello();
  const got: Hint[] = [];
  for (const t of [HintType.AFFINITY, HintType.UNPIN]) r.dev.onHints(t, (rec) => got.push(...decodeHintRecords(rec)));
  const samples = [
    encodeHint({ type: 'AFFINITY', tgid: 100, tid: 101, comm: 'spscq', cpus: [1, 200], mask: [] }),
    encodeHint({ type: 'UNPIN', tid: 101, tgid: 100 }),
    // A type this host does not know: skipped by len, counted, does not stop the batch.
    new Uint8Array([7, 0, 0, 0, 12, 0, 0, 0, 1, 2, 3, 4]),
    encodeHint({ type: 'AFFINITY', tgid: 5, tid: 5, comm: 'x', cpus: [0], mask: [] }),
  ];
  assert.equal(a.forwardSamples(samples, 1), { status: 0, result: 4 });
  assert.equal(
    got.map((h) => (h.type === 'AFFINITY' ? `A ${h.tid} ${h.comm} ${h.cpus.join('/')}` : h.type === 'UNPIN' ? `U ${h.tid}` : '?')),
    ['A 101 spscq 1/200', 'U 101', 'A 5 x 0'],
  );
  assert.is(r.dev.counters().hintUnknown, 1);
});

/** Loads one package per name through the simulated agent; returns their handles. */
async function loadAll(r: ReturnType<typeof rig>, a: SimAgent, ...names: string[]): Promise<number[]> {
  const ps = names.map((n) => r.dev.submit({ op: 'load', pkg: pkg(n) }));
  a.serve(() => ({ outcome: 'OK', errno: 0, progIds: [1], text: '' }));
  return (await Promise.all(ps)).map((p) => p.handle);
}

const rec = (type: number, tag: number): { type: number; payload: Uint8Array } => ({ type, payload: new Uint8Array([tag]) });

test('HINTS: SOURCE records attribute the records after them to a loaded handle, and are never dispatched', async () => {
  const r = rig();
  const a = new SimAgent(r.bus, r.shm);
  assert.is(a.inl(Reg.FEATURES), Features.HINT_SOURCE);
  a.hello();
  const [h1, h2, gone] = await loadAll(r, a, 'one', 'two', 'gone');
  const un = r.dev.submit({ op: 'unload', handle: gone! });
  a.serve(() => ({ outcome: 'OK', errno: 0, progIds: [], text: '' }));
  await un;
  const got: string[] = [];
  for (const t of [1, 2]) r.dev.onHints(t, (rec, type, source) => got.push(`${type}.${rec[8]}@${source}`));
  assert.throws(() => r.dev.onHints(SOURCE_TYPE, () => undefined), /reserved/);
  const res = a.hints({
    dropped: 0,
    records: [
      rec(1, 0), // before any SOURCE: unattributed
      sourceRecord(h1!), rec(1, 1), rec(2, 2),
      sourceRecord(h2!), rec(1, 3),
      sourceRecord(gone!), rec(2, 4), // unloaded: unattributed
      sourceRecord(0xdead), rec(2, 5), // never a handle: unattributed
      sourceRecord(h1!), rec(2, 6), rec(7, 7), // type 7 has no handler: unknown, but attributed
    ],
  });
  assert.equal(res, { status: Status.OK, result: 13 }, 'RESULT = record_count, SOURCE records included');
  assert.equal(got, ['1.0@undefined', `1.1@${h1}`, `2.2@${h1}`, `1.3@${h2}`, '2.4@undefined', '2.5@undefined', `2.6@${h1}`]);
  // Sources do not carry over to the next batch.
  a.hints({ dropped: 0, records: [rec(1, 8)] });
  assert.is(got.at(-1), '1.8@undefined');
  const c = r.dev.counters();
  assert.is(c.hintRecords, 9, 'SOURCE records are not hint records');
  assert.is(c.hintUnattributed, 4);
  assert.is(c.hintUnknown, 1, 'SOURCE is not an unknown hint type');
  assert.equal(c.hintsByType, { 1: 4, 2: 4 });
});

test('HINTS: an agent without HINT_SOURCE sends no sources; type 0 is an ordinary record there', async () => {
  const r = rig();
  const a = new SimAgent(r.bus, r.shm);
  a.hello('old agent', 0b11111 & ~Caps.HINT_SOURCE);
  const [h] = await loadAll(r, a, 'one');
  const got: (number | undefined)[] = [];
  r.dev.onHints(1, (_rec, _type, source) => got.push(source));
  // A program's type-0 record forwarded by an old agent must not relabel anything.
  assert.equal(a.hints({ dropped: 0, records: [sourceRecord(h!), rec(1, 1), { type: 0, payload: new Uint8Array(3) }] }), { status: Status.OK, result: 3 });
  assert.equal(got, [undefined]);
  const c = r.dev.counters();
  assert.is(c.hintRecords, 3);
  assert.is(c.hintUnknown, 2);
  assert.is(c.hintUnattributed, 3);
});

test('agent restart mid-request: in-flight requests are refetched, loaded programs reported lost', async () => {
  const r = rig();
  let a = new SimAgent(r.bus, r.shm);
  const hellos: { session: number; lost: readonly LostProgram[] }[] = [];
  r.dev.onAgentHello((info, lost) => hellos.push({ session: info.session, lost }));
  a.hello();
  const keep = r.dev.submit({ op: 'load', pkg: pkg('kept') });
  const gone = r.dev.submit({ op: 'load', pkg: pkg('goner') });
  a.serve(() => ({ outcome: 'OK', errno: 0, progIds: [11], text: '' }));
  const kept = await keep;
  const goner = await gone;

  const p1 = r.dev.submit({ op: 'load', pkg: pkg('p1') });
  const p2 = r.dev.submit({ op: 'load', pkg: pkg('p2') });
  const rep = r.dev.submit({ op: 'replace', handle: kept.handle, pkg: pkg('kept2') });
  const first = a.fetch().req; // p1 in flight when the agent dies
  assert.is(first?.name, 'p1');

  let settled = false;
  void p1.then(() => (settled = true));
  a = new SimAgent(r.bus, r.shm); // new process
  assert.equal(a.hello('agent restarted'), { status: 0, result: 3 });
  await tick();
  assert.is(settled, false);
  assert.is(hellos.length, 2);
  assert.is(hellos[1]?.session, 2);
  assert.equal(hellos[1]?.lost.map((l) => [l.handle, l.packageId, [...l.progIds]]), [[goner.handle, 'goner', [11]]]);
  // A REPORT for p1 from the dead agent's point of view is now stale.
  assert.is(a.report({ requestId: first?.requestId ?? 0, outcome: 'OK', errno: 0, progIds: [1], text: '' }).status, Status.E_NOREQ);

  const seen = a.serve((q) => ({ outcome: 'OK', errno: 0, progIds: [q.requestId + 100], text: '' }));
  assert.equal(seen.map((s) => s.name), ['p1', 'p2', 'kept2']);
  assert.is(seen[0]?.requestId, first?.requestId);
  assert.is(seen[2]?.handle, kept.handle);
  const results: HypercallResult[] = await Promise.all([p1, p2, rep]);
  assert.ok(results.every((x) => x.ok));
  await assert_rejects(r.dev.submit({ op: 'unload', handle: goner.handle }), 'unknown-handle');
  const c = r.dev.counters();
  assert.is(c.agentRestarts, 1);
  assert.is(c.programsLost, 1);
});

test('agent restart: a handle with a queued UNLOAD is not reported lost; NOENT frees it', async () => {
  const r = rig();
  const a = new SimAgent(r.bus, r.shm);
  let lost: readonly LostProgram[] = [];
  r.dev.onAgentHello((_, l) => (lost = l));
  a.hello();
  const load = r.dev.submit({ op: 'load', pkg: pkg('a') });
  a.serve(() => ({ outcome: 'OK', errno: 0, progIds: [1], text: '' }));
  const { handle } = await load;
  const un = r.dev.submit({ op: 'unload', handle });
  a.hello('restarted');
  assert.equal(lost, []);
  a.serve(() => ({ outcome: 'NOENT', errno: 0, progIds: [], text: 'no such handle' }));
  assert.is((await un).outcome, 'NOENT');
  await assert_rejects(r.dev.submit({ op: 'unload', handle }), 'unknown-handle');
});

test('commands before HELLO are refused with E_STATE; a bad HELLO leaves the old session', () => {
  const r = rig();
  const a = new SimAgent(r.bus, r.shm);
  for (const cmd of [Cmd.FETCH, Cmd.REPORT, Cmd.HINTS]) assert.is(a.call(cmd).status, Status.E_STATE);
  assert.is(a.hello('x', 0, 2).status, Status.E_VERSION);
  assert.is(r.dev.agent, undefined);
  a.hello('good');
  assert.is(a.hello('future', 0, 7).status, Status.E_VERSION);
  assert.is(r.dev.agent?.name, 'good');
  assert.is(a.fetch().call.status, Status.OK);
});

async function assert_rejects(p: Promise<unknown>, code: string): Promise<void> {
  try {
    await p;
  } catch (e) {
    assert.instance(e, HypercallError);
    assert.is((e as HypercallError).code, code);
    return;
  }
  assert.unreachable(`expected rejection ${code}`);
}

test.run();
