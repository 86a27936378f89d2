// The agent's load-time replay walk (guest/replay.c, docs/hypercall.md §4.2) on this host, in a
// fresh pid namespace with its own /proc (unshare -p --mount-proc): it sees only the tasks the
// test starts there, replays the mask of a pinned one and the class of a SCHED_FIFO one, leaves
// a default one alone, and leaves each task's state exactly as it was.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { repoRoot } from './harness';

test('one walk replays the pinned task\'s mask and the real-time task\'s class, nothing else', () => {
  const dir = mkdtempSync(join(tmpdir(), 'tsvmm-replay-'));
  try {
    const guest = join(repoRoot(), 'guest');
    const bin = join(dir, 'replay');
    execFileSync('gcc', ['-O1', '-Wall', '-I', guest, '-o', bin, join(repoRoot(), 'test/unit/agent/replay-harness.c'), join(guest, 'replay.c'), join(guest, 'bpfload.c'), join(guest, 'sha256.c')]);
    execFileSync('make', ['-s', '-C', guest, 'build/rtlat']);
    const rtlat = join(guest, 'build/rtlat');
    // In the namespace: a pinned sleeper, a SCHED_FIFO 7 sleeper, a plain one; then the walk
    // (affinity + scheduler), then each task's state read back.
    const script = `
      taskset -c 0 sleep 30 & p=$!
      ${rtlat} fifo:7 sleep:30 >/dev/null & r=$!
      sleep 30 & q=$!
      sleep 0.3
      ${bin} 3
      ${bin} 0
      echo "pinned $(taskset -p $p | sed 's/.*: //') rt $(awk '{print $41, $40}' /proc/$r/stat) plain $(awk '{print $41}' /proc/$q/stat)"
      kill $p $r $q`;
    const r = spawnSync('unshare', ['-p', '-f', '--mount-proc', 'sh', '-c', script], { encoding: 'utf8' });
    assert.is(r.status, 0, r.stderr);
    const lines = r.stdout.trim().split('\n');
    assert.match(lines[0]!, /^tasks [4-9]\d* affinity 1 scheduler 1$/, r.stdout);
    assert.match(lines[1]!, /^tasks \d+ affinity 0 scheduler 0$/, 'nothing replayed without a hook that wants it');
    assert.is(lines[2], 'pinned 1 rt 1 7 plain 0', 'every task keeps the state it had');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test.run();
