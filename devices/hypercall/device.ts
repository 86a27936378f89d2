// The hypercall device model (docs/hypercall.md): the register block on the PIO bus, the
// shared memory mailboxes, the queue of host requests and the agent session. This module owns
// the protocol state machine and its counters; it must not touch KVM, vsock or the bus layout
// (vmm maps the shared memory as its own KVM slot, puts this device on the PIO bus and rings
// the agent's vsock doorbell when asked to).
//
// Everything the guest writes is untrusted: each command is validated on a private copy of
// the mailbox and answered with a status code. Guest input never makes this module throw.

import { REFUSE, REFUSE_CELLS, type BusDevice, type SharedRegister } from '../bus';
import { Caps, Cmd, Features, HC_DOORBELL_PORT, HC_MAGIC, HC_VERSION, Reg, Status, type CmdName, type StatusCode, type StatusName } from './registers';
import {
  ShmHeader,
  Op,
  SHM_MAGIC,
  SHM_VERSION,
  SOURCE_TYPE,
  DIGEST_LEN,
  decodeHello,
  decodeHints,
  decodeReport,
  encodeMapUpdate,
  encodeRequest,
  hintsPrefixBytes,
  mailboxLayout,
  requestSize,
  type MailboxLayout,
  type OpCode,
  type OutcomeName,
} from './shmem';
import { TsvmmError } from '../../lib/errors';

/** A program package as this device sees it: opaque bytes with an id and a digest (bpf/package.ts). */
export interface PackageBytes {
  readonly id: string;
  /** SHA-256, 32 bytes. */
  readonly digest: Uint8Array;
  readonly bytes: Uint8Array;
}

export type HypercallRequest =
  | { readonly op: 'load'; readonly pkg: PackageBytes }
  | { readonly op: 'unload'; readonly handle: number }
  | { readonly op: 'replace'; readonly handle: number; readonly pkg: PackageBytes }
  /** Write one element of a map of the loaded package `handle` (§4.2 MAP_UPDATE); sizes are the caller's to check too. */
  | { readonly op: 'map-update'; readonly handle: number; readonly map: string; readonly key: Uint8Array; readonly value: Uint8Array; readonly flags: number };

export interface HypercallResult {
  readonly requestId: number;
  readonly op: HypercallRequest['op'];
  /** The handle the request acted on (for a load: the one this device assigned). */
  readonly handle: number;
  readonly ok: boolean;
  readonly outcome: OutcomeName;
  readonly errno: number;
  readonly progIds: readonly number[];
  /** Verifier log, refusal reason or failure description, as the agent sent it. */
  readonly text: string;
}

export interface AgentInfo {
  readonly version: number;
  readonly caps: number;
  readonly pid: number;
  readonly name: string;
  /** 1 for the first HELLO, +1 per agent (re)start. */
  readonly session: number;
}

/** A program that was loaded when the agent restarted: its fds died with the old agent. */
export interface LostProgram {
  readonly handle: number;
  readonly packageId: string;
  readonly digest: Uint8Array;
  readonly progIds: readonly number[];
}

/**
 * Receives one hint record: the whole record, 8-byte header included, exactly `len` bytes
 * (padding stripped), so `bpf/hints.ts` can decode it as a one-record batch. The bytes are a
 * private copy: the guest cannot change them afterwards. `source` is the handle of the loaded
 * package whose ring buffer the record came from, per the agent's SOURCE records; undefined
 * when the agent named none or named a handle that is not loaded (counted `hintUnattributed`).
 */
export type HintHandler = (record: Uint8Array, type: number, source: number | undefined, vcpu: number | undefined) => void;

/**
 * Sees every hint record, whatever its type (the host's hint registry and stream); returns
 * whether it knew the type (a record no handler knows is counted `hintUnknown`). `vcpu` is the
 * vCPU whose HINTS hypercall carried the batch, when the bus says (undefined otherwise).
 */
export type AnyHintHandler = (record: Uint8Array, type: number, source: number | undefined, vcpu: number | undefined) => boolean;

export interface HypercallDeviceOptions {
  /** Host view of the shared memory (mapped by vmm as a separate KVM slot). */
  readonly shm: Uint8Array;
  /** Its guest physical address. */
  readonly shmBase: number;
  readonly doorbellPort?: number;
  /** Hypercalls allowed per second (token bucket); default 5000. */
  readonly ratePerSecond?: number;
  /** Bucket depth; default = ratePerSecond. */
  readonly burst?: number;
  /**
   * Hint records decoded per second, VM-wide (a record costs one unit per 64 bytes): a batch is
   * read only as far as the budget goes, the rest is dropped unread and counted. Default
   * HINT_UNITS_PER_SECOND.
   */
  readonly hintUnitsPerSecond?: number;
  /**
   * Hint budget depth: the most one batch can deliver, so the most one HINTS exit makes the
   * main thread do at once. Default HINT_UNIT_BURST (at most hintUnitsPerSecond).
   */
  readonly hintUnitBurst?: number;
  /**
   * Hint records handed to the handlers per event-loop turn (default HINT_RECORDS_PER_TURN):
   * the first slice in the HINTS exit itself, the rest one slice per later turn, so I/O (the
   * API, vsock) runs between slices. Infinity: all of a batch at once, in the exit.
   */
  readonly hintRecordsPerTurn?: number;
  /**
   * Decoded records waiting for their turn, at most (default HINT_QUEUE_MAX): with the queue
   * full a HINTS call is refused (E_RATE) before a byte is read, a batch larger than the room
   * left is cut there (the rest dropped unread, counted `hintQueueDropped`).
   */
  readonly hintQueueMax?: number;
  /**
   * Records of a type handed on per second, by type (what the host's handler of that type
   * admits at most: the hint registry's kinds say, vmm/hints). Within the VM's budget a batch's
   * records of a type whose budget is spent are dropped in the exit that carried them — never
   * queued, decoded or dispatched — and counted `hintTypeDropped`; a batch that spent a type's
   * budget has the vCPU threads refuse HINTS until HINT_REOPEN_UNITS of it are back. Types
   * without an entry have only the VM's budget.
   */
  readonly hintTypeBudgets?: ReadonlyMap<number, HintTypeBudget>;
  /** Runs `fn` on a later event-loop turn (default setImmediate; tests step turns by hand). */
  readonly defer?: (fn: () => void) => void;
  /** Milliseconds clock (tests inject one). */
  readonly now?: () => number;
}

/**
 * The default hint budget. Each record decoded costs the main thread its decode, the
 * scheduler's update and the hint stream: ~0.5 ms in the nested sandbox (a CPU profile under
 * tsvmm-hostile, docs/security.md §6). 1000 a second with a burst of 1000 let a flooding guest
 * keep the main thread busy most of the time and block it for half a second per HINTS exit
 * (GET / p99 over 1 s); 250 a second in calls of at most 64 bound that to a quarter of a
 * sandbox CPU, in pieces of ~30 ms. An honest agent sends a few records per task it pins.
 */
export const HINT_UNITS_PER_SECOND = 250;
export const HINT_UNIT_BURST = 64;

/**
 * Hint records handled per event-loop turn. A burst of 64 records handled in one exit kept the
 * main thread busy ~30 ms in the sandbox, and a GET / that arrived meanwhile waited for all of
 * it; 8 records (~4 ms there) per turn let I/O in between (docs/security.md §6).
 */
export const HINT_RECORDS_PER_TURN = 8;
/**
 * With the hint budget spent, HINTS is refused by the vCPU threads until this many units are
 * back (at 250 a second: 32 ms), so a guest that calls in a loop costs the main thread ~30
 * exits a second instead of one per call.
 */
export const HINT_REOPEN_UNITS = 8;
/** Records that may wait for their turn: four bursts. */
export const HINT_QUEUE_MAX = 4 * HINT_UNIT_BURST;

/** A hint type's own budget: `perSecond` records, at most `burst` at once. */
export interface HintTypeBudget {
  readonly perSecond: number;
  readonly burst: number;
}

export type HypercallErrorCode = 'too-large' | 'bad-digest' | 'bad-map' | 'unknown-handle' | 'closed';

export class HypercallError extends TsvmmError {
  constructor(readonly code: HypercallErrorCode, message: string) {
    super(message);
  }
}

export interface HypercallCounters {
  /** COMMAND writes by command (rejected ones included). */
  calls: Record<CmdName | 'UNKNOWN', number>;
  /** Non-OK statuses by name (bad calls and bad register writes). */
  errors: Record<Exclude<StatusName, 'OK'>, number>;
  badReads: number;
  badWrites: number;
  hintBatches: number;
  hintRecords: number;
  hintBytes: number;
  /** Records the agent said it lost. */
  hintDropped: number;
  /** Records dropped unread because the VM's hint budget was spent (SOURCE records included). */
  hintBudgetDropped: number;
  /** Records dropped unread because the queue of records waiting for their turn was full. */
  hintQueueDropped: number;
  /** Records dropped in the exit because their type's budget was spent (hintTypeBudgets), by type. */
  hintTypeDropped: Record<number, number>;
  /** Records decoded and waiting for their turn now. */
  hintQueued: number;
  /** Records of a type no handler is registered for. */
  hintUnknown: number;
  /** Records without a source: no SOURCE before them, or one naming a handle that is not loaded. */
  hintUnattributed: number;
  /** Records dispatched, by (registered) type. */
  hintsByType: Record<number, number>;
  handlerErrors: number;
  requestsSubmitted: number;
  requestsCompleted: number;
  h2gBytes: number;
  g2hBytes: number;
  agentHellos: number;
  agentRestarts: number;
  programsLost: number;
}

interface Pending {
  readonly id: number;
  readonly op: HypercallRequest['op'];
  readonly handle: number;
  readonly pkg: PackageBytes | undefined;
  /** MAP_UPDATE: the map's name and the encoded body. */
  readonly map?: { readonly name: string; readonly body: Uint8Array };
  readonly resolve: (r: HypercallResult) => void;
  readonly reject: (e: Error) => void;
}

/** A decoded record waiting for its turn (its source already checked against the loaded handles). */
interface QueuedHint {
  readonly record: Uint8Array;
  readonly type: number;
  readonly source: number | undefined;
  readonly vcpu: number | undefined;
}

interface Live {
  readonly packageId: string;
  readonly digest: Uint8Array;
  readonly progIds: readonly number[];
}

const opCode: Record<HypercallRequest['op'], OpCode> = { load: Op.LOAD, unload: Op.UNLOAD, replace: Op.REPLACE, 'map-update': Op.MAP_UPDATE };
const cmdNames = new Map<number, CmdName>(Object.entries(Cmd).map(([k, v]) => [v, k as CmdName]));
const statusNames = new Map<number, StatusName>(Object.entries(Status).map(([k, v]) => [v, k as StatusName]));
const U32 = 0x1_0000_0000;
/** Registers whose value is fixed when the device is made (a copy of it serves the vCPU threads). */
const CONSTANT_REGS = [Reg.MAGIC, Reg.VERSION, Reg.FEATURES, Reg.DOORBELL_PORT, Reg.SHM_BASE_LO, Reg.SHM_BASE_HI, Reg.SHM_SIZE] as const;

/** `rate` units per second up to `burst`, starting full; fractional units accumulate. */
class TokenBucket {
  private tokens: number;
  constructor(what: string, private readonly rate: number, private readonly burst: number, private last: number) {
    if (!(rate > 0) || !(burst >= 1)) throw new RangeError(`${what} ${rate}/s burst ${burst} is not positive`);
    this.tokens = burst;
  }
  /** Whole units available now. */
  available(now: number): number {
    this.tokens = Math.min(this.burst, this.tokens + (Math.max(0, now - this.last) * this.rate) / 1000);
    this.last = Math.max(this.last, now);
    return Math.floor(this.tokens);
  }
  take(n: number): void {
    this.tokens -= n;
  }
  /** Milliseconds until `n` units are available (at least 1). */
  msUntil(n: number): number {
    return Math.max(1, Math.ceil(((n - this.tokens) * 1000) / this.rate));
  }
}

export class HypercallDevice implements BusDevice {
  private readonly shm: Uint8Array;
  private readonly hdr: DataView;
  private readonly layout: MailboxLayout;
  private readonly shmBase: number;
  private readonly doorbellPort: number;
  private readonly rate: number;
  private readonly now: () => number;

  /**
   * STATUS, RESULT and SEQ live in shared cells: a vCPU thread answers the agent's reads after
   * each command itself (bus.ts SharedRegister), so a command costs one forwarded exit, not two.
   * While the hint budget is spent, the vCPU threads also answer HINTS with E_RATE themselves
   * (the `refuse` register): a guest that ignores E_RATE and calls again at once costs the
   * main thread nothing until the budget has refilled by HINT_REOPEN_UNITS.
   */
  private readonly regs = new Int32Array(new SharedArrayBuffer(4 * REFUSE_CELLS));
  private refuseTimer: NodeJS.Timeout | undefined;
  private h2gSeq = 0;
  private h2gLen = 0;
  private g2hAck = 0;
  /** Every COMMAND write takes a token; the hint budget counts what HINTS decodes. */
  private readonly calls: TokenBucket;
  private readonly hintBudget: TokenBucket;
  private readonly hintBurst: number;
  /** Per-type budgets (hintTypeBudgets), with the burst each reopens at. */
  private readonly typeBudgets = new Map<number, { bucket: TokenBucket; burst: number }>();

  private agentInfo: AgentInfo | undefined;
  private sessions = 0;
  private closed = false;
  private doorbellRung = false;
  private nextRequestId = 1;
  private nextHandle = 1;
  private queue: Pending[] = [];
  private readonly inFlight = new Map<number, Pending>();
  private readonly live = new Map<number, Live>();
  /** Handles in use: live, or named by a request not yet reported. */
  private readonly handles = new Set<number>();

  private readonly hintHandlers = new Map<number, HintHandler[]>();
  private readonly anyHintHandlers: AnyHintHandler[] = [];
  private readonly doorbellCbs: (() => void)[] = [];
  private readonly helloCbs: ((info: AgentInfo, lost: readonly LostProgram[]) => void)[] = [];
  private readonly stats: HypercallCounters;
  private readonly hintsPerTurn: number;
  private readonly hintQueueMax: number;
  private readonly defer: (fn: () => void) => void;
  /** Records decoded and not yet handed to the handlers, oldest first from `hintHead`. */
  private hintQueue: QueuedHint[] = [];
  private hintHead = 0;
  private hintTurnScheduled = false;
  private failure: { status: StatusName; why: string } | undefined;

  constructor(opts: HypercallDeviceOptions) {
    this.layout = mailboxLayout(opts.shm.length);
    if (!Number.isSafeInteger(opts.shmBase) || opts.shmBase < 0 || opts.shmBase % 0x1000 !== 0) {
      throw new RangeError(`hypercall shared memory base 0x${opts.shmBase.toString(16)} is not page aligned`);
    }
    this.shm = opts.shm;
    this.hdr = new DataView(opts.shm.buffer, opts.shm.byteOffset, opts.shm.length);
    this.shmBase = opts.shmBase;
    this.doorbellPort = opts.doorbellPort ?? HC_DOORBELL_PORT;
    this.rate = opts.ratePerSecond ?? 5000;
    this.now = opts.now ?? (() => performance.now());
    this.calls = new TokenBucket('hypercall rate', this.rate, opts.burst ?? this.rate, this.now());
    const hintRate = opts.hintUnitsPerSecond ?? HINT_UNITS_PER_SECOND;
    this.hintBurst = opts.hintUnitBurst ?? Math.min(hintRate, HINT_UNIT_BURST);
    this.hintBudget = new TokenBucket('hint budget', hintRate, this.hintBurst, this.now());
    for (const [type, b] of opts.hintTypeBudgets ?? []) {
      this.typeBudgets.set(type, { bucket: new TokenBucket(`hint type ${type} budget`, b.perSecond, b.burst, this.now()), burst: b.burst });
    }
    this.hintsPerTurn = opts.hintRecordsPerTurn ?? HINT_RECORDS_PER_TURN;
    this.hintQueueMax = opts.hintQueueMax ?? HINT_QUEUE_MAX;
    if (!(this.hintsPerTurn >= 1) || !(this.hintQueueMax >= 1)) throw new RangeError(`hint records per turn ${this.hintsPerTurn} and queue ${this.hintQueueMax} must be at least 1`);
    this.defer = opts.defer ?? ((fn) => void setImmediate(fn));
    this.stats = {
      calls: { HELLO: 0, FETCH: 0, REPORT: 0, HINTS: 0, UNKNOWN: 0 },
      errors: { E_UNKNOWN: 0, E_STATE: 0, E_LENGTH: 0, E_INVALID: 0, E_NOREQ: 0, E_VERSION: 0, E_RATE: 0, E_ACCESS: 0 },
      badReads: 0,
      badWrites: 0,
      hintBatches: 0,
      hintRecords: 0,
      hintBytes: 0,
      hintDropped: 0,
      hintBudgetDropped: 0,
      hintQueueDropped: 0,
      hintTypeDropped: {},
      hintQueued: 0,
      hintUnknown: 0,
      hintUnattributed: 0,
      hintsByType: {},
      handlerErrors: 0,
      requestsSubmitted: 0,
      requestsCompleted: 0,
      h2gBytes: 0,
      g2hBytes: 0,
      agentHellos: 0,
      agentRestarts: 0,
      programsLost: 0,
    };
    this.shm.fill(0, 0, this.layout.h2gOff);
    this.writeHeader();
  }

  // ---- host API ---------------------------------------------------------------------------

  /** The agent of the current session, or undefined before the first HELLO. */
  get agent(): AgentInfo | undefined {
    return this.agentInfo;
  }

  /** Why the last failing command failed (for logs; the guest only sees the status). */
  get lastError(): { readonly status: StatusName; readonly why: string } | undefined {
    return this.failure;
  }

  /** Requests queued and not yet fetched by the agent. */
  get pending(): number {
    return this.queue.length;
  }

  /** A snapshot of the counters. */
  counters(): HypercallCounters {
    this.stats.hintQueued = this.hintQueue.length - this.hintHead;
    this.foldRefused();
    return structuredClone(this.stats);
  }

  /** Largest package that fits the host→guest mailbox. */
  get maxPackageSize(): number {
    return this.layout.h2gSize - requestSize(0);
  }

  /**
   * Queues a request for the agent. Resolves with the agent's report (a refusal or verifier
   * failure is a result, not a rejection); rejects only when the request cannot be sent.
   * Requests wait in the queue until an agent has said HELLO.
   */
  submit(req: HypercallRequest): Promise<HypercallResult> {
    if (this.closed) return Promise.reject(new HypercallError('closed', 'hypercall device is closed'));
    let map: Pending['map'];
    if (req.op === 'map-update') {
      if (!/^[A-Za-z0-9_.]{1,31}$/.test(req.map)) return Promise.reject(new HypercallError('bad-map', `map name '${req.map}' is not 1..31 characters of [A-Za-z0-9_.]`));
      if (![0, 1, 2].includes(req.flags)) return Promise.reject(new HypercallError('bad-map', `map update flags ${req.flags} must be 0 (any), 1 (noexist) or 2 (exist)`));
      map = { name: req.map, body: encodeMapUpdate(req.key, req.value, req.flags) };
      if (map.body.length > this.maxPackageSize) return Promise.reject(new HypercallError('too-large', `map update of ${map.body.length} bytes; the mailbox holds ${this.maxPackageSize}`));
    } else if (req.op !== 'unload') {
      if (req.pkg.digest.length !== DIGEST_LEN) {
        return Promise.reject(new HypercallError('bad-digest', `package ${req.pkg.id}: digest is ${req.pkg.digest.length} bytes, want ${DIGEST_LEN}`));
      }
      if (req.pkg.bytes.length > this.maxPackageSize) {
        return Promise.reject(new HypercallError('too-large', `package ${req.pkg.id} is ${req.pkg.bytes.length} bytes; the mailbox holds ${this.maxPackageSize}`));
      }
    }
    let handle: number;
    if (req.op === 'load') {
      handle = this.allocHandle();
      this.handles.add(handle);
    } else {
      handle = req.handle;
      if (!this.handles.has(handle)) return Promise.reject(new HypercallError('unknown-handle', `${req.op}: no program is loaded under handle ${handle}`));
    }
    const id = this.allocRequestId();
    this.stats.requestsSubmitted++;
    return new Promise<HypercallResult>((resolve, reject) => {
      this.queue.push({ id, op: req.op, handle, pkg: req.op === 'load' || req.op === 'replace' ? req.pkg : undefined, map, resolve, reject });
      this.ringIfNeeded();
    });
  }

  /** Registers a handler for hint records of `type`; returns a function that unregisters it. */
  onHints(type: number, handler: HintHandler): () => void {
    if (type === SOURCE_TYPE) throw new RangeError(`hint type ${type} is reserved for SOURCE records`);
    const list = this.hintHandlers.get(type) ?? [];
    list.push(handler);
    this.hintHandlers.set(type, list);
    return () => {
      const l = this.hintHandlers.get(type);
      if (!l) return;
      const i = l.indexOf(handler);
      if (i >= 0) l.splice(i, 1);
      if (l.length === 0) this.hintHandlers.delete(type);
    };
  }

  /** Registers a handler for every hint record (after the typed ones of its type). */
  onAnyHint(handler: AnyHintHandler): void {
    this.anyHintHandlers.push(handler);
  }

  /** Called when the agent should be woken (vmm writes one byte on the doorbell connection). */
  onDoorbellNeeded(cb: () => void): void {
    this.doorbellCbs.push(cb);
  }

  /** Called on every HELLO with the programs lost by the previous agent (empty the first time). */
  onAgentHello(cb: (info: AgentInfo, lost: readonly LostProgram[]) => void): void {
    this.helloCbs.push(cb);
  }

  /** Rejects every request not yet reported; later submits fail. */
  close(): void {
    this.closed = true;
    clearTimeout(this.refuseTimer);
    Atomics.store(this.regs, REFUSE.ON, 0);
    this.hintQueue = [];
    this.hintHead = 0;
    const all = [...this.inFlight.values(), ...this.queue];
    this.inFlight.clear();
    this.queue = [];
    for (const p of all) p.reject(new HypercallError('closed', `request ${p.id} (${p.op}) dropped: hypercall device closed`));
  }

  // ---- BusDevice -----------------------------------------------------------------------------

  read(offset: number, data: Uint8Array): void {
    if (data.length !== 4 || offset % 4 !== 0) {
      this.stats.badReads++;
      data.fill(0xff);
      return;
    }
    new DataView(data.buffer, data.byteOffset, 4).setUint32(0, this.register(offset), true);
  }

  /**
   * Served by the vCPU threads: the registers fixed for the device's lifetime (the agent's probe
   * reads each once), STATUS, RESULT and SEQ (reads), COMMAND (HINTS while the budget is spent).
   */
  sharedRegisters(): readonly SharedRegister[] {
    const cell = (i: number) => new Int32Array(this.regs.buffer, 4 * i, 1);
    const constant = (offset: number): SharedRegister => ({ offset, size: 4, kind: 'load', cell: Int32Array.of(this.register(offset) | 0) });
    return [
      ...CONSTANT_REGS.map(constant),
      { offset: Reg.STATUS, size: 4, kind: 'load', cell: cell(REFUSE.STATUS) },
      { offset: Reg.RESULT, size: 4, kind: 'load', cell: cell(REFUSE.RESULT) },
      { offset: Reg.SEQ, size: 4, kind: 'load', cell: cell(REFUSE.SEQ) },
      { offset: Reg.COMMAND, size: 4, kind: 'refuse', cell: this.regs },
    ];
  }

  write(offset: number, data: Uint8Array, vcpu?: number): void {
    if (data.length !== 4 || offset !== Reg.COMMAND) {
      this.stats.badWrites++;
      this.finish(Status.E_ACCESS, 0, `${data.length}-byte write at register offset 0x${offset.toString(16)}`);
      return;
    }
    this.command(new DataView(data.buffer, data.byteOffset, 4).getUint32(0, true), vcpu);
  }

  // ---- internals ---------------------------------------------------------------------------

  private register(offset: number): number {
    switch (offset) {
      case Reg.MAGIC: return HC_MAGIC;
      case Reg.VERSION: return HC_VERSION;
      case Reg.FEATURES: return Features.HINT_SOURCE;
      case Reg.DOORBELL_PORT: return this.doorbellPort;
      case Reg.SHM_BASE_LO: return this.shmBase % U32;
      case Reg.SHM_BASE_HI: return Math.floor(this.shmBase / U32);
      case Reg.SHM_SIZE: return this.shm.length;
      case Reg.PENDING: return this.queue.length;
      case Reg.STATUS: return Atomics.load(this.regs, REFUSE.STATUS) >>> 0;
      case Reg.RESULT: return Atomics.load(this.regs, REFUSE.RESULT) >>> 0;
      case Reg.SEQ: return Atomics.load(this.regs, REFUSE.SEQ) >>> 0;
      default: return 0; // COMMAND and reserved registers
    }
  }

  private command(code: number, vcpu: number | undefined): void {
    Atomics.add(this.regs, REFUSE.SEQ, 1); // wraps at 2^32, as the register does
    const name = cmdNames.get(code);
    this.stats.calls[name ?? 'UNKNOWN']++;
    const wait = this.takeToken();
    if (wait > 0) return this.finish(Status.E_RATE, wait, `rate limit of ${this.rate}/s exceeded`);
    switch (name) {
      case 'HELLO': return this.hello();
      case 'FETCH': return this.fetch();
      case 'REPORT': return this.report();
      case 'HINTS': return this.hints(vcpu);
      default: return this.finish(Status.E_UNKNOWN, 0, `unknown command ${code}`);
    }
  }

  /** Takes one token; returns 0, or the milliseconds until one is available. */
  private takeToken(): number {
    if (this.calls.available(this.now()) < 1) return this.calls.msUntil(1);
    this.calls.take(1);
    return 0;
  }

  private finish(status: StatusCode, result: number, why?: string): void {
    Atomics.store(this.regs, REFUSE.STATUS, status);
    Atomics.store(this.regs, REFUSE.RESULT, status === Status.OK || status === Status.E_RATE ? result | 0 : 0);
    if (status !== Status.OK) {
      const name = statusNames.get(status) as Exclude<StatusName, 'OK'>;
      this.stats.errors[name]++;
      this.failure = { status: name, why: why ?? name };
    }
    this.writeHeader();
  }

  /** Rewrites every host-owned header field (the guest may have scribbled on them). */
  private writeHeader(): void {
    const l = this.layout;
    ShmHeader.write(this.hdr, {
      magic: SHM_MAGIC, version: SHM_VERSION, h2gOff: l.h2gOff, h2gSize: l.h2gSize, g2hOff: l.g2hOff, g2hSize: l.g2hSize,
      h2gLen: this.h2gLen, h2gSeq: this.h2gSeq, g2hAck: this.g2hAck,
    });
  }

  /** Reads g2h_len once and copies the message out: later guest writes cannot change what we parse. */
  private takeMessage(): Uint8Array | undefined {
    const { g2hLen: len, g2hSeq } = ShmHeader.read(this.hdr);
    this.g2hAck = g2hSeq;
    if (len > this.layout.g2hSize) {
      this.finish(Status.E_LENGTH, 0, `g2h_len ${len} > mailbox size ${this.layout.g2hSize}`);
      return undefined;
    }
    this.stats.g2hBytes += len;
    return this.shm.slice(this.layout.g2hOff, this.layout.g2hOff + len);
  }

  private needSession(what: string): boolean {
    if (this.agentInfo) return true;
    this.finish(Status.E_STATE, 0, `${what} before HELLO`);
    return false;
  }

  private hello(): void {
    const msg = this.takeMessage();
    if (!msg) return;
    const d = decodeHello(msg, HC_VERSION);
    if (!d.ok) return this.finish(d.status, 0, d.why);
    const restart = this.agentInfo !== undefined;
    const lost = this.endSession();
    this.agentInfo = { ...d.value, session: ++this.sessions };
    this.stats.agentHellos++;
    if (restart) this.stats.agentRestarts++;
    this.doorbellRung = false;
    this.finish(Status.OK, this.queue.length);
    for (const cb of this.helloCbs) this.safely(() => cb(this.agentInfo as AgentInfo, lost));
  }

  /**
   * The old agent is gone with its fds: requests it fetched go back to the front of the queue
   * in their original order; programs it had loaded are lost, unless a queued request already
   * decides their handle's fate (an UNLOAD, or a REPLACE that the new agent runs as a LOAD).
   */
  private endSession(): LostProgram[] {
    const refetch = [...this.inFlight.values()].sort((a, b) => a.id - b.id);
    this.inFlight.clear();
    this.queue = [...refetch, ...this.queue];
    const decided = new Set(this.queue.filter((p) => p.op === 'unload' || p.op === 'replace').map((p) => p.handle));
    const lost: LostProgram[] = [];
    for (const [handle, l] of this.live) {
      if (!decided.has(handle)) {
        lost.push({ handle, packageId: l.packageId, digest: l.digest, progIds: l.progIds });
        this.handles.delete(handle);
      }
    }
    this.live.clear();
    this.stats.programsLost += lost.length;
    return lost;
  }

  private fetch(): void {
    if (!this.needSession('FETCH')) return;
    this.doorbellRung = false;
    const p = this.queue.shift();
    const box = this.shm.subarray(this.layout.h2gOff, this.layout.h2gOff + this.layout.h2gSize);
    if (!p) {
      this.h2gLen = 0;
      return this.finish(Status.OK, 0);
    }
    const len = encodeRequest(
      {
        op: opCode[p.op],
        requestId: p.id,
        handle: p.handle,
        digest: p.pkg?.digest ?? new Uint8Array(DIGEST_LEN),
        name: p.pkg?.id ?? p.map?.name ?? '',
        body: p.pkg?.bytes ?? p.map?.body ?? new Uint8Array(0),
      },
      box,
    );
    this.inFlight.set(p.id, p);
    this.h2gSeq = (this.h2gSeq + 1) % U32;
    this.h2gLen = len;
    this.stats.h2gBytes += len;
    this.finish(Status.OK, len);
  }

  private report(): void {
    if (!this.needSession('REPORT')) return;
    const msg = this.takeMessage();
    if (!msg) return;
    const d = decodeReport(msg);
    if (!d.ok) return this.finish(d.status, 0, d.why);
    const r = d.value;
    const p = this.inFlight.get(r.requestId);
    if (!p) return this.finish(Status.E_NOREQ, 0, `REPORT for request ${r.requestId}, which is not in flight`);
    const ok = r.outcome === 'OK';
    if (ok && (p.op === 'load' || p.op === 'replace') && r.progIds.length === 0) return this.finish(Status.E_INVALID, 0, `REPORT OK for ${p.op} ${p.id} names no program`);
    this.inFlight.delete(p.id);
    this.settleHandle(p, ok, r.outcome, r.progIds);
    this.stats.requestsCompleted++;
    this.finish(Status.OK, 0);
    p.resolve({ requestId: p.id, op: p.op, handle: p.handle, ok, outcome: r.outcome, errno: r.errno, progIds: r.progIds, text: r.text });
  }

  private settleHandle(p: Pending, ok: boolean, outcome: OutcomeName, progIds: readonly number[]): void {
    if (p.op === 'map-update') return; // the programs stay as they were, whatever the outcome
    if (p.op === 'unload') {
      if (ok || outcome === 'NOENT') {
        this.live.delete(p.handle);
        this.handles.delete(p.handle);
      }
      return;
    }
    if (ok && p.pkg) this.live.set(p.handle, { packageId: p.pkg.id, digest: p.pkg.digest, progIds });
    else if (!this.live.has(p.handle) && !this.queue.some((q) => q.handle === p.handle)) this.handles.delete(p.handle);
  }

  /**
   * A batch is decoded only as far as the VM's hint budget goes: with the budget spent the call
   * is refused (E_RATE, the agent retries later) before a byte is read, and a batch larger than
   * what is left is cut where the budget ends (the rest dropped unread, counted). So the main
   * thread's work per second is bounded by the budget, whatever the guest writes. The records
   * taken go to the handlers `hintsPerTurn` at a time (the first slice now), one slice per
   * event-loop turn; the queue between is bounded the same way as the budget (`hintQueueMax`).
   */
  private hints(vcpu: number | undefined): void {
    if (!this.needSession('HINTS')) return;
    const budget = this.hintBudget.available(this.now());
    if (budget < 1) {
      this.refuseHints(this.hintBudget, this.hintBurst);
      return this.finish(Status.E_RATE, this.hintBudget.msUntil(1), 'hint record budget spent');
    }
    // A record costs at least one unit: no more units than free slots means no more records.
    const room = this.hintQueueMax - (this.hintQueue.length - this.hintHead);
    if (room < 1) {
      this.stats.hintQueueDropped += this.peekRecordCount();
      return this.finish(Status.E_RATE, 1, 'hint queue full');
    }
    const units = Math.min(budget, room);
    const { g2hLen: len, g2hSeq } = ShmHeader.read(this.hdr);
    this.g2hAck = g2hSeq;
    if (len > this.layout.g2hSize) return this.finish(Status.E_LENGTH, 0, `g2h_len ${len} > mailbox size ${this.layout.g2hSize}`);
    const copy = this.shm.slice(this.layout.g2hOff, this.layout.g2hOff + Math.min(len, hintsPrefixBytes(units)));
    this.stats.g2hBytes += copy.length;
    const d = decodeHints(copy, ((this.agentInfo as AgentInfo).caps & Caps.HINT_SOURCE) !== 0, { length: len, maxUnits: units });
    if (!d.ok) return this.finish(d.status, 0, d.why);
    const { records, dropped, count, taken } = d.value;
    this.hintBudget.take(Math.max(1, d.value.units));
    this.stats.hintBatches++;
    this.stats.hintRecords += records.length;
    this.stats.hintBytes += copy.length;
    this.stats.hintDropped += dropped;
    if (room < budget) this.stats.hintQueueDropped += count - taken;
    else this.stats.hintBudgetDropped += count - taken;
    this.finish(Status.OK, taken);
    const now = this.now();
    let spent: { bucket: TokenBucket; burst: number } | undefined;
    for (const rec of records) {
      const typed = this.typeBudgets.get(rec.type);
      if (typed) {
        if (typed.bucket.available(now) < 1) {
          this.stats.hintTypeDropped[rec.type] = (this.stats.hintTypeDropped[rec.type] ?? 0) + 1;
          spent = typed;
          continue;
        }
        typed.bucket.take(1);
      }
      // The guest names the source: only a handle loaded now is believed.
      const source = rec.source !== undefined && this.live.has(rec.source) ? rec.source : undefined;
      this.hintQueue.push({ record: rec.record, type: rec.type, source, vcpu });
    }
    // A guest sending more of a type than its budget: the next calls are refused before they
    // cost main an exit, until part of that budget is back (the guest's surplus would be dropped).
    if (spent) this.refuseHints(spent.bucket, spent.burst);
    if (this.hintQueue.length > this.hintHead && !this.hintTurnScheduled) this.hintTurn();
  }

  /**
   * A budget is spent (the VM's, or a type's): the vCPU threads answer HINTS with E_RATE
   * themselves until it has refilled by HINT_REOPEN_UNITS (more than the one unit a call needs,
   * so a guest calling in a loop gets a few records per exit, not one).
   */
  private refuseHints(bucket: TokenBucket, burst: number): void {
    if (this.closed || this.refuseTimer !== undefined) return;
    const ms = bucket.msUntil(Math.min(HINT_REOPEN_UNITS, burst));
    Atomics.store(this.regs, REFUSE.COMMAND, Cmd.HINTS);
    Atomics.store(this.regs, REFUSE.ANSWER_STATUS, Status.E_RATE);
    Atomics.store(this.regs, REFUSE.ANSWER_RESULT, ms);
    Atomics.store(this.regs, REFUSE.ON, 1);
    this.refuseTimer = setTimeout(() => {
      this.refuseTimer = undefined;
      Atomics.store(this.regs, REFUSE.ON, 0);
    }, ms);
    this.refuseTimer.unref();
  }

  /** HINTS calls the vCPU threads refused: counted as calls refused with E_RATE. */
  private foldRefused(): void {
    const n = Atomics.exchange(this.regs, REFUSE.COUNT, 0);
    this.stats.calls.HINTS += n;
    this.stats.errors.E_RATE += n;
  }

  /** The record count a refused batch claims (for the drop counter; 0 when unreadable). */
  private peekRecordCount(): number {
    const { g2hLen: len } = ShmHeader.read(this.hdr);
    if (len < 8 || len > this.layout.g2hSize) return 0;
    const n = this.hdr.getUint32(this.layout.g2hOff, true);
    return Math.min(n, Math.floor((len - 8) / 8));
  }

  /** Hands one slice of queued records to the handlers; schedules the next turn if more wait. */
  private hintTurn(): void {
    this.hintTurnScheduled = false;
    const end = Math.min(this.hintQueue.length, this.hintHead + this.hintsPerTurn);
    while (this.hintHead < end) {
      const q = this.hintQueue[this.hintHead++] as QueuedHint;
      this.dispatchHint(q);
    }
    if (this.hintHead >= this.hintQueue.length) {
      this.hintQueue = [];
      this.hintHead = 0;
      return;
    }
    // Under a steady flood the queue never empties: drop the handled prefix now and then.
    if (this.hintHead >= this.hintQueueMax) {
      this.hintQueue = this.hintQueue.slice(this.hintHead);
      this.hintHead = 0;
    }
    this.hintTurnScheduled = true;
    this.defer(() => this.hintTurn());
  }

  private dispatchHint(q: QueuedHint): void {
    if (q.source === undefined) this.stats.hintUnattributed++;
    const handlers = this.hintHandlers.get(q.type);
    let known = handlers !== undefined;
    if (handlers) for (const h of [...handlers]) this.safely(() => h(q.record, q.type, q.source, q.vcpu));
    for (const h of this.anyHintHandlers) this.safely(() => (known = h(q.record, q.type, q.source, q.vcpu) || known));
    if (!known) {
      this.stats.hintUnknown++;
      return;
    }
    this.stats.hintsByType[q.type] = (this.stats.hintsByType[q.type] ?? 0) + 1;
  }

  private ringIfNeeded(): void {
    if (!this.agentInfo || this.doorbellRung || this.queue.length === 0) return;
    this.doorbellRung = true;
    for (const cb of this.doorbellCbs) this.safely(cb);
  }

  /** Host callbacks must not break the guest's exit path. */
  private safely(fn: () => void): void {
    try {
      fn();
    } catch {
      this.stats.handlerErrors++;
    }
  }

  private allocRequestId(): number {
    while (this.nextRequestId === 0 || this.inFlight.has(this.nextRequestId) || this.queue.some((p) => p.id === this.nextRequestId)) {
      this.nextRequestId = (this.nextRequestId + 1) % U32;
    }
    const id = this.nextRequestId;
    this.nextRequestId = (id + 1) % U32;
    return id;
  }

  private allocHandle(): number {
    while (this.nextHandle === 0 || this.handles.has(this.nextHandle)) this.nextHandle = (this.nextHandle + 1) % U32;
    const h = this.nextHandle;
    this.nextHandle = (h + 1) % U32;
    return h;
  }
}
