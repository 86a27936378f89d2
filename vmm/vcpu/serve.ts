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
import { close, epollAdd, epollCreate, epollWait, timerfdCreate, timerfdExpirations, timerfdPeriodic } from '../../kvm/libc';
import { DOORBELL, type Doorbell, KIND_PIO, MB, STATE_REQUEST, answer, mailboxData, ringDoorbell } from './mailbox';

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

/** One register's forwarded accesses (MailboxServer.count). */
interface Tally {
  device: string;
  register: string;
  n: number;
}

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
 * Within a burst of forwarded accesses main waits for the next one synchronously, blocked in the
 * kernel (no CPU spent), until a whole POLL_MS passes without one (so 1–2 POLL_MS after the last)
 * or BURST_SLICE_MS have passed in all; then the event loop gets its turn. What it costs is the
 * event loop's latency, at most BURST_SLICE_MS plus the serving. POLL_MS covers an exit's round
 * trip in the nested sandbox (~0.3 ms; natively ~20 µs).
 *
 * The POLL_MS clock is a periodic timerfd armed once per burst, watched by the same epoll_wait as
 * the doorbell's eventfd, not a timeout per wait: a timed wait arms a timer for each access, and
 * one sooner than the next scheduler tick is programmed into the timer hardware and back, a trap
 * to the hypervisor each when the host is itself a VM (on kvm_pvm the forwarding C twin given a
 * 0.5 ms futex timeout loses a third of its rate, docs/benchmarks.md "Exit rate").
 */
export const POLL_MS = 0.5;
export const BURST_SLICE_MS = 2;

/** What epollWait reports for the doorbell's eventfd and for the POLL_MS timer. */
const RUNG = 1;
const TICK = 2;

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
  /** Its data bytes (mailboxData), made once. */
  readonly data: Uint8Array;
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
  /**
   * Forwarded accesses by register: a tally per (port or address, direction), found once and
   * counted with no string built or range looked up again (natively that was a good part of
   * main's ~9 µs per access). At most REGISTER_KEYS of them (a guest picks the addresses); the
   * accesses beyond are counted by device only.
   */
  private readonly tallies = { pio: new Map<number, Tally>(), mmio: new Map<number, Tally>() };
  private tallied = 0;
  private readonly untallied: Record<string, number> = {};

  constructor(
    private readonly doorbell: Doorbell,
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
    this.vcpus.push({ mailbox, data: mailboxData(mailbox), budget: new TimeBudget(this.share, this.burstMs, this.now()), deferred: 0, waiting: false });
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
   * instead, blocked in epoll as a C device thread would be in its futex, for as long as accesses
   * keep coming within POLL_MS of each other and BURST_SLICE_MS in all.
   */
  async run(): Promise<void> {
    this.running = true;
    const word = this.doorbell.word;
    const ep = epollCreate();
    const timer = timerfdCreate();
    try {
      epollAdd(ep, this.doorbell.fd, RUNG);
      epollAdd(ep, timer, TICK);
      while (this.running) {
        let seen = Atomics.load(word, DOORBELL.COUNT);
        // One clock read per wake-up and one per answer (in serveReady): in the nested sandbox
        // each is a system call.
        let answered = this.serveReady(this.now());
        if (answered !== undefined) {
          const sliceEnd = answered + BURST_SLICE_MS;
          timerfdPeriodic(timer, POLL_MS);
          let seenAtTick = seen;
          while (this.running && answered < sliceEnd) {
            const events = epollWait(ep);
            const count = Atomics.load(word, DOORBELL.COUNT);
            if (events & TICK) {
              if (count === seenAtTick) break; // a whole POLL_MS without a ring: the burst is over
              seenAtTick = count;
              timerfdExpirations(timer); // re-arms it (one read per tick, not per access)
            }
            if (count === seen) continue; // a ring from before the burst, reported late
            seen = count;
            answered = this.serveReady(this.now()) ?? answered;
          }
          timerfdPeriodic(timer, 0);
        }
        Atomics.store(word, DOORBELL.MAIN_ASYNC, 1);
        const w = Atomics.waitAsync(word, DOORBELL.COUNT, seen);
        // Rung meanwhile: still one turn of the event loop first, so a guest that keeps its
        // vCPUs forwarding cannot keep the API and vsock waiting longer than a slice.
        await (w.async ? w.value : nextTurn());
        Atomics.store(word, DOORBELL.MAIN_ASYNC, 0);
      }
    } finally {
      close(timer);
      close(ep);
    }
  }

  /**
   * Answers every vCPU whose request is waiting and whose share allows, starting at clock time
   * `t` (just read); returns the clock after the last answer, undefined if none was answered.
   */
  private serveReady(t: number): number | undefined {
    let served = false;
    for (let vcpu = 0; vcpu < this.vcpus.length; vcpu++) {
      const line = this.vcpus[vcpu]!;
      if (Atomics.load(line.mailbox, MB.STATE) !== STATE_REQUEST) continue;
      if (!line.budget.ready(t)) {
        this.later(line, t);
        continue;
      }
      line.waiting = false;
      this.serve(line, vcpu);
      const done = this.now();
      line.budget.spend(done - t);
      t = done;
      served = true;
    }
    return served ? t : undefined;
  }

  /** The vCPU has used its share: its access waits, and the doorbell rings when the share is back. */
  private later(line: VcpuLine, now: number): void {
    if (!line.waiting) line.deferred++;
    line.waiting = true;
    // One timer, for the earliest vCPU whose share comes back: every waiting vCPU is looked at again then.
    const ms = line.budget.msUntilReady();
    const at = now + ms;
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

  private count(pio: boolean, addr: number, size: number, isWrite: boolean): void {
    const tallies = pio ? this.tallies.pio : this.tallies.mmio;
    const key = addr * 2 + (isWrite ? 1 : 0);
    let t = tallies.get(key);
    if (t === undefined) {
      const hit = (pio ? this.pio : this.mmio).find(addr, size);
      const device = hit?.name ?? 'unclaimed';
      if (this.tallied >= REGISTER_KEYS) {
        this.untallied[device] = (this.untallied[device] ?? 0) + 1;
        return;
      }
      t = { device, register: `${device}+0x${(hit?.offset ?? addr).toString(16)} ${isWrite ? 'w' : 'r'}`, n: 0 };
      tallies.set(key, t);
      this.tallied++;
    }
    t.n++;
  }

  private *allTallies(): Iterable<Tally> {
    yield* this.tallies.pio.values();
    yield* this.tallies.mmio.values();
  }

  /** Forwarded accesses by device (its bus range's name; `unclaimed` for none). */
  get byDevice(): Record<string, number> {
    const out: Record<string, number> = { ...this.untallied };
    for (const t of this.allTallies()) out[t.device] = (out[t.device] ?? 0) + t.n;
    return out;
  }

  /**
   * Forwarded accesses by register, `name+0xOFFSET r|w` (what is left to serve in the vCPU
   * threads); at most REGISTER_KEYS keys, the rest counted under `other`.
   */
  get byRegister(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const t of this.allTallies()) out[t.register] = (out[t.register] ?? 0) + t.n;
    const other = Object.values(this.untallied).reduce((a, b) => a + b, 0);
    if (other) out.other = other;
    return out;
  }

  private serve(line: VcpuLine, vcpu: number): void {
    const mb = line.mailbox;
    const size = mb[MB.SIZE]!;
    const addr = (mb[MB.ADDR_LO]! >>> 0) + mb[MB.ADDR_HI]! * 0x1_0000_0000;
    const data = line.data.subarray(0, Math.min(size, 8));
    const pio = mb[MB.KIND] === KIND_PIO;
    const isWrite = mb[MB.IS_WRITE] !== 0;
    this.count(pio, addr, data.length, isWrite);
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
      answer(mb);
    }
  }
}
