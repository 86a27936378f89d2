// Many VMs at once: three in one process (the library), booted in parallel, then three
// `tsvmm exec` processes at once — each VM its own socket, CID space, temp dir and ps entry,
// every exec's output its own, all of them listed by `tsvmm ps` while they run, none after.
// stress: six nested guests at once (three library VMs, then three exec processes) crash the nested sandbox's own kernel (L1 KVM 'stack guard page was hit', twice in the final CI run of 2026-12-06)

import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Vm } from '../../vmm/lib/index';
import type { VmEntry } from '../../vmm/api/registry';
import { tsvmm, until, type RunResult } from './helpers';

const dir = mkdtempSync(join(tmpdir(), 'tsvmm-many-'));
// A registry of our own, so `tsvmm ps` sees only this file's VMs (the library's too).
const env = { ...process.env, XDG_RUNTIME_DIR: join(dir, 'run') };
process.env.XDG_RUNTIME_DIR = env.XDG_RUNTIME_DIR;
test.after(() => rmSync(dir, { recursive: true, force: true }));

const ps = async (): Promise<VmEntry[]> => {
  const r = await tsvmm(['ps', '--json'], { env });
  assert.is(r.code, 0, r.stderr);
  return JSON.parse(r.stdout) as VmEntry[];
};

/** The tail of a VM's console, for a failure message: how far the guest got and what it said. */
const tail = (chunks: Buffer[], lines = 25) => Buffer.concat(chunks).toString('latin1').split('\n').slice(-lines).join('\n');

// Three VMs at a time, not six: six nested guests on the sandbox's two emulated CPUs took the
// sandbox kernel down ("Fatal exception in interrupt") in the first run of this file.
test('three VMs in one process (the library), booted in parallel: each its own, all in tsvmm ps', async () => {
  const consoles: Buffer[][] = [[], [], []];
  // allSettled, not all: a boot that fails must not leave the others running (they would hold
  // this file open until its time limit and show up in the next test's tsvmm ps).
  const boots = await Promise.allSettled(consoles.map((c) => Vm.boot({ memory: '256M', console: (b) => c.push(b) })));
  const vms = boots.flatMap((b) => (b.status === 'fulfilled' ? [b.value] : []));
  try {
    boots.forEach((b, i) => {
      if (b.status === 'rejected') assert.unreachable(`VM ${i}: ${(b.reason as Error).message}; its console ended:\n${tail(consoles[i]!)}`);
    });
    assert.is(new Set(vms.map((v) => v.id)).size, 3);
    const listed = await ps();
    assert.equal(listed.filter((v) => v.pid === process.pid).map((v) => v.id).sort(), vms.map((v) => v.id).sort());
    const outs = await Promise.all(vms.map((v, i) => v.exec(`echo lib-${i}; cat /proc/sys/kernel/random/boot_id`)));
    const ids = new Set<string>();
    outs.forEach((o, i) => {
      assert.is(o.status, 0, o.stderr);
      const [first, boot] = o.stdout.trim().split('\n');
      assert.is(first, `lib-${i}`);
      ids.add(boot!);
    });
    assert.is(ids.size, 3, 'three different guests answered');
  } finally {
    await Promise.allSettled(vms.map((v) => v.shutdown()));
  }
  await until('the library VMs gone from tsvmm ps', async () => (await ps()).length === 0, 60_000, 500);
});

test('three tsvmm exec processes at once: each its own output, all in tsvmm ps while they run', async () => {
  const execs = [1, 2, 3].map((i) => tsvmm(['exec', '--', 'sh', '-c', `echo exec-${i}; sleep 15; cat /proc/sys/kernel/random/boot_id`], { env }));
  let ended: RunResult | undefined;
  for (const e of execs) void e.then((r) => (ended ??= r));
  try {
    // An exec that ends before all three are listed failed to boot: say why, without waiting on.
    await until('three exec VMs in tsvmm ps', async () => {
      if (ended) assert.unreachable(`an exec ended before three VMs were listed: ${ended.code} ${ended.stderr}`);
      return (await ps()).length >= 3;
    }, 600_000, 1000);
    assert.is(new Set((await ps()).map((v) => v.pid)).size, 3, 'one process per exec');
  } finally {
    await Promise.allSettled(execs);
  }
  const ids = new Set<string>();
  for (const [i, r] of (await Promise.all(execs)).entries()) {
    assert.is(r.code, 0, r.stderr);
    const [first, boot] = r.stdout.trim().split('\n');
    assert.is(first, `exec-${i + 1}`);
    ids.add(boot!);
  }
  assert.is(ids.size, 3, 'three different guests answered');
  await until('the exec VMs gone from tsvmm ps', async () => (await ps()).length === 0, 60_000, 500);
});

test.run();
