// The kernel's own view of CPU affinity, for tests: what /proc says a thread may run on, read
// and parsed here independently of vmm/scheduler/topology.ts (the code under test).
import { readFileSync } from 'node:fs';

/** Expands a kernel CPU list (`0-3,8`; sysfs and procfs print no strides) into CPU numbers. */
export function expandCpuList(list: string): number[] {
  const text = list.trim();
  if (text === '') return [];
  return text.split(',').flatMap((item) => {
    const [a, b = a] = item.split('-').map(Number);
    return Array.from({ length: b! - a! + 1 }, (_, i) => a! + i);
  });
}

/** `Cpus_allowed_list` of a thread of `pid` (this process by default), or of the process itself. */
export function cpusAllowed(tid?: number, pid: number | 'self' = 'self'): number[] {
  const path = tid === undefined ? `/proc/${pid}/status` : `/proc/${pid}/task/${tid}/status`;
  const m = /^Cpus_allowed_list:\s*(\S*)$/m.exec(readFileSync(path, 'utf8'));
  if (!m) throw new Error(`${path}: no Cpus_allowed_list line`);
  return expandCpuList(m[1]!);
}
