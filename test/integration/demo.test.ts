// The paper's loop on the stock kernel, through `tsvmm demo`: the affinity eBPF program is
// injected through the hypercall device, `taskset -c 1` in the guest pins vCPU 1's host thread
// to a single pool CPU (read back by the demo from /proc/<pid>/task/<tid>/status), and when
// the task exits the thread floats over the whole pool again. The pin is held for 3 s, with the
// thread id and the /proc line to watch it.

import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { readFileSync } from 'node:fs';
import { tsvmm } from './helpers';

/** The rows of one table the demo printed: vCPU → its thread's tid and the kernel's Cpus_allowed_list. */
function table(out: string, title: string): Map<number, { tid: number; cpus: string }> {
  const start = out.indexOf(title);
  assert.ok(start >= 0, `no '${title}' table in:\n${out}`);
  const rows = new Map<number, { tid: number; cpus: string }>();
  for (const line of out.slice(start).split('\n').slice(2)) {
    const m = /^\s+(\d+)\s+(\d+)\s+(\S+)/.exec(line);
    if (!m) break;
    rows.set(Number(m[1]), { tid: Number(m[2]), cpus: m[3]! });
  }
  return rows;
}

const poolCpus = /Cpus_allowed_list:\s*(\S+)/.exec(readFileSync('/proc/self/status', 'utf8'))![1]!;

test('taskset -c 1 in the guest pins vCPU 1 to one host CPU for 3 s, watchable in /proc, and it floats again after exit', async () => {
  // While the demo holds the pin, read the thread's status file it names, from here.
  let seenFromHere: string | undefined;
  // quiet: the kernel log through the emulated UART costs minutes in a loaded sandbox (docs/testing.md).
  const r = await tsvmm(['demo', '--append', 'quiet'], {
    onStdout: (out) => {
      const m = /grep Cpus_allowed_list (\/proc\/\d+\/task\/\d+\/status)\n/.exec(out);
      if (m && seenFromHere === undefined) seenFromHere = /Cpus_allowed_list:\s*(\S+)/.exec(readFileSync(m[1]!, 'utf8'))?.[1] ?? '';
    },
  });
  assert.is(r.code, 0, r.stdout + r.stderr);
  assert.match(r.stdout, /injected eBPF package 'affinity' into the guest: prog ids \d+/);
  const before = table(r.stdout, 'before:');
  const during = table(r.stdout, 'during:');
  const after = table(r.stdout, 'after:');
  assert.is(before.get(1)!.cpus, poolCpus);
  assert.match(during.get(1)!.cpus, /^\d+$/, 'vCPU 1 confined to exactly one CPU');
  assert.is(after.get(1)!.cpus, poolCpus);
  assert.match(r.stdout, /host pinned it [\d.]+ ms after/);
  // How to watch it: the thread of vCPU 1 and its status file, read back while the pin is held.
  const tid = during.get(1)!.tid;
  const watch = new RegExp(`vCPU 1 is host thread ${tid} of tsvmm \\(pid (\\d+)\\)`).exec(r.stdout);
  assert.ok(watch, `the demo names vCPU 1's thread ${tid}:\n${r.stdout}`);
  assert.match(r.stdout, `  grep Cpus_allowed_list /proc/${watch![1]}/task/${tid}/status\n`);
  const held = [...r.stdout.matchAll(/^ {2}after ([\d.]+) s: Cpus_allowed_list: (\S+)$/gm)].map((m) => ({ s: Number(m[1]), cpus: m[2] }));
  assert.ok(held.length >= 3, r.stdout);
  assert.ok(held.every((h) => h.cpus === during.get(1)!.cpus), `pinned throughout: ${JSON.stringify(held)}`);
  assert.ok(held[held.length - 1]!.s >= 3, `held for ${held[held.length - 1]!.s} s`);
  assert.is(seenFromHere, during.get(1)!.cpus, 'the status file named shows the pin from outside the demo');
});

test.run();
