// The last lines of a guest's serial console, kept by every machine whether or not anyone
// shows the console: when a guest hangs before its agent answers, this tail says where the
// boot stopped (a timer calibration, a driver probe, the init never reached). Bounded both in
// lines and in bytes, so a guest that prints forever (or one endless line) costs a fixed
// amount of memory. Fed one byte at a time by the UART: push() is cheap and never throws.

export const CONSOLE_TAIL_LINES = 64;
export const CONSOLE_TAIL_BYTES = 16 * 1024;

export class ConsoleTail {
  /** Complete lines, oldest first. */
  private lines: string[] = [];
  private bytes = 0;
  /** The line being written (no newline yet), at most maxBytes long: its tail is kept. */
  private partial = '';
  /** Bytes seen in total, kept or not. */
  total = 0;

  constructor(
    readonly maxLines = CONSOLE_TAIL_LINES,
    readonly maxBytes = CONSOLE_TAIL_BYTES,
  ) {
    if (!(maxLines >= 1 && maxBytes >= 1)) throw new RangeError('ConsoleTail keeps at least one line of one byte');
  }

  push(b: Uint8Array): void {
    this.total += b.length;
    for (let i = 0; i < b.length; i++) {
      const c = b[i]!;
      if (c === 0x0a) {
        this.endLine();
      } else if (c !== 0x0d) {
        // latin1 and control characters kept as they are: the guest's bytes, not its glyphs.
        this.partial += String.fromCharCode(c);
        if (this.partial.length > 2 * this.maxBytes) this.partial = this.partial.slice(-this.maxBytes);
      }
    }
  }

  private endLine(): void {
    const line = this.partial.length > this.maxBytes ? this.partial.slice(-this.maxBytes) : this.partial;
    this.partial = '';
    this.lines.push(line);
    this.bytes += line.length + 1;
    while (this.lines.length > this.maxLines || (this.bytes > this.maxBytes && this.lines.length > 1)) {
      this.bytes -= this.lines.shift()!.length + 1;
    }
  }

  /** The kept lines, oldest first, with the unfinished last line if any (within the bounds). */
  snapshot(): string[] {
    const partial = this.partial.length > this.maxBytes ? this.partial.slice(-this.maxBytes) : this.partial;
    const out = partial ? [...this.lines, partial] : [...this.lines];
    // The unfinished line counts against the bounds too: drop the oldest lines for it.
    let bytes = this.bytes + (partial ? partial.length + 1 : 0);
    while (out.length > this.maxLines || (bytes > this.maxBytes && out.length > 1)) bytes -= out.shift()!.length + 1;
    if (out.length === 1 && out[0]!.length > this.maxBytes) out[0] = out[0]!.slice(-this.maxBytes);
    return out;
  }

  /** snapshot() as text, one line each. */
  text(): string {
    return this.snapshot().join('\n');
  }
}
