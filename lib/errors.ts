// The one base class of tsvmm's errors and the process exit statuses they map to. Every error
// tsvmm throws on purpose is a TsvmmError: it carries the exit code a command ends with and,
// when a system call or a named step failed, that call (and its errno). The CLI and the API map
// errors by class, never by name. This module knows no particular error.

/** Exit statuses of the tsvmm commands (docs/architecture.md): how a VM ended, or why tsvmm failed. */
export const EXIT = { POWEROFF: 0, ERROR: 1, USAGE: 2, REBOOT: 3, PANIC: 4, CRASH: 5 } as const;

export interface ErrorDetails {
  /** What the command exits with (default EXIT.ERROR). */
  exitCode?: number;
  /** The failing call or step, e.g. "KVM_CREATE_VCPU" or "sched_setaffinity". */
  call?: string;
  /** What the kernel said, when `call` is a system call. */
  errno?: number;
  cause?: unknown;
}

export class TsvmmError extends Error {
  readonly exitCode: number;
  readonly call: string | undefined;
  readonly errno: number | undefined;

  constructor(message: string, details: ErrorDetails = {}) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause });
    this.name = new.target.name;
    this.exitCode = details.exitCode ?? EXIT.ERROR;
    this.call = details.call;
    this.errno = details.errno;
  }
}

/** Bad flags, arguments or values on a command line: exit status 2 and a pointer to --help. */
export class UsageError extends TsvmmError {
  constructor(message: string) {
    super(message, { exitCode: EXIT.USAGE });
  }
}
