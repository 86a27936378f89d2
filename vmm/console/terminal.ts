// Raw mode on the host terminal while a guest owns it, and its restoration on every way out.
// Owns the terminal's mode only (not what is read or written). Raw as QEMU's stdio console
// sets it: no echo, no line editing, no signals from keys (Ctrl-C, Ctrl-Z go to the guest),
// output post-processing kept (a host log line's \n still returns the carriage).

/** The part of a tty ReadStream this needs (process.stdin). */
export interface RawCapable {
  readonly isTTY?: boolean;
  setRawMode(mode: boolean): unknown;
}

export class RawTerminal {
  private restored = false;
  private readonly onExit = () => this.restore();

  private constructor(private readonly tty: RawCapable) {
    // 'exit' runs on process.exit(), the end of the event loop and after an uncaught
    // exception's report: the paths that do not come back through restore() in the caller.
    // Signals (SIGINT, SIGTERM, SIGHUP) are the caller's: it turns them into a VM stop, which
    // comes back through restore().
    process.on('exit', this.onExit);
  }

  /** Puts `tty` in raw mode; null when it is not a terminal (nothing to do, nothing to undo). */
  static enter(tty: RawCapable): RawTerminal | null {
    if (!tty.isTTY) return null;
    tty.setRawMode(true);
    return new RawTerminal(tty);
  }

  /** The terminal as it was (idempotent). */
  restore(): void {
    if (this.restored) return;
    this.restored = true;
    process.off('exit', this.onExit);
    try {
      this.tty.setRawMode(false);
    } catch {
      // The terminal is gone (hung up): there is nothing left to restore.
    }
  }
}
