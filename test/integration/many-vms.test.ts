// Many VMs at once: three in one process (the library), booted in parallel, then three
// `tsvmm exec` processes at once — each VM its own socket, CID space, temp dir and ps entry,
// every exec's output its own, all of them listed by `tsvmm ps` while they run, none after.
// It ran as a stress file (by name only) from 2026-12-06 to 2026-12-07: its six verbose boots
// crashed the nested sandbox's own kernel in CI (docs/testing.md). Its boots are quiet now, as
// every exec and library boot is by default (~1,500 register exits each instead of ~37,000).
// stress: back to it on 2026-12-08: with quiet boots it still met the nested sandbox emulator's fault in 3 of its last 5 CI runs (a library guest's triple fault at stop 25, a sandbox kernel death at stop 26, a library guest that never booted in session 13's second rehearsal; docs/testing.md)

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

const t0 = Date.now();
/** A timed progress line: where the minutes go under emulation. */
const mark = (what: string) => console.log(`many-vms: +${((Date.now() - t0) / 1000).toFixed(1)} s ${what}`);

/** The tail of a VM's console, for a failure message: how far the guest got and what it said. */
const tail = (chunks: Buffer[], lines = 25) => Buffer.concat(chunks).toString('latin1').split('\n').slice(-lines).join('\n');

// Three VMs at a time, not six: six nested guests on the sandbox's two emulated CPUs took the
// sandbox kernel down ("Fatal exception in interrupt") in the first run of this file.
test('three VMs in one process (the library), booted in parallel: each its own, all in tsvmm ps', async () => {
  const consoles: Buffer[][] = [[], [], []];
  // allSettled, not all: a boot that fails must not leave the others running (they would hold
  // this file open until its time limit and show up in the next test's tsvmm ps).
  mark('library boots start');
  const boots = await Promise.allSettled(consoles.map((c, i) => Vm.boot({ memory: '256M', console: (b) => c.push(b) }).then((v) => (mark(`library VM ${i} booted`), v))));
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
    mark('library execs done');
  } finally {
    await Promise.allSettled(vms.map((v) => v.shutdown()));
    mark('library VMs shut down');
  }
  await until('the library VMs gone from tsvmm ps', async () => (await ps()).length === 0, 60_000, 500);
});

test('three tsvmm exec processes at once: each its own output, all in tsvmm ps while they run', async () => {
  // Each command prints its line, then waits for a line on its stdin: all three stay up until
  // the test has seen them in tsvmm ps, however far apart their boots end (a fixed sleep raced
  // the slowest boot under emulation). Waiting on their output, not polling tsvmm ps, keeps the
  // sandbox's two CPUs for the boots.
  let release = () => {};
  const input = new Promise<string>((r) => (release = () => r('go\n')));
  const started: boolean[] = [false, false, false];
  let ended: RunResult | undefined;
  let allStarted = () => {};
  const running = new Promise<void>((r) => (allStarted = r));
  mark('execs start');
  const execs = [0, 1, 2].map((i) =>
    tsvmm(['exec', '--', 'sh', '-c', `echo exec-${i}; read go; echo $go; cat /proc/sys/kernel/random/boot_id`], {
      env, input, timeoutMs: 600_000,
      onStdout: (out) => {
        if (!started[i] && out.includes(`exec-${i}\n`)) {
          started[i] = true;
          mark(`exec ${i} running`);
          if (started.every(Boolean)) allStarted();
        }
      },
    }).then((r) => ((ended ??= r), allStarted(), r)));
  try {
    await running;
    // An exec that ended before all three ran failed to boot: say why.
    if (ended) assert.unreachable(`an exec ended before all three ran: ${ended.code} ${ended.stderr}`);
    const listed = await ps();
    assert.is(listed.length, 3, `three exec VMs in tsvmm ps: ${JSON.stringify(listed)}`);
    assert.is(new Set(listed.map((v) => v.pid)).size, 3, 'one process per exec');
  } finally {
    release();
    await Promise.allSettled(execs);
    mark('execs ended');
  }
  const ids = new Set<string>();
  for (const [i, r] of (await Promise.all(execs)).entries()) {
    assert.is(r.code, 0, r.stderr);
    const [first, go, boot] = r.stdout.trim().split('\n');
    assert.is(first, `exec-${i}`);
    assert.is(go, 'go', 'the command read its stdin');
    ids.add(boot!);
  }
  assert.is(ids.size, 3, 'three different guests answered');
  await until('the exec VMs gone from tsvmm ps', async () => (await ps()).length === 0, 60_000, 500);
});

test.run();
