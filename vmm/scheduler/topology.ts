// Host CPU topology for the vCPU scheduler: the CPU list syntax (`0-3,8,10-11`, parsed and
// printed), the online CPUs and their cores/packages read from sysfs, the CPUs this process may
// run on, and the resulting pool. It only reads files; it must not change any affinity (that is
// affinity.ts) nor decide placements (policy.ts). Every path is an argument so tests can point
// it at synthetic trees.

import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { TsvmmError } from '../../lib/errors';

/** Largest CPU number accepted anywhere (the kernel's CONFIG_NR_CPUS maximum is 8192). */
export const MAX_CPUS = 8192;

export class CpuListError extends TsvmmError {
  constructor(readonly input: string, detail: string) {
    super(`bad CPU list ${JSON.stringify(input)}: ${detail}`);
  }
}

export class TopologyError extends TsvmmError {}

/**
 * Parses the kernel's CPU list syntax into sorted, distinct CPU numbers: comma-separated
 * items, each `N`, `N-M`, or `N-M:used/group` (the kernel's bitmap_parselist stride form:
 * of every `group` CPUs in N..M take the first `used`). Surrounding whitespace is ignored,
 * so sysfs files can be passed as read; an empty string is the empty set (sysfs `offline`).
 */
export function parseCpuList(input: string): number[] {
  const text = input.trim();
  if (text === '') return [];
  const cpus = new Set<number>();
  for (const item of text.split(',')) {
    const m = /^(\d+)(?:-(\d+)(?::(\d+)\/(\d+))?)?$/.exec(item.trim());
    if (!m) throw new CpuListError(input, `item ${JSON.stringify(item)} is not N, N-M or N-M:used/group`);
    const first = cpuNumber(input, m[1]!);
    const last = m[2] === undefined ? first : cpuNumber(input, m[2]);
    if (last < first) throw new CpuListError(input, `range ${first}-${last} runs backwards`);
    const used = m[3] === undefined ? 1 : Number(m[3]);
    const group = m[4] === undefined ? 1 : Number(m[4]);
    if (used < 1 || group < 1 || used > group) {
      throw new CpuListError(input, `stride ${used}/${group} needs 1 <= used <= group`);
    }
    for (let cpu = first; cpu <= last; cpu++) if ((cpu - first) % group < used) cpus.add(cpu);
  }
  return [...cpus].sort((a, b) => a - b);
}

function cpuNumber(input: string, digits: string): number {
  const n = Number(digits);
  if (n >= MAX_CPUS) throw new CpuListError(input, `CPU ${digits} is beyond the limit of ${MAX_CPUS} CPUs`);
  return n;
}

/** Prints CPU numbers in the canonical kernel form: ascending, runs collapsed (`0-3,8,10-11`). */
export function formatCpuList(cpus: Iterable<number>): string {
  const sorted = [...new Set(cpus)].sort((a, b) => a - b);
  const parts: string[] = [];
  for (let i = 0; i < sorted.length; ) {
    let j = i;
    while (j + 1 < sorted.length && sorted[j + 1] === sorted[j]! + 1) j++;
    parts.push(j === i ? `${sorted[i]}` : `${sorted[i]}-${sorted[j]}`);
    i = j + 1;
  }
  return parts.join(',');
}

/** One online host CPU and where it sits. */
export interface HostCpu {
  readonly cpu: number;
  /**
   * The physical core, as a host-wide key: the lowest CPU number among its SMT siblings.
   * (core_id alone repeats across packages, so it cannot identify a core.)
   */
  readonly core: number;
  /** sysfs core_id, physical_package_id and die_id (-1 when the file is absent). */
  readonly coreId: number;
  readonly packageId: number;
  readonly dieId: number;
  /** This CPU and its SMT siblings, online ones only, ascending. */
  readonly siblings: readonly number[];
}

export const SYSFS_CPU_ROOT = '/sys/devices/system/cpu';

/**
 * Reads every online CPU's topology under `root` (default /sys/devices/system/cpu). Missing
 * per-CPU topology files (some virtual machines and containers lack them) make that CPU its
 * own core in package 0 rather than failing: the scheduler then simply sees no SMT.
 */
export function readHostTopology(root: string = SYSFS_CPU_ROOT): HostCpu[] {
  const onlineText = readText(join(root, 'online'));
  if (onlineText === undefined) throw new TopologyError(`cannot read ${join(root, 'online')}`);
  const online = parseCpuList(onlineText);
  if (online.length === 0) throw new TopologyError(`${join(root, 'online')} lists no CPU`);
  const onlineSet = new Set(online);
  return online.map((cpu) => {
    const dir = join(root, `cpu${cpu}`, 'topology');
    const sib = readText(join(dir, 'thread_siblings_list'));
    const siblings = sib === undefined ? [cpu] : parseCpuList(sib).filter((c) => onlineSet.has(c));
    if (!siblings.includes(cpu)) siblings.push(cpu);
    siblings.sort((a, b) => a - b);
    return {
      cpu,
      core: siblings[0]!,
      coreId: readInt(join(dir, 'core_id')),
      packageId: readInt(join(dir, 'physical_package_id')),
      dieId: readInt(join(dir, 'die_id')),
      siblings,
    };
  });
}

/**
 * The CPUs this process may run on, from `Cpus_allowed_list` of /proc/self/status (the same
 * set sched_getaffinity(0) gives, without an FFI call). Read at start-up, before any vCPU
 * thread is pinned: the main thread's own mask is what the pool defaults to.
 */
export function readAllowedCpus(statusPath = '/proc/self/status'): number[] {
  const text = readText(statusPath);
  if (text === undefined) throw new TopologyError(`cannot read ${statusPath}`);
  const line = /^Cpus_allowed_list:\s*(.*)$/m.exec(text);
  if (!line) throw new TopologyError(`${statusPath} has no Cpus_allowed_list line`);
  return parseCpuList(line[1]!);
}

export interface PoolOptions {
  /** sysfs CPU directory (tests pass a synthetic tree). */
  sysfsRoot?: string;
  /** /proc/<pid>/status-like file holding Cpus_allowed_list. */
  statusPath?: string;
  /** The user's `--host-cpus` list; default: every CPU that is online and allowed. */
  hostCpus?: string;
}

/**
 * The host CPU pool the scheduler may use: online ∩ allowed, or exactly `hostCpus` when given.
 * Asking for a CPU that is offline or outside this process's affinity is an error (pinning
 * there would fail with EINVAL later, far from the flag that caused it).
 */
export function hostPool(opts: PoolOptions = {}): HostCpu[] {
  const topology = readHostTopology(opts.sysfsRoot);
  const allowed = new Set(readAllowedCpus(opts.statusPath));
  const usable = topology.filter((c) => allowed.has(c.cpu));
  if (opts.hostCpus === undefined) {
    if (usable.length === 0) throw new TopologyError('no online CPU is in this process\'s affinity mask');
    return usable;
  }
  const wanted = parseCpuList(opts.hostCpus);
  if (wanted.length === 0) throw new TopologyError('--host-cpus names no CPU');
  const byCpu = new Map(usable.map((c) => [c.cpu, c]));
  const missing = wanted.filter((c) => !byCpu.has(c));
  if (missing.length > 0) {
    throw new TopologyError(
      `--host-cpus ${formatCpuList(missing)}: not online or not allowed for this process ` +
        `(usable: ${formatCpuList(byCpu.keys())})`,
    );
  }
  return wanted.map((c) => byCpu.get(c)!);
}

function readText(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return undefined;
  }
}

function readInt(path: string): number {
  const text = readText(path)?.trim();
  if (text === undefined || !/^-?\d+$/.test(text)) return -1;
  return Number(text);
}
