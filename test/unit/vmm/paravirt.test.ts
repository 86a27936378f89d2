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

test.run();
