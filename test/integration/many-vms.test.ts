// Many VMs at once: three in one process (the library), booted in parallel, then three
// `tsvmm exec` processes at once — each VM its own socket, CID space, temp dir and ps entry,
// every exec's output its own, all of them listed by `tsvmm ps` while they run, none after.

import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Vm } from '../../vmm/lib/index';
import type { VmEntry } from '../../vmm/api/registry';
import { tsvmm, until } from './helpers';

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

// Three VMs at a time, not six: six nested guests on the sandbox's two emulated CPUs took the
// sandbox kernel down ("Fatal exception in interrupt") in the first run of this file.
test('three VMs in one process (the library), booted in parallel: each its own, all in tsvmm ps', async () => {
  const vms = await Promise.all([1, 2, 3].map(() => Vm.boot({ memory: '256M' })));
  try {
    assert.is(new Set(vms.map((v) => v.id)).size, 3);
    const listed = await ps();
    assert.equal(listed.filter((v) => v.pid === process.pid).map((v) => v.id).sort(), vms.map((v) => v.id).sort());
    const outs = await Promise.all(vms.map((v, i) => v.exec(`echo lib-${i}; cat /proc/sys/kernel/random/boot_id`)));
    const boots = new Set<string>();
    outs.forEach((o, i) => {
      assert.is(o.status, 0, o.stderr);
      const [first, boot] = o.stdout.trim().split('\n');
      assert.is(first, `lib-${i}`);
      boots.add(boot!);
    });
    assert.is(boots.size, 3, 'three different guests answered');
  } finally {
    await Promise.all(vms.map((v) => v.shutdown()));
  }
  await until('the library VMs gone from tsvmm ps', async () => (await ps()).length === 0, 60_000, 500);
});

test('three tsvmm exec processes at once: each its own output, all in tsvmm ps while they run', async () => {
  const execs = [1, 2, 3].map((i) => tsvmm(['exec', '--', 'sh', '-c', `echo exec-${i}; sleep 15; cat /proc/sys/kernel/random/boot_id`], { env }));
  await until('three exec VMs in tsvmm ps', async () => (await ps()).length >= 3, 600_000, 1000);
  assert.is(new Set((await ps()).map((v) => v.pid)).size, 3, 'one process per exec');
  const boots = new Set<string>();
  for (const [i, r] of (await Promise.all(execs)).entries()) {
    assert.is(r.code, 0, r.stderr);
    const [first, boot] = r.stdout.trim().split('\n');
    assert.is(first, `exec-${i + 1}`);
    boots.add(boot!);
  }
  assert.is(boots.size, 3, 'three different guests answered');
  await until('the exec VMs gone from tsvmm ps', async () => (await ps()).length === 0, 60_000, 500);
});

test.run();
