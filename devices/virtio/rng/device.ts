// The virtio entropy device (virtio 1.x §5.4, device id 4): one request queue whose buffers the
// device fills with random bytes from the host kernel's getrandom (crypto.randomFillSync writes
// straight into guest memory). It owns the queue and the rate limiter (Firecracker's
// `PUT /entropy` rate_limiter: bandwidth and ops buckets); it must not know the transport.
//
// A request the limiter refuses stays in the ring (undoPop) and a timer brings the device back
// when the buckets have refilled: the guest waits, the host spends nothing. A request is filled
// up to MAX_REQUEST bytes (and never more than the bandwidth bucket holds), so one chain costs
// a bounded amount of main-thread time.

import { randomFillSync } from 'node:crypto';
import { QueueError } from '../queue';
import type { VirtioDevice, VirtioDeviceContext } from '../device';
import { RateLimiter, type RateLimiterSpec } from '../../rate-limiter';

export const VIRTIO_ID_RNG = 4;
export const QUEUE_SIZE = 256;
/** Bytes given per request at most (Linux asks for 32-64 at a time). */
export const MAX_REQUEST = 64 * 1024;
/** Chains served per event-loop turn. */
export const BATCH = 64;
/**
 * Without a rate limiter from the user, 1 MiB/s with a 1 MiB start: far more than a guest's
 * entropy pool needs, and a cap on what a guest reading /dev/hwrng in a loop costs the host.
 */
export const DEFAULT_RNG_LIMIT: RateLimiterSpec = { bandwidth: { size: 1 << 20, refillTimeMs: 1000 } };

export interface RngCounters {
  requests: number;
  bytes: number;
  /** Times a request waited for the rate limiter. */
  throttled: number;
  queueErrors: number;
}

export class VirtioRng implements VirtioDevice {
  readonly deviceType = VIRTIO_ID_RNG;
  readonly queueMaxSizes: readonly number[] = [QUEUE_SIZE];
  readonly deviceFeatures = 0n;
  readonly counters: RngCounters = { requests: 0, bytes: 0, throttled: 0, queueErrors: 0 };
  readonly limiter: RateLimiter;
  private ctx: VirtioDeviceContext | undefined;
  private broken = false;
  private timer: NodeJS.Timeout | undefined;
  private scheduled = false;

  constructor(limit: RateLimiterSpec = DEFAULT_RNG_LIMIT, now?: () => number) {
    this.limiter = new RateLimiter(limit, now);
  }

  readConfig(_offset: number, data: Uint8Array): void {
    data.fill(0); // no config space
  }

  writeConfig(): void {}

  activate(ctx: VirtioDeviceContext): void {
    this.ctx = ctx;
    this.broken = false;
    this.process();
  }

  notify(queueIndex: number): void {
    if (queueIndex === 0 && this.timer === undefined) this.process();
  }

  reset(): void {
    this.ctx = undefined;
    this.broken = false;
    clearTimeout(this.timer);
    this.timer = undefined;
  }

  close(): void {
    this.reset();
  }

  private process(): void {
    const ctx = this.ctx;
    if (!ctx || this.broken) return;
    const q = ctx.queues[0]!;
    let n = 0;
    try {
      for (; n < BATCH; n++) {
        const chain = q.pop();
        if (!chain) break;
        const want = this.limiter.maxBytes(Math.min(chain.writable.length, MAX_REQUEST));
        if (want > 0 && !this.limiter.consume(want)) {
          q.undoPop();
          this.counters.throttled++;
          this.timer = setTimeout(() => {
            this.timer = undefined;
            this.process();
          }, Math.max(1, this.limiter.waitFor(want)));
          this.timer.unref();
          break;
        }
        for (const v of chain.writable.views(0, want)) randomFillSync(v);
        q.addUsed(chain.head, want);
        this.counters.requests++;
        this.counters.bytes += want;
      }
    } catch (e) {
      if (!(e instanceof QueueError)) throw e;
      this.broken = true;
      this.counters.queueErrors++;
      ctx.needsReset(`virtio-rng: ${e.message}`);
      return;
    }
    if (n > 0) ctx.signalUsed(0);
    if (n === BATCH && !this.scheduled) {
      this.scheduled = true;
      setImmediate(() => {
        this.scheduled = false;
        this.process();
      });
    }
  }
}
