// The channel between a vCPU worker and the main thread for port/MMIO accesses that a
// main-thread device must answer: one SharedArrayBuffer per vCPU plus one shared doorbell.
// The worker fills a request, rings the doorbell (a counter word and an eventfd) and sleeps on
// its STATE word (a raw futex); main handles it, flips the state and wakes it.
// It also defines what a worker gets when spawned (WorkerInit) and with its vCPU (WorkerRun),
// and its exit counters. The mailbox layout, in one place (Int32 slots):

import type { BusClaim } from '../../devices/bus';
import { close, eventfd, eventfdSignal, futexWait, futexWake } from '../../kvm/libc';

export const MB = {
  STATE: 0, // IDLE | REQUEST | RESPONSE
  KIND: 1, // PIO | MMIO
  IS_WRITE: 2,
  SIZE: 3,
  ADDR_LO: 4,
  ADDR_HI: 5,
  DATA: 6, // 8 bytes: slots 6 and 7
  STOP: 8, // main → worker: leave the run loop
  PAUSE: 9, // main → worker: 1 = park before the next KVM_RUN (until it is 0 again)
  PAUSED: 10, // worker → main: 1 while parked
  ASLEEP: 11, // worker → main: 1 while it may sleep in the futex for its answer (waitForAnswer)
  SLOTS: 12,
} as const;

export const STATE_IDLE = 0;
export const STATE_REQUEST = 1;
export const STATE_RESPONSE = 2;
export const KIND_PIO = 0;
export const KIND_MMIO = 1;

/**
 * Per-vCPU exit counters, written only by that vCPU's worker (no atomics needed) and read by
 * main for metrics and diagnoses: slot r counts KVM exit reason r (reasons beyond
 * STAT_LAST_REASON share it); the last slot counts forwarded accesses, the one before accesses
 * served from a device's shared register (SharedRegister in devices/bus.ts). Two more slots
 * say what the worker is doing (STAT_STATE, a VCPU_STATE) and the reason of its last exit
 * (STAT_LAST_EXIT, -1 before the first): when a guest hangs, whether a vCPU sits in KVM_RUN,
 * waits for main to answer an access, or is parked.
 */
export const EXIT_STATS_SLOTS = 64;
export const STAT_FORWARDED = EXIT_STATS_SLOTS - 1;
export const STAT_SHARED = EXIT_STATS_SLOTS - 2;
export const STAT_LAST_EXIT = EXIT_STATS_SLOTS - 3;
export const STAT_STATE = EXIT_STATS_SLOTS - 4;
export const STAT_LAST_REASON = EXIT_STATS_SLOTS - 5;

/** What a vCPU worker is doing (its STAT_STATE slot). */
export const VCPU_STATE = { STARTING: 0, IN_KVM_RUN: 1, HANDLING_EXIT: 2, WAITING_FOR_MAIN: 3, PARKED: 4, ENDED: 5 } as const;
export const VCPU_STATE_NAMES = ['starting', 'in KVM_RUN', 'handling an exit', 'waiting for main to answer an access', 'parked', 'ended'] as const;

export function newExitStats(): Float64Array {
  const stats = new Float64Array(new SharedArrayBuffer(EXIT_STATS_SLOTS * 8));
  stats[STAT_LAST_EXIT] = -1;
  return stats;
}

export function newMailbox(): Int32Array {
  return new Int32Array(new SharedArrayBuffer(MB.SLOTS * 4));
}

/**
 * The doorbell every worker rings after posting a request. `word`: COUNT goes up by one per ring
 * (what main compares to see whether anything was rung); MAIN_ASYNC is 1 while main waits for it
 * through the event loop (Atomics.waitAsync on COUNT) rather than within a burst (vmm/vcpu/serve.ts),
 * where it sleeps in epoll on `fd`, an eventfd, beside a timer that ends the burst: a futex wait
 * with a timeout would program the timer hardware for every access (docs/benchmarks.md,
 * "Exit rate"). The eventfd lives as long as the workers that may ring it (closeDoorbell).
 */
export const DOORBELL = { COUNT: 0, MAIN_ASYNC: 1 } as const;

export interface Doorbell {
  readonly word: Int32Array;
  readonly fd: number;
}

export function newDoorbell(): Doorbell {
  return { word: new Int32Array(new SharedArrayBuffer(8)), fd: eventfd() };
}

/** Closes the doorbell's eventfd: only once no thread can ring it any more (the fd number would be reused). */
export function closeDoorbell(d: Doorbell): void {
  close(d.fd);
}

/**
 * Rings the doorbell: wakes main whichever way it waits. Main within a burst sleeps in epoll on
 * the eventfd; an Atomics.waitAsync waiter needs Atomics.notify (V8 keeps its own waiter list),
 * and each call costs microseconds on the vCPU's path, so the second is made only while main
 * waits that way. No ring is lost: main sets MAIN_ASYNC before waitAsync compares COUNT, and a
 * ring adds to COUNT before it reads MAIN_ASYNC (all sequentially consistent); an eventfd write
 * while main is not in epoll_wait is reported by its next one.
 */
export function ringDoorbell(d: Doorbell): void {
  Atomics.add(d.word, DOORBELL.COUNT, 1);
  eventfdSignal(d.fd);
  if (Atomics.load(d.word, DOORBELL.MAIN_ASYNC)) Atomics.notify(d.word, DOORBELL.COUNT);
}

/**
 * Posts one access to main: fills the request (a write's bytes from `data`), marks it
 * REQUEST and rings the doorbell. The caller then waits for STATE to become RESPONSE, in
 * waitForAnswer (a worker) or by polling (a test on main), reads a read's bytes, and sets IDLE.
 */
export function postRequest(mb: Int32Array, doorbell: Doorbell, kind: number, addr: number, data: Uint8Array, isWrite: boolean): void {
  mb[MB.KIND] = kind;
  mb[MB.IS_WRITE] = isWrite ? 1 : 0;
  mb[MB.SIZE] = data.length;
  mb[MB.ADDR_LO] = addr | 0;
  mb[MB.ADDR_HI] = Math.floor(addr / 0x1_0000_0000);
  if (isWrite) mailboxData(mb).set(data);
  Atomics.store(mb, MB.STATE, STATE_REQUEST);
  ringDoorbell(doorbell);
}

/**
 * The poster's wait for main's answer (a vCPU worker's, blocked in the futex on STATE) until it
 * comes or STOP is set; whether it was answered. ASLEEP says when it may sleep, so that main
 * (answer) makes the wake-up call only then: most answers come before the worker got to its
 * wait, main having taken the CPU the moment the doorbell rang. No wake-up is lost: ASLEEP is
 * set before STATE is looked at, and main sets STATE before it looks at ASLEEP (sequentially
 * consistent); one that lands before the futex call finds STATE changed there.
 */
export function waitForAnswer(mb: Int32Array): boolean {
  while (Atomics.load(mb, MB.STATE) === STATE_REQUEST && !Atomics.load(mb, MB.STOP)) {
    Atomics.store(mb, MB.ASLEEP, 1);
    if (Atomics.load(mb, MB.STATE) === STATE_REQUEST) futexWait(mb, MB.STATE, STATE_REQUEST, 100);
    Atomics.store(mb, MB.ASLEEP, 0);
  }
  return Atomics.load(mb, MB.STATE) === STATE_RESPONSE;
}

/** Main's side: the request is answered (a read's bytes already in the mailbox); wakes the poster if it sleeps. */
export function answer(mb: Int32Array): void {
  Atomics.store(mb, MB.STATE, STATE_RESPONSE);
  if (Atomics.load(mb, MB.ASLEEP)) futexWake(mb, MB.STATE);
}

/** The 8 data bytes of a mailbox as bytes (a view, not a copy). */
export function mailboxData(mb: Int32Array): Uint8Array {
  return new Uint8Array(mb.buffer, MB.DATA * 4, 8);
}

/** What a worker tells main: `ready` once its code is loaded (it then waits for a WorkerRun). */
export type WorkerMessage =
  | { type: 'ready'; tid: number }
  | { type: 'exit'; reason: VcpuExitReason; detail: string }
  | { type: 'stopped' };

export type VcpuExitReason = 'triple-fault' | 'system-poweroff' | 'system-reset' | 'system-crash' | 'internal-error' | 'fail-entry' | 'unhandled' | 'hlt';

/**
 * What a worker gets when it is spawned (workerData): nothing that needs the VM, so its Node
 * start can overlap the VMM's setup (vmm/vcpu/threads.ts).
 */
export interface WorkerInit {
  id: number;
  mailbox: Int32Array;
  doorbell: Doorbell;
  stats: Float64Array;
  /** Its last exits (vmm/vcpu/recent.ts). */
  recent: Float64Array;
}

/** What main sends a ready worker once its vCPU exists; the worker then runs it until stopped. */
export interface WorkerRun {
  type: 'run';
  fd: number;
  mmapSize: number;
  /** What main-thread devices claim: forwarded, except their shared registers; the rest is answered here. */
  pio: readonly BusClaim[];
  mmio: readonly BusClaim[];
}
