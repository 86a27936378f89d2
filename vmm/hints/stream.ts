// The hint stream (GET /hints, `tsvmm hints watch|record`): every hint record the host
// receives, as one JSON line each, to any number of readers. Owns the per-reader bound and the
// recent-history ring; it must not decode records (registry.ts hands it finished entries) nor
// know HTTP (a reader is a `StreamSink`).
//
// A reader can never slow the VMM: publishing costs one JSON.stringify per record (only while
// someone listens) and one array push per reader. A reader whose socket does not keep up gets
// at most `maxQueued` lines queued; newer records are then dropped for it, counted, and reported
// in the stream itself as a `{"lost": N}` line as soon as it catches up.

/** One record as the stream shows it. */
export interface StreamEntry {
  /** Host receive time, milliseconds since the epoch (sub-millisecond fraction). */
  readonly time: number;
  /** The vCPU whose HINTS hypercall delivered the batch (undefined: not known to the transport). */
  readonly vcpu: number | undefined;
  /** Handle of the loaded package whose ring buffer produced it; undefined when unattributed. */
  readonly source: number | undefined;
  /** That package's name. */
  readonly program: string | undefined;
  readonly type: number;
  /** The hint type's registered name; undefined for a type no kind is registered for. */
  readonly name: string | undefined;
  /** Decoded fields (known type), or the record's bytes as hex (unknown type, or too short to decode). */
  readonly fields?: unknown;
  readonly raw?: string;
  /** Why a record of a known type was not decoded. */
  readonly error?: string;
  /** Its kind's rate limit refused it: counted, neither decoded nor handled (no fields, no bytes). */
  readonly refused?: true;
}

/** Where a reader's lines go (an HTTP response, in tsvmm). */
export interface StreamSink {
  /** Writes one line; false when the sink's own buffer is full (wait for drain). */
  write(line: string): boolean;
  onDrain(cb: () => void): void;
  onClose(cb: () => void): void;
}

export interface StreamCounters {
  /** Records published (whether anyone listened). */
  published: number;
  /** Readers connected now. */
  readers: number;
  /** Lines handed to readers' sockets. */
  delivered: number;
  /** Records dropped for readers that did not keep up. */
  lost: number;
}

export interface SubscribeOptions {
  /** Only these record types (all when absent). */
  readonly types?: ReadonlySet<number>;
  /** Lines a reader may have queued beyond its socket's buffer (default 4096). */
  readonly maxQueued?: number;
}

/** Bigints (mask words) as hex strings; everything else as JSON has it. */
function replacer(_k: string, v: unknown): unknown {
  return typeof v === 'bigint' ? `0x${v.toString(16)}` : v;
}

export function entryLine(e: StreamEntry): string {
  return JSON.stringify(e, replacer) + '\n';
}

class Reader {
  private readonly queue: string[] = [];
  private blocked = false;
  /** Dropped since the last `lost` line (reported when the reader catches up). */
  private unreported = 0;
  lost = 0;
  closed = false;

  constructor(private readonly sink: StreamSink, readonly types: ReadonlySet<number> | undefined, private readonly maxQueued: number, private readonly counters: StreamCounters) {
    sink.onDrain(() => this.drain());
  }

  offer(type: number, line: () => string): void {
    if (this.closed || (this.types && !this.types.has(type))) return;
    if (this.blocked || this.queue.length > 0) {
      if (this.queue.length >= this.maxQueued) {
        this.lost++;
        this.unreported++;
        this.counters.lost++;
        return;
      }
      this.queue.push(line());
      return;
    }
    this.send(line());
  }

  private send(line: string): void {
    this.counters.delivered++;
    if (!this.sink.write(line)) this.blocked = true;
  }

  private drain(): void {
    this.blocked = false;
    if (this.unreported > 0) {
      this.send(JSON.stringify({ time: performance.timeOrigin + performance.now(), lost: this.unreported }) + '\n');
      this.counters.delivered--; // the notice is not a record
      this.unreported = 0;
    }
    while (!this.blocked && this.queue.length > 0) this.send(this.queue.shift()!);
  }
}

export class HintStream {
  private readonly readers = new Set<Reader>();
  private readonly history: StreamEntry[] = [];
  private readonly count: StreamCounters = { published: 0, readers: 0, delivered: 0, lost: 0 };

  /** `historySize`: records kept for GET /hints without follow. */
  constructor(private readonly historySize = 1024) {}

  publish(e: StreamEntry): void {
    this.count.published++;
    if (this.history.length >= this.historySize) this.history.shift();
    this.history.push(e);
    if (this.readers.size === 0) return;
    let line: string | undefined;
    const lazy = () => (line ??= entryLine(e));
    for (const r of this.readers) r.offer(e.type, lazy);
  }

  /** Streams every record published from now on into `sink`, until it closes. */
  subscribe(sink: StreamSink, opts: SubscribeOptions = {}): { lost(): number; close(): void } {
    const r = new Reader(sink, opts.types, opts.maxQueued ?? 4096, this.count);
    this.readers.add(r);
    this.count.readers = this.readers.size;
    const close = () => {
      r.closed = true;
      this.readers.delete(r);
      this.count.readers = this.readers.size;
    };
    sink.onClose(close);
    return { lost: () => r.lost, close };
  }

  /** The last records (oldest first), optionally of some types only. */
  recent(types?: ReadonlySet<number>): StreamEntry[] {
    return types ? this.history.filter((e) => types.has(e.type)) : [...this.history];
  }

  get counters(): Readonly<StreamCounters> {
    return { ...this.count };
  }
}
