// The main-thread side of the vCPU workers: starts one worker per vCPU, learns each kernel tid
// (the scheduler pins by tid), answers mailbox requests through the PIO/MMIO buses, and stops
// them all. Stopping must kick each vCPU out of KVM_RUN (immediate_exit + a signal with a
// handler), or a worker never returns and the process cannot exit.

import { Worker } from 'node:worker_threads';
import { readFileSync } from 'node:fs';
import type { Vcpu } from '../../kvm/kvm';
import { KvmRun, MP_STATE_NAMES, REG_NAMES, exitReasonName } from '../../kvm/layout';
import { close, futexWake, tgkill } from '../../kvm/libc';
import { countersDelta, readKvmStats, type KvmCounters } from '../../kvm/stats';
import type { Bus, BusClaim } from '../../devices/bus';
import type { GuestMemory } from '../../devices/memory';
import {
  MB, STAT_FORWARDED, STAT_LAST_EXIT, STAT_LAST_REASON, STAT_SHARED, STAT_STATE, VCPU_STATE, VCPU_STATE_NAMES, VcpuExitReason, WorkerInit, WorkerMessage, WorkerRun, closeDoorbell, newDoorbell, newExitStats, newMailbox,
} from './mailbox';
import { newRecentExits, recentExits } from './recent';
import { decodeLapic, gifOf, hex, kernelAddresses, parseKernelStack, parseTaskStat, summarizeEvents, type CrashState, type VcpuDiagnosis } from '../diagnosis';
import { MailboxServer, type DeviceFault } from './serve';
import { holdSignal } from '../../lib/process-hooks';
import { workerScript } from '../../lib/worker-script';

/** Exits by reason name (plus forwarded, shared) from a worker's counters. */
function exitsOf(stats: Float64Array): Record<string, number> {
  const out: Record<string, number> = {};
  stats.forEach((n, i) => {
    if (i === STAT_STATE || i === STAT_LAST_EXIT || n <= 0) return;
    out[i === STAT_FORWARDED ? 'forwarded' : i === STAT_SHARED ? 'shared' : exitReasonName(i).toLowerCase()] = n;
  });
  return out;
}

/** Exits to userspace (every reason slot). */
function totalExits(stats: Float64Array): number {
  let n = 0;
  for (let i = 0; i <= STAT_LAST_REASON; i++) n += stats[i]!;
  return n;
}

function readProc(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8').trim();
  } catch {
    return undefined;
  }
}

function taskStat(tid: number): { state: string; ticks: number } | undefined {
  const line = tid ? readProc(`/proc/self/task/${tid}/stat`) : undefined;
  return line === undefined ? undefined : parseTaskStat(line);
}

/** SIGUSR2: SIGUSR1 belongs to Node's inspector. Any signal with a handler interrupts KVM_RUN. */
const KICK_SIGNAL = 'SIGUSR2';
const KICK_SIGNAL_NUMBER = 12;

export interface VcpuExit {
  vcpu: number;
  reason: VcpuExitReason;
  detail: string;
}

/** A worker spawned ahead of its vCPU (VcpuWorkers); `failure`: it failed before start() handed it one. */
interface Spawned {
  id: number;
  worker: Worker;
  mailbox: Int32Array;
  stats: Float64Array;
  recent: Float64Array;
  /** Resolves with the thread's tid once the worker's code is loaded. */
  ready: Promise<number>;
  stopped: Promise<void>;
  failure?: Error;
  handedOver: boolean;
  /** Where its vCPU's exits go: the machine's, once a VcpuThreads took the worker. */
  onExit: (e: VcpuExit) => void;
}

/**
 * The vCPU workers, spawned before their vCPUs exist — and, from \`tsvmm run\`, before their
 * machine: a worker's own start (a Node environment, its bundle, koffi: 0.1–0.2 s natively,
 * 1–2.5 s each in the nested sandbox) then overlaps the VMM's configuration and setup instead
 * of following them. A VcpuThreads takes them over and hands each its vCPU.
 */
export class VcpuWorkers {
  /** Rung by the workers when they post a request for main (vmm/vcpu/serve.ts). */
  readonly doorbell = newDoorbell();
  readonly spawned: Spawned[] = [];
  /** Releases this machine's hold on the kick signal's handler (one handler for all VMs of the process). */
  private releaseKick: () => void = () => {};
  /** The doorbell's eventfd is closed (a second close could close another owner's fd). */
  private closed = false;

  spawn(count: number): void {
    if (this.spawned.length) throw new Error('the vCPU workers were already spawned');
    this.releaseKick = holdSignal(KICK_SIGNAL);
    const script = workerScript('vcpu-worker');
    for (let id = 0; id < count; id++) {
      const init: WorkerInit = { id, mailbox: newMailbox(), doorbell: this.doorbell, stats: newExitStats(), recent: newRecentExits() };
      const worker = new Worker(script, { workerData: init, name: `vcpu${id}` });
      const s: Spawned = {
        id, worker, mailbox: init.mailbox, stats: init.stats, recent: init.recent, ready: Promise.resolve(0), stopped: Promise.resolve(), handedOver: false, onExit: () => {},
      };
      s.stopped = new Promise((resolve) => worker.once('exit', () => resolve()));
      s.ready = new Promise((resolve, reject) => {
        worker.on('message', (m: WorkerMessage) => {
          if (m.type === 'ready') resolve(m.tid);
          else if (m.type === 'exit') s.onExit({ vcpu: id, reason: m.reason, detail: m.detail });
        });
        worker.once('error', (e) => {
          if (s.handedOver) s.onExit({ vcpu: id, reason: 'internal-error', detail: `vCPU worker failed: ${e.message}` });
          else s.failure = e;
          reject(e);
        });
        worker.once('exit', (code) => {
          s.failure ??= new Error(`vCPU worker ${id} exited (status ${code}) before it ran its vCPU`);
          reject(s.failure);
        });
      });
      // Awaited by start(); a machine whose setup fails before that never asks.
      s.ready.catch(() => {});
      this.spawned.push(s);
    }
  }

  /**
   * Ends the workers that never got a vCPU (they wait for their message, or still start: a
   * setup that failed, or no machine took them) and releases the kick signal; the running
   * ones are VcpuThreads.stop()'s.
   */
  async close(): Promise<void> {
    await Promise.all(this.spawned.filter((s) => !s.handedOver).map((s) => s.worker.terminate()));
    this.releaseKick();
    // VcpuThreads.stop() ended the others before it called this: no thread can ring any more.
    if (!this.closed) closeDoorbell(this.doorbell);
    this.closed = true;
  }
}

/** A worker running its vCPU. */
interface Thread extends Spawned {
  vcpu: Vcpu;
  run: Uint8Array;
  tid: number;
  /** Its KVM counters (KVM_GET_STATS_FD, opened before it first runs: the ioctl waits for KVM_RUN), for diagnoses; undefined on kernels without. */
  statsFd?: number;
}

/** A vCPU's KVM counters now, or undefined (no stats fd, or the read failed). */
function kvmCounters(t: Thread): KvmCounters | undefined {
  if (t.statsFd === undefined) return undefined;
  try {
    return readKvmStats(t.statsFd);
  } catch {
    return undefined;
  }
}

export class VcpuThreads {
  private readonly threads: Thread[] = [];
  private readonly server: MailboxServer;
  private readonly workers: VcpuWorkers;

  /**
   * `onDeviceFault`: a device threw on a forwarded access (answered as unclaimed; the vCPU goes
   * on). `workers`: spawned ahead by the caller (they are this machine's from now on, stopped
   * with it), else spawn() spawns them.
   */
  constructor(pio: Bus, mmio: Bus, private readonly onExit: (e: VcpuExit) => void, onDeviceFault: (f: DeviceFault) => void, workers?: VcpuWorkers) {
    this.workers = workers ?? new VcpuWorkers();
    this.server = new MailboxServer(this.workers.doorbell, pio, mmio, onDeviceFault);
  }

  /** Starts \`count\` workers now, unless they were spawned ahead (the constructor's \`workers\`). */
  spawn(count: number): void {
    if (!this.workers.spawned.length) this.workers.spawn(count);
    if (count !== this.workers.spawned.length) throw new Error(`${count} vCPUs for ${this.workers.spawned.length} spawned workers`);
  }

  /**
   * Hands each spawned worker its vCPU (spawning them first if spawn() was not called) and
   * resolves with their tids; each enters KVM_RUN as soon as it has its message.
   */
  async start(vcpus: readonly Vcpu[], mmapSize: number, claims: { pio: readonly BusClaim[]; mmio: readonly BusClaim[] }): Promise<number[]> {
    this.spawn(vcpus.length);
    const spawned = this.workers.spawned;
    const tids = await Promise.all(spawned.map((s) => s.ready));
    for (const s of spawned) if (s.failure) throw s.failure;
    for (const [i, s] of spawned.entries()) {
      const vcpu = vcpus[i]!;
      if (vcpu.id !== s.id) throw new Error(`vCPU ${vcpu.id} given to worker ${s.id}`);
      const t: Thread = Object.assign(s, { vcpu, run: vcpu.mapRun(mmapSize).bytes, tid: tids[i]! });
      try {
        t.statsFd = vcpu.openStatsFd();
      } catch {
        // Linux < 5.14: diagnoses go without KVM's counters.
      }
      this.threads.push(t);
      t.onExit = this.onExit;
      t.handedOver = true;
      this.server.add(t.mailbox);
      const job: WorkerRun = { type: 'run', fd: vcpu.fd, mmapSize, pio: claims.pio, mmio: claims.mmio };
      t.worker.postMessage(job);
    }
    // The server answers every request itself; should its loop ever fail, the vCPUs waiting
    // on it could not go on: end the VM rather than leave them stuck.
    this.server.run().catch((e: Error) => this.onExit({ vcpu: 0, reason: 'internal-error', detail: `mailbox server failed: ${e.message}` }));
    return tids;
  }

  /** Forwarded accesses by device and by register, and those that waited for their vCPU's share of main, by vCPU (vmm/vcpu/serve.ts). */
  get forwarded(): { byDevice: Readonly<Record<string, number>>; byRegister: Readonly<Record<string, number>>; deferred: readonly number[] } {
    return { byDevice: this.server.byDevice, byRegister: this.server.byRegister, deferred: this.server.deferred };
  }

  /** Whether start() handed the workers their vCPUs. */
  get started(): boolean {
    return this.threads.length > 0;
  }

  get tids(): number[] {
    return this.threads.map((t) => t.tid);
  }

  /**
   * Exits by reason name per vCPU, plus `forwarded` (accesses answered by a main-thread
   * device) and `shared` (accesses the worker served from a device's shared register).
   */
  exitCounts(): Record<string, number>[] {
    return this.threads.map((t) => exitsOf(t.stats));
  }

  /**
   * What each vCPU is doing, for a guest that does not answer: counters and its thread's
   * /proc state over `sampleMs`, then — each vCPU parked for a moment, since a vCPU ioctl
   * waits for KVM_RUN to return — its run state, registers and local APIC. A vCPU that does
   * not leave KVM_RUN within `parkMs` of a kick is reported as such (that is a finding too).
   * With `memory`, the kernel addresses on each vCPU's stack too.
   */
  async inspect(sampleMs = 1000, parkMs = 2000, memory?: GuestMemory): Promise<VcpuDiagnosis[]> {
    const before = this.threads.map((t) => ({ exits: totalExits(t.stats), ticks: taskStat(t.tid)?.ticks, kvm: kvmCounters(t) }));
    await new Promise((r) => setTimeout(r, sampleMs));
    const out: VcpuDiagnosis[] = [];
    for (const [i, t] of this.threads.entries()) {
      const last = t.stats[STAT_LAST_EXIT]!;
      const stat = taskStat(t.tid);
      const d: VcpuDiagnosis = {
        vcpu: i, tid: t.tid,
        worker: VCPU_STATE_NAMES[t.stats[STAT_STATE]!] ?? `state ${t.stats[STAT_STATE]}`,
        lastExit: last < 0 ? null : exitReasonName(last).toLowerCase(),
        exits: exitsOf(t.stats),
        exitsInSample: totalExits(t.stats) - before[i]!.exits,
      };
      if (stat) {
        const ticks = before[i]!.ticks;
        d.thread = { state: stat.state, wchan: readProc(`/proc/self/task/${t.tid}/wchan`) ?? '', cpuMsInSample: ticks === undefined ? 0 : (stat.ticks - ticks) * 10 };
      }
      const kvm0 = before[i]!.kvm;
      const kvm1 = kvm0 && kvmCounters(t);
      if (kvm0 && kvm1) d.kvmInSample = countersDelta(kvm0, kvm1);
      const stack = t.tid ? readProc(`/proc/self/task/${t.tid}/stack`) : undefined;
      if (stack) d.hostStack = parseKernelStack(stack);
      await this.inspectParked(t, i, d, parkMs, memory);
      out.push(d);
    }
    return out;
  }

  /**
   * What vCPU `vcpu` looked like when its exit ended the VM (a triple fault, a KVM internal
   * error, a failed entry): registers, special registers and its last exits, read here while its
   * worker, having reported the exit, no longer runs it; and what each other vCPU's worker was
   * doing and its last exit (from their counters: they are not stopped for it).
   */
  crashState(vcpu: number): CrashState {
    const t = this.thread(vcpu);
    const state: CrashState = {
      vcpu, recent: recentExits(t.recent),
      others: this.threads.filter((o) => o !== t).map((o) => ({
        vcpu: o.id, worker: VCPU_STATE_NAMES[o.stats[STAT_STATE]!] ?? `state ${o.stats[STAT_STATE]}`,
        lastExit: o.stats[STAT_LAST_EXIT]! < 0 ? null : exitReasonName(o.stats[STAT_LAST_EXIT]!).toLowerCase(),
      })),
    };
    // A vCPU ioctl waits for KVM_RUN to return: only a worker that ended its loop is safe to ask
    // (not one whose mailbox server failed under it, which is still in the guest).
    if (t.stats[STAT_STATE] !== VCPU_STATE.ENDED) {
      state.error = `its worker is ${VCPU_STATE_NAMES[t.stats[STAT_STATE]!] ?? 'busy'}: registers not read`;
      return state;
    }
    try {
      state.regs = t.vcpu.getRegs();
      state.sregs = t.vcpu.getSregs();
    } catch (e) {
      state.error = `reading its registers failed: ${(e as Error).message}`;
    }
    return state;
  }

  private async inspectParked(t: Thread, i: number, d: VcpuDiagnosis, parkMs: number, memory?: GuestMemory): Promise<void> {
    if (t.stats[STAT_STATE] === VCPU_STATE.ENDED) return;
    const wasPaused = Atomics.load(t.mailbox, MB.PAUSE) === 1;
    let timer: NodeJS.Timeout | undefined;
    const parked = await Promise.race([
      this.pause(i).then(() => Atomics.load(t.mailbox, MB.PAUSED) === 1),
      new Promise<false>((r) => (timer = setTimeout(() => r(false), parkMs))),
    ]);
    clearTimeout(timer);
    try {
      if (!parked) {
        d.error = `the vCPU did not leave KVM_RUN within ${parkMs} ms of a kick: registers not read`;
        return;
      }
      const regs = t.vcpu.getRegs();
      d.rip = hex(regs.rip);
      d.rflags = hex(regs.rflags);
      d.interruptsEnabled = (regs.rflags & 0x200n) !== 0n;
      d.registers = Object.fromEntries(REG_NAMES.map((n) => [n, hex(regs[n])]));
      if (memory) d.stack = kernelAddresses(readStack(t.vcpu, regs.rsp, memory));
      const mp = t.vcpu.getMpState();
      d.mpState = MP_STATE_NAMES[mp] ?? `state ${mp}`;
      d.lapic = decodeLapic(t.vcpu.getLapic());
      d.events = summarizeEvents(t.vcpu.getVcpuEvents());
      d.gif = gifOf(t.vcpu.getNestedStateHeader());
      const sr = t.vcpu.getSregs();
      d.control = { cr0: hex(sr.cr0), cr2: hex(sr.cr2), cr3: hex(sr.cr3), cr4: hex(sr.cr4), efer: hex(sr.efer) };
      if (memory) {
        const gpa = t.vcpu.translate(regs.rip);
        const toPageEnd = PAGE - (regs.rip % PAGE);
        const n = Number(toPageEnd < CODE_BYTES ? toPageEnd : CODE_BYTES);
        const bytes = gpa !== undefined && gpa <= BigInt(Number.MAX_SAFE_INTEGER) ? memory.slice(Number(gpa), n) : undefined;
        if (bytes) d.code = Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join(' ');
      }
    } catch (e) {
      d.error = `reading its state failed: ${(e as Error).message}`;
    } finally {
      if (!wasPaused) {
        Atomics.store(t.mailbox, MB.PAUSE, 0);
        Atomics.notify(t.mailbox, MB.PAUSE);
      }
    }
  }

  /**
   * Parks vCPU `vcpu` out of KVM_RUN (immediate_exit + a kick) and resolves once its worker
   * has parked (it sleeps, or is a few instructions from it); `resume` lets it run again. While
   * parked its thread is blocked in a futex wait.
   */
  async pause(vcpu: number): Promise<void> {
    const t = this.thread(vcpu);
    if (Atomics.load(t.mailbox, MB.PAUSE)) return this.parked(t, 1);
    Atomics.store(t.mailbox, MB.PAUSE, 1);
    t.run[KvmRun.offsets.immediateExit] = 1;
    try {
      tgkill(t.tid, KICK_SIGNAL_NUMBER);
    } catch {
      // ESRCH: the worker is gone; immediate_exit still catches a worker about to enter KVM_RUN.
    }
    await this.parked(t, 1);
  }

  async resume(vcpu: number): Promise<void> {
    const t = this.thread(vcpu);
    Atomics.store(t.mailbox, MB.PAUSE, 0);
    Atomics.notify(t.mailbox, MB.PAUSE);
    await this.parked(t, 0);
  }

  isPaused(vcpu: number): boolean {
    return Atomics.load(this.thread(vcpu).mailbox, MB.PAUSED) === 1;
  }

  private thread(vcpu: number): Thread {
    const t = this.threads[vcpu];
    if (!t) throw new RangeError(`no vCPU ${vcpu} (the machine has ${this.threads.length})`);
    return t;
  }

  /** Waits (without blocking main) until the worker's PAUSED cell is `want`, or it stopped. */
  private async parked(t: Thread, want: 0 | 1): Promise<void> {
    let stopped = false;
    void t.stopped.then(() => (stopped = true));
    while (!stopped) {
      const now = Atomics.load(t.mailbox, MB.PAUSED);
      if (now === want) return;
      const w = Atomics.waitAsync(t.mailbox, MB.PAUSED, now, 100);
      if (w.async) await w.value;
    }
  }

  /** Kicks every vCPU out of KVM_RUN and waits for all workers to end. */
  async stop(): Promise<void> {
    for (const t of this.threads) {
      Atomics.store(t.mailbox, MB.STOP, 1);
      futexWake(t.mailbox, MB.STATE);
      Atomics.store(t.mailbox, MB.PAUSE, 0); // a parked worker waits on PAUSE with no timeout
      Atomics.notify(t.mailbox, MB.PAUSE);
      t.run[KvmRun.offsets.immediateExit] = 1;
    }
    // Signal until every worker is gone: a kick can land just before the worker re-enters
    // KVM_RUN, in which case immediate_exit catches it; repeat a few times to be sure.
    const all = Promise.all(this.threads.map((t) => t.stopped));
    let done = false;
    void all.then(() => (done = true));
    for (let i = 0; i < 50 && !done; i++) {
      for (const t of this.threads) {
        if (t.tid) {
          try {
            tgkill(t.tid, KICK_SIGNAL_NUMBER);
          } catch {
            // ESRCH: that thread already ended.
          }
        }
      }
      await Promise.race([all, new Promise((r) => setTimeout(r, 20))]);
    }
    if (!done) for (const t of this.threads) await t.worker.terminate();
    for (const t of this.threads) {
      if (t.statsFd !== undefined) close(t.statsFd);
      t.statsFd = undefined;
    }
    this.server.stop();
    // Workers that never got a vCPU (nothing to kick), and the kick signal's hold.
    await this.workers.close();
  }
}

const STACK_BYTES = 4096;
const PAGE = 4096n;
/** Instruction bytes read at rip (not across its page's end). */
const CODE_BYTES = 16n;

/**
 * Up to STACK_BYTES from `rsp` up, page by page through the vCPU's page tables (a kernel stack
 * is virtually, not physically, contiguous); stops at the first page that is not mapped.
 */
function readStack(vcpu: Vcpu, rsp: bigint, memory: GuestMemory): Uint8Array {
  const out = new Uint8Array(STACK_BYTES);
  let got = 0;
  while (got < STACK_BYTES) {
    const va = rsp + BigInt(got);
    const gpa = vcpu.translate(va);
    if (gpa === undefined || gpa > BigInt(Number.MAX_SAFE_INTEGER)) break;
    const n = Math.min(STACK_BYTES - got, Number(PAGE - (va % PAGE)));
    const bytes = memory.slice(Number(gpa), n);
    if (!bytes) break;
    out.set(bytes, got);
    got += n;
  }
  return out.subarray(0, got);
}
