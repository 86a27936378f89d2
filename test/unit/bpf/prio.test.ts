// The built-in `prio` package: its hook points (docs/hint-programs.md "Hook points"), the PRIO
// record layout, and this host kernel's verifier accepting every program (loaded, not attached,
// with the raw-bpf(2) fixture loader; the guest kernels run it in test/integration/research.test.ts).
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { decodeHints, encodeHint } from '../../../bpf/hints';
import { serializePackage } from '../../../bpf/package';
import { prioPackage } from '../../../bpf/programs/prio';
import { FIXTURES, tmp, tool } from './util';

test('hook points: syscall tracepoints around a kprobe on __sched_setscheduler, plus migrate, exit, wakeup_new', () => {
  const p = prioPackage();
  assert.equal(p.programs.map((g) => `${g.attach.kind} ${g.attach.target}`), [
    'tracepoint syscalls/sys_enter_sched_setscheduler', 'tracepoint syscalls/sys_enter_sched_setparam', 'tracepoint syscalls/sys_enter_sched_setattr',
    'kprobe __sched_setscheduler',
    'tracepoint syscalls/sys_exit_sched_setscheduler', 'tracepoint syscalls/sys_exit_sched_setparam', 'tracepoint syscalls/sys_exit_sched_setattr',
    'tracepoint sched/sched_migrate_task', 'tracepoint sched/sched_process_exit', 'tracepoint sched/sched_wakeup_new',
  ]);
  assert.equal(p.maps.map((m) => m.name), ['hints', 'stash', 'rt', 'config']);
  assert.is(p.maps[p.hintMap!]!.type, 27);
});

test('PRIO records round-trip', () => {
  const b = encodeHint({ type: 'PRIO', tid: 42, cpu: 3, rtprio: 50, policy: 1, event: 'MIGRATE' });
  assert.is(b.length, 32);
  assert.equal(decodeHints(b), [{ type: 'PRIO', tid: 42, cpu: 3, rtprio: 50, policy: 1, event: 'MIGRATE' }]);
});

test('the real kernel verifier accepts every prio program', () => {
  const gcc = tool('gcc', 'cc');
  assert.ok(gcc, 'gcc (the ABI tests need it too)');
  const bin = tmp('pkgload-prio');
  const c = spawnSync(gcc!, ['-O1', '-Wall', '-o', bin, join(FIXTURES, 'pkgload.c'), '-lpthread'], { encoding: 'utf8' });
  assert.is(c.status, 0, c.stderr);
  writeFileSync(tmp('prio.pkg'), serializePackage(prioPackage()));
  const r = spawnSync(bin, [tmp('prio.pkg')], { encoding: 'utf8' });
  assert.is(r.status, 0, `loader failed:\n${r.stdout}${r.stderr}`);
  for (const g of prioPackage().programs) assert.match(r.stdout, `prog ${g.name} ok`);
});

test.run();
