// The second paravirtual policy: guest real-time priority -> host vCPU priority (the
// double-scheduling problem). The `prio` hint program reports on which guest CPU each
// SCHED_FIFO/RR task lives; with `--prio hinted`, a vCPU that carries at least one such task
// gets a SCHED_FIFO thread on the host, at the highest guest priority among them capped by
// `--prio-max` (default 10, so a guest cannot outrank the host's own real-time work), and its
// class is restored when the last such task leaves (exit, policy change, migration).
//
// Owns the task table (reference counting per vCPU), validation and rate limiting of PRIO
// hints (the guest is not trusted) and the boost decision; it applies nothing itself: the
// Actuators' boost layer does, logged with the reason built here. Tasks are tracked under
// every mode, so switching to `hinted` boosts at once.

import type { VcpuClass } from '../actuators';
import { TsvmmError } from '../../lib/errors';

export const PRIO_MODES = ['none', 'hinted'] as const;
export type PrioMode = (typeof PRIO_MODES)[number];
export const DEFAULT_PRIO_MAX = 10;

export interface PrioHintIn {
  readonly tid: number;
  readonly cpu: number;
  /** 1..99 real time; 0 the task is not real time any more. */
  readonly rtprio: number;
  readonly event: string;
}

export interface PrioLimits {
  /** VM-wide hints per second and burst (removals are never limited: dropping one would leave a boost behind). */
  readonly hintsPerSecond: number;
  readonly hintBurst: number;
  readonly maxTasks: number;
}
export const DEFAULT_PRIO_LIMITS: PrioLimits = { hintsPerSecond: 200, hintBurst: 400, maxTasks: 4096 };

export interface PrioCounters {
  hints: number;
  /** Tasks that became (or changed as) real time on a vCPU. */
  tracked: number;
  /** Tasks that left (not real time, exited). */
  released: number;
  /** Tracked tasks that moved to another vCPU. */
  migrated: number;
  rejectedInvalid: number;
  rejectedTaskLimit: number;
  rateLimited: number;
  /** Boost changes asked of the actuators. */
  boosts: number;
}

export class PrioError extends TsvmmError {}

export interface PrioOptions {
  readonly vcpus: number;
  readonly mode: PrioMode;
  readonly max?: number;
  /** The Actuators' boost layer: a class for the vCPU's thread, or undefined to restore it. */
  readonly boost: (vcpu: number, c: VcpuClass | undefined, reason: string) => void;
  readonly log: (line: string) => void;
  readonly now?: () => number;
  readonly limits?: Partial<PrioLimits>;
}

interface Task {
  readonly tid: number;
  readonly vcpu: number;
  readonly rtprio: number;
}

export function checkPrioMax(n: number): number {
  if (!Number.isInteger(n) || n < 1 || n > 99) throw new PrioError(`--prio-max ${n} must be 1..99`);
  return n;
}

export function checkPrioMode(m: string): PrioMode {
  if (!PRIO_MODES.includes(m as PrioMode)) throw new PrioError(`--prio '${m}' must be none or hinted`);
  return m as PrioMode;
}

export class PrioPolicy {
  private readonly tasks = new Map<number, Task>();
  private readonly boosted: (number | undefined)[];
  private modeNow: PrioMode;
  private maxNow: number;
  private readonly limits: PrioLimits;
  private readonly now: () => number;
  private tokens: number;
  private last: number;
  private readonly count: PrioCounters = { hints: 0, tracked: 0, released: 0, migrated: 0, rejectedInvalid: 0, rejectedTaskLimit: 0, rateLimited: 0, boosts: 0 };

  constructor(private readonly o: PrioOptions) {
    this.modeNow = checkPrioMode(o.mode);
    this.maxNow = checkPrioMax(o.max ?? DEFAULT_PRIO_MAX);
    this.limits = { ...DEFAULT_PRIO_LIMITS, ...o.limits };
    this.now = o.now ?? (() => performance.now());
    this.tokens = this.limits.hintBurst;
    this.last = this.now();
    this.boosted = new Array<number | undefined>(o.vcpus).fill(undefined);
  }

  get mode(): PrioMode {
    return this.modeNow;
  }

  get max(): number {
    return this.maxNow;
  }

  get counters(): Readonly<PrioCounters> {
    return { ...this.count };
  }

  /** Real-time guest tasks per vCPU, and the host priority each vCPU has from this policy (0: none). */
  table(): { vcpu: number; boost: number; tasks: { tid: number; rtprio: number }[] }[] {
    return this.boosted.map((b, vcpu) => ({
      vcpu, boost: b ?? 0,
      tasks: [...this.tasks.values()].filter((t) => t.vcpu === vcpu).map((t) => ({ tid: t.tid, rtprio: t.rtprio })),
    }));
  }

  setMode(mode: PrioMode, why: string): void {
    this.modeNow = checkPrioMode(mode);
    this.reconcile(`prio policy -> ${mode} (${why})`);
  }

  setMax(max: number, why: string): void {
    this.maxNow = checkPrioMax(max);
    this.reconcile(`prio max -> ${max} (${why})`);
  }

  /** A PRIO record. Never throws on guest input. */
  onHint(h: PrioHintIn): void {
    this.count.hints++;
    const { tid, cpu, rtprio } = h;
    if (!Number.isSafeInteger(tid) || tid <= 0 || !Number.isInteger(rtprio) || rtprio < 0 || rtprio > 99) {
      this.count.rejectedInvalid++;
      return this.o.log(`prio: hint rejected: task ${String(tid)} priority ${String(rtprio)}`);
    }
    const known = this.tasks.get(tid);
    if (rtprio === 0) {
      if (!known) return;
      this.tasks.delete(tid);
      this.count.released++;
      return this.reconcile(`task ${tid} is no longer real time on vCPU ${known.vcpu} (${h.event.toLowerCase()})`);
    }
    if (!this.admit()) return;
    if (!Number.isInteger(cpu) || cpu < 0 || cpu >= this.o.vcpus) {
      this.count.rejectedInvalid++;
      // The task lives on a CPU this VM does not have: it certainly is not on its old vCPU.
      if (known) this.tasks.delete(tid);
      this.o.log(`prio: hint rejected: task ${tid} on CPU ${cpu}, the VM has ${this.o.vcpus} vCPUs`);
      if (known) this.reconcile(`task ${tid} left vCPU ${known.vcpu}`);
      return;
    }
    if (!known && this.tasks.size >= this.limits.maxTasks) {
      this.count.rejectedTaskLimit++;
      return this.o.log(`prio: hint rejected: ${this.limits.maxTasks} real-time tasks tracked already`);
    }
    if (known && known.vcpu === cpu && known.rtprio === rtprio) return;
    this.tasks.set(tid, { tid, vcpu: cpu, rtprio });
    if (known && known.vcpu !== cpu) this.count.migrated++;
    else this.count.tracked++;
    this.reconcile(known && known.vcpu !== cpu
      ? `task ${tid} (SCHED_FIFO/RR ${rtprio}) moved from vCPU ${known.vcpu} to vCPU ${cpu}`
      : `task ${tid} is SCHED_FIFO/RR ${rtprio} on vCPU ${cpu} (${h.event.toLowerCase()})`);
  }

  private admit(): boolean {
    const t = this.now();
    this.tokens = Math.min(this.limits.hintBurst, this.tokens + (Math.max(0, t - this.last) * this.limits.hintsPerSecond) / 1000);
    this.last = t;
    if (this.tokens >= 1) {
      this.tokens -= 1;
      return true;
    }
    if (this.count.rateLimited++ === 0) this.o.log('prio: hint rate limit reached; dropping hints (counted)');
    return false;
  }

  /** The host priority each vCPU should have; asks the actuators for every change. */
  private reconcile(cause: string): void {
    const top = new Array<number>(this.o.vcpus).fill(0);
    for (const t of this.tasks.values()) top[t.vcpu] = Math.max(top[t.vcpu]!, t.rtprio);
    for (let vcpu = 0; vcpu < this.o.vcpus; vcpu++) {
      const want = this.modeNow === 'hinted' && top[vcpu]! > 0 ? Math.min(top[vcpu]!, this.maxNow) : undefined;
      if (want === this.boosted[vcpu]) continue;
      this.boosted[vcpu] = want;
      this.count.boosts++;
      const here = [...this.tasks.values()].filter((t) => t.vcpu === vcpu).map((t) => t.tid);
      const reason = want === undefined
        ? `prio ${this.modeNow}: no real-time guest task on vCPU ${vcpu} after ${cause}`
        : `prio hinted: real-time guest task${here.length > 1 ? 's' : ''} ${here.join(',')} on vCPU ${vcpu}, highest ${top[vcpu]}, capped at ${this.maxNow}; after ${cause}`;
      this.o.boost(vcpu, want === undefined ? undefined : { policy: 'fifo', priority: want, nice: 0 }, reason);
    }
  }
}
