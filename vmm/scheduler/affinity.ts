// Host thread CPU affinity: sched_setaffinity / sched_getaffinity (bound in kvm/libc.ts) on one
// kernel thread id. This is the scheduler's only syscall code and the only place the cpu_set_t
// layout lives; it must not decide anything (policy.ts) or keep state (scheduler.ts). Failures
// are SysErrors naming the call, the errno and the tid.

import { constants } from 'node:os';
import { SysError } from '../../kvm/errors';
import { schedGetaffinity, schedSetaffinity } from '../../kvm/libc';
import { MAX_CPUS } from './topology';

/**
 * cpu_set_t is an array of unsigned longs, CPU n at bit n % 64 of long n / 64; on little-endian
 * x86_64 that is simply bit n % 8 of byte n / 8. glibc's own cpu_set_t is 128 bytes.
 */
const DEFAULT_SET_BYTES = 128;

function encode(cpus: readonly number[]): Uint8Array {
  let max = -1;
  for (const c of cpus) {
    if (!Number.isInteger(c) || c < 0 || c >= MAX_CPUS) throw new RangeError(`CPU ${c} is out of range 0..${MAX_CPUS - 1}`);
    max = Math.max(max, c);
  }
  const bytes = new Uint8Array(Math.max(DEFAULT_SET_BYTES, Math.ceil((max + 1) / 64) * 8));
  for (const c of cpus) bytes[c >> 3]! |= 1 << (c & 7);
  return bytes;
}

function decode(bytes: Uint8Array): number[] {
  const out: number[] = [];
  for (let i = 0; i < bytes.length; i++) for (let b = 0; b < 8; b++) if (bytes[i]! & (1 << b)) out.push(i * 8 + b);
  return out;
}

/** Confines kernel thread `tid` (0 = the calling thread) to `cpus`. Throws SysError. */
export function setThreadAffinity(tid: number, cpus: readonly number[]): void {
  if (cpus.length === 0) throw new RangeError('an affinity needs at least one CPU');
  schedSetaffinity(tid, encode(cpus));
}

/** The CPUs kernel thread `tid` (0 = the calling thread) may run on, ascending. Throws SysError. */
export function getThreadAffinity(tid: number): number[] {
  // The kernel wants room for nr_cpu_ids bits (EINVAL otherwise): grow until it fits.
  for (let size = DEFAULT_SET_BYTES; ; size *= 2) {
    const mask = new Uint8Array(size);
    try {
      schedGetaffinity(tid, mask);
      return decode(mask);
    } catch (e) {
      if (!(e instanceof SysError) || e.errno !== constants.errno.EINVAL || size >= MAX_CPUS / 8) throw e;
    }
  }
}
