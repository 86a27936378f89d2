import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { CpuListError, formatCpuList, MAX_CPUS, parseCpuList } from '../../../vmm/scheduler/topology';

test('parses single CPUs, ranges and mixes', () => {
  assert.equal(parseCpuList('0'), [0]);
  assert.equal(parseCpuList('0-3,8,10-11'), [0, 1, 2, 3, 8, 10, 11]);
  assert.equal(parseCpuList('5-5'), [5]);
});

test('sysfs text: surrounding whitespace and an empty file', () => {
  assert.equal(parseCpuList('0-1\n'), [0, 1]);
  assert.equal(parseCpuList(' 2 , 4-5 '), [2, 4, 5]);
  assert.equal(parseCpuList(''), []);
  assert.equal(parseCpuList('\n'), []);
});

test('sorts and removes duplicates and overlaps', () => {
  assert.equal(parseCpuList('8,0-3,2-5,3'), [0, 1, 2, 3, 4, 5, 8]);
});

test('kernel stride form N-M:used/group', () => {
  assert.equal(parseCpuList('0-7:2/4'), [0, 1, 4, 5]);
  assert.equal(parseCpuList('0-9:1/3'), [0, 3, 6, 9]);
  assert.equal(parseCpuList('2-5:4/4'), [2, 3, 4, 5]);
});

test('rejects malformed lists with a CpuListError naming the input', () => {
  for (const bad of ['a', '1-', '-1', ',', '1,,2', '1,', '3-1', '1 2', '0x1', '1.5', '0-7:0/4', '0-7:3/2', '0-7:1/0', '1:1/2', '+1']) {
    assert.throws(() => parseCpuList(bad), (e: unknown) => e instanceof CpuListError && e.message.includes(JSON.stringify(bad)), bad);
  }
});

test('rejects CPUs beyond the kernel maximum (no giant allocations)', () => {
  assert.equal(parseCpuList(`${MAX_CPUS - 1}`), [MAX_CPUS - 1]);
  const isListError = (e: unknown): boolean => e instanceof CpuListError && /beyond the limit/.test(e.message);
  assert.throws(() => parseCpuList(`${MAX_CPUS}`), isListError);
  assert.throws(() => parseCpuList('0-99999999999'), isListError);
});

test('formats canonically', () => {
  assert.is(formatCpuList([0, 1, 2, 3, 8, 10, 11]), '0-3,8,10-11');
  assert.is(formatCpuList([11, 10, 8, 3, 2, 1, 0, 8]), '0-3,8,10-11');
  assert.is(formatCpuList([]), '');
  assert.is(formatCpuList([7]), '7');
  assert.is(formatCpuList([1, 2]), '1-2');
});

test('round trip', () => {
  for (const s of ['0', '0-3,8,10-11', '1,3,5', '0-8191', '4-5,7-9,100']) assert.is(formatCpuList(parseCpuList(s)), s);
});

test.run();
