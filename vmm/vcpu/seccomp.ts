// The seccomp policy of a vCPU worker thread, as Firecracker has one per thread: after setup
// (KVM fds open, kvm_run mapped, its name set), a vCPU thread runs KVM_RUN on its own vCPU fd,
// waits and wakes on futexes (Atomics), posts to main (a write to libuv's async fd), takes the
// kick signal, and lets V8 manage its heap. That is all it may do. Owns the syscall list and
// why each entry is there; the filter encoding is bpf/seccomp.ts's, installing it kvm/libc.ts's.
//
// Measured (docs/security.md, "vCPU threads under seccomp"): strace -f of a worker doing what
// a vCPU worker does between setup and exit (Atomics.wait/notify, postMessage, tgkill kicks,
// allocation-heavy JS), then of tsvmm itself booting and running a guest in the nested sandbox,
// counting only the vCPU threads' tids. Everything else gets EPERM (opening a file too: Node
// may try to read a source map while formatting an error, which must fail, not kill); the
// calls that only an attacker who took over the thread would make (exec, new processes or
// threads, sockets, debugging other processes, loading kernel code) kill the whole VMM.

import { buildFilter, type SeccompPolicy, type SyscallName } from '../../bpf/seccomp';

/** Errno for a syscall outside the list: EPERM, what a refused call gets everywhere. */
export const EPERM = 1;

/** What a vCPU thread may call after setup, and why. */
const ALLOWED: readonly { name: SyscallName; why: string }[] = [
  { name: 'futex', why: 'Atomics.wait/notify on the mailbox and stop flag; V8 and libuv locks' },
  { name: 'mmap', why: "V8 heap pages of this worker's isolate" },
  { name: 'munmap', why: 'V8 heap pages; the seccomp install itself unmaps its copy of the filter' },
  { name: 'mprotect', why: 'V8 code space (W^X flips when it compiles) and guard pages' },
  { name: 'madvise', why: 'V8 returning free heap pages' },
  { name: 'mremap', why: 'large allocations growing' },
  { name: 'brk', why: 'malloc in V8, libuv and koffi' },
  { name: 'write', why: "postMessage to main: uv_async_send's write to the loop's wakeup fd" },
  { name: 'read', why: "the worker's own loop draining its wakeup fd" },
  { name: 'rt_sigreturn', why: 'returning from the kick signal that interrupts KVM_RUN' },
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
const DENIED: readonly SyscallName[] = [
  'execve', 'execveat', 'fork', 'vfork', 'clone', 'clone3', 'ptrace', 'process_vm_readv', 'process_vm_writev',
  'socket', 'socketpair', 'connect', 'bind', 'listen', 'accept', 'accept4', 'mount', 'umount2', 'init_module', 'finit_module', 'kexec_load', 'bpf', 'userfaultfd', 'memfd_create',
  'unshare', 'setns', 'chroot', 'pivot_root', 'setuid', 'setgid', 'seccomp', 'io_uring_setup', 'pidfd_open', 'kill',
];

/**
 * `enforce`: refuse (EPERM) or kill as above. `log`: allow everything but have the kernel log
 * each call outside the list (SECCOMP_RET_LOG, in dmesg as audit type=1326): how the list is
 * checked against a real run (TSVMM_VCPU_SECCOMP=log). `off`: no filter.
 */
export type SeccompMode = 'enforce' | 'log' | 'off';

export function seccompMode(env: string | undefined): SeccompMode {
  if (env === undefined || env === '' || env === 'enforce') return 'enforce';
  if (env === 'log' || env === 'off') return env;
  throw new RangeError(`TSVMM_VCPU_SECCOMP '${env}' must be enforce, log or off`);
}

/** The policy for the vCPU thread that owns `vcpuFd`: ioctl only as KVM_RUN on that fd. */
export function vcpuPolicy(vcpuFd: number, kvmRun: number, mode: Exclude<SeccompMode, 'off'> = 'enforce'): SeccompPolicy {
  const log = { kind: 'log' } as const;
  return {
    allow: [
      { name: 'ioctl', args: [{ index: 0, value: BigInt(vcpuFd) }, { index: 1, value: BigInt(kvmRun) }] },
      ...ALLOWED.map((a) => ({ name: a.name })),
    ],
    deny: DENIED,
    denyAction: mode === 'log' ? log : { kind: 'kill-process' },
    defaultAction: mode === 'log' ? log : { kind: 'errno', errno: EPERM },
  };
}

export function vcpuFilter(vcpuFd: number, kvmRun: number, mode: Exclude<SeccompMode, 'off'> = 'enforce'): Uint8Array {
  return buildFilter(vcpuPolicy(vcpuFd, kvmRun, mode));
}

/** The allowed syscalls with their reasons (docs, tests). */
export const VCPU_ALLOWED = ALLOWED;
export const VCPU_DENIED = DENIED;
