// The console's escape keys: a state machine over the bytes typed on the host terminal that
// takes out tsvmm's own commands and passes everything else to the guest. Owns only the key
// conventions (QEMU's `-serial mon:stdio`: Ctrl-A is the prefix, Ctrl-A Ctrl-A sends a literal
// Ctrl-A, an unknown key after the prefix is dropped); it must not touch the terminal or the
// machine — the caller acts on what it returns.

/** Ctrl-A, the prefix (QEMU's default escape character). */
export const ESCAPE_CHAR = 0x01;

export type ConsoleAction =
  | { kind: 'input'; bytes: Uint8Array }
  | { kind: 'quit' }
  | { kind: 'help' }
  | { kind: 'break' };

/** What each key after Ctrl-A does (upper case works too). */
const KEYS: Record<string, Exclude<ConsoleAction['kind'], 'input'>> = {
  x: 'quit',
  h: 'help',
  '?': 'help',
  b: 'break',
  c: 'break',
};

export const ESCAPE_HELP = [
  'Ctrl-A x    quit tsvmm (the VM stops; exit status 130)',
  'Ctrl-A h    this help',
  'Ctrl-A c    send a break (Ctrl-A b too); the next key within 5 s is a SysRq command in the',
  '            guest (h: its help, t: tasks, w: blocked tasks, b: reboot)',
  'Ctrl-A Ctrl-A  send Ctrl-A itself',
].join('\n');

export class EscapeParser {
  /** The last byte seen was the prefix (possibly at the end of the previous chunk). */
  private escaped = false;
  private quitted = false;

  /** The actions for one chunk of typed bytes, in order; nothing after a quit. */
  feed(chunk: Uint8Array): ConsoleAction[] {
    const actions: ConsoleAction[] = [];
    if (this.quitted) return actions;
    let start = 0;
    const flush = (end: number) => {
      if (end > start) actions.push({ kind: 'input', bytes: chunk.slice(start, end) });
    };
    for (let i = 0; i < chunk.length; i++) {
      const b = chunk[i]!;
      if (!this.escaped) {
        if (b === ESCAPE_CHAR) {
          flush(i);
          this.escaped = true;
          start = i + 1;
        }
        continue;
      }
      this.escaped = false;
      start = i + 1;
      if (b === ESCAPE_CHAR) {
        actions.push({ kind: 'input', bytes: Uint8Array.of(ESCAPE_CHAR) });
        continue;
      }
      const kind = KEYS[String.fromCharCode(b).toLowerCase()];
      if (!kind) continue;
      actions.push({ kind });
      if (kind === 'quit') {
        this.quitted = true;
        return merge(actions);
      }
    }
    if (!this.escaped) flush(chunk.length);
    return merge(actions);
  }
}

/** Adjacent input pieces as one (a literal Ctrl-A between typed text). */
function merge(actions: ConsoleAction[]): ConsoleAction[] {
  const out: ConsoleAction[] = [];
  for (const a of actions) {
    const last = out[out.length - 1];
    if (a.kind === 'input' && last?.kind === 'input') {
      const bytes = new Uint8Array(last.bytes.length + a.bytes.length);
      bytes.set(last.bytes);
      bytes.set(a.bytes, last.bytes.length);
      out[out.length - 1] = { kind: 'input', bytes };
    } else {
      out.push(a);
    }
  }
  return out;
}
