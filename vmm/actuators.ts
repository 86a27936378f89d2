// Host actuators on a running machine, beside CPU affinity (vmm/scheduler): each vCPU thread's
// scheduling class and priority (sched_setattr), the VM's halt polling (KVM_CAP_HALT_POLL) and
// parking one vCPU. Owns what is set, why, and the rule that combines an operator's setting
// with a policy's boost; every change is logged with its reason and counted. It makes no
// syscall itself (the functions it is handed do, on the main thread: vCPU worker threads stay
// free of sched_setattr and KVM_ENABLE_CAP) and decides no policy (vmm/scheduler/prio.ts does).
//
// Two layers per vCPU thread: the *base* class (the operator's, through the API; before any,
// the class the thread had when first touched) and an optional *boost* a policy asks for (the
// guest has a real-time task on that vCPU). The boost wins while it lasts; removing it puts
// the base back, so a policy never loses what the operator set and vice versa.

import { SCHED, type ThreadSchedAttr } from '../kvm/libc';
import { TsvmmError } from '../lib/errors';

export const CLASS_NAMES = ['other', 'batch', 'idle', 'fifo', 'rr'] as const;
export type ClassName = (typeof CLASS_NAMES)[number];

/** A thread's scheduling class in the API's words. */
export interface VcpuClass {
  readonly policy: ClassName;
  /** 1..99 for fifo and rr, 0 otherwise. */
  readonly priority: number;
  /** -20..19 for other and batch, 0 otherwise. */
  readonly nice: number;
}

const POLICY_OF: Record<ClassName, number> = { other: SCHED.NORMAL, batch: SCHED.BATCH, idle: SCHED.IDLE, fifo: SCHED.FIFO, rr: SCHED.RR };
const NAME_OF = new Map<number, string>([[SCHED.NORMAL, 'other'], [SCHED.BATCH, 'batch'], [SCHED.IDLE, 'idle'], [SCHED.FIFO, 'fifo'], [SCHED.RR, 'rr'], [SCHED.DEADLINE, 'deadline']]);

export class ActuatorError extends TsvmmError {}

/** Checks a class from outside (API, CLI, a policy): fields in range, none that does not apply. */
export function checkClass(c: { policy: string; priority?: number; nice?: number }): VcpuClass {
  const policy = c.policy as ClassName;
  if (!CLASS_NAMES.includes(policy)) throw new ActuatorError(`scheduling class '${c.policy}' must be one of ${CLASS_NAMES.join(', ')}`);
  const rt = policy === 'fifo' || policy === 'rr';
  const niced = policy === 'other' || policy === 'batch';
  if (rt) {
    const p = c.priority;
    if (p === undefined || !Number.isInteger(p) || p < 1 || p > 99) throw new ActuatorError(`${policy} needs a priority 1..99 (got ${String(p)})`);
    if (c.nice !== undefined && c.nice !== 0) throw new ActuatorError(`${policy} takes no nice value`);
    return { policy, priority: p, nice: 0 };
  }
  if (c.priority !== undefined && c.priority !== 0) throw new ActuatorError(`${policy} takes no priority (only fifo and rr do)`);
  const nice = c.nice ?? 0;
  if (!Number.isInteger(nice) || nice < -20 || nice > 19 || (!niced && nice !== 0)) {
    throw new ActuatorError(niced ? `nice ${nice} must be -20..19` : `${policy} takes no nice value`);
  }
  return { policy, priority: 0, nice };
}

export function toAttr(c: VcpuClass): ThreadSchedAttr {
  return { policy: POLICY_OF[c.policy], priority: c.priority, nice: c.nice };
}

/** A kernel attr in the API's words; a policy tsvmm never sets (deadline) keeps its kernel name. */
export function fromAttr(a: ThreadSchedAttr): { policy: string; priority: number; nice: number } {
  return { policy: NAME_OF.get(a.policy) ?? `policy ${a.policy}`, priority: a.priority, nice: a.nice };
}

export function formatClass(c: { policy: string; priority: number; nice: number }): string {
  if (c.policy === 'fifo' || c.policy === 'rr') return `SCHED_${c.policy.toUpperCase()} ${c.priority}`;
  return `SCHED_${c.policy.toUpperCase()}${c.policy === 'other' || c.policy === 'batch' ? ` nice ${c.nice}` : ''}`;
}

const same = (a: VcpuClass | undefined, b: VcpuClass | undefined) => a?.policy === b?.policy && a?.priority === b?.priority && a?.nice === b?.nice;

export interface ActuatorDeps {
  readonly vcpus: number;
  /** Host tid of each vCPU thread (index = vCPU), once known. */
  readonly tids: () => readonly number[];
  readonly setattr: (tid: number, attr: ThreadSchedAttr) => void;
  readonly getattr: (tid: number) => ThreadSchedAttr;
  /** KVM_CAP_HALT_POLL on the VM. */
  readonly setHaltPoll: (maxNs: number) => void;
  /** The kvm module's halt_poll_ns: what the VM polls before tsvmm sets anything (undefined: unreadable). */
  readonly defaultHaltPoll: () => number | undefined;
  readonly pause: (vcpu: number) => Promise<void>;
  readonly resume: (vcpu: number) => Promise<void>;
  readonly isPaused: (vcpu: number) => boolean;
  readonly log: (line: string) => void;
}

export interface ActuatorCounters {
  /** sched_setattr calls that succeeded / failed. */
  classChanges: number;
  classErrors: number;
  haltPollChanges: number;
  pauses: number;
  resumes: number;
}

export interface VcpuActuatorRow {
  readonly vcpu: number;
  readonly tid: number | undefined;
  /** What the thread has now (sched_getattr), or null when it cannot be read. */
  readonly sched: { policy: string; priority: number; nice: number } | null;
  /** The operator's class (null: never set, the thread keeps what it had). */
  readonly base: VcpuClass | null;
  /** A policy's boost in force, with its reason. */
  readonly boost: { readonly class: VcpuClass; readonly reason: string } | null;
  readonly paused: boolean;
}

interface Layers {
  /** The thread's class before tsvmm first changed it: what "restore" goes back to without a base. */
  original?: VcpuClass;
  base?: VcpuClass;
  boost?: { class: VcpuClass; reason: string };
  /** What was last applied successfully. */
  applied?: VcpuClass;
}

export class Actuators {
  private readonly layers: Layers[];
  private haltPollNs: number | undefined;
  private readonly count: ActuatorCounters = { classChanges: 0, classErrors: 0, haltPollChanges: 0, pauses: 0, resumes: 0 };

  constructor(private readonly d: ActuatorDeps) {
    this.layers = Array.from({ length: d.vcpus }, () => ({}));
  }

  get counters(): Readonly<ActuatorCounters> {
    return { ...this.count };
  }

  /** The operator's class for `vcpu` (API/CLI); applied now unless a boost is in force. */
  setVcpuClass(vcpu: number, c: VcpuClass, reason: string): void {
    const l = this.layer(vcpu);
    this.remember(vcpu, l);
    l.base = c;
    this.apply(vcpu, reason);
  }

  /**
   * A policy's boost for `vcpu` (undefined: end it, back to the base). Failures are logged and
   * counted, never thrown: a policy reacting to guest input must not fail on the host's limits.
   */
  boost(vcpu: number, c: VcpuClass | undefined, reason: string): void {
    const l = this.layer(vcpu);
    if (same(l.boost?.class, c)) {
      if (l.boost) l.boost.reason = reason;
      return;
    }
    l.boost = c ? { class: c, reason } : undefined;
    try {
      this.remember(vcpu, l);
      this.apply(vcpu, reason);
    } catch (e) {
      // apply() logged and counted its own failures; the thread may also be gone (VM stopping).
      if (e instanceof ActuatorError) this.d.log(`actuator: vcpu ${vcpu}: ${e.message} (${reason})`);
    }
  }

  /** Max halt-poll time of the VM in ns (0 turns polling off). */
  setHaltPoll(maxNs: number, reason: string): void {
    const before = this.haltPoll;
    this.d.setHaltPoll(maxNs);
    this.haltPollNs = maxNs;
    this.count.haltPollChanges++;
    this.d.log(`actuator: halt polling ${before === undefined ? 'module default' : `${before} ns`} -> ${maxNs} ns (${reason})`);
  }

  /** What the VM polls now: what tsvmm set, else the kvm module's default. */
  get haltPoll(): number | undefined {
    return this.haltPollNs ?? this.d.defaultHaltPoll();
  }

  get haltPollSource(): 'tsvmm' | 'module' {
    return this.haltPollNs === undefined ? 'module' : 'tsvmm';
  }

  async pause(vcpu: number, reason: string): Promise<void> {
    this.layer(vcpu);
    if (this.d.isPaused(vcpu)) return;
    await this.d.pause(vcpu);
    this.count.pauses++;
    this.d.log(`actuator: vcpu ${vcpu} paused (${reason})`);
  }

  async resume(vcpu: number, reason: string): Promise<void> {
    this.layer(vcpu);
    if (!this.d.isPaused(vcpu)) return;
    await this.d.resume(vcpu);
    this.count.resumes++;
    this.d.log(`actuator: vcpu ${vcpu} resumed (${reason})`);
  }

  table(): VcpuActuatorRow[] {
    const tids = this.d.tids();
    return this.layers.map((l, vcpu) => {
      const tid = tids[vcpu];
      let sched: VcpuActuatorRow['sched'] = null;
      if (tid !== undefined) {
        try {
          sched = fromAttr(this.d.getattr(tid));
        } catch {
          sched = null; // the thread is gone (the VM is stopping)
        }
      }
      return { vcpu, tid, sched, base: l.base ?? null, boost: l.boost ? { class: l.boost.class, reason: l.boost.reason } : null, paused: this.d.isPaused(vcpu) };
    });
  }

  private layer(vcpu: number): Layers {
    const l = Number.isInteger(vcpu) ? this.layers[vcpu] : undefined;
    if (!l) throw new ActuatorError(`no vCPU ${vcpu} (the machine has ${this.layers.length})`);
    return l;
  }

  /** Reads the thread's own class once, before tsvmm first changes it. */
  private remember(vcpu: number, l: Layers): void {
    if (l.original) return;
    const tid = this.d.tids()[vcpu];
    if (tid === undefined) throw new ActuatorError(`vCPU ${vcpu} has no thread yet`);
    const a = fromAttr(this.d.getattr(tid));
    l.original = CLASS_NAMES.includes(a.policy as ClassName) ? checkClass(a) : { policy: 'other', priority: 0, nice: 0 };
    l.applied = l.original;
  }

  private apply(vcpu: number, reason: string): void {
    const l = this.layers[vcpu]!;
    const want = l.boost?.class ?? l.base ?? l.original!;
    if (same(want, l.applied)) return;
    const tid = this.d.tids()[vcpu]!;
    try {
      this.d.setattr(tid, toAttr(want));
    } catch (e) {
      this.count.classErrors++;
      this.d.log(`actuator: vcpu ${vcpu} (tid ${tid}): ${formatClass(l.applied!)} -> ${formatClass(want)} failed (${reason}): ${(e as Error).message}`);
      throw e;
    }
    this.count.classChanges++;
    this.d.log(`actuator: vcpu ${vcpu} (tid ${tid}): ${formatClass(l.applied!)} -> ${formatClass(want)} (${reason})`);
    l.applied = want;
  }
}
