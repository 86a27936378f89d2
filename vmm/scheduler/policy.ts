// Placement decisions of the vCPU scheduler, as a pure function: pool + vCPU count + policy +
// guest hint state (+ the previous plan, for stability) → the host CPUs each vCPU thread should
// be allowed on, with the reason. No syscalls, no clocks, no logging: scheduler.ts owns state,
// validation and applying; this module must only ever return CPUs taken from the pool.

import { formatCpuList, type HostCpu } from './topology';
import { TsvmmError } from '../../lib/errors';

export type Policy = 'none' | 'static' | 'hinted';
export const POLICIES: readonly Policy[] = ['none', 'static', 'hinted'];

/** The part of a host CPU the policy looks at. */
export type PoolCpu = Pick<HostCpu, 'cpu' | 'core'>;

/**
 * How a vCPU is placed: floating over many CPUs, on its `static` CPU, or (hinted) on CPUs
 * reserved for it or its group — `dedicated` when no other vCPU uses them, `shared` when the
 * pool ran out.
 */
export type PlacementKind = 'float' | 'static' | 'dedicated' | 'shared';

export interface Placement {
  readonly vcpu: number;
  /** Host CPUs the vCPU thread may run on: non-empty, ascending, always a subset of the pool. */
  readonly cpus: readonly number[];
  readonly kind: PlacementKind;
  readonly reason: string;
  /** Guest tids whose current mask includes this vCPU (hinted state, whatever the policy). */
  readonly tasks: readonly number[];
}

export interface PlanInput {
  readonly pool: readonly PoolCpu[];
  readonly vcpus: number;
  readonly policy: Policy;
  /**
   * Guest tid → the vCPUs that task is confined to (validated by the caller: indices in range,
   * non-empty, not every vCPU — a task allowed everywhere pins nothing and is not listed).
   */
  readonly tasks: ReadonlyMap<number, readonly number[]>;
  /** The plan currently applied: hinted vCPUs keep their CPUs when they still may. */
  readonly previous?: readonly Placement[];
}

export class PolicyError extends TsvmmError {}

/** Computes the desired placement of every vCPU (index i of the result is vCPU i). */
export function plan(input: PlanInput): Placement[] {
  const { pool, vcpus, policy, tasks } = input;
  if (!Number.isInteger(vcpus) || vcpus < 1) throw new PolicyError(`vCPU count ${vcpus} must be a positive integer`);
  if (pool.length === 0) throw new PolicyError('the host CPU pool is empty');
  if (!POLICIES.includes(policy)) throw new PolicyError(`unknown policy ${JSON.stringify(policy)}`);
  if (new Set(pool.map((c) => c.cpu)).size !== pool.length) throw new PolicyError('the host CPU pool lists a CPU twice');

  const tasksOf: number[][] = Array.from({ length: vcpus }, () => []);
  for (const [tid, set] of tasks) {
    if (set.length === 0 || set.length >= vcpus) throw new PolicyError(`task ${tid}: mask must name some but not all vCPUs`);
    for (const v of set) {
      if (!Number.isInteger(v) || v < 0 || v >= vcpus) throw new PolicyError(`task ${tid}: vCPU ${v} does not exist`);
      tasksOf[v]!.push(tid);
    }
  }
  for (const t of tasksOf) t.sort((a, b) => a - b);

  const all = pool.map((c) => c.cpu).sort((a, b) => a - b);
  if (policy === 'none') {
    return tasksOf.map((t, vcpu) => ({ vcpu, cpus: all, kind: 'float', reason: 'policy none: floats over the pool', tasks: t }));
  }
  if (policy === 'static') return planStatic(pool, vcpus, tasksOf);
  return planHinted(pool, vcpus, tasks, tasksOf, input.previous ?? []);
}

/**
 * Pool CPUs in the order they are handed out: one CPU of every physical core first (cores by
 * lowest CPU number), then the second SMT sibling of every core, and so on. Dedicated vCPUs
 * thus share a core only once every core already carries one.
 */
export function dedicationOrder(pool: readonly PoolCpu[]): number[] {
  const byCore = new Map<number, number[]>();
  for (const c of [...pool].sort((a, b) => a.cpu - b.cpu)) {
    const list = byCore.get(c.core) ?? [];
    list.push(c.cpu);
    byCore.set(c.core, list);
  }
  const cores = [...byCore.values()].sort((a, b) => a[0]! - b[0]!);
  const order: number[] = [];
  for (let rank = 0; order.length < pool.length; rank++) {
    for (const cpus of cores) if (rank < cpus.length) order.push(cpus[rank]!);
  }
  return order;
}

function planStatic(pool: readonly PoolCpu[], vcpus: number, tasksOf: number[][]): Placement[] {
  const order = dedicationOrder(pool);
  const n = order.length;
  return tasksOf.map((t, vcpu) => {
    const cpu = order[vcpu % n]!;
    const reason =
      vcpus <= n
        ? `static: own CPU ${cpu}`
        : `static: ${vcpus} vCPUs > ${n} pool CPUs, wraps around: CPU ${cpu} shared with vCPUs ` +
          formatCpuList(sameSlot(vcpu, n, vcpus));
    return { vcpu, cpus: [cpu], kind: vcpus <= n ? 'static' : 'shared', reason, tasks: t };
  });
}

/** The other vCPUs that wrap onto the same slot as `vcpu`. */
function sameSlot(vcpu: number, n: number, vcpus: number): number[] {
  const out: number[] = [];
  for (let v = vcpu % n; v < vcpus; v += n) if (v !== vcpu) out.push(v);
  return out;
}

/**
 * A set of vCPUs that receives as many CPUs as it has vCPUs. A vCPU that is the only vCPU of
 * some task is a unit of its own (pinned to one CPU). The other hinted vCPUs are grouped by the
 * tasks that span them (connected components), and each group floats over its own CPUs: the
 * guest may move those tasks between the group's vCPUs, so the group needs that many CPUs but
 * no vCPU of it needs a particular one.
 */
interface Unit {
  readonly vcpus: number[];
  readonly tids: number[];
  readonly cpus: number[];
}

function planHinted(
  pool: readonly PoolCpu[],
  vcpus: number,
  tasks: ReadonlyMap<number, readonly number[]>,
  tasksOf: number[][],
  previous: readonly Placement[],
): Placement[] {
  const single = new Set<number>();
  for (const set of tasks.values()) if (set.length === 1) single.add(set[0]!);

  // Union-find over non-single hinted vCPUs, joined by every task that spans several of them.
  const parent = new Map<number, number>();
  const find = (v: number): number => {
    let r = v;
    while (parent.get(r) !== r) r = parent.get(r)!;
    parent.set(v, r);
    return r;
  };
  for (const set of tasks.values()) {
    const free = set.filter((v) => !single.has(v));
    for (const v of free) if (!parent.has(v)) parent.set(v, v);
    for (const v of free.slice(1)) {
      const a = find(free[0]!);
      const b = find(v);
      if (a !== b) parent.set(Math.max(a, b), Math.min(a, b));
    }
  }
  const groups = new Map<number, number[]>();
  for (const v of [...parent.keys()].sort((a, b) => a - b)) {
    const r = find(v);
    groups.set(r, [...(groups.get(r) ?? []), v]);
  }
  const units: Unit[] = [
    ...[...single].map((v) => ({ vcpus: [v], tids: [], cpus: [] })),
    ...[...groups.values()].map((vs) => ({ vcpus: vs, tids: [], cpus: [] })),
  ].sort((a, b) => a.vcpus[0]! - b.vcpus[0]!);
  for (const u of units) {
    const tids = new Set<number>();
    for (const v of u.vcpus) for (const t of tasksOf[v]!) tids.add(t);
    u.tids.push(...[...tids].sort((a, b) => a - b));
  }

  const inPool = new Set(pool.map((c) => c.cpu));
  const coreOf = new Map(pool.map((c) => [c.cpu, c.core]));
  const users = new Map<number, number>(); // CPU → units holding it
  const coreUsers = new Map<number, number>(); // core → CPUs of it held
  const claim = (u: Unit, cpu: number): void => {
    u.cpus.push(cpu);
    users.set(cpu, (users.get(cpu) ?? 0) + 1);
    if (users.get(cpu) === 1) coreUsers.set(coreOf.get(cpu)!, (coreUsers.get(coreOf.get(cpu)!) ?? 0) + 1);
  };

  // Pass 1, stability: a unit keeps CPUs it held exclusively before, so pinning one more task
  // never moves a vCPU that is already pinned.
  const prevDedicated = new Map<number, readonly number[]>();
  for (const p of previous) if (p.kind === 'dedicated') prevDedicated.set(p.vcpu, p.cpus);
  for (const u of units) {
    for (const v of u.vcpus) {
      for (const cpu of prevDedicated.get(v) ?? []) {
        if (u.cpus.length < u.vcpus.length && inPool.has(cpu) && !users.has(cpu)) claim(u, cpu);
      }
    }
  }

  // Pass 2: free CPUs, preferring the core with fewest held CPUs (distinct cores first).
  const order = dedicationOrder(pool);
  const rank = new Map(order.map((cpu, i) => [cpu, i]));
  const best = (candidates: number[], key: (cpu: number) => number): number | undefined => {
    let pick: number | undefined;
    for (const cpu of candidates) {
      if (pick === undefined || key(cpu) < key(pick) || (key(cpu) === key(pick) && rank.get(cpu)! < rank.get(pick)!)) pick = cpu;
    }
    return pick;
  };
  for (const u of units) {
    // A group larger than the whole pool gets the whole pool, not a CPU twice.
    while (u.cpus.length < Math.min(u.vcpus.length, order.length)) {
      const free = order.filter((cpu) => !users.has(cpu));
      let cpu = best(free, (c) => coreUsers.get(coreOf.get(c)!) ?? 0);
      if (cpu === undefined) {
        // Pass 3, out of CPUs: share the least used one, never one this unit already has.
        const others = order.filter((c) => !u.cpus.includes(c));
        cpu = best(others, (c) => users.get(c) ?? 0)!;
      }
      claim(u, cpu);
    }
  }

  const out: Placement[] = tasksOf.map((t, vcpu) => ({ vcpu, cpus: [], kind: 'float', reason: '', tasks: t }));
  const hintedCount = units.reduce((n, u) => n + u.vcpus.length, 0);
  for (const u of units) {
    const cpus = [...u.cpus].sort((a, b) => a - b);
    const shared = cpus.some((c) => users.get(c)! > 1) || u.cpus.length < u.vcpus.length;
    const what =
      u.vcpus.length === 1
        ? `tasks ${u.tids.join(',')} pinned here`
        : `tasks ${u.tids.join(',')} confined to vCPUs ${formatCpuList(u.vcpus)}`;
    const where = u.vcpus.length === 1 ? `CPU ${cpus[0]}` : `CPUs ${formatCpuList(cpus)} for the group`;
    const reason = shared
      ? `hinted: ${what}; pool exhausted (${hintedCount} hinted vCPUs, ${pool.length} CPUs): shares ${where}`
      : `hinted: ${what}; dedicated ${where}`;
    for (const v of u.vcpus) out[v] = { vcpu: v, cpus, kind: shared ? 'shared' : 'dedicated', reason, tasks: tasksOf[v]! };
  }

  const left = order.filter((cpu) => !users.has(cpu)).sort((a, b) => a - b);
  const floatCpus = left.length > 0 ? left : [...inPool].sort((a, b) => a - b);
  const floatReason =
    left.length === 0
      ? 'hinted: no guest-pinned task; no free CPU left, floats over the whole pool'
      : hintedCount === 0
        ? 'hinted: no guest-pinned task; floats over the pool'
        : `hinted: no guest-pinned task; floats over the CPUs not dedicated (${formatCpuList(left)})`;
  return out.map((p) => (p.cpus.length > 0 ? p : { ...p, cpus: floatCpus, reason: floatReason }));
}
