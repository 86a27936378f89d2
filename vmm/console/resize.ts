// Carries the host terminal's size to the guest console after the boot (the boot-time size
// is on the kernel command line, tsvmm.rows/tsvmm.cols): the default guest's agent runs
// `stty -F /dev/console rows R cols C`, which also sends SIGWINCH to the console's foreground
// job. Owns only the ordering: one request at a time, the newest size wins, and a size sent
// while the agent is not up yet (early boot) is tried again until it lands or the VM ends.

export type GuestRun = (argv: string[], signal: AbortSignal) => Promise<{ exitCode: number | null }>;

/** Between attempts while the agent cannot be reached. */
const RETRY_MS = 1000;
/** A connect made while the guest's vsock driver probes can be dropped silently: bound each try. */
const ATTEMPT_MS = 10_000;

export class ConsoleResizer {
  private wanted: { rows: number; cols: number } | undefined;
  private busy = false;
  private readonly abort = new AbortController();
  /** Sizes the guest has taken, newest last (for the log and the tests). */
  readonly applied: Array<{ rows: number; cols: number }> = [];

  constructor(private readonly run: GuestRun, private readonly log: (msg: string) => void = () => {}) {}

  resize(rows: number, cols: number): void {
    this.wanted = { rows, cols };
    if (!this.busy) void this.pump();
  }

  /** The VM ended: nothing more is sent. */
  close(): void {
    this.abort.abort();
  }

  private async pump(): Promise<void> {
    this.busy = true;
    try {
      while (this.wanted && !this.abort.signal.aborted) {
        const s = this.wanted;
        try {
          const signal = AbortSignal.any([this.abort.signal, AbortSignal.timeout(ATTEMPT_MS)]);
          const r = await this.run(['stty', '-F', '/dev/console', 'rows', String(s.rows), 'cols', String(s.cols)], signal);
          if (r.exitCode !== 0) this.log(`console: the guest's stty failed (exit ${r.exitCode}); size ${s.rows}x${s.cols} not applied`);
          else this.applied.push(s);
          if (this.wanted === s) this.wanted = undefined;
        } catch {
          // The agent is not listening yet (or no more): try again while the VM runs.
          await new Promise((r) => setTimeout(r, RETRY_MS).unref());
        }
      }
    } finally {
      this.busy = false;
    }
  }
}
