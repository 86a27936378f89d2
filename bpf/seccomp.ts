// Classic BPF seccomp filters (seccomp(2), SECCOMP_SET_MODE_FILTER), built from a policy: the
// sock_filter encoding, the seccomp_data layout, the x86-64 syscall numbers a policy may name,
// and the program shape. It owns those bytes only; installing a filter is kvm/libc.ts's job
// and which syscalls a thread may make is its caller's (bpf/seccomp-worker.ts: what every
// worker thread needs; vmm/vcpu/seccomp.ts, devices/virtio/block/seccomp.ts: each thread's own).
//
// The program, as Firecracker's seccompiler emits it:
//   arch != AUDIT_ARCH_X86_64            -> KILL_PROCESS (another ABI would renumber everything)
//   nr has the x32 bit (0x40000000)      -> KILL_PROCESS
//   nr == <allowed, no arg rule>         -> ALLOW
//   nr == <allowed with arg rules>       -> ALLOW if every arg matches, else the default action
//   nr == <denied>                       -> the deny action
//   anything else                        -> the default action

import { TsvmmError } from '../lib/errors';

/** struct sock_filter: u16 code, u8 jt, u8 jf, u32 k (8 bytes, host order). */
export const SOCK_FILTER_SIZE = 8;
/** The most instructions the kernel accepts in one filter (BPF_MAXINSNS). */
export const BPF_MAXINSNS = 4096;

// Classic BPF opcodes (linux/bpf_common.h).
export const BPF_LD = 0x00;
export const BPF_JMP = 0x05;
export const BPF_RET = 0x06;
export const BPF_W = 0x00;
export const BPF_ABS = 0x20;
export const BPF_JEQ = 0x10;
export const BPF_JSET = 0x40;
export const BPF_K = 0x00;

/** struct seccomp_data offsets: int nr, u32 arch, u64 instruction_pointer, u64 args[6]. */
export const SeccompData = { nr: 0, arch: 4, ip: 8, args: 16 } as const;

export const AUDIT_ARCH_X86_64 = 0xc000003e;
export const X32_SYSCALL_BIT = 0x40000000;

export const SECCOMP_RET_KILL_PROCESS = 0x80000000;
export const SECCOMP_RET_KILL_THREAD = 0x00000000;
export const SECCOMP_RET_TRAP = 0x00030000;
export const SECCOMP_RET_ERRNO = 0x00050000;
export const SECCOMP_RET_LOG = 0x7ffc0000;
export const SECCOMP_RET_ALLOW = 0x7fff0000;

/** What a filter does with a syscall. */
export type SeccompAction = { kind: 'allow' } | { kind: 'kill-process' } | { kind: 'kill-thread' } | { kind: 'trap' } | { kind: 'log' } | { kind: 'errno'; errno: number };

export function actionValue(a: SeccompAction): number {
  switch (a.kind) {
    case 'allow': return SECCOMP_RET_ALLOW;
    case 'kill-process': return SECCOMP_RET_KILL_PROCESS;
    case 'kill-thread': return SECCOMP_RET_KILL_THREAD;
    case 'trap': return SECCOMP_RET_TRAP;
    case 'log': return SECCOMP_RET_LOG;
    case 'errno':
      if (!Number.isInteger(a.errno) || a.errno < 1 || a.errno > 4095) throw new RangeError(`errno ${a.errno} out of 1..4095`);
      return (SECCOMP_RET_ERRNO | a.errno) >>> 0;
  }
}

/** x86-64 syscall numbers (arch/x86/entry/syscalls/syscall_64.tbl), checked against <sys/syscall.h> by the unit test. */
export const SYSCALLS_X86_64 = {
  read: 0, write: 1, open: 2, close: 3, mmap: 9, mprotect: 10, munmap: 11, brk: 12, rt_sigaction: 13,
  rt_sigprocmask: 14, rt_sigreturn: 15, ioctl: 16, pread64: 17, pwrite64: 18, readv: 19, writev: 20, sched_yield: 24,
  mremap: 25, madvise: 28, nanosleep: 35, getpid: 39, socket: 41, connect: 42, accept: 43, sendto: 44, recvfrom: 45,
  sendmsg: 46, recvmsg: 47, bind: 49, listen: 50, socketpair: 53, clone: 56, fork: 57, vfork: 58, execve: 59, exit: 60,
  kill: 62, ptrace: 101, setuid: 105, setgid: 106, gettid: 186, tkill: 200, futex: 202, epoll_wait: 232, tgkill: 234,
  clock_gettime: 228, clock_nanosleep: 230, exit_group: 231, epoll_ctl: 233, openat: 257, restart_syscall: 219,
  mount: 165, umount2: 166, init_module: 175, finit_module: 313, kexec_load: 246, epoll_pwait: 281, accept4: 288,
  process_vm_readv: 310, process_vm_writev: 311, seccomp: 317, getrandom: 318, memfd_create: 319, bpf: 321,
  execveat: 322, userfaultfd: 323, membarrier: 324, pkey_mprotect: 329, io_uring_setup: 425, openat2: 437, clone3: 435,
  pidfd_open: 434, rseq: 334, creat: 85, unshare: 272, setns: 308, chroot: 161, pivot_root: 155,
  poll: 7, ppoll: 271, preadv: 295, pwritev: 296, fdatasync: 75, io_uring_enter: 426, io_uring_register: 427,
} as const;
export type SyscallName = keyof typeof SYSCALLS_X86_64;

/** An argument that must equal `value` (64-bit, compared as two 32-bit halves). */
export interface ArgRule {
  index: 0 | 1 | 2 | 3 | 4 | 5;
  value: bigint;
}

export interface SeccompPolicy {
  /** Allowed syscalls; with `args`, only when every rule matches (else `defaultAction`). */
  allow: readonly { name: SyscallName; args?: readonly ArgRule[] }[];
  /** Syscalls answered with `denyAction` (attacks, not accidents: the thread is compromised). */
  deny?: readonly SyscallName[];
  denyAction?: SeccompAction;
  /** Everything else. */
  defaultAction: SeccompAction;
}

export class SeccompError extends TsvmmError {}

interface Insn { code: number; jt: number; jf: number; k: number }

const stmt = (code: number, k: number): Insn => ({ code, jt: 0, jf: 0, k: k >>> 0 });
const jump = (code: number, k: number, jt: number, jf: number): Insn => ({ code, jt, jf, k: k >>> 0 });

/** The filter program for `policy`, as the bytes of a sock_filter array. */
export function buildFilter(policy: SeccompPolicy): Uint8Array {
  const seen = new Set<string>();
  for (const n of [...policy.allow.map((a) => a.name), ...(policy.deny ?? [])]) {
    if (!(n in SYSCALLS_X86_64)) throw new SeccompError(`unknown syscall ${n}`);
    if (seen.has(n)) throw new SeccompError(`syscall ${n} named twice`);
    seen.add(n);
  }
  const kill = actionValue({ kind: 'kill-process' });
  const def = actionValue(policy.defaultAction);
  const deny = actionValue(policy.denyAction ?? { kind: 'kill-process' });
  const out: Insn[] = [
    stmt(BPF_LD | BPF_W | BPF_ABS, SeccompData.arch),
    jump(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
    stmt(BPF_RET | BPF_K, kill),
    stmt(BPF_LD | BPF_W | BPF_ABS, SeccompData.nr),
    // x32 numbers alias the 64-bit ones with this bit set: refuse the whole ABI.
    jump(BPF_JMP | BPF_JSET | BPF_K, X32_SYSCALL_BIT, 0, 1),
    stmt(BPF_RET | BPF_K, kill),
  ];
  // One block per syscall: "nr == N ? (block body) : next block". Bodies end in RET, so the
  // false branch of each comparison skips exactly the body.
  const blocks: { nr: number; body: Insn[] }[] = [];
  for (const a of policy.allow) {
    const body: Insn[] = [];
    for (const r of a.args ?? []) {
      if (r.value < 0n || r.value > 0xffff_ffff_ffff_ffffn) throw new SeccompError(`${a.name}: arg ${r.index} value out of u64`);
      const off = SeccompData.args + 8 * r.index;
      // Low half, then high half: a mismatch returns the default action.
      body.push(stmt(BPF_LD | BPF_W | BPF_ABS, off), jump(BPF_JMP | BPF_JEQ | BPF_K, Number(r.value & 0xffff_ffffn), 1, 0), stmt(BPF_RET | BPF_K, def));
      body.push(stmt(BPF_LD | BPF_W | BPF_ABS, off + 4), jump(BPF_JMP | BPF_JEQ | BPF_K, Number(r.value >> 32n), 1, 0), stmt(BPF_RET | BPF_K, def));
    }
    body.push(stmt(BPF_RET | BPF_K, SECCOMP_RET_ALLOW));
    blocks.push({ nr: SYSCALLS_X86_64[a.name], body });
  }
  for (const d of policy.deny ?? []) blocks.push({ nr: SYSCALLS_X86_64[d], body: [stmt(BPF_RET | BPF_K, deny)] });
  for (const b of blocks) {
    if (b.body.length > 255) throw new SeccompError('a syscall block is longer than a jump can skip');
    // The arg checks load other words: reload nr before each comparison.
    out.push(stmt(BPF_LD | BPF_W | BPF_ABS, SeccompData.nr), jump(BPF_JMP | BPF_JEQ | BPF_K, b.nr, 0, b.body.length), ...b.body);
  }
  out.push(stmt(BPF_RET | BPF_K, def));
  if (out.length > BPF_MAXINSNS) throw new SeccompError(`filter of ${out.length} instructions is over ${BPF_MAXINSNS}`);
  const bytes = new Uint8Array(out.length * SOCK_FILTER_SIZE);
  const v = new DataView(bytes.buffer);
  out.forEach((i, n) => {
    v.setUint16(n * 8, i.code, true);
    v.setUint8(n * 8 + 2, i.jt);
    v.setUint8(n * 8 + 3, i.jf);
    v.setUint32(n * 8 + 4, i.k, true);
  });
  return bytes;
}

/**
 * Runs a filter the way the kernel does, for tests: the action it returns for a syscall
 * (`nr`, `arch`, `args`). Only the instructions buildFilter emits are implemented.
 */
export function runFilter(filter: Uint8Array, data: { nr: number; arch?: number; args?: readonly bigint[] }): number {
  const v = new DataView(filter.buffer, filter.byteOffset, filter.byteLength);
  const mem = new DataView(new ArrayBuffer(64));
  mem.setInt32(SeccompData.nr, data.nr, true);
  mem.setUint32(SeccompData.arch, data.arch ?? AUDIT_ARCH_X86_64, true);
  (data.args ?? []).forEach((a, i) => mem.setBigUint64(SeccompData.args + 8 * i, a, true));
  let acc = 0;
  for (let pc = 0; pc < filter.length / 8;) {
    const code = v.getUint16(pc * 8, true);
    const jt = v.getUint8(pc * 8 + 2);
    const jf = v.getUint8(pc * 8 + 3);
    const k = v.getUint32(pc * 8 + 4, true);
    switch (code) {
      case BPF_LD | BPF_W | BPF_ABS: acc = mem.getUint32(k, true); pc++; break;
      case BPF_JMP | BPF_JEQ | BPF_K: pc += 1 + (acc === k ? jt : jf); break;
      case BPF_JMP | BPF_JSET | BPF_K: pc += 1 + ((acc & k) !== 0 ? jt : jf); break;
      case BPF_RET | BPF_K: return k;
      default: throw new SeccompError(`opcode 0x${code.toString(16)} at ${pc}`);
    }
  }
  throw new SeccompError('filter fell off its end');
}
