// Process-wide hooks that every VM of a process needs once (a library user may run dozens of
// VMs in one Node process): the clean-up run at exit, and a handler that keeps a signal from
// killing the process. One listener on `process` per event, with the VMs' callbacks behind it,
// so N VMs add one listener, not N (Node warns past 10: MaxListenersExceededWarning). Owns only
// those listeners; what a callback does is its owner's business.

const exitHooks = new Set<() => void>();
const runExitHooks = () => {
  for (const fn of [...exitHooks]) {
    try {
      fn();
    } catch {
      // Exit clean-up is best effort: one failing (a file already gone) must not skip the rest.
    }
  }
};

/** Runs `fn` when the process exits (synchronously, as `process.on('exit')`); returns its remover. */
export function atExit(fn: () => void): () => void {
  // A wrapper of our own, so the same function registered twice is removed once per remover.
  const hook = () => fn();
  if (exitHooks.size === 0) process.on('exit', runExitHooks);
  exitHooks.add(hook);
  return () => {
    if (!exitHooks.delete(hook)) return;
    if (exitHooks.size === 0) process.off('exit', runExitHooks);
  };
}

const signalHolds = new Map<NodeJS.Signals, number>();
const ignore = () => {};

/**
 * Keeps a do-nothing handler installed for `signal` until every holder released it: a signal
 * with a handler interrupts a blocking call on the thread it hits (the vCPU kick) instead of
 * ending the process. Returns the release (idempotent).
 */
export function holdSignal(signal: NodeJS.Signals): () => void {
  const n = signalHolds.get(signal) ?? 0;
  if (n === 0) process.on(signal, ignore);
  signalHolds.set(signal, n + 1);
  let held = true;
  return () => {
    if (!held) return;
    held = false;
    const left = signalHolds.get(signal)! - 1;
    if (left > 0) {
      signalHolds.set(signal, left);
      return;
    }
    signalHolds.delete(signal);
    process.off(signal, ignore);
  };
}
