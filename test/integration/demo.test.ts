// The paper's loop on the stock kernel, through `tsvmm demo`: the affinity eBPF program is
// injected through the hypercall device, `taskset -c 1` in the guest pins vCPU 1's host thread
// to a single pool CPU (read back by the demo from /proc/<pid>/task/<tid>/status), and when
// the task exits the thread floats over the whole pool again.

import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { readFileSync } from 'node:fs';
import { tsvmm } from './helpers';

/** The rows of one table the demo printed: vCPU → the kernel's Cpus_allowed_list of its thread. */
function table(out: string, title: string): Map<number, string> {
  const start = out.indexOf(title);
  assert.ok(start >= 0, `no '${title}' table in:\n${out}`);
  const rows = new Map<number, string>();
  for (const line of out.slice(start).split('\n').slice(2)) {
    const m = /^\s+(\d+)\s+(\d+)\s+(\S+)/.exec(line);
    if (!m) break;
    rows.set(Number(m[1]), m[3]!);
  }
  return rows;
}

const poolCpus = /Cpus_allowed_list:\s*(\S+)/.exec(readFileSync('/proc/self/status', 'utf8'))![1]!;

test('taskset -c 1 in the guest pins vCPU 1 to one host CPU, and it floats again after exit', async () => {
  const r = await tsvmm(['demo']);
  assert.is(r.code, 0, r.stdout + r.stderr);
  assert.match(r.stdout, /injected eBPF package 'affinity' into the guest: prog ids \d+/);
  const before = table(r.stdout, 'before:');
  const during = table(r.stdout, 'during:');
  const after = table(r.stdout, 'after:');
  assert.is(before.get(1), poolCpus);
  assert.match(during.get(1)!, /^\d+$/, 'vCPU 1 confined to exactly one CPU');
  assert.is(after.get(1), poolCpus);
  assert.match(r.stdout, /host pinned it [\d.]+ ms after/);
});

test.run();
