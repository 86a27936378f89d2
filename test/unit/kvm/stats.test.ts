// KVM's binary stats file (kvm/stats.ts): a file built as the kernel lays it out (header, id,
// descriptors with their names, data) decodes to its cumulative single-value counters; the
// deltas between two reads keep only what grew.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { countersDelta, parseKvmStats } from '../../../kvm/stats';
import { KvmStatsDesc, KvmStatsHeader } from '../../../kvm/layout';

const NAME = 48; // KVM_STATS_NAME_SIZE
const CUMULATIVE = 0;
const INSTANT = 1;
const LINEAR_HIST = 3;

/** A stats file: each stat (type, values) laid out as KVM does, data after the descriptors. */
function statsFile(stats: { name: string; type: number; values: bigint[] }[]): Uint8Array {
  const descOffset = KvmStatsHeader.size + NAME;
  const descSize = KvmStatsDesc.size + NAME;
  const dataOffset = descOffset + stats.length * descSize;
  const words = stats.reduce((n, s) => n + s.values.length, 0);
  const file = new Uint8Array(dataOffset + words * 8);
  KvmStatsHeader.write(file, { flags: 0, nameSize: NAME, numDesc: stats.length, idOffset: KvmStatsHeader.size, descOffset, dataOffset });
  file.set(Buffer.from('kvm-1234/vcpu0'), KvmStatsHeader.size);
  const dv = new DataView(file.buffer);
  let offset = 0;
  stats.forEach((s, i) => {
    const at = descOffset + i * descSize;
    KvmStatsDesc.write(file, { flags: s.type, exponent: 0, size: s.values.length, offset, bucketSize: 0 }, at);
    file.set(Buffer.from(s.name), at + KvmStatsDesc.size);
    s.values.forEach((v, j) => dv.setBigUint64(dataOffset + offset + j * 8, v, true));
    offset += s.values.length * 8;
  });
  return file;
}

test('parseKvmStats: cumulative single-value counters by name; instant values and histograms left out', () => {
  const file = statsFile([
    { name: 'exits', type: CUMULATIVE, values: [123456n] },
    { name: 'guest_mode', type: INSTANT, values: [1n] },
    { name: 'halt_poll_success_hist', type: LINEAR_HIST, values: [1n, 2n, 3n] },
    { name: 'irq_injections', type: CUMULATIVE, values: [42n] },
  ]);
  assert.equal([...parseKvmStats(file)], [['exits', 123456n], ['irq_injections', 42n]]);
});

test('parseKvmStats: a file cut short is an error, not a wrong number', () => {
  const file = statsFile([{ name: 'exits', type: CUMULATIVE, values: [1n] }]);
  assert.throws(() => parseKvmStats(file.subarray(0, file.length - 4)), /past the/);
  assert.throws(() => parseKvmStats(file.subarray(0, 10)), /header/);
});

test('countersDelta: what grew, in order; unchanged counters left out', () => {
  const a = new Map([['exits', 10n], ['irq_injections', 5n], ['halt_exits', 2n]]);
  const b = new Map([['exits', 250n], ['irq_injections', 5n], ['halt_exits', 3n], ['new_one', 1n]]);
  assert.equal(countersDelta(a, b), { exits: 240, halt_exits: 1, new_one: 1 });
});

test.run();
