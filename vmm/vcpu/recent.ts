// A vCPU's last exits, in shared memory its worker writes and main reads after an exit that
// ended the VM: the one module that knows the ring's layout. No imports, so the diagnosis code
// (which formats them) loads without KVM.

/**
 * A vCPU's last RECENT_EXITS exits, written only by its worker: a ring of RECENT.FIELDS numbers
 * per exit — its reason, then for a port or MMIO access the port or address, INFO (size, plus
 * RECENT_WRITE for a write, plus count × RECENT_COUNT for a string port access) and the first
 * four bytes of data (after the access: what a read returned) — and, after the ring, how many
 * exits were noted in all. What the guest did just before an exit that ends the VM: after a
 * triple fault an AMD host's KVM re-INITs the vCPU, so its registers no longer say.
 */
export const RECENT_EXITS = 16;
export const RECENT = { REASON: 0, ADDR: 1, INFO: 2, DATA: 3, FIELDS: 4 } as const;
export const RECENT_WRITE = 0x100;
export const RECENT_COUNT = 0x10000;
const RECENT_TOTAL = RECENT_EXITS * RECENT.FIELDS;

export function newRecentExits(): Float64Array {
  return new Float64Array(new SharedArrayBuffer((RECENT_TOTAL + 1) * 8));
}

/** Notes the start of an exit (the worker, before it handles it). */
export function noteExit(ring: Float64Array, reason: number): void {
  const n = ring[RECENT_TOTAL]!;
  const at = (n % RECENT_EXITS) * RECENT.FIELDS;
  ring[at + RECENT.REASON] = reason;
  ring[at + RECENT.ADDR] = ring[at + RECENT.INFO] = ring[at + RECENT.DATA] = 0;
  ring[RECENT_TOTAL] = n + 1;
}

/** Adds the access the last noted exit made (the worker, once it was answered). */
export function noteAccess(ring: Float64Array, addr: number, info: number, data: Uint8Array): void {
  const n = ring[RECENT_TOTAL]!;
  if (n === 0) return;
  const at = ((n - 1) % RECENT_EXITS) * RECENT.FIELDS;
  let v = 0;
  for (let i = Math.min(4, data.length) - 1; i >= 0; i--) v = v * 256 + data[i]!;
  ring[at + RECENT.ADDR] = addr;
  ring[at + RECENT.INFO] = info;
  ring[at + RECENT.DATA] = v;
}

/** One exit read back from the ring. */
export interface RecentExit {
  reason: number;
  addr: number;
  info: number;
  data: number;
}

/** The ring's exits, oldest first (main reads it once the worker has stopped running). */
export function recentExits(ring: Float64Array): RecentExit[] {
  const n = ring[RECENT_TOTAL]!;
  const out: RecentExit[] = [];
  for (let k = Math.max(0, n - RECENT_EXITS); k < n; k++) {
    const at = (k % RECENT_EXITS) * RECENT.FIELDS;
    out.push({ reason: ring[at + RECENT.REASON]!, addr: ring[at + RECENT.ADDR]!, info: ring[at + RECENT.INFO]!, data: ring[at + RECENT.DATA]! });
  }
  return out;
}
