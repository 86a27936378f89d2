// A byte ring in shared memory that vCPU threads fill and the device's thread drains: how a
// UART's transmitted bytes (THR writes) leave the guest without a hop to main per byte
// (SharedRegister kind 'push' in bus.ts). Owns the ring's layout, the producers' push (run
// by vCPU threads, never by main) and the consumer's drain (main only). Bytes come out in the
// order their pushes took the ring's lock; none is lost unless the ring stays full for
// FULL_WAIT_MS (then it is counted in DROPPED).

/** Int32 control cells (one SharedArrayBuffer). HEAD and TAIL count bytes and wrap at 2^32. */
export const RING = {
  HEAD: 0, // bytes pushed (producers, under LOCK)
  TAIL: 1, // bytes drained (the consumer)
  LOCK: 2, // 1 while a producer pushes: vCPUs may push at once
  GATE: 3, // non-zero: pushes are taken; 0: the access goes to the device (a UART in DLAB or loopback)
  CLOSED: 4, // non-zero: the consumer has stopped; a full ring drops at once
  FULL_WAITS: 5, // pushes that found the ring full and waited
  DROPPED: 6, // bytes dropped: the ring stayed full for FULL_WAIT_MS
} as const;
export const RING_CELLS = 8;
/** Bytes the ring holds (a power of two): a verbose boot's whole log fits. */
export const RING_SIZE = 64 * 1024;
/**
 * While bytes keep coming, main drains the ring at most this often: the ring is the UART's
 * FIFO, 64 KiB deep, so a few milliseconds of batching cost a console nothing, and they spare
 * main a wake-up, a drain and a write per byte (in the nested sandbox that was half a CPU at
 * ~1.3 KB/s, competing with the vCPU thread that pushes them).
 */
export const DRAIN_INTERVAL_MS = 4;
/** How long a push waits for room in a full ring before it drops its byte. */
export const FULL_WAIT_MS = 10_000;

/**
 * Pushes one byte (vCPU thread). False when the gate is shut: the caller forwards the access to
 * the device instead. Waits, in Atomics.wait, while the ring is full (main drains it), at most
 * `fullWaitMs`; a byte still without room then is dropped and counted. Cannot throw.
 */
export function ringPush(ctl: Int32Array, data: Uint8Array, byte: number, fullWaitMs = FULL_WAIT_MS): boolean {
  if (!Atomics.load(ctl, RING.GATE)) return false;
  while (Atomics.compareExchange(ctl, RING.LOCK, 0, 1) !== 0) Atomics.wait(ctl, RING.LOCK, 1, 50);
  const size = data.length;
  const head = Atomics.load(ctl, RING.HEAD);
  let tail = Atomics.load(ctl, RING.TAIL);
  if (((head - tail) | 0) >= size) {
    Atomics.add(ctl, RING.FULL_WAITS, 1);
    const until = Date.now() + fullWaitMs;
    while (((head - tail) | 0) >= size && !Atomics.load(ctl, RING.CLOSED)) {
      const left = until - Date.now();
      if (left <= 0) break;
      Atomics.notify(ctl, RING.HEAD); // the consumer may be asleep on HEAD
      Atomics.wait(ctl, RING.TAIL, tail, Math.min(left, 100));
      tail = Atomics.load(ctl, RING.TAIL);
    }
  }
  const room = ((head - tail) | 0) < size;
  if (room) {
    data[head & (size - 1)] = byte;
    Atomics.store(ctl, RING.HEAD, head + 1);
  } else {
    Atomics.add(ctl, RING.DROPPED, 1);
  }
  Atomics.store(ctl, RING.LOCK, 0);
  Atomics.notify(ctl, RING.LOCK, 1);
  if (room) Atomics.notify(ctl, RING.HEAD, 1);
  return true;
}

/** The consumer's end (the device's thread): drains in push order, wakes when bytes arrive. */
export class TxRing {
  readonly ctl = new Int32Array(new SharedArrayBuffer(RING_CELLS * 4));
  readonly data: Uint8Array;
  private running = false;

  constructor(size = RING_SIZE) {
    if (size <= 0 || (size & (size - 1)) !== 0) throw new RangeError(`ring size ${size} is not a power of two`);
    this.data = new Uint8Array(new SharedArrayBuffer(size));
  }

  /** Whether producers push (true) or forward to the device (false). */
  set gate(open: boolean) {
    Atomics.store(this.ctl, RING.GATE, open ? 1 : 0);
  }

  get pending(): number {
    return (Atomics.load(this.ctl, RING.HEAD) - Atomics.load(this.ctl, RING.TAIL)) | 0;
  }

  get fullWaits(): number {
    return Atomics.load(this.ctl, RING.FULL_WAITS);
  }

  get dropped(): number {
    return Atomics.load(this.ctl, RING.DROPPED);
  }

  /** Takes every byte pushed so far (a copy, in push order); undefined when there is none. */
  drain(): Uint8Array | undefined {
    const head = Atomics.load(this.ctl, RING.HEAD);
    const tail = Atomics.load(this.ctl, RING.TAIL);
    const n = (head - tail) | 0;
    if (n <= 0) return undefined;
    const mask = this.data.length - 1;
    const from = tail & mask;
    const out = new Uint8Array(n);
    const first = Math.min(n, this.data.length - from);
    out.set(this.data.subarray(from, from + first));
    if (first < n) out.set(this.data.subarray(0, n - first), first);
    Atomics.store(this.ctl, RING.TAIL, head);
    Atomics.notify(this.ctl, RING.TAIL);
    return out;
  }

  /**
   * Drains into `onBytes` until stop(): wakes when a producer pushes (the first byte after a
   * pause goes out at once), and while bytes keep coming drains at most every `intervalMs`
   * (DRAIN_INTERVAL_MS), yielding to the event loop in between: a vCPU that writes without
   * pause neither starves main nor makes it wake, drain and write once per byte.
   */
  async run(onBytes: (bytes: Uint8Array) => void, intervalMs = DRAIN_INTERVAL_MS): Promise<void> {
    this.running = true;
    while (this.running) {
      const head = Atomics.load(this.ctl, RING.HEAD);
      const bytes = this.drain();
      if (bytes) {
        onBytes(bytes);
        await new Promise((r) => (intervalMs > 0 ? setTimeout(r, intervalMs) : setImmediate(r)));
        continue;
      }
      const w = Atomics.waitAsync(this.ctl, RING.HEAD, head);
      if (w.async) await w.value;
    }
  }

  /** Ends run() and lets producers drop instead of wait (what is in the ring stays for drain()). */
  stop(): void {
    this.running = false;
    Atomics.store(this.ctl, RING.CLOSED, 1);
    Atomics.notify(this.ctl, RING.HEAD);
    Atomics.notify(this.ctl, RING.TAIL);
  }
}
