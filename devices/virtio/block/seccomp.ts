// The seccomp policy of a drive's I/O thread (worker.ts), installed once its setup is done
// (guest RAM viewed, the image open, the io_uring set up and locked to the image): besides what
// every worker thread may do (bpf/seccomp-worker.ts), it reads, writes and syncs its own image
// and enters its own ring. No open, no other fd for those calls: a thread taken over through a
// hostile request reaches no file but the image it already serves.

import { buildFilter, type ArgRule, type SeccompPolicy, type SyscallName } from '../../../bpf/seccomp';
import { workerPolicy, type SeccompMode } from '../../../bpf/seccomp-worker';

/** Calls on the image's fd, and why. */
const ON_IMAGE: readonly { name: SyscallName; why: string }[] = [
  { name: 'pread64', why: 'a one-segment read (FileIo, through libuv: SyncIo, a lone request, a short transfer\'s rest)' },
  { name: 'preadv', why: 'a read of several segments, the same way' },
  { name: 'pwrite64', why: 'a one-segment write' },
  { name: 'pwritev', why: 'a write of several segments' },
  { name: 'fdatasync', why: 'a FLUSH done synchronously' },
];

/** `ringFd`: the thread's io_uring (none when it does synchronous I/O). */
export function blockThreadPolicy(imageFd: number, ringFd: number | undefined, mode: Exclude<SeccompMode, 'off'> = 'enforce'): SeccompPolicy {
  const fdIs = (fd: number): ArgRule[] => [{ index: 0, value: BigInt(fd) }];
  return workerPolicy([
    { name: 'poll' }, // the sleep on the kick eventfd (kvm/libc.ts eventfdWait)
    ...ON_IMAGE.map((c) => ({ name: c.name, args: fdIs(imageFd) })),
    ...(ringFd === undefined ? [] : [{ name: 'io_uring_enter' as const, args: fdIs(ringFd) }]),
  ], mode);
}

export function blockThreadFilter(imageFd: number, ringFd: number | undefined, mode: Exclude<SeccompMode, 'off'> = 'enforce'): Uint8Array {
  return buildFilter(blockThreadPolicy(imageFd, ringFd, mode));
}
