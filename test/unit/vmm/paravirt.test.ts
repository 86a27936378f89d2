// Paravirt's package bookkeeping against a simulated agent: each hint record is counted
// against the package whose ring buffer it came from (the agent's SOURCE records), and
// records of no loaded package only in the device's unattributed counter.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { PassThrough } from 'node:stream';
import { Bus } from '../../../devices/bus';
import { HYPERCALL_PORT, HYPERCALL_PORT_LEN } from '../../../vmm/layout';
import { sourceRecord } from '../../../devices/hypercall/shmem';
import { encodeHint } from '../../../bpf/hints';
import { affinityPackage } from '../../../bpf/programs/affinity';
import { Paravirt } from '../../../vmm/paravirt';
import { HINT_PROGRAMS } from '../../../vmm/hints/programs';
import { fakeHost } from '../hints/fake-host';
import { SimAgent } from '../hypercall/agent';

function paravirt(): { pv: Paravirt; a: SimAgent } {
  const shm = new Uint8Array(64 * 1024);
  const pv = new Paravirt({ shm, host: fakeHost(2).host, programs: HINT_PROGRAMS, connect: async () => new PassThrough(), log: () => {} });
  const bus = new Bus();
  bus.insert(HYPERCALL_PORT, HYPERCALL_PORT_LEN, 'hypercall', pv.device);
  return { pv, a: new SimAgent(bus, shm) };
}

/** A hint record as a hint program writes it, in encodeHints' {type, payload} form. */
const hint = (tid: number): { type: number; payload: Uint8Array } => {
  const b = encodeHint({ type: 'UNPIN', tid, tgid: tid });
  return { type: new DataView(b.buffer).getUint32(0, true), payload: b.subarray(8) };
};

test('with two packages loaded, each counts only the records from its own ring buffer', async () => {
  const { pv, a } = paravirt();
  a.hello();
  const loads = [pv.load(affinityPackage()), pv.load({ ...affinityPackage(), name: 'second' })];
  a.serve(() => ({ outcome: 'OK', errno: 0, progIds: [3], text: '' }));
  const [one, two] = (await Promise.all(loads)).map((r) => r.handle);
  const res = a.hints({
    dropped: 0,
    records: [sourceRecord(one!), hint(10), hint(11), hint(12), sourceRecord(two!), hint(20), sourceRecord(999), hint(30)],
  });
  assert.is(res.status, 0);
  assert.equal([...pv.loaded.values()].map((p) => [p.name, p.hints]), [['affinity', 3], ['second', 1]]);
  assert.is(pv.hintsSeen, 5);
  assert.is(pv.device.counters().hintUnattributed, 1);
  pv.close();
});

test('every record reaches the stream with its delivering vCPU and source; a known one its handler too', async () => {
  const { pv, a } = paravirt();
  a.hello();
  const load = pv.load({ ...affinityPackage(), name: 'mine' });
  a.serve(() => ({ outcome: 'OK', errno: 0, progIds: [3], text: '' }));
  const h = (await load).handle;
  a.vcpu = 2;
  const unknown = { type: 4242, payload: new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8]) };
  assert.is(a.hints({ dropped: 0, records: [sourceRecord(h), hint(77), unknown] }).status, 0);
  const got = pv.stream.recent();
  assert.equal(got.map((e) => [e.vcpu, e.source, e.program, e.name ?? e.type]), [[2, h, 'mine', 'UNPIN'], [2, h, 'mine', 4242]]);
  assert.equal(got[0]!.fields, { type: 'UNPIN', tid: 77, tgid: 77 });
  assert.is(got[1]!.raw, '921000001000000001020304050607' + '08');
  assert.is(pv.device.counters().hintUnknown, 1, 'a type no kind knows is still counted unknown');
  assert.is(pv.registry.counters.unknown, 1);
  pv.close();
});

test.run();
