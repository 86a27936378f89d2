// tsvmm's one logger: levels, the line format, the VM id and where lines go (stderr or a file),
// and the two rules for lines built from what a guest or a client sent: their text is escaped
// (one event is one line, nobody can forge a line or send the terminal escapes) and their
// rate is limited (a guest looping on an error must not fill the disk). It owns formatting and
// the sinks; it must not decide what is worth logging (callers do) nor buffer lines (a crash
// must not lose the last ones, so every line is one write(2)).

import { closeSync, openSync, writeSync } from 'node:fs';
import { isMainThread, threadId } from 'node:worker_threads';
import { nanoid } from 'nanoid';
import { TsvmmError } from '../lib/errors';

export const LEVELS = ['error', 'warn', 'info', 'debug'] as const;
export type Level = (typeof LEVELS)[number];

export class LogError extends TsvmmError {}

export function parseLevel(text: string): Level {
  const l = text.toLowerCase();
  if (!(LEVELS as readonly string[]).includes(l)) throw new LogError(`log level '${text}' must be one of ${LEVELS.join(', ')}`);
  return l as Level;
}

/** A new VM id: short, URL/file-name safe (it appears in socket and registry paths). */
export function newVmId(): string {
  return nanoid(10);
}

export interface LoggerOptions {
  /** Id shown in each line as [tsvmm:<id>]. */
  id: string;
  level?: Level;
  /** Append to this file (created 0600) instead of writing to stderr. */
  path?: string;
  /** Line sink for tests; overrides `path`. */
  write?: (line: string) => void;
  now?: () => Date;
}

// C0 and C1 controls, DEL, and the Unicode line separators and bidi controls: what can end a
// line, move the cursor, recolour a terminal or reorder what a reader sees.
const CONTROL = /[\u0000-\u001f\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g;

function escapeChar(c: string): string {
  if (c === '\n') return '\\n';
  if (c === '\r') return '\\r';
  if (c === '\t') return '\\t';
  const n = c.charCodeAt(0);
  return n < 0x100 ? `\\x${n.toString(16).padStart(2, '0')}` : `\\u${n.toString(16).padStart(4, '0')}`;
}

/** A message as one safe line: every control character escaped (`\n`, `\x1b`, `\u202e`). */
export function escapeControl(message: string): string {
  return message.replace(CONTROL, escapeChar);
}

/**
 * Text a guest (or a client) chose, for a log line: quoted, at most `max` characters, and
 * printable ASCII only (everything else escaped), so it reads the same on every terminal.
 */
export function guestText(text: string, max = 64): string {
  const cut = text.length > max;
  const body = (cut ? text.slice(0, max) : text).replace(/[\\"]/g, (c) => `\\${c}`).replace(/[^\x20-\x7e]/g, escapeChar);
  return `"${body}"${cut ? `...(${text.length} chars)` : ''}`;
}

/**
 * One line: `2026-11-30T05:00:00.000Z [tsvmm:<id>] <LEVEL> <thread> <origin>: message`.
 * Control characters inside a message are escaped so that one event is always one line.
 */
export function formatLine(o: { time: Date; id: string; level: Level; thread: string; origin: string; message: string }): string {
  return `${o.time.toISOString()} [tsvmm:${o.id}] ${o.level.toUpperCase()} ${o.thread} ${o.origin}: ${escapeControl(o.message)}`;
}

/** tsvmm's plain stderr line (no --log-path/--log-level): `tsvmm: message`, escaped the same way. */
export function stderrLine(message: string): void {
  process.stderr.write(`tsvmm: ${escapeControl(message)}\n`);
}

export interface RateLimitOptions {
  /** Lines let through at once (default 10). */
  burst?: number;
  /** Lines per second after the burst (default 1). */
  perSecond?: number;
  /** When lines were dropped, their count is logged this long after the first (default 10 s), or with the next line let through. */
  summaryMs?: number;
  /** Milliseconds, monotonic (tests inject one). */
  now?: () => number;
}

/**
 * A log function for lines a guest can trigger at will (device errors, bad rings, agent
 * messages): a token bucket lets `burst` lines through and then `perSecond`; the rest are
 * counted and reported as one `<what>: N similar lines suppressed` line.
 */
export class RateLimitedLog {
  private tokens: number;
  private last: number;
  private suppressed = 0;
  private timer: NodeJS.Timeout | undefined;
  private readonly burst: number;
  private readonly perSecond: number;
  private readonly summaryMs: number;
  private readonly now: () => number;

  constructor(private readonly log: (message: string) => void, private readonly what: string, opts: RateLimitOptions = {}) {
    this.burst = opts.burst ?? 10;
    this.perSecond = opts.perSecond ?? 1;
    this.summaryMs = opts.summaryMs ?? 10_000;
    this.now = opts.now ?? (() => performance.now());
    this.tokens = this.burst;
    this.last = this.now();
  }

  /** Lines dropped and not yet reported. */
  get pending(): number {
    return this.suppressed;
  }

  line(message: string): void {
    const t = this.now();
    this.tokens = Math.min(this.burst, this.tokens + (Math.max(0, t - this.last) * this.perSecond) / 1000);
    this.last = t;
    if (this.tokens >= 1) {
      this.tokens -= 1;
      this.flush();
      this.log(message);
      return;
    }
    this.suppressed++;
    if (this.timer === undefined) {
      this.timer = setTimeout(() => {
        this.timer = undefined;
        this.flush();
      }, this.summaryMs);
      this.timer.unref();
    }
  }

  /** Reports the lines dropped so far, if any (also called at teardown, so no count is lost). */
  flush(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    if (this.suppressed === 0) return;
    const n = this.suppressed;
    this.suppressed = 0;
    this.log(`${this.what}: ${n} similar line${n === 1 ? '' : 's'} suppressed`);
  }
}

export class Logger {
  readonly id: string;
  readonly level: Level;
  private readonly rank: number;
  private readonly sink: (line: string) => void;
  private fd: number | undefined;
  private readonly now: () => Date;

  constructor(opts: LoggerOptions) {
    this.id = opts.id;
    this.level = opts.level ?? 'info';
    this.rank = LEVELS.indexOf(this.level);
    this.now = opts.now ?? (() => new Date());
    if (opts.write) {
      this.sink = opts.write;
    } else if (opts.path !== undefined) {
      try {
        this.fd = openSync(opts.path, 'a', 0o600);
      } catch (e) {
        throw new LogError(`--log-path ${opts.path}: ${(e as Error).message}`);
      }
      const fd = this.fd;
      this.sink = (line) => {
        if (this.fd !== undefined) writeSync(fd, line + '\n');
      };
    } else {
      this.sink = (line) => process.stderr.write(line + '\n');
    }
  }

  enabled(level: Level): boolean {
    return LEVELS.indexOf(level) <= this.rank;
  }

  log(level: Level, origin: string, message: string): void {
    if (!this.enabled(level)) return;
    const thread = isMainThread ? 'main' : `worker-${threadId}`;
    this.sink(formatLine({ time: this.now(), id: this.id, level, thread, origin, message }));
  }

  error(origin: string, message: string): void { this.log('error', origin, message); }
  warn(origin: string, message: string): void { this.log('warn', origin, message); }
  info(origin: string, message: string): void { this.log('info', origin, message); }
  debug(origin: string, message: string): void { this.log('debug', origin, message); }

  /** A `(message) => void` for modules that take a plain log function (Machine, scheduler). */
  fn(origin: string, level: Level = 'info'): (message: string) => void {
    return (m) => this.log(level, origin, m);
  }

  close(): void {
    if (this.fd !== undefined) closeSync(this.fd);
    this.fd = undefined;
  }
}
