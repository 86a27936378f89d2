// Token buckets as Firecracker's rate limiter defines them (the API's `rate_limiter` object):
// a bucket holds at most `size` tokens, refills `size` tokens per `refillTimeMs` continuously,
// and may start with a `oneTimeBurst` of extra tokens that are never refilled. A RateLimiter
// pairs a bandwidth bucket (bytes) with an ops bucket (requests); either may be absent
// (unlimited). This module owns the arithmetic; it must not know devices or timers' owners.

export interface TokenBucketSpec {
  /** Tokens the bucket holds when full. */
  size: number;
  /** Extra tokens available once, before the bucket's own. */
  oneTimeBurst?: number;
  /** Milliseconds to refill from empty to full. */
  refillTimeMs: number;
}

export interface RateLimiterSpec {
  bandwidth?: TokenBucketSpec;
  ops?: TokenBucketSpec;
}

export class TokenBucket {
  private tokens: number;
  private burst: number;
  private last: number;

  constructor(
    readonly spec: TokenBucketSpec,
    private readonly now: () => number = () => performance.now(),
  ) {
    if (!(spec.size > 0) || !(spec.refillTimeMs > 0)) throw new RangeError(`token bucket: size ${spec.size} and refill time ${spec.refillTimeMs} must be positive`);
    this.tokens = spec.size;
    this.burst = spec.oneTimeBurst ?? 0;
    this.last = this.now();
  }

  private refill(): void {
    const t = this.now();
    const elapsed = t - this.last;
    this.last = t;
    if (elapsed > 0) this.tokens = Math.min(this.spec.size, this.tokens + (elapsed * this.spec.size) / this.spec.refillTimeMs);
  }

  /** Tokens that could be taken now (burst included). */
  available(): number {
    this.refill();
    return Math.floor(this.tokens) + this.burst;
  }

  /** Takes `n` tokens if there are that many; false (and nothing taken) otherwise. */
  consume(n: number): boolean {
    this.refill();
    if (n > this.burst + this.tokens) return false;
    const fromBurst = Math.min(this.burst, n);
    this.burst -= fromBurst;
    this.tokens -= n - fromBurst;
    return true;
  }

  /** Milliseconds until `n` tokens (at most `size`) are there; 0 when they are. */
  waitFor(n: number): number {
    this.refill();
    const missing = Math.min(n, this.spec.size) - this.burst - this.tokens;
    return missing <= 0 ? 0 : Math.ceil((missing * this.spec.refillTimeMs) / this.spec.size);
  }
}

export class RateLimiter {
  readonly bandwidth: TokenBucket | undefined;
  readonly ops: TokenBucket | undefined;

  constructor(readonly spec: RateLimiterSpec = {}, now?: () => number) {
    this.bandwidth = spec.bandwidth ? new TokenBucket(spec.bandwidth, now) : undefined;
    this.ops = spec.ops ? new TokenBucket(spec.ops, now) : undefined;
  }

  /** The most bytes one request may ask for: a request larger than the bucket could never pass. */
  maxBytes(want: number): number {
    return this.bandwidth ? Math.min(want, this.bandwidth.spec.size) : want;
  }

  /** One request of `bytes`: both buckets must allow it; nothing is taken otherwise. */
  consume(bytes: number): boolean {
    if (this.ops && this.ops.available() < 1) return false;
    if (this.bandwidth && !this.bandwidth.consume(bytes)) return false;
    this.ops?.consume(1);
    return true;
  }

  /** Milliseconds until a request of `bytes` would pass. */
  waitFor(bytes: number): number {
    return Math.max(this.ops?.waitFor(1) ?? 0, this.bandwidth?.waitFor(bytes) ?? 0);
  }
}
