// The channel between a vCPU worker and the main thread for port/MMIO accesses that a
// main-thread device must answer: one SharedArrayBuffer per vCPU plus one shared doorbell.
// The worker fills a request and Atomics.waits; main handles it and flips the state back.
// It also defines what a worker gets at start (WorkerInit) and its exit counters. The mailbox
// layout, in one place (Int32 slots):

import type { BusClaim } from '../../devices/bus';

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
  SLOTS: 11,
} as const;

export const STATE_IDLE = 0;
export const STATE_REQUEST = 1;
export const STATE_RESPONSE = 2;
export const KIND_PIO = 0;
export const KIND_MMIO = 1;

/**
 * Per-vCPU exit counters, written only by that vCPU's worker (no atomics needed) and read by
 * main for metrics: slot r counts KVM exit reason r (reasons beyond STAT_LAST_REASON share
 * it); the last slot counts forwarded accesses, the one before accesses served from a
 * device's shared register (SharedRegister in devices/bus.ts).
 */
export const EXIT_STATS_SLOTS = 64;
export const STAT_FORWARDED = EXIT_STATS_SLOTS - 1;
export const STAT_SHARED = EXIT_STATS_SLOTS - 2;
export const STAT_LAST_REASON = EXIT_STATS_SLOTS - 3;

export function newExitStats(): Float64Array {
  return new Float64Array(new SharedArrayBuffer(EXIT_STATS_SLOTS * 8));
}

export function newMailbox(): Int32Array {
  return new Int32Array(new SharedArrayBuffer(MB.SLOTS * 4));
}

export function newDoorbell(): Int32Array {
  return new Int32Array(new SharedArrayBuffer(4));
}

/** The 8 data bytes of a mailbox as bytes (a view, not a copy). */
export function mailboxData(mb: Int32Array): Uint8Array {
  return new Uint8Array(mb.buffer, MB.DATA * 4, 8);
}

/** What a worker tells main. */
export type WorkerMessage =
  | { type: 'started'; tid: number }
  | { type: 'exit'; reason: VcpuExitReason; detail: string }
  | { type: 'stopped' };

export type VcpuExitReason = 'triple-fault' | 'system-poweroff' | 'system-reset' | 'system-crash' | 'internal-error' | 'fail-entry' | 'unhandled' | 'hlt';

export interface WorkerInit {
  fd: number;
  id: number;
  mmapSize: number;
  mailbox: Int32Array;
  doorbell: Int32Array;
  /** What main-thread devices claim: forwarded, except their shared registers; the rest is answered here. */
  pio: readonly BusClaim[];
  mmio: readonly BusClaim[];
  stats: Float64Array;
}
