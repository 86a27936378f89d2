// The VMM's start in phases (vmm/startup.ts): Node's start and the module load come from the
// process's own clock and bin/tsvmm.js's mark, koffi's load from kvm/libc, the rest from the
// phases the caller ends; the summary adds up to the time since the process started.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { StartupClock } from '../../../vmm/startup';
import { koffiLoadMs } from '../../../kvm/libc';

const busy = (ms: number) => {
  const end = performance.now() + ms;
  while (performance.now() < end);
};

test('phases in order, each its own length; the total is the time since the process started', () => {
  (globalThis as { __tsvmmBinAt?: number }).__tsvmmBinAt = 5;
  const c = new StartupClock();
  busy(20);
  c.end('memory');
  busy(10);
  // The phases add up to the moment of the last end(), which lies between these two readings
  // (a fixed tolerance after it would fail whenever a loaded machine preempts us in between).
  const before = performance.now();
  c.end('image load');
  const end = performance.now();
  assert.equal(c.phases.map(([n]) => n), ['node start', 'module load', 'koffi', 'memory', 'image load']);
  assert.is(c.phases[0]![1], 5);
  assert.is(c.phases[2]![1], koffiLoadMs());
  assert.ok(koffiLoadMs() > 0, 'koffi was loaded and timed');
  assert.ok(c.phases[3]![1] >= 20 && c.phases[4]![1] >= 10);
  const total = c.phases.reduce((s, [, ms]) => s + ms, 0);
  assert.ok(total >= before - 0.01 && total <= end + 0.01, `${total} not within [${before}, ${end}]`);
  assert.match(c.summary(), /^first KVM_RUN \d+ ms after exec: node start 5, module load \d+, koffi \d+, memory \d+, image load \d+ \(ms\)$/);
  assert.equal(Object.keys(c.toJSON()), ['node start', 'module load', 'koffi', 'memory', 'image load']);
});

test('without bin/tsvmm.js (the library), Node start and module load are one phase', () => {
  delete (globalThis as { __tsvmmBinAt?: number }).__tsvmmBinAt;
  assert.equal(new StartupClock().phases.map(([n]) => n), ['node start + module load']);
});

test.run();
