// Built-in hint package `prio` (docs/hints.md, docs/hint-programs.md), hand-written with the
// assembler: it tells the host on which guest CPU (= vCPU) real-time tasks (SCHED_FIFO/RR)
// live, so that the host can give that vCPU's thread a real-time class too (the
// double-scheduling problem: a guest RT task is only as punctual as its vCPU thread). Owns its
// programs and maps; the record layout comes from `bpf/hints.ts`. Does not touch the VM.
//
// Hook points, chosen to work unchanged on Debian's 6.1 and 6.12 kernels (both checked against
// their BTF, docs/hint-programs.md "Hook points"):
// - the policy change itself: the kernel has no tracepoint for it, so a kprobe on
//   `__sched_setscheduler(p, attr, user, pi)` (a BTF FUNC, not inlined, in both), the one
//   function every sched_setscheduler/sched_setparam/sched_setattr syscall goes through; it
//   knows the target task (`p`) and its CPU (`task_thread_info(p)->cpu`: x86 keeps
//   thread_info first in task_struct, `cpu` at byte 20 in both kernels) and the kernel's
//   copy of the new attributes (`struct sched_attr`, uapi: policy at 4, priority at 20). The
//   syscall tracepoints around it say which task the caller named (the pid argument) and
//   whether the call succeeded (the return value): a change is reported only when it happened.
// - migration: `sched/sched_migrate_task` (fired by set_task_cpu for every move, asleep or not);
// - exit: `sched/sched_process_exit`;
// - fork: `sched/sched_wakeup_new` (the child's CPU is chosen just before it; an RT parent's
//   child inherits the class unless SCHED_RESET_ON_FORK).
// Tracepoint field offsets are identical in both kernels' trace_event_raw_* BTF structs.

import { Asm, fp, r0, r1, r2, r3, r4, r6, r7, r8, r9, w7, w9, type Operand, type Reg } from '../asm';
import { HintType, PRIO, PrioEvent } from '../hints';
import { type MapSpec, type Package, MapType, programFromAsm } from '../package';

/** Tracepoint field offsets (checked against both Debian kernels' BTF: test/unit/bpf/kernel-btf.test.ts). */
export const TP = {
  sysArg0: 16, // sys_enter_*: the pid argument
  sysRet: 16, // sys_exit_*
  pid: 24, // sched_migrate_task, sched_process_exit, sched_wakeup_new
  wakeupPrio: 28, // sched_wakeup_new: p->prio (0..98 real time: 99 - rt_priority)
  wakeupCpu: 32, // sched_wakeup_new: target_cpu
  migrateDest: 36, // sched_migrate_task: dest_cpu
} as const;
/** x86 pt_regs as a kprobe program sees it: the first two arguments. */
export const REGS = { di: 112, si: 104 } as const;
/** task_struct starts with thread_info on x86; thread_info.cpu. */
export const TASK_CPU = 20;
/** struct sched_attr (uapi). */
export const ATTR = { policy: 4, priority: 20 } as const;
const SCHED_FIFO = 1;
const SCHED_RR = 2;
/** sched_setparam and SCHED_FLAG_KEEP_POLICY reach __sched_setscheduler with policy -1: keep it. */
const KEEP_POLICY = -1;

/** `stash` value: one call in flight, keyed by the caller's tid. */
const STASH = { target: 0, cpu: 4, policy: 8, prio: 12, seen: 16, size: 24 } as const;
/** `rt` value: a real-time task the host was told about, keyed by its tid. */
const RT = { cpu: 0, prio: 4, policy: 8, size: 16 } as const;
/** `config` value (array, one entry; the host may write it: PUT /bpf/programs/{h}/maps/config). */
export const PRIO_CONFIG = { off: 0, minPrio: 4, size: 8 } as const;

export const PRIO_MAPS: readonly MapSpec[] = [
  { name: 'hints', type: MapType.ringbuf, keySize: 0, valueSize: 0, maxEntries: 64 * 1024, flags: 0 },
  { name: 'stash', type: MapType.hash, keySize: 4, valueSize: STASH.size, maxEntries: 1024, flags: 0 },
  { name: 'rt', type: MapType.hash, keySize: 4, valueSize: RT.size, maxEntries: 4096, flags: 0 },
  { name: 'config', type: MapType.array, keySize: 4, valueSize: PRIO_CONFIG.size, maxEntries: 1, flags: 0 },
];

/** Stack slots shared by the programs (all below fp). */
const KEY = -4, RT_KEY = -8, RT_VAL = -24, REC = -64, CFG_KEY = -68;

/** Writes a PRIO record at REC from the operands (read now, before any call) and outputs it. */
function emit(a: Asm, f: { tid: Operand; cpu: Operand; rtprio: Operand; policy: Operand; event: number }): Asm {
  return a
    .store('u32', fp, REC, HintType.PRIO).store('u32', fp, REC + 4, PRIO.size)
    .store('u32', fp, REC + PRIO.tid, f.tid).store('u32', fp, REC + PRIO.cpu, f.cpu)
    .store('u32', fp, REC + PRIO.rtprio, f.rtprio).store('u32', fp, REC + PRIO.policy, f.policy)
    .store('u32', fp, REC + PRIO.event, f.event).store('u32', fp, REC + 28, 0)
    .ldMap(r1, 'hints').mov(r2, fp).add(r2, REC).mov(r3, PRIO.size).mov(r4, 0)
    .call('ringbuf_output');
}

/**
 * Jumps to `skip` when the host switched reporting off or `prio` (a register that survives
 * the call: r6..r9) is below the host's minimum (the `config` map, zero = report all).
 */
function configGate(a: Asm, prio: Reg, skip: string): Asm {
  return a
    .store('u32', fp, CFG_KEY, 0)
    .ldMap(r1, 'config').mov(r2, fp).add(r2, CFG_KEY)
    .call('map_lookup_elem')
    .jeq(r0, 0, `${skip}_cfg_ok`)
    .load('u32', r1, r0, PRIO_CONFIG.off).jne(r1, 0, skip)
    .load('u32', r1, r0, PRIO_CONFIG.minPrio).jgt(r1, prio, skip)
    .label(`${skip}_cfg_ok`);
}

/** sys_enter_sched_set{scheduler,param,attr}: stash the task the caller names (pid 0: itself). */
export function prioEnter(): Asm {
  const VAL = -32;
  const a = new Asm()
    .mov(r6, r1)
    .call('get_current_pid_tgid')
    .store('u32', fp, KEY, r0)
    .load('u64', r1, r6, TP.sysArg0)
    .jne(r1, 0, 'have')
    .load('u32', r1, fp, KEY)
    .label('have')
    .store('u32', fp, VAL + STASH.target, r1);
  for (let o = 4; o < STASH.size; o += 4) a.store('u32', fp, VAL + o, 0);
  return a
    .ldMap(r1, 'stash').mov(r2, fp).add(r2, KEY).mov(r3, fp).add(r3, VAL).mov(r4, 0)
    .call('map_update_elem')
    .mov(r0, 0)
    .exit();
}

/** kprobe __sched_setscheduler: the target's CPU and the new policy/priority, for a stashed call. */
export function prioSetscheduler(): Asm {
  const read = (a: Asm, regOff: number, add: number, field: number) => a
    .load('u64', r3, r6, regOff).add(r3, add)
    .mov(r1, r7).add(r1, field).mov(r2, 4)
    .call('probe_read_kernel')
    .jne(r0, 0, 'out');
  const a = new Asm()
    .mov(r6, r1)
    .call('get_current_pid_tgid')
    .store('u32', fp, KEY, r0)
    .ldMap(r1, 'stash').mov(r2, fp).add(r2, KEY)
    .call('map_lookup_elem')
    .jeq(r0, 0, 'out') // not from a syscall we saw enter (a kernel thread, or loaded mid-call)
    .mov(r7, r0);
  read(a, REGS.di, TASK_CPU, STASH.cpu);
  read(a, REGS.si, ATTR.policy, STASH.policy);
  read(a, REGS.si, ATTR.priority, STASH.prio);
  return a
    .store('u32', r7, STASH.seen, 1)
    .label('out')
    .mov(r0, 0)
    .exit();
}

/** sys_exit_sched_set*: on success, report the task becoming real time, changing priority, or leaving. */
export function prioExit(): Asm {
  const a = new Asm()
    .mov(r6, r1)
    .call('get_current_pid_tgid')
    .store('u32', fp, KEY, r0)
    .ldMap(r1, 'stash').mov(r2, fp).add(r2, KEY)
    .call('map_lookup_elem')
    .jeq(r0, 0, 'out')
    .mov(r7, r0) // the stash entry, valid until deleted at 'drop'
    .load('u64', r1, r6, TP.sysRet).jne(r1, 0, 'drop') // the change did not happen
    .load('u32', r1, r7, STASH.seen).jeq(r1, 0, 'drop')
    .load('u32', r1, r7, STASH.target).store('u32', fp, RT_KEY, r1)
    .load('u32', r8, r7, STASH.prio)
    .load('u32', r9, r7, STASH.policy)
    .jeq(w9, KEEP_POLICY, 'keep')
    .jeq(r9, SCHED_FIFO, 'rt')
    .jeq(r9, SCHED_RR, 'rt')
    .label('not_rt') // any other policy (or switched off by the host): a reported task leaves
    .ldMap(r1, 'rt').mov(r2, fp).add(r2, RT_KEY)
    .call('map_lookup_elem')
    .jeq(r0, 0, 'drop')
    .load('u32', r7, r0, RT.cpu)
    .load('u32', r1, fp, RT_KEY);
  emit(a, { tid: r1, cpu: r7, rtprio: 0, policy: r9, event: PrioEvent.SET })
    .ldMap(r1, 'rt').mov(r2, fp).add(r2, RT_KEY)
    .call('map_delete_elem')
    .goto('drop')
    .label('keep') // sched_setparam: a new priority for a task we know, same policy
    .ldMap(r1, 'rt').mov(r2, fp).add(r2, RT_KEY)
    .call('map_lookup_elem')
    .jeq(r0, 0, 'drop')
    .store('u32', r0, RT.prio, r8)
    .load('u32', r7, r0, RT.cpu)
    .load('u32', r9, r0, RT.policy)
    .load('u32', r1, fp, RT_KEY);
  emit(a, { tid: r1, cpu: r7, rtprio: r8, policy: r9, event: PrioEvent.SET })
    .goto('drop')
    .label('rt');
  configGate(a, r8, 'not_rt')
    .load('u32', r1, r7, STASH.cpu).store('u32', fp, RT_VAL + RT.cpu, r1)
    .store('u32', fp, RT_VAL + RT.prio, r8).store('u32', fp, RT_VAL + RT.policy, r9).store('u32', fp, RT_VAL + 12, 0)
    .ldMap(r1, 'rt').mov(r2, fp).add(r2, RT_KEY).mov(r3, fp).add(r3, RT_VAL).mov(r4, 0)
    .call('map_update_elem')
    .jne(r0, 0, 'drop') // 4096 real-time tasks tracked already: say nothing rather than lose the exit
    .load('u32', r7, fp, RT_VAL + RT.cpu)
    .load('u32', r1, fp, RT_KEY);
  return emit(a, { tid: r1, cpu: r7, rtprio: r8, policy: r9, event: PrioEvent.SET })
    .label('drop')
    .ldMap(r1, 'stash').mov(r2, fp).add(r2, KEY)
    .call('map_delete_elem')
    .label('out')
    .mov(r0, 0)
    .exit();
}

/** sched_migrate_task: a task we reported moves to another CPU. */
export function prioMigrate(): Asm {
  const a = new Asm()
    .mov(r6, r1)
    .load('u32', r1, r6, TP.pid).store('u32', fp, RT_KEY, r1)
    .ldMap(r1, 'rt').mov(r2, fp).add(r2, RT_KEY)
    .call('map_lookup_elem')
    .jeq(r0, 0, 'out')
    .load('u32', r8, r6, TP.migrateDest)
    .load('u32', r1, r0, RT.cpu).jeq(r1, r8, 'out')
    .store('u32', r0, RT.cpu, r8)
    .load('u32', r7, r0, RT.prio)
    .load('u32', r9, r0, RT.policy)
    .load('u32', r1, fp, RT_KEY);
  return emit(a, { tid: r1, cpu: r8, rtprio: r7, policy: r9, event: PrioEvent.MIGRATE })
    .label('out')
    .mov(r0, 0)
    .exit();
}

/** sched_process_exit: a task we reported is gone. */
export function prioTaskExit(): Asm {
  const a = new Asm()
    .load('u32', r1, r1, TP.pid).store('u32', fp, RT_KEY, r1)
    .ldMap(r1, 'rt').mov(r2, fp).add(r2, RT_KEY)
    .call('map_lookup_elem')
    .jeq(r0, 0, 'out')
    .load('u32', r7, r0, RT.cpu)
    .load('u32', r9, r0, RT.policy)
    .load('u32', r1, fp, RT_KEY);
  return emit(a, { tid: r1, cpu: r7, rtprio: 0, policy: r9, event: PrioEvent.EXIT })
    .ldMap(r1, 'rt').mov(r2, fp).add(r2, RT_KEY)
    .call('map_delete_elem')
    .label('out')
    .mov(r0, 0)
    .exit();
}

/** sched_wakeup_new: a child born real time (it inherited its parent's class) on its first CPU. */
export function prioFork(): Asm {
  const a = new Asm()
    .mov(r6, r1)
    .load('u32', r7, r6, TP.wakeupPrio)
    .jsgt(w7, 98, 'out') // kernel prio 0..98 is rt_priority 99..1; 99+ is not real time
    .jslt(w7, 0, 'out') // -1: SCHED_DEADLINE, not what this program reports
    .mov(r8, 99).sub(r8, r7);
  configGate(a, r8, 'out')
    .load('u32', r1, r6, TP.pid).store('u32', fp, RT_KEY, r1)
    .load('u32', r1, r6, TP.wakeupCpu).store('u32', fp, RT_VAL + RT.cpu, r1)
    .store('u32', fp, RT_VAL + RT.prio, r8)
    .mov(r9, SCHED_FIFO) // the parent's policy when we know it (RR is inherited too)
    .call('get_current_pid_tgid')
    .store('u32', fp, KEY, r0)
    .ldMap(r1, 'rt').mov(r2, fp).add(r2, KEY)
    .call('map_lookup_elem')
    .jeq(r0, 0, 'policy_known')
    .load('u32', r9, r0, RT.policy)
    .label('policy_known')
    .store('u32', fp, RT_VAL + RT.policy, r9).store('u32', fp, RT_VAL + 12, 0)
    .ldMap(r1, 'rt').mov(r2, fp).add(r2, RT_KEY).mov(r3, fp).add(r3, RT_VAL).mov(r4, 0)
    .call('map_update_elem')
    .jne(r0, 0, 'out')
    .load('u32', r7, fp, RT_VAL + RT.cpu)
    .load('u32', r1, fp, RT_KEY);
  return emit(a, { tid: r1, cpu: r7, rtprio: r8, policy: r9, event: PrioEvent.FORK })
    .label('out')
    .mov(r0, 0)
    .exit();
}

const SET_SYSCALLS = ['sched_setscheduler', 'sched_setparam', 'sched_setattr'] as const;

/** The built-in prio package. */
export function prioPackage(): Package {
  const maps = PRIO_MAPS.map((m) => ({ ...m }));
  const enter = prioEnter().assemble();
  const exit = prioExit().assemble();
  return {
    name: 'prio',
    license: 'GPL', // probe_read_kernel is GPL-only
    maps,
    hintMap: 0,
    programs: [
      ...SET_SYSCALLS.map((s) => programFromAsm(`prio_enter_${s.slice(9)}`, { kind: 'tracepoint', target: `syscalls/sys_enter_${s}` }, enter, maps)),
      programFromAsm('prio_setscheduler', { kind: 'kprobe', target: '__sched_setscheduler' }, prioSetscheduler().assemble(), maps),
      ...SET_SYSCALLS.map((s) => programFromAsm(`prio_exit_${s.slice(9)}`, { kind: 'tracepoint', target: `syscalls/sys_exit_${s}` }, exit, maps)),
      programFromAsm('prio_migrate', { kind: 'tracepoint', target: 'sched/sched_migrate_task' }, prioMigrate().assemble(), maps),
      programFromAsm('prio_task_exit', { kind: 'tracepoint', target: 'sched/sched_process_exit' }, prioTaskExit().assemble(), maps),
      programFromAsm('prio_fork', { kind: 'tracepoint', target: 'sched/sched_wakeup_new' }, prioFork().assemble(), maps),
    ],
  };
}
