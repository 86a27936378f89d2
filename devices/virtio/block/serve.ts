// The virtio-blk data path: taking requests off the queue, running them against the image and
// answering them, synchronously, on whichever thread owns the queue — the drive's I/O thread
// (worker.ts), or a test. It owns what a request does and the counters that say so; it must
// not parse requests (request.ts), know files (backend.ts) or know threads and registers.
//
// One request at a time, in ring order: pop, parse into a verdict, preadv/pwritev/fdatasync
// straight between the image and the guest's buffers, status byte, used ring. The interrupt
// goes out when the ring is empty (and after every BATCH answers while the driver keeps it
// full), so a driver with one request in flight gets its answer the moment it is ready, and
// one with many shares interrupts.

import type { DescriptorChain, Queue } from '../queue';
import type { BlockIo } from './backend';
import { parseBlkRequest, REJECT_REASONS, type DriveGeometry, type RejectReason } from './request';
import { VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK } from './spec';

/** Answers between two interrupts while the ring stays non-empty. */
export const BATCH = 64;

const SCALARS = [
  'reads', 'writes', 'flushes', 'getIds', 'bytesRead', 'bytesWritten',
  /** Host I/O that failed (answered IOERR). */
  'ioErrors',
  /** Driver bugs that put the device into NEEDS_RESET. */
  'queueErrors',
  /** Times the I/O thread woke on its eventfd (the guest's kicks, coalesced, and the VMM's control messages). */
  'wakeups',
  /** Used-buffer interrupts the I/O thread raised, and those it skipped because InterruptStatus still had the bit. */
  'interrupts', 'interruptsCoalesced',
  /** The most requests answered in one wake-up. */
  'maxBatch',
] as const;
type Scalar = (typeof SCALARS)[number];
const REJECTED = [...REJECT_REASONS, 'no-status'] as const;

export type BlockCounters = Record<Scalar, number> & {
  /** Requests answered IOERR/UNSUPP by the parser (or returned with no status byte), by reason. */
  rejected: Record<RejectReason | 'no-status', number>;
};

/** Where each counter lives in the shared cells the I/O thread writes and the main thread reads. */
const AT = Object.fromEntries([...SCALARS, ...REJECTED.map((r) => `rejected:${r}`)].map((k, i) => [k, i])) as Record<Scalar | `rejected:${RejectReason | 'no-status'}`, number>;
const CELLS = Object.keys(AT).length;

/**
 * The counters as shared memory: one writer thread (the I/O thread), readers anywhere. Float64
 * cells, 8-byte aligned, so a reader never sees a torn value on x86-64.
 */
export function newCounterCells(): Float64Array {
  return new Float64Array(new SharedArrayBuffer(CELLS * 8));
}

/** A snapshot of the counters in `cells`. */
export function readCounters(cells: Float64Array): BlockCounters {
  const out = Object.fromEntries(SCALARS.map((k) => [k, cells[AT[k]]!])) as Record<Scalar, number>;
  const rejected = Object.fromEntries(REJECTED.map((r) => [r, cells[AT[`rejected:${r}`]]!])) as BlockCounters['rejected'];
  return { ...out, rejected };
}

/** Adds `n` to a counter. */
export function count(cells: Float64Array, k: Scalar, n = 1): void {
  cells[AT[k]]! += n;
}

export interface ServerOptions {
  readonly geometry: DriveGeometry;
  /** GET_ID's answer (20 bytes, NUL padded). */
  readonly idBytes: Uint8Array;
  readonly io: BlockIo;
  readonly counters: Float64Array;
  /** Raises the used-buffer interrupt (called only when the driver asked for one). */
  interrupt(): void;
  /** Host I/O errors, one line each (the receiver rate-limits them). */
  log(m: string): void;
}

export class BlockRequestServer {
  constructor(
    private readonly q: Queue,
    private readonly o: ServerOptions,
  ) {}

  /**
   * Answers every request in the ring, or stops early (the ring's rest stays there) once
   * `stop()` says so — checked before each request, so a stop waits for one request at most.
   * Throws QueueError when the driver broke the ring.
   */
  serve(stop: () => boolean): void {
    const q = this.q;
    let n = 0;
    let unsignalled = 0;
    try {
      while (!stop()) {
        const chain = q.pop();
        if (!chain) break;
        q.addUsed(chain.head, this.answer(chain));
        n++;
        if (++unsignalled === BATCH) {
          unsignalled = 0;
          this.signal();
        }
      }
    } finally {
      // Counted before the interrupt: whoever it wakes reads counters that include this batch.
      const c = this.o.counters;
      if (n > c[AT.maxBatch]!) c[AT.maxBatch] = n;
      if (unsignalled) this.signal();
    }
  }

  private signal(): void {
    if (this.q.needsNotification()) this.o.interrupt();
  }

  /** Runs one request; returns the bytes written into its writable buffers (used.len). */
  private answer(chain: DescriptorChain): number {
    const c = this.o.counters;
    const r = parseBlkRequest(chain, this.o.geometry);
    switch (r.kind) {
      case 'no-status':
        c[AT['rejected:no-status']]!++;
        return 0;
      case 'reject':
        c[AT[`rejected:${r.reason}`]]!++;
        r.status[0] = r.code;
        return 1;
      case 'get-id': {
        c[AT.getIds]!++;
        let at = 0;
        for (const d of r.data) {
          d.set(this.o.idBytes.subarray(at, at + d.length));
          at += d.length;
        }
        r.status[0] = VIRTIO_BLK_S_OK;
        return r.len + 1;
      }
      case 'in':
        c[AT.reads]!++;
        if (!this.io(r.status, () => r.len && this.o.io.readv(r.data, r.offset))) return 1;
        c[AT.bytesRead]! += r.len;
        return r.len + 1;
      case 'out':
        c[AT.writes]!++;
        if (!this.io(r.status, () => r.len && this.o.io.writev(r.data, r.offset))) return 1;
        c[AT.bytesWritten]! += r.len;
        return 1;
      case 'flush':
        c[AT.flushes]!++;
        // Writes the driver saw complete are in the file: fdatasync makes them durable.
        this.io(r.status, () => this.o.io.flush());
        return 1;
    }
  }

  /** Runs host I/O and writes the status byte: OK, or IOERR when it failed (false). */
  private io(status: Uint8Array, run: () => unknown): boolean {
    try {
      run();
      status[0] = VIRTIO_BLK_S_OK;
      return true;
    } catch (e) {
      this.o.counters[AT.ioErrors]!++;
      this.o.log(`host I/O failed: ${e instanceof Error ? e.message : String(e)}`);
      status[0] = VIRTIO_BLK_S_IOERR;
      return false;
    }
  }
}
