// The seccomp policy of a vCPU worker thread, as Firecracker has one per thread: after setup
// (KVM fds open, kvm_run mapped, its name set), a vCPU thread runs KVM_RUN on its own vCPU fd
// and otherwise does only what every worker thread does (bpf/seccomp-worker.ts: futex waits
// and wake-ups, posting to main, the kick signal, V8's heap). The filter encoding is
// bpf/seccomp.ts's, installing it kvm/libc.ts's.

import { buildFilter, type SeccompPolicy } from '../../bpf/seccomp';
import { workerPolicy, type SeccompMode } from '../../bpf/seccomp-worker';

/** The policy for the vCPU thread that owns `vcpuFd`: ioctl only as KVM_RUN on that fd. */
export function vcpuPolicy(vcpuFd: number, kvmRun: number, mode: Exclude<SeccompMode, 'off'> = 'enforce'): SeccompPolicy {
  return workerPolicy([{ name: 'ioctl', args: [{ index: 0, value: BigInt(vcpuFd) }, { index: 1, value: BigInt(kvmRun) }] }], mode);
}

export function vcpuFilter(vcpuFd: number, kvmRun: number, mode: Exclude<SeccompMode, 'off'> = 'enforce'): Uint8Array {
  return buildFilter(vcpuPolicy(vcpuFd, kvmRun, mode));
}
