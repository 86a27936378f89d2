// The main-thread end of the vCPU mailboxes: waits on the shared doorbell and answers each
// forwarded port/MMIO access through the PIO or MMIO bus. Owns the answer rule: every request
// gets a response, whatever the device does. A device that throws is a bug in tsvmm, not in
// the guest, but the guest can reach it: it must neither take the VMM down (an unhandled
// rejection ends the process) nor leave the vCPU waiting for an answer that never comes.
// It also owns the fairness rule between vCPUs: one vCPU's accesses may take at most a share
// of the main thread's time (FORWARD_SHARE), so a guest writing a register in a loop slows
// that vCPU, not the API, vsock or the other vCPUs. It must not start or stop workers
// (threads.ts does).

import { setImmediate as nextTurn } from 'node:timers/promises';
import type { Bus } from '../../devices/bus';
import { futexWait, futexWake } from '../../kvm/libc';
import { DOORBELL, KIND_PIO, MB, STATE_REQUEST, STATE_RESPONSE, mailboxData, ringDoorbell } from './mailbox';

/** One access a device failed to handle. */
export interface DeviceFault {
  kind: 'pio' | 'mmio';
  addr: number;
  size: number;
  isWrite: boolean;
  error: Error;
}

/** How many registers byRegister names before it counts the rest as `other` (a guest picks the offsets). */
export const REGISTER_KEYS = 256;

/**
 * The share of the main thread's time one vCPU's forwarded accesses may take (measured: the
 * time main spends answering them), and how much of it may be used at once (ms). Past it, the
 * vCPU's next access waits — the vCPU stalls in its mailbox, as on a slow device — until its
 * share has refilled. A boot forwards a few hundred accesses in all (docs/benchmarks.md,
 * "Forwarded exits per boot"), far below; a guest looping on a register that is not served in
 * the vCPU thread (virtio-mmio's QueueSel, a device reset) would otherwise keep main busy at the
 * mailbox's round-trip rate with every vCPU it has.
 */
export const FORWARD_SHARE = 0.25;
export const FORWARD_BURST_MS = 50;

/**
 * Within a burst of forwarded accesses: how long main waits synchronously for the next one (ms),
 * and for how long in all before it returns to the event loop. The wait sleeps in the kernel (no
 * CPU spent); what it costs is the event loop's latency, at most BURST_SLICE_MS plus the
 * serving. POLL_MS covers an exit's round trip in the nested sandbox (~0.3 ms; natively ~20 µs).
 */
export const POLL_MS = 0.5;
export const BURST_SLICE_MS = 2;

/** Per vCPU: milliseconds of main-thread time its accesses may still take, refilled at FORWARD_SHARE. */
class TimeBudget {
  private ms: number;
  constructor(private readonly share: number, private readonly burst: number, private last: number) {
    this.ms = burst;
  }
  /** Whether the vCPU may be served now (some of its share is left). */
  ready(now: number): boolean {
    this.ms = Math.min(this.burst, this.ms + Math.max(0, now - this.last) * this.share);
    this.last = Math.max(this.last, now);
    return this.ms > 0;
  }
  spend(ms: number): void {
    this.ms -= ms;
  }
  /** Milliseconds until ready() is true again (at least 1). */
  msUntilReady(): number {
    return Math.max(1, Math.ceil(-this.ms / this.share));
  }
}

/** What the server keeps per vCPU. */
interface VcpuLine {
  readonly mailbox: Int32Array;
  readonly budget: TimeBudget;
  /** Accesses that waited for this vCPU's share (each counted once). */
  deferred: number;
  /** Its current access was counted in `deferred` already. */
  waiting: boolean;
}

export interface MailboxServerOptions {
  /** Main-thread share per vCPU (default FORWARD_SHARE) and its burst in ms (default FORWARD_BURST_MS). */
  readonly share?: number;
  readonly burstMs?: number;
  /** Milliseconds clock (default performance.now; tests inject one). */
  readonly now?: () => number;
}

export class MailboxServer {
  /** Index = vCPU: mailboxes are added in vCPU order. */
  private readonly vcpus: VcpuLine[] = [];
  private running = false;
  private readonly share: number;
  private readonly burstMs: number;
  private readonly now: () => number;
  /** Rings the doorbell once the first deferred vCPU's share is back. */
  private retry: NodeJS.Timeout | undefined;
  private retryAt = 0;
  /** Accesses whose device threw (answered as an unclaimed address would be). */
  faults = 0;
  /** Forwarded accesses by device (its bus range's name; `unclaimed` for none). */
  readonly byDevice: Record<string, number> = {};
  /**
   * Forwarded accesses by register, `name+0xOFFSET r|w` (what is left to serve in the vCPU
   * threads); at most REGISTER_KEYS keys, the rest counted under `other`.
   */
  readonly byRegister: Record<string, number> = {};
  private registerKeys = 0;

  constructor(
    private readonly doorbell: Int32Array,
    private readonly pio: Bus,
    private readonly mmio: Bus,
    private readonly onFault: (f: DeviceFault) => void,
    opts: MailboxServerOptions = {},
  ) {
    this.share = opts.share ?? FORWARD_SHARE;
    this.burstMs = opts.burstMs ?? FORWARD_BURST_MS;
    this.now = opts.now ?? (() => performance.now());
    if (!(this.share > 0 && this.share <= 1) || !(this.burstMs > 0)) throw new RangeError(`forwarded-access share ${this.share} must be in (0, 1] and its burst ${this.burstMs} ms positive`);
  }

  add(mailbox: Int32Array): void {
    this.vcpus.push({ mailbox, budget: new TimeBudget(this.share, this.burstMs, this.now()), deferred: 0, waiting: false });
  }

  /** Accesses left waiting because their vCPU had used its share, by vCPU (each counted once). */
  get deferred(): number[] {
    return this.vcpus.map((v) => v.deferred);
  }

  /**
   * Answers requests until stop(); resolves when it has stopped. Between bursts it waits for the
   * doorbell through the event loop (Atomics.waitAsync), which costs a trip through libuv per
   * wake-up. Within a burst — an access answered, the vCPU's next one a few microseconds of
   * guest code away (a console line, a queue's setup) — it waits for the next one synchronously
   * instead, blocked in the futex as a C device thread would be, for at most POLL_MS each time
   * and BURST_SLICE_MS in all before the event loop gets its turn.
   */
  async run(): Promise<void> {
    this.running = true;
    while (this.running) {
      let seen = Atomics.load(this.doorbell, DOORBELL.COUNT);
      const sliceEnd = this.now() + BURST_SLICE_MS;
      while (this.serveReady() && this.running && this.now() < sliceEnd) {
        if (futexWait(this.doorbell, DOORBELL.COUNT, seen, POLL_MS) === 'timed-out') break;
        seen = Atomics.load(this.doorbell, DOORBELL.COUNT);
      }
      Atomics.store(this.doorbell, DOORBELL.MAIN_ASYNC, 1);
      const w = Atomics.waitAsync(this.doorbell, DOORBELL.COUNT, seen);
      // Rung meanwhile: still one turn of the event loop first, so a guest that keeps its
      // vCPUs forwarding cannot keep the API and vsock waiting longer than a slice.
      await (w.async ? w.value : nextTurn());
      Atomics.store(this.doorbell, DOORBELL.MAIN_ASYNC, 0);
    }
  }

  /** Answers every vCPU whose request is waiting and whose share allows; whether any was answered. */
  private serveReady(): boolean {
    let served = false;
    this.vcpus.forEach((line, vcpu) => {
      if (Atomics.load(line.mailbox, MB.STATE) !== STATE_REQUEST) return;
      const t0 = this.now();
      if (!line.budget.ready(t0)) return this.later(line);
      line.waiting = false;
      this.serve(line.mailbox, vcpu);
      line.budget.spend(this.now() - t0);
      served = true;
    });
    return served;
  }

  /** The vCPU has used its share: its access waits, and the doorbell rings when the share is back. */
  private later(line: VcpuLine): void {
    if (!line.waiting) line.deferred++;
    line.waiting = true;
    // One timer, for the earliest vCPU whose share comes back: every waiting vCPU is looked at again then.
    const ms = line.budget.msUntilReady();
    const at = this.now() + ms;
    if (this.retry !== undefined && this.retryAt <= at) return;
    clearTimeout(this.retry);
    this.retryAt = at;
    this.retry = setTimeout(() => {
      this.retry = undefined;
      ringDoorbell(this.doorbell);
    }, ms);
  }

  stop(): void {
    this.running = false;
    clearTimeout(this.retry);
    ringDoorbell(this.doorbell);
  }

  private count(bus: Bus, addr: number, size: number, isWrite: boolean): void {
    const hit = bus.find(addr, size);
    const name = hit?.name ?? 'unclaimed';
    this.byDevice[name] = (this.byDevice[name] ?? 0) + 1;
    let key = `${name}+0x${(hit?.offset ?? addr).toString(16)} ${isWrite ? 'w' : 'r'}`;
    if (this.byRegister[key] === undefined) {
      if (this.registerKeys >= REGISTER_KEYS) key = 'other';
      else this.registerKeys++;
    }
    this.byRegister[key] = (this.byRegister[key] ?? 0) + 1;
  }

  private serve(mb: Int32Array, vcpu: number): void {
    const size = mb[MB.SIZE]!;
    const addr = (mb[MB.ADDR_LO]! >>> 0) + mb[MB.ADDR_HI]! * 0x1_0000_0000;
    const data = mailboxData(mb).subarray(0, Math.min(size, 8));
    const pio = mb[MB.KIND] === KIND_PIO;
    const isWrite = mb[MB.IS_WRITE] !== 0;
    this.count(pio ? this.pio : this.mmio, addr, data.length, isWrite);
    try {
      if (isWrite) (pio ? this.pio : this.mmio).write(addr, data, vcpu);
      else (pio ? this.pio : this.mmio).read(addr, data);
    } catch (e) {
      this.faults++;
      if (!isWrite) data.fill(0xff);
      const fault: DeviceFault = { kind: pio ? 'pio' : 'mmio', addr, size, isWrite, error: e instanceof Error ? e : new Error(String(e)) };
      try {
        this.onFault(fault);
      } catch {
        // Reporting is best effort; the answer below is not.
      }
    } finally {
      Atomics.store(mb, MB.STATE, STATE_RESPONSE);
      futexWake(mb, MB.STATE);
    }
  }
}
