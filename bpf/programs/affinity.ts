// Built-in hint package `affinity` (docs/bpf.md, docs/hints.md), hand-written with the
// assembler: every successful sched_setaffinity in the guest becomes an AFFINITY record, a
// child forked or cloned by a pinned task inherits its mask (another AFFINITY record), and the
// exit of a task that had one becomes UNPIN. Tasks pinned before the package was attached are
// replayed through the same sys_exit hook by the agent (docs/hypercall.md §4.2). Owns the three programs and their
// maps; the record layout comes from `bpf/hints.ts`. Does not touch the VM.
//
// Tracepoint field offsets were read from the kernel's events/*/format files (6.1 and
// 6.18 agree): syscall tracepoints put each argument in an 8-byte slot after
// `int __syscall_nr` at 8, so args start at 16.

import { Asm, fp, r0, r1, r2, r3, r4, r6, r7, r8, r9, w9, w7 } from '../asm';
import { AFFINITY, AFFINITY_MASK_BYTES, HintType, UNPIN } from '../hints';
import { type MapSpec, type Package, MapType, programFromAsm } from '../package';

/** Tracepoint field offsets (checked against both Debian kernels' BTF: test/unit/bpf/kernel-btf.test.ts). */
export const TP = {
  enterPid: 16, enterLen: 24, enterMaskPtr: 32, // sys_enter_sched_setaffinity
  exitRet: 16, // sys_exit_sched_setaffinity
  taskExitPid: 24, // sched/sched_process_exit
  forkChildComm: 28, forkChildPid: 44, // sched/sched_process_fork (6.1 and 6.12 alike)
} as const;

/** `pinned` value: who pinned the task, and the mask it has (a forked child inherits it). */
const PINNED = { tgid: 0, mask: 8, size: 8 + AFFINITY_MASK_BYTES } as const;

/** `stash` value: the arguments of a sched_setaffinity in flight. */
const STASH = { pid: 0, len: 4, ptr: 8, size: 16 } as const;

export const AFFINITY_MAPS: readonly MapSpec[] = [
  { name: 'hints', type: MapType.ringbuf, keySize: 0, valueSize: 0, maxEntries: 64 * 1024, flags: 0 },
  { name: 'stash', type: MapType.hash, keySize: 4, valueSize: STASH.size, maxEntries: 1024, flags: 0 },
  { name: 'pinned', type: MapType.hash, keySize: 4, valueSize: PINNED.size, maxEntries: 4096, flags: 0 },
];

/** sys_enter: stash {pid, len, user_mask_ptr} under the current tid. */
export function affinityEnter(): Asm {
  const KEY = -4, VAL = -24;
  return new Asm()
    .mov(r6, r1)
    .call('get_current_pid_tgid')
    .store('u32', fp, KEY, r0) // low half: tid
    .load('u64', r1, r6, TP.enterPid).store('u32', fp, VAL + STASH.pid, r1)
    .load('u64', r1, r6, TP.enterLen).store('u32', fp, VAL + STASH.len, r1)
    .load('u64', r1, r6, TP.enterMaskPtr).store('u64', fp, VAL + STASH.ptr, r1)
    .ldMap(r1, 'stash')
    .mov(r2, fp).add(r2, KEY)
    .mov(r3, fp).add(r3, VAL)
    .mov(r4, 0) // BPF_ANY
    .call('map_update_elem')
    .mov(r0, 0)
    .exit();
}

/** sys_exit: on success, emit AFFINITY and remember the target in `pinned`; always drop the stash. */
export function affinityExit(): Asm {
  const KEY = -4, REC = -72, PIN_KEY = -76, PIN_VAL = -120;
  const a = new Asm()
    .mov(r6, r1)
    .call('get_current_pid_tgid')
    .mov(r7, r0) // tgid << 32 | tid, kept across calls
    .store('u32', fp, KEY, r7)
    .ldMap(r1, 'stash').mov(r2, fp).add(r2, KEY)
    .call('map_lookup_elem')
    .jeq(r0, 0, 'out') // not a call we saw enter (program loaded mid-syscall)
    .mov(r8, r0)
    .load('u64', r1, r6, TP.exitRet)
    .jne(r1, 0, 'drop')
    .store('u32', fp, REC, HintType.AFFINITY)
    .store('u32', fp, REC + 4, AFFINITY.size)
    .mov(r1, r7).rsh(r1, 32).store('u32', fp, REC + AFFINITY.tgid, r1)
    .load('u32', r9, r8, STASH.pid)
    .jne(r9, 0, 'have_tid')
    .mov(w9, w7) // pid 0 means the caller itself; the 32-bit mov zero-extends
    .label('have_tid')
    .store('u32', fp, REC + AFFINITY.tid, r9)
    .store('u64', fp, REC + AFFINITY.mask, 0).store('u64', fp, REC + AFFINITY.mask + 8, 0)
    .store('u64', fp, REC + AFFINITY.mask + 16, 0).store('u64', fp, REC + AFFINITY.mask + 24, 0)
    // 6.1's get_current_comm does not pad after the NUL: zero the field so no guest stack
    // bytes travel to the host.
    .store('u64', fp, REC + AFFINITY.comm, 0).store('u64', fp, REC + AFFINITY.comm + 8, 0)
    .mov(r1, fp).add(r1, REC + AFFINITY.comm).mov(r2, AFFINITY.commLen)
    .call('get_current_comm')
    .load('u32', r2, r8, STASH.len)
    .jle(r2, AFFINITY_MASK_BYTES, 'len_ok')
    .mov(r2, AFFINITY_MASK_BYTES)
    .label('len_ok')
    .mov(r1, fp).add(r1, REC + AFFINITY.mask)
    .load('u64', r3, r8, STASH.ptr)
    .call('probe_read_user')
    .jne(r0, 0, 'drop') // an unreadable mask would read as "no CPUs": say nothing instead
    .ldMap(r1, 'hints').mov(r2, fp).add(r2, REC).mov(r3, AFFINITY.size).mov(r4, 0)
    .call('ringbuf_output')
    .store('u32', fp, PIN_KEY, r9)
    .mov(r1, r7).rsh(r1, 32).store('u64', fp, PIN_VAL + PINNED.tgid, r1);
  for (let w = 0; w < AFFINITY.maskWords; w++) a.load('u64', r1, fp, REC + AFFINITY.mask + 8 * w).store('u64', fp, PIN_VAL + PINNED.mask + 8 * w, r1);
  return a
    .ldMap(r1, 'pinned').mov(r2, fp).add(r2, PIN_KEY).mov(r3, fp).add(r3, PIN_VAL).mov(r4, 0)
    .call('map_update_elem')
    .label('drop')
    .ldMap(r1, 'stash').mov(r2, fp).add(r2, KEY)
    .call('map_delete_elem')
    .label('out')
    .mov(r0, 0)
    .exit();
}

/** sched_process_exit: a task we reported is gone → UNPIN. */
export function affinityTaskExit(): Asm {
  const KEY = -4, REC = -24;
  return new Asm()
    .load('u32', r1, r1, TP.taskExitPid)
    .store('u32', fp, KEY, r1)
    .ldMap(r1, 'pinned').mov(r2, fp).add(r2, KEY)
    .call('map_lookup_elem')
    .jeq(r0, 0, 'out')
    .store('u32', fp, REC, HintType.UNPIN)
    .store('u32', fp, REC + 4, UNPIN.size)
    .load('u32', r1, fp, KEY).store('u32', fp, REC + UNPIN.tid, r1)
    .call('get_current_pid_tgid')
    .rsh(r0, 32).store('u32', fp, REC + UNPIN.tgid, r0)
    .ldMap(r1, 'hints').mov(r2, fp).add(r2, REC).mov(r3, UNPIN.size).mov(r4, 0)
    .call('ringbuf_output')
    .ldMap(r1, 'pinned').mov(r2, fp).add(r2, KEY)
    .call('map_delete_elem')
    .label('out')
    .mov(r0, 0)
    .exit();
}

/**
 * sched_process_fork: the child of a pinned task (fork or thread) starts with its parent's
 * mask: report it as pinned too, so that its vCPUs stay held while it lives and its exit unpins.
 */
export function affinityFork(): Asm {
  const KEY = -4, REC = -72, CHILD = -76;
  const a = new Asm()
    .mov(r6, r1)
    .call('get_current_pid_tgid') // in the parent: the forking thread
    .mov(r7, r0)
    .store('u32', fp, KEY, r7)
    .ldMap(r1, 'pinned').mov(r2, fp).add(r2, KEY)
    .call('map_lookup_elem')
    .jeq(r0, 0, 'out')
    .mov(r8, r0)
    .store('u32', fp, REC, HintType.AFFINITY)
    .store('u32', fp, REC + 4, AFFINITY.size)
    .mov(r1, r7).rsh(r1, 32).store('u32', fp, REC + AFFINITY.tgid, r1)
    .load('u32', r9, r6, TP.forkChildPid)
    .store('u32', fp, REC + AFFINITY.tid, r9)
    .store('u32', fp, CHILD, r9);
  // The child's comm (its parent's, copied at fork), 4-byte loads: the field is not 8-aligned.
  for (let o = 0; o < AFFINITY.commLen; o += 4) a.load('u32', r1, r6, TP.forkChildComm + o).store('u32', fp, REC + AFFINITY.comm + o, r1);
  for (let w = 0; w < AFFINITY.maskWords; w++) a.load('u64', r1, r8, PINNED.mask + 8 * w).store('u64', fp, REC + AFFINITY.mask + 8 * w, r1);
  return a
    .ldMap(r1, 'pinned').mov(r2, fp).add(r2, CHILD).mov(r3, r8).mov(r4, 0)
    .call('map_update_elem')
    .jne(r0, 0, 'out') // 4096 pinned tasks already: no record without its UNPIN to come
    .ldMap(r1, 'hints').mov(r2, fp).add(r2, REC).mov(r3, AFFINITY.size).mov(r4, 0)
    .call('ringbuf_output')
    .label('out')
    .mov(r0, 0)
    .exit();
}

/** The built-in affinity package. */
export function affinityPackage(): Package {
  const maps = AFFINITY_MAPS.map((m) => ({ ...m }));
  return {
    name: 'affinity',
    license: 'GPL', // probe_read_user and get_current_comm are GPL-only helpers
    maps,
    hintMap: 0,
    programs: [
      programFromAsm('affinity_enter', { kind: 'tracepoint', target: 'syscalls/sys_enter_sched_setaffinity' }, affinityEnter().assemble(), maps),
      programFromAsm('affinity_exit', { kind: 'tracepoint', target: 'syscalls/sys_exit_sched_setaffinity' }, affinityExit().assemble(), maps),
      programFromAsm('affinity_task_exit', { kind: 'tracepoint', target: 'sched/sched_process_exit' }, affinityTaskExit().assemble(), maps),
      programFromAsm('affinity_fork', { kind: 'tracepoint', target: 'sched/sched_process_fork' }, affinityFork().assemble(), maps),
    ],
  };
}
