// When connections time out (the role of Firecracker's unix/muxer_killq.rs): each connection
// with a deadline (a REQUEST the guest has not answered, a SHUTDOWN the peer has not finished,
// a CREDIT_REQUEST that becomes due) is here once, and one timer, armed for the earliest deadline, hands the expired ones back.
// It owns the timer; what expiring means is the connection's business (csm.ts checkExpiry).

export class MuxerKillQueue<C> {
  private readonly deadlines = new Map<C, number>();
  private timer: NodeJS.Timeout | undefined;
  private timerAt = Infinity;

  /** `clock` is performance.now's scale; `expire` runs for each connection whose deadline passed. */
  constructor(private readonly expire: (c: C) => void, private readonly clock: () => number = () => performance.now()) {}

  /** Sets (or with undefined, clears) `c`'s deadline. */
  schedule(c: C, at: number | undefined): void {
    if (at === undefined) this.deadlines.delete(c);
    else this.deadlines.set(c, at);
    this.arm();
  }

  get size(): number {
    return this.deadlines.size;
  }

  clear(): void {
    this.deadlines.clear();
    this.arm();
  }

  private arm(): void {
    let next = Infinity;
    for (const at of this.deadlines.values()) next = Math.min(next, at);
    // A timer armed for an earlier time stays while anything is due at all: it fires, finds
    // nothing due and re-arms. Deadlines that move later (a connection's credit request cancelled
    // by the guest's update while another's runs) then cost no timer churn. With no deadline left
    // the timer goes: a closed connection or a reset device leaves none behind.
    if (next !== Infinity && next >= this.timerAt && this.timer !== undefined) return;
    if (next === this.timerAt) return;
    clearTimeout(this.timer);
    this.timer = undefined;
    this.timerAt = next;
    if (next === Infinity) return;
    // Timers may fire a hair early: one millisecond late is never early.
    this.timer = setTimeout(() => this.fire(), Math.max(0, next - this.clock()) + 1);
    this.timer.unref();
  }

  private fire(): void {
    this.timer = undefined;
    this.timerAt = Infinity;
    const now = this.clock();
    const due = [...this.deadlines].filter(([, at]) => at <= now).map(([c]) => c);
    for (const c of due) this.deadlines.delete(c);
    for (const c of due) this.expire(c);
    this.arm();
  }
}
