// ConsoleResizer (vmm/console/resize.ts): what reaches the guest's stty, in order, newest size
// winning, and sizes sent before the agent answers arriving once it does.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { ConsoleResizer } from '../../../vmm/console/resize';

const tick = (ms = 0) => new Promise((r) => setTimeout(r, ms));

test('one stty at a time; sizes typed meanwhile collapse to the newest', async () => {
  const calls: string[][] = [];
  let release: () => void = () => {};
  const r = new ConsoleResizer((argv) => {
    calls.push(argv);
    return new Promise((res) => (release = () => res({ exitCode: 0 })));
  });
  r.resize(30, 100);
  r.resize(31, 101);
  r.resize(32, 102);
  await tick();
  assert.equal(calls, [['stty', '-F', '/dev/console', 'rows', '30', 'cols', '100']]);
  release();
  await tick();
  assert.is(calls.length, 2);
  assert.equal(calls[1]!.slice(3), ['rows', '32', 'cols', '102']);
  release();
  await tick();
  assert.equal(r.applied, [{ rows: 30, cols: 100 }, { rows: 32, cols: 102 }]);
  r.close();
});

test('an agent that is not up yet is tried again; close() stops that', async () => {
  let n = 0;
  const r = new ConsoleResizer(async () => {
    n++;
    if (n < 2) throw new Error('connection refused');
    return { exitCode: 0 };
  });
  r.resize(40, 120);
  await tick(1200);
  assert.is(n, 2);
  assert.equal(r.applied, [{ rows: 40, cols: 120 }]);
  const stuck = new ConsoleResizer(async () => {
    throw new Error('connection refused');
  });
  stuck.resize(1, 1);
  stuck.close();
  await tick(1100);
  assert.equal(stuck.applied, []);
});

test.run();
