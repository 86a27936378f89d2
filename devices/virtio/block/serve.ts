// The virtio-blk data path: taking requests off the queue, running them against the image and
// answering them, on whichever thread owns the queue — the drive's I/O thread (worker.ts), or a
// test. It owns what a request does, the order rules between requests and the counters that say
// so; it must not parse requests (request.ts), know files or system calls (backend.ts) or know
// threads and registers.
//
// Several requests in flight: each pass takes every request the ring holds (up to the backend's
// capacity), answers at once what needs no host I/O (GET_ID, refusals), starts the reads and
// writes (preadv/pwritev-like transfers straight between the image and the guest's buffers,
// finishing in any order: virtio's used ring carries each request's id), and answers whatever
// finished. A FLUSH is a barrier: it starts only once every request taken before it finished,
// and nothing after it is taken until it started — so it covers every write the driver saw
// complete and the writes still in flight when it came (later requests may overlap it: virtio
// orders nothing else; a driver waits for what it needs ordered). The interrupt goes out when a pass ends (and
// after every BATCH answers while the driver keeps the ring full), so a driver with one request
// in flight gets its answer the moment it is ready, and one with many shares interrupts. A pass
// returns with requests still in flight; their completions wake the thread for the next one.

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
  /** The most requests answered in one pass. */
  'maxBatch',
  /** The most requests started and not yet answered at once (their host I/O overlaps only with io_uring; 1: the guest never had more than one out). */
  'maxInFlight',
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

/** A request whose host I/O is running: where its answer goes. */
interface InFlight {
  head: number;
  status: Uint8Array;
  /** used.len when it succeeds (the bytes written into the driver's buffers, plus the status byte). */
  len: number;
  kind: 'in' | 'out' | 'flush';
  bytes: number;
}

export class BlockRequestServer {
  /** By backend tag (0 .. capacity-1); undefined: the tag is free. */
  private readonly slots: (InFlight | undefined)[];
  private readonly free: number[];
  /** A FLUSH taken off the ring, waiting for the requests before it to finish. */
  private barrier: { chain: DescriptorChain; status: Uint8Array } | undefined;
  private inFlight = 0;
  /** Answers ready for the used ring: [head, used.len]. */
  private readonly answers: [head: number, len: number][] = [];

  constructor(
    private readonly q: Queue,
    private readonly o: ServerOptions,
  ) {
    const n = Math.max(1, Math.min(o.io.capacity, q.size || q.maxSize));
    this.slots = new Array<InFlight | undefined>(n).fill(undefined);
    this.free = Array.from({ length: n }, (_, i) => n - 1 - i);
  }

  /** Requests whose host I/O has not finished (a stop waits for them: drain()). */
  get pending(): number {
    return this.inFlight + (this.barrier ? 1 : 0);
  }

  /**
   * One pass: takes requests until the ring is empty, the backend is full, a FLUSH waits or
   * `stop()` says so (checked before each request), starts their I/O and answers what finished.
   * Returns with requests possibly still in flight. Throws QueueError when the driver broke the
   * ring (requests in flight stay in flight: drain(false) them before dropping the server).
   */
  serve(stop: () => boolean): void {
    const q = this.q;
    let n = 0;
    let unsignalled = 0;
    try {
      for (;;) {
        let took = 0;
        while (!this.barrier && this.free.length > 0 && !stop()) {
          const chain = q.pop();
          if (!chain) break;
          this.begin(chain);
          took++;
        }
        this.o.io.submit();
        this.collect();
        const answered = this.answers.length;
        for (const [head, len] of this.answers.splice(0)) {
          q.addUsed(head, len);
          n++;
          if (++unsignalled === BATCH) {
            unsignalled = 0;
            this.signal();
          }
        }
        // Nothing new taken and nothing left to answer: the ring is empty (or the backend full,
        // or a stop asked); what is in flight comes back through the next wake-up.
        if (took === 0 && answered === 0) break;
      }
    } finally {
      // Counted before the interrupt: whoever it wakes reads counters that include this pass.
      const c = this.o.counters;
      if (n > c[AT.maxBatch]!) c[AT.maxBatch] = n;
      if (unsignalled) this.signal();
    }
  }

  /**
   * Waits until no request is in flight (a waiting FLUSH included), then answers them into the
   * ring (`answer`) or drops the answers (the driver broke the ring): after it, the backend
   * touches no guest buffer. For a stop or a reset.
   */
  drain(answer: boolean): void {
    // A QueueError may have cut a pass between start() and submit().
    this.o.io.submit();
    for (;;) {
      this.collect();
      if (this.pending === 0) break;
      this.o.io.wait();
    }
    const answers = this.answers.splice(0);
    if (!answer || answers.length === 0) return;
    for (const [head, len] of answers) this.q.addUsed(head, len);
    this.signal();
  }

  /** Reaps finished I/O into answers; starts a waiting FLUSH once nothing is in flight before it. */
  private collect(): void {
    for (;;) {
      this.o.io.reap((tag, error) => this.finish(tag, error));
      if (!this.barrier || this.inFlight > 0) return;
      const { chain, status } = this.barrier;
      this.barrier = undefined;
      this.startIo(chain.head, status, 'flush', [], 0, 1, 0);
      this.o.io.submit();
    }
  }

  private signal(): void {
    if (this.q.needsNotification()) this.o.interrupt();
  }

  /** Parses one request: answers it at once, starts its I/O, or holds it (a FLUSH behind I/O). */
  private begin(chain: DescriptorChain): void {
    const c = this.o.counters;
    const r = parseBlkRequest(chain, this.o.geometry);
    switch (r.kind) {
      case 'no-status':
        c[AT['rejected:no-status']]!++;
        this.answers.push([chain.head, 0]);
        return;
      case 'reject':
        c[AT[`rejected:${r.reason}`]]!++;
        r.status[0] = r.code;
        this.answers.push([chain.head, 1]);
        return;
      case 'get-id': {
        c[AT.getIds]!++;
        let at = 0;
        for (const d of r.data) {
          d.set(this.o.idBytes.subarray(at, at + d.length));
          at += d.length;
        }
        r.status[0] = VIRTIO_BLK_S_OK;
        this.answers.push([chain.head, r.len + 1]);
        return;
      }
      case 'in':
        c[AT.reads]!++;
        this.startIo(chain.head, r.status, 'in', r.data, r.offset, r.len + 1, r.len);
        return;
      case 'out':
        c[AT.writes]!++;
        this.startIo(chain.head, r.status, 'out', r.data, r.offset, 1, r.len);
        return;
      case 'flush':
        c[AT.flushes]!++;
        // A barrier (module comment): alone, it starts now; behind I/O, it waits for it.
        if (this.inFlight > 0) this.barrier = { chain, status: r.status };
        else this.startIo(chain.head, r.status, 'flush', [], 0, 1, 0);
        return;
    }
  }

  private startIo(head: number, status: Uint8Array, kind: InFlight['kind'], data: Uint8Array[], offset: number, len: number, bytes: number): void {
    // A zero-length read or write has nothing to move: OK at once.
    if (kind !== 'flush' && bytes === 0) {
      status[0] = VIRTIO_BLK_S_OK;
      this.answers.push([head, len]);
      return;
    }
    const tag = this.free.pop()!;
    this.slots[tag] = { head, status, len, kind, bytes };
    this.inFlight++;
    const c = this.o.counters;
    if (this.inFlight > c[AT.maxInFlight]!) c[AT.maxInFlight] = this.inFlight;
    this.o.io.start(tag, kind === 'in' ? 'read' : kind === 'out' ? 'write' : 'flush', data, offset);
  }

  /** A transfer finished: its status byte, its answer. */
  private finish(tag: number, error: string | undefined): void {
    const f = this.slots[tag];
    if (!f) throw new Error(`virtio-blk: the backend finished tag ${tag}, which is not in flight`);
    this.slots[tag] = undefined;
    this.free.push(tag);
    this.inFlight--;
    const c = this.o.counters;
    if (error === undefined) {
      f.status[0] = VIRTIO_BLK_S_OK;
      if (f.kind === 'in') c[AT.bytesRead]! += f.bytes;
      else if (f.kind === 'out') c[AT.bytesWritten]! += f.bytes;
      this.answers.push([f.head, f.len]);
    } else {
      c[AT.ioErrors]!++;
      this.o.log(`host I/O failed: ${error}`);
      f.status[0] = VIRTIO_BLK_S_IOERR;
      this.answers.push([f.head, 1]);
    }
  }
}
