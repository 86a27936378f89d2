// Who speaks to the guest next (the role of Firecracker's unix/muxer_rxq.rs): RSTs for packets
// nobody owns, then the connections that have a packet to send, round robin. It owns the order
// and the bound on queued RSTs; it holds no packets (a connection builds its packet when its
// turn comes) and does not know what makes a connection ready (the muxer tells it).

/** Where an RST goes: host port `localPort` -> guest port `peerPort`. */
export interface RstTarget {
  localPort: number;
  peerPort: number;
}

export class MuxerRxQueue<C> {
  private readonly rsts: RstTarget[] = [];
  private readonly ready = new Set<C>();

  constructor(private readonly maxRsts: number) {}

  /** Whether anything waits for an RX buffer. */
  get pending(): boolean {
    return this.rsts.length > 0 || this.ready.size > 0;
  }

  /** Queues an RST; false when the queue is full (the packet is dropped, the guest times out). */
  pushRst(to: RstTarget): boolean {
    if (this.rsts.length >= this.maxRsts) return false;
    this.rsts.push(to);
    return true;
  }

  popRst(): RstTarget | undefined {
    return this.rsts.shift();
  }

  /** Records whether connection `c` has something to send (a new one joins the back). */
  set(c: C, hasRx: boolean): void {
    if (!hasRx) this.ready.delete(c);
    else if (!this.ready.has(c)) this.ready.add(c);
  }

  /** After `c` sent a packet: to the back of the line if it has more, else out. */
  sent(c: C, hasMore: boolean): void {
    // Alone in the line and more to say: it already is at the back (a bulk stream, per packet).
    if (hasMore && this.ready.size === 1 && this.ready.has(c)) return;
    if (!this.ready.delete(c)) return;
    if (hasMore) this.ready.add(c);
  }

  /** The ready connections in turn order; the caller may change the queue while it walks them. */
  turns(): IterableIterator<C> {
    return this.ready.values();
  }

  remove(c: C): void {
    this.ready.delete(c);
  }

  clear(): void {
    this.rsts.length = 0;
    this.ready.clear();
  }
}
