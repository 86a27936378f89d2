// The hint handler registry: for each hint type, who decodes it and what the host does about
// it. A *hint program* (a HintProgram: one file under vmm/hints/, listed in programs.ts) bundles
// the eBPF package that writes the records, and one *kind* per record type it writes: the
// type number, a name, the record's minimum size, a decoder, and a handler that acts through
// the host's actuators (scheduler pins, vCPU classes, halt polling, pausing). Adding a hint
// type is one such file, one line in programs.ts and a test (docs/hint-programs.md).
//
// Owns the dispatch rule: every record is decoded (when its type is known and long enough),
// handed to its kind's handler, and published to the hint stream, whatever the handler does —
// unless its kind's `admit` refuses it first (a rate limit read off the raw record: then it is
// counted and published undecoded as `refused`, so a flood costs a header read each and a
// researcher watching the stream still sees every record);
// a handler that throws is counted and logged, never propagated to the guest's exit path. It
// must not parse the transport (devices/hypercall does) nor make syscalls (actuators do).

import type { Package } from '../../bpf/package';
import type { HintTypeBudget } from '../../devices/hypercall/index';
import type { Actuators } from '../actuators';
import type { PrioPolicy } from '../scheduler/prio';
import type { VcpuScheduler } from '../scheduler/scheduler';
import type { StreamEntry } from './stream';
import { TsvmmError } from '../../lib/errors';

/** What a handler may act on: the machine's host-side controls. */
export interface HintHost {
  readonly vcpus: number;
  /** CPU affinity of the vCPU threads, from guest tasks' pins (vmm/scheduler). */
  readonly scheduler: VcpuScheduler;
  /** vCPU thread priority from guest real-time tasks (vmm/scheduler/prio.ts). */
  readonly prio: PrioPolicy;
  /** vCPU thread class, halt polling, pausing a vCPU (vmm/actuators.ts). */
  readonly actuators: Actuators;
  /** A log line (rate-limited by the machine: the guest drives it). */
  log(line: string): void;
}

/** Where a record came from. */
export interface HintMeta {
  readonly type: number;
  /** Handle of the loaded package whose ring buffer produced it (undefined: unattributed). */
  readonly source: number | undefined;
  readonly program: string | undefined;
  /** The vCPU whose HINTS hypercall carried the batch. */
  readonly vcpu: number | undefined;
  /** Host receive time, ms since the epoch. */
  readonly time: number;
}

/** One hint type: its layout's decoder and the host's reaction. */
export interface HintKind<T> {
  readonly type: number;
  /** Upper-case name shown in the stream and in metrics, e.g. `AFFINITY`. */
  readonly name: string;
  /** The shortest record (8-byte header included) `decode` can read; shorter ones are not decoded. */
  readonly size: number;
  /**
   * A cheap look at the raw record (at least `size` bytes) before anything else: false drops it
   * undecoded, unhandled and unpublished (a rate limit: the guest is not trusted to send few).
   * Whoever refuses counts what it refused. Must not throw.
   */
  admit?(record: Uint8Array, host: HintHost): boolean;
  /**
   * The most records of this type the host's handler can use per second (and at once): the
   * hypercall device drops the rest in the exit that carried them, before they are queued for
   * the main thread, let alone decoded (devices/hypercall hintTypeBudgets). Only for a type
   * whose handler drops what is over that rate anyway, and where no record must get through
   * whatever the rate (a release, an exit: those are a type of their own, without a budget).
   */
  budget?(host: HintHost): HintTypeBudget;
  /** Decodes one whole record (header included, at least `size` bytes). Must not throw. */
  decode(record: Uint8Array): T;
  /** What the host does. Guest data: validate before acting (the actuators and policies do too). */
  handle?(hint: T, host: HintHost, meta: HintMeta): void;
}

/** A kind with its decoded type hidden, so kinds of different types share one list. */
export interface RegisteredKind {
  readonly type: number;
  readonly name: string;
  readonly size: number;
  /** The kind's `admit` (true when it has none). */
  admit(record: Uint8Array, host: HintHost): boolean;
  /** The kind's `budget` (undefined: only the VM's hint budget applies). */
  budget(host: HintHost): HintTypeBudget | undefined;
  /** Decodes and handles; returns the decoded fields for the stream. */
  run(record: Uint8Array, host: HintHost, meta: HintMeta): unknown;
}

export function hintKind<T>(k: HintKind<T>): RegisteredKind {
  return {
    type: k.type, name: k.name, size: k.size,
    admit: k.admit ? (record, host) => k.admit!(record, host) : () => true,
    budget: (host) => k.budget?.(host),
    run(record, host, meta) {
      const hint = k.decode(record);
      k.handle?.(hint, host, meta);
      return hint;
    },
  };
}

/** An eBPF package and the record types it writes. */
export interface HintProgram {
  /** What `tsvmm bpf load NAME` and `PUT /bpf/programs {"builtin": NAME}` call it. */
  readonly name: string;
  readonly description: string;
  package(): Package;
  readonly kinds: readonly RegisteredKind[];
}

export class HintRegistryError extends TsvmmError {}

export interface RegistryCounters {
  records: number;
  /** Records of a registered type that were decoded and handled. */
  decoded: number;
  /** Records of a type no kind is registered for (published raw). */
  unknown: number;
  /** Records of a registered type shorter than its layout (published raw, not handled). */
  short: number;
  /** Handlers that threw (the record is still published). */
  handlerErrors: number;
  /** Records their kind's `admit` refused (rate limits): not decoded, published as `refused`. */
  refused: number;
  /** Decoded records by type name. */
  byName: Record<string, number>;
}

const hex = (b: Uint8Array) => Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('hex');

export class HintRegistry {
  private readonly kinds = new Map<number, RegisteredKind>();
  readonly programs: ReadonlyMap<string, HintProgram>;
  private readonly count: RegistryCounters = { records: 0, decoded: 0, unknown: 0, short: 0, handlerErrors: 0, refused: 0, byName: {} };

  constructor(programs: readonly HintProgram[]) {
    const byName = new Map<string, HintProgram>();
    for (const p of programs) {
      if (byName.has(p.name)) throw new HintRegistryError(`hint program '${p.name}' is registered twice`);
      byName.set(p.name, p);
      for (const k of p.kinds) {
        if (!Number.isInteger(k.type) || k.type <= 0 || k.type > 0xffff_ffff) throw new HintRegistryError(`${p.name}: hint type ${k.type} must be 1..2^32-1 (0 is the transport's SOURCE record)`);
        const other = this.kinds.get(k.type);
        if (other) throw new HintRegistryError(`${p.name}: hint type ${k.type} (${k.name}) is already ${other.name}`);
        if (k.size < 8) throw new HintRegistryError(`${p.name}: ${k.name} records are at least 8 bytes (the header)`);
        this.kinds.set(k.type, k);
      }
    }
    this.programs = byName;
  }

  kind(type: number): RegisteredKind | undefined {
    return this.kinds.get(type);
  }

  /** The per-type budgets the kinds ask of the hypercall device, for this host's handlers. */
  budgets(host: HintHost): Map<number, HintTypeBudget> {
    const out = new Map<number, HintTypeBudget>();
    for (const [type, k] of this.kinds) {
      const b = k.budget(host);
      if (b) out.set(type, b);
    }
    return out;
  }

  get counters(): Readonly<RegistryCounters> {
    return { ...this.count, byName: { ...this.count.byName } };
  }

  /**
   * Decodes and handles one record (a private copy, header included); returns its stream
   * entry — for a record its kind's `admit` refused, one without fields marked `refused`.
   * `onError` hears about a throwing handler (a tsvmm bug, or a researcher's).
   */
  dispatch(record: Uint8Array, meta: HintMeta, host: HintHost, onError: (e: Error, k: RegisteredKind) => void): StreamEntry {
    this.count.records++;
    const base = { time: meta.time, vcpu: meta.vcpu, source: meta.source, program: meta.program, type: meta.type };
    const k = this.kinds.get(meta.type);
    if (!k) {
      this.count.unknown++;
      return { ...base, name: undefined, raw: hex(record) };
    }
    if (record.length < k.size) {
      this.count.short++;
      return { ...base, name: k.name, raw: hex(record), error: `${record.length}-byte record, ${k.name} needs ${k.size}` };
    }
    let fields: unknown;
    try {
      if (!k.admit(record, host)) {
        this.count.refused++;
        return { ...base, name: k.name, refused: true };
      }
      fields = k.run(record, host, meta);
      this.count.decoded++;
      this.count.byName[k.name] = (this.count.byName[k.name] ?? 0) + 1;
    } catch (e) {
      this.count.handlerErrors++;
      onError(e instanceof Error ? e : new Error(String(e)), k);
      return { ...base, name: k.name, raw: hex(record), error: `handler failed: ${(e as Error).message}` };
    }
    return { ...base, name: k.name, fields };
  }
}
