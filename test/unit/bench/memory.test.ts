// The boot benchmark's memory sample (tools/bench/lib.mjs processMemory): /proc/PID/status in
// MiB for a live process, its resident parts adding up, nothing for a process that is gone.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawnSync } from 'node:child_process';
import { processMemory } from '../../../tools/bench/lib.mjs';

test('this process: RSS = anon + file + shmem, the peak at least RSS', () => {
  const big = new Uint8Array(64 * 2 ** 20).fill(1); // resident anonymous memory it must count
  const m = processMemory(process.pid)!;
  assert.ok(m.anon >= 64, `anon ${m.anon} MiB includes the 64 MiB just touched`);
  assert.ok(Math.abs(m.rss - (m.anon + m.file + m.shmem)) <= 0.3, JSON.stringify(m));
  assert.ok(m.hwm >= m.rss);
  assert.is(big[big.length - 1], 1);
});

test('a process that exited: null', () => {
  const { pid } = spawnSync('true');
  assert.is(processMemory(pid!), null);
});

test.run();
