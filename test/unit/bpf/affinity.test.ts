import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { decodeHints, encodeHint, HintDecodeError } from '../../../bpf/hints';
import { decode } from '../../../bpf/insn';
import { helperName } from '../../../bpf/helpers';
import { affinityPackage } from '../../../bpf/programs/affinity';

test('package shape: four tracepoint programs sharing three maps, ringbuf hint map', () => {
  const p = affinityPackage();
  assert.equal(p.programs.map((g) => g.attach), [
    { kind: 'tracepoint', target: 'syscalls/sys_enter_sched_setaffinity' },
    { kind: 'tracepoint', target: 'syscalls/sys_exit_sched_setaffinity' },
    { kind: 'tracepoint', target: 'sched/sched_process_exit' },
    { kind: 'tracepoint', target: 'sched/sched_process_fork' },
  ]);
  assert.is(p.maps[p.hintMap!]!.type, 27);
  const used = (i: number): string[] => [...new Set(p.programs[i]!.relocations.map((r) => p.maps[r.map]!.name))].sort();
  assert.equal(used(0), ['stash']);
  assert.equal(used(1), ['hints', 'pinned', 'stash']);
  assert.equal(used(2), ['hints', 'pinned']);
  assert.equal(used(3), ['hints', 'pinned']);
  const helpers = decode(p.programs[1]!.insns).flatMap((l) => (l.insn.kind === 'call' ? [helperName(l.insn.imm)] : []));
  assert.equal(helpers, ['get_current_pid_tgid', 'map_lookup_elem', 'get_current_comm', 'probe_read_user', 'ringbuf_output', 'map_update_elem', 'map_delete_elem']);
});

test('hint records: encode/decode, unknown types skipped, bad lengths rejected', () => {
  const a = encodeHint({ type: 'AFFINITY', tgid: 100, tid: 101, comm: 'spscq', cpus: [0, 3, 64, 255], mask: [] });
  const u = encodeHint({ type: 'UNPIN', tid: 101, tgid: 100 });
  const unknown = new Uint8Array([99, 0, 0, 0, 12, 0, 0, 0, 1, 2, 3, 4]);
  const hs = decodeHints(Buffer.concat([a, unknown, u]));
  assert.is(hs.length, 3);
  const h0 = hs[0]!;
  assert.ok(h0.type === 'AFFINITY');
  if (h0.type === 'AFFINITY') {
    assert.equal(h0.cpus, [0, 3, 64, 255]);
    assert.equal(h0.mask, [9n, 1n, 0n, 1n << 63n]);
    assert.is(h0.comm, 'spscq');
    assert.is(h0.tid, 101);
  }
  assert.equal(hs[1], { type: 'UNKNOWN', code: 99, bytes: unknown });
  assert.equal(hs[2], { type: 'UNPIN', tid: 101, tgid: 100 });
  const bad = u.slice(); bad[4] = 4;
  assert.throws(() => decodeHints(bad), (e: unknown) => e instanceof HintDecodeError && /record length 4/.test((e as Error).message));
  const short = a.slice(); short[4] = 16;
  assert.throws(() => decodeHints(short), /type 1 record of 16 bytes, needs 64/);
  assert.throws(() => decodeHints(a.subarray(0, 60)), /record length 64 out of 8..60/);
});

test.run();
