// A deadline for one integration test. uvu has no per-test timeout, and the runner's only bound
// is per file (900 s): a test awaiting something that never comes used to hang its whole file,
// the tests after it never ran, and CI lost 15 minutes learning nothing. A bounded test names
// what it awaits; past its deadline those waits reject (so the body unwinds through its
// `finally` blocks and releases listeners and sockets), the abort signal cancels its guest
// processes, and the test fails with what was still pending and whatever state it noted.
// Owns the timer and the message; what a test waits for, and how it cleans up, is the test's.

/** A bounded test's view of its deadline. */
export interface Deadline {
  /** Aborted at the deadline: hand it to what can be cancelled (agent requests). */
  readonly signal: AbortSignal;
  /** Awaits `p` as the step `what`: past the deadline it rejects, and `what` is reported pending. */
  wait<T>(what: string, p: Promise<T>): Promise<T>;
  /** A line of live state for the failure message (e.g. bytes read so far), computed at the time. */
  note(line: () => string): void;
}

export interface BoundedOptions {
  /** Extra lines for the message when the deadline passed (e.g. the VMM's counters); bounded too. */
  diagnose?: () => Promise<string>;
}

class Expired extends Error {}

/** How long a timed-out body gets to unwind (its finally blocks) before the test fails anyway. */
const UNWIND_MS = 15_000;
/** How long the diagnosis may take: GET /diagnosis samples the vCPUs for 1 s, several in a loaded sandbox. */
const DIAGNOSE_MS = 30_000;

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms).unref());
}

/**
 * A uvu test body that fails after `seconds` instead of hanging, with a message naming every
 * `wait` still pending and every `note`. A body that finishes (or fails) in time is untouched.
 */
export function bounded(seconds: number, body: (d: Deadline) => Promise<void>, opts: BoundedOptions = {}): () => Promise<void> {
  return async () => {
    const ac = new AbortController();
    const pending = new Map<number, string>();
    const notes: (() => string)[] = [];
    let next = 0;
    const t0 = Date.now();
    const expired = new Promise<never>((_, reject) => {
      ac.signal.addEventListener('abort', () => reject(ac.signal.reason as Error), { once: true });
    });
    expired.catch(() => {}); // only the waits' races observe it
    const d: Deadline = {
      signal: ac.signal,
      wait<T>(what: string, p: Promise<T>): Promise<T> {
        const id = next++;
        pending.set(id, `${what} (since ${((Date.now() - t0) / 1000).toFixed(1)} s)`);
        const done = () => pending.delete(id);
        p.then(done, done);
        return Promise.race([p, expired]);
      },
      note(line) {
        notes.push(line);
      },
    };

    const run = body(d);
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<'timeout'>((r) => { timer = setTimeout(() => r('timeout'), seconds * 1000); });
    try {
      if ((await Promise.race([run.then(() => 'done' as const), timeout])) === 'done') return;
    } finally {
      clearTimeout(timer);
    }

    // Past the deadline: say what was pending before the abort settles it, then unwind.
    const lines = [...pending.values()].map((w) => `  still waiting for: ${w}`);
    for (const n of notes) {
      try {
        lines.push(`  ${n()}`);
      } catch (e) {
        lines.push(`  (a note failed: ${(e as Error).message})`);
      }
    }
    if (pending.size === 0) lines.push('  (nothing registered as pending: the body awaits something not passed through wait())');
    const head = `did not finish within ${seconds} s`;
    ac.abort(new Expired(`${head}: aborted`));
    if (opts.diagnose) {
      const diag = await Promise.race([
        opts.diagnose().catch((e: Error) => `(diagnosis failed: ${e.message})`),
        sleep(DIAGNOSE_MS).then(() => `(diagnosis took over ${DIAGNOSE_MS / 1000} s)`),
      ]);
      lines.push(...diag.split('\n').map((l) => `  ${l}`));
    }
    const unwound = await Promise.race([run.then(() => true, () => true), sleep(UNWIND_MS).then(() => false)]);
    if (!unwound) lines.push(`  (the body still had not unwound ${UNWIND_MS / 1000} s after the abort)`);
    throw new Error(`${head}\n${lines.join('\n')}`);
  };
}
