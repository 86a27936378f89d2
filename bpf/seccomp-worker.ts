// The part of a seccomp policy every tsvmm worker thread shares (bpf/seccomp.ts encodes it): what
// a Node worker needs to stay alive once filtered — V8's heap, waits and wake-ups on futexes,
// posting to main through libuv's async fd, signals, its own teardown — and the calls that mean
// the thread was taken over. Each thread kind adds the few calls of its own job to this
// (vmm/vcpu/seccomp.ts: KVM_RUN on its vCPU fd; devices/virtio/block/seccomp.ts: I/O on its
// image). Owns these two lists, why each entry is there, and the TSVMM_SECCOMP switch.
//
// Measured (docs/security.md, "Worker threads under seccomp"): strace -f of a worker doing what
// a vCPU worker does between setup and exit (Atomics.wait/notify, postMessage, tgkill kicks,
// allocation-heavy JS), then of tsvmm itself booting and running a guest in the nested sandbox,
// counting only the filtered threads' tids. Everything else gets EPERM (opening a file too: Node
// may try to read a source map while formatting an error, which must fail, not kill); the
// calls that only an attacker who took over the thread would make (exec, new processes or
// threads, sockets, debugging other processes, loading kernel code, new io_urings) kill the
// whole VMM.

import type { SeccompAction, SeccompPolicy, SyscallName } from './seccomp';

/** Errno for a syscall outside the list: EPERM, what a refused call gets everywhere. */
export const EPERM = 1;

export interface AllowedCall {
  name: SyscallName;
  why: string;
}

/** What any filtered worker thread may call, and why. */
export const WORKER_ALLOWED: readonly AllowedCall[] = [
  { name: 'futex', why: 'Atomics.wait/notify on mailboxes and control words; V8 and libuv locks' },
  { name: 'mmap', why: "V8 heap pages of this worker's isolate" },
  { name: 'munmap', why: 'V8 heap pages; the seccomp install itself unmaps its copy of the filter' },
  { name: 'mprotect', why: 'V8 code space (W^X flips when it compiles) and guard pages' },
  { name: 'madvise', why: 'V8 returning free heap pages' },
  { name: 'mremap', why: 'large allocations growing' },
  { name: 'brk', why: 'malloc in V8, libuv and koffi' },
  { name: 'write', why: "postMessage to main: uv_async_send's write to the loop's wakeup fd; eventfd signals" },
  { name: 'read', why: "the worker's own loop draining its wakeup fd; eventfd reads" },
  { name: 'rt_sigreturn', why: 'returning from a signal handler (the kick that interrupts KVM_RUN)' },
  { name: 'rt_sigprocmask', why: 'libuv and V8 masking signals around critical sections; thread exit' },
  { name: 'getpid', why: "Node's signal handling checks which process it is in" },
  { name: 'gettid', why: 'thread identity (libc caches it; cheap to allow)' },
  { name: 'sched_yield', why: 'V8 spin locks' },
  { name: 'clock_gettime', why: 'when the vDSO falls back to the syscall' },
  { name: 'clock_nanosleep', why: 'libc sleeps' },
  { name: 'nanosleep', why: 'libc sleeps' },
  { name: 'restart_syscall', why: 'an interrupted sleep resumed by the kernel' },
  { name: 'getrandom', why: 'V8 hash seeds' },
  { name: 'epoll_pwait', why: "the worker's loop after its script ended (teardown)" },
  { name: 'epoll_wait', why: 'the same on other libuv builds' },
  { name: 'epoll_ctl', why: 'teardown of the loop' },
  { name: 'close', why: 'teardown of the loop' },
  { name: 'exit', why: 'the thread ends' },
];

/** Calls that mean the thread was taken over: the VMM is killed (SIGSYS) rather than go on. */
export const TAKEOVER_CALLS: readonly SyscallName[] = [
  'execve', 'execveat', 'fork', 'vfork', 'clone', 'clone3', 'ptrace', 'process_vm_readv', 'process_vm_writev',
  'socket', 'socketpair', 'connect', 'bind', 'listen', 'accept', 'accept4', 'mount', 'umount2', 'init_module', 'finit_module', 'kexec_load', 'bpf', 'userfaultfd', 'memfd_create',
  'unshare', 'setns', 'chroot', 'pivot_root', 'setuid', 'setgid', 'seccomp', 'io_uring_setup', 'io_uring_register', 'pidfd_open', 'kill',
];

/**
 * `enforce`: refuse (EPERM) or kill as above. `log`: allow everything but have the kernel log
 * each call outside the list (SECCOMP_RET_LOG, in dmesg as audit type=1326): how a list is
 * checked against a real run (TSVMM_SECCOMP=log). `off`: no filter.
 */
export type SeccompMode = 'enforce' | 'log' | 'off';

/** The mode TSVMM_SECCOMP asks for (unset: enforce); every filtered thread kind reads it. */
export function seccompMode(env: string | undefined = process.env.TSVMM_SECCOMP): SeccompMode {
  if (env === undefined || env === '' || env === 'enforce') return 'enforce';
  if (env === 'log' || env === 'off') return env;
  throw new RangeError(`TSVMM_SECCOMP '${env}' must be enforce, log or off`);
}

/** A worker thread's policy: the shared lists plus `own`, the calls of its job (with their argument rules). */
export function workerPolicy(own: SeccompPolicy['allow'], mode: Exclude<SeccompMode, 'off'> = 'enforce'): SeccompPolicy {
  const log: SeccompAction = { kind: 'log' };
  return {
    allow: [...own, ...WORKER_ALLOWED.map((a) => ({ name: a.name }))],
    deny: TAKEOVER_CALLS,
    denyAction: mode === 'log' ? log : { kind: 'kill-process' },
    defaultAction: mode === 'log' ? log : { kind: 'errno', errno: EPERM },
  };
}
