// Typed errors for failed system calls. This module owns turning an errno into its name (Node's
// own table, os.constants.errno, which follows the host's libc) and the SysError type; it must
// not know which call failed for what reason beyond what it is told.

import { constants } from 'node:os';
import { TsvmmError } from '../lib/errors';

// Two names share a number here (EAGAIN/EWOULDBLOCK, ENOTSUP/EOPNOTSUPP): the first one listed wins.
const ERRNO_NAMES = new Map<number, string>();
for (const [name, n] of Object.entries(constants.errno)) if (!ERRNO_NAMES.has(n)) ERRNO_NAMES.set(n, name);

export function errnoName(errno: number): string {
  return ERRNO_NAMES.get(errno) ?? `errno ${errno}`;
}

/** A failed libc or KVM call: `call` names it (e.g. "KVM_CREATE_VCPU"), `errno` is what the kernel said. */
export class SysError extends TsvmmError {
  declare readonly call: string;
  declare readonly errno: number;
  /** The errno's name, e.g. "EINVAL". */
  readonly code: string;

  constructor(call: string, errno: number, detail?: string) {
    super(`${call} failed: ${errnoName(errno)}${detail ? ` (${detail})` : ''}`, { call, errno });
    this.code = errnoName(errno);
  }
}
