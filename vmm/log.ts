// tsvmm's one logger: levels, the line format, the VM id and where lines go (stderr or a file).
// It owns formatting and the sink only; it must not decide what is worth logging (callers do)
// nor buffer lines (a crash must not lose the last ones, so every line is one write(2)).

import { closeSync, openSync, writeSync } from 'node:fs';
import { isMainThread, threadId } from 'node:worker_threads';
import { nanoid } from 'nanoid';

export const LEVELS = ['error', 'warn', 'info', 'debug'] as const;
export type Level = (typeof LEVELS)[number];

export class LogError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'LogError';
  }
}

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

/**
 * One line: `2026-11-30T05:00:00.000Z [tsvmm:<id>] <LEVEL> <thread> <origin>: message`.
 * Newlines inside a message are escaped so that one event is always one line.
 */
export function formatLine(o: { time: Date; id: string; level: Level; thread: string; origin: string; message: string }): string {
  const msg = o.message.replace(/\r?\n/g, '\\n');
  return `${o.time.toISOString()} [tsvmm:${o.id}] ${o.level.toUpperCase()} ${o.thread} ${o.origin}: ${msg}`;
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
