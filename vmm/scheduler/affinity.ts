// Host thread CPU affinity through libc (koffi): sched_setaffinity / sched_getaffinity on one
// kernel thread id. This is the scheduler's only syscall code and the only place the cpu_set_t
// layout lives; it must not decide anything (policy.ts) or keep state (scheduler.ts).

import koffi from 'koffi';
import { constants } from 'node:os';
import { MAX_CPUS } from './topology';

export class AffinityError extends Error {
  constructor(
    readonly call: string,
    readonly tid: number,
    readonly errno: number,
  ) {
    super(`${call}(tid ${tid}) failed: ${errnoName(errno)} (errno ${errno})`);
    this.name = 'AffinityError';
  }
  /** Symbolic errno, e.g. 'EINVAL' (no CPU of the mask usable) or 'ESRCH' (no such thread). */
  get code(): string {
    return errnoName(this.errno);
  }
}

interface Libc {
  set: (tid: number, size: number, mask: Uint8Array) => number;
  get: (tid: number, size: number, mask: Uint8Array) => number;
}

let libc: Libc | undefined;
function load(): Libc {
  if (!libc) {
    const lib = koffi.load('libc.so.6');
    libc = {
      set: lib.func('int sched_setaffinity(int pid, size_t cpusetsize, const void *mask)') as Libc['set'],
      get: lib.func('int sched_getaffinity(int pid, size_t cpusetsize, void *mask)') as Libc['get'],
    };
  }
  return libc;
}

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

/** Confines kernel thread `tid` (0 = the calling thread) to `cpus`. Throws AffinityError. */
export function setThreadAffinity(tid: number, cpus: readonly number[]): void {
  if (cpus.length === 0) throw new RangeError('an affinity needs at least one CPU');
  const mask = encode(cpus);
  if (load().set(tid, mask.length, mask) !== 0) throw new AffinityError('sched_setaffinity', tid, koffi.errno());
}

/** The CPUs kernel thread `tid` (0 = the calling thread) may run on, ascending. Throws AffinityError. */
export function getThreadAffinity(tid: number): number[] {
  // The kernel wants room for nr_cpu_ids bits (EINVAL otherwise): grow until it fits.
  for (let size = DEFAULT_SET_BYTES; ; size *= 2) {
    const mask = new Uint8Array(size);
    if (load().get(tid, size, mask) === 0) return decode(mask);
    const errno = koffi.errno();
    if (errno !== constants.errno.EINVAL || size >= MAX_CPUS / 8) throw new AffinityError('sched_getaffinity', tid, errno);
  }
}

function errnoName(errno: number): string {
  for (const [name, value] of Object.entries(constants.errno)) if (value === errno) return name;
  return `errno ${errno}`;
}
