// The host side of an interactive serial console (`tsvmm run`): the terminal in raw mode, typed
// bytes through the escape keys (escape.ts) into the guest's UART with backpressure, the
// escape commands carried out, the window size followed. Owns stdin while attached and the
// lines it prints itself (hint, help); it must not write guest output (the machine's console
// sink does) nor decide how a resize reaches the guest (onResize does).

import { EscapeParser, ESCAPE_HELP } from './escape';
import { RawTerminal } from './terminal';

export { EscapeParser, ESCAPE_CHAR, ESCAPE_HELP } from './escape';
export type { ConsoleAction } from './escape';
export { RawTerminal } from './terminal';
export type { RawCapable } from './terminal';

/** The UART side: what the 16550 offers (devices/serial.ts). */
export interface ConsoleSerial {
  enqueueInput(bytes: Uint8Array): number;
  sendBreak(): boolean;
}

export interface ConsoleOptions {
  stdin: NodeJS.ReadStream;
  /** Where the terminal's size comes from (a tty WriteStream: stdout or stderr), if any. */
  sizeFrom?: NodeJS.WriteStream;
  /** Resolved once the guest's UART exists (undefined: no serial port, input is dropped). */
  serial: () => ConsoleSerial | undefined;
  /** Ctrl-A x. */
  quit: () => void;
  /** tsvmm's own lines to the user (the hint, the help). */
  print: (text: string) => void;
  /** The terminal's new size (rows, columns), after SIGWINCH. */
  onResize?: (rows: number, cols: number) => void;
  /** Print the one-line hint when stdin is a terminal (default true). */
  hint?: boolean;
}

export interface AttachedConsole {
  /** Stops reading stdin and restores the terminal (idempotent). */
  detach(): void;
  /** stdin is a terminal and was put in raw mode. */
  readonly raw: boolean;
}

/** How long queued input waits for room in the UART's FIFO before trying again. */
const RETRY_MS = 5;

/** The terminal's size, when `s` is one. */
export function terminalSize(s: NodeJS.WriteStream | undefined): { rows: number; cols: number } | undefined {
  if (!s?.isTTY) return undefined;
  const [cols, rows] = s.getWindowSize();
  return rows > 0 && cols > 0 ? { rows, cols } : undefined;
}

export function attachConsole(o: ConsoleOptions): AttachedConsole {
  const stdin = o.stdin;
  // Without a terminal, stdin (a pipe, a file) is fed as it is: no escapes, no raw mode.
  const raw = RawTerminal.enter(stdin);
  const parser = raw ? new EscapeParser() : undefined;
  if (raw && o.hint !== false) o.print('tsvmm: console attached: Ctrl-A x quits, Ctrl-A h lists the other keys');

  let pending: Uint8Array = new Uint8Array(0);
  let timer: NodeJS.Timeout | undefined;
  const flush = () => {
    timer = undefined;
    const serial = o.serial();
    if (!pending.length || !serial) return;
    const n = serial.enqueueInput(pending);
    pending = pending.subarray(n);
    if (pending.length) timer = setTimeout(flush, RETRY_MS);
  };
  const queue = (bytes: Uint8Array) => {
    const merged = new Uint8Array(pending.length + bytes.length);
    merged.set(pending);
    merged.set(bytes, pending.length);
    pending = merged;
    if (!timer) flush();
  };
  const onData = (chunk: Buffer) => {
    if (!parser) return queue(chunk);
    for (const a of parser.feed(chunk)) {
      switch (a.kind) {
        case 'input':
          queue(a.bytes);
          break;
        case 'help':
          o.print(`\n${ESCAPE_HELP}`);
          break;
        case 'break':
          // Behind input already typed, as on a real line.
          if (!pending.length) o.serial()?.sendBreak();
          else o.print('tsvmm: break not sent: input is still queued');
          break;
        case 'quit':
          o.quit();
          return;
      }
    }
  };
  stdin.on('data', onData);

  const size = o.sizeFrom;
  const onResize = () => {
    const s = terminalSize(size);
    if (s) o.onResize?.(s.rows, s.cols);
  };
  if (size?.isTTY && o.onResize) size.on('resize', onResize);

  let detached = false;
  return {
    raw: raw !== null,
    detach() {
      if (detached) return;
      detached = true;
      clearTimeout(timer);
      stdin.off('data', onData);
      size?.off('resize', onResize);
      raw?.restore();
      stdin.pause();
      stdin.unref?.();
    },
  };
}
