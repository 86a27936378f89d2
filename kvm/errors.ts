// Typed errors for failed system calls. This module owns the errno → name table and the
// SysError type; it must not know which call failed for what reason beyond what it is told.

const ERRNO_NAMES: Record<number, string> = {
  1: 'EPERM', 2: 'ENOENT', 3: 'ESRCH', 4: 'EINTR', 5: 'EIO', 6: 'ENXIO', 7: 'E2BIG', 9: 'EBADF',
  11: 'EAGAIN', 12: 'ENOMEM', 13: 'EACCES', 14: 'EFAULT', 16: 'EBUSY', 17: 'EEXIST', 19: 'ENODEV',
  22: 'EINVAL', 24: 'EMFILE', 25: 'ENOTTY', 28: 'ENOSPC', 34: 'ERANGE', 38: 'ENOSYS', 95: 'EOPNOTSUPP',
};

export function errnoName(errno: number): string {
  return ERRNO_NAMES[errno] ?? `errno ${errno}`;
}

/** A failed libc or KVM call: `call` names it (e.g. "KVM_CREATE_VCPU"), `errno` is what the kernel said. */
export class SysError extends Error {
  readonly call: string;
  readonly errno: number;
  readonly code: string;

  constructor(call: string, errno: number, detail?: string) {
    super(`${call} failed: ${errnoName(errno)}${detail ? ` (${detail})` : ''}`);
    this.name = 'SysError';
    this.call = call;
    this.errno = errno;
    this.code = errnoName(errno);
  }
}
