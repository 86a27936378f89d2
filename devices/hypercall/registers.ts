// The hypercall device's register block and constants (docs/hypercall.md §1, §2, §4, §5).
// This module owns every register offset, command code and status code of the protocol; it
// must not hold device state. The guest agent (guest/agent) mirrors these numbers in C.

// Where the block and the shared memory sit is the VMM's choice (vmm/layout.ts); the device is
// handed it.

/** Ports the register block decodes (§2). */
export const HC_IO_LEN = 0x40;
/** The vsock port the agent listens on for doorbells when `vsock@` is not given (§1). */
export const HC_DOORBELL_PORT = 53;
/** The DSDT device id (§1). */
export const HC_ACPI_HID = 'TSVM0001';

/** 'T' 'S' 'V' 'M' as a little-endian u32. */
export const HC_MAGIC = 0x4d56_5354;
export const HC_VERSION = 1;

export const Reg = {
  MAGIC: 0x00,
  VERSION: 0x04,
  FEATURES: 0x08,
  DOORBELL_PORT: 0x0c,
  SHM_BASE_LO: 0x10,
  SHM_BASE_HI: 0x14,
  SHM_SIZE: 0x18,
  PENDING: 0x1c,
  COMMAND: 0x20,
  STATUS: 0x24,
  RESULT: 0x28,
  SEQ: 0x2c,
} as const;

export const Cmd = {
  HELLO: 1,
  FETCH: 2,
  REPORT: 3,
  HINTS: 4,
} as const;
export type CmdName = keyof typeof Cmd;

export const Status = {
  OK: 0,
  E_UNKNOWN: 1,
  E_STATE: 2,
  E_LENGTH: 3,
  E_INVALID: 4,
  E_NOREQ: 5,
  E_VERSION: 6,
  E_RATE: 7,
  E_ACCESS: 8,
} as const;
export type StatusName = keyof typeof Status;
export type StatusCode = (typeof Status)[StatusName];

/** FEATURES register bits: what this host understands beyond version 1's baseline. */
export const Features = {
  /** HINTS batches may carry SOURCE records (§4.4). */
  HINT_SOURCE: 1 << 0,
} as const;

/**
 * HELLO capability bits. The policy bits are informational (the host records them);
 * HINT_SOURCE changes how the host reads HINTS batches, and an agent sets it only when
 * FEATURES offers it.
 */
export const Caps = {
  DIGEST_ALLOWLIST: 1 << 0,
  SIGNATURE: 1 << 1,
  HELPER_ALLOWLIST: 1 << 2,
  HINTS: 1 << 3,
  REPLACE: 1 << 4,
  HINT_SOURCE: 1 << 5,
} as const;

export interface HypercallPlacement {
  ioBase: number;
  shmBase: number;
  shmSize: number;
  doorbellPort: number;
}

const hex = (n: number): string => `0x${n.toString(16)}`;

/** The kernel command line item the agent parses: `tsvmm.hypercall=io@…,mem@…,vsock@…`. */
export function hypercallCmdline(p: HypercallPlacement): string {
  return `tsvmm.hypercall=io@${hex(p.ioBase)}:${hex(HC_IO_LEN)},mem@${hex(p.shmBase)}:${hex(p.shmSize)},vsock@${p.doorbellPort}`;
}

/** Parses the value of `tsvmm.hypercall=` as the agent does (unknown keys ignored). */
export function parseHypercallCmdline(value: string): HypercallPlacement | undefined {
  const out: Partial<HypercallPlacement> = {};
  const num = (s: string): number => (/^0x[0-9a-f]+$/i.test(s) ? parseInt(s.slice(2), 16) : /^[0-9]+$/.test(s) ? parseInt(s, 10) : NaN);
  for (const item of value.split(',')) {
    const at = item.indexOf('@');
    if (at < 0) continue;
    const key = item.slice(0, at);
    const [a = '', b] = item.slice(at + 1).split(':');
    if (key === 'io') out.ioBase = num(a);
    else if (key === 'mem' && b !== undefined) {
      out.shmBase = num(a);
      out.shmSize = num(b);
    } else if (key === 'vsock') out.doorbellPort = num(a);
  }
  const { ioBase, shmBase, shmSize, doorbellPort = HC_DOORBELL_PORT } = out;
  if (ioBase === undefined || shmBase === undefined || shmSize === undefined) return undefined;
  if (![ioBase, shmBase, shmSize, doorbellPort].every(Number.isSafeInteger)) return undefined;
  return { ioBase, shmBase, shmSize, doorbellPort };
}
