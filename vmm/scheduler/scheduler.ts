// The vCPU scheduler's state: which guest tasks are pinned where (from the guest's affinity
// hints), the policy and the pool, and what has been applied to each vCPU thread. It validates
// and rate-limits every hint (the guest is not trusted), asks policy.ts for the desired
// placement — once per event-loop turn, however many hints the turn brought — and calls `apply`
// only for vCPUs whose CPU set changed. It must not make syscalls
// itself (the caller's `apply` does, normally through affinity.ts) nor read the hint channel.

import { plan, POLICIES, type Placement, type Policy, type PlacementKind } from './policy';
import { formatCpuList, type HostCpu } from './topology';
import { TsvmmError } from '../../lib/errors';

export interface SchedulerLimits {
  /** VM-wide sustained affinity hints per second, and the burst allowed above it. */
  readonly hintsPerSecond: number;
  readonly hintBurst: number;
  /** The same per guest task (tid), so one noisy task cannot use the whole VM's budget. */
  readonly taskHintsPerSecond: number;
  readonly taskHintBurst: number;
  /** Guest tasks tracked at once (pinned tasks); hints for more are rejected. */
  readonly maxTasks: number;
}

export const DEFAULT_LIMITS: SchedulerLimits = {
  hintsPerSecond: 100,
  hintBurst: 200,
  taskHintsPerSecond: 10,
  taskHintBurst: 20,
  maxTasks: 4096,
};

/** Task changes a re-plan's log line names before "and N more task changes". */
const LOGGED_CAUSES = 3;

/** Longest mask accepted, in 64-bit words (8192 CPUs, the kernel's NR_CPUS maximum). */
const MAX_MASK_WORDS = 128;

interface HintTask {
  readonly tgid: number;
  readonly tid: number;
  /** Guest task name; untrusted, sanitised before it reaches a log line. */
  readonly comm: string;
}

/**
 * A guest task's affinity: its cpumask over vCPUs as one bigint or as 64-bit words (word i
 * holding vCPUs 64i..64i+63), or as the list of its set bits (`cpus`, ascending: what
 * bpf/hints.ts decodes without BigInt maths).
 */
export type AffinityHint = HintTask & ({ readonly mask: bigint | readonly bigint[] } | { readonly cpus: readonly number[] });

export interface UnpinHint {
  readonly tid: number;
}

export interface TaskRef {
  readonly tid: number;
  readonly tgid: number;
  readonly comm: string;
}

export interface VcpuRow {
  readonly vcpu: number;
  /** Host tid of the vCPU thread, once known. */
  readonly tid: number | undefined;
  /** Desired host CPUs. */
  readonly cpus: readonly number[];
  readonly kind: PlacementKind;
  readonly reason: string;
  /** Guest tasks whose mask includes this vCPU. */
  readonly tasks: readonly TaskRef[];
  /** Whether `cpus` has been applied to the thread (false before threads are known or after a failed apply). */
  readonly applied: boolean;
}

export interface SchedulerCounters {
  /** Affinity hints received (every call of onAffinityHint). */
  hints: number;
  /** Unpin hints received (task exit or explicit unpin). */
  unpinHints: number;
  /** Hints accepted that pinned a task or changed its mask. */
  pins: number;
  /** Tracked tasks released: unpinned, exited, or widened to every vCPU. */
  unpins: number;
  /** Accepted hints whose mask named vCPUs that do not exist (those bits were ignored). */
  ignoredVcpuBits: number;
  /** Hints rejected because no existing vCPU was left in the mask. */
  rejectedEmpty: number;
  /** Hints rejected as malformed (bad tid, negative or oversized mask). */
  rejectedInvalid: number;
  /** Hints rejected because maxTasks tasks are already tracked. */
  rejectedTaskLimit: number;
  /** Hints dropped by the VM-wide rate limit. */
  rateLimited: number;
  /** Hints dropped by the per-task rate limit. */
  rateLimitedTask: number;
  /**
   * Placements computed for task changes. Hints change the tracked tasks at once, but the
   * placement is recomputed once per event-loop turn (or before anything reads it), however
   * many hints the turn brought: a guest flooding hints costs one plan per turn, not one each.
   */
  replans: number;
  /** Placement changes decided (one per vCPU whose desired CPU set changed). */
  decisions: number;
  /** apply() calls that succeeded, and that threw. */
  applied: number;
  applyErrors: number;
}

export interface SchedulerOptions {
  readonly pool: readonly HostCpu[];
  readonly vcpus: number;
  readonly policy: Policy;
  /** Sets vCPU `vcpu`'s thread (host tid `tid`) to `cpus`; may throw (counted and logged, retried on the next change). */
  readonly apply: (vcpu: number, cpus: readonly number[], tid: number) => void;
  /** Milliseconds, monotonic (default performance.now). */
  readonly now?: () => number;
  readonly log: (line: string) => void;
  readonly limits?: Partial<SchedulerLimits>;
  /**
   * Runs the re-plan that task changes (hints) ask for, later in this event-loop turn (default
   * queueMicrotask: after the exit or the slice of records that brought them). Tests step it by hand.
   */
  readonly defer?: (fn: () => void) => void;
}

export class SchedulerError extends TsvmmError {}

/** A token bucket: `rate` tokens per second up to `burst`, starting full. */
class TokenBucket {
  private tokens: number;
  private last: number;
  constructor(private readonly rate: number, private readonly burst: number, now: number) {
    this.tokens = burst;
    this.last = now;
  }
  /** Refills for the time elapsed and says whether a token is available (takes none). */
  ready(now: number): boolean {
    if (now > this.last) this.tokens = Math.min(this.burst, this.tokens + ((now - this.last) * this.rate) / 1000);
    this.last = Math.max(this.last, now);
    return this.tokens >= 1;
  }
  take(): void {
    this.tokens -= 1;
  }
  full(now: number): boolean {
    this.ready(now);
    return this.tokens >= this.burst;
  }
}

interface Task extends TaskRef {
  readonly vcpus: readonly number[];
}

export class VcpuScheduler {
  private readonly vcpuCount: number;
  private readonly applyFn: SchedulerOptions['apply'];
  private readonly now: () => number;
  private readonly log: (line: string) => void;
  private readonly limits: SchedulerLimits;
  private pool: readonly HostCpu[];
  private policy: Policy;
  private readonly tasks = new Map<number, Task>();
  private readonly vmBucket: TokenBucket;
  private readonly taskBuckets = new Map<number, TokenBucket>();
  private threads: (number | undefined)[];
  private placements: Placement[] = [];
  private readonly applied: (readonly number[] | undefined)[];
  private readonly count: SchedulerCounters = {
    hints: 0, unpinHints: 0, pins: 0, unpins: 0, ignoredVcpuBits: 0, rejectedEmpty: 0, rejectedInvalid: 0,
    rejectedTaskLimit: 0, rateLimited: 0, rateLimitedTask: 0, replans: 0, decisions: 0, applied: 0, applyErrors: 0,
  };
  private readonly defer: (fn: () => void) => void;
  /** Task changes not planned yet: the first causes (for the log line) and how many in all. */
  private pending: { causes: string[]; n: number } | undefined;
  /** Hints dropped since the last accepted one: logged once when dropping starts and once when it ends. */
  private dropped = 0;

  constructor(opts: SchedulerOptions) {
    if (!Number.isInteger(opts.vcpus) || opts.vcpus < 1) throw new SchedulerError(`vCPU count ${opts.vcpus} must be a positive integer`);
    this.vcpuCount = opts.vcpus;
    this.applyFn = opts.apply;
    this.now = opts.now ?? (() => performance.now());
    this.log = opts.log;
    this.defer = opts.defer ?? queueMicrotask;
    this.limits = { ...DEFAULT_LIMITS, ...opts.limits };
    this.pool = checkPool(opts.pool);
    this.policy = checkPolicy(opts.policy);
    this.vmBucket = new TokenBucket(this.limits.hintsPerSecond, this.limits.hintBurst, this.now());
    this.threads = new Array<number | undefined>(this.vcpuCount).fill(undefined);
    this.applied = new Array<readonly number[] | undefined>(this.vcpuCount).fill(undefined);
    this.placements = this.compute();
  }

  /** Host tids of the vCPU threads, index = vCPU. Each newly known thread gets its placement applied. */
  setVcpuThreads(tids: readonly number[]): void {
    if (tids.length !== this.vcpuCount) throw new SchedulerError(`expected ${this.vcpuCount} vCPU thread ids, got ${tids.length}`);
    for (const t of tids) if (!Number.isInteger(t) || t <= 0) throw new SchedulerError(`bad thread id ${t}`);
    tids.forEach((tid, vcpu) => {
      if (this.threads[vcpu] !== tid) this.applied[vcpu] = undefined; // a new thread's mask is unknown
    });
    this.threads = [...tids];
    if (this.pending) this.flush(); // re-plans, then applies every vCPU (the new threads too)
    else this.applyAll('vCPU threads known');
  }

  /** A guest task's sched_setaffinity, as reported by the guest. Never throws on guest input. */
  onAffinityHint(hint: AffinityHint): void {
    if (this.admitAffinityHint(hint.tid)) this.takeAffinityHint(hint);
  }

  /**
   * The first half of onAffinityHint, for a hint not decoded yet (the tid read from the raw
   * record): counts it as received and applies the rate limits. False: dropped (counted), so
   * the caller need not decode it; true: the caller must hand it to takeAffinityHint.
   */
  admitAffinityHint(tid: number): boolean {
    this.count.hints++;
    return this.admit(Number.isSafeInteger(tid) && tid > 0 ? tid : undefined);
  }

  /** The second half of onAffinityHint: a hint admitted by admitAffinityHint. Never throws on guest input. */
  takeAffinityHint(hint: AffinityHint): void {
    const { tid } = hint;
    if (!(Number.isSafeInteger(tid) && tid > 0)) return this.reject('rejectedInvalid', `bad tid ${String(tid)}`);

    const decoded = 'cpus' in hint ? decodeCpus(hint.cpus, this.vcpuCount) : decodeMask(hint.mask, this.vcpuCount);
    if (decoded === undefined) return this.reject('rejectedInvalid', `task ${tid}: malformed mask`);
    if (decoded.extra) this.count.ignoredVcpuBits++;
    const vcpus = decoded.vcpus;
    const who = `task ${tid} (${sanitize(hint.comm)})`;
    if (vcpus.length === 0) return this.reject('rejectedEmpty', `${who}: mask names no existing vCPU`);

    const known = this.tasks.get(tid);
    if (vcpus.length === this.vcpuCount) {
      if (known) this.release(tid, `${who} widened to all vCPUs`);
      return;
    }
    if (!known && this.tasks.size >= this.limits.maxTasks) {
      return this.reject('rejectedTaskLimit', `${who}: ${this.limits.maxTasks} tasks already tracked`);
    }
    if (known && sameList(known.vcpus, vcpus)) return;
    this.tasks.set(tid, { tid, tgid: Number.isSafeInteger(hint.tgid) ? hint.tgid : 0, comm: sanitize(hint.comm), vcpus });
    this.count.pins++;
    this.changed(`${who} pinned to vCPUs ${formatCpuList(vcpus)}`);
  }

  /**
   * Plans now the task changes waiting for the end of the turn (if any) and applies the result.
   * Everything that reads or replaces the placement calls it first, so nobody sees a stale plan.
   */
  flush(): void {
    const p = this.pending;
    if (!p) return;
    const more = p.n - p.causes.length;
    this.update(`${p.causes.join('; ')}${more > 0 ? ` and ${more} more task changes` : ''}`);
  }

  /**
   * A guest task unpinned itself or exited. Not rate-limited: releasing only shrinks state,
   * an unknown tid costs a map lookup, and dropping one would leave a vCPU pinned forever.
   */
  onUnpinHint(hint: UnpinHint): void {
    this.count.unpinHints++;
    if (this.tasks.has(hint.tid)) this.release(hint.tid, `task ${hint.tid} unpinned or exited`);
  }

  setPolicy(policy: Policy): void {
    const p = checkPolicy(policy);
    if (p === this.policy) return;
    const old = this.policy;
    this.policy = p;
    this.update(`policy ${old} -> ${p}`);
  }

  /** Replaces the pool (e.g. after CPU hotplug or an operator's request); everything is re-placed inside it. */
  setPool(cpus: readonly HostCpu[]): void {
    this.pool = checkPool(cpus);
    this.update(`pool -> ${formatCpuList(this.pool.map((c) => c.cpu))}`);
  }

  /** The rate limits in force (the hypercall device drops AFFINITY records beyond them early). */
  get hintLimits(): Readonly<SchedulerLimits> {
    return this.limits;
  }

  get currentPolicy(): Policy {
    return this.policy;
  }

  table(): VcpuRow[] {
    this.flush();
    return this.placements.map((p) => ({
      vcpu: p.vcpu,
      tid: this.threads[p.vcpu],
      cpus: p.cpus,
      kind: p.kind,
      reason: p.reason,
      tasks: p.tasks.map((t) => {
        const { tid, tgid, comm } = this.tasks.get(t)!;
        return { tid, tgid, comm };
      }),
      applied: sameList(this.applied[p.vcpu], p.cpus),
    }));
  }

  /** A snapshot of the counters. */
  get counters(): Readonly<SchedulerCounters> {
    this.flush();
    return { ...this.count };
  }

  /**
   * Rate limits: the VM-wide bucket and the task's must both have a token; only then is one
   * taken from each (a task over its own limit does not drain the VM's). No tid: VM-wide only.
   */
  private admit(tid: number | undefined): boolean {
    const now = this.now();
    if (!this.vmBucket.ready(now)) return this.drop('rateLimited', 'VM-wide');
    const bucket = tid === undefined ? undefined : this.taskBucket(tid, now);
    if (bucket === null) return this.drop('rateLimited', 'VM-wide (too many active tasks)');
    if (bucket && !bucket.ready(now)) return this.drop('rateLimitedTask', `task ${tid}`);
    this.vmBucket.take();
    bucket?.take();
    if (this.dropped > 0) {
      this.log(`scheduler: hint rate back under the limit; ${this.dropped} hints were dropped`);
      this.dropped = 0;
    }
    return true;
  }

  /** The task's bucket, created full; null when too many tasks are mid-burst to track another. */
  private taskBucket(tid: number, now: number): TokenBucket | null {
    let bucket = this.taskBuckets.get(tid);
    if (bucket) return bucket;
    if (this.taskBuckets.size >= 2 * this.limits.maxTasks) {
      // A full bucket is the same as a new one, so it can be forgotten. Only tasks that hinted
      // within the last burst/rate seconds remain, and the VM-wide limit bounds how many do.
      for (const [t, b] of this.taskBuckets) if (b.full(now)) this.taskBuckets.delete(t);
      if (this.taskBuckets.size >= 2 * this.limits.maxTasks) return null;
    }
    bucket = new TokenBucket(this.limits.taskHintsPerSecond, this.limits.taskHintBurst, now);
    this.taskBuckets.set(tid, bucket);
    return bucket;
  }

  private drop(counter: 'rateLimited' | 'rateLimitedTask', which: string): false {
    this.count[counter]++;
    if (this.dropped++ === 0) this.log(`scheduler: ${which} hint rate limit reached; dropping hints (counted)`);
    return false;
  }

  private reject(counter: 'rejectedInvalid' | 'rejectedEmpty' | 'rejectedTaskLimit', why: string): void {
    this.count[counter]++;
    this.log(`scheduler: hint rejected: ${why}`);
  }

  private release(tid: number, why: string): void {
    this.tasks.delete(tid);
    this.count.unpins++;
    this.changed(why);
  }

  /** The tracked tasks changed: re-plan once at the end of this turn, whatever else changes in it. */
  private changed(cause: string): void {
    if (this.pending) {
      this.pending.n++;
      // Name a few: a turn often brings a release and the next pin, and readers of the log
      // (tools/bench/hints.ts) look for the pin's task.
      if (this.pending.causes.length < LOGGED_CAUSES) this.pending.causes.push(cause);
      return;
    }
    this.pending = { causes: [cause], n: 1 };
    this.defer(() => this.flush());
  }

  private compute(): Placement[] {
    const tasks = new Map<number, readonly number[]>();
    for (const t of this.tasks.values()) tasks.set(t.tid, t.vcpus);
    return plan({ pool: this.pool, vcpus: this.vcpuCount, policy: this.policy, tasks, previous: this.placements });
  }

  /** Recomputes the plan; logs and applies each vCPU whose CPU set changed. */
  private update(cause: string): void {
    if (this.pending) this.count.replans++;
    this.pending = undefined; // this plan covers them
    const before = this.placements;
    this.placements = this.compute();
    for (const p of this.placements) {
      const old = before[p.vcpu]!;
      if (sameList(old.cpus, p.cpus)) continue;
      this.count.decisions++;
      this.log(`scheduler: vcpu ${p.vcpu}: ${formatCpuList(old.cpus)} -> ${formatCpuList(p.cpus)} (${p.reason}) after ${cause}`);
    }
    this.applyAll(cause);
  }

  /** Applies every placement that differs from what the thread is known to have. */
  private applyAll(cause: string): void {
    for (const p of this.placements) {
      const tid = this.threads[p.vcpu];
      if (tid === undefined || sameList(this.applied[p.vcpu], p.cpus)) continue;
      try {
        this.applyFn(p.vcpu, p.cpus, tid);
        this.applied[p.vcpu] = p.cpus;
        this.count.applied++;
      } catch (e) {
        this.applied[p.vcpu] = undefined;
        this.count.applyErrors++;
        this.log(`scheduler: vcpu ${p.vcpu} (tid ${tid}): applying ${formatCpuList(p.cpus)} failed after ${cause}: ${(e as Error).message}`);
      }
    }
  }
}

/**
 * The vCPUs a guest mask names, below `vcpus`; `extra` when it also named higher ones.
 * Undefined for a malformed mask (negative, a word outside 0..2^64-1, or longer than 8192 bits).
 */
export function decodeMask(mask: bigint | readonly bigint[], vcpus: number): { vcpus: number[]; extra: boolean } | undefined {
  let words: readonly bigint[];
  if (typeof mask === 'bigint') {
    if (mask < 0n || mask >> BigInt(MAX_MASK_WORDS * 64) !== 0n) return undefined;
    const split: bigint[] = [];
    for (let m = mask; m !== 0n; m >>= 64n) split.push(m & 0xffff_ffff_ffff_ffffn);
    words = split;
  } else {
    if (!Array.isArray(mask) || mask.length > MAX_MASK_WORDS) return undefined;
    for (const w of mask) if (typeof w !== 'bigint' || w < 0n || w > 0xffff_ffff_ffff_ffffn) return undefined;
    words = mask;
  }
  // Set bits by integer maths on 32-bit halves: guest hints arrive by the thousand, and a
  // BigInt shift per vCPU per hint was most of their cost.
  const out: number[] = [];
  let extra = false;
  for (let i = 0; i < words.length; i++) {
    const w = words[i]!;
    const halves = [Number(w & 0xffff_ffffn), Number(w >> 32n)];
    for (let h = 0; h < 2; h++) {
      for (let bits = halves[h]!; bits !== 0; bits &= bits - 1) {
        const v = i * 64 + h * 32 + 31 - Math.clz32(bits & -bits);
        if (v < vcpus) out.push(v);
        else extra = true;
      }
    }
  }
  return { vcpus: out, extra };
}

/**
 * `decodeMask` for a mask given as its set bits: undefined unless they are distinct integers
 * below 8192 in ascending order (what a mask's bits are).
 */
export function decodeCpus(cpus: readonly number[], vcpus: number): { vcpus: number[]; extra: boolean } | undefined {
  if (!Array.isArray(cpus) || cpus.length > MAX_MASK_WORDS * 64) return undefined;
  const out: number[] = [];
  let extra = false;
  let last = -1;
  for (const c of cpus) {
    if (typeof c !== 'number' || !Number.isInteger(c) || c <= last || c >= MAX_MASK_WORDS * 64) return undefined;
    last = c;
    if (c < vcpus) out.push(c);
    else extra = true;
  }
  return { vcpus: out, extra };
}

function checkPool(pool: readonly HostCpu[]): readonly HostCpu[] {
  if (pool.length === 0) throw new SchedulerError('the host CPU pool is empty');
  const cpus = pool.map((c) => c.cpu);
  if (!cpus.every((c) => Number.isInteger(c) && c >= 0) || new Set(cpus).size !== cpus.length) {
    throw new SchedulerError(`bad host CPU pool ${cpus.join(',')}: CPUs must be distinct non-negative integers`);
  }
  return [...pool];
}

function checkPolicy(p: Policy): Policy {
  if (!POLICIES.includes(p)) throw new SchedulerError(`unknown policy ${JSON.stringify(p)} (none, static, hinted)`);
  return p;
}

function sameList(a: readonly number[] | undefined, b: readonly number[]): boolean {
  return a !== undefined && a.length === b.length && a.every((x, i) => x === b[i]);
}

/** Guest comm for log lines: printable ASCII only, at most 16 characters (TASK_COMM_LEN). */
function sanitize(comm: unknown): string {
  return String(comm).replace(/[^\x20-\x7e]/g, '?').slice(0, 16);
}
